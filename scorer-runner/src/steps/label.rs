//! `label`: the teacher scores a sample of each group's records on every anchored dimension of
//! the group (an integer on the plan's scale and a one-sentence rationale per dimension), in the
//! format `distill` reads; `distill` splits them into train and validation by id hash.
//!
//! A group's sample is cut into units of at most `recordsPerUnit` records, each written to its
//! own file (`labels/<group>/<unit>.jsonl`) and committed as soon as its replies are in. Teacher
//! calls are the expensive part of the whole chain (money, with a paid endpoint), so a killed Job
//! loses only the units it had in flight: a rerun samples the same records (the sample is a
//! function of the plan) and asks the teacher only about the records of uncommitted units.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::OnceCell;

use super::sample::sample_group;
use super::Context;
use crate::error::{Error, Result};
use crate::models::judge::{JudgeRequest, Judged};
use crate::models::Chat;
use crate::plan::SkipCounts;
use crate::plan::{LabelPlan, LabelResult};
use crate::records::TextRecord;
use crate::storage::join;
use crate::units::unit_id;

/// A sampled record and its source.
type Sampled = (String, TextRecord<'static>);

/// A sampled record and the teacher's reply.
type Reply<'a> = (&'a Sampled, Result<Judged>);

pub async fn run(ctx: &Context, plan: &LabelPlan) -> Result<LabelResult> {
    if plan.groups.iter().any(|g| g.dimensions.is_empty()) || plan.groups.is_empty() {
        return Err(Error::plan("label needs groups, each with dimensions"));
    }
    let per_unit = plan.records_per_unit.max(1);
    let teacher = Arc::new(Chat::load(&ctx.storage, &ctx.scratch, &plan.pass.teacher).await?);
    let mut labelled = BTreeMap::new();
    let mut skipped = SkipCounts::default();
    // Group by group, so that one group's sample is in memory at a time.
    for group in &plan.groups {
        let units = plan.records_per_group.div_ceil(per_unit);
        let ids: Vec<String> = (0..units).map(|u| unit_id(&group.name, &format!("{}/{u}", group.name))).collect();
        // Sampled once, and only if some unit of the group is not committed yet.
        let sample: OnceCell<(Vec<Sampled>, SkipCounts)> = OnceCell::new();
        let request = JudgeRequest::new(group.dimensions.clone(), plan.pass.scale, true, plan.pass.max_record_tokens);
        let (sample, request, teacher) = (&sample, &request, &teacher);
        let mut n = 0;
        ctx.units(&plan.output)
            .run_each(
                &ids,
                |u| async move {
                    let (records, sampling_skips) = sample
                        .get_or_try_init(|| {
                            sample_group(ctx, &group.sources, plan.records_per_group, plan.pass.read, plan.pass.seed)
                        })
                        .await?;
                    let records = records.iter().skip(u * per_unit).take(per_unit);
                    let (lines, mut skips) = label_unit(request, teacher, &group.name, records).await?;
                    if u == 0 {
                        // What reading the sample skipped, counted once per group.
                        skips.merge(sampling_skips);
                    }
                    let file = join(&plan.output, &format!("labels/{}/{u:05}.jsonl", group.name));
                    ctx.storage.put(&file, lines.body.into()).await?;
                    Ok(UnitLabels { file, labelled: lines.count, skipped: skips })
                },
                |_, commit| {
                    let unit: UnitLabels = commit.output;
                    n += unit.labelled;
                    skipped.merge(&unit.skipped);
                },
            )
            .await?;
        labelled.insert(group.name.clone(), n);
    }
    let result = LabelResult { labels: join(&plan.output, "labels/"), labelled, skipped };
    ctx.write_result(&plan.output, &result).await?;
    Ok(result)
}

/// A committed unit: its label file, how many labels it holds and what it skipped.
#[derive(Serialize, Deserialize)]
struct UnitLabels {
    file: String,
    labelled: u64,
    skipped: SkipCounts,
}

/// A unit's label lines (JSONL, sorted by record id) and how many there are.
struct Lines {
    body: Vec<u8>,
    count: u64,
}

/// The teacher's labels of one unit's records; a record whose replies never fit the schema is
/// counted as skipped (`invalid_reply`), any other model error fails the unit.
async fn label_unit(
    request: &JudgeRequest,
    teacher: &Arc<Chat>,
    group: &str,
    records: impl Iterator<Item = &Sampled>,
) -> Result<(Lines, SkipCounts)> {
    let replies: Vec<Reply> = futures::stream::iter(records)
        .map(|sampled| async move { (sampled, request.ask(teacher, &sampled.1.text).await) })
        .buffer_unordered(teacher.concurrency())
        .collect()
        .await;
    let mut skipped = SkipCounts::default();
    let mut lines = Vec::new();
    for ((source, record), reply) in replies {
        match reply {
            Ok(Judged { scores: reply, cut: truncated }) => {
                let dims = request.dimensions();
                let scores: BTreeMap<&str, i64> = dims.iter().map(|d| (d.id.as_str(), reply[&d.id].score)).collect();
                let rationales: BTreeMap<&str, &str> = dims
                    .iter()
                    .map(|d| (d.id.as_str(), reply[&d.id].rationale.as_deref().unwrap_or_default()))
                    .collect();
                let line = json!({
                    "id": record.id, "source": source, "group": group, "text": record.text,
                    "scores": scores, "rationales": rationales, "truncated": truncated,
                });
                lines.push((record.id.clone(), serde_json::to_vec(&line).map_err(|e| Error::json("label", e))?));
            }
            Err(Error::Model(message)) => {
                tracing::warn!(record = %record.id, %message, "no usable label");
                skipped.add_reason("invalid_reply", source, 0);
            }
            Err(e) => return Err(e),
        }
    }
    // Same bytes whatever order the replies came in.
    lines.sort();
    let count = lines.len() as u64;
    let mut body = Vec::new();
    for (_, line) in lines {
        body.extend(line);
        body.push(b'\n');
    }
    Ok((Lines { body, count }, skipped))
}
