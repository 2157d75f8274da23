//! In-process models through mistral.rs: a text model (safetensors directory or GGUF files) as a
//! JSON-constrained judge, and an embedding model (Qwen3-Embedding, EmbeddingGemma).

use std::path::Path;

use mistralrs::{
    Constraint, EmbeddingModelBuilder, EmbeddingRequest, GgufModelBuilder, Model, ModelDType, RequestBuilder,
    TextMessageRole, TextModelBuilder, TokenSource,
};
use serde_json::Value;

use crate::error::{Error, Result};

fn model_error(e: impl std::fmt::Display) -> Error {
    Error::Model(e.to_string())
}

/// GPU builds use the best device; CPU builds never probe for one, and run in F32: mistral.rs'
/// automatic dtype picks F16 on CPU, which is emulated there (slower and less precise).
const FORCE_CPU: bool = !cfg!(feature = "cuda");

pub struct LocalChat {
    model: Model,
    max_num_seqs: usize,
    tokenizer: Option<tokenizers::Tokenizer>,
}

impl LocalChat {
    pub async fn load(dir: &Path, gguf_files: &[String], max_num_seqs: usize) -> Result<Self> {
        let path = dir.to_string_lossy().into_owned();
        let model = if gguf_files.is_empty() {
            let mut builder =
                TextModelBuilder::new(path).with_token_source(TokenSource::None).with_max_num_seqs(max_num_seqs);
            if FORCE_CPU {
                builder = builder.with_force_cpu().with_dtype(ModelDType::F32);
            }
            builder.build().await
        } else {
            let mut builder = GgufModelBuilder::new(path, gguf_files.to_vec())
                .with_token_source(TokenSource::None)
                .with_max_num_seqs(max_num_seqs);
            if FORCE_CPU {
                builder = builder.with_force_cpu();
            }
            builder.build().await
        }
        .map_err(|e| Error::Model(format!("loading {}: {e}", dir.display())))?;
        let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).ok();
        Ok(LocalChat { model, max_num_seqs, tokenizer })
    }

    pub fn tokenizer(&self) -> Option<&tokenizers::Tokenizer> {
        self.tokenizer.as_ref()
    }

    pub fn max_num_seqs(&self) -> usize {
        self.max_num_seqs
    }

    pub async fn complete(&self, system: &str, user: &str, schema: &Value, max_tokens: usize) -> Result<String> {
        // The deterministic sampler resets every sampling setting, so it comes first.
        let request = RequestBuilder::new()
            .set_deterministic_sampler()
            .set_sampler_max_len(max_tokens)
            .set_constraint(Constraint::JsonSchema(schema.clone()))
            .add_message(TextMessageRole::System, system)
            .add_message(TextMessageRole::User, user);
        let response = self.model.send_chat_request(request).await.map_err(model_error)?;
        response
            .choices
            .first()
            .and_then(|c| c.message.content.clone())
            .ok_or_else(|| Error::Model("reply has no content".into()))
    }
}

pub struct LocalEmbedder {
    model: Model,
}

impl LocalEmbedder {
    pub async fn load(dir: &Path, max_num_seqs: usize) -> Result<Self> {
        let mut builder = EmbeddingModelBuilder::new(dir.to_string_lossy())
            .with_token_source(TokenSource::None)
            .with_max_num_seqs(max_num_seqs);
        if FORCE_CPU {
            builder = builder.with_force_cpu().with_dtype(ModelDType::F32);
        }
        let model = builder.build().await.map_err(|e| Error::Model(format!("loading {}: {e}", dir.display())))?;
        Ok(LocalEmbedder { model })
    }

    pub async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let request = EmbeddingRequest::builder().add_prompts(texts.iter().copied());
        self.model.generate_embeddings(request).await.map_err(model_error)
    }
}
