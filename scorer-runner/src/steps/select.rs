//! `select`: writes the kept records, byte-identical (JSONL) or row-identical (Parquet), in each
//! source's own format, and the manifest. One unit per input shard: it reads the shard and its
//! score shard side by side (both in record order) and keeps a record when its aggregate falls in
//! a bin at or above its scope's cut, or in the bin below it and the tie draw keeps it: exactly
//! the records the threshold counted. Each group's manifest also carries a comparison sample:
//! its scored records of the smallest id hashes, with their aggregate and whether they were kept.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use super::{shard_units, Context, ShardUnit};
use crate::bottom_k::BottomK;
use crate::error::{Error, Result};
use crate::formats::scores::ScoreKeys;
use crate::formats::{for_each_batch, RawRecord, ReadOptions, ShardWriter};
use crate::histogram::Cut;
use crate::plan::{
    Kept, Manifest, SampledRecord, ScoreResult, ScoredShard, SelectPlan, SelectedShard, TextSpec, ThresholdResult,
};
use crate::records::extract;
use crate::storage::join;
use crate::tie_draw::draw_key;

pub const MANIFEST: &str = "manifest.json";

/// Records in a group's comparison sample: Jaccard overlaps and rank correlations on 4,096
/// records are within a few hundredths of the whole corpus's.
pub const COMPARISON_SAMPLE: usize = 4096;

/// One record in this many (by index) has its id checked against its score row's: a shard
/// rewritten in place with its size and version unchanged (which the score units bind to) is
/// then refused, not selected by another record's scores. Only JSONL records are checked (select
/// reads Parquet rows without their JSON form), and only some: parsing every record would double
/// select's work.
pub const ID_CHECK_EVERY: u64 = 64;

/// The salt of the sample key.
const SAMPLE_SALT: u64 = 0x0063_6f6d_7061_7265;

/// A record's place in the comparison sample (the smallest keys are sampled): a hash of its
/// tie-draw key, not that key itself, because the tie draw keeps the smallest draw keys of the
/// bin at a cut, and a sample of those would find that bin all kept.
pub fn sample_key(draw: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(&draw.to_le_bytes(), SAMPLE_SALT)
}

/// The largest sample key a shard of a group of `records` scored records offers: about four
/// times the sample's records pass over the group's shards, so each shard's commit carries a few
/// records rather than a whole sample, whatever the shard count.
fn sample_limit(records: u64) -> u64 {
    let wanted = 4 * COMPARISON_SAMPLE as u64;
    if records <= wanted {
        return u64::MAX;
    }
    (wanted as f64 / records as f64 * u64::MAX as f64) as u64
}

pub async fn run(ctx: &Context, plan: &SelectPlan) -> Result<Manifest> {
    let thresholds: ThresholdResult = ctx.storage.get_json(&join(&plan.threshold, super::RESULT)).await?;
    let scores: ScoreResult = ctx.storage.get_json(&join(&plan.score, super::RESULT)).await?;
    let (units, ids) =
        shard_units(&ctx.storage, plan.groups.iter().map(|g| (g.name.as_str(), g.sources.as_slice()))).await?;
    let score_units = ctx.units(&plan.score);
    let commits = ctx
        .units(&plan.output)
        .overlapping()
        .run(&ids, |i| {
            let (unit, thresholds, score_units) = (units[i].clone(), &thresholds, &score_units);
            let group = plan.groups[unit.group].name.as_str();
            let limit = sample_limit(scores.groups.iter().find(|t| t.group == group).map_or(0, |t| t.records));
            async move {
                let scored: ScoredShard = score_units
                    .commit_of(&unit.id)
                    .await?
                    .ok_or_else(|| Error::Shard {
                        uri: unit.shard.uri.clone(),
                        message: format!(
                            "no committed scores for the shard's current content: it was rewritten since it was \
                             scored (its size or version changed), or score has not run. Delete {} so that the score \
                             stage runs again: it scores only the shards without a committed unit",
                            join(&plan.score, super::RESULT)
                        ),
                    })?
                    .output;
                let cut = thresholds
                    .cut_for(group, &unit.source.name)
                    .ok_or_else(|| Error::plan(format!("no cut for group {group:?} source {:?}", unit.source.name)))?;
                select_shard(ctx, plan, &unit, &scored, cut.cut.clone(), limit).await
            }
        })
        .await?;
    let mut manifest = Manifest {
        total: Kept::default(),
        groups: BTreeMap::new(),
        sources: BTreeMap::new(),
        thresholds,
        masked: scores.masked,
        shards: Vec::new(),
        samples: BTreeMap::new(),
    };
    let mut samples: BTreeMap<String, BottomK<SampledRecord>> = BTreeMap::new();
    for commit in commits {
        let mut shard = commit.output;
        let sample = samples.entry(shard.group.clone()).or_insert_with(|| BottomK::new(COMPARISON_SAMPLE));
        for record in std::mem::take(&mut shard.sample) {
            sample.offer(sample_key(record.key), record);
        }
        manifest.total.add(&shard.kept);
        manifest.groups.entry(shard.group.clone()).or_default().add(&shard.kept);
        manifest.sources.entry(format!("{}/{}", shard.group, shard.source)).or_default().add(&shard.kept);
        manifest.shards.push(shard);
    }
    manifest.samples = samples.into_iter().map(|(group, sample)| (group, sample.into_sorted())).collect();
    ctx.storage.put_json(&join(&plan.output, MANIFEST), &manifest).await?;
    ctx.write_result(&plan.output, &manifest).await?;
    Ok(manifest)
}

