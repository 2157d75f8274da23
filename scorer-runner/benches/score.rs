//! Throughput and peak memory of `score` with the hashed student, against the floor: a plain
//! decompress-and-parse pass over the same shards with the same parallelism.
//!
//! Each phase runs in its own process so its peak RSS (VmHWM) is its own; `hack/bench-score.sh`
//! drives the phases and prints the table. Phases:
//!   generate <dir> <megabytes> [labels]
//!                                corpus of JSONL.zst shards + teacher labels (default 3,000)
//!   train <dir> [dimensions] [maxTrainRecords]
//!                                distill a hashed student from the labels, with one dimension
//!                                (default) or the labels' signal repeated as that many, on at
//!                                most maxTrainRecords of them (default 3,000)
//!   baseline <dir>               decompress + serde_json parse of every record
//!   score <dir> [ranker]         the score step over every shard, ranked by the student
//!                                (default), `random`, `dsir` (toward the first shard's
//!                                records, its weights fitted within the timed run) or, built
//!                                with `llm`, `perplexity` (under $MIRA_TINY_MODELS' chat model)
//!   student <dir>                the student alone (featurize + heads) on one thread, over the
//!                                texts of the first shards held in memory: the step's hot loop
//!   import <dir> <root>          a corpus of real text instead: every UTF-8 file under root
//!                                (see `import`); its student is copied from a generated corpus

use std::io::Read;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use mira_testkit::synth::{self, Kind, SynthSource};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use scorer_runner::formats::{for_each_batch, ReadOptions, ShardInput};
use scorer_runner::plan::Format;
use scorer_runner::plan::StorageConfig;
use scorer_runner::plan::TextSpec;
use scorer_runner::plan::*;
use scorer_runner::records::extract;
use scorer_runner::steps::{self, Context};
use scorer_runner::student::{BatchScores, Student};
use scorer_runner::units::WorkerConfig;

const RECORDS_PER_SHARD: usize = 20_000;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn context(dir: &Path) -> Context {
    let worker = WorkerConfig::from_env();
    Context::new(StorageConfig::default(), worker, dir.join("scratch"))
}

fn shards(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir.join("corpus/web")).unwrap().map(|e| e.unwrap().path()).collect();
    out.sort();
    out
}

fn corpus_bytes(dir: &Path) -> (u64, u64) {
    let compressed: u64 = shards(dir).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    let raw: u64 = std::fs::read_to_string(dir.join("raw-bytes")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    (compressed, raw)
}

/// A corpus of about `megabytes` of JSON and `labels` teacher labels of its records.
fn generate(dir: &Path, megabytes: u64, labels: usize) {
    // About 600 bytes of JSON per record.
    let records = (megabytes * 1_000_000 / 600) as usize;
    let shard_count = records.div_ceil(RECORDS_PER_SHARD);
    let source = SynthSource {
        name: "web".into(),
        kind: Kind::Prose,
        format: Format::JsonlZst,
        shards: shard_count,
        records_per_shard: RECORDS_PER_SHARD.min(records),
        malformed_every: Some(1000),
    };
    let generated = synth::write_source(&dir.join("corpus"), &source, 11).unwrap();
    let every = (generated.len() / labels.max(1)).max(1);
    let labelled: Vec<_> = generated.iter().step_by(every).take(labels).cloned().collect();
    synth::write_labels(&dir.join("labels.jsonl"), &labelled, 1, 5).unwrap();
    // The JSON bytes as stored, decompressed.
    let raw: u64 = shards(dir)
        .iter()
        .map(|p| {
            std::io::copy(
                &mut zstd::stream::read::Decoder::new(std::fs::File::open(p).unwrap()).unwrap(),
                &mut std::io::sink(),
            )
            .unwrap()
        })
        .sum();
    std::fs::write(dir.join("raw-bytes"), raw.to_string()).unwrap();
    println!("generated {} records in {shard_count} shards", generated.len());
}

/// Real text, because the generated corpus draws its words from a few dozen: every file under
/// `root` that is UTF-8 (gzip-compressed ones unpacked), whitespace collapsed, cut on word
/// boundaries into records of about 600 bytes (the generated records' size), duplicates dropped,
/// shuffled, 2,000 records per JSONL.zst shard.
fn import(dir: &Path, root: &Path) {
    let mut files = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => folders.push(entry.path()),
                Ok(t) if t.is_file() => files.push(entry.path()),
                _ => {}
            }
        }
    }
    files.sort();
    let mut records = std::collections::BTreeSet::new();
    for path in files {
        let Ok(mut bytes) = std::fs::read(&path) else { continue };
        if path.extension().is_some_and(|e| e == "gz") {
            let mut unpacked = Vec::new();
            if flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut unpacked).is_err() {
                continue;
            }
            bytes = unpacked;
        }
        let Ok(text) = String::from_utf8(bytes) else { continue };
        let mut record = String::new();
        for word in text.split_whitespace() {
            if !record.is_empty() {
                record.push(' ');
            }
            record.push_str(word);
            if record.len() >= 600 {
                records.insert(std::mem::take(&mut record));
            }
        }
    }
    let mut records: Vec<String> = records.into_iter().collect();
    records.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(11));
    let shards = dir.join("corpus/web");
    std::fs::create_dir_all(&shards).unwrap();
    let mut raw = 0;
    for (n, chunk) in records.chunks(2_000).enumerate() {
        let lines: Vec<Vec<u8>> =
            chunk.iter().map(|text| serde_json::to_vec(&serde_json::json!({ "text": text })).unwrap()).collect();
        raw += lines.iter().map(|l| l.len() as u64 + 1).sum::<u64>();
        synth::write_shard(&shards.join(format!("part-{n:05}.jsonl.zst")), Format::JsonlZst, &lines).unwrap();
    }
    std::fs::write(dir.join("raw-bytes"), raw.to_string()).unwrap();
    println!("imported {} records in {} shards", records.len(), records.len().div_ceil(2_000));
}

