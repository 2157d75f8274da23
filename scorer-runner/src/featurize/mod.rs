//! Featurizers turn record text into vectors for clustering and for the students' heads. The
//! model-free `hashed` featurizer is the default; model-backed ones plug in behind the same trait.

mod embedding;
mod hashed;

use std::sync::Arc;

use crate::plan::FeaturizerSpec;
use crate::ridge::RidgeHeads;
use crate::sparse::SparseVec;
use crate::storage::Storage;

pub use hashed::{idf_weights, GramScratch, HashedFeaturizer};

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

/// Builds the featurizer a spec names (loading its model, an `s3://` one by way of `scratch`, if
/// it has one). `idf` carries document-frequency weights learnt at training time, for featurizers
/// that use them.
pub async fn build(
    storage: &Storage,
    scratch: &std::path::Path,
    spec: &FeaturizerSpec,
    idf: Option<Vec<f32>>,
) -> crate::error::Result<Arc<dyn Featurizer>> {
    match spec {
        FeaturizerSpec::Hashed(spec) => Ok(Arc::new(HashedFeaturizer::new(spec.clone(), idf)?)),
        FeaturizerSpec::Embedding { model } => {
            let embedder = crate::models::Embedder::load(storage, scratch, model).await?;
            Ok(Arc::new(embedding::EmbeddingFeaturizer::new(embedder).await?))
        }
    }
}

/// Whether a spec learns IDF weights from the training records.
pub fn uses_idf(spec: &FeaturizerSpec) -> bool {
    matches!(spec, FeaturizerSpec::Hashed(h) if h.idf)
}
