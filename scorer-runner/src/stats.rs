//! Small statistics the steps need: rank correlation, error, cosine similarity, k-means with
//! silhouette for choosing k.

use rand::{Rng, SeedableRng};

/// Spearman's rank correlation (Pearson over average ranks, so ties are handled); `None` when
/// either side is constant or there are fewer than 3 pairs.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 3 {
        return None;
    }
    pearson(&ranks(a), &ranks(b))
}

fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&i, &j| x[i].total_cmp(&x[j]));
    let mut r = vec![0.0; x.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && x[order[end]] == x[order[start]] {
            end += 1;
        }
        let avg = (start + end - 1) as f64 / 2.0 + 1.0;
        for &i in &order[start..end] {
            r[i] = avg;
        }
        start = end;
    }
    r
}

pub fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        cov += (x - ma) * (y - mb);
        va += (x - ma).powi(2);
        vb += (y - mb).powi(2);
    }
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

pub fn mae(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len().max(1) as f64
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// Trimmed mean: drops `floor(trim * n)` values from each end (never all of them).
pub fn trimmed_mean(values: &mut [f32], trim: f64) -> Option<f32> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f32::total_cmp);
    let mut cut = (trim * values.len() as f64).floor() as usize;
    if 2 * cut >= values.len() {
        cut = (values.len() - 1) / 2;
    }
    let kept = &values[cut..values.len() - cut];
    Some(kept.iter().sum::<f32>() / kept.len() as f32)
}

/// K-means over points given by a distance matrix-free cosine geometry: points are normalised,
/// seeded with k-means++ from a fixed seed, and run to convergence. Returns the cluster of each
/// point.
pub fn kmeans(points: &[Vec<f32>], k: usize, seed: u64) -> Vec<usize> {
    let n = points.len();
    let k = k.clamp(1, n.max(1));
    let points: Vec<Vec<f32>> = points.iter().map(|p| normalized(p)).collect();
    let dist = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut centres = vec![points[rng.gen_range(0..n)].clone()];
    while centres.len() < k {
        let d: Vec<f32> =
            points.iter().map(|p| centres.iter().map(|c| dist(p, c)).fold(f32::INFINITY, f32::min)).collect();
        let total: f32 = d.iter().sum();
        let next = if total <= 0.0 {
            centres.len()
        } else {
            let mut target = rng.gen::<f32>() * total;
            d.iter()
                .position(|&di| {
                    target -= di;
                    target <= 0.0
                })
                .unwrap_or(n - 1)
        };
        centres.push(points[next.min(n - 1)].clone());
    }
    let mut assign = vec![usize::MAX; n];
    for _ in 0..100 {
        let next: Vec<usize> = points
            .iter()
            .map(|p| (0..k).min_by(|&a, &b| dist(p, &centres[a]).total_cmp(&dist(p, &centres[b]))).unwrap_or(0))
            .collect();
        if next == assign {
            break;
        }
        assign = next;
        for (c, centre) in centres.iter_mut().enumerate() {
            let members: Vec<&Vec<f32>> = points.iter().zip(&assign).filter(|(_, &a)| a == c).map(|(p, _)| p).collect();
            if members.is_empty() {
                continue;
            }
            centre.iter_mut().enumerate().for_each(|(d, v)| {
                *v = members.iter().map(|m| m[d]).sum::<f32>() / members.len() as f32;
            });
        }
    }
    relabel_in_order(&assign)
}

/// Renumbers clusters by first appearance, so the same partition always has the same labels.
fn relabel_in_order(assign: &[usize]) -> Vec<usize> {
    let mut map = std::collections::HashMap::new();
    assign
        .iter()
        .map(|a| {
            let next = map.len();
            *map.entry(*a).or_insert(next)
        })
        .collect()
}

fn normalized(p: &[f32]) -> Vec<f32> {
    let norm = p.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        p.to_vec()
    } else {
        p.iter().map(|x| x / norm).collect()
    }
}

/// Mean silhouette of a partition under cosine distance (1 - similarity); points alone in their
/// cluster score 0.
pub fn silhouette(similarity: &[Vec<f64>], assign: &[usize]) -> f64 {
    let n = assign.len();
    let k = assign.iter().max().map_or(0, |m| m + 1);
    if n < 2 || k < 2 {
        return 0.0;
    }
    let mut total = 0.0;
    for i in 0..n {
        let mut sums = vec![(0.0, 0usize); k];
        for j in (0..n).filter(|&j| j != i) {
            sums[assign[j]].0 += 1.0 - similarity[i][j];
            sums[assign[j]].1 += 1;
        }
        let own = sums[assign[i]];
        if own.1 == 0 {
            continue;
        }
        let a = own.0 / own.1 as f64;
        let b = (0..k)
            .filter(|&c| c != assign[i] && sums[c].1 > 0)
            .map(|c| sums[c].0 / sums[c].1 as f64)
            .fold(f64::INFINITY, f64::min);
        if b.is_finite() {
            total += (b - a) / a.max(b).max(1e-12);
        }
    }
    total / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_handles_ties_and_constants() {
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        let r = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!(r > 0.9 && r < 1.0);
    }

    #[test]
    fn trimmed_mean_drops_both_tails() {
        assert_eq!(trimmed_mean(&mut [1.0, 2.0, 3.0, 100.0, -50.0], 0.2), Some(2.0));
        assert_eq!(trimmed_mean(&mut [4.0], 0.49), Some(4.0));
        assert_eq!(trimmed_mean(&mut [1.0, 3.0], 0.5), Some(2.0));
        assert_eq!(trimmed_mean(&mut [], 0.1), None);
    }

    #[test]
    fn kmeans_separates_two_directions_and_silhouette_prefers_the_true_k() {
        let points = vec![vec![1.0, 0.1, 0.0], vec![0.9, 0.0, 0.1], vec![0.0, 1.0, 0.1], vec![0.1, 0.9, 0.0]];
        let assign = kmeans(&points, 2, 7);
        assert_eq!(assign, vec![0, 0, 1, 1]);
        let sim: Vec<Vec<f64>> = points.iter().map(|a| points.iter().map(|b| cosine(a, b)).collect()).collect();
        assert!(silhouette(&sim, &assign) > silhouette(&sim, &[0, 1, 0, 1]));
    }
}
