//! Throughput of the embedding student's production path (`featurize::build` on a local
//! Qwen3-Embedding model: tokenize, forward, last-token pooling, normalise) over fixed inputs, at
//! each batch size and sequence length. `hack/bench-gpu.sh` runs it in a `cuda` build beside the
//! same model and the same inputs in sentence-transformers, so the two figures compare.
//!
//! `embed <model-dir> <inputs.jsonl> [batch,...] [min-seconds]`: the inputs are JSON lines
//! `{"tokens": N, "text": "..."}`, where N is the text's length in the model's tokens; each line
//! of output is one JSON object per (sequence length, batch size).

use std::collections::BTreeMap;
use std::time::Instant;

use scorer_runner::featurize;
use scorer_runner::plan::{FeaturizerSpec, ModelSpec};
use scorer_runner::steps::{self, Context};
use scorer_runner::units::WorkerConfig;
use serde_json::{json, Value};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let [model, inputs, rest @ ..] = args.as_slice() else {
        eprintln!("usage: embed <model-dir> <inputs.jsonl> [batch,...] [min-seconds]");
        std::process::exit(2);
    };
    let batches: Vec<usize> =
        rest.first().map_or("1,32,256", String::as_str).split(',').map(|b| b.parse().expect("batch size")).collect();
    let min_seconds: f64 = rest.get(1).map_or(2.0, |s| s.parse().expect("min seconds"));

    let mut by_length: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for line in std::fs::read_to_string(inputs).expect("read inputs").lines() {
        let v: Value = serde_json::from_str(line).expect("input line");
        by_length.entry(v["tokens"].as_u64().unwrap() as usize).or_default().push(v["text"].as_str().unwrap().into());
    }

    let tmp = tempfile::tempdir().unwrap();
    let ctx = Context::new(Default::default(), WorkerConfig::from_env(), tmp.path().join("scratch"));
    let max_batch = batches.iter().copied().max().unwrap_or(1);
    let spec = FeaturizerSpec::Embedding {
        model: ModelSpec::Local { uri: model.clone(), gguf_files: vec![], max_num_seqs: Some(max_batch) },
    };
    let started = Instant::now();
    let featurizer = featurize::build(&ctx.storage, &ctx.scratch, &spec, None).await.unwrap();
    eprintln!("loaded in {:.1} s, dim {}", started.elapsed().as_secs_f64(), featurizer.dim());

    for (&tokens, texts) in &by_length {
        for &batch in &batches {
            let batch_texts: Vec<String> = texts.iter().cycle().take(batch).cloned().collect();
            let f = featurizer.clone();
            // One warm-up batch, then whole batches until min_seconds have passed (two at least).
            let result = steps::blocking(move || {
                let refs: Vec<&str> = batch_texts.iter().map(String::as_str).collect();
                f.featurize(&refs)?;
                let (started, mut runs) = (Instant::now(), 0usize);
                while runs < 2 || started.elapsed().as_secs_f64() < min_seconds {
                    f.featurize(&refs)?;
                    runs += 1;
                }
                Ok((runs, started.elapsed().as_secs_f64()))
            })
            .await;
            let line = match result {
                Ok((runs, seconds)) => {
                    let records = runs * batch;
                    json!({
                        "impl": "mistral.rs", "seq": tokens, "batch": batch, "records": records, "seconds": seconds,
                        "records_per_s": records as f64 / seconds,
                        "tokens_per_s": (records * tokens) as f64 / seconds,
                    })
                }
                Err(e) => json!({"impl": "mistral.rs", "seq": tokens, "batch": batch, "error": e.to_string()}),
            };
            println!("{line}");
        }
    }
}
