//! Ridge regression for the students' heads: one linear head per rubric dimension over sparse
//! features, with its lambda chosen from the data. Two solvers of the same objective, by size:
//! [`dual`] (exact, for up to a few thousand records) and [`primal`] (iterative, for paper scale:
//! hundreds of thousands of labels per group).

mod dual;
mod primal;

use crate::sparse::SparseVec;

/// The most records the dual solve takes: its n x n eigendecomposition costs n^3 and 8 n^2 bytes
/// (at 3,000 records, fifteen heads trained in 56 s on one core, where the primal solve trained
/// on 16,000 in 27 s: `hack/bench-distill.sh`).
pub const DUAL_MAX_RECORDS: usize = 2000;

/// The lambdas tried when a plan names none.
pub const DEFAULT_LAMBDAS: [f64; 7] = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0];

/// Trained heads. Feature `i`'s weights, one per head, lie together in row `i`, so a record's
/// features each read one short run of memory. Rows are padded to `stride` floats (1 for one
/// head; 4, 8 or a multiple of 16 for more) in 64-byte aligned storage: a row then never
/// straddles two cache lines (15 heads' 60 bytes did nearly always, and a row read is
/// mostly a cache miss), and a scorer can sum a padded row of a size known at compile time in
/// registers (see [`RidgeHeads::padded_row`]).
#[derive(Clone, Debug)]
pub struct RidgeHeads {
    pub dim: usize,
    pub heads: usize,
    stride: usize,
    lines: Vec<Line>,
    pub bias: Vec<f32>,
    /// The lambda chosen per head, by leave-one-out mean squared error.
    pub lambdas: Vec<f64>,
}

/// One cache line of weights.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct Line([f32; 16]);

impl RidgeHeads {
    /// Heads over `dim` features, all weights zero.
    pub fn zeros(dim: usize, heads: usize, bias: Vec<f32>, lambdas: Vec<f64>) -> Self {
        let stride = match heads {
            0 | 1 => 1,
            2..=4 => 4,
            5..=8 => 8,
            _ => heads.next_multiple_of(16),
        };
        let lines = vec![Line::default(); (dim * stride).div_ceil(16)];
        RidgeHeads { dim, heads, stride, lines, bias, lambdas }
    }

    /// Heads from their weights in the artefact's order, `weights[feature * heads + head]`.
    pub fn new(dim: usize, heads: usize, weights: &[f32], bias: Vec<f32>, lambdas: Vec<f64>) -> Self {
        let mut out = RidgeHeads::zeros(dim, heads, bias, lambdas);
        for (i, row) in weights.chunks_exact(heads.max(1)).enumerate().take(dim) {
            out.row_mut(i).copy_from_slice(&row[..heads]);
        }
        out
    }

    /// Every weight in the artefact's order, `[feature * heads + head]`.
    pub fn weights(&self) -> impl Iterator<Item = f32> + '_ {
        (0..self.dim).flat_map(|i| self.row(i).iter().copied())
    }

    /// The distance between rows, in floats.
    pub fn stride(&self) -> usize {
        self.stride
    }

    fn floats(&self) -> &[f32] {
        // SAFETY: `Line` is `repr(C)` over 16 `f32`s and 64 bytes long, with no padding, so the
        // lines are `16 * len` consecutive, initialised `f32`s, aligned for `f32`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.lines.len() * 16) }
    }

    fn floats_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `floats`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), self.lines.len() * 16) }
    }

    /// Feature `index`'s weight for each head.
    pub fn row(&self, index: usize) -> &[f32] {
        &self.floats()[index * self.stride..][..self.heads]
    }

    pub(crate) fn row_mut(&mut self, index: usize) -> &mut [f32] {
        let (stride, heads) = (self.stride, self.heads);
        &mut self.floats_mut()[index * stride..][..heads]
    }

    /// Feature `index`'s row with its padding (zeros past the last head), for `S` equal to
    /// [`RidgeHeads::stride`].
    #[inline(always)]
    pub fn padded_row<const S: usize>(&self, index: usize) -> &[f32; S] {
        debug_assert_eq!(S, self.stride);
        self.floats()[index * S..][..S].try_into().expect("a row of S floats")
    }

    /// Asks the CPU to fetch feature `index`'s row into cache ahead of its use: with many heads
    /// the table (64 bytes a feature at fifteen) is larger than the caches, and on real text the
    /// rows a record touches are scattered through it.
    #[inline(always)]
    pub fn prefetch_row(&self, index: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(row) = self.floats().get(index * self.stride) {
            // SAFETY: SSE is part of the x86-64 baseline, and a prefetch reads nothing the
            // program sees (the address is a valid one besides).
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(std::ptr::from_ref(row).cast())
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = index;
    }

    /// Predictions of every head for one record.
    pub fn predict(&self, x: &SparseVec, out: &mut [f32]) {
        out.copy_from_slice(&self.bias);
        for (&i, &v) in x.indices.iter().zip(&x.values) {
            for (o, w) in out.iter_mut().zip(self.row(i as usize)) {
                *o += v * w;
            }
        }
    }
}

