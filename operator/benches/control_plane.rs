//! The control plane at scale, against the real API server: a chain whose FilterRun covers
//! 500,000 shards (500 sources of 1,000 shards) in 100 groups (the most a SourceGroup may have),
//! with 15 rubric dimensions per group.
//! Prints the size of every object the operator writes (each must stay under 256 KiB) and the
//! time of one reconcile of the FilterRun, warm and after an operator restart.
//!
//! The data plane is faked: the process kubelet runs this binary (`fake-step`) in place of
//! `scorer-runner`, which writes, at the output root of each stage's real plan, a result shaped
//! as the real step's would be for that many shards (per-shard entries included), without
//! reading or writing any record. Everything else is real: the operator, its Jobs, ConfigMaps,
//! statuses, Events, the Job controller and the results on S3.
//!
//! Run by `hack/bench-control-plane.sh` (which starts the API server and S3 when the environment
//! has none). Built by `cargo build --workspace --all-targets` in the dev profile, like the tests.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::{Fixture, OperatorOptions};
use mira_operator::api::{DistillationJob, FilterRun, RubricSet, SourceGroup};
use scorer_runner::histogram::Histogram;
use scorer_runner::plan::{
    Agreement, AnchoredDimension, ClusterPlan, ClusterResult, Dimension, DiscoverPlan, DiscoverResult, DistillPlan,
    DistillResult, GroupRubric, Kept, LabelPlan, LabelResult, Manifest, ScopedCut, ScorePlan, ScoreResult, ScoreTotals,
    SelectPlan, SelectedShard, SourceSample, StudentReport, ThresholdPlan, ThresholdResult,
};
use scorer_runner::steps::RESULT;
use scorer_runner::storage::{join, Storage};

const SOURCES: usize = 500;
const GROUPS: usize = scorer_runner::plan::MAX_GROUPS as usize;
const SHARDS_PER_SOURCE: usize = 1000;
const DIMENSIONS: usize = 15;
const RECORDS_PER_SHARD: u64 = 1000;
const TOKENS_PER_RECORD: u64 = 500;
/// The object budget.
const MAX_OBJECT: usize = 256 * 1024;
const CHAIN_TIMEOUT: Duration = Duration::from_secs(900);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    if args.first().map(String::as_str) == Some("fake-step") {
        return runtime.block_on(fake_step(&args[1..]));
    }
    runtime.block_on(bench())
}

// ---- the fake data plane ----

