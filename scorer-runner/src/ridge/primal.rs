//! The primal ridge solve by conjugate gradients, for labelled sets too large for the dual: it
//! solves `(X^T X + lambda I) w = X^T y` without forming either matrix, touching each record's
//! nonzeros twice an iteration, so memory is the records' features plus a few `dim x heads`
//! arrays, and time is linear in the labels.
//!
//! All heads are solved together (one pass over the records serves every head), each column
//! with its own step sizes and its own lambda. A Jacobi preconditioner (the diagonal of
//! `X^T X`) evens out common and rare features, and each solve starts from the previous one:
//! lambdas are tried from the largest down, and the final fit starts from the chosen one.
//!
//! Lambda is chosen per head by the error on every fifth record, held out of a fit on the other
//! four (the dual's exact leave-one-out is out of reach here; with thousands of held-out records
//! the estimate is tight). The heads are then refitted on every record with their lambdas.

use super::RidgeHeads;
use crate::sparse::SparseVec;

/// Stop when each head's residual has fallen to this fraction of its right-hand side: scores on
/// a 1-5 scale need no more.
const TOLERANCE: f64 = 1e-5;

/// Iterations at most per solve.
const MAX_ITERATIONS: usize = 400;

/// Every `HOLDOUT`-th record is held out to choose lambda.
const HOLDOUT: usize = 5;

/// Fits one head per target column; see the module comment.
pub fn fit(xs: &[SparseVec], dim: usize, targets: &[Vec<f32>], lambdas: &[f64]) -> RidgeHeads {
    let heads = targets.len();
    let n = xs.len();
    let means: Vec<f64> = targets.iter().map(|t| t.iter().map(|&v| v as f64).sum::<f64>() / n.max(1) as f64).collect();
    // Centered targets, record-major: y[i * heads + h].
    let y: Vec<f64> = (0..n).flat_map(|i| targets.iter().zip(&means).map(move |(t, m)| t[i] as f64 - m)).collect();
    let system = System { xs, dim, heads, y: &y };
    let fitting: Vec<usize> = (0..n).filter(|i| i % HOLDOUT != HOLDOUT - 1).collect();
    let held: Vec<usize> = (0..n).filter(|i| i % HOLDOUT == HOLDOUT - 1).collect();

    let mut order: Vec<f64> = lambdas.to_vec();
    order.sort_by(|a, b| b.total_cmp(a));
    let mut w = vec![0f64; dim * heads];
    let mut best_w = vec![0f64; dim * heads];
    let mut best: Vec<(f64, f64)> = vec![(f64::INFINITY, order[0]); heads];
    for &lambda in &order {
        system.solve(&fitting, &vec![lambda; heads], &mut w);
        let errors = system.squared_errors(&held, &w);
        for h in 0..heads {
            if errors[h] < best[h].0 {
                best[h] = (errors[h], lambda);
                for f in 0..dim {
                    best_w[f * heads + h] = w[f * heads + h];
                }
            }
        }
    }
    let chosen: Vec<f64> = best.iter().map(|b| b.1).collect();
    let all: Vec<usize> = (0..n).collect();
    system.solve(&all, &chosen, &mut best_w);

    let mut out = RidgeHeads::zeros(dim, heads, means.iter().map(|&m| m as f32).collect(), chosen);
    for f in 0..dim {
        for (o, &v) in out.row_mut(f).iter_mut().zip(&best_w[f * heads..(f + 1) * heads]) {
            *o = v as f32;
        }
    }
    out
}

/// The least-squares system over the records: features, and centered targets record-major.
struct System<'a> {
    xs: &'a [SparseVec],
    dim: usize,
    heads: usize,
    y: &'a [f64],
}