/// Refuses a record whose id is not the one its score row was computed for.
fn check_id(shard: &str, raw: &RawRecord, text: &TextSpec, draw: u64) -> Result<()> {
    let found = extract(raw, text).ok().map(|record| draw_key(&record.id));
    if found == Some(draw) {
        return Ok(());
    }
    Err(Error::Shard {
        uri: shard.to_string(),
        message: format!(
            "record {} is not the record its score row was computed for (their ids differ): the shard was rewritten \
             since it was scored, keeping its size and version. Delete the score stage's _result.json and its unit \
             commits for this shard so that it is scored again",
            raw.index
        ),
    })
}

async fn select_shard(
    ctx: &Context,
    plan: &SelectPlan,
    unit: &ShardUnit,
    scored: &ScoredShard,
    cut: Cut,
    sample_limit: u64,
) -> Result<SelectedShard> {
    let group = &plan.groups[unit.group].name;
    let relative = unit.shard.uri.strip_prefix(unit.source.uri.trim_end_matches('/')).unwrap_or(&unit.shard.uri);
    let relative = if relative.is_empty() { crate::storage::file_name(&unit.shard.uri) } else { relative };
    let output = join(&plan.output, &format!("data/{group}/{}/{}", unit.source.name, relative.trim_start_matches('/')));
    let (input, _guard) = ctx.open_shard(&unit.shard.uri, unit.shard.format).await?;
    let (scores_path, _scores_guard) = ctx.local_file(&scored.scores).await?;
    let tmp = ctx.scratch_file()?;
    // Kept Parquet rows are copied from their Arrow batch; their JSON form is never read.
    let read = ReadOptions { parquet_as_json: false, ..plan.read.into() };
    let (path, histogram) = (tmp.to_path_buf(), scored.histogram.clone());
    let (shard, scores_uri, progress) = (unit.shard.clone(), scored.scores.clone(), ctx.progress.clone());
    let text = unit.source.text.clone();
    let (kept, sample) = ctx
        .compute(move || {
            let mut keys = ScoreKeys::open(&scores_uri, &scores_path)?;
            let mut next_key = || keys.next().transpose();
            let mut writer = ShardWriter::create(&path, shard.format)?;
            let mut kept = Kept::default();
            let mut sample = BottomK::new(COMPARISON_SAMPLE);
            let mut pending = next_key()?;
            for_each_batch(&shard.uri, input, shard.format, read, |batch| {
                progress.read(&batch);
                let mut keep = vec![false; batch.records.len()];
                for (slot, raw) in keep.iter_mut().zip(&batch.records) {
                    while pending.as_ref().is_some_and(|k| k.index < raw.index) {
                        pending = next_key()?;
                    }
                    // Records skipped while scoring have no score row and are not kept.
                    let Some(key) = pending.filter(|k| k.index == raw.index) else { continue };
                    if raw.index % ID_CHECK_EVERY == 0 && !raw.bytes.is_empty() {
                        check_id(&shard.uri, raw, &text, key.draw)?;
                    }
                    kept.total_records += 1;
                    kept.total_tokens += key.tokens;
                    *slot = cut.keeps(histogram.bin(key.aggregate as f64), key.draw);
                    if *slot {
                        kept.kept_records += 1;
                        kept.kept_tokens += key.tokens;
                    }
                    // A record no dimension scored (NaN) has no place in a correlation.
                    let at = sample_key(key.draw);
                    if !key.aggregate.is_nan() && at <= sample_limit && sample.would_keep(at) {
                        let record =
                            SampledRecord { key: key.draw, aggregate: key.aggregate, tokens: key.tokens, kept: *slot };
                        sample.offer(at, record);
                    }
                }
                writer.write_kept(&batch, &keep)?;
                Ok(ControlFlow::Continue(()))
            })?;
            writer.finish()?;
            Ok((kept, sample.into_sorted()))
        })
        .await?;
    // A shard with nothing kept produces no file (an empty Parquet file would need a schema).
    let output = if kept.kept_records > 0 {
        ctx.storage.put_file(&output, &tmp).await?;
        Some(output)
    } else {
        None
    };
    Ok(SelectedShard {
        group: group.clone(),
        source: unit.source.name.clone(),
        shard: unit.shard.uri.clone(),
        output,
        kept,
        sample,
    })
}
