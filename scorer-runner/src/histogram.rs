//! Token-weighted score histograms: per shard while scoring, merged exactly by addition, and cut
//! to a retention target with no sort and constant memory, whatever the corpus size.

use serde::{Deserialize, Serialize};

/// Fixed-range histogram of aggregate scores, weighted by tokens (and counting records).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "SparseHistogram", from = "SparseHistogram")]
pub struct Histogram {
    pub min: f64,
    pub max: f64,
    pub tokens: Vec<u64>,
    pub records: Vec<u64>,
}

/// Histograms of different ranges or bin counts, which cannot be added up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DifferentShapes;

/// Serialized form: only non-empty bins, as `[bin, tokens, records]`.
#[derive(Serialize, Deserialize)]
struct SparseHistogram {
    min: f64,
    max: f64,
    bins: usize,
    counts: Vec<[u64; 3]>,
}

impl From<Histogram> for SparseHistogram {
    fn from(h: Histogram) -> Self {
        let counts = (0..h.tokens.len())
            .filter(|&b| h.records[b] > 0 || h.tokens[b] > 0)
            .map(|b| [b as u64, h.tokens[b], h.records[b]])
            .collect();
        SparseHistogram { min: h.min, max: h.max, bins: h.tokens.len(), counts }
    }
}

impl From<SparseHistogram> for Histogram {
    fn from(s: SparseHistogram) -> Self {
        let mut h = Histogram::new(s.min, s.max, s.bins.max(1));
        for [b, t, r] in s.counts {
            if let Some(slot) = h.tokens.get_mut(b as usize) {
                *slot += t;
                h.records[b as usize] += r;
            }
        }
        h
    }
}

/// Where a histogram is cut: records in bins `>= bin` are kept, and those of the bin below that
/// the tie draw keeps (see `tie_draw`, which settles it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Cut {
    /// The score histogram's bin the cut falls in; records in it and above are kept.
    pub bin: usize,
    /// Lowest aggregate score kept (the lower edge of `bin`).
    pub threshold: f64,
    /// Tokens scored.
    pub total_tokens: u64,
    /// Tokens the retention asks for.
    pub target_tokens: u64,
    /// Tokens kept, exactly; within `errorBoundTokens` of the target.
    pub kept_tokens: u64,
    /// Records kept.
    pub kept_records: u64,
    /// Records scored.
    pub total_records: u64,
    /// Largest possible distance from the target: the tokens of the bin that straddles it, which
    /// the histogram's resolution cannot split; after a tie draw, the distance itself (at most
    /// one record's tokens).
    pub error_bound_tokens: u64,
    /// How the records of the bin that straddles the target are kept, when whole bins miss it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie: Option<TieDraw>,
}

impl Cut {
    /// Whether a record of this score bin and draw key is kept.
    pub fn keeps(&self, bin: usize, key: u64) -> bool {
        bin >= self.bin || self.tie.as_ref().is_some_and(|t| bin == t.bin && key < t.below)
    }
}

/// How the records of the bin just below a cut's `bin` are kept: those whose draw key is below
/// `below`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TieDraw {
    /// The bin drawn from.
    pub bin: usize,
    /// Records of the bin whose draw key is below this are kept.
    pub below: u64,
    /// Records kept by the draw.
    pub records: u64,
    /// Tokens kept by the draw: the part of the cut's kept tokens that no score ranked.
    pub tokens: u64,
}

impl Histogram {
    pub fn new(min: f64, max: f64, bins: usize) -> Self {
        Histogram { min, max, tokens: vec![0; bins], records: vec![0; bins] }
    }

    /// The bin of a score; out-of-range scores go to the end bins.
    pub fn bin(&self, score: f64) -> usize {
        let bins = self.tokens.len();
        let pos = (score - self.min) / (self.max - self.min) * bins as f64;
        if pos.is_nan() || pos < 0.0 {
            0
        } else {
            (pos as usize).min(bins - 1)
        }
    }

    pub fn add(&mut self, score: f64, tokens: u64) {
        let b = self.bin(score);
        self.tokens[b] += tokens;
        self.records[b] += 1;
    }

