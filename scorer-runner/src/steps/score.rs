//! `score`: every record of every shard of every group through its group's student: per-dimension
//! scores, the aggregate (trimmed mean over the dimensions unmasked for the record's source), and
//! a token count, written as one score shard per input shard (Parquet, [`crate::formats::scores`]),
//! with a token-weighted histogram of the aggregate per shard and a uniform sample of its records'
//! lengths and scores ([`crate::length`]). One unit per input shard.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use super::{shard_units, Context, ShardUnit};
use crate::error::{Error, Result};
use crate::formats::for_each_batch;
use crate::formats::scores::ScoreShardWriter;
use crate::histogram::Histogram;
use crate::length::{LengthSample, LengthSampler};
use crate::plan::SkipCounts;
use crate::plan::{ScorePlan, ScoreResult, ScoreTotals, ScoredShard, TokenCounter};
use crate::records::extract;
use crate::stats::trimmed_mean;
use crate::storage::join;
use crate::student::{BatchScores, Student};
use crate::units::Commit;

/// Counts tokens for budgets.
pub enum Tokens {
    Whitespace,
    Tokenizer(Box<tokenizers::Tokenizer>),
}

impl Tokens {
    pub async fn load(ctx: &Context, counter: &TokenCounter) -> Result<Self> {
        match counter {
            TokenCounter::Whitespace => Ok(Tokens::Whitespace),
            TokenCounter::Tokenizer { uri } => {
                let path = ctx.storage.local_copy(uri, &ctx.scratch.join("tokenizers")).await?;
                let tokenizer = tokenizers::Tokenizer::from_file(&path)
                    .map_err(|e| Error::Tokenizer { uri: uri.clone(), message: e.to_string() })?;
                Ok(Tokens::Tokenizer(Box::new(tokenizer)))
            }
        }
    }

    pub fn count(&self, text: &str) -> Result<u64> {
        match self {
            Tokens::Whitespace => Ok(crate::ascii::whitespace_words(text)),
            Tokens::Tokenizer(t) => t
                .encode_fast(text, false)
                .map(|e| e.len() as u64)
                .map_err(|e| Error::Tokenizer { uri: "tokenizer".into(), message: e.to_string() }),
        }
    }
}

pub async fn run(ctx: &Context, plan: &ScorePlan) -> Result<ScoreResult> {
    if plan.groups.is_empty() {
        return Err(Error::plan("no groups"));
    }
    if !(0.0..0.5).contains(&plan.trim) {
        return Err(Error::plan("trim must be in [0, 0.5)"));
    }
    if plan.histogram_bins == 0 {
        return Err(Error::plan("histogramBins must be positive"));
    }
    let mut students = Vec::new();
    for group in &plan.groups {
        students.push(Arc::new(Student::load(&ctx.storage, &ctx.scratch, &group.student).await?));
    }
    let tokens = Arc::new(Tokens::load(ctx, &plan.tokens).await?);
    let (units, ids) =
        shard_units(&ctx.storage, plan.groups.iter().map(|g| (g.name.as_str(), g.sources.as_slice()))).await?;
    // Each shard's commit carries a histogram of every bin (160 KiB at the default 10,000):
    // summed as they arrive, so memory follows the groups and sources, not the shards.
    let (mut groups, mut sources) = (Totals::new(), Totals::new());
    ctx.units(&plan.output)
        .overlapping()
        .run_each(
            &ids,
            |i| score_shard(ctx, plan, units[i].clone(), students[units[i].group].clone(), tokens.clone()),
            |_, commit: Commit<ScoredShard>| {
                add(&mut groups, &commit.output, false);
                add(&mut sources, &commit.output, true);
            },
        )
        .await?;
    for totals in sources.values_mut() {
        totals.length_correlation = totals.length.rank_correlation();
        let student = plan.groups.iter().position(|g| g.name == totals.group).map(|g| &students[g]);
        totals.unranked = student.is_some_and(|s| s.ranks_none(totals.source.as_deref().unwrap_or_default()));
    }
    let mut masked = BTreeMap::new();
    for (group, student) in plan.groups.iter().zip(&students) {
        masked.insert(group.name.clone(), student.header.masked.clone());
    }
    let result =
        ScoreResult { groups: groups.into_values().collect(), sources: sources.into_values().collect(), masked };
    ctx.write_result(&plan.output, &result).await?;
    Ok(result)
}

/// Totals per group, or per (group, source), in that order.
type Totals = BTreeMap<(String, Option<String>), ScoreTotals>;

