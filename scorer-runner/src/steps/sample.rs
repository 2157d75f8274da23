//! Sampling records of a source for steps that look at a sample rather than the whole corpus
//! (cluster, discover, label): a share from each of up to [`MAX_SAMPLED_SHARDS`] shards spread
//! over the source's listing, read from the start of each shard until its share is in. The same
//! plan always yields the same sample.

use std::ops::ControlFlow;

use super::{blocking, list_shards, Context, Shard};
use crate::error::Result;
use crate::formats::for_each_batch;
use crate::plan::SkipCounts;
use crate::plan::{ReadLimits, Source};
use crate::records::{extract, TextRecord};

/// At most this many shards of a source are opened for a sample.
pub const MAX_SAMPLED_SHARDS: usize = 8;

/// A source's sample and what reading it found.
pub struct Sample {
    pub shards: Vec<Shard>,
    pub records: Vec<TextRecord<'static>>,
    pub skipped: SkipCounts,
}

pub async fn sample_source(ctx: &Context, source: &Source, n: usize, read: ReadLimits) -> Result<Sample> {
    let shards = list_shards(&ctx.storage, source).await?;
    let picked = MAX_SAMPLED_SHARDS.min(shards.len());
    let per_shard = n.div_ceil(picked).max(1);
    let mut records = Vec::new();
    let mut skipped = SkipCounts::default();
    for p in 0..picked {
        if records.len() >= n {
            break;
        }
        let shard = shards[p * shards.len() / picked].clone();
        let (input, _guard) = ctx.open_shard(&shard.uri, shard.format).await?;
        let text = source.text.clone();
        let want = per_shard.min(n - records.len());
        let (got, skips) = blocking(move || {
            let mut got = Vec::with_capacity(want);
            let mut skips = SkipCounts::default();
            for_each_batch(&shard.uri, input, shard.format, read.into(), |batch| {
                for raw in &batch.records {
                    if got.len() >= want {
                        break;
                    }
                    match extract(raw, &text) {
                        Ok(record) => got.push(record.into_owned()),
                        Err(reason) => skips.add(reason, &shard.uri, raw.index),
                    }
                }
                Ok(if got.len() >= want { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
            })?;
            Ok((got, skips))
        })
        .await?;
        records.extend(got);
        skipped.merge(&skips);
    }
    Ok(Sample { shards, records, skipped })
}

/// A sample of `n` records from a group's sources, an equal share from each, tagged with their
/// source's name.
pub async fn sample_group(
    ctx: &Context,
    sources: &[Source],
    n: usize,
    read: ReadLimits,
) -> Result<(Vec<(String, TextRecord<'static>)>, SkipCounts)> {
    let share = n.div_ceil(sources.len().max(1));
    let mut records = Vec::new();
    let mut skipped = SkipCounts::default();
    for source in sources {
        let sample = sample_source(ctx, source, share, read).await?;
        records.extend(sample.records.into_iter().map(|r| (source.name.clone(), r)));
        skipped.merge(&sample.skipped);
    }
    records.truncate(n);
    Ok((records, skipped))
}