    pub fn same_shape(&self, other: &Histogram) -> bool {
        self.min == other.min && self.max == other.max && self.tokens.len() == other.tokens.len()
    }

    /// Adds another histogram of the same shape (exact: integer counts).
    pub fn merge(&mut self, other: &Histogram) {
        assert!(self.same_shape(other), "merging histograms of different shapes");
        for b in 0..self.tokens.len() {
            self.tokens[b] += other.tokens[b];
            self.records[b] += other.records[b];
        }
    }

    /// The sum of `histograms`: `Ok(None)` for none, `Err` naming nothing but the fact when
    /// their shapes (range or bins) differ, which only students on different scales give.
    pub fn sum<'a>(histograms: impl IntoIterator<Item = &'a Histogram>) -> Result<Option<Histogram>, DifferentShapes> {
        let mut histograms = histograms.into_iter();
        let Some(first) = histograms.next() else { return Ok(None) };
        let mut sum = first.clone();
        for h in histograms {
            if !sum.same_shape(h) {
                return Err(DifferentShapes);
            }
            sum.merge(h);
        }
        Ok(Some(sum))
    }

    pub fn total_tokens(&self) -> u64 {
        self.tokens.iter().sum()
    }

    /// The cut whose kept tokens are closest to `fraction` of all tokens, keeping the highest
    /// scores.
    pub fn cut(&self, fraction: f64) -> Cut {
        let bins = self.tokens.len();
        let total_tokens = self.total_tokens();
        let total_records = self.records.iter().sum();
        let target = (fraction.clamp(0.0, 1.0) * total_tokens as f64).round() as u64;
        // Walk down from the top bin: `above` is the tokens in bins > b.
        let (mut above, mut above_records) = (0u64, 0u64);
        let mut chosen = (bins, 0u64, 0u64, 0u64);
        for b in (0..bins).rev() {
            let with = above + self.tokens[b];
            if with >= target {
                // Either keep bin b (overshoot) or stop above it (undershoot): take the closer.
                chosen = if with - target <= target - above {
                    (b, with, above_records + self.records[b], self.tokens[b])
                } else {
                    (b + 1, above, above_records, self.tokens[b])
                };
                break;
            }
            above = with;
            above_records += self.records[b];
            chosen = (b, above, above_records, 0);
        }
        let (bin, kept_tokens, kept_records, error_bound_tokens) = chosen;
        Cut {
            bin,
            threshold: self.lower_edge(bin),
            total_tokens,
            target_tokens: target,
            kept_tokens,
            kept_records,
            total_records,
            error_bound_tokens,
            tie: None,
        }
    }

    /// The lowest score of a bin.
    pub fn lower_edge(&self, bin: usize) -> f64 {
        self.min + (self.max - self.min) * bin as f64 / self.tokens.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_the_top_scores_within_the_bound() {
        let mut h = Histogram::new(0.0, 10.0, 100);
        for i in 0..1000u64 {
            h.add((i % 100) as f64 / 10.0 + 0.01, 1 + i % 7);
        }
        for fraction in [0.0, 0.1, 0.25, 0.5, 0.9, 1.0] {
            let cut = h.cut(fraction);
            let kept: u64 = h.tokens[cut.bin.min(100)..].iter().sum();
            assert_eq!(kept, cut.kept_tokens);
            assert!(cut.kept_tokens.abs_diff(cut.target_tokens) <= cut.error_bound_tokens, "{cut:?}");
        }
        assert_eq!(h.cut(1.0).kept_tokens, h.total_tokens());
        assert_eq!(h.cut(0.0).kept_tokens, 0);
    }

    #[test]
    fn merging_is_exact_and_serialization_round_trips() {
        let mut a = Histogram::new(1.0, 5.0, 64);
        let mut b = a.clone();
        a.add(1.5, 10);
        b.add(4.9, 3);
        b.add(9.0, 1);
        a.merge(&b);
        assert_eq!(a.total_tokens(), 14);
        assert_eq!(a.records.iter().sum::<u64>(), 3);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Histogram>(&json).unwrap(), a);
        assert!(json.len() < 200, "sparse form: {json}");
    }
}
