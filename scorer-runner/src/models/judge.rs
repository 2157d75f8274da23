//! The judge request: how a model is asked for per-dimension scores of one record. One
//! definition serves every place a model scores a record on a rubric (the teacher's labels, an
//! LLM judge student, the exported SFT data and the benchmark), so a student is trained and run
//! on exactly what the teacher saw.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

use super::truncate::{self, Cut};
use super::Chat;
use crate::error::Result;
use crate::plan::{Dimension, Scale};

/// One dimension's score in a reply: a bare score (what a judge student is asked for), or a
/// score with the teacher's rationale.
#[derive(Debug, Deserialize)]
#[serde(from = "ScoreReply")]
pub struct Scored {
    pub score: i64,
    /// `None` for a bare score.
    pub rationale: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ScoreReply {
    Bare(i64),
    Rated {
        score: i64,
        #[serde(default)]
        rationale: String,
    },
}

impl From<ScoreReply> for Scored {
    fn from(reply: ScoreReply) -> Self {
        match reply {
            ScoreReply::Bare(score) => Scored { score, rationale: None },
            ScoreReply::Rated { score, rationale } => Scored { score, rationale: Some(rationale) },
        }
    }
}

/// The reply schema, system prompt and record cut for a group's dimensions,
/// prepared once per group and reused for every record. The teacher (`label`) asks for a
/// rationale with each score; a judge student (`score`, `distill`'s validation) and the SFT
/// export for bare scores. Both cut a long record to the same number of tokens, head plus tail.
pub struct JudgeRequest {
    dimensions: Vec<Dimension>,
    scale: Scale,
    with_rationale: bool,
    schema: Value,
    system: String,
    max_record_tokens: usize,
}

/// A record's scores, and where its text was cut to fit (if it was).
pub struct Judged {
    pub scores: BTreeMap<String, Scored>,
    pub cut: Option<Cut>,
}

impl JudgeRequest {
    pub fn new(dimensions: Vec<Dimension>, scale: Scale, with_rationale: bool, max_record_tokens: usize) -> Self {
        JudgeRequest {
            schema: scores_schema(&dimensions, scale, with_rationale),
            system: system_prompt(scale, with_rationale),
            dimensions,
            scale,
            with_rationale,
            max_record_tokens,
        }
    }

    /// The dimensions asked for, in reply order.
    pub fn dimensions(&self) -> &[Dimension] {
        &self.dimensions
    }

    /// The system prompt.
    pub fn system(&self) -> &str {
        &self.system
    }

    /// The user prompt for one record: the rubric, each dimension with its scoring guide (the
    /// anchors that make a 2 mean the same on every record), then the record's text cut to the
    /// request's tokens of `tokenizer` (whitespace words without one), and where it was cut.
    pub fn user(&self, text: &str, tokenizer: Option<&tokenizers::Tokenizer>) -> (String, Option<Cut>) {
        let (text, cut) = truncate::for_model(text, tokenizer, self.max_record_tokens);
        let mut out = String::from("Rubric:\n");
        for d in &self.dimensions {
            out.push_str(&format!("- {}", d.id));
            if !d.name.is_empty() && d.name != d.id {
                out.push_str(&format!(" ({})", d.name));
            }
            if !d.description.is_empty() {
                out.push_str(&format!(": {}", d.description));
            }
            out.push('\n');
            for line in d.guide.lines().map(str::trim).filter(|l| !l.is_empty()) {
                out.push_str(&format!("    {line}\n"));
            }
        }
        out.push_str("\nRecord:\n");
        out.push_str(&text);
        (out, cut)
    }

    /// Every dimension's score of `text`, cut to the request's tokens of `chat`'s tokenizer;
    /// [`crate::Error::Model`] when no reply names every dimension with an in-scale score in
    /// the shape asked for (with or without a rationale).
    pub async fn ask(&self, chat: &Chat, text: &str) -> Result<Judged> {
        let range = self.scale.min as i64..=self.scale.max as i64;
        let fits = |s: &Scored| range.contains(&s.score) && s.rationale.is_some() == self.with_rationale;
        let complete =
            |reply: &BTreeMap<String, Scored>| self.dimensions.iter().all(|d| reply.get(&d.id).is_some_and(fits));
        let (user, cut) = self.user(text, chat.tokenizer());
        let scores = chat.json(&self.system, &user, &self.schema, complete).await?;
        Ok(Judged { scores, cut })
    }
}

/// The judge's instructions. Teachers also give a short rationale per dimension; students only
/// the scores.
fn system_prompt(scale: Scale, with_rationale: bool) -> String {
    let answer = if with_rationale {
        "an object with its integer `score` and a one-sentence `rationale`"
    } else {
        "its integer score"
    };
    format!(
        "You are a data-quality judge for LLM mid-training data. Score the record on each rubric \
         dimension with an integer from {} (worst) to {} (best). Answer with a JSON object mapping \
         each dimension id to {answer}.",
        scale.min, scale.max
    )
}

/// The reply schema: every dimension, each with a score (and, for teachers, a rationale).
fn scores_schema(dimensions: &[Dimension], scale: Scale, with_rationale: bool) -> Value {
    let score = json!({"type": "integer", "minimum": scale.min, "maximum": scale.max});
    let per_dim = if with_rationale {
        json!({
            "type": "object",
            "properties": {"score": score, "rationale": {"type": "string", "maxLength": 120}},
            "required": ["score", "rationale"],
            "additionalProperties": false
        })
    } else {
        score
    };
    let properties: serde_json::Map<String, Value> =
        dimensions.iter().map(|d| (d.id.clone(), per_dim.clone())).collect();
    json!({
        "type": "object",
        "properties": properties,
        "required": dimensions.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        "additionalProperties": false,
        "x-guidance": {"whitespace_flexible": false}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dimension_reaches_the_prompt_with_its_guide() {
        let dimension = |id: &str, guide: &str| Dimension {
            id: id.into(),
            name: format!("{id} name"),
            description: format!("what {id} measures"),
            guide: guide.into(),
        };
        let dims = vec![dimension("clarity", "1: unreadable.\n5: crisp and precise."), dimension("depth", "")];
        for with_rationale in [true, false] {
            let user =
                JudgeRequest::new(dims.clone(), Scale::default(), with_rationale, 100).user("THE RECORD", None).0;
            assert_eq!(
                user,
                "Rubric:\n- clarity (clarity name): what clarity measures\n    1: unreadable.\n    5: crisp and \
                 precise.\n- depth (depth name): what depth measures\n\nRecord:\nTHE RECORD"
            );
        }
    }

    #[test]
    fn replies_parse_with_or_without_rationales() {
        let reply: BTreeMap<String, Scored> =
            serde_json::from_str(r#"{"a": 4, "b": {"score": 2, "rationale": "thin"}, "c": {"score": 5}}"#).unwrap();
        let got: Vec<(i64, Option<&str>)> = reply.values().map(|s| (s.score, s.rationale.as_deref())).collect();
        assert_eq!(got, [(4, None), (2, Some("thin")), (5, Some(""))]);
        assert!(serde_json::from_str::<BTreeMap<String, Scored>>(r#"{"a": "high"}"#).is_err());
    }
}
