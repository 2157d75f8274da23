//! Selections of one corpus side by side: MIRA's and the baselines' (or two MIRA runs'). Each
//! select manifest carries, per group, a comparison sample: the scored records of the smallest
//! id hashes, the same records whatever the method, with each one's aggregate and whether it was
//! kept. Two selections compare on the records both samples hold, without reading either's
//! records again.

use std::collections::HashMap;

use scorer_runner::plan::SampledRecord;
use scorer_runner::stats::spearman;

/// Two selections of one group, on their samples' common records.
#[derive(Debug, PartialEq)]
pub struct Overlap {
    /// Records in both samples.
    pub records: usize,
    /// Kept by both over kept by either (Jaccard index of the kept sets); none when neither
    /// kept any.
    pub jaccard: Option<f64>,
    /// Spearman correlation of the two aggregates; none when either is constant.
    pub spearman: Option<f64>,
}

pub fn overlap(a: &[SampledRecord], b: &[SampledRecord]) -> Overlap {
    let b: HashMap<u64, &SampledRecord> = b.iter().map(|r| (r.key, r)).collect();
    let common: Vec<(&SampledRecord, &SampledRecord)> = a.iter().filter_map(|r| Some((r, *b.get(&r.key)?))).collect();
    let both = common.iter().filter(|(x, y)| x.kept && y.kept).count();
    let either = common.iter().filter(|(x, y)| x.kept || y.kept).count();
    let (xs, ys): (Vec<f64>, Vec<f64>) = common.iter().map(|(x, y)| (x.aggregate as f64, y.aggregate as f64)).unzip();
    Overlap {
        records: common.len(),
        jaccard: (either > 0).then(|| both as f64 / either as f64),
        spearman: spearman(&xs, &ys),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: u64, aggregate: f32, kept: bool) -> SampledRecord {
        SampledRecord { key, aggregate, tokens: 10, kept }
    }

    #[test]
    fn overlap_counts_the_common_records_kept_by_both_over_those_kept_by_either() {
        let a = [record(1, 0.9, true), record(2, 0.8, true), record(3, 0.2, false), record(4, 0.1, false)];
        // Record 5 is not in `a`'s sample: it does not count.
        let b = [record(1, 4.0, true), record(2, 1.0, false), record(3, 3.0, true), record(4, 0.5, false)];
        let b5 = [&b[..], &[record(5, 5.0, true)]].concat();
        let o = overlap(&a, &b5);
        assert_eq!(o.records, 4);
        assert_eq!(o.jaccard, Some(1.0 / 3.0), "record 1 kept by both; 1, 2 and 3 by either");
        // Ranks: a = 4 3 2 1, b = 4 2 3 1: rho = 1 - 6 * 2 / (4 * 15) = 0.8.
        assert!((o.spearman.unwrap() - 0.8).abs() < 1e-9, "{:?}", o.spearman);
        assert_eq!(overlap(&a, &a).jaccard, Some(1.0));
        let none_kept = [record(1, 0.5, false)];
        assert_eq!(overlap(&none_kept, &none_kept), Overlap { records: 1, jaccard: None, spearman: None });
    }
}
