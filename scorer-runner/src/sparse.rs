//! Sparse vectors: what featurizers produce and ridge heads consume.

/// A sparse vector: unique indices, in no particular order (nothing that consumes one needs
/// them sorted, and not sorting is a large part of the featurizer's speed).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SparseVec {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl SparseVec {
    pub fn dense_dot(&self, dense: &[f32]) -> f32 {
        self.indices.iter().zip(&self.values).map(|(&i, &v)| dense[i as usize] * v).sum()
    }

    /// Adds `scale * self` into a dense vector.
    pub fn add_to(&self, dense: &mut [f32], scale: f32) {
        for (&i, &v) in self.indices.iter().zip(&self.values) {
            dense[i as usize] += scale * v;
        }
    }

    pub fn normalize(&mut self) {
        let norm = self.values.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            self.values.iter_mut().for_each(|v| *v /= norm);
        }
    }
}
