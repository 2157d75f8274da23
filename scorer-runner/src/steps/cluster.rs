//! `cluster`: a mean feature vector per source from a sample of its records, the sources'
//! pairwise cosine similarity, and k-means over the sources into capability groups (k given, or
//! chosen by silhouette), unless the plan names the groups.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{blocking, Context};
use crate::error::{Error, Result};
use crate::featurize::{self, Featurizer};
use crate::plan::{ClusterPlan, ClusterResult, GroupDef, SourceSample};
use crate::stats;
use crate::storage::join;
use crate::units::unit_id;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SourceVector {
    sample: SourceSample,
    /// The mean vector, as zstd-compressed little-endian f32s.
    vector: String,
}

fn validate(plan: &ClusterPlan) -> Result<()> {
    let mut names = BTreeSet::new();
    for source in &plan.sources {
        if !names.insert(source.name.as_str()) {
            return Err(Error::plan(format!("source {:?} is listed twice", source.name)));
        }
    }
    if names.is_empty() {
        return Err(Error::plan("no sources"));
    }
    if let Some(groups) = &plan.groups {
        let mut seen = BTreeSet::new();
        for source in groups.iter().flat_map(|g| &g.sources) {
            if !names.contains(source.as_str()) {
                return Err(Error::plan(format!("group member {source:?} is not a source")));
            }
            if !seen.insert(source.as_str()) {
                return Err(Error::plan(format!("source {source:?} is in two groups")));
            }
        }
        if seen.len() != names.len() {
            return Err(Error::plan("every source must be in exactly one group"));
        }
    }
    Ok(())
}

pub async fn run(ctx: &Context, plan: &ClusterPlan) -> Result<ClusterResult> {
    validate(plan)?;
    let featurizer = featurize::build(&ctx.storage, &ctx.scratch, &plan.featurizer, None).await?;
    let ids: Vec<String> = plan.sources.iter().map(|s| unit_id(&s.name, &s.uri)).collect();
    let commits = ctx.units(&plan.output).run(&ids, |i| sample_source(ctx, plan, i, featurizer.clone())).await?;
    let mut samples = Vec::new();
    let mut means = Vec::new();
    for commit in commits {
        let SourceVector { sample, vector } = commit.output;
        let bytes = ctx.storage.get(&vector).await?;
        let raw = zstd::stream::decode_all(&bytes[..])
            .map_err(|e| Error::Shard { uri: vector.clone(), message: e.to_string() })?;
        means.push(
            raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect::<Vec<f32>>(),
        );
        samples.push(sample);
    }
    let similarity: Vec<Vec<f64>> = means.iter().map(|a| means.iter().map(|b| stats::cosine(a, b)).collect()).collect();
    let names: Vec<String> = plan.sources.iter().map(|s| s.name.clone()).collect();
    let (groups, silhouette) = match &plan.groups {
        Some(groups) => {
            let assign: Vec<usize> =
                names.iter().map(|n| groups.iter().position(|g| g.sources.contains(n)).expect("validated")).collect();
            (groups.clone(), stats::silhouette(&similarity, &assign))
        }
        None => {
            let (assign, silhouette) = choose_partition(&means, &similarity, plan);
            (name_groups(&names, &assign), silhouette)
        }
    };
    let result = ClusterResult { groups, sources: samples, similarity, silhouette };
    ctx.write_result(&plan.output, &result).await?;
    Ok(result)
}

/// k-means with the plan's k, or the k in 2..=maxK with the best silhouette.
fn choose_partition(means: &[Vec<f32>], similarity: &[Vec<f64>], plan: &ClusterPlan) -> (Vec<usize>, f64) {
    let n = means.len();
    if let Some(k) = plan.k {
        let assign = stats::kmeans(means, k, plan.seed);
        let s = stats::silhouette(similarity, &assign);
        return (assign, s);
    }
    if n < 3 {
        return (vec![0; n], 0.0);
    }
    (2..=plan.max_k.min(n - 1))
        .map(|k| {
            let assign = stats::kmeans(means, k, plan.seed);
            let s = stats::silhouette(similarity, &assign);
            (assign, s)
        })
        .fold((vec![0; n], f64::NEG_INFINITY), |best, next| if next.1 > best.1 { next } else { best })
}

/// Groups named `group-1`, `group-2`, ... in order of their first source.
fn name_groups(names: &[String], assign: &[usize]) -> Vec<GroupDef> {
    let k = assign.iter().max().map_or(0, |m| m + 1);
    (0..k)
        .map(|g| GroupDef {
            name: format!("group-{}", g + 1),
            sources: names.iter().zip(assign).filter(|(_, &a)| a == g).map(|(n, _)| n.clone()).collect(),
        })
        .collect()
}

async fn sample_source(
    ctx: &Context,
    plan: &ClusterPlan,
    i: usize,
    featurizer: Arc<dyn Featurizer>,
) -> Result<SourceVector> {
    let source = &plan.sources[i];
    let sample = super::sample::sample_source(ctx, source, plan.sample_per_source, plan.read, plan.seed).await?;
    let texts: Vec<String> = sample.records.iter().map(|r| r.text.to_string()).collect();
    let sum = blocking(move || {
        let mut sum = vec![0f32; featurizer.dim()];
        for chunk in texts.chunks(256) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            featurizer.featurize(&refs)?.iter().for_each(|v| v.add_to(&mut sum, 1.0 / texts.len().max(1) as f32));
        }
        Ok(sum)
    })
    .await?;
    let bytes: Vec<u8> = sum.iter().flat_map(|v| v.to_le_bytes()).collect();
    let vector = join(&plan.output, &format!("vectors/{}.f32.zst", unit_id(&source.name, &source.uri)));
    let compressed = zstd::bulk::compress(&bytes, 3).map_err(|e| Error::io("vector", e))?;
    ctx.storage.put(&vector, compressed.into()).await?;
    let sample = SourceSample {
        name: source.name.clone(),
        shards: sample.shards.len(),
        bytes: sample.shards.iter().map(|s| s.size).sum(),
        sampled_records: sample.records.len(),
        skipped: sample.skipped,
    };
    Ok(SourceVector { sample, vector })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_named_in_order_of_their_first_source() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let groups = name_groups(&names, &[0, 1, 0]);
        assert_eq!(groups[0], GroupDef { name: "group-1".into(), sources: vec!["a".into(), "c".into()] });
        assert_eq!(groups[1].sources, vec!["b".to_string()]);
    }
}
