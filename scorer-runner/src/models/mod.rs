//! Models behind one interface: chat judges that answer under a JSON schema (teachers, LLM
//! students) and text embedders, run in-process through mistral.rs (feature `llm`) or reached at
//! an OpenAI-compatible endpoint.

pub mod endpoint;
pub mod judge;
#[cfg(feature = "llm")]
pub mod local;
#[cfg(feature = "llm")]
pub mod serve;
pub mod truncate;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::plan::ModelSpec;
use crate::storage::{Location, Storage};

/// Replies that do not parse are asked for this many times in all, then the record is skipped.
pub const ATTEMPTS: usize = 3;

/// The reply token cap for a string or array whose schema sets no bound.
const UNBOUNDED_TOKENS: usize = 512;

/// A chat model that answers with JSON.
// One per step, shared behind an Arc: the size of its larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Chat {
    Endpoint(endpoint::Client),
    #[cfg(feature = "llm")]
    Local(local::LocalChat),
}

impl Chat {
    /// Loads a local model (an `s3://` one is first copied under `scratch`) or connects to an
    /// endpoint.
    pub async fn load(storage: &Storage, scratch: &Path, spec: &ModelSpec) -> Result<Self> {
        match spec {
            ModelSpec::Endpoint { url, model, api_key_env, max_concurrency } => Ok(Chat::Endpoint(
                endpoint::Client::new(url, model, api_key_env.as_deref(), max_concurrency.unwrap_or(8))?,
            )),
            #[cfg(feature = "llm")]
            ModelSpec::Local { uri, gguf_files, max_num_seqs } => {
                let dir = model_dir(storage, scratch, uri).await?;
                Ok(Chat::Local(
                    local::LocalChat::load(&dir, gguf_files, max_num_seqs.unwrap_or(local::DEFAULT_CHAT_SEQS)).await?,
                ))
            }
            #[cfg(not(feature = "llm"))]
            ModelSpec::Local { .. } => {
                let _ = (storage, scratch);
                Err(Error::Model("this build has no in-process models (feature `llm`); use an endpoint".into()))
            }
        }
    }

    /// How many requests are worth having in flight at once.
    pub fn concurrency(&self) -> usize {
        match self {
            Chat::Endpoint(c) => c.max_concurrency(),
            #[cfg(feature = "llm")]
            Chat::Local(l) => l.max_num_seqs(),
        }
    }

    /// The model's tokenizer, where it is at hand, for cutting long records to its context.
    pub fn tokenizer(&self) -> Option<&tokenizers::Tokenizer> {
        match self {
            Chat::Endpoint(_) => None,
            #[cfg(feature = "llm")]
            Chat::Local(l) => l.tokenizer(),
        }
    }

    /// The raw reply text of one constrained request.
    async fn reply(&self, system: &str, user: &str, schema: &Value, max_tokens: usize) -> Result<String> {
        match self {
            Chat::Endpoint(c) => c.complete(system, user, schema, max_tokens).await,
            #[cfg(feature = "llm")]
            Chat::Local(l) => l.complete(system, user, schema, max_tokens).await,
        }
    }

    /// One reply conforming to `schema`, parsed as `T` and checked by `valid`, with as many
    /// tokens as the longest conforming reply needs ([`reply_tokens`]). A reply that fails either
    /// check is asked for again, up to [`ATTEMPTS`] times, then reported as `Error::Model`. Each
    /// request samples at temperature 0, where the same prompt gets the same reply: so the
    /// prompt asked again ends with what was wrong with the last reply.
    pub async fn json<T: DeserializeOwned>(
        &self,
        system: &str,
        user: &str,
        schema: &Value,
        valid: impl Fn(&T) -> bool,
    ) -> Result<T> {
        let max_tokens = reply_tokens(schema);
        let mut prompt = user.to_string();
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let reply = self.reply(system, &prompt, schema, max_tokens).await?;
            let problem = match serde_json::from_str::<T>(&reply) {
                Ok(value) if valid(&value) => return Ok(value),
                Ok(_) => "a value out of bounds".to_string(),
                Err(e) if e.is_eof() => format!("cut off after {max_tokens} tokens"),
                Err(e) => format!("not the JSON asked for ({e})"),
            };
            last = format!("reply {problem}: {}", clip(&reply, 200));
            prompt = format!("{user}\n\nYour last reply was {problem}. Reply again, as the schema says.");
        }
        Err(Error::Model(last))
    }
}

impl Chat {
    /// `text`'s log-likelihood under the model, over its first `max_tokens` tokens: what
    /// perplexity filtering ranks by. In-process models only: a chat completions endpoint returns
    /// the log-probabilities of the tokens it generates, not of a text it is given.
    pub async fn log_likelihood(&self, text: &str, max_tokens: usize) -> Result<LogLikelihood> {
        match self {
            Chat::Endpoint(_) => {
                let _ = (text, max_tokens);
                Err(Error::Model("a record's log-likelihood needs an in-process model, not an endpoint".into()))
            }
            #[cfg(feature = "llm")]
            Chat::Local(l) => l.log_likelihood(text, max_tokens).await,
        }
    }
}

/// The summed log-probability (nats) of a text's scored tokens, and how many were scored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogLikelihood {
    pub sum: f64,
    pub tokens: usize,
}

