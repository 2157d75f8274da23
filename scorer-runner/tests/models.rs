//! Real inference on CPU through mistral.rs with the tiny random-weight models of
//! `examples/tiny_models.rs` (included here as a module, so no nested cargo run is needed): a
//! chat judge that answers under a JSON schema, an embedder, and the fast error for a missing
//! model path. The weights are random, so the tests check validity (schema, shapes, determinism),
//! never content.
//!
//! The models come from `$MIRA_TINY_MODELS` when it holds them (`hack/tiny-models.sh` writes
//! them there for the whole suite), else each test generates its own into a temporary directory
//! (well under a second).
#![cfg(feature = "llm")]

#[path = "../examples/tiny_models.rs"]
mod tiny_models;

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use scorer_runner::models::{Chat, Embedder};
use scorer_runner::plan::ModelSpec;
use scorer_runner::plan::StorageConfig;
use scorer_runner::steps::Context;
use scorer_runner::units::WorkerConfig;

/// Once per process, before any model loads: mistral.rs 0.8.1 creates `$HF_HOME/hub` even for
/// local loads, so HF_HOME points inside the target dir; `RUST_LOG=info` shows mistral.rs's log.
fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("models-hf-home");
        std::fs::create_dir_all(&home).unwrap();
        std::env::set_var("HF_HOME", home);
    });
}

struct Env {
    tmp: tempfile::TempDir,
    chat: PathBuf,
    embedding: PathBuf,
    ctx: Context,
}

impl Env {
    fn new() -> Self {
        setup();
        let tmp = tempfile::tempdir().unwrap();
        let shared = std::env::var_os("MIRA_TINY_MODELS").map(PathBuf::from).filter(|dir| {
            dir.join(tiny_models::CHAT_DIR).join("model.safetensors").is_file()
                && dir.join(tiny_models::EMBEDDING_DIR).join("model.safetensors").is_file()
        });
        let models = match shared {
            Some(dir) => dir,
            None => {
                let dir = tmp.path().join("models");
                let start = Instant::now();
                tiny_models::generate(&dir).unwrap();
                eprintln!("generated tiny models in {:?}", start.elapsed());
                dir
            }
        };
        let worker = WorkerConfig { id: "models-test".into(), lease: Duration::from_secs(60), parallelism: 1 };
        let ctx = Context::new(StorageConfig::default(), worker, tmp.path().join("scratch"));
        Env { chat: models.join(tiny_models::CHAT_DIR), embedding: models.join(tiny_models::EMBEDDING_DIR), tmp, ctx }
    }
}

fn local(dir: &Path) -> ModelSpec {
    ModelSpec::Local { uri: dir.to_string_lossy().into_owned(), gguf_files: vec![], max_num_seqs: Some(4) }
}

fn hidden_size(dir: &Path) -> usize {
    let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config["hidden_size"].as_u64().unwrap() as usize
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Verdict {
    score: i64,
    reason: String,
}

const MAX_REASON: usize = 24;

fn verdict_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "score": {"type": "integer", "minimum": 1, "maximum": 5},
            "reason": {"type": "string", "maxLength": MAX_REASON}
        },
        "required": ["score", "reason"],
        "additionalProperties": false,
        // A random model would otherwise spend its whole budget on whitespace.
        "x-guidance": {"whitespace_flexible": false}
    })
}

fn conforms(v: &Verdict) -> bool {
    (1..=5).contains(&v.score) && v.reason.chars().count() <= MAX_REASON
}

const SYSTEM: &str = "You are a careful judge of text quality. Answer with JSON only.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_answers_under_a_schema_deterministically() {
    let env = Env::new();
    let start = Instant::now();
    let chat = match Chat::load(&env.ctx.storage, &env.ctx.scratch, &local(&env.chat)).await {
        Ok(chat) => chat,
        Err(e) => panic!("loading the tiny chat model: {e}"),
    };
    eprintln!("chat model loaded in {:?}", start.elapsed());
    assert_eq!(chat.concurrency(), 4);
    assert!(chat.tokenizer().is_some(), "the local model's tokenizer is at hand");

    let schema = verdict_schema();
    let user =
        "Rate this text from 1 to 5 for educational value:\n\nThe water cycle moves water from the sea to the clouds.";
    let mut replies = Vec::new();
    for _ in 0..2 {
        let start = Instant::now();
        let verdict: Verdict = match chat.json(SYSTEM, user, &schema, conforms).await {
            Ok(v) => v,
            Err(e) => panic!("constrained request: {e}"),
        };
        eprintln!("constrained reply in {:?}: {verdict:?}", start.elapsed());
        assert!(conforms(&verdict), "{verdict:?}");
        replies.push(verdict);
    }
    assert_eq!(replies[0], replies[1], "the deterministic sampler gives the same reply twice");

    // Requests in flight together are batched (max_num_seqs 4); each reply still conforms.
    let start = Instant::now();
    let batch = futures::future::join_all((0..6).map(|i| {
        let user = format!("Rate text number {i} from 1 to 5: {}", "the quick brown fox ".repeat(i + 1));
        let schema = &schema;
        let chat = &chat;
        async move { chat.json::<Verdict>(SYSTEM, &user, schema, conforms).await }
    }))
    .await;
    eprintln!("6 concurrent constrained replies in {:?}", start.elapsed());
    for reply in batch {
        match reply {
            Ok(v) => assert!(conforms(&v), "{v:?}"),
            Err(e) => panic!("concurrent constrained request: {e}"),
        }
    }
}

