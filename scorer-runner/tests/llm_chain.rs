//! The whole chain with real mistral.rs inference on the tiny random-weight models (CPU):
//! cluster -> discover -> label -> distill (embedding and judge students) -> score -> threshold
//! -> select. Random weights: these tests assert validity (schemas, counts, splits, masks,
//! determinism), never what the models say.
#![cfg(feature = "llm")]

mod common;

use std::collections::BTreeMap;

use common::{commits, context, kill_after_commits, root, runner, tiny_model, Backend};
use mira_testkit::synth::{self, Kind, SynthSource};
use scorer_runner::plan::FeaturizerSpec;
use scorer_runner::plan::Format;
use scorer_runner::plan::TextSpec;
use scorer_runner::plan::*;
use scorer_runner::steps::{self, Context};
use scorer_runner::storage::{join, Storage};

fn local(name: &str) -> ModelSpec {
    ModelSpec::Local { uri: tiny_model(name), gguf_files: vec![], max_num_seqs: Some(8) }
}

/// A tiny model asked one sequence at a time. Batched sequences are padded to each other, and
/// on a random-weight model another batching (as CPU load makes it) can flip a reply; mistral.rs
/// 0.8's CPU batching also at times panics in its KV cache (a shape mismatch), failing the
/// requests in flight. Tests that compare runs record by record use this.
fn one_at_a_time(name: &str) -> ModelSpec {
    ModelSpec::Local { uri: tiny_model(name), gguf_files: vec![], max_num_seqs: Some(1) }
}

async fn corpus(ctx: &Context, tmp: &std::path::Path, base: &str) -> Vec<Source> {
    let local_dir = tmp.join("corpus");
    let mut sources = Vec::new();
    for (name, kind) in [("prose", Kind::Prose), ("code", Kind::Code)] {
        let s = SynthSource {
            name: name.into(),
            kind,
            format: Format::Jsonl,
            shards: 2,
            records_per_shard: 12,
            malformed_every: Some(11),
        };
        synth::write_source(&local_dir, &s, 9).unwrap();
        sources.push(Source {
            name: name.into(),
            uri: join(base, &format!("corpus/{name}")),
            format: None,
            text: TextSpec::default(),
            shard_fraction: None,
        });
    }
    common::upload_dir(&ctx.storage, &local_dir, &join(base, "corpus")).await;
    sources
}

/// Every label line under a label run's `labels/` prefix, in file order.
async fn label_lines(storage: &Storage, labels: &str) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    for object in storage.list(labels).await.unwrap() {
        let body = storage.get(&object.uri).await.unwrap();
        lines.extend(body.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec));
    }
    lines
}

