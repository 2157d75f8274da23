//! Closed-form ridge regression for the students' heads, solved in the dual (kernel) form.
//!
//! Hashed features have far more dimensions (2^18) than a group has labelled records (thousands),
//! so the n x n Gram matrix is the small side. One eigendecomposition of it serves every head and
//! every regularisation strength: for each head, lambda is chosen by exact leave-one-out error
//! (each record held out in turn, in closed form), and the primal weights `w = X^T alpha` are
//! written out so scoring is one sparse dot product per head.

use nalgebra::{DMatrix, DVector, SymmetricEigen};

use crate::featurize::SparseVec;

/// The lambdas tried when a plan names none.
pub const DEFAULT_LAMBDAS: [f64; 7] = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0];

/// Trained heads: `weights[feature * heads + head]`, so one record's nonzero features each read a
/// contiguous run of head weights.
#[derive(Clone, Debug)]
pub struct RidgeHeads {
    pub dim: usize,
    pub heads: usize,
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    /// The lambda chosen per head, by leave-one-out mean squared error.
    pub lambdas: Vec<f64>,
}

impl RidgeHeads {
    /// Predictions of every head for one record.
    pub fn predict(&self, x: &SparseVec, out: &mut [f32]) {
        out.copy_from_slice(&self.bias);
        for (&i, &v) in x.indices.iter().zip(&x.values) {
            self.add_feature(i, v, out);
        }
    }

    /// Adds `value` times feature `index`'s weight to each head's sum in `out`.
    #[inline(always)]
    pub fn add_feature(&self, index: u32, value: f32, out: &mut [f32]) {
        let row = &self.weights[index as usize * self.heads..(index as usize + 1) * self.heads];
        for (o, w) in out.iter_mut().zip(row) {
            *o += value * w;
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
    let mut out = RidgeHeads {
        dim,
        heads,
        weights: vec![0.0; dim * heads],
        bias: vec![0.0; heads],
        lambdas: vec![lambdas[0]; heads],
    };
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
                out.weights[i as usize * heads + h] += (a as f32) * val;
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
        let xs: Vec<SparseVec> =
            (0..40u32).map(|i| vec_of(&[(0, (i % 5) as f32 / 4.0), (1 + i, 0.3)])).collect();
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
}