/// Reads each decoding step's distribution at the forced text's next token, then leaves that
/// token the only one to sample.
struct Forced {
    tokens: Vec<u32>,
    log_probs: std::sync::Mutex<Vec<f64>>,
}

impl mistralrs::CustomLogitsProcessor for Forced {
    fn apply(&self, logits: &mistralrs::Tensor, context: &[u32]) -> mistralrs::Result<mistralrs::Tensor> {
        let next = self.tokens[context.len()] as usize;
        let row: Vec<f32> = logits.to_dtype(mistralrs::DType::F32)?.to_vec1()?;
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let log_sum = row.iter().map(|&v| f64::from(v - max).exp()).sum::<f64>().ln();
        self.log_probs.lock().unwrap().push(f64::from(row[next] - max) - log_sum);
        let mut forced = vec![f32::NEG_INFINITY; row.len()];
        forced[next] = 0.0;
        mistralrs::Tensor::from_vec(forced, row.len(), logits.device())
    }
}

/// The log-probability of each token after the first by teacher-forced decoding, a step per
/// token on the KV cache: the direct computation, apart from the one forward pass over the whole
/// text that `Chat::log_likelihood` reads its logits from.
async fn log_probs_decoded(model: &mistralrs::Model, tokens: &[u32]) -> Vec<f64> {
    use mistralrs::{NormalRequest, Request, Response, SamplingParams};
    let forced = std::sync::Arc::new(Forced { tokens: tokens.to_vec(), log_probs: Default::default() });
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let mut sampling = SamplingParams::deterministic();
    sampling.max_len = Some(tokens.len() - 1);
    let messages = mistralrs_core::RequestMessage::CompletionTokens(tokens[..1].to_vec());
    let mut request = NormalRequest::new_simple(messages, sampling, tx, 0, None, None);
    request.logits_processors = Some(vec![forced.clone()]);
    model.inner().get_sender(None).unwrap().send(Request::Normal(Box::new(request))).await.unwrap();
    let Some(Response::CompletionDone(_)) = rx.recv().await else { panic!("the forced decoding did not finish") };
    let log_probs = forced.log_probs.lock().unwrap().clone();
    assert_eq!(log_probs.len(), tokens.len() - 1, "a step per token after the first");
    log_probs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_log_likelihood_is_the_models_next_token_log_probabilities_summed() {
    let env = Env::new();
    let chat = Chat::load(&env.ctx.storage, &env.ctx.scratch, &local(&env.chat)).await.unwrap();
    let text = "The water cycle moves water from the sea to the clouds, and rain brings it back.";
    let likelihood = chat.log_likelihood(text, 2048).await.unwrap();

    let direct = mistralrs::TextModelBuilder::new(env.chat.to_string_lossy())
        .with_token_source(mistralrs::TokenSource::None)
        .with_force_cpu()
        .with_dtype(mistralrs::ModelDType::F32)
        .build()
        .await
        .unwrap();
    let tokenize = |text: &str| direct.tokenize(either::Either::Right(text.to_string()), None, true, false, None);
    let tokens = tokenize(text).await.unwrap();
    assert!(tokens.len() > 10, "{tokens:?}");
    let log_probs = log_probs_decoded(&direct, &tokens).await;
    let sum: f64 = log_probs.iter().sum();
    assert_eq!(likelihood.tokens, tokens.len() - 1, "every token after the first is scored");
    let mean = likelihood.mean().unwrap();
    assert!(mean < 0.0 && mean.is_finite(), "{likelihood:?}");
    assert!((likelihood.sum - sum).abs() < 1e-4 * sum.abs(), "one pass {} vs decoded {sum}", likelihood.sum);

    // A window of the first tokens, the same on every call; a single token scores nothing.
    let window = chat.log_likelihood(text, 6).await.unwrap();
    assert_eq!(window.tokens, 5);
    let first: f64 = log_probs[..5].iter().sum();
    assert!((window.sum - first).abs() < 1e-4 * first.abs(), "{} vs {first}", window.sum);
    assert_eq!(chat.log_likelihood(text, 6).await.unwrap(), window);
    assert_eq!(tokenize("w").await.unwrap().len(), 1);
    assert_eq!(chat.log_likelihood("w", 2048).await.unwrap().mean(), None);

    // Texts sent together, which mistral.rs would batch, are scored as each is alone.
    let texts = ["The dog ran in the park and barked at the birds.", "The cat sat on the mat all day long."];
    let together = futures::future::join_all(texts.iter().map(|t| chat.log_likelihood(t, 2048))).await;
    for (text, together) in texts.iter().zip(together) {
        let alone: f64 = log_probs_decoded(&direct, &tokenize(text).await.unwrap()).await.iter().sum();
        let together = together.unwrap().sum;
        assert!((together - alone).abs() < 1e-4 * alone.abs(), "{text}: {together} vs alone {alone}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedder_gives_deterministic_vectors_of_the_hidden_size() {
    let env = Env::new();
    let start = Instant::now();
    let embedder = match Embedder::load(&env.ctx.storage, &env.ctx.scratch, &local(&env.embedding)).await {
        Ok(e) => e,
        Err(e) => panic!("loading the tiny embedding model: {e}"),
    };
    eprintln!("embedding model loaded in {:?}", start.elapsed());
    let dim = hidden_size(&env.embedding);

    let texts = [
        "The quick brown fox jumps over the lazy dog.",
        "fn main() { println!(\"hi\"); }",
        "The quick brown fox jumps over the lazy dog.",
    ];
    let start = Instant::now();
    let vectors = embedder.embed(&texts).await.unwrap();
    eprintln!("3 embeddings in {:?}", start.elapsed());
    assert_eq!(vectors.len(), texts.len());
    for v in &vectors {
        assert_eq!(v.len(), dim);
        assert!(v.iter().all(|x| x.is_finite()), "{v:?}");
        // The layout ends with a Normalize module.
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
    }
    assert_eq!(vectors[0], vectors[2], "identical texts in one call embed identically");
    assert_ne!(vectors[0], vectors[1], "different texts embed differently");

    let alone = embedder.embed(&texts[..1]).await.unwrap();
    assert_eq!(alone[0], vectors[0], "a text embeds the same alone as in a batch");
    assert!(embedder.embed(&[]).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_model_path_fails_fast_without_a_hub_lookup() {
    let env = Env::new();
    let missing = env.tmp.path().join("no-such-model");
    let spec = local(&missing);

    let start = Instant::now();
    match Chat::load(&env.ctx.storage, &env.ctx.scratch, &spec).await {
        Ok(_) => panic!("a missing chat model path loaded"),
        Err(e) => assert!(e.to_string().contains("does not exist"), "{e}"),
    }
    match Embedder::load(&env.ctx.storage, &env.ctx.scratch, &spec).await {
        Ok(_) => panic!("a missing embedding model path loaded"),
        Err(e) => assert!(e.to_string().contains("does not exist"), "{e}"),
    }
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
}

/// Same bytes on every run, and the shapes the tests above rely on.
#[test]
fn the_generator_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    tiny_models::generate(&a).unwrap();
    tiny_models::generate(&b).unwrap();
    let files = files_under(&a);
    assert_eq!(files, files_under(&b));
    assert!(files.len() >= 10, "{files:?}");
    for file in &files {
        assert!(
            std::fs::read(a.join(file)).unwrap() == std::fs::read(b.join(file)).unwrap(),
            "{} differs",
            file.display()
        );
    }

    let chat = a.join(tiny_models::CHAT_DIR);
    let tokenizer = tokenizers::Tokenizer::from_file(chat.join("tokenizer.json")).unwrap();
    let vocab = tokenizer.get_vocab_size(true);
    assert!((1000..=2000).contains(&vocab), "vocab {vocab}");
    for special in [tiny_models::END_OF_TEXT, tiny_models::IM_START, tiny_models::IM_END] {
        assert!(tokenizer.token_to_id(special).is_some(), "{special}");
    }
    let config: Value = serde_json::from_str(&std::fs::read_to_string(chat.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["vocab_size"], json!(vocab));
    // Byte-level: any text round-trips.
    let text = "Grüße, naïve café — 42 ≥ 7 🦀\n\tfn x() {}";
    let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
    assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
    let generation: Value =
        serde_json::from_str(&std::fs::read_to_string(chat.join("generation_config.json")).unwrap()).unwrap();
    let eos = [tiny_models::IM_END, tiny_models::END_OF_TEXT].map(|t| json!(tokenizer.token_to_id(t).unwrap()));
    assert_eq!(generation["eos_token_id"], json!(eos));
}

fn files_under(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}