async fn discover(ctx: &Context, out: &str, groups: &[GroupSources]) -> DiscoverResult {
    steps::discover::run(
        ctx,
        &DiscoverPlan {
            storage: Default::default(),
            output: join(out, "discover"),
            groups: groups.to_vec(),
            pass: TeacherPass { seed: 3, ..TeacherPass::new(one_at_a_time("qwen3-tiny")) },
            embedder: Some(local("qwen3-embedding-tiny")),
            records_per_group: 6,
            dimensions_per_group: 3,
            min_support: 1,
        },
    )
    .await
    .expect("discover")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_runs_on_tiny_models_with_discovered_rubrics() {
    std::env::set_var("HF_HOME", tempfile::tempdir().unwrap().keep());
    let tmp = tempfile::tempdir().unwrap();
    let (config, base) = root(Backend::Local, "llm", tmp.path()).await;
    let ctx = context(&config, "w1", tmp.path());
    let sources = corpus(&ctx, tmp.path(), &base).await;
    let out = join(&base, "run");
    let groups = vec![GroupSources { name: "all".into(), sources: sources.clone() }];

    // Discover: anchored dimensions with unique ids, support, guides; proposals written; and the
    // same plan gives the same rubric (deterministic sampler, fixed seed).
    let rubric = discover(&ctx, &out, &groups).await;
    let dims = &rubric.groups[0].dimensions;
    assert!(!dims.is_empty() && dims.len() <= 3, "{dims:?}");
    let ids: std::collections::BTreeSet<_> = dims.iter().map(|d| d.dimension.id.clone()).collect();
    assert_eq!(ids.len(), dims.len());
    assert!(dims.iter().all(|d| d.support >= Some(1) && !d.dimension.guide.is_empty()));
    assert!(!ctx.storage.get(rubric.groups[0].proposals.as_deref().unwrap()).await.unwrap().is_empty());
    let again = discover(&context(&config, "w2", tmp.path()), &join(&base, "again"), &groups).await;
    let strip = |r: &DiscoverResult| r.groups[0].dimensions.clone();
    assert_eq!(strip(&again), strip(&rubric));

    // Label: every sampled record scored on every dimension, in range, in distill's format.
    let dimensions: Vec<Dimension> = dims.iter().map(|d| d.dimension.clone()).collect();
    let labels = steps::label::run(
        &ctx,
        &LabelPlan {
            storage: Default::default(),
            output: join(&out, "label"),
            groups: vec![LabelGroup { name: "all".into(), sources: sources.clone(), dimensions: dimensions.clone() }],
            rubrics: None,
            pass: TeacherPass { max_record_tokens: 24, ..TeacherPass::new(local("qwen3-tiny")) },
            records_per_group: 16,
            records_per_unit: 5,
        },
    )
    .await
    .expect("label");
    let labelled = labels.labelled["all"];
    assert!(labelled + labels.skipped.total() == 16 && labelled >= 8, "{labels:?}");
    let body = label_lines(&ctx.storage, &labels.labels).await;
    assert_eq!(body.len() as u64, labelled, "one line per label, in units of at most 5");
    for line in &body {
        let label: serde_json::Value = serde_json::from_slice(line).unwrap();
        for d in &dimensions {
            let s = label["scores"][&d.id].as_i64().unwrap();
            assert!((1..=5).contains(&s));
            assert!(label["rationales"][&d.id].is_string());
        }
        // The teacher read at most 24 of its tokens of a record, and the cut is on record.
        let words = label["text"].as_str().unwrap().split_whitespace().count();
        if words > 24 {
            assert_eq!(label["truncated"]["keptTokens"], 24, "{label}");
        }
    }

    // Distill with the embedding student and with the judge student; both report agreement for
    // every (source, dimension) and write an artefact score can run.
    for (name, featurizer, judge) in [
        ("embedding", FeaturizerSpec::Embedding { model: local("qwen3-embedding-tiny") }, None),
        ("judge", FeaturizerSpec::default(), Some(local("qwen3-tiny"))),
    ] {
        let run = join(&out, name);
        let distill = steps::distill::run(
            &ctx,
            &DistillPlan {
                storage: Default::default(),
                output: join(&run, "distill"),
                groups: vec![DistillGroup {
                    name: "all".into(),
                    sources: vec!["prose".into(), "code".into()],
                    dimensions: dimensions.clone(),
                }],
                rubrics: None,
                labels: labels.labels.clone(),
                featurizer,
                scale: Scale::default(),
                validation_fraction: 0.3,
                split_seed: 0,
                lambdas: vec![],
                max_train_records: 100,
                mask: MaskPolicy { min_validation: 1, ..Default::default() },
                export_sft: true,
                judge,
                max_record_tokens: 24,
            },
        )
        .await
        .expect("distill");
        let report = &distill.students[0];
        assert_eq!(report.agreement.len(), 2 * dimensions.len());
        assert!(report.train_records + report.validation_records <= labelled as usize);
        let score = steps::score::run(
            &ctx,
            &ScorePlan {
                storage: Default::default(),
                output: join(&run, "score"),
                groups: vec![ScoreGroup {
                    name: "all".into(),
                    sources: sources.clone(),
                    ranker: RankerSpec::Student(report.student.clone()),
                }],
                tokens: TokenCounter::Tokenizer { uri: join(&tiny_model("qwen3-tiny"), "tokenizer.json") },
                trim: 0.0,
                histogram_bins: 100,
                read: Default::default(),
            },
        )
        .await
        .expect("score");
        let totals = &score.groups[0];
        // 48 lines, 4 malformed: every good record scored (or counted if the judge failed it).
        assert_eq!(
            totals.records + totals.skipped.counts.get("student_no_reply").copied().unwrap_or(0),
            44,
            "{totals:?}"
        );
        steps::threshold::run(
            &ctx,
            &ThresholdPlan {
                storage: Default::default(),
                output: join(&run, "threshold"),
                scores: vec![join(&run, "score")],
                policy: CutPolicy::Global,
                retention: 0.5,
                group_retention: BTreeMap::new(),
            },
        )
        .await
        .expect("threshold");
        let manifest = steps::select::run(
            &ctx,
            &SelectPlan {
                storage: Default::default(),
                output: join(&run, "select"),
                groups: vec![GroupSources { name: "all".into(), sources: sources.clone() }],
                score: join(&run, "score"),
                threshold: join(&run, "threshold"),
                read: Default::default(),
            },
        )
        .await
        .expect("select");
        // One global cut, and one of its own for each source the mask left no dimension (the
        // random students' agreement decides which): together they keep what select kept.
        let cuts = &manifest.thresholds.cuts;
        assert_eq!(manifest.total.kept_tokens, cuts.iter().map(|c| c.cut.kept_tokens).sum::<u64>(), "{cuts:?}");
        for cut in cuts.iter().map(|c| &c.cut) {
            assert!(cut.kept_tokens.abs_diff(cut.target_tokens) <= cut.error_bound_tokens, "{cut:?}");
            // A random-weight embedding student ties every record: the draw still cuts to within
            // a record of the target. (The random judge answers few records in the schema; the
            // tokens of those it skips count against the target, which can then keep every
            // record it scored.)
            if cut.total_records > 0 && cut.target_tokens < cut.total_tokens {
                let longest = cut.total_tokens - (cut.total_records - 1);
                assert!(cut.error_bound_tokens <= longest && cut.kept_tokens < cut.total_tokens, "{cut:?}");
                assert!(cut.tie.as_ref().is_some_and(|t| t.tokens > 0), "{cut:?}");
            }
        }
    }
}

/// A label Job killed mid-run loses only the units it had in flight: the rerun asks the teacher
/// about the records of uncommitted units alone (a committed unit's label file is not written
/// again), and the same records are labelled, in the same units, as by an uninterrupted run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_label_run_asks_the_teacher_again_only_for_uncommitted_units() {
    std::env::set_var("HF_HOME", tempfile::tempdir().unwrap().keep());
    let tmp = tempfile::tempdir().unwrap();
    let (config, base) = root(Backend::Local, "label-kill", tmp.path()).await;
    let ctx = context(&config, "w1", tmp.path());
    let sources = corpus(&ctx, tmp.path(), &base).await;
    let dimension = |id: &str| Dimension {
        id: id.into(),
        name: id.into(),
        description: format!("how much {id} the record shows"),
        guide: "1: none. 5: throughout.".into(),
    };
    let group = LabelGroup { name: "all".into(), sources, dimensions: vec![dimension("clarity"), dimension("depth")] };
    let (units, per_unit) = (8, 3);
    let plan = LabelPlan {
        output: join(&base, "label"),
        records_per_group: units * per_unit,
        records_per_unit: per_unit,
        ..LabelPlan::new(vec![group], one_at_a_time("qwen3-tiny"))
    };
    let reference = LabelPlan { output: join(&base, "reference"), ..plan.clone() };
    steps::label::run(&ctx, &reference).await.expect("uninterrupted label run");

    let plan_file = tmp.path().join("label.json");
    std::fs::write(&plan_file, serde_json::to_vec(&plan).unwrap()).unwrap();
    let child = runner("label", &plan_file, "doomed").spawn().unwrap();
    let before = kill_after_commits(child, &ctx.storage, &plan.output, 2, units).await;
    let unit_files = |root: &str| {
        let dir = std::path::PathBuf::from(join(root, "labels/all"));
        let mut files: Vec<_> =
            std::fs::read_dir(&dir).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
        files.sort();
        files
    };
    let written_before: BTreeMap<_, _> = unit_files(&plan.output)
        .into_iter()
        .map(|f| (f.clone(), std::fs::metadata(&f).unwrap().modified().unwrap()))
        .collect();
    let rerun = runner("label", &plan_file, "survivor").output().unwrap();
    assert!(rerun.status.success(), "{}", String::from_utf8_lossy(&rerun.stderr));

    // Each unit committed once; the survivor committed exactly the units the doomed worker had
    // not, and wrote no file of a committed unit again.
    let mut by_worker: BTreeMap<String, usize> = BTreeMap::new();
    for uri in commits(&ctx.storage, &plan.output).await {
        let commit: serde_json::Value = ctx.storage.get_json(&uri).await.unwrap();
        *by_worker.entry(commit["worker"].as_str().unwrap().into()).or_default() += 1;
        if commit["worker"] == "doomed" {
            let file = std::path::PathBuf::from(commit["output"]["file"].as_str().unwrap());
            let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
            assert_eq!(Some(&modified), written_before.get(&file), "{} written again", file.display());
        }
    }
    assert_eq!(by_worker, BTreeMap::from([("doomed".into(), before), ("survivor".into(), units - before)]));
    // The same records in the same units as an uninterrupted run. (Only the records: a random
    // model's replies vary with what it is batched with.)
    let ids = |root: &str| -> Vec<Vec<String>> {
        let ids_of = |body: Vec<u8>| {
            let lines = body.split(|&b| b == b'\n').filter(|l| !l.is_empty());
            lines.map(|l| serde_json::from_slice::<serde_json::Value>(l).unwrap()["id"].to_string()).collect()
        };
        unit_files(root).into_iter().map(|f| ids_of(std::fs::read(f).unwrap())).collect()
    };
    // A record whose replies never fit the schema is skipped, and that too varies; units that the
    // reference labelled whole must hold the same records.
    let (ours, theirs) = (ids(&plan.output), ids(&reference.output));
    assert_eq!(ours.len(), units);
    let whole: Vec<usize> = (0..units).filter(|&u| theirs[u].len() == per_unit).collect();
    assert!(whole.len() >= units / 2, "{theirs:?}");
    for u in whole {
        assert!(ours[u].iter().all(|id| theirs[u].contains(id)), "unit {u}: {:?} vs {:?}", ours[u], theirs[u]);
    }
}
