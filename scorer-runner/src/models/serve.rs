//! `scorer-runner serve`: a local model behind an OpenAI-compatible API (`/v1/chat/completions`,
//! `/v1/embeddings`, ...), using mistral.rs's own server routes. Useful as an in-cluster teacher
//! (a Deployment of this image with a GPU) that `discover` and `label` Jobs reach as an endpoint.
//!
//! Beyond loopback it asks every request for `Authorization: Bearer <key>`, the key given to it
//! (from a file, for example a mounted Secret, or the environment): a model server open to the
//! cluster network would serve anyone, and a teacher's key is what the endpoint spec's
//! `apiKeySecret` sends.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header::AUTHORIZATION, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use mistralrs_core::{AutoDeviceMapParams, ModelDType, ModelSelected, TokenSource};
use mistralrs_server_core::{
    mistralrs_for_server_builder::MistralRsForServerBuilder,
    mistralrs_server_router_builder::MistralRsServerRouterBuilder,
};

use crate::error::{Error, Result};

/// Serves the model in `model_dir` (as [`super::model_dir`] resolves it, so it exists); with
/// `api_key`, only to requests that bear it. Refuses to listen beyond loopback without one.
pub async fn serve(model_dir: &Path, addr: SocketAddr, max_seqs: usize, api_key: Option<String>) -> Result<()> {
    let api_key = api_key.map(|k| k.trim().to_string()).filter(|k| !k.is_empty());
    if api_key.is_none() && !addr.ip().is_loopback() {
        return Err(Error::plan(format!(
            "serving on {addr} without an API key would serve anyone who can reach it: give --api-key-file \
             (or MIRA_SERVE_API_KEY), or listen on 127.0.0.1"
        )));
    }
    let model = ModelSelected::Plain {
        model_id: model_dir.to_string_lossy().into_owned(),
        tokenizer_json: None,
        arch: None,
        dtype: if cfg!(feature = "cuda") { ModelDType::Auto } else { ModelDType::F32 },
        topology: None,
        organization: None,
        write_uqff: None,
        from_uqff: None,
        imatrix: None,
        calibration_file: None,
        max_seq_len: AutoDeviceMapParams::DEFAULT_MAX_SEQ_LEN,
        max_batch_size: AutoDeviceMapParams::DEFAULT_MAX_BATCH_SIZE,
        hf_cache_path: None,
        matformer_config_path: None,
        matformer_slice_name: None,
    };
    let state = MistralRsForServerBuilder::new()
        .with_model(model)
        .with_max_seqs(max_seqs)
        .with_token_source(TokenSource::None)
        .with_cpu(!cfg!(feature = "cuda"))
        .build()
        .await
        .map_err(|e| Error::Model(format!("loading {}: {e}", model_dir.display())))?;
    let router = MistralRsServerRouterBuilder::new()
        .with_mistralrs(state)
        .build()
        .await
        .map_err(|e| Error::Model(format!("server routes: {e}")))?;
    let router = match api_key {
        Some(key) => router.layer(axum::middleware::from_fn_with_state(Arc::<str>::from(key), require_key)),
        None => router,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| Error::io(addr.to_string(), e))?;
    tracing::info!(%addr, model = %model_dir.display(), "serving");
    axum::serve(listener, router).await.map_err(|e| Error::io(addr.to_string(), e))
}

/// Passes requests that bear the key (compared in constant time); answers 401 to the rest.
async fn require_key(State(key): State<Arc<str>>, request: Request, next: Next) -> Response {
    let bearer =
        request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match bearer {
        Some(given) if bool::from(given.as_bytes().ct_eq(key.as_bytes())) => next.run(request).await,
        _ => (StatusCode::UNAUTHORIZED, "a valid `Authorization: Bearer <key>` header is required").into_response(),
    }
}
