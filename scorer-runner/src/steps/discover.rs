//! `discover`: rubrics found in the data. Per group, the teacher reads a sample of records and
//! freely proposes quality dimensions for each (name, description, why it matters here, score).
//! The proposals are embedded and clustered; clusters backed by too few records are dropped; the
//! proposal nearest each remaining cluster's centre becomes an anchor dimension; the teacher then
//! writes a scoring guide per anchor. One unit per group.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::sample::sample_group;
use super::{blocking, Context};
use crate::error::{Error, Result};
use crate::featurize::{Featurizer, HashedFeaturizer};
use crate::models::{truncate, Chat, Embedder};
use crate::plan::SkipCounts;
use crate::plan::{AnchoredDimension, Dimension, DiscoverPlan, DiscoverResult, GroupRubric, GroupSources, HashedSpec};
use crate::prompts;
use crate::stats;
use crate::storage::join;
use crate::units::unit_id;

/// The most dimensions the teacher may propose for one record.
const MAX_PROPOSALS_PER_RECORD: usize = 5;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Proposed {
    name: String,
    description: String,
    why: String,
    score: i64,
}

#[derive(Debug, Deserialize)]
struct ProposalReply {
    dimensions: Vec<Proposed>,
}

#[derive(Debug, Deserialize)]
struct GuideReply {
    guide: String,
}

/// A proposal as written to the proposals file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Proposal {
    pub record: String,
    pub source: String,
    pub name: String,
    pub description: String,
    pub why: String,
    pub score: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<truncate::Cut>,
    /// The anchor this proposal's cluster became, if it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
}

fn proposal_schema(plan: &DiscoverPlan) -> Value {
    json!({
        "type": "object",
        "properties": {"dimensions": {
            "type": "array", "minItems": 1, "maxItems": MAX_PROPOSALS_PER_RECORD,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 40},
                    "description": {"type": "string", "minLength": 1, "maxLength": 160},
                    "why": {"type": "string", "maxLength": 160},
                    "score": {"type": "integer", "minimum": plan.pass.scale.min, "maximum": plan.pass.scale.max}
                },
                "required": ["name", "description", "why", "score"],
                "additionalProperties": false
            }
        }},
        "required": ["dimensions"],
        "additionalProperties": false,
        "x-guidance": {"whitespace_flexible": false}
    })
}

fn guide_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"guide": {"type": "string", "minLength": 1, "maxLength": 300}},
        "required": ["guide"],
        "additionalProperties": false,
        "x-guidance": {"whitespace_flexible": false}
    })
}

pub async fn run(ctx: &Context, plan: &DiscoverPlan) -> Result<DiscoverResult> {
    if plan.groups.is_empty() || plan.dimensions_per_group == 0 {
        return Err(Error::plan("discover needs groups and dimensionsPerGroup > 0"));
    }
    let teacher = Arc::new(Chat::load(&ctx.storage, &ctx.scratch, &plan.pass.teacher).await?);
    let embedder = match &plan.embedder {
        Some(spec) => Some(Arc::new(Embedder::load(&ctx.storage, &ctx.scratch, spec).await?)),
        None => None,
    };
    let ids: Vec<String> = plan.groups.iter().map(|g| unit_id(&g.name, &g.name)).collect();
    let commits = ctx
        .units(&plan.output)
        .run(&ids, |i| discover_group(ctx, plan, &plan.groups[i], teacher.clone(), embedder.clone()))
        .await?;
    let result = DiscoverResult { groups: commits.into_iter().map(|c| c.output).collect() };
    ctx.write_result(&plan.output, &result).await?;
    Ok(result)
}

