//! `label`: the teacher scores a sample of each group's records on every anchored dimension of
//! the group (an integer on the plan's scale and a one-sentence rationale per dimension). The
//! labels are written in the format `distill` reads, one file per group; `distill` splits them
//! into train and validation by id hash. One unit per group.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use serde_json::json;

use super::sample::sample_group;
use super::Context;
use crate::error::{Error, Result};
use crate::models::judge::{JudgeRequest, Scored};
use crate::models::{truncate, Chat};
use crate::plan::SkipCounts;
use crate::plan::{LabelGroup, LabelPlan, LabelResult};
use crate::storage::join;
use crate::units::unit_id;

pub async fn run(ctx: &Context, plan: &LabelPlan) -> Result<LabelResult> {
    if plan.groups.iter().any(|g| g.dimensions.is_empty()) || plan.groups.is_empty() {
        return Err(Error::plan("label needs groups, each with dimensions"));
    }
    let teacher = Arc::new(Chat::load(&ctx.storage, &ctx.scratch, &plan.pass.teacher).await?);
    let ids: Vec<String> = plan.groups.iter().map(|g| unit_id(&g.name, &g.name)).collect();
    let commits =
        ctx.units(&plan.output).run(&ids, |i| label_group(ctx, plan, &plan.groups[i], teacher.clone())).await?;
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

async fn label_group(
    ctx: &Context,
    plan: &LabelPlan,
    group: &LabelGroup,
    teacher: Arc<Chat>,
) -> Result<(String, u64, SkipCounts)> {
    let (records, mut skipped) = sample_group(ctx, &group.sources, plan.records_per_group, plan.pass.read).await?;
    let request = JudgeRequest::new(group.dimensions.clone(), plan.pass.scale, true);
    let replies: Vec<Reply> = futures::stream::iter(records)
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
                let scores: BTreeMap<&str, i64> =
                    group.dimensions.iter().map(|d| (d.id.as_str(), reply[&d.id].score)).collect();
                let rationales: BTreeMap<&str, &str> = group
                    .dimensions
                    .iter()
                    .map(|d| (d.id.as_str(), reply[&d.id].rationale.as_deref().unwrap_or_default()))
                    .collect();
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