fn source(dir: &Path) -> Source {
    Source {
        name: "web".into(),
        uri: dir.join("corpus/web").to_string_lossy().into(),
        format: None,
        text: TextSpec::default(),
        shard_fraction: None,
    }
}

/// Dimension ids: `signal`, then `signal-2` to `signal-<dimensions>`.
fn dimension_ids(dimensions: usize) -> Vec<String> {
    std::iter::once("signal".to_string()).chain((2..=dimensions).map(|k| format!("signal-{k}"))).collect()
}

/// The labels with their signal score repeated under every dimension id: as many ridge heads to
/// train and to apply as a real rubric has, for the cost of scoring, whatever they learn.
fn repeat_signal(dir: &Path, ids: &[String]) -> PathBuf {
    let path = dir.join(format!("labels-{}d.jsonl", ids.len()));
    let mut out = String::new();
    for line in std::fs::read_to_string(dir.join("labels.jsonl")).unwrap().lines() {
        let mut label: serde_json::Value = serde_json::from_str(line).unwrap();
        let signal = label["scores"]["signal"].clone();
        label["scores"] = ids.iter().map(|id| (id.clone(), signal.clone())).collect::<serde_json::Map<_, _>>().into();
        out.push_str(&label.to_string());
        out.push('\n');
    }
    std::fs::write(&path, out).unwrap();
    path
}

/// Distils a hashed student from the labels on at most `max_train` of them, and reports its
/// time, peak memory and agreement with the teacher on the signal dimension.
async fn train(dir: &Path, dimensions: usize, max_train: usize) {
    // Afresh every time: distill would otherwise take the group's committed unit, whatever
    // the dimensions asked for now (the operator addresses each plan's output by its digest;
    // this bench reuses one folder).
    let _ = std::fs::remove_dir_all(dir.join("distill"));
    let ctx = context(dir);
    let started = Instant::now();
    let ids = dimension_ids(dimensions);
    let labels = if dimensions == 1 { dir.join("labels.jsonl") } else { repeat_signal(dir, &ids) };
    let plan = DistillPlan {
        storage: Default::default(),
        output: dir.join("distill").to_string_lossy().into(),
        groups: vec![DistillGroup {
            name: "all".into(),
            sources: vec!["web".into()],
            dimensions: ids
                .into_iter()
                .map(|id| Dimension { id, name: String::new(), description: String::new(), guide: String::new() })
                .collect(),
        }],
        rubrics: None,
        labels: labels.to_string_lossy().into(),
        featurizer: Default::default(),
        scale: Scale::default(),
        validation_fraction: 0.2,
        split_seed: 0,
        lambdas: vec![],
        max_train_records: max_train,
        mask: MaskPolicy::default(),
        export_sft: false,
        judge: None,
        max_record_tokens: 2048,
    };
    let result = steps::distill::run(&ctx, &plan).await.unwrap();
    let student = &result.students[0];
    let spearman = student.agreement.iter().filter_map(|a| a.spearman).fold(f64::NAN, f64::max);
    println!(
        "train: labels={} dimensions={dimensions} seconds={:.2} peak_rss_mib={:.1} best_spearman={spearman:.3} lambdas={:?}",
        student.train_records,
        started.elapsed().as_secs_f64(),
        peak_rss_mib(),
        student.lambdas,
    );
}

/// Decompress and parse every record, nothing else: the floor any scorer pays.
async fn baseline(dir: &Path) -> (u64, f64) {
    let ctx = Arc::new(context(dir));
    let started = Instant::now();
    let parallelism = ctx.worker.parallelism;
    let counts: Vec<u64> = futures::stream::iter(shards(dir))
        .map(|path| {
            let ctx = ctx.clone();
            async move {
                let uri = path.to_string_lossy().into_owned();
                let (input, _guard) = ctx.open_shard(&uri, Format::JsonlZst).await.unwrap();
                steps::blocking(move || {
                    let mut n = 0u64;
                    for_each_batch(&uri, input, Format::JsonlZst, ReadOptions::default(), |batch| {
                        for record in &batch.records {
                            if serde_json::from_slice::<serde_json::Value>(&record.bytes).is_ok() {
                                n += 1;
                            }
                        }
                        Ok(ControlFlow::Continue(()))
                    })?;
                    Ok(n)
                })
                .await
                .unwrap()
            }
        })
        .buffer_unordered(parallelism)
        .collect()
        .await;
    (counts.iter().sum(), started.elapsed().as_secs_f64())
}

