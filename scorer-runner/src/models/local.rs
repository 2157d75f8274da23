//! In-process models through mistral.rs: a text model (safetensors directory or GGUF files) as a
//! JSON-constrained judge, and an embedding model (Qwen3-Embedding, EmbeddingGemma).

use std::path::Path;
use std::sync::{Arc, Mutex};

use either::Either;
use mistralrs::{
    Constraint, CustomLogitsProcessor, DType, EmbeddingModelBuilder, EmbeddingRequest, GgufModelBuilder, Model,
    ModelDType, NormalRequest, Request, RequestBuilder, Response, SamplingParams, Tensor, TextMessageRole,
    TextModelBuilder, TokenSource,
};
use mistralrs_core::RequestMessage;
use serde_json::Value;

use super::LogLikelihood;
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
    /// Held while a text is teacher-forced: see [`LocalChat::log_likelihood`].
    forcing: tokio::sync::Mutex<()>,
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
        Ok(LocalChat { model, max_num_seqs, tokenizer, forcing: tokio::sync::Mutex::new(()) })
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

impl LocalChat {
    /// The log-likelihood of `text`'s first `max_tokens` tokens under the model, each token given
    /// those before it (the first, or the beginning-of-sequence token where the tokenizer adds
    /// one, is the context and is not counted).
    ///
    /// mistral.rs returns log-probabilities of the tokens it samples only, so the text is
    /// teacher-forced: the first token is the prompt, and a logits processor reads each step's
    /// distribution before it leaves the text's next token the only one to sample. One decoding
    /// step per token, on the engine's own KV cache.
    ///
    /// One text at a time: mistral.rs 0.8.1 decodes sequences of different lengths batched
    /// together inexactly on CPU (an 18-token text decoded beside a 16-token one came out 0.29
    /// nats from its one-pass log-likelihood, alone it matched to 1e-6), which would make scores
    /// depend on which records happened to share a batch. (Its raw-logits request returns every
    /// position's logits in one pass, exact, but holds a tokens x vocabulary matrix per record:
    /// 0.6 GB for 1,024 tokens of a 150k vocabulary.)
    pub async fn log_likelihood(&self, text: &str, max_tokens: usize) -> Result<LogLikelihood> {
        let _alone = self.forcing.lock().await;
        let mut tokens =
            self.model.tokenize(Either::Right(text.to_string()), None, true, false, None).await.map_err(model_error)?;
        tokens.truncate(max_tokens.max(2));
        if tokens.len() < 2 {
            return Ok(LogLikelihood { sum: 0.0, tokens: 0 });
        }
        let forced = Arc::new(Forced::new(tokens.clone()));
        let mut sampling = SamplingParams::deterministic();
        sampling.max_len = Some(tokens.len() - 1);
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let mut request = NormalRequest::new_simple(
            RequestMessage::CompletionTokens(tokens[..1].to_vec()),
            sampling,
            tx,
            0,
            None,
            None,
        );
        request.constraint = Constraint::None;
        request.logits_processors = Some(vec![forced.clone()]);
        let sender = self.model.inner().get_sender(None).map_err(model_error)?;
        sender.send(Request::Normal(Box::new(request))).await.map_err(model_error)?;
        match rx.recv().await {
            Some(Response::CompletionDone(_)) => Ok(forced.total()),
            Some(Response::CompletionModelError(e, _)) => Err(model_error(e)),
            Some(Response::InternalError(e) | Response::ValidationError(e)) => Err(model_error(e)),
            Some(_) => Err(Error::Model("an unexpected reply to a completion request".into())),
            None => Err(Error::Model("the model's engine closed the request".into())),
        }
    }
}

/// Reads each step's distribution at the forced text's next token, then leaves that token the
/// only one with any probability.
struct Forced {
    tokens: Vec<u32>,
    /// Per scored position (token 1 onwards), its log-probability once seen; a step the engine
    /// ran twice writes the same slot.
    log_probs: Mutex<Vec<Option<f64>>>,
}

impl Forced {
    fn new(tokens: Vec<u32>) -> Self {
        let scored = tokens.len() - 1;
        Forced { tokens, log_probs: Mutex::new(vec![None; scored]) }
    }

    /// The positions seen: the engine stops early at an end-of-sequence token inside the text.
    fn total(&self) -> LogLikelihood {
        let log_probs = self.log_probs.lock().unwrap_or_else(|e| e.into_inner());
        let seen = log_probs.iter().flatten();
        LogLikelihood { sum: seen.clone().sum(), tokens: seen.count() }
    }
}

impl CustomLogitsProcessor for Forced {
    fn apply(&self, logits: &Tensor, context: &[u32]) -> mistralrs::Result<Tensor> {
        let at = context.len();
        let Some(&next) = self.tokens.get(at) else { return Ok(logits.clone()) };
        // Candle's own error for a token past the logits (a tokenizer that is not the model's).
        logits.get(next as usize)?;
        let values: Vec<f32> = logits.to_dtype(DType::F32)?.to_vec1()?;
        let target = values[next as usize];
        let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let log_sum: f64 = values.iter().map(|&v| f64::from(v - max).exp()).sum::<f64>().ln();
        if let Some(slot) = self.log_probs.lock().unwrap_or_else(|e| e.into_inner()).get_mut(at - 1) {
            *slot = Some(f64::from(target - max) - log_sum);
        }
        let mut forced = vec![f32::NEG_INFINITY; values.len()];
        forced[next as usize] = 0.0;
        Tensor::from_vec(forced, values.len(), logits.device())?.to_dtype(logits.dtype())
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