impl System<'_> {
    /// `out = X_S^T X_S p + lambda p` over the records `subset`, per head.
    fn apply(&self, subset: &[usize], lambdas: &[f64], p: &[f64], out: &mut [f64]) {
        let heads = self.heads;
        for (o, v) in out.chunks_exact_mut(heads).zip(p.chunks_exact(heads)) {
            for h in 0..heads {
                o[h] = lambdas[h] * v[h];
            }
        }
        let mut z = vec![0f64; heads];
        for &i in subset {
            let x = &self.xs[i];
            self.project(i, p, &mut z);
            for (&f, &v) in x.indices.iter().zip(&x.values) {
                for (oh, zh) in out[f as usize * heads..][..heads].iter_mut().zip(&z) {
                    *oh += v as f64 * zh;
                }
            }
        }
    }

    /// Solves `(X_S^T X_S + lambda_h I) w_h = X_S^T y_h` for every head, from `w` as given.
    fn solve(&self, subset: &[usize], lambdas: &[f64], w: &mut [f64]) {
        let (dim, heads) = (self.dim, self.heads);
        // Right-hand side and preconditioner (the diagonal of the matrix).
        let mut b = vec![0f64; dim * heads];
        let mut diagonal = vec![0f64; dim];
        for &i in subset {
            let x = &self.xs[i];
            let y = &self.y[i * heads..][..heads];
            for (&f, &v) in x.indices.iter().zip(&x.values) {
                diagonal[f as usize] += (v as f64) * (v as f64);
                for (bh, yh) in b[f as usize * heads..][..heads].iter_mut().zip(y) {
                    *bh += v as f64 * yh;
                }
            }
        }
        let precondition = |r: &[f64], z: &mut [f64]| {
            for (f, (zr, rr)) in z.chunks_exact_mut(heads).zip(r.chunks_exact(heads)).enumerate() {
                for h in 0..heads {
                    zr[h] = rr[h] / (diagonal[f] + lambdas[h]);
                }
            }
        };
        let column_dot = |a: &[f64], c: &[f64]| {
            let mut out = vec![0f64; heads];
            for (ar, cr) in a.chunks_exact(heads).zip(c.chunks_exact(heads)) {
                for h in 0..heads {
                    out[h] += ar[h] * cr[h];
                }
            }
            out
        };
        let goal: Vec<f64> = column_dot(&b, &b).iter().map(|bb| bb.sqrt() * TOLERANCE).collect();
        let mut r = vec![0f64; dim * heads];
        self.apply(subset, lambdas, w, &mut r);
        r.iter_mut().zip(&b).for_each(|(r, b)| *r = b - *r);
        let mut z = vec![0f64; dim * heads];
        precondition(&r, &mut z);
        let mut p = z.clone();
        let mut rz = column_dot(&r, &z);
        let mut q = vec![0f64; dim * heads];
        for _ in 0..MAX_ITERATIONS {
            let residual = column_dot(&r, &r);
            if residual.iter().zip(&goal).all(|(rr, g)| rr.sqrt() <= *g) {
                break;
            }
            self.apply(subset, lambdas, &p, &mut q);
            let pq = column_dot(&p, &q);
            let alpha: Vec<f64> = rz.iter().zip(&pq).map(|(a, b)| if *b > 0.0 { a / b } else { 0.0 }).collect();
            for (((wr, rr), pr), qr) in w
                .chunks_exact_mut(heads)
                .zip(r.chunks_exact_mut(heads))
                .zip(p.chunks_exact(heads))
                .zip(q.chunks_exact(heads))
            {
                for h in 0..heads {
                    wr[h] += alpha[h] * pr[h];
                    rr[h] -= alpha[h] * qr[h];
                }
            }
            precondition(&r, &mut z);
            let rz_next = column_dot(&r, &z);
            let beta: Vec<f64> = rz_next.iter().zip(&rz).map(|(a, b)| if *b > 0.0 { a / b } else { 0.0 }).collect();
            for (pr, zr) in p.chunks_exact_mut(heads).zip(z.chunks_exact(heads)) {
                for h in 0..heads {
                    pr[h] = zr[h] + beta[h] * pr[h];
                }
            }
            rz = rz_next;
        }
    }

    /// `out[h] = x_i . w_h`: record `i`'s product with each head's column of `w`.
    fn project(&self, i: usize, w: &[f64], out: &mut [f64]) {
        let (x, heads) = (&self.xs[i], self.heads);
        out.iter_mut().for_each(|v| *v = 0.0);
        for (&f, &v) in x.indices.iter().zip(&x.values) {
            for (o, wh) in out.iter_mut().zip(&w[f as usize * heads..][..heads]) {
                *o += v as f64 * wh;
            }
        }
    }

    /// Each head's mean squared error on the records `subset`.
    fn squared_errors(&self, subset: &[usize], w: &[f64]) -> Vec<f64> {
        let heads = self.heads;
        let mut sums = vec![0f64; heads];
        let mut predicted = vec![0f64; heads];
        for &i in subset {
            self.project(i, w, &mut predicted);
            for h in 0..heads {
                let e = predicted[h] - self.y[i * heads + h];
                sums[h] += e * e;
            }
        }
        sums.iter().map(|s| s / subset.len().max(1) as f64).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records with a few shared features each, and two heads: one a linear function of the
    /// features, one noise.
    fn problem(n: u32) -> (Vec<SparseVec>, Vec<Vec<f32>>) {
        let hash = |i: u32, k: u32| xxhash_rust::xxh3::xxh3_64(&[i.to_le_bytes(), k.to_le_bytes()].concat());
        let xs: Vec<SparseVec> = (0..n)
            .map(|i| {
                let mut indices: Vec<u32> = (0..6).map(|k| (hash(i, k) % 50) as u32).collect();
                indices.sort_unstable();
                indices.dedup();
                let values = indices.iter().map(|&f| 0.2 + (f % 7) as f32 / 10.0).collect();
                SparseVec { indices, values }
            })
            .collect();
        let signal = xs.iter().map(|x| 1.0 + x.indices.iter().filter(|&&f| f < 10).count() as f32).collect();
        let noise = (0..n).map(|i| (hash(i, 99) % 5) as f32 + 1.0).collect();
        (xs, vec![signal, noise])
    }

    #[test]
    fn the_iterative_solve_reaches_the_dual_solution_for_the_same_lambda() {
        let (xs, targets) = problem(300);
        for lambda in [0.1, 3.0] {
            let exact = super::super::dual::fit(&xs, 64, &targets, &[lambda]);
            let iterative = fit(&xs, 64, &targets, &[lambda]);
            assert_eq!(iterative.lambdas, vec![lambda; 2]);
            assert_eq!(iterative.bias, exact.bias);
            for f in 0..64 {
                for (a, b) in iterative.row(f).iter().zip(exact.row(f)) {
                    assert!((a - b).abs() < 1e-3, "feature {f}, lambda {lambda}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn lambda_is_chosen_per_head_on_held_out_records() {
        let (xs, targets) = problem(2000);
        let heads = fit(&xs, 64, &targets, &[0.01, 1.0, 1000.0]);
        assert!(heads.lambdas[0] < 1000.0, "the signal head is fitted: {:?}", heads.lambdas);
        assert_eq!(heads.lambdas[1], 1000.0, "the noise head is shrunk");
        let mut out = [0.0; 2];
        let mut err = 0.0;
        for (x, t) in xs.iter().zip(&targets[0]) {
            heads.predict(x, &mut out);
            err += (out[0] - t).abs();
        }
        assert!(err / 2000.0 < 0.1, "mean abs error {}", err / 2000.0);
    }
}
