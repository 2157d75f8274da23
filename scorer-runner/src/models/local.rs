//! In-process models through mistral.rs: a text model (safetensors directory or GGUF files) as a
//! JSON-constrained judge or as perplexity filtering's reference model, and an embedding model
//! (Qwen3-Embedding, EmbeddingGemma).

use std::path::Path;

use either::Either;
use mistralrs::{
    Constraint, DType, EmbeddingModelBuilder, EmbeddingRequest, GgufModelBuilder, Model, ModelDType, NormalRequest,
    Request, RequestBuilder, Response, SamplingParams, StopTokens, TextMessageRole, TextModelBuilder, TokenSource,
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

/// A chat model's sequences in one batch, unless its spec says. On CPU a batch decodes no faster
/// than its sequences one by one: four label requests for SmolLM2-135M took 87 s batched and 69 s
/// in turn (the replies were the same), and the tiny model's labels were 1.9 to 3.3 times
/// slower batched (`hack/bench-llm.sh`).
pub const DEFAULT_CHAT_SEQS: usize = if FORCE_CPU { 1 } else { 32 };

/// The tokens llguidance, mistral.rs' constraint engine, takes for the end of the text: once a
/// reply completes its schema, the constraint allows only that token. mistral.rs stops a
/// sequence on the chat template's end-of-turn token alone, so where the two differ (ChatML
/// models whose generation config names only `<|im_end|>`, SmolLM2 among them) the model went
/// on emitting the forced, invisible end-of-text token until the reply's token cap: a 105-token
/// reply cost 400 decoding steps. These become stop tokens of every constrained request.
const GRAMMAR_END_OF_TEXT: [&str; 5] = ["</s>", "<|endoftext|>", "<|end_of_text|>", "<｜end▁of▁sentence｜>", "<eos>"];

pub struct LocalChat {
    model: Model,
    max_num_seqs: usize,
    tokenizer: Option<tokenizers::Tokenizer>,
    /// The longest sequence the model takes, where it says: past it mistral.rs refuses a prompt.
    context: Option<usize>,
    /// Its ids of [`GRAMMAR_END_OF_TEXT`].
    end_of_text: Vec<u32>,
    /// Held while a text is scored: see [`LocalChat::log_likelihood`].
    scoring: tokio::sync::Mutex<()>,
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
        let context =
            model.max_sequence_length().map_err(|e| Error::Model(format!("loading {}: {e}", dir.display())))?;
        let mut end_of_text = Vec::new();
        for token in GRAMMAR_END_OF_TEXT {
            // The model's own tokenizer (a GGUF model has no tokenizer.json): one id where the
            // vocabulary has the token, several pieces of text where it does not.
            let ids = model
                .tokenize(Either::Right(token.to_string()), None, false, false, None)
                .await
                .map_err(model_error)?;
            if let [id] = ids[..] {
                end_of_text.push(id);
            }
        }
        Ok(LocalChat { model, max_num_seqs, tokenizer, context, end_of_text, scoring: tokio::sync::Mutex::new(()) })
    }

    pub fn tokenizer(&self) -> Option<&tokenizers::Tokenizer> {
        self.tokenizer.as_ref()
    }

    pub fn max_num_seqs(&self) -> usize {
        self.max_num_seqs
    }

    pub async fn complete(&self, system: &str, user: &str, schema: &Value, max_tokens: usize) -> Result<String> {
        // The deterministic sampler resets every sampling setting, so it comes first.
        // Past the model's context the reply could not be written anyway.
        let max_tokens = max_tokens.min(self.context.unwrap_or(usize::MAX));
        let mut request = RequestBuilder::new().set_deterministic_sampler().set_sampler_max_len(max_tokens);
        if !self.end_of_text.is_empty() {
            request = request.set_sampler_stop_toks(StopTokens::Ids(self.end_of_text.clone()));
        }
        let request = request
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
    /// One forward pass: mistral.rs's raw-logits request returns the logits of every position of
    /// the prompt (tokens x vocabulary floats, 0.6 GB for 1,024 tokens of a 150k vocabulary,
    /// freed before the next record), where its sampler gives log-probabilities only of tokens
    /// it generates. The tests check the result against teacher-forced decoding, token by token.
    ///
    /// One text at a time: mistral.rs 0.8.1 computes sequences of different lengths batched
    /// together inexactly on CPU (an 18-token text decoded beside a 16-token one came out 0.29
    /// nats from its log-likelihood alone), which would make a score depend on its batch.
    /// A model that scores texts must not serve chat requests too: mistral.rs's engine refuses
    /// (panics on) a batch mixing raw-logits and sampled sequences, so perplexity loads its own.
    pub async fn log_likelihood(&self, text: &str, max_tokens: usize) -> Result<LogLikelihood> {
        let engine = |e: &dyn std::fmt::Display| Error::ModelEngine(e.to_string());
        let _alone = self.scoring.lock().await;
        let mut tokens =
            self.model.tokenize(Either::Right(text.to_string()), None, true, false, None).await.map_err(model_error)?;
        // Past the model's context mistral.rs refuses the prompt: a long record is scored on
        // the window the model can read, not skipped.
        tokens.truncate(max_tokens.min(self.context.unwrap_or(usize::MAX)).max(2));
        if tokens.len() < 2 {
            return Ok(LogLikelihood { sum: 0.0, tokens: 0 });
        }
        let mut sampling = SamplingParams::deterministic();
        sampling.max_len = Some(1);
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let prompt = RequestMessage::CompletionTokens(tokens.clone());
        let mut request = NormalRequest::new_simple(prompt, sampling, tx, 0, None, None);
        request.return_raw_logits = true;
        let sender = self.model.inner().get_sender(None).map_err(|e| engine(&e))?;
        sender.send(Request::Normal(Box::new(request))).await.map_err(|e| engine(&e))?;
        let logits = match rx.recv().await {
            Some(Response::Raw { logits_chunks, tokens: sent }) if sent == tokens => logits_chunks,
            Some(Response::Raw { .. }) => return Err(engine(&"the logits came back for other tokens than sent")),
            // This record's own fault (too long, a token the model refuses): it is skipped.
            Some(Response::CompletionModelError(e, _)) => return Err(model_error(e)),
            Some(Response::ValidationError(e)) => return Err(model_error(e)),
            Some(Response::InternalError(e)) => return Err(engine(&e)),
            Some(_) => return Err(engine(&"an unexpected reply to a raw-logits request")),
            None => return Err(engine(&"the engine closed the request")),
        };
        let [first] = &logits[..] else { return Err(engine(&format!("{} logit tensors", logits.len()))) };
        let rows = first.dims().iter().rev().skip(1).product::<usize>();
        if rows != tokens.len() {
            return Err(engine(&format!("logits of shape {:?} for {} tokens", first.dims(), tokens.len())));
        }
        let values: Vec<f32> = first
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .map_err(|e| engine(&e))?;
        let vocab = values.len() / rows;
        let mut sum = 0.0;
        for (row, &next) in values.chunks_exact(vocab).zip(&tokens[1..]) {
            sum += log_softmax_at(row, next as usize)
                .ok_or_else(|| model_error(format!("token {next} is outside the model's {vocab} logits")))?;
        }
        if !sum.is_finite() {
            return Err(model_error(format!("a log-likelihood of {sum}")));
        }
        Ok(LogLikelihood { sum, tokens: tokens.len() - 1 })
    }
}

/// `log softmax(row)[at]`, in f64; `None` past the row.
fn log_softmax_at(row: &[f32], at: usize) -> Option<f64> {
    let target = *row.get(at)?;
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = row.iter().map(|&v| f64::from(v - max).exp()).sum::<f64>().ln();
    Some(f64::from(target - max) - log_sum)
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
