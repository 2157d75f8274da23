//! DSIR, data selection by importance resampling (Xie et al. 2023): the selection should look
//! like a target sample (a high-quality reference set) in its bag of hashed word unigrams and
//! bigrams. Two distributions over the hashed buckets are estimated, the target's `p` and the
//! raw records' `q` (add-one smoothed); a record's log importance weight is the sum over its
//! n-grams of `log p(b) - log q(b)`. Resampling in proportion to the weights without replacement
//! is a Gumbel top-k: each record's key is its log weight plus Gumbel noise drawn from its id,
//! and the threshold keeps the highest keys up to the token budget.
//!
//! The raw distribution is the group's: a uniform sample of each of its sources, mixed in
//! proportion to the sources' bytes. The fitted weights are written under the score stage's
//! output (`dsir/<group>.json`) before any record is ranked and read back by every later worker
//! and resume; workers that start together may each fit them, which is harmless because the fit
//! is deterministic (the same samples, the same bytes).
//!
//! Each group is fitted against its own raw records: under the `global` policy the keys of
//! different groups are each centred on their group's raw sample, so one cut compares how far
//! each record stands above its own group's mix.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::featurize::{Featurizer, GramScratch, HashedFeaturizer};
use crate::plan::{DsirSpec, HashedSpec, ReadLimits, ScoreGroup};
use crate::records::id_fraction;
use crate::steps::sample::sample_source;
use crate::steps::Context;
use crate::storage::join;

/// The seed of the target and raw samples.
const SAMPLE_SEED: u64 = 0x6473_6972;
/// The salt of each record's Gumbel noise.
const GUMBEL_SALT: u64 = 0x6775_6d62_656c;

/// The fitted weights of one group.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Weights {
    pub dim_log2: u32,
    /// The records the two distributions were estimated from.
    pub target_records: usize,
    pub raw_records: usize,
    /// Per bucket: `log p(b) - log q(b)`.
    pub log_ratio: Vec<f32>,
    /// The mean and the standard deviation of the draw key (log weight plus Gumbel noise) over
    /// the raw sample: the key's centre and scale, by which the logistic function maps it into
    /// (0, 1), the range the score histograms span, keeping its order.
    pub center: f64,
    pub spread: f64,
}

pub struct Dsir {
    featurizer: HashedFeaturizer,
    weights: Weights,
}

/// Unigrams and bigrams, raw counts, as in the paper.
fn featurizer(dim_log2: u32) -> Result<HashedFeaturizer> {
    HashedFeaturizer::new(
        HashedSpec { dim_log2, word_ngrams: 2, char_ngrams: None, sublinear_tf: false, idf: false, seed: 0 },
        None,
    )
}

impl Dsir {
    /// The group's weights: read back from the stage's output, or fitted and written there.
    pub async fn load(ctx: &Context, spec: &DsirSpec, group: &ScoreGroup, output: &str) -> Result<Self> {
        let uri = join(output, &format!("dsir/{}.json", group.name));
        if let Some(bytes) = ctx.storage.get_opt(&uri).await? {
            let weights: Weights = serde_json::from_slice(&bytes).map_err(|e| Error::json(&uri, e))?;
            return Dsir::new(weights);
        }
        let target = sample_source(ctx, &spec.target, spec.sample, ReadLimits::default(), SAMPLE_SEED).await?;
        if target.records.is_empty() {
            return Err(Error::plan(format!("the DSIR target {} gave no usable record", spec.target.uri)));
        }
        let mut raw = Vec::new();
        for source in &group.sources {
            let sample = sample_source(ctx, source, spec.sample, ReadLimits::default(), SAMPLE_SEED).await?;
            let bytes: u64 = sample.shards.iter().map(|s| s.size).sum();
            raw.push((bytes as f64, sample.records.into_iter().map(|r| r.text.into_owned()).collect::<Vec<_>>()));
        }
        let target: Vec<String> = target.records.into_iter().map(|r| r.text.into_owned()).collect();
        let dim_log2 = spec.dim_log2;
        let weights = ctx
            .compute(move || {
                let raw: Vec<(f64, Vec<&str>)> =
                    raw.iter().map(|(bytes, texts)| (*bytes, texts.iter().map(String::as_str).collect())).collect();
                let target: Vec<&str> = target.iter().map(String::as_str).collect();
                Weights::fit(&featurizer(dim_log2)?, &target, &raw)
            })
            .await?;
        ctx.storage.put_json(&uri, &weights).await?;
        Dsir::new(weights)
    }