/// Adds a shard to its group's totals, or to its (group, source)'s.
fn add(totals: &mut Totals, shard: &ScoredShard, by_source: bool) {
    let source = by_source.then(|| shard.source.clone());
    let entry = totals.entry((shard.group.clone(), source.clone())).or_insert_with(|| ScoreTotals {
        group: shard.group.clone(),
        source,
        shards: 0,
        records: 0,
        tokens: 0,
        skipped: SkipCounts::default(),
        histogram: Histogram::new(shard.histogram.min, shard.histogram.max, shard.histogram.tokens.len()),
        length: LengthSample::default(),
        length_correlation: None,
        unranked: false,
    });
    entry.shards += 1;
    entry.records += shard.records;
    entry.tokens += shard.tokens;
    entry.skipped.merge(&shard.skipped);
    entry.histogram.merge(&shard.histogram);
    if by_source {
        entry.length.merge(&shard.length);
    }
}

async fn score_shard(
    ctx: &Context,
    plan: &ScorePlan,
    unit: ShardUnit,
    student: Arc<Student>,
    tokens: Arc<Tokens>,
) -> Result<ScoredShard> {
    let group = plan.groups[unit.group].name.clone();
    let scores_uri =
        join(&plan.output, &format!("scores/group={group}/source={}/{}.parquet", unit.source.name, unit.id));
    let (input, _guard) = ctx.open_shard(&unit.shard.uri, unit.shard.format).await?;
    let tmp = ctx.scratch_file()?;
    let (path, trim, bins, read) = (tmp.to_path_buf(), plan.trim, plan.histogram_bins, plan.read.into());
    let (source, shard, group_name) = (unit.source.clone(), unit.shard.clone(), group.clone());
    let progress = ctx.progress.clone();
    let (records, token_total, skipped, histogram, length) = ctx
        .compute(move || {
            let scale = student.header.scale;
            let mut histogram = Histogram::new(scale.min as f64, scale.max as f64, bins);
            let dimensions: Vec<&str> = student.header.dimensions.iter().map(|d| d.id.as_str()).collect();
            let mut writer = ScoreShardWriter::create(&path, &group_name, &source.name, &dimensions)?;
            let mut skipped = SkipCounts::default();
            let mut length = LengthSampler::default();
            let (mut records, mut token_total) = (0u64, 0u64);
            let heads = student.header.dimensions.len();
            let unmasked = student.unmasked(&source.name);
            // A source no reliable dimension ranks gets one aggregate, the scale's midpoint, for
            // every record: the threshold step cuts it on its own, by the seeded draw alone.
            let unranked = student.ranks_none(&source.name).then_some((scale.min + scale.max) as f32 / 2.0);
            let mut kept = Vec::with_capacity(heads);
            let mut predictions = BatchScores::default();
            for_each_batch(&shard.uri, input, shard.format, read, |batch| {
                progress.read(&batch);
                let mut good = Vec::with_capacity(batch.records.len());
                for raw in &batch.records {
                    match extract(raw, &source.text) {
                        Ok(record) => good.push((raw.index, record)),
                        Err(reason) => skipped.add(reason, &shard.uri, raw.index),
                    }
                }
                let texts: Vec<&str> = good.iter().map(|(_, r)| &*r.text).collect();
                student.score_batch(&texts, &mut predictions)?;
                for ((index, record), predicted) in good.iter().zip(predictions.iter()) {
                    let Some(scores) = predicted else {
                        skipped.add_reason("student_no_reply", &shard.uri, *index);
                        continue;
                    };
                    kept.clear();
                    match unmasked {
                        Some(mask) => kept.extend(scores.iter().zip(mask).filter(|(_, &u)| u).map(|(s, _)| *s)),
                        // No mask for the source: all dimensions count.
                        None => kept.extend_from_slice(scores),
                    }
                    let aggregate = unranked.or_else(|| trimmed_mean(&mut kept, trim)).unwrap_or(f32::NAN);
                    let t = tokens.count(&record.text)?;
                    let draw = writer.push(*index, &record.id, t, aggregate, scores)?;
                    histogram.add(aggregate as f64, t);
                    length.offer(draw, t, aggregate);
                    records += 1;
                    token_total += t;
                }
                Ok(ControlFlow::Continue(()))
            })?;
            writer.finish()?;
            Ok((records, token_total, skipped, histogram, length.finish()))
        })
        .await?;
    ctx.storage.put_file(&scores_uri, &tmp).await?;
    Ok(ScoredShard {
        group,
        source: unit.source.name,
        shard: unit.shard.uri,
        scores: scores_uri,
        records,
        tokens: token_total,
        skipped,
        histogram,
        length,
    })
}
