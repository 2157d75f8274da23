//! Throughput of the model-backed paths on CPU with the tiny random-weight models: teacher
//! labelling requests one at a time against the same requests in flight together (mistral.rs
//! batches concurrent sequences), and embedding-student featurization. The models' answers are
//! meaningless; the work per token (forward pass, constrained decoding) is the real one.
//!
//! `hack/bench-llm.sh` runs it: `llm <tiny-models-dir> [records]`.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use mira_testkit::synth::{self, Kind, SynthSource};
use scorer_runner::featurize;
use scorer_runner::models::judge::JudgeRequest;
use scorer_runner::models::Chat;
use scorer_runner::plan::{Dimension, FeaturizerSpec, ModelSpec, Scale};
use scorer_runner::steps::{self, Context};
use scorer_runner::units::WorkerConfig;

fn dims() -> Vec<Dimension> {
    ["clarity", "correctness", "depth"]
        .iter()
        .map(|id| Dimension {
            id: id.to_string(),
            name: id.to_string(),
            description: format!("how good the {id} is"),
            guide: String::new(),
        })
        .collect()
}

async fn label_all(chat: &Arc<Chat>, texts: &[String], in_flight: usize) -> (usize, f64) {
    let request = JudgeRequest::new(dims(), Scale::default(), true, 2048);
    let started = Instant::now();
    let ok: Vec<bool> = futures::stream::iter(texts)
        .map(|text| {
            let (chat, request) = (chat.clone(), &request);
            async move { request.ask(&chat, text).await.is_ok() }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    (ok.iter().filter(|&&o| o).count(), started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let models = args.first().expect("usage: llm <tiny-models-dir> [records]").clone();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(64);
    let tmp = tempfile::tempdir().unwrap();
    let ctx = Context::new(Default::default(), WorkerConfig::from_env(), tmp.path().join("scratch"));
    let source = SynthSource {
        name: "web".into(),
        kind: Kind::Prose,
        format: scorer_runner::plan::Format::Jsonl,
        shards: 1,
        records_per_shard: n,
        malformed_every: None,
    };
    let texts: Vec<String> = synth::write_source(tmp.path(), &source, 1).unwrap().into_iter().map(|g| g.text).collect();
    let words: usize = texts.iter().map(|t| t.split_whitespace().count()).sum();

    let spec = ModelSpec::Local { uri: format!("{models}/qwen3-tiny"), gguf_files: vec![], max_num_seqs: Some(16) };
    let chat = Arc::new(Chat::load(&ctx.storage, &ctx.scratch, &spec).await.unwrap());
    let tokens: usize = texts
        .iter()
        .map(|t| chat.tokenizer().map_or(0, |tk| tk.encode(t.as_str(), false).map_or(0, |e| e.len())))
        .sum();
    label_all(&chat, &texts[..4.min(n)], 1).await; // warm-up
    for in_flight in [1, 16] {
        let (ok, secs) = label_all(&chat, &texts, in_flight).await;
        println!(
            "label in_flight={in_flight}: records={n} valid={ok} seconds={secs:.2} records_per_s={:.1} record_tokens_per_s={:.0}",
            n as f64 / secs,
            tokens as f64 / secs
        );
    }

    let embedding = FeaturizerSpec::Embedding {
        model: ModelSpec::Local {
            uri: format!("{models}/qwen3-embedding-tiny"),
            gguf_files: vec![],
            max_num_seqs: Some(32),
        },
    };
    let featurizer = featurize::build(&ctx.storage, &ctx.scratch, &embedding, None).await.unwrap();
    for batch in [1, 32] {
        let (f, t) = (featurizer.clone(), texts.clone());
        let secs = steps::blocking(move || {
            let started = Instant::now();
            for chunk in t.chunks(batch) {
                let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
                f.featurize(&refs)?;
            }
            Ok(started.elapsed().as_secs_f64())
        })
        .await
        .unwrap();
        println!(
            "embed batch={batch}: records={n} seconds={secs:.2} records_per_s={:.1} tokens_per_s={:.0} words_per_s={:.0}",
            n as f64 / secs,
            tokens as f64 / secs,
            words as f64 / secs
        );
    }
}