/// Fits one head per target column. `targets[h][i]` is head `h`'s target for record `i`; the
/// records must come in random order (distill passes them in id-hash order), since the larger
/// sets hold every fifth one out to choose lambda.
///
/// Up to [`DUAL_MAX_RECORDS`] records the dual solve is exact and chooses each head's lambda by
/// exact leave-one-out error; past that its n x n matrix is out of reach (200k labels would take
/// 320 GB), and conjugate gradients in the primal take over, in memory linear in the records'
/// nonzeros. Both minimise the same objective (a test holds them to the same weights).
pub fn fit(xs: &[SparseVec], dim: usize, targets: &[Vec<f32>], lambdas: &[f64]) -> RidgeHeads {
    let lambdas = if lambdas.is_empty() { &DEFAULT_LAMBDAS[..] } else { lambdas };
    if xs.len() <= DUAL_MAX_RECORDS {
        dual::fit(xs, dim, targets, lambdas)
    } else {
        primal::fit(xs, dim, targets, lambdas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vec_of(pairs: &[(u32, f32)]) -> SparseVec {
        SparseVec { indices: pairs.iter().map(|p| p.0).collect(), values: pairs.iter().map(|p| p.1).collect() }
    }

    #[test]
    fn recovers_a_linear_target_and_ignores_noise() {
        // Feature 0 carries the signal, features 1..40 are one-hot noise per record.
        let xs: Vec<SparseVec> = (0..40u32).map(|i| vec_of(&[(0, (i % 5) as f32 / 4.0), (1 + i, 0.3)])).collect();
        let signal: Vec<f32> = (0..40).map(|i| 1.0 + 4.0 * ((i % 5) as f32 / 4.0)).collect();
        let heads = fit(&xs, 64, std::slice::from_ref(&signal), &DEFAULT_LAMBDAS);
        let mut out = [0.0];
        let mut err = 0.0;
        for (x, t) in xs.iter().zip(&signal) {
            heads.predict(x, &mut out);
            err += (out[0] - t).abs();
        }
        assert!(err / 40.0 < 0.5, "mean abs error {}", err / 40.0);
        // A record with only the signal feature at its maximum predicts high.
        heads.predict(&vec_of(&[(0, 1.0)]), &mut out);
        assert!(out[0] > 3.5, "{}", out[0]);
    }

    #[test]
    fn strong_regularisation_wins_on_pure_noise() {
        // Records share features (three of ten each), and the targets ignore them.
        let xs: Vec<SparseVec> = (0..60u32)
            .map(|i| {
                let mut idx = vec![(i * 7) % 10, (i * 3 + 1) % 10, (i * 11 + 5) % 10];
                idx.sort_unstable();
                idx.dedup();
                vec_of(&idx.iter().map(|&j| (j, 0.5)).collect::<Vec<_>>())
            })
            .collect();
        let noise: Vec<f32> = (0..60u64).map(|i| (xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()) % 5) as f32).collect();
        let heads = fit(&xs, 16, &[noise], &[0.01, 100.0]);
        assert_eq!(heads.lambdas[0], 100.0);
    }

    #[test]
    fn rows_keep_their_weights_in_the_artefact_order_whatever_the_padding() {
        for heads in [1, 2, 3, 5, 8, 15, 16, 17] {
            let dim = 37;
            let weights: Vec<f32> = (0..dim * heads).map(|k| k as f32).collect();
            let r = RidgeHeads::new(dim, heads, &weights, vec![0.0; heads], vec![1.0; heads]);
            assert_eq!(r.weights().collect::<Vec<_>>(), weights, "{heads} heads");
            assert_eq!(r.row(36), &weights[36 * heads..], "{heads} heads");
            assert!((r.floats().as_ptr() as usize).is_multiple_of(64));
            if heads > 1 {
                let row_bytes = r.stride() * 4;
                assert!(
                    64 % row_bytes == 0 || row_bytes.is_multiple_of(64),
                    "{heads} heads: no row straddles a cache line"
                );
                assert!(
                    r.floats()[36 * r.stride() + heads..][..r.stride() - heads].iter().all(|&w| w == 0.0),
                    "padding is zero"
                );
            }
        }
    }
}
