//! The dual (kernel) ridge solve. Hashed features have far more dimensions (2^18) than a small
//! labelled set has records, so the n x n Gram matrix is the small side. One eigendecomposition
//! of it serves every head and every regularisation strength: for each head, lambda is chosen by
//! exact leave-one-out error (each record held out in turn, in closed form), and the primal
//! weights `w = X^T alpha` are written out so scoring is one sparse dot product per head.

use nalgebra::{DMatrix, DVector, SymmetricEigen};

use super::RidgeHeads;
use crate::sparse::SparseVec;

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

/// Fits one head per target column, each with the lambda of least leave-one-out error.
pub fn fit(xs: &[SparseVec], dim: usize, targets: &[Vec<f32>], lambdas: &[f64]) -> RidgeHeads {
    let n = xs.len();
    let heads = targets.len();
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
