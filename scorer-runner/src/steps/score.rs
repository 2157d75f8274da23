//! `score`: every record of every shard of every group through its group's ranker
//! ([`crate::rankers`]): a student's per-dimension scores and their aggregate (trimmed mean over
//! the dimensions unmasked for the record's source), or a baseline's, and a token count,
//! written as one score shard per input shard (Parquet, [`crate::formats::scores`]),
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
use crate::rankers::{Ranked, Ranker};
use crate::records::extract;
use crate::storage::join;
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
    let mut rankers = Vec::new();
    for group in &plan.groups {
        rankers.push(Arc::new(Ranker::load(ctx, group, plan.trim, &plan.output).await?));
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
            |i| score_shard(ctx, plan, units[i].clone(), rankers[units[i].group].clone(), tokens.clone()),
            |_, commit: Commit<ScoredShard>| {
                add(&mut groups, &commit.output, false);
                add(&mut sources, &commit.output, true);
            },
        )
        .await?;
    for totals in sources.values_mut() {
        totals.length_correlation = totals.length.rank_correlation();
        let ranker = plan.groups.iter().position(|g| g.name == totals.group).map(|g| &rankers[g]);
        totals.unranked = ranker.is_some_and(|r| r.ranks_none(totals.source.as_deref().unwrap_or_default()));
    }
    let mut masked = BTreeMap::new();
    for (group, ranker) in plan.groups.iter().zip(&rankers) {
        masked.insert(group.name.clone(), ranker.masked());
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
    ranker: Arc<Ranker>,
    tokens: Arc<Tokens>,
) -> Result<ScoredShard> {
    let group = plan.groups[unit.group].name.clone();
    let scores_uri =
        join(&plan.output, &format!("scores/group={group}/source={}/{}.parquet", unit.source.name, unit.id));
    let (input, _guard) = ctx.open_shard(&unit.shard.uri, unit.shard.format).await?;
    let tmp = ctx.scratch_file()?;
    let (path, bins, read) = (tmp.to_path_buf(), plan.histogram_bins, plan.read.into());
    let (source, shard, group_name) = (unit.source.clone(), unit.shard.clone(), group.clone());
    let progress = ctx.progress.clone();
    let (records, token_total, skipped, histogram, length) = ctx
        .compute(move || {
            let (min, max) = ranker.range();
            let mut histogram = Histogram::new(min, max, bins);
            let mut writer = ScoreShardWriter::create(&path, &group_name, &source.name, &ranker.columns())?;
            let mut skipped = SkipCounts::default();
            let mut length = LengthSampler::default();
            let (mut records, mut token_total) = (0u64, 0u64);
            let mut ranked = Ranked::default();
            for_each_batch(&shard.uri, input, shard.format, read, |batch| {
                progress.read(&batch);
                let mut good = Vec::with_capacity(batch.records.len());
                for raw in &batch.records {
                    match extract(raw, &source.text) {
                        Ok(record) => good.push((raw.index, record)),
                        Err(reason) => skipped.add(reason, &shard.uri, raw.index),
                    }
                }
                let records_of_batch: Vec<_> = good.iter().map(|(_, r)| r).collect();
                ranker.rank(&source.name, &records_of_batch, &mut ranked)?;
                for ((index, record), rank) in good.iter().zip(ranked.iter()) {
                    let Some((aggregate, scores)) = rank else {
                        skipped.add_reason(ranker.unscored_reason(), &shard.uri, *index);
                        continue;
                    };
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