/// What ranks the records in `score`: the trained student, or a baseline.
fn ranker(dir: &Path, name: &str) -> RankerSpec {
    match name {
        "random" => RankerSpec::Random,
        #[cfg(feature = "llm")]
        "perplexity" => {
            let models = std::env::var("MIRA_TINY_MODELS").expect("perplexity reads MIRA_TINY_MODELS");
            let uri = Path::new(&models).join("qwen3-tiny").to_string_lossy().into_owned();
            RankerSpec::Perplexity(PerplexitySpec::new(ModelSpec::Local {
                uri,
                gguf_files: vec![],
                max_num_seqs: None,
            }))
        }
        "dsir" => {
            let mut target = source(dir);
            target.uri = shards(dir)[0].to_string_lossy().into();
            RankerSpec::Dsir(DsirSpec::new(target))
        }
        _ => RankerSpec::Student(dir.join("distill/students/all.student").to_string_lossy().into()),
    }
}

async fn score(dir: &Path, ranker: RankerSpec) -> (u64, f64) {
    let ctx = context(dir);
    let output = dir.join(format!("score-{}", std::process::id()));
    let plan = ScorePlan {
        storage: Default::default(),
        output: output.to_string_lossy().into(),
        groups: vec![ScoreGroup { name: "all".into(), sources: vec![source(dir)], ranker }],
        tokens: TokenCounter::Whitespace,
        trim: 0.1,
        histogram_bins: 10_000,
        read: Default::default(),
    };
    let started = Instant::now();
    let result = steps::score::run(&ctx, &plan).await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let written: u64 = std::fs::read_dir(output.join("scores/group=all/source=web"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    println!("score shards: {:.1} bytes a record", written as f64 / result.groups[0].records as f64);
    std::fs::remove_dir_all(&output).ok();
    (result.groups[0].records, elapsed)
}

/// The student's own cost per record, without I/O, parsing or output: best of five passes.
async fn student(dir: &Path) -> (u64, f64) {
    let ctx = context(dir);
    let student =
        Student::load(&ctx.storage, &ctx.scratch, &dir.join("distill/students/all.student").to_string_lossy())
            .await
            .unwrap();
    let mut texts = Vec::new();
    for path in shards(dir).iter().take(5) {
        let (uri, input) = (path.to_string_lossy(), ShardInput::File(path.clone()));
        for_each_batch(&uri, input, Format::JsonlZst, ReadOptions::default(), |batch| {
            texts.extend(
                batch
                    .records
                    .iter()
                    .filter_map(|raw| extract(raw, &TextSpec::default()).ok())
                    .map(|r| r.text.into_owned()),
            );
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
    }
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut scores = BatchScores::default();
    let best = (0..5)
        .map(|_| {
            let started = Instant::now();
            for batch in texts.chunks(1024) {
                student.score_batch(batch, &mut scores).unwrap();
                std::hint::black_box(&scores);
            }
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    (texts.len() as u64, best)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let (phase, dir) =
        (args.first().map(String::as_str).unwrap_or("help"), PathBuf::from(args.get(1).cloned().unwrap_or_default()));
    match phase {
        "generate" => generate(
            &dir,
            args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1024),
            args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3000),
        ),
        "import" => import(&dir, Path::new(args.get(2).map(String::as_str).unwrap_or("."))),
        "train" => train(
            &dir,
            args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1),
            args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3000),
        )
        .await,
        "student" => {
            let (records, secs) = student(&dir).await;
            println!("student: records={records} ns_per_record={:.0} records_per_s={:.0} (one thread)", secs * 1e9 / records as f64, records as f64 / secs);
        }
        "baseline" | "score" => {
            let (records, secs) = if phase == "baseline" {
                baseline(&dir).await
            } else {
                score(&dir, ranker(&dir, args.get(2).map(String::as_str).unwrap_or("student"))).await
            };
            let (compressed, raw) = corpus_bytes(&dir);
            println!(
                "{phase}: records={records} seconds={secs:.2} records_per_s={:.0} raw_mb_per_s={:.1} zst_mb_per_s={:.1} peak_rss_mib={:.1}",
                records as f64 / secs,
                raw as f64 / 1e6 / secs,
                compressed as f64 / 1e6 / secs,
                peak_rss_mib()
            );
        }
        _ => eprintln!("usage: score (generate <dir> <MB> [labels] | train <dir> [dimensions] [maxTrainRecords] | baseline <dir> | score <dir> [student|random|dsir|perplexity] | student <dir> | import <dir> <root>)"),
    }
}
