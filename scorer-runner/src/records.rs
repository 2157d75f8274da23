//! From raw record bytes to (id, text): parsing, text extraction per source, and the counted
//! reasons a record is skipped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::formats::RawRecord;

/// How a source's records carry their text and id.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct TextSpec {
    /// Field holding the text; a dotted path reaches into nested objects. Default `text`.
    pub field: Option<String>,
    /// Field holding a chat or agent-trace `messages` array, rendered with [`render_messages`].
    /// Takes precedence over `field`.
    pub messages_field: Option<String>,
    /// Field holding the record id (string or number); default: a hash of the text.
    pub id_field: Option<String>,
}

/// Why a record was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Malformed {
    InvalidUtf8,
    InvalidJson,
    MissingText,
    EmptyText,
    Oversized,
}

impl Malformed {
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::InvalidUtf8 => "invalid_utf8",
            Malformed::InvalidJson => "invalid_json",
            Malformed::MissingText => "missing_text",
            Malformed::EmptyText => "empty_text",
            Malformed::Oversized => "oversized",
        }
    }
}

/// Skipped records per reason, with the first place each reason was seen.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SkipCounts {
    pub counts: BTreeMap<String, u64>,
    /// `shard#index` of the first record skipped for each reason.
    pub first_seen: BTreeMap<String, String>,
}

impl SkipCounts {
    pub fn add(&mut self, reason: Malformed, shard: &str, index: u64) {
        self.add_reason(reason.as_str(), shard, index);
    }

    pub fn add_reason(&mut self, reason: &str, shard: &str, index: u64) {
        *self.counts.entry(reason.to_string()).or_default() += 1;
        self.first_seen.entry(reason.to_string()).or_insert_with(|| format!("{shard}#{index}"));
    }

    pub fn merge(&mut self, other: &SkipCounts) {
        for (reason, n) in &other.counts {
            *self.counts.entry(reason.clone()).or_default() += n;
        }
        for (reason, at) in &other.first_seen {
            self.first_seen.entry(reason.clone()).or_insert_with(|| at.clone());
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// A record ready to featurize.
#[derive(Clone, Debug, PartialEq)]
pub struct TextRecord {
    pub id: String,
    pub text: String,
}

/// Parses a raw record and extracts its id and text.
pub fn extract(raw: &RawRecord, spec: &TextSpec) -> Result<TextRecord, Malformed> {
    if raw.oversized {
        return Err(Malformed::Oversized);
    }
    let json = std::str::from_utf8(&raw.bytes).map_err(|_| Malformed::InvalidUtf8)?;
    let value: Value = serde_json::from_str(json).map_err(|_| Malformed::InvalidJson)?;
    if !value.is_object() {
        return Err(Malformed::InvalidJson);
    }
    let text = match &spec.messages_field {
        Some(field) => match lookup(&value, field) {
            Some(Value::Array(messages)) => render_messages(messages),
            _ => return Err(Malformed::MissingText),
        },
        None => match lookup(&value, spec.field.as_deref().unwrap_or("text")) {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(Malformed::MissingText),
        },
    };
    if text.trim().is_empty() {
        return Err(Malformed::EmptyText);
    }
    let id = match spec.id_field.as_deref().and_then(|f| lookup(&value, f)) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => content_id(&text),
    };
    Ok(TextRecord { id, text })
}

fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

/// A stable id from the text itself: 128-bit xxh3, hex.
pub fn content_id(text: &str) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(text.as_bytes()))
}

