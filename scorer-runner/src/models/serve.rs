//! `scorer-runner serve`: a local model behind an OpenAI-compatible API (`/v1/chat/completions`,
//! `/v1/embeddings`, ...), using mistral.rs's own server routes. Useful as an in-cluster teacher
//! (a Deployment of this image with a GPU) that `discover` and `label` Jobs reach as an endpoint.

use std::net::SocketAddr;
use std::path::Path;

use mistralrs_core::{AutoDeviceMapParams, ModelDType, ModelSelected, TokenSource};
use mistralrs_server_core::{
    mistralrs_for_server_builder::MistralRsForServerBuilder,
    mistralrs_server_router_builder::MistralRsServerRouterBuilder,
};

use crate::error::{Error, Result};

/// Serves the model in `model_dir` (as [`super::model_dir`] resolves it, so it exists).
pub async fn serve(model_dir: &Path, addr: SocketAddr, max_seqs: usize) -> Result<()> {
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
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| Error::io(addr.to_string(), e))?;
    tracing::info!(%addr, model = %model_dir.display(), "serving");
    axum::serve(listener, router).await.map_err(|e| Error::io(addr.to_string(), e))
}
