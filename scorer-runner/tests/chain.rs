//! The selection chain cluster -> distill -> score -> threshold -> select on a generated
//! multi-source corpus, on local disk and on a real S3 server.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::Path;

use common::{context, root, shard_lines, Backend};
use mira_testkit::synth::{self, Generated, Kind, SynthSource};
use scorer_runner::plan::Format;
use scorer_runner::plan::TextSpec;
use scorer_runner::plan::*;
use scorer_runner::steps::{self, Context};
use scorer_runner::storage::join;

fn corpus() -> Vec<SynthSource> {
    let source = |name: &str, kind, format, malformed_every| SynthSource {
        name: name.into(),
        kind,
        format,
        shards: 3,
        records_per_shard: 120,
        malformed_every,
    };
    vec![
        source("web", Kind::Prose, Format::Jsonl, Some(40)),
        source("books", Kind::Prose, Format::Parquet, None),
        source("code", Kind::Code, Format::JsonlZst, Some(97)),
        source("math", Kind::Math, Format::JsonlGz, None),
        source("agent", Kind::Agent, Format::JsonlZst, None),
    ]
}

fn sources(corpus_root: &str, synth: &[SynthSource]) -> Vec<Source> {
    synth
        .iter()
        .map(|s| Source {
            name: s.name.clone(),
            uri: join(corpus_root, &s.name),
            format: None,
            text: TextSpec {
                messages_field: (s.kind == Kind::Agent).then(|| "messages".into()),
                id_field: Some("id".into()),
                ..Default::default()
            },
            shard_fraction: None,
        })
        .collect()
}

struct Chain {
    cluster: ClusterResult,
    distill: DistillResult,
    score: ScoreResult,
    manifest: Manifest,
}

/// How score and select meet the disk.
#[derive(Clone, Copy)]
enum Disk {
    Roomy,
    /// Each step first runs as a process whose files cannot grow past these many bytes (score,
    /// select), as on a disk that fills up, and must fail; then again on a roomy disk.
    FullAt(u64, u64),
}

async fn run_chain(ctx: &Context, sources: &[Source], labels: &str, out: &str, retention: f64, disk: Disk) -> Chain {
    let cluster = steps::cluster::run(
        ctx,
        &ClusterPlan {
            storage: Default::default(),
            output: join(out, "cluster"),
            sources: sources.to_vec(),
            featurizer: Default::default(),
            sample_per_source: 200,
            k: None,
            max_k: 4,
            groups: None,
            seed: 1,
            read: Default::default(),
        },
    )
    .await
    .expect("cluster");
    let dims = vec![
        Dimension {
            id: "signal".into(),
            name: "Care".into(),
            description: "careful, justified writing".into(),
            guide: String::new(),
        },
        Dimension {
            id: "noise".into(),
            name: "Noise".into(),
            description: "a dimension the teacher scores at random".into(),
            guide: String::new(),
        },
    ];
    let distill = steps::distill::run(
        ctx,
        &DistillPlan {
            storage: Default::default(),
            output: join(out, "distill"),
            groups: cluster
                .groups
                .iter()
                .map(|g| DistillGroup { name: g.name.clone(), sources: g.sources.clone(), dimensions: dims.clone() })
                .collect(),
            rubrics: None,
            labels: labels.into(),
            featurizer: Default::default(),
            scale: Scale::default(),
            validation_fraction: 0.3,
            split_seed: 0,
            lambdas: vec![],
            max_train_records: 3000,
            mask: MaskPolicy::default(),
            export_sft: true,
            judge: None,
            max_record_tokens: 2048,
        },
    )
    .await
    .expect("distill");
    let by_name: HashMap<&str, &Source> = sources.iter().map(|s| (s.name.as_str(), s)).collect();
    let group_sources = |g: &GroupDef| g.sources.iter().map(|s| by_name[s.as_str()].clone()).collect::<Vec<_>>();
    let score_plan = ScorePlan {
        storage: Default::default(),
        output: join(out, "score"),
        groups: cluster
            .groups
            .iter()
            .zip(&distill.students)
            .map(|(g, s)| ScoreGroup {
                name: g.name.clone(),
                sources: group_sources(g),
                ranker: RankerSpec::Student(s.student.clone()),
            })
            .collect(),
        tokens: TokenCounter::Whitespace,
        trim: 0.0,
        histogram_bins: 2000,
        read: Default::default(),
    };
    if let Disk::FullAt(score_bytes, _) = disk {
        fail_on_a_full_disk("score", &score_plan, score_bytes, &score_plan.output);
    }
    let score = steps::score::run(ctx, &score_plan).await.expect("score");
    steps::threshold::run(
        ctx,
        &ThresholdPlan {
            storage: Default::default(),
            output: join(out, "threshold"),
            scores: vec![join(out, "score")],
            policy: CutPolicy::Group,
            retention,
            group_retention: BTreeMap::new(),
        },
    )
    .await
    .expect("threshold");
    let select_plan = SelectPlan {
        storage: Default::default(),
        output: join(out, "select"),
        groups: cluster
            .groups
            .iter()
            .map(|g| GroupSources { name: g.name.clone(), sources: group_sources(g) })
            .collect(),
        score: join(out, "score"),
        threshold: join(out, "threshold"),
        read: Default::default(),
    };
    if let Disk::FullAt(_, select_bytes) = disk {
        let committed = fail_on_a_full_disk("select", &select_plan, select_bytes, &select_plan.output);
        assert!(!committed.is_empty(), "some of select's units fit under the cap");
        // A commit torn by a crash outside this code (a zero-byte file, as a short write that
        // went unreported once left) counts as absent: its unit is redone.
        std::fs::write(&committed[0], b"").unwrap();
    }
    let manifest = steps::select::run(ctx, &select_plan).await.expect("select");
    Chain { cluster, distill, score, manifest }
}