/// A deterministic fraction in [0, 1) from an id, for splits and samples that every worker and
/// every rerun agree on.
pub fn id_fraction(id: &str, salt: u64) -> f64 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), salt);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Renders a chat or agent trace to text with one template, used everywhere a conversation is
/// scored, labelled or counted:
///
/// ```text
/// ### {role} ({name})
/// {content}
/// -> {tool}({arguments})
/// ```
///
/// one block per message, separated by a blank line; `({name})` only when the message has a
/// name; one `->` line per tool call. Content given as a list of parts keeps its text parts.
pub fn render_messages(messages: &[Value]) -> String {
    let mut out = String::new();
    for message in messages {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        let role = message.get("role").and_then(Value::as_str).unwrap_or("unknown");
        out.push_str("### ");
        out.push_str(role);
        if let Some(name) = message.get("name").and_then(Value::as_str) {
            out.push_str(&format!(" ({name})"));
        }
        match message.get("content") {
            Some(Value::String(s)) => {
                out.push('\n');
                out.push_str(s);
            }
            Some(Value::Array(parts)) => {
                for part in parts {
                    if let Some(text) = part.get("text").and_then(Value::as_str) {
                        out.push('\n');
                        out.push_str(text);
                    }
                }
            }
            _ => {}
        }
        for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let function = call.get("function").unwrap_or(call);
            let name = function.get("name").and_then(Value::as_str).unwrap_or("tool");
            let arguments = match function.get("arguments") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            out.push_str(&format!("\n-> {name}({arguments})"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(bytes: &[u8]) -> RawRecord {
        RawRecord { index: 7, bytes: bytes.to_vec(), oversized: false }
    }

    #[test]
    fn each_kind_of_bad_record_has_its_own_reason() {
        let spec = TextSpec::default();
        assert_eq!(extract(&raw(b"\xff\xfe"), &spec), Err(Malformed::InvalidUtf8));
        assert_eq!(extract(&raw(b"{\"text\": "), &spec), Err(Malformed::InvalidJson));
        assert_eq!(extract(&raw(b"[1,2]"), &spec), Err(Malformed::InvalidJson));
        assert_eq!(extract(&raw(b"{\"body\": \"x\"}"), &spec), Err(Malformed::MissingText));
        assert_eq!(extract(&raw(b"{\"text\": \"  \"}"), &spec), Err(Malformed::EmptyText));
        let big = RawRecord { index: 0, bytes: vec![], oversized: true };
        assert_eq!(extract(&big, &spec), Err(Malformed::Oversized));
    }

    #[test]
    fn ids_come_from_the_id_field_or_the_content() {
        let spec = TextSpec { field: Some("doc.body".into()), id_field: Some("n".into()), ..Default::default() };
        let r = extract(&raw(br#"{"n": 12, "doc": {"body": "hello"}}"#), &spec).unwrap();
        assert_eq!(r, TextRecord { id: "12".into(), text: "hello".into() });
        let r = extract(&raw(br#"{"doc": {"body": "hello"}}"#), &spec).unwrap();
        assert_eq!(r.id, content_id("hello"));
        assert_ne!(content_id("hello"), content_id("hello!"));
    }

    #[test]
    fn agent_traces_render_roles_names_and_tool_calls() {
        let messages = json!([
            {"role": "user", "content": "list files"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"type": "function", "function": {"name": "ls", "arguments": "{\"path\":\".\"}"}}]},
            {"role": "tool", "name": "ls", "content": [{"type": "text", "text": "a.rs"}]}
        ]);
        let text = render_messages(messages.as_array().unwrap());
        assert_eq!(text, "### user\nlist files\n\n### assistant\n-> ls({\"path\":\".\"})\n\n### tool (ls)\na.rs");
    }

    #[test]
    fn skip_counts_merge_and_keep_the_first_place() {
        let mut a = SkipCounts::default();
        a.add(Malformed::InvalidJson, "s1", 3);
        let mut b = SkipCounts::default();
        b.add(Malformed::InvalidJson, "s2", 1);
        b.add(Malformed::EmptyText, "s2", 4);
        a.merge(&b);
        assert_eq!(a.counts["invalid_json"], 2);
        assert_eq!(a.first_seen["invalid_json"], "s1#3");
        assert_eq!(a.total(), 3);
    }
}
