//! Records longer than a model's context are cut head-plus-tail, and the cut is reported: the
//! start of a document and its conclusion carry most of the signal of its quality, and a judge
//! told that the middle is missing can discount it.

use serde::{Deserialize, Serialize};

/// What was cut from a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cut {
    pub original_tokens: usize,
    pub kept_tokens: usize,
}

/// `text` as a model reads it: at most `max_tokens` tokens of its tokenizer (whitespace-separated
/// words without one).
pub fn for_model(text: &str, tokenizer: Option<&tokenizers::Tokenizer>, max_tokens: usize) -> (String, Option<Cut>) {
    head_tail(text, &offsets(text, tokenizer), max_tokens)
}

/// Keeps the first and last `max_tokens / 2` tokens of `text` (token boundaries from `offsets`,
/// one `(start, end)` byte range per token), joined by a marker naming how many were left out.
pub fn head_tail(text: &str, offsets: &[(usize, usize)], max_tokens: usize) -> (String, Option<Cut>) {
    if offsets.len() <= max_tokens || max_tokens < 2 {
        return (text.to_string(), None);
    }
    let head = max_tokens / 2;
    let tail = max_tokens - head;
    let head_end = offsets[head - 1].1;
    let tail_start = offsets[offsets.len() - tail].0;
    let omitted = offsets.len() - max_tokens;
    let out = format!("{}\n[... {omitted} tokens omitted ...]\n{}", &text[..head_end], &text[tail_start..]);
    (out, Some(Cut { original_tokens: offsets.len(), kept_tokens: max_tokens }))
}

/// Token boundaries for a text: from a tokenizer when there is one, else whitespace-separated
/// words (a conservative stand-in for an endpoint whose tokenizer is not at hand).
pub fn offsets(text: &str, tokenizer: Option<&tokenizers::Tokenizer>) -> Vec<(usize, usize)> {
    if let Some(tokenizer) = tokenizer {
        if let Ok(encoding) = tokenizer.encode(text, false) {
            return encoding.get_offsets().to_vec();
        }
    }
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, text.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_keep_head_and_tail_and_say_what_was_cut() {
        let text = "a b c d e f g h i j";
        let (out, cut) = head_tail(text, &offsets(text, None), 4);
        assert_eq!(out, "a b\n[... 6 tokens omitted ...]\ni j");
        assert_eq!(cut, Some(Cut { original_tokens: 10, kept_tokens: 4 }));
        let (same, none) = head_tail("short text", &offsets("short text", None), 4);
        assert_eq!((same.as_str(), none), ("short text", None));
    }
}
