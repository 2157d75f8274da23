//! Whether scores follow length. A quality score that rises with a record's length selects long
//! records rather than good ones; the paper reports that its scores do not. `score` keeps a
//! uniform sample of each source's records (the smallest tie-draw keys, a hash of the ids, so the
//! same on every rerun and however the shards are split) with their tokens and aggregate score;
//! the rank correlation of score with length is read from it, and `threshold` adds, once it knows
//! the cut, the kept fraction per length decile.

use serde::{Deserialize, Serialize};

use crate::bottom_k::BottomK;
use crate::histogram::{Cut, Histogram};
use crate::stats::spearman;

/// Records sampled per source (and per shard, so that merged shard samples stay uniform): a
/// decile holds about 410, which puts its kept fraction within about 2.5 points (one standard
/// deviation) of the source's.
pub const SAMPLE: usize = 4096;

/// A uniform sample of scored records: `[draw key, tokens, aggregate]`, smallest key first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LengthSample {
    points: Vec<(u64, u64, f32)>,
}

/// Draws a [`LengthSample`] from a stream of scored records: the [`SAMPLE`] smallest draw keys.
pub struct LengthSampler(BottomK<(u64, f32)>);

impl Default for LengthSampler {
    fn default() -> Self {
        LengthSampler(BottomK::new(SAMPLE))
    }
}

impl LengthSampler {
    /// Offers a scored record; a record with no aggregate (every dimension failed) is not ranked.
    pub fn offer(&mut self, key: u64, tokens: u64, aggregate: f32) {
        if aggregate.is_finite() {
            self.0.offer(key, (tokens, aggregate));
        }
    }

    pub fn finish(self) -> LengthSample {
        LengthSample { points: self.0.into_keyed().into_iter().map(|(key, (tokens, a))| (key, tokens, a)).collect() }
    }
}

impl LengthSample {
    /// Adds another part of the same stream, sampled apart.
    pub fn merge(&mut self, other: &LengthSample) {
        let mut sampler = LengthSampler::default();
        for &(key, tokens, aggregate) in self.points.iter().chain(&other.points) {
            sampler.offer(key, tokens, aggregate);
        }
        *self = sampler.finish();
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// The sampled records as `(draw key, tokens, aggregate)`, smallest key first.
    pub fn points(&self) -> &[(u64, u64, f32)] {
        &self.points
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Spearman's rank correlation of the aggregate score with the record's tokens (the same
    /// as with log tokens: ranks do not change); `None` with fewer than 3 records or either
    /// side constant.
    pub fn rank_correlation(&self) -> Option<f64> {
        let tokens: Vec<f64> = self.points.iter().map(|&(_, t, _)| t as f64).collect();
        let scores: Vec<f64> = self.points.iter().map(|&(.., a)| a as f64).collect();
        spearman(&tokens, &scores)
    }

    /// The sample by length (shortest first, ties by key) cut into tenths, empty ones left out
    /// (a sample of fewer than ten records).
    pub fn deciles(&self) -> Vec<Vec<(u64, u64, f32)>> {
        let mut by_length = self.points.clone();
        by_length.sort_unstable_by_key(|&(key, tokens, _)| (tokens, key));
        let n = by_length.len();
        (0..10).map(|d| by_length[d * n / 10..(d + 1) * n / 10].to_vec()).filter(|decile| !decile.is_empty()).collect()
    }

    /// The share of tokens `cut` keeps in each tenth of the sample, shortest records first.
    pub fn kept_by_decile(&self, histogram: &Histogram, cut: &Cut) -> Vec<LengthDecile> {
        self.deciles()
            .into_iter()
            .map(|decile| {
                let total: u64 = decile.iter().map(|&(_, t, _)| t).sum();
                let kept: u64 = decile
                    .iter()
                    .filter(|&&(key, _, aggregate)| cut.keeps(histogram.bin(aggregate as f64), key))
                    .map(|&(_, t, _)| t)
                    .sum();
                LengthDecile {
                    max_tokens: decile.last().map_or(0, |&(_, t, _)| t),
                    records: decile.len() as u64,
                    kept_fraction: if total == 0 { 0.0 } else { kept as f64 / total as f64 },
                }
            })
            .collect()
    }
}

/// One tenth of a source's sampled records by length.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LengthDecile {
    /// Tokens of its longest record.
    pub max_tokens: u64,
    /// Sampled records in it.
    pub records: u64,
    /// Share of its tokens the cut keeps.
    pub kept_fraction: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_the_smallest_keys_however_split_and_sees_a_length_bias() {
        let key = |i: u64| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()) >> 1;
        // Scores that rise with length, then scores that ignore it.
        for (biased, expect) in [(true, 0.9..=1.0), (false, -0.1..=0.1)] {
            let score = |i: u64| if biased { (i % 500) as f32 } else { (key(i) % 5) as f32 };
            let (mut whole, mut left, mut right) =
                (LengthSampler::default(), LengthSampler::default(), LengthSampler::default());
            for i in 0..10_000u64 {
                let tokens = 1 + i % 500;
                whole.offer(key(i), tokens, score(i));
                let part: &mut LengthSampler = if i % 3 == 0 { &mut left } else { &mut right };
                part.offer(key(i), tokens, score(i));
            }
            let whole = whole.finish();
            let mut left = left.finish();
            left.merge(&right.finish());
            assert_eq!(left, whole);
            assert_eq!(whole.len(), SAMPLE);
            let rho = whole.rank_correlation().unwrap();
            assert!(expect.contains(&rho), "biased {biased}: rho {rho}");
        }
    }

    #[test]
    fn deciles_report_what_the_cut_keeps_by_length() {
        // Long records score high: a cut at the middle keeps the long half.
        let mut sampler = LengthSampler::default();
        for i in 0..1000u64 {
            sampler.offer(i, 10 + i, if i >= 500 { 4.0 } else { 2.0 });
        }
        let sample = sampler.finish();
        let mut histogram = Histogram::new(1.0, 5.0, 100);
        histogram.add(2.0, 1);
        histogram.add(4.0, 1);
        let cut = histogram.cut(0.5);
        let deciles = sample.kept_by_decile(&histogram, &cut);
        assert_eq!(deciles.len(), 10);
        let kept: Vec<f64> = deciles.iter().map(|d| d.kept_fraction).collect();
        assert_eq!(kept, [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(deciles[0].max_tokens, 109);
        assert_eq!(deciles[9].records, 100);
    }
}
