//! `label`: the teacher scores a sample of each group's records on every anchored dimension of
//! the group (an integer on the plan's scale and a one-sentence rationale per dimension). The
//! labels are written in the format `distill` reads, one file per group; `distill` splits them
//! into train and validation by id hash. One unit per group.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::sample::sample_group;
use super::Context;
use crate::error::{Error, Result};
use crate::models::{truncate, Chat};
use crate::plan::{DimensionRef, LabelGroup, LabelPlan, LabelResult, Scale};
use crate::prompts;
use crate::records::SkipCounts;
use crate::storage::join;
use crate::units::unit_id;

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

/// How a model is asked for per-dimension scores of one text: the reply schema, system prompt
/// and token budget for a group's dimensions, prepared once. The teacher (`label`) asks for a
/// rationale with each score; a judge student (`score`) for bare scores.
pub struct JudgeRequest<'d> {
    dimensions: &'d [DimensionRef],
    scale: Scale,
    with_rationale: bool,
    schema: Value,
    system: String,
    max_tokens: usize,
}

impl<'d> JudgeRequest<'d> {
    pub fn new(dimensions: &'d [DimensionRef], scale: Scale, with_rationale: bool) -> Self {
        let max_tokens = if with_rationale { 64 + 96 * dimensions.len() } else { 16 + 8 * dimensions.len() };
        JudgeRequest {
            dimensions,
            scale,
            with_rationale,
            schema: scores_schema(dimensions, scale, with_rationale),
            system: prompts::judge_system(scale, with_rationale),
            max_tokens,
        }
    }

    /// Every dimension's score of `text`; [`Error::Model`] when no reply names every dimension
    /// with an in-scale score in the shape asked for (with or without a rationale).
    pub async fn ask(&self, chat: &Chat, text: &str) -> Result<BTreeMap<String, Scored>> {
        let user = prompts::judge_user(self.dimensions, text);
        let range = self.scale.min as i64..=self.scale.max as i64;
        let fits = |s: &Scored| range.contains(&s.score) && s.rationale.is_some() == self.with_rationale;
        let complete = |reply: &BTreeMap<String, Scored>| self.dimensions.iter().all(|d| reply.get(&d.id).is_some_and(fits));
        chat.json(&self.system, &user, &self.schema, self.max_tokens, complete).await
    }
}

/// The reply schema: every dimension, each with a score (and, for teachers, a rationale).
fn scores_schema(dimensions: &[DimensionRef], scale: Scale, with_rationale: bool) -> Value {
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
    let properties: serde_json::Map<String, Value> = dimensions.iter().map(|d| (d.id.clone(), per_dim.clone())).collect();
    json!({
        "type": "object",
        "properties": properties,
        "required": dimensions.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        "additionalProperties": false,
        "x-guidance": {"whitespace_flexible": false}
    })
}

pub async fn run(ctx: &Context, plan: &LabelPlan) -> Result<LabelResult> {
    if plan.groups.iter().any(|g| g.dimensions.is_empty()) || plan.groups.is_empty() {
        return Err(Error::plan("label needs groups, each with dimensions"));
    }
    let teacher = Arc::new(Chat::load(ctx, &plan.teacher).await?);
    let ids: Vec<String> = plan.groups.iter().map(|g| unit_id(&g.name, &g.name)).collect();
    let commits = ctx.units(&plan.output).run(&ids, |i| label_group(ctx, plan, &plan.groups[i], teacher.clone())).await?;
    let mut labelled = BTreeMap::new();
    let mut skipped = SkipCounts::default();
    for commit in commits {
        let (group, n, s): (String, u64, SkipCounts) = commit.output;
        labelled.insert(group, n);
        skipped.merge(&s);
    }
    let result = LabelResult { labels: join(&plan.output, "labels/"), labelled, skipped };
    ctx.write_result(&plan.output, &result).await?;
    Ok(result)
}

/// A sampled record's source, the record, where its text was cut to fit the teacher's context
/// (if it was), and the teacher's scores.
type Reply = (String, crate::records::TextRecord<'static>, Option<truncate::Cut>, Result<BTreeMap<String, Scored>>);

async fn label_group(ctx: &Context, plan: &LabelPlan, group: &LabelGroup, teacher: Arc<Chat>) -> Result<(String, u64, SkipCounts)> {
    let (records, mut skipped) = sample_group(ctx, &group.sources, plan.records_per_group, plan.read).await?;
    let request = JudgeRequest::new(&group.dimensions, plan.scale, true);
    let replies: Vec<Reply> =
        futures::stream::iter(records)
            .map(|(source, record)| {
                let (teacher, request) = (teacher.clone(), &request);
                async move {
                    let (text, cut) = truncate::for_teacher(&record.text, teacher.tokenizer());
                    let reply = request.ask(&teacher, &text).await;
                    (source, record, cut, reply)
                }
            })
            .buffer_unordered(teacher.concurrency())
            .collect()
            .await;
    let mut lines = Vec::new();
    for (source, record, truncated, reply) in replies {
        match reply {
            Ok(reply) => {
                let scores: BTreeMap<&str, i64> = group.dimensions.iter().map(|d| (d.id.as_str(), reply[&d.id].score)).collect();
                let rationales: BTreeMap<&str, &str> =
                    group.dimensions.iter().map(|d| (d.id.as_str(), reply[&d.id].rationale.as_deref().unwrap_or_default())).collect();
                lines.push((
                    record.id.clone(),
                    json!({
                        "id": record.id, "source": source, "group": group.name, "text": record.text,
                        "scores": scores, "rationales": rationales, "truncated": truncated,
                    }),
                ));
            }
            Err(Error::Model(message)) => {
                tracing::warn!(record = %record.id, %message, "no usable label");
                skipped.add_reason("invalid_reply", &source, 0);
            }
            Err(e) => return Err(e),
        }
    }
    // Same bytes whatever order the replies came in.
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    let mut body = Vec::new();
    for (_, line) in &lines {
        body.extend(serde_json::to_vec(line).map_err(|e| Error::json("label", e))?);
        body.push(b'\n');
    }
    ctx.storage.put(&join(&plan.output, &format!("labels/{}.jsonl", group.name)), body.into()).await?;
    Ok((group.name.clone(), lines.len() as u64, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_with_or_without_rationales() {
        let reply: BTreeMap<String, Scored> =
            serde_json::from_str(r#"{"a": 4, "b": {"score": 2, "rationale": "thin"}, "c": {"score": 5}}"#).unwrap();
        let got: Vec<(i64, Option<&str>)> = reply.values().map(|s| (s.score, s.rationale.as_deref())).collect();
        assert_eq!(got, [(4, None), (2, Some("thin")), (5, Some(""))]);
        assert!(serde_json::from_str::<BTreeMap<String, Scored>>(r#"{"a": "high"}"#).is_err());
    }
}