    pub fn new(weights: Weights) -> Result<Self> {
        let featurizer = featurizer(weights.dim_log2)?;
        if weights.log_ratio.len() != featurizer.dim() {
            return Err(Error::plan(format!(
                "DSIR weights have {} buckets, not 2^{}",
                weights.log_ratio.len(),
                weights.dim_log2
            )));
        }
        Ok(Dsir { featurizer, weights })
    }

    /// The record's log importance weight.
    pub fn log_weight(&self, text: &str, scratch: &mut GramScratch) -> f64 {
        log_weight(&self.featurizer, &self.weights.log_ratio, text, scratch)
    }

    /// The record's draw key, its log weight plus Gumbel noise from its id, mapped into (0, 1).
    pub fn key(&self, log_weight: f64, id: &str) -> f32 {
        let z = (log_weight + gumbel(id) - self.weights.center) / self.weights.spread;
        (1.0 / (1.0 + (-z).exp())) as f32
    }
}

impl Weights {
    /// Estimates the weights from target texts and raw texts, the latter per source with the
    /// source's share of the raw distribution (its bytes; equal shares when none are known).
    pub fn fit(featurizer: &HashedFeaturizer, target: &[&str], raw: &[(f64, Vec<&str>)]) -> Result<Weights> {
        let dim = featurizer.dim();
        let mut scratch = GramScratch::default();
        let mut distribution = |texts: &[&str]| {
            let mut counts = vec![0f64; dim];
            for text in texts {
                featurizer.gram_counts(text, &mut scratch, |b, c| counts[b as usize] += c as f64);
            }
            let total: f64 = counts.iter().sum::<f64>() + dim as f64;
            counts.iter_mut().for_each(|c| *c = (*c + 1.0) / total);
            counts
        };
        let p = distribution(target);
        let mut q = vec![0f64; dim];
        // A source whose sample is empty (nothing usable) adds nothing, rather than a uniform
        // distribution weighted by its bytes.
        let raw: Vec<&(f64, Vec<&str>)> = raw.iter().filter(|(_, texts)| !texts.is_empty()).collect();
        if raw.is_empty() {
            return Err(Error::plan("DSIR: the group's sources gave no usable record to estimate their distribution"));
        }
        let total_bytes: f64 = raw.iter().map(|(bytes, _)| bytes).sum();
        for (bytes, texts) in raw.iter().copied() {
            let share = if total_bytes > 0.0 { bytes / total_bytes } else { 1.0 / raw.len() as f64 };
            for (q, d) in q.iter_mut().zip(distribution(texts)) {
                *q += share * d;
            }
        }
        let log_ratio: Vec<f32> = p.iter().zip(&q).map(|(p, q)| (p.ln() - q.ln()) as f32).collect();
        let logs: Vec<f64> = raw
            .iter()
            .flat_map(|(_, texts)| texts)
            .map(|text| log_weight(featurizer, &log_ratio, text, &mut scratch))
            .collect();
        let n = logs.len() as f64;
        let mean = logs.iter().sum::<f64>() / n;
        let variance = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n;
        // The Gumbel(0, 1) noise adds its mean (Euler's constant) and its variance (pi^2 / 6).
        Ok(Weights {
            dim_log2: dim.trailing_zeros(),
            target_records: target.len(),
            raw_records: logs.len(),
            log_ratio,
            center: mean + 0.577_215_664_9,
            spread: (variance + std::f64::consts::PI.powi(2) / 6.0).sqrt(),
        })
    }
}

fn log_weight(featurizer: &HashedFeaturizer, log_ratio: &[f32], text: &str, scratch: &mut GramScratch) -> f64 {
    let mut sum = 0.0;
    featurizer.gram_counts(text, scratch, |b, c| sum += c as f64 * log_ratio[b as usize] as f64);
    sum
}

