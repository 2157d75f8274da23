//! Text vectors from an embedding model (mistral.rs: Qwen3-Embedding, EmbeddingGemma), dense,
//! behind the same trait as the hashed featurizer.

use super::Featurizer;
use crate::error::{Error, Result};
use crate::models::Embedder;
use crate::sparse::SparseVec;

pub struct EmbeddingFeaturizer {
    embedder: Embedder,
    dim: usize,
    runtime: tokio::runtime::Handle,
}

impl EmbeddingFeaturizer {
    /// Loads the model and learns its dimension from one probe embedding.
    pub async fn new(embedder: Embedder) -> Result<Self> {
        let probe = embedder.embed(&["dimension probe"]).await?;
        let dim = probe.first().map_or(0, Vec::len);
        if dim == 0 {
            return Err(Error::Model("embedding model returned an empty vector".into()));
        }
        Ok(EmbeddingFeaturizer { embedder, dim, runtime: tokio::runtime::Handle::current() })
    }
}

impl Featurizer for EmbeddingFeaturizer {
    fn dim(&self) -> usize {
        self.dim
    }

    /// Called from the blocking pool (as every featurizer is): waits on the model's async API.
    fn featurize(&self, texts: &[&str]) -> Result<Vec<SparseVec>> {
        let vectors = self.runtime.block_on(self.embedder.embed(texts))?;
        if vectors.len() != texts.len() {
            return Err(Error::Model(format!("{} embeddings for {} texts", vectors.len(), texts.len())));
        }
        vectors
            .into_iter()
            .map(|values| {
                if values.len() != self.dim {
                    return Err(Error::Model(format!("embedding of size {} (expected {})", values.len(), self.dim)));
                }
                let mut v = SparseVec { indices: (0..self.dim as u32).collect(), values };
                v.normalize();
                Ok(v)
            })
            .collect()
    }
}