impl LogLikelihood {
    /// The mean log-probability per token: minus the log of the perplexity. `None` for a text
    /// with no scored token (a single token).
    pub fn mean(&self) -> Option<f64> {
        (self.tokens > 0).then(|| self.sum / self.tokens as f64)
    }
}

/// The most tokens a reply conforming to `schema` takes: one per character of its JSON, written
/// without whitespace as the constraint has it, with every string and array at its longest
/// (where the schema sets no bound, [`UNBOUNDED_TOKENS`]). A token is at least one character for
/// plain text, so such a reply always fits; a reply of escapes or byte-level pieces of non-Latin
/// characters may not, and is then asked for again. The schema, not a guess per call site, sizes
/// the cap: a model that rambles inside a string is stopped by the constraint at the string's
/// `maxLength`, and the reply is never cut short of closing its JSON.
pub fn reply_tokens(schema: &Value) -> usize {
    let int = |key: &str| schema.get(key).and_then(Value::as_u64).map(|n| n as usize);
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => match schema.get("properties").and_then(Value::as_object) {
            // Braces and commas.
            Some(p) => {
                2 + p.iter().map(|(k, v)| k.chars().count() + 3 + reply_tokens(v)).sum::<usize>()
                    + p.len().saturating_sub(1)
            }
            None => UNBOUNDED_TOKENS,
        },
        Some("array") => {
            let item = schema.get("items").map_or(UNBOUNDED_TOKENS, reply_tokens);
            2 + int("maxItems").map_or(UNBOUNDED_TOKENS, |n| n * (item + 1))
        }
        Some("string") => 2 + int("maxLength").unwrap_or(UNBOUNDED_TOKENS),
        Some("integer") => {
            let digits = |key: &str| schema.get(key).and_then(Value::as_i64).map(|n| n.to_string().len());
            // With a bound missing, the longest 64-bit integer.
            digits("minimum").zip(digits("maximum")).map_or(20, |(lo, hi)| lo.max(hi))
        }
        Some("boolean") => 5,
        Some("null") => 4,
        Some("number") => 24,
        // An enum, a union, a schema of several types: not sized here.
        _ => UNBOUNDED_TOKENS,
    }
}

fn clip(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A text embedder.
pub enum Embedder {
    #[cfg(feature = "llm")]
    Local(local::LocalEmbedder),
}

impl Embedder {
    /// Loads a local embedding model (an `s3://` one is first copied under `scratch`).
    pub async fn load(storage: &Storage, scratch: &Path, spec: &ModelSpec) -> Result<Self> {
        match spec {
            #[cfg(feature = "llm")]
            ModelSpec::Local { uri, max_num_seqs, .. } => {
                let dir = model_dir(storage, scratch, uri).await?;
                Ok(Embedder::Local(local::LocalEmbedder::load(&dir, max_num_seqs.unwrap_or(32)).await?))
            }
            _ => {
                let _ = (storage, scratch);
                Err(Error::Model("embedders run in-process: give a local model (feature `llm`)".into()))
            }
        }
    }

    pub async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        match self {
            #[cfg(feature = "llm")]
            Embedder::Local(e) => e.embed(texts).await,
            #[cfg(not(feature = "llm"))]
            _ => {
                let _ = texts;
                unreachable!("no embedder can be built without the llm feature")
            }
        }
    }
}

/// A model's local directory: the path itself, or an `s3://` prefix downloaded once under
/// `scratch/models`. A local path that does not exist is an error here, never a hub lookup.
pub async fn model_dir(storage: &Storage, scratch: &Path, uri: &str) -> Result<PathBuf> {
    match Location::parse(uri)? {
        Location::Local(path) => {
            if tokio::fs::metadata(&path).await.is_err() {
                return Err(Error::Model(format!("model path {} does not exist", path.display())));
            }
            Ok(path)
        }
        Location::S3 { bucket, key } => {
            let cache = scratch.join("models");
            let prefix = format!("{}/", uri.trim_end_matches('/'));
            let objects = storage.list(&prefix).await?;
            if objects.is_empty() {
                return Err(Error::Model(format!("no model files under {prefix}")));
            }
            for object in objects {
                storage.local_copy(&object.uri, &cache).await?;
            }
            Ok(cache.join(bucket).join(key.trim_end_matches('/')))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The cap is the length of the longest conforming reply, written out.
    #[test]
    fn the_reply_cap_is_the_longest_reply_the_schema_allows() {
        let schema = json!({
            "type": "object",
            "properties": {
                "tags": {"type": "array", "maxItems": 2, "items": {"type": "string", "maxLength": 3}},
                "score": {"type": "integer", "minimum": -10, "maximum": 5},
                "ok": {"type": "boolean"}
            }
        });
        let longest = r#"{"tags":["aaa","bbb"],"score":-10,"ok":false}"#;
        // One comma too many is counted for an array (a separator per item): never too few.
        assert_eq!(reply_tokens(&schema), longest.chars().count() + 1);
        assert_eq!(reply_tokens(&json!({"type": "string"})), 2 + UNBOUNDED_TOKENS);
        assert_eq!(reply_tokens(&json!({"type": "integer", "minimum": 0})), 20, "one bound does not size it");
    }
}
