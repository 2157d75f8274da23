//! Exact cuts under ties. A histogram cut keeps or drops whole bins, and when many records share
//! a score (integer judge scores, a source whose every dimension is masked, a constant student)
//! one bin can hold most of a scope's tokens: the closest whole-bin cut then keeps everything or
//! nothing. The records of the bin that straddles the target are instead kept by a draw on a hash
//! of their id ([`draw_key`]), the same on every rerun and worker, so that the kept tokens land
//! within one record of the target whatever the scores.
//!
//! The draw is found in two passes over that bin's records, in memory that does not grow with
//! the corpus: the first sums their tokens per 1/65,536 of the key space ([`Buckets`]) and finds
//! the slice the target falls in; the second collects the records of that one slice (a few per
//! million of the bin's records) and settles the exact key below which records are kept.

use crate::histogram::{Cut, Histogram, TieDraw};

/// The draw key of a record: a hash of its id, uniform over `[0, 2^63)`, so that a key written
/// into a resource's status stays an int64 for the API server.
pub fn draw_key(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes()) >> 1
}

/// The bin a cut must draw from, and how many of its tokens it needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Straddle {
    pub bin: usize,
    /// Tokens to take from the bin.
    pub need: u64,
}

/// Where the first pass slices the key space: by its top 16 bits (of 63).
const SLICE_SHIFT: u32 = 47;
const SLICES: usize = 1 << (63 - SLICE_SHIFT);

fn slice(key: u64) -> usize {
    (key >> SLICE_SHIFT) as usize
}

/// The first pass: the straddling bin's tokens and records per slice of the key space.
#[derive(Clone, Debug, PartialEq)]
pub struct Buckets {
    tokens: Vec<u64>,
    records: Vec<u64>,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets { tokens: vec![0; SLICES], records: vec![0; SLICES] }
    }
}

impl Buckets {
    pub fn add(&mut self, key: u64, tokens: u64) {
        self.tokens[slice(key)] += tokens;
        self.records[slice(key)] += 1;
    }

    pub fn merge(&mut self, other: &Buckets) {
        for s in 0..SLICES {
            self.tokens[s] += other.tokens[s];
            self.records[s] += other.records[s];
        }
    }

    /// The slice the `need`-th token falls in, with the tokens and records of the slices below
    /// it (kept whole); `None` when the bin holds no more than `need` tokens.
    pub fn locate(&self, need: u64) -> Option<Located> {
        let (mut tokens, mut records) = (0u64, 0u64);
        for s in 0..SLICES {
            if tokens + self.tokens[s] > need {
                return Some(Located { slice: s, tokens, records });
            }
            tokens += self.tokens[s];
            records += self.records[s];
        }
        None
    }
}

/// The slice of the key space the target falls in, after the first pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Located {
    slice: usize,
    /// Tokens and records of the lower slices, all kept.
    tokens: u64,
    records: u64,
}

impl Located {
    /// Whether the second pass collects a record of the straddling bin with this key.
    pub fn holds(&self, key: u64) -> bool {
        slice(key) == self.slice
    }
}

impl Cut {
    /// The bin this cut must draw from, or `None` when whole bins already meet the target.
    pub fn straddle(&self, histogram: &Histogram) -> Option<Straddle> {
        if self.kept_tokens == self.target_tokens || self.tie.is_some() {
            return None;
        }
        // Undershoot: the bin below the cut is the one to draw from; overshoot: the cut's own.
        let bin = if self.kept_tokens < self.target_tokens { self.bin.checked_sub(1)? } else { self.bin };
        let above = if bin == self.bin { self.kept_tokens - histogram.tokens[bin] } else { self.kept_tokens };
        Some(Straddle { bin, need: self.target_tokens - above })
    }