/// Standard Gumbel noise, drawn from the record's id.
fn gumbel(id: &str) -> f64 {
    let u = id_fraction(id, GUMBEL_SALT).clamp(1e-300, 1.0 - 1e-16);
    -(-u.ln()).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bucket one word falls in.
    fn bucket(featurizer: &HashedFeaturizer, word: &str) -> usize {
        let mut hits = Vec::new();
        featurizer.gram_counts(word, &mut GramScratch::default(), |b, c| hits.push((b, c)));
        assert_eq!(hits.len(), 1, "a one-word text has one unigram and no bigram");
        hits[0].0 as usize
    }

    #[test]
    fn the_weights_are_the_smoothed_log_ratio_of_the_two_bags_of_ngrams() {
        let featurizer = featurizer(4).unwrap();
        let [x, y, z] = ["apple", "bread", "cheese"].map(|w| bucket(&featurizer, w));
        assert!(x != y && y != z && x != z, "three words in three of the 16 buckets");
        // Target: x x y; raw: y y z. With add-one smoothing over 16 buckets, p = (3, 2, 1) / 19
        // and q = (1, 3, 2) / 19 on (x, y, z), 1/19 on the others.
        let weights =
            Weights::fit(&featurizer, &["apple", "apple", "bread"], &[(1.0, vec!["bread", "bread", "cheese"])])
                .unwrap();
        let close = |a: f32, b: f64| (a as f64 - b).abs() < 1e-6;
        assert!(close(weights.log_ratio[x], 3f64.ln()), "{}", weights.log_ratio[x]);
        assert!(close(weights.log_ratio[y], (2.0f64 / 3.0).ln()));
        assert!(close(weights.log_ratio[z], 0.5f64.ln()));
        let other = (0..16).find(|b| ![x, y, z].contains(b)).unwrap();
        assert!(close(weights.log_ratio[other], 0.0));
        // A record's log weight sums its n-grams': "apple apple" is 2 ln 3 plus its bigram's.
        let dsir = Dsir::new(weights.clone()).unwrap();
        let mut scratch = GramScratch::default();
        assert!((dsir.log_weight("apple", &mut scratch) - 3f64.ln()).abs() < 1e-6);
        // The raw records' log weights are ln(2/3) twice and ln(1/2): their mean, plus Euler's
        // constant, is the key's centre.
        let mean = (2.0 * (2.0f64 / 3.0).ln() + 0.5f64.ln()) / 3.0;
        assert!((weights.center - (mean + 0.577_215_664_9)).abs() < 1e-6);
        assert_eq!((weights.target_records, weights.raw_records), (3, 3));
    }

    #[test]
    fn sources_mix_in_proportion_to_their_bytes() {
        let featurizer = featurizer(4).unwrap();
        let y = bucket(&featurizer, "bread");
        let weights = Weights::fit(&featurizer, &["bread"], &[(3.0, vec!["bread"]), (1.0, vec!["cheese"])]).unwrap();
        // p(y) = 2/17; q(y) = 3/4 * 2/17 + 1/4 * 1/17.
        let q: f64 = 0.75 * 2.0 / 17.0 + 0.25 / 17.0;
        assert!((weights.log_ratio[y] as f64 - ((2.0 / 17.0f64).ln() - q.ln())).abs() < 1e-6);
    }

    #[test]
    fn keys_keep_the_order_of_log_weights_up_to_the_noise() {
        let featurizer = featurizer(4).unwrap();
        let weights = Weights::fit(&featurizer, &["apple"], &[(1.0, vec!["bread", "apple"])]).unwrap();
        let dsir = Dsir::new(weights).unwrap();
        let ids: Vec<String> = (0..2000).map(|i| format!("r{i}")).collect();
        let high = ids.iter().filter(|id| dsir.key(50.0, id) > 0.5).count();
        let low = ids.iter().filter(|id| dsir.key(-50.0, id) > 0.5).count();
        assert_eq!((high, low), (2000, 0), "a weight far above the centre always wins");
        // Where the weight is the centre less the Gumbel median (-ln ln 2), the noise alone
        // decides: half the keys fall above the middle.
        let even: Vec<f32> = ids.iter().map(|id| dsir.key(dsir.weights.center + 2f64.ln().ln(), id)).collect();
        assert!(even.iter().all(|k| (0.0..=1.0).contains(k)));
        let above = even.iter().filter(|&&k| k > 0.5).count();
        assert!((900..1100).contains(&above), "the noise decides: {above} of 2000 above");
        assert_eq!(dsir.key(1.0, "r7"), dsir.key(1.0, "r7"), "the same record draws the same noise");
    }
}