/// Runs `step` on `plan` (on local disk) as a process whose files cannot grow past `bytes` (a
/// full disk: `mira_testkit::full_disk`). The step must fail
/// and name the fault, leave no temporary file under `output`, and have committed only units
/// whose commits parse, some but not all of them. Returns those commits' paths.
fn fail_on_a_full_disk(step: &str, plan: &impl serde::Serialize, bytes: u64, output: &str) -> Vec<std::path::PathBuf> {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_scorer-runner"));
    command
        .args([step, "--plan", &serde_json::to_string(plan).unwrap()])
        .env("MIRA_WORKER_ID", "w1")
        .env("MIRA_PARALLELISM", "2");
    mira_testkit::full_disk::cap_file_size(&mut command, bytes);
    let result = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{step} on a full disk must fail: {stderr}");
    assert!(stderr.contains("File too large"), "{step}: the error names the fault: {stderr}");
    let files: Vec<std::path::PathBuf> = walkdir(Path::new(output));
    assert!(!files.iter().any(|f| f.to_string_lossy().contains(".tmp-")), "{step} left temporary files: {files:?}");
    let failed = files.iter().filter(|f| f.ends_with("failed.json")).count();
    let commits: Vec<std::path::PathBuf> = files.into_iter().filter(|f| f.ends_with("commit.json")).collect();
    assert!(failed > 0, "{step}: the units that met the full disk say so");
    assert!(!files_held_claims(output), "{step}: every claim was released");
    for commit in &commits {
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(commit).unwrap())
            .unwrap_or_else(|e| panic!("{step}: {} does not parse: {e}", commit.display()));
    }
    commits
}

