//! Several workers on one step, and a worker killed mid-step: every unit committed exactly once,
//! and the same output as one uninterrupted run.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{commits, context, kill_after_commits, root, runner, Backend};
use mira_testkit::synth::{self, Kind, SynthSource};
use scorer_runner::plan::Format;
use scorer_runner::plan::StorageConfig;
use scorer_runner::plan::TextSpec;
use scorer_runner::plan::*;
use scorer_runner::progress;
use scorer_runner::steps;
use scorer_runner::storage::{join, Storage};

/// A corpus of `shards` shards, labels, and a trained student; returns the score plan.
async fn scoring_setup(config: &StorageConfig, base: &str, tmp: &Path, shards: usize, records: usize) -> ScorePlan {
    let ctx = context(config, "setup", tmp);
    let local = tmp.join("corpus");
    let source = SynthSource {
        name: "web".into(),
        kind: Kind::Prose,
        format: Format::JsonlZst,
        shards,
        records_per_shard: records,
        malformed_every: Some(50),
    };
    let generated = synth::write_source(&local, &source, 3).unwrap();
    synth::write_labels(&local.join("labels.jsonl"), &generated, 3, 1).unwrap();
    common::upload_dir(&ctx.storage, &local, &join(base, "corpus")).await;
    let dims =
        vec![Dimension { id: "signal".into(), name: String::new(), description: String::new(), guide: String::new() }];
    let distill = steps::distill::run(
        &ctx,
        &DistillPlan {
            storage: Default::default(),
            output: join(base, "distill"),
            groups: vec![DistillGroup { name: "all".into(), sources: vec!["web".into()], dimensions: dims }],
            rubrics: None,
            labels: join(base, "corpus/labels.jsonl"),
            featurizer: Default::default(),
            scale: Scale::default(),
            validation_fraction: 0.2,
            split_seed: 0,
            lambdas: vec![],
            max_train_records: 500,
            mask: MaskPolicy::default(),
            export_sft: false,
            judge: None,
            max_record_tokens: 2048,
        },
    )
    .await
    .unwrap();
    ScorePlan {
        storage: config.clone(),
        output: join(base, "score"),
        groups: vec![ScoreGroup {
            name: "all".into(),
            sources: vec![Source {
                name: "web".into(),
                uri: join(base, "corpus/web"),
                format: None,
                text: TextSpec::default(),
                shard_fraction: None,
            }],
            ranker: RankerSpec::Student(distill.students[0].student.clone()),
        }],
        tokens: TokenCounter::Whitespace,
        trim: 0.1,
        histogram_bins: 1000,
        read: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_on_s3_commit_every_unit_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, base) = root(Backend::S3, "workers", tmp.path()).await;
    let plan = scoring_setup(&config, &base, tmp.path(), 12, 60).await;
    let (a, b) = (context(&config, "worker-a", tmp.path()), context(&config, "worker-b", tmp.path()));
    let (ra, rb) = tokio::join!(steps::score::run(&a, &plan), steps::score::run(&b, &plan));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra, rb, "both workers report the same result");
    let found = commits(&a.storage, &plan.output).await;
    assert_eq!(found.len(), 12);
    let mut by_worker: BTreeMap<String, usize> = BTreeMap::new();
    for uri in &found {
        let commit: serde_json::Value = a.storage.get_json(uri).await.unwrap();
        *by_worker.entry(commit["worker"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert!(by_worker.keys().all(|w| w == "worker-a" || w == "worker-b"), "{by_worker:?}");
    assert_eq!(ra.groups[0].records, 12 * 60 - 12 * 60 / 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_step_is_redone_with_the_same_output() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, base) = root(Backend::Local, "killed", tmp.path()).await;
    let plan = scoring_setup(&config, &base, tmp.path(), 16, 1500).await;
    let storage = Storage::new(config.clone());

    // Reference: one uninterrupted run.
    let reference = ScorePlan { output: join(&base, "reference"), ..plan.clone() };
    let reference_file = tmp.path().join("reference.json");
    std::fs::write(&reference_file, serde_json::to_vec(&reference).unwrap()).unwrap();
    assert!(runner("score", &reference_file, "ref").status().unwrap().success());

    // Interrupted: kill -9 once some but not all units are committed, then run again.
    let plan_file = tmp.path().join("plan.json");
    std::fs::write(&plan_file, serde_json::to_vec(&plan).unwrap()).unwrap();
    let child = runner("score", &plan_file, "doomed").spawn().unwrap();
    let before = kill_after_commits(child, &storage, &plan.output, 2, 16).await;
    assert!(before < 16);
    let rerun = runner("score", &plan_file, "survivor").output().unwrap();
    assert!(rerun.status.success(), "{}", String::from_utf8_lossy(&rerun.stderr));

    // Every unit committed once; each committed score shard equals the reference's byte for byte.
    assert_eq!(commits(&storage, &plan.output).await.len(), 16);
    let result: ScoreResult = storage.get_json(&join(&plan.output, "_result.json")).await.unwrap();
    let expected: ScoreResult = storage.get_json(&join(&reference.output, "_result.json")).await.unwrap();
    assert_eq!(result.groups[0].records, expected.groups[0].records);
    assert_eq!(result.groups[0].tokens, expected.groups[0].tokens);
    assert_eq!(result.groups[0].histogram, expected.groups[0].histogram);
    for object in storage.list(&join(&reference.output, "scores/")).await.unwrap() {
        let relative = object.uri.strip_prefix(&reference.output).unwrap();
        let ours = storage.get(&format!("{}{relative}", plan.output)).await.unwrap();
        assert_eq!(ours, storage.get(&object.uri).await.unwrap(), "{relative}");
    }
    // The survivor redid what the killed worker left: at least one commit is the survivor's.
    let mut survivor = 0;
    for uri in commits(&storage, &plan.output).await {
        let commit: serde_json::Value = storage.get_json(&uri).await.unwrap();
        survivor += (commit["worker"] == "survivor") as usize;
    }
    assert_eq!(survivor, 16 - before);
    let progress = progress::read(&storage, &plan.output).await.unwrap().unwrap();
    assert_eq!(progress.units_resumed, before as u64, "the survivor's pace leaves out what it found done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reports_its_progress_while_it_runs_and_its_final_figures_at_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, base) = root(Backend::Local, "progress", tmp.path()).await;
    let plan = scoring_setup(&config, &base, tmp.path(), 16, 1500).await;
    let storage = Storage::new(config.clone());
    let plan_file = tmp.path().join("plan.json");
    std::fs::write(&plan_file, serde_json::to_vec(&plan).unwrap()).unwrap();
    let mut child = runner("score", &plan_file, "reporter")
        .env("MIRA_PROGRESS_SECONDS", "0.05")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // What a reader (the operator, `mira run`) sees while the step runs.
    let mut seen = std::collections::BTreeSet::new();
    while child.try_wait().unwrap().is_none() {
        if let Some(snapshot) = progress::read(&storage, &plan.output).await.unwrap() {
            assert_eq!(snapshot.units_total, 16);
            seen.insert(snapshot.units_done);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(child.wait().unwrap().success(), "{log}");
    let between: Vec<u64> = seen.iter().copied().filter(|&d| d > 0 && d < 16).collect();
    assert!(between.len() >= 2, "progress advanced while the step ran: saw {seen:?}");
    let last = progress::read(&storage, &plan.output).await.unwrap().unwrap();
    assert_eq!((last.units_done, last.units_total, last.records, last.finished), (16, 16, 16 * 1500, true));
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("progress: ")).collect();
    assert!(lines.len() >= 2, "the log has periodic progress lines: {log}");
    assert!(lines.last().unwrap().contains("16/16 units"), "{}", lines.last().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_rewritten_between_runs_is_scored_again_not_taken_from_its_old_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, base) = root(Backend::Local, "rewritten", tmp.path()).await;
    let plan = scoring_setup(&config, &base, tmp.path(), 4, 100).await;
    let ctx = context(&config, "worker", tmp.path());
    steps::score::run(&ctx, &plan).await.unwrap();
    // Same name, same size, other records: only its modification time tells.
    let shards = join(&base, "corpus/web");
    std::fs::copy(format!("{shards}/part-00001.jsonl.zst"), format!("{shards}/part-00000.jsonl.zst")).unwrap();
    let resumed = steps::score::run(&ctx, &plan).await.unwrap();
    assert_eq!(commits(&ctx.storage, &plan.output).await.len(), 5, "the rewritten shard is a new unit");
    let fresh = ScorePlan { output: join(&base, "fresh"), ..plan.clone() };
    let expected = steps::score::run(&ctx, &fresh).await.unwrap();
    assert_eq!(
        (resumed.groups[0].tokens, &resumed.groups[0].histogram),
        (expected.groups[0].tokens, &expected.groups[0].histogram),
        "the resumed result is the current data's"
    );
}
