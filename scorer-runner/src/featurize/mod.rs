//! Featurizers turn record text into vectors for clustering and for the students' heads. The
//! model-free `hashed` featurizer is the default; model-backed ones plug in behind the same trait.

mod embedding;
mod hashed;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ridge::RidgeHeads;

pub use hashed::{idf_weights, HashedFeaturizer, HashedSpec};

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

/// Which featurizer a step uses, as named in plans and recorded in student artefacts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum FeaturizerSpec {
    /// Signed feature hashing of word (and character) n-grams; needs no model.
    Hashed(HashedSpec),
    /// An embedding model's vectors.
    Embedding { model: crate::plan::ModelSpec },
}

impl Default for FeaturizerSpec {
    fn default() -> Self {
        FeaturizerSpec::Hashed(HashedSpec::default())
    }
}

/// Text to vectors. Batched, because model-backed featurizers are far faster on batches.
pub trait Featurizer: Send + Sync {
    /// The vectors' dimension.
    fn dim(&self) -> usize;
    /// One L2-normalised vector per text.
    fn featurize(&self, texts: &[&str]) -> crate::error::Result<Vec<SparseVec>>;
    /// Calls `f` with each text's predictions under `heads` (what [`RidgeHeads::predict`] gives
    /// for its vector), in order. Featurizers that build vectors sparsely predict while building,
    /// without materialising the vector: scoring a corpus needs only the predictions.
    fn predict_each(&self, texts: &[&str], heads: &RidgeHeads, f: &mut dyn FnMut(&[f32])) -> crate::error::Result<()> {
        let mut out = vec![0f32; heads.heads];
        for x in self.featurize(texts)? {
            heads.predict(&x, &mut out);
            f(&out);
        }
        Ok(())
    }
}

/// Builds the featurizer a spec names (loading its model, if it has one). `idf` carries
/// document-frequency weights learnt at training time, for featurizers that use them.
pub async fn build(
    ctx: &crate::steps::Context,
    spec: &FeaturizerSpec,
    idf: Option<Vec<f32>>,
) -> crate::error::Result<Arc<dyn Featurizer>> {
    match spec {
        FeaturizerSpec::Hashed(spec) => Ok(Arc::new(HashedFeaturizer::new(spec.clone(), idf)?)),
        FeaturizerSpec::Embedding { model } => {
            let embedder = crate::models::Embedder::load(ctx, model).await?;
            Ok(Arc::new(embedding::EmbeddingFeaturizer::new(embedder).await?))
        }
    }
}

/// Whether a spec learns IDF weights from the training records.
pub fn uses_idf(spec: &FeaturizerSpec) -> bool {
    matches!(spec, FeaturizerSpec::Hashed(h) if h.idf)
}