fn files_held_claims(output: &str) -> bool {
    walkdir(Path::new(output)).iter().any(|f| f.file_name().is_some_and(|n| n.to_string_lossy().starts_with("claim.")))
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flat_map(|e| {
            let path = e.unwrap().path();
            if path.is_dir() {
                walkdir(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

/// Generates the corpus and labels locally and places them at `corpus_root`.
async fn prepare(ctx: &Context, tmp: &Path, corpus: &[SynthSource], corpus_root: &str) -> (Vec<Generated>, String) {
    let local = tmp.join("corpus");
    let mut generated = Vec::new();
    for s in corpus {
        generated.extend(synth::write_source(&local, s, 42).unwrap());
    }
    let labels_local = tmp.join("labels.jsonl");
    synth::write_labels(&labels_local, &generated, 2, 7).unwrap();
    // One line that is not a label.
    std::fs::OpenOptions::new().append(true).open(&labels_local).unwrap().write_all(b"{\"id\": \n").unwrap();
    common::upload_dir(&ctx.storage, &local, corpus_root).await;
    let labels = join(corpus_root, "_labels/labels.jsonl");
    ctx.storage.put_file(&labels, &labels_local).await.unwrap();
    (generated, labels)
}

async fn chain_selects_by_the_learnt_signal(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let (config, base) = root(backend, "chain", tmp.path()).await;
    let ctx = context(&config, "w1", tmp.path());
    let corpus_root = join(&base, "corpus");
    let (generated, labels) = prepare(&ctx, tmp.path(), &corpus(), &corpus_root).await;
    let srcs = sources(&corpus_root, &corpus());
    let out = join(&base, "run");
    let chain = run_chain(&ctx, &srcs, &labels, &out, 0.5, Disk::Roomy).await;

    // Cluster: every source in one group; similarity symmetric, self-similarity 1; the two prose
    // sources are closer to each other than to code.
    let grouped: Vec<&String> = chain.cluster.groups.iter().flat_map(|g| &g.sources).collect();
    assert_eq!(grouped.len(), 5);
    let idx = |n: &str| chain.cluster.sources.iter().position(|s| s.name == n).unwrap();
    let sim = &chain.cluster.similarity;
    assert!((sim[idx("web")][idx("web")] - 1.0).abs() < 1e-6);
    assert_eq!(sim[idx("web")][idx("code")], sim[idx("code")][idx("web")]);
    assert!(sim[idx("web")][idx("books")] > sim[idx("web")][idx("code")] + 0.1, "{sim:?}");
    // Malformed lines in the sample are counted by reason.
    assert!(chain.cluster.sources[idx("web")].skipped.total() > 0);

    // Distill: the line that is not a label is counted once, however many groups read it.
    let groups = chain.cluster.groups.len();
    assert_eq!(chain.distill.skipped_labels.counts.get("invalid_label"), Some(&1), "{groups} groups");
    // The noise dimension is masked for every source, the signal for none.
    for student in &chain.distill.students {
        for a in &student.agreement {
            match a.dimension.as_str() {
                "noise" => assert!(a.masked, "noise not masked: {a:?}"),
                _ => assert!(!a.masked && a.spearman.unwrap() > 0.5, "signal masked: {a:?}"),
            }
        }
    }
    let sft = chain.distill.sft.as_ref().expect("sft export");
    assert!(!ctx.storage.list(sft).await.unwrap().is_empty());

    // Score: every good record scored exactly once, malformed ones counted by reason.
    let scored: u64 = chain.score.groups.iter().map(|g| g.records).sum();
    assert_eq!(scored, generated.len() as u64);
    let web = chain.score.sources.iter().find(|s| s.source.as_deref() == Some("web")).unwrap();
    for reason in ["invalid_json", "missing_text", "invalid_utf8", "empty_text"] {
        assert!(web.skipped.counts.get(reason).copied().unwrap_or(0) > 0, "no {reason} counted: {:?}", web.skipped);
    }
    assert_eq!(web.skipped.total(), 360 / 40);

    // Threshold: per group, kept tokens within the stated bound of the target.
    for cut in &chain.manifest.thresholds.cuts {
        assert!(cut.cut.kept_tokens.abs_diff(cut.cut.target_tokens) <= cut.cut.error_bound_tokens, "{cut:?}");
        assert_eq!(chain.manifest.groups[&cut.scope].kept_tokens, cut.cut.kept_tokens);
        let kept_fraction = cut.cut.kept_tokens as f64 / cut.cut.total_tokens as f64;
        assert!((kept_fraction - 0.5).abs() < 0.1, "{cut:?}");
    }

    // Select: kept JSONL records are byte-identical lines of their source shard; Parquet rows
    // keep their values; kept records are of higher hidden quality than dropped ones.
    let quality: HashMap<&str, u32> = generated.iter().map(|g| (g.id.as_str(), g.quality)).collect();
    let mut kept_ids = HashSet::new();
    let dl = tmp.path().join("download");
    for shard in chain.manifest.shards.iter().filter(|s| s.output.is_some()) {
        let output = common::fetch(&ctx.storage, shard.output.as_ref().unwrap(), &dl.join("out")).await;
        let input = common::fetch(&ctx.storage, &shard.shard, &dl.join("in")).await;
        if Format::from_uri(&shard.shard) == Some(Format::Parquet) {
            let rows = parquet_rows(&output);
            assert_eq!(rows.len() as u64, shard.kept.kept_records);
            let source_rows: HashSet<String> = parquet_rows(&input).into_iter().map(|r| r.to_string()).collect();
            for row in rows {
                assert!(source_rows.contains(&row.to_string()));
                kept_ids.insert(row["id"].as_str().unwrap().to_string());
            }
        } else {
            let source_lines: HashSet<Vec<u8>> = shard_lines(&input).into_iter().collect();
            let lines = shard_lines(&output);
            assert_eq!(lines.len() as u64, shard.kept.kept_records);
            for line in lines {
                assert!(source_lines.contains(&line), "kept line not in source: {}", String::from_utf8_lossy(&line));
                let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
                kept_ids.insert(value["id"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(kept_ids.len() as u64, chain.manifest.total.kept_records);
    let mean = |kept: bool| {
        let q: Vec<u32> =
            generated.iter().filter(|g| kept_ids.contains(&g.id) == kept).map(|g| quality[g.id.as_str()]).collect();
        q.iter().sum::<u32>() as f64 / q.len() as f64
    };
    assert!(mean(true) > mean(false) + 1.0, "kept {} dropped {}", mean(true), mean(false));
}

fn parquet_rows(path: &Path) -> Vec<serde_json::Value> {
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let mut writer = arrow::json::ArrayWriter::new(Vec::new());
        writer.write(&batch.unwrap()).unwrap();
        writer.finish().unwrap();
        rows.extend(serde_json::from_slice::<Vec<serde_json::Value>>(&writer.into_inner()).unwrap());
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_on_local_disk_selects_by_the_learnt_signal() {
    chain_selects_by_the_learnt_signal(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_on_s3_selects_by_the_learnt_signal() {
    chain_selects_by_the_learnt_signal(Backend::S3).await;
}

/// The synthetic records' quality (the share of careful sentences) does not depend on their
/// length (4 to 8 sentences): a student that learnt quality gives scores, and a cut, that do not
/// follow length either, and the threshold's length report says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_and_cuts_do_not_follow_length_when_quality_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, base) = root(Backend::Local, "length", tmp.path()).await;
    let ctx = context(&config, "w1", tmp.path());
    let corpus: Vec<SynthSource> = ["essays", "forums"]
        .map(|name| SynthSource {
            name: name.into(),
            kind: Kind::Prose,
            format: Format::Jsonl,
            shards: 4,
            records_per_shard: 1500,
            malformed_every: None,
        })
        .into();
    let corpus_root = join(&base, "corpus");
    prepare(&ctx, tmp.path(), &corpus, &corpus_root).await;
    let chain = run_chain(
        &ctx,
        &sources(&corpus_root, &corpus),
        &join(&corpus_root, "_labels/labels.jsonl"),
        &join(&base, "run"),
        0.5,
        Disk::Roomy,
    )
    .await;
    let lengths = &chain.manifest.thresholds.lengths;
    assert_eq!(lengths.len(), 2, "{lengths:?}");
    for source in lengths {
        assert_eq!(source.sampled, scorer_runner::length::SAMPLE as u64);
        let rho = source.rank_correlation.unwrap();
        assert!(rho.abs() < 0.1, "{}: rho {rho}", source.source);
        assert_eq!(source.deciles.len(), 10);
        for decile in &source.deciles {
            assert!((decile.kept_fraction - 0.5).abs() < 0.1, "{}: {decile:?} of {:?}", source.source, source.deciles);
        }
    }
}

/// A disk that fills up during score and select: each fails naming the fault, leaves no partial
/// file and no commit that does not parse; a commit torn to zero bytes counts as absent; and the
/// rerun writes exactly what an undisturbed run writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_loses_nothing_and_the_rerun_matches_an_undisturbed_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, base) = root(Backend::Local, "full", tmp.path()).await;
    let ctx = context(&config, "w1", tmp.path());
    let corpus_root = join(&base, "corpus");
    let (_, labels) = prepare(&ctx, tmp.path(), &corpus(), &corpus_root).await;
    let srcs = sources(&corpus_root, &corpus());
    let roomy = run_chain(&ctx, &srcs, &labels, &join(&base, "roomy"), 0.5, Disk::Roomy).await;
    let full = run_chain(&ctx, &srcs, &labels, &join(&base, "full"), 0.5, Disk::FullAt(FULL_SCORE, FULL_SELECT)).await;
    assert_eq!(full.manifest.total, roomy.manifest.total);
    assert_eq!(full.manifest.shards.len(), roomy.manifest.shards.len());
    for (a, b) in roomy.manifest.shards.iter().zip(&full.manifest.shards) {
        assert_eq!(a.shard, b.shard);
        assert_eq!(a.kept, b.kept);
        if let (Some(a), Some(b)) = (&a.output, &b.output) {
            assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap(), "{b} differs from {a}");
        } else {
            assert_eq!(a.output.is_some(), b.output.is_some());
        }
    }
}

/// File size caps for the full-disk test: no score shard fits under the first; under the second,
/// some sources' kept records (and the commits, which carry the shard's comparison sample) fit
/// and others' do not.
const FULL_SCORE: u64 = 1024;
const FULL_SELECT: u64 = 12 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_source_fails_its_unit_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, base) = root(Backend::Local, "missing", tmp.path()).await;
    let ctx = context(&config, "w1", tmp.path());
    let corpus_root = join(&base, "corpus");
    prepare(&ctx, tmp.path(), &corpus(), &corpus_root).await;
    let mut srcs = sources(&corpus_root, &corpus());
    srcs[1].uri = join(&corpus_root, "no-such-source");
    let plan = ClusterPlan {
        storage: Default::default(),
        output: join(&base, "cluster"),
        sources: srcs,
        featurizer: Default::default(),
        sample_per_source: 50,
        k: Some(2),
        max_k: 4,
        groups: None,
        seed: 0,
        read: Default::default(),
    };
    let err = steps::cluster::run(&ctx, &plan).await.unwrap_err().to_string();
    assert!(
        err.contains("1 of 5 units failed") && err.contains("no-such-source") && err.contains("has no shards"),
        "{err}"
    );
    // The other sources' units are committed: a rerun redoes only the failed one.
    let commits = ctx.storage.list(&join(&base, "cluster/_units/")).await.unwrap();
    assert_eq!(commits.iter().filter(|o| o.uri.ends_with("/commit.json")).count(), 4);
}