    /// The cut with the draw settled: the bins above `straddle.bin` kept whole, and of that bin
    /// the records the first pass `located` below the slice, plus the records of the slice
    /// (`boundary`: draw key and tokens, any order) that bring the kept tokens closest to the
    /// target.
    pub fn settle(
        &self,
        histogram: &Histogram,
        straddle: Straddle,
        located: Located,
        boundary: Vec<(u64, u64)>,
    ) -> Cut {
        let mut boundary = boundary;
        boundary.sort_unstable();
        let need = straddle.need - located.tokens;
        // Cut only between different keys: records sharing an id share their fate.
        let (mut best, mut taken) = ((0usize, 0u64), 0u64);
        for (i, &(key, tokens)) in boundary.iter().enumerate() {
            taken += tokens;
            let next_differs = boundary.get(i + 1).is_none_or(|&(next, _)| next != key);
            if next_differs && taken.abs_diff(need) < best.1.abs_diff(need) {
                best = (i + 1, taken);
            }
        }
        let (count, tokens) = best;
        let below = match boundary.get(count) {
            Some(&(key, _)) => key,
            None => boundary.last().map_or((located.slice as u64) << SLICE_SHIFT, |&(key, _)| key.saturating_add(1)),
        };
        let tie = TieDraw {
            bin: straddle.bin,
            below,
            records: located.records + count as u64,
            tokens: located.tokens + tokens,
        };
        let bin = straddle.bin + 1;
        let above_tokens: u64 = histogram.tokens[bin..].iter().sum();
        let above_records: u64 = histogram.records[bin..].iter().sum();
        let kept_tokens = above_tokens + tie.tokens;
        Cut {
            bin,
            threshold: histogram.lower_edge(bin),
            kept_tokens,
            kept_records: above_records + tie.records,
            error_bound_tokens: kept_tokens.abs_diff(self.target_tokens),
            tie: Some(tie),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    /// A record: aggregate score, tokens, id.
    type Record = (f64, u64, String);

    type Seeded = rand_chacha::ChaCha8Rng;

    /// A score distribution: its name, and a draw from it.
    type Distribution = (&'static str, fn(&mut Seeded) -> f64);

    /// The threshold step's two passes, over records in memory.
    fn exact_cut(records: &[Record], fraction: f64) -> (Histogram, Cut) {
        let mut histogram = Histogram::new(1.0, 5.0, 1000);
        records.iter().for_each(|(score, tokens, _)| histogram.add(*score, *tokens));
        let cut = histogram.cut(fraction);
        let Some(straddle) = cut.straddle(&histogram) else { return (histogram, cut) };
        let mut buckets = Buckets::default();
        for (score, tokens, id) in records {
            if histogram.bin(*score) == straddle.bin {
                buckets.add(draw_key(id), *tokens);
            }
        }
        let located = buckets.locate(straddle.need).expect("the straddling bin holds more than it needs");
        let boundary = records
            .iter()
            .filter(|(score, _, id)| histogram.bin(*score) == straddle.bin && located.holds(draw_key(id)))
            .map(|(_, tokens, id)| (draw_key(id), *tokens))
            .collect();
        let settled = cut.settle(&histogram, straddle, located, boundary);
        (histogram, settled)
    }

    #[test]
    fn kept_tokens_land_within_one_record_of_the_target_for_any_scores() {
        let mut rng = Seeded::seed_from_u64(7);
        let distributions: [Distribution; 3] = [
            ("random", |r| r.gen_range(1.0..5.0)),
            ("integer judge scores", |r| r.gen_range(1..=5) as f64),
            ("constant", |_| 2.0),
        ];
        for (name, score) in distributions {
            for case in 0..40 {
                let n = rng.gen_range(1..3000);
                let records: Vec<Record> =
                    (0..n).map(|i| (score(&mut rng), rng.gen_range(1..400), format!("{case}-{i}"))).collect();
                let largest = records.iter().map(|r| r.1).max().unwrap();
                let fraction = rng.gen_range(0.0..=1.0);
                let (histogram, cut) = exact_cut(&records, fraction);
                let (mut kept_tokens, mut kept_records, mut drawn) = (0, 0, 0);
                for (score, tokens, id) in &records {
                    let bin = histogram.bin(*score);
                    if cut.keeps(bin, draw_key(id)) {
                        kept_tokens += tokens;
                        kept_records += 1;
                        drawn += if bin < cut.bin { *tokens } else { 0 };
                    }
                }
                // What select keeps is what the cut reports, and it is within a record of the target.
                assert_eq!((kept_tokens, kept_records), (cut.kept_tokens, cut.kept_records), "{name} {cut:?}");
                assert_eq!(drawn, cut.tie.as_ref().map_or(0, |t| t.tokens), "{name} {cut:?}");
                assert!(kept_tokens.abs_diff(cut.target_tokens) <= largest, "{name}: {cut:?}");
                assert_eq!(cut.error_bound_tokens, kept_tokens.abs_diff(cut.target_tokens));
            }
        }
    }

    #[test]
    fn a_constant_score_keeps_half_by_id_the_same_on_every_run() {
        let records: Vec<Record> = (0..10_000).map(|i| (2.0, 10, format!("r{i}"))).collect();
        let (_, cut) = exact_cut(&records, 0.5);
        assert_eq!(cut.kept_tokens, 50_000);
        assert_eq!(cut.tie.as_ref().unwrap().tokens, 50_000, "every kept token came from the draw");
        let mut shuffled = records.clone();
        shuffled.reverse();
        assert_eq!(exact_cut(&shuffled, 0.5).1, cut, "record order changes nothing");
    }

    #[test]
    fn records_sharing_an_id_are_kept_or_dropped_together() {
        let records: Vec<Record> = (0..100).map(|i| (3.0, 5, format!("dup{}", i / 2))).collect();
        let (histogram, cut) = exact_cut(&records, 0.37);
        for pair in records.chunks(2) {
            let kept = |r: &Record| cut.keeps(histogram.bin(r.0), draw_key(&r.2));
            assert_eq!(kept(&pair[0]), kept(&pair[1]));
        }
        assert!(cut.kept_tokens.abs_diff(cut.target_tokens) <= 10, "{cut:?}");
    }
}
