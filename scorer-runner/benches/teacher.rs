//! The teacher loop's throughput on CPU: `discover` and `label` records per second with a real
//! instruct model, SmolLM2-135M-Instruct, in the two forms it can be loaded (the converted F32
//! safetensors directory the tests use, and the Q4_1 GGUF file it came from), beside the tiny
//! random-weight model. Each step runs as a Job runs it (storage, units, commits), one sequence
//! at a time, on the same synthetic prose records.
//!
//! `hack/bench-teacher.sh` runs it: `teacher <tiny-models-dir> <smollm2-dir> [rounds]`.

use std::time::Instant;

use mira_testkit::synth::{self, Kind, SynthSource};
use scorer_runner::plan::*;
use scorer_runner::steps::{self, Context};
use scorer_runner::units::WorkerConfig;

const DISCOVER_RECORDS: usize = 3;
const LABEL_RECORDS: usize = 6;

/// A fixed rubric for `label`, so that every model answers the same schema.
fn rubric() -> Vec<Dimension> {
    [
        ("clarity", "How easy the text is to follow."),
        ("correctness", "Whether its statements are true."),
        ("depth", "How much it teaches."),
    ]
    .iter()
    .map(|(id, description)| Dimension {
        id: id.to_string(),
        name: id.to_string(),
        description: description.to_string(),
        guide: "1: poor throughout.\n3: adequate, with lapses.\n5: excellent throughout.".into(),
    })
    .collect()
}

async fn round(ctx: &Context, sources: &[Source], teacher: ModelSpec, out: &str) -> (f64, f64) {
    let pass = TeacherPass { seed: 1, max_record_tokens: 256, ..TeacherPass::new(teacher) };
    let started = Instant::now();
    steps::discover::run(
        ctx,
        &DiscoverPlan {
            storage: Default::default(),
            output: format!("{out}/discover"),
            groups: vec![GroupSources { name: "web".into(), sources: sources.to_vec() }],
            pass: pass.clone(),
            embedder: None,
            records_per_group: DISCOVER_RECORDS,
            dimensions_per_group: 3,
            min_support: 1,
        },
    )
    .await
    .expect("discover");
    let discover = DISCOVER_RECORDS as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let labels = steps::label::run(
        ctx,
        &LabelPlan {
            storage: Default::default(),
            output: format!("{out}/label"),
            groups: vec![LabelGroup { name: "web".into(), sources: sources.to_vec(), dimensions: rubric() }],
            rubrics: None,
            pass,
            records_per_group: LABEL_RECORDS,
            records_per_unit: LABEL_RECORDS,
        },
    )
    .await
    .expect("label");
    let label = labels.labelled["web"] as f64 / started.elapsed().as_secs_f64();
    (discover, label)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let usage = "usage: teacher <tiny-models-dir> <smollm2-dir> [rounds]";
    let tiny = args.first().expect(usage).clone();
    let smollm2 = args.get(1).expect(usage).trim_end_matches('/').to_string();
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let tmp = tempfile::tempdir().unwrap();
    let ctx = Context::new(Default::default(), WorkerConfig::from_env(), tmp.path().join("scratch"));
    let corpus = tmp.path().join("corpus");
    let source = SynthSource {
        name: "web".into(),
        kind: Kind::Prose,
        format: Format::Jsonl,
        shards: 1,
        records_per_shard: 32,
        malformed_every: None,
    };
    synth::write_source(&corpus, &source, 1).unwrap();
    let sources = vec![Source {
        name: "web".into(),
        uri: corpus.join("web").to_string_lossy().into_owned(),
        format: None,
        text: TextSpec::default(),
        shard_fraction: None,
    }];
    let gguf_dir = std::path::Path::new(&smollm2).with_file_name("gguf");
    let models = [
        (
            "tiny random model",
            ModelSpec::Local { uri: format!("{tiny}/qwen3-tiny"), gguf_files: vec![], max_num_seqs: Some(1) },
        ),
        (
            "SmolLM2 F32 safetensors",
            ModelSpec::Local { uri: smollm2.clone(), gguf_files: vec![], max_num_seqs: Some(1) },
        ),
        (
            "SmolLM2 Q4_1 GGUF",
            ModelSpec::Local {
                uri: gguf_dir.to_string_lossy().into_owned(),
                gguf_files: vec!["SmolLM2-135M-Instruct.Q4_1.gguf".into()],
                max_num_seqs: Some(1),
            },
        ),
    ];
    let mut rates: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); models.len()];
    for r in 0..rounds {
        for (i, (name, spec)) in models.iter().enumerate() {
            let (discover, label) =
                round(&ctx, &sources, spec.clone(), &format!("{}/out/{r}/{i}", tmp.path().display())).await;
            println!("round {r} {name}: discover_records_per_s={discover:.3} label_records_per_s={label:.3}");
            rates[i].0.push(discover);
            rates[i].1.push(label);
        }
    }
    println!("\n| teacher | discover records/s | label records/s |\n| --- | ---: | ---: |");
    for ((name, _), (discover, label)) in models.iter().zip(rates) {
        println!("| {name} | {:.3} | {:.3} |", median(discover), median(label));
    }
}
