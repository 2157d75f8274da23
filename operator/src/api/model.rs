//! Models that steps run: a teacher that judges records, an embedder for rubric proposals.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A model: exactly one of `local` (run in the worker by mistral.rs) or `endpoint` (an
/// OpenAI-compatible server).
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("has(self.local) != has(self.endpoint)").message("set exactly one of local or endpoint"))]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// A model the worker loads itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalModel>,
    /// An OpenAI-compatible `/v1/chat/completions` server (vLLM, SGLang, mistral.rs, hosted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointModel>,
}

/// A model loaded in the worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalModel {
    /// A model directory (safetensors and tokenizer) or a directory of GGUF files; an `s3://`
    /// prefix is downloaded to the worker's scratch space first.
    pub uri: String,
    /// GGUF file names inside `uri`, for quantised models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub gguf_files: Vec<String>,
    /// Sequences batched together. Default: 32 for an embedder and for a chat model on a GPU;
    /// 1 for a chat model on CPU, where a batch decodes no faster than its sequences one by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_num_seqs: Option<u32>,
}

/// A model behind an OpenAI-compatible endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointModel {
    /// Base URL, for example `http://vllm.models:8000/v1`.
    pub url: String,
    /// The model name the server expects.
    pub model: String,
    /// Secret key holding the API key; workers get it as an environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret: Option<SecretKeyRef>,
    /// Requests in flight per worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrency: Option<u32>,
}

/// A key of a Secret in the resource's namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key inside the Secret.
    pub key: String,
}