/// `fake-step <step> --plan <file> [--scratch <dir>]`: writes the step's result at the plan's
/// output root and prints it, as `scorer-runner` does.
async fn fake_step(args: &[String]) -> ExitCode {
    let step = args.first().map(String::as_str).unwrap_or_default();
    let plan_file = args.iter().skip_while(|a| *a != "--plan").nth(1).expect("--plan <file>");
    let plan = scorer_runner::steps::read_plan(plan_file).await.expect("the plan");
    let shards_per_source = SHARDS_PER_SOURCE;
    let result = match step {
        "cluster" => fake_cluster(serde_json::from_slice(&plan).unwrap(), shards_per_source).await,
        "discover" => fake_discover(serde_json::from_slice(&plan).unwrap()).await,
        "label" => fake_label(serde_json::from_slice(&plan).unwrap()).await,
        "distill" => fake_distill(serde_json::from_slice(&plan).unwrap()).await,
        "score" => fake_score(serde_json::from_slice(&plan).unwrap(), shards_per_source).await,
        "threshold" => fake_threshold(serde_json::from_slice(&plan).unwrap()).await,
        "select" => fake_select(serde_json::from_slice(&plan).unwrap()).await,
        other => {
            eprintln!("error: InvalidPlan: the fake data plane has no step {other:?}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", serde_json::to_string(&result).unwrap_or_default());
    ExitCode::SUCCESS
}

async fn write_result<T: serde::Serialize>(storage: &Storage, output: &str, result: T) -> serde_json::Value {
    storage.put_json(&join(output, RESULT), &result).await.expect("writing the result");
    serde_json::to_value(result).unwrap()
}

async fn fake_cluster(plan: ClusterPlan, shards: usize) -> serde_json::Value {
    let n = plan.sources.len();
    let result = ClusterResult {
        groups: plan.groups.clone().expect("the bench names its groups"),
        sources: plan
            .sources
            .iter()
            .map(|s| SourceSample {
                name: s.name.clone(),
                shards,
                bytes: (shards as u64 * 64) << 20,
                sampled_records: 2000,
                skipped: Default::default(),
            })
            .collect(),
        // Full-precision similarities: the largest cluster result the report reads.
        similarity: (0..n)
            .map(|i| (0..n).map(|j| 1.0 / (1.0 + (i as f64 - j as f64).abs() * 0.7311)).collect())
            .collect(),
        silhouette: 0.4123,
    };
    write_result(&Storage::new(plan.storage.clone()), &plan.output, result).await
}

/// Exactly `chars` characters of words.
fn text(chars: usize, seed: usize) -> String {
    const WORDS: [&str; 12] = [
        "records",
        "score",
        "higher",
        "when",
        "the",
        "text",
        "explains",
        "its",
        "steps",
        "clearly",
        "and",
        "correctly",
    ];
    let mut text = String::new();
    for i in 0.. {
        if text.len() >= chars {
            break;
        }
        text.push_str(WORDS[(i * 7 + seed) % WORDS.len()]);
        text.push(' ');
    }
    text.truncate(chars);
    text
}

async fn fake_discover(plan: DiscoverPlan) -> serde_json::Value {
    let groups = plan
        .groups
        .iter()
        .map(|g| GroupRubric {
            name: g.name.clone(),
            pinned: false,
            dimensions: (0..plan.dimensions_per_group)
                .map(|d| AnchoredDimension {
                    // As long as the real step lets a teacher write them: name 40, description
                    // 160 and guide 300 characters.
                    dimension: Dimension {
                        id: format!("dimension-{d:02}"),
                        name: text(40, d),
                        description: text(160, d + 1),
                        guide: text(300, d + 2),
                    },
                    support: Some(12),
                })
                .collect(),
            proposals: Some(join(&plan.output, &format!("proposals/{}.jsonl", g.name))),
        })
        .collect();
    write_result(&Storage::new(plan.storage.clone()), &plan.output, DiscoverResult { groups }).await
}

async fn fake_label(plan: LabelPlan) -> serde_json::Value {
    let result = LabelResult {
        labels: join(&plan.output, "labels/"),
        labelled: plan.groups.iter().map(|g| (g.name.clone(), plan.records_per_group as u64)).collect(),
        skipped: Default::default(),
    };
    write_result(&Storage::new(plan.storage.clone()), &plan.output, result).await
}

async fn fake_distill(plan: DistillPlan) -> serde_json::Value {
    let students = plan
        .groups
        .iter()
        .map(|g| {
            let agreement: Vec<Agreement> = g
                .sources
                .iter()
                .flat_map(|s| g.dimensions.iter().map(move |d| (s, d)))
                .enumerate()
                .map(|(i, (source, dimension))| Agreement {
                    source: source.clone(),
                    dimension: dimension.id.clone(),
                    records: 400,
                    mae: 0.5 + i as f64 * 0.013_7,
                    spearman: Some(0.8 - i as f64 * 0.011_3),
                    masked: i % 4 == 0,
                    reason: (i % 4 == 0).then(|| "spearman 0.212 below 0.3".to_string()),
                })
                .collect();
            let mut masked: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for a in agreement.iter().filter(|a| a.masked) {
                masked.entry(a.source.clone()).or_default().push(a.dimension.clone());
            }
            StudentReport {
                group: g.name.clone(),
                student: join(&plan.output, &format!("students/{}/", g.name)),
                train_records: 1600,
                validation_records: 400,
                lambdas: g.dimensions.iter().map(|d| (d.id.clone(), 1.0)).collect(),
                agreement,
                masked,
            }
        })
        .collect();
    let result = DistillResult { students, sft: Some(join(&plan.output, "sft/")), skipped_labels: Default::default() };
    write_result(&Storage::new(plan.storage.clone()), &plan.output, result).await
}

/// A histogram with every one of the plan's bins in use, as a large corpus of continuous
/// student scores fills them.
fn histogram(bins: usize, seed: usize) -> Histogram {
    let mut histogram = Histogram::new(1.0, 5.0, bins);
    for i in 0..bins {
        let score = 1.0 + 4.0 * (i as f64 + 0.5) / bins as f64;
        for _ in 0..1 + (i * 7 + seed) % 3 {
            histogram.add(score, TOKENS_PER_RECORD);
        }
    }
    histogram
}

async fn fake_score(plan: ScorePlan, shards: usize) -> serde_json::Value {
    let group = &plan.groups[0];
    let totals = |source: Option<&str>, sources: usize, seed: usize| ScoreTotals {
        group: group.name.clone(),
        source: source.map(str::to_string),
        shards: shards * sources,
        records: (shards * sources) as u64 * RECORDS_PER_SHARD,
        tokens: (shards * sources) as u64 * RECORDS_PER_SHARD * TOKENS_PER_RECORD,
        skipped: Default::default(),
        histogram: histogram(plan.histogram_bins, seed),
        length: Default::default(),
        length_correlation: None,
        unranked: false,
    };
    let result = ScoreResult {
        groups: vec![totals(None, group.sources.len(), 0)],
        sources: group.sources.iter().enumerate().map(|(i, s)| totals(Some(&s.name), 1, i + 1)).collect(),
        masked: BTreeMap::new(),
    };
    write_result(&Storage::new(plan.storage.clone()), &plan.output, result).await
}

async fn fake_threshold(plan: ThresholdPlan) -> serde_json::Value {
    let storage = Storage::new(plan.storage.clone());
    let mut cuts = Vec::new();
    for scores in &plan.scores {
        let score: ScoreResult = storage.get_json(&join(scores, RESULT)).await.expect("the score result");
        for totals in &score.groups {
            let retention = plan.group_retention.get(&totals.group).copied().unwrap_or(plan.retention);
            cuts.push(ScopedCut {
                scope: totals.group.clone(),
                retention,
                skipped_tokens: 0,
                cut: totals.histogram.cut(retention),
            });
        }
    }
    write_result(&storage, &plan.output, ThresholdResult { policy: plan.policy, cuts, lengths: Vec::new() }).await
}

async fn fake_select(plan: SelectPlan) -> serde_json::Value {
    let storage = Storage::new(plan.storage.clone());
    let thresholds: ThresholdResult = storage.get_json(&join(&plan.threshold, RESULT)).await.expect("the cuts");
    let group = &plan.groups[0];
    let kept = |records: u64| Kept {
        kept_records: records / 2,
        total_records: records,
        kept_tokens: records / 2 * TOKENS_PER_RECORD,
        total_tokens: records * TOKENS_PER_RECORD,
    };
    let mut manifest = Manifest {
        total: Kept::default(),
        groups: BTreeMap::new(),
        sources: BTreeMap::new(),
        thresholds,
        masked: BTreeMap::new(),
        shards: Vec::new(),
        samples: BTreeMap::new(),
    };
    for source in &group.sources {
        for shard in 0..SHARDS_PER_SOURCE {
            let shard = SelectedShard {
                group: group.name.clone(),
                source: source.name.clone(),
                shard: join(&source.uri, &format!("part-{shard:05}.jsonl.zst")),
                output: Some(join(&plan.output, &format!("{}/part-{shard:05}.jsonl.zst", source.name))),
                kept: kept(RECORDS_PER_SHARD),
                sample: Vec::new(),
            };
            manifest.total.add(&shard.kept);
            manifest.groups.entry(group.name.clone()).or_default().add(&shard.kept);
            manifest.sources.entry(format!("{}/{}", group.name, source.name)).or_default().add(&shard.kept);
            manifest.shards.push(shard);
        }
    }
    storage.put_json(&join(&plan.output, "manifest.json"), &manifest).await.expect("writing the manifest");
    write_result(&storage, &plan.output, manifest).await
}

// ---- the bench ----

fn manifests(fx: &Fixture) -> String {
    let endpoint = fx.s3.endpoint.as_deref().unwrap_or_default();
    let source = |i: usize| format!("src-{i:03}");
    let mut yaml = format!(
        "apiVersion: mira.dev/v1alpha1\nkind: SourceGroup\nmetadata: {{name: corpus}}\nspec:\n  \
         storage: {{endpoint: \"{endpoint}\", pathStyle: true}}\n  root: {root}\n  sources:\n",
        root = fx.uri("mira"),
    );
    for i in 0..SOURCES {
        yaml.push_str(&format!(
            "    - {{name: {}, uri: \"{}\"}}\n",
            source(i),
            fx.uri(&format!("corpus/{}/", source(i)))
        ));
    }
    yaml.push_str("  grouping:\n    groups:\n");
    for g in 0..GROUPS {
        let members: Vec<String> = (0..SOURCES).filter(|i| i % GROUPS == g).map(source).collect();
        yaml.push_str(&format!("      - {{name: group-{g:02}, sources: [{}]}}\n", members.join(", ")));
    }
    yaml.push_str(&format!(
        "---\napiVersion: mira.dev/v1alpha1\nkind: RubricSet\nmetadata: {{name: rubrics}}\nspec:\n  sourceGroupRef: corpus\n  \
         teacher: {{endpoint: {{url: \"http://teacher.invalid/v1\", model: judge}}}}\n  discovery: {{dimensionsPerGroup: {DIMENSIONS}}}\n\
         ---\napiVersion: mira.dev/v1alpha1\nkind: DistillationJob\nmetadata: {{name: students}}\nspec:\n  rubricSetRef: rubrics\n\
         ---\napiVersion: mira.dev/v1alpha1\nkind: FilterRun\nmetadata: {{name: filter}}\nspec:\n  distillationJobRef: students\n  \
         retention: 0.5\n  output: \"{}\"\n",
        fx.uri("kept"),
    ));
    yaml
}

/// A wrapper named `scorer-runner` that runs this binary's fake steps, in a directory of its own.
fn fake_runner(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = std::env::current_exe().expect("this binary's path");
    let script = bin.join("scorer-runner");
    std::fs::write(&script, format!("#!/bin/sh\nexec '{}' fake-step \"$@\"\n", exe.display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// Peak resident memory of a process, in MiB (Linux).
fn peak_rss_mib(pid: Option<u32>) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let kib: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `(count, sum of seconds)` of the operator's reconcile-duration histogram for a kind.
fn reconciles(port: u16, kind: &str) -> Option<(u64, f64)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let value = |metric: &str| {
        let prefix = format!("mira_operator_reconcile_duration_seconds_{metric}{{kind=\"{kind}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some((value("count")? as u64, value("sum")?))
}

/// Every object of some kinds in the namespace: `(kind/name, whole object bytes, status bytes)`.
fn object_sizes(namespace: &str, kinds: &str) -> Vec<(String, usize, usize)> {
    let json = common::kubectl_ok(&["get", kinds, "-n", namespace, "-o", "json"], None);
    let list: serde_json::Value = serde_json::from_str(&json).expect("kubectl prints a list");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| {
            let name = format!(
                "{}/{}",
                item["kind"].as_str().unwrap_or("?"),
                item["metadata"]["name"].as_str().unwrap_or("?")
            );
            let status = item.get("status").map_or(0, |s| serde_json::to_vec(s).unwrap().len());
            (name, serde_json::to_vec(item).unwrap().len(), status)
        })
        .collect()
}

async fn bench() -> ExitCode {
    let started = Instant::now();
    let mut fx = Fixture::new("bench").await;
    let bin = fake_runner(&fx.dir);
    fx.start_kubelet_with(&bin, &["--max-running", "4"]);
    let port = free_port();
    fx.start_operator(OperatorOptions { listen: Some(format!("127.0.0.1:{port}")), ..Default::default() });
    println!(
        "control plane bench: {SOURCES} sources x {SHARDS_PER_SOURCE} shards = {} shards in {GROUPS} groups, \
         {DIMENSIONS} dimensions per group; namespace {}",
        SOURCES * SHARDS_PER_SOURCE,
        fx.namespace
    );
    println!("data plane: faked (each stage's Job runs this binary's fake-step, which writes a result shaped for that many shards)");

    let applied = Instant::now();
    fx.apply(&manifests(&fx));
    fx.wait_ready::<SourceGroup>("corpus", CHAIN_TIMEOUT).await;
    fx.wait_ready::<RubricSet>("rubrics", CHAIN_TIMEOUT).await;
    fx.wait_ready::<DistillationJob>("students", CHAIN_TIMEOUT).await;
    fx.wait_ready::<FilterRun>("filter", CHAIN_TIMEOUT).await;
    let chain = applied.elapsed();
    let jobs = fx.jobs("app.kubernetes.io/managed-by=mira-operator").await.len();
    println!("\nchain Ready in {:.1}s with {jobs} Jobs (the process kubelet runs 4 at a time)", chain.as_secs_f64());

    let mut failed = false;
    println!("\nobject sizes (compact JSON as the API server returns it; budget {} KiB):", MAX_OBJECT / 1024);
    println!("  {:<18} {:>5} {:>12} {:>12}  largest", "kind", "count", "max bytes", "max status");
    for kinds in ["sourcegroups", "rubricsets", "distillationjobs", "filterruns", "configmaps", "jobs", "events"] {
        let sizes = object_sizes(&fx.namespace, kinds);
        let Some(largest) = sizes.iter().max_by_key(|s| s.1) else { continue };
        let max_status = sizes.iter().map(|s| s.2).max().unwrap_or(0);
        let over: Vec<&(String, usize, usize)> = sizes.iter().filter(|s| s.1 >= MAX_OBJECT).collect();
        println!("  {:<18} {:>5} {:>12} {:>12}  {}", kinds, sizes.len(), largest.1, max_status, largest.0);
        for (name, bytes, _) in &over {
            println!("  OVER BUDGET: {name} is {bytes} bytes");
            failed = true;
        }
    }

    println!("\none reconcile of FilterRun filter ({GROUPS} groups, {} stages):", 3 * GROUPS);
    let mut warm = Vec::new();
    for touch in 0..5 {
        let before = reconciles(port, "FilterRun").expect("the operator's metrics");
        common::kubectl_ok(
            &[
                "annotate",
                "filterrun",
                "filter",
                "-n",
                &fx.namespace,
                &format!("bench.mira.dev/touch={touch}"),
                "--overwrite",
            ],
            None,
        );
        let after = fx
            .wait_for("a FilterRun reconcile after touching it", Duration::from_secs(60), || async {
                reconciles(port, "FilterRun").filter(|after| after.0 > before.0)
            })
            .await;
        warm.push((after.1 - before.1) / (after.0 - before.0) as f64);
    }
    warm.sort_by(f64::total_cmp);
    println!(
        "  warm (results cached; fetch the chain and Jobs, decide, no write): median {:.1} ms, min {:.1} ms, max {:.1} ms",
        warm[warm.len() / 2] * 1e3,
        warm[0] * 1e3,
        warm[warm.len() - 1] * 1e3
    );

    let peak = peak_rss_mib(fx.operators.first().and_then(common::Process::pid));
    println!("  operator peak RSS over the whole run: {:.0} MiB", peak.unwrap_or(f64::NAN));
    fx.operators[0].stop();
    let port = free_port();
    fx.start_operator(OperatorOptions { listen: Some(format!("127.0.0.1:{port}")), ..Default::default() });
    let first = fx
        .wait_for("the restarted operator's first FilterRun reconcile", Duration::from_secs(120), || async {
            reconciles(port, "FilterRun").filter(|r| r.0 >= 1)
        })
        .await;
    println!(
        "  cold (after an operator restart: every result read from S3 again, all four controllers starting): {:.1} ms",
        first.1 / first.0 as f64 * 1e3
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The restarted operator is the last started.
    let peak = peak_rss_mib(fx.operators.last().and_then(common::Process::pid));
    println!("  restarted operator peak RSS: {:.0} MiB", peak.unwrap_or(f64::NAN));
    let created = fx.jobs("app.kubernetes.io/managed-by=mira-operator").await.len();
    if created != jobs {
        println!("  the restarted operator changed the number of Jobs: {jobs} -> {created}");
        failed = true;
    }
    for kind in ["SourceGroup", "RubricSet", "DistillationJob", "FilterRun"] {
        if let Some((count, sum)) = reconciles(port, kind) {
            println!(
                "  {kind}: {count} reconciles after the restart, {:.1} ms each on average",
                sum / count as f64 * 1e3
            );
        }
    }
    println!("\ntotal {:.1}s", started.elapsed().as_secs_f64());
    if failed {
        println!("FAILED: see above\n{}", fx.diagnostics());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
