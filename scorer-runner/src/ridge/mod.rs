//! Closed-form ridge regression for the students' heads, solved in the dual (kernel) form.
//!
//! Hashed features have far more dimensions (2^18) than a group has labelled records (thousands),
//! so the n x n Gram matrix is the small side. One eigendecomposition of it serves every head and
//! every regularisation strength: for each head, lambda is chosen by exact leave-one-out error
//! (each record held out in turn, in closed form), and the primal weights `w = X^T alpha` are
//! written out so scoring is one sparse dot product per head.

use nalgebra::{DMatrix, DVector, SymmetricEigen};

use crate::sparse::SparseVec;

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

    fn row_mut(&mut self, index: usize) -> &mut [f32] {
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

/// Gram matrix `X X^T`, using a dense scatter of each row so each entry costs one pass over the
/// other row's nonzeros.
fn gram(xs: &[SparseVec], dim: usize) -> DMatrix<f64> {
    let n = xs.len();
    let mut k = DMatrix::<f64>::zeros(n, n);
    let mut dense = vec![0f32; dim];
    for i in 0..n {
        xs[i].add_to(&mut dense, 1.0);
        for j in i..n {
            let v = xs[j].dense_dot(&dense) as f64;
            k[(i, j)] = v;
            k[(j, i)] = v;
        }
        xs[i].add_to(&mut dense, -1.0);
    }
    k
}

/// Fits one head per target column. `targets[h][i]` is head `h`'s target for record `i`.
pub fn fit(xs: &[SparseVec], dim: usize, targets: &[Vec<f32>], lambdas: &[f64]) -> RidgeHeads {
    let n = xs.len();
    let heads = targets.len();
    let lambdas = if lambdas.is_empty() { &DEFAULT_LAMBDAS[..] } else { lambdas };
    let mut out = RidgeHeads::zeros(dim, heads, vec![0.0; heads], vec![lambdas[0]; heads]);
    if n == 0 {
        return out;
    }
    let eigen = SymmetricEigen::new(gram(xs, dim));
    let v = &eigen.eigenvectors;
    let s = eigen.eigenvalues.map(|e| e.max(0.0));
    // Squared eigenvector entries give the hat matrix diagonal: H_ii = sum_k V_ik^2 s_k/(s_k+l).
    let v2 = v.map(|e| e * e);
    // Per lambda, the shrinkage of each eigen-direction and the hat diagonal: the same for every
    // head.
    let per_lambda: Vec<(DVector<f64>, DVector<f64>)> = lambdas
        .iter()
        .map(|&lambda| {
            let shrink = s.map(|sk| sk / (sk + lambda));
            let hat_diag = &v2 * &shrink;
            (shrink, hat_diag)
        })
        .collect();
    for (h, target) in targets.iter().enumerate() {
        let mean = target.iter().map(|&t| t as f64).sum::<f64>() / n as f64;
        let y = DVector::from_iterator(n, target.iter().map(|&t| t as f64 - mean));
        let vty = v.transpose() * &y;
        let mut best: Option<(f64, f64)> = None;
        for (&lambda, (shrink, hat_diag)) in lambdas.iter().zip(&per_lambda) {
            let fitted = v * vty.component_mul(shrink);
            let mse = (0..n)
                .map(|i| {
                    let e = (y[i] - fitted[i]) / (1.0 - hat_diag[i]).max(1e-9);
                    e * e
                })
                .sum::<f64>()
                / n as f64;
            if best.is_none_or(|(m, _)| mse < m) {
                best = Some((mse, lambda));
            }
        }
        let (_, lambda) = best.expect("at least one lambda");
        let alpha = v * vty.component_mul(&s.map(|sk| 1.0 / (sk + lambda)));
        out.bias[h] = mean as f32;
        out.lambdas[h] = lambda;
        for (x, &a) in xs.iter().zip(alpha.iter()) {
            for (&i, &val) in x.indices.iter().zip(&x.values) {
                out.row_mut(i as usize)[h] += (a as f32) * val;
            }
        }
    }
    out
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