async fn discover_group(
    ctx: &Context,
    plan: &DiscoverPlan,
    group: &GroupSources,
    teacher: Arc<Chat>,
    embedder: Option<Arc<Embedder>>,
) -> Result<GroupRubric> {
    let (records, _skipped) =
        sample_group(ctx, &group.sources, plan.records_per_group, plan.pass.read, plan.pass.seed).await?;
    let schema = proposal_schema(plan);
    let replies: Vec<(String, String, Option<truncate::Cut>, Result<ProposalReply>)> = futures::stream::iter(records)
        .map(|(source, record)| {
            let (teacher, schema) = (teacher.clone(), &schema);
            async move {
                let (text, cut) = truncate::for_model(&record.text, teacher.tokenizer(), plan.pass.max_record_tokens);
                let user = prompts::discover_user(&source, &text, plan.pass.scale);
                let reply = teacher
                    .json::<ProposalReply>(prompts::DISCOVER_SYSTEM, &user, schema, |r| !r.dimensions.is_empty())
                    .await;
                (record.id, source, cut, reply)
            }
        })
        .buffer_unordered(teacher.concurrency())
        .collect()
        .await;
    let mut proposals = Vec::new();
    let mut failed = SkipCounts::default();
    for (record, source, truncated, reply) in replies {
        match reply {
            Ok(reply) => {
                proposals.extend(reply.dimensions.into_iter().take(MAX_PROPOSALS_PER_RECORD).map(|p| Proposal {
                    record: record.clone(),
                    source: source.clone(),
                    name: p.name.trim().to_string(),
                    description: p.description.trim().to_string(),
                    why: p.why,
                    score: p.score,
                    truncated,
                    anchor: None,
                }))
            }
            Err(Error::Model(message)) => {
                tracing::warn!(%record, %message, "no usable proposal");
                failed.add_reason("invalid_reply", &source, 0);
            }
            Err(e) => return Err(e),
        }
    }
    if proposals.is_empty() {
        return Err(Error::Model(format!(
            "group {:?}: the teacher gave no usable proposal ({:?})",
            group.name, failed.counts
        )));
    }
    // Stable input order for clustering, whatever order the replies came in.
    proposals.sort_by(|a, b| (&a.record, &a.name).cmp(&(&b.record, &b.name)));
    let vectors = embed_proposals(&proposals, embedder.as_deref()).await?;
    let k = plan.dimensions_per_group.min(proposals.len());
    let seed = plan.pass.seed;
    let vectors_c = vectors.clone();
    let assign = blocking(move || Ok(stats::kmeans(&vectors_c, k, seed))).await?;
    let mut anchors = Vec::new();
    let mut used_ids = BTreeSet::new();
    for cluster in 0..k {
        let members: Vec<usize> = (0..proposals.len()).filter(|&i| assign[i] == cluster).collect();
        let support = members.iter().map(|&i| &proposals[i].record).collect::<HashSet<_>>().len();
        if members.is_empty() || support < plan.min_support {
            continue;
        }
        let dim = vectors[0].len();
        let centre: Vec<f32> =
            (0..dim).map(|d| members.iter().map(|&i| vectors[i][d]).sum::<f32>() / members.len() as f32).collect();
        let nearest = *members
            .iter()
            .max_by(|&&a, &&b| stats::cosine(&vectors[a], &centre).total_cmp(&stats::cosine(&vectors[b], &centre)))
            .expect("non-empty cluster");
        let id = unique_id(&slug(&proposals[nearest].name), &mut used_ids);
        for &i in &members {
            proposals[i].anchor = Some(id.clone());
        }
        anchors.push((nearest, id, support));
    }
    let mut dimensions = Vec::new();
    for (nearest, id, support) in anchors {
        let p = &proposals[nearest];
        let guide = teacher
            .json::<GuideReply>(
                prompts::GUIDE_SYSTEM,
                &prompts::guide_user(&p.name, &p.description, plan.pass.scale),
                &guide_schema(),
                |g| !g.guide.trim().is_empty(),
            )
            .await
            .map(|g| g.guide)
            .unwrap_or_else(|e| {
                // No guide rather than an error text in every judge prompt that follows.
                tracing::warn!(dimension = %id, error = %e, "the teacher wrote no scoring guide");
                String::new()
            });
        dimensions.push(AnchoredDimension {
            dimension: Dimension { id, name: p.name.clone(), description: p.description.clone(), guide },
            support: Some(support as u64),
        });
    }
    dimensions.sort_by(|a, b| b.support.cmp(&a.support).then(a.dimension.id.cmp(&b.dimension.id)));
    let uri = join(&plan.output, &format!("proposals/{}.jsonl", group.name));
    let mut body = Vec::new();
    for p in &proposals {
        body.extend(serde_json::to_vec(p).map_err(|e| Error::json("proposal", e))?);
        body.push(b'\n');
    }
    ctx.storage.put(&uri, body.into()).await?;
    Ok(GroupRubric { name: group.name.clone(), pinned: false, dimensions, proposals: Some(uri) })
}

/// Proposal vectors ("name: description"): the embedder's, or hashed character n-grams.
async fn embed_proposals(proposals: &[Proposal], embedder: Option<&Embedder>) -> Result<Vec<Vec<f32>>> {
    let texts: Vec<String> = proposals.iter().map(|p| format!("{}: {}", p.name, p.description)).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    if let Some(embedder) = embedder {
        return embedder.embed(&refs).await;
    }
    let spec = HashedSpec { dim_log2: 12, word_ngrams: 1, char_ngrams: Some([3, 4]), ..Default::default() };
    let featurizer = HashedFeaturizer::new(spec, None)?;
    Ok(featurizer
        .featurize(&refs)?
        .into_iter()
        .map(|v| {
            let mut dense = vec![0f32; featurizer.dim()];
            v.add_to(&mut dense, 1.0);
            dense
        })
        .collect())
}

/// A lower-case identifier from a dimension name.
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-');
    let out: String = out.chars().take(40).collect();
    if out.is_empty() {
        "dimension".into()
    } else {
        out
    }
}

fn unique_id(base: &str, used: &mut BTreeSet<String>) -> String {
    let mut id = base.to_string();
    let mut n = 2;
    while !used.insert(id.clone()) {
        id = format!("{base}-{n}");
        n += 1;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_slugs_made_unique() {
        let mut used = BTreeSet::new();
        assert_eq!(unique_id(&slug("Code Correctness!"), &mut used), "code-correctness");
        assert_eq!(unique_id(&slug("code correctness"), &mut used), "code-correctness-2");
        assert_eq!(slug("   "), "dimension");
    }
}
