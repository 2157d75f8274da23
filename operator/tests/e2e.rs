//! `mira operator` end to end, against a real API server and controller manager, a real S3
//! server, and the process kubelet running each stage's Pod as a `scorer-runner` process.
//!
//! The operator runs as a ServiceAccount with the Helm chart's RBAC, watching one namespace per
//! test. Needs the environment `hack/test.sh` sets up: `KUBECONFIG` (hack/kube-up.sh), the test
//! S3 server (`MIRA_S3_ENDPOINT`, `AWS_*`; hack/s3-server.sh), helm (`MIRA_HELM`, from
//! `hack/install-tools.sh env`), python3, /usr/bin/kubectl, and the workspace built
//! (`scorer-runner` next to `mira`). No model is needed: rubrics are pinned and labels imported.
//! `MIRA_E2E_KEEP=1` keeps each test's namespace and its logs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Fixture, OperatorOptions};
use k8s_openapi::api::events::v1::Event;
use kube::api::Api;
use kube::ResourceExt;
use mira_operator::api::{DistillationJob, FilterRun, RubricSet, SourceGroup, StagePhase, Step};
use mira_operator::reconcile::{KindStatus, Pipeline};
use mira_testkit::synth::Kind;
use scorer_runner::plan::Format;
use scorer_runner::plan::Manifest;
use scorer_runner::storage::join;

/// Longest wait for a whole chain on 2 busy cores.
const CHAIN: Duration = Duration::from_secs(300);
/// Longest wait for one stage or one controller reaction.
const STEP: Duration = Duration::from_secs(120);

const THREE_SOURCES: [(&str, Kind, Format); 3] = [
    ("web", Kind::Prose, Format::Jsonl),
    ("code", Kind::Code, Format::JsonlZst),
    ("math", Kind::Math, Format::JsonlGz),
];

/// A SourceGroup of `sources` (names) in explicit groups, on the fixture's S3 bucket.
fn source_group(fx: &Fixture, name: &str, sources: &[(&str, &str)], groups: &[(&str, &[&str])]) -> String {
    let endpoint = fx.s3.endpoint.as_deref().unwrap_or_default();
    let mut yaml = format!(
        "apiVersion: mira.dev/v1alpha1\nkind: SourceGroup\nmetadata: {{name: {name}}}\nspec:\n  \
         storage: {{endpoint: \"{endpoint}\", pathStyle: true}}\n  root: {root}\n  job: {{backoffLimit: 0}}\n  sources:\n",
        root = fx.uri("mira"),
    );
    for (source, uri) in sources {
        yaml.push_str(&format!("    - {{name: {source}, uri: \"{uri}\", text: {{idField: id}}}}\n"));
    }
    yaml.push_str("  grouping:\n    groups:\n");
    for (group, members) in groups {
        yaml.push_str(&format!("      - {{name: {group}, sources: [{}]}}\n", members.join(", ")));
    }
    yaml
}

/// RubricSet (every group pinned to `signal` and `noise`), DistillationJob (imported labels) and
/// FilterRun, in chain order, for the groups of SourceGroup `corpus`.
fn downstream(fx: &Fixture, groups: &[&str], retention: f64) -> [String; 3] {
    let pinned: String = groups
        .iter()
        .map(|g| {
            format!("    - group: {g}\n      dimensions: [{{id: signal, name: Care}}, {{id: noise, name: Noise}}]\n")
        })
        .collect();
    let rubric_set = format!(
        "apiVersion: mira.dev/v1alpha1\nkind: RubricSet\nmetadata: {{name: rubrics}}\nspec:\n  sourceGroupRef: corpus\n  \
         teacher: {{endpoint: {{url: \"http://teacher.invalid/v1\", model: unused}}}}\n  pinned:\n{pinned}"
    );
    let distillation_job = format!(
        "apiVersion: mira.dev/v1alpha1\nkind: DistillationJob\nmetadata: {{name: students}}\nspec:\n  rubricSetRef: rubrics\n  \
         labels: {{importUri: \"{labels}\"}}\n  mask: {{minValidation: 3}}\n  student: {{featurizer: {{hashed: {{dimLog2: 12}}}}}}\n  \
         job: {{backoffLimit: 0}}\n",
        labels = fx.uri("labels.jsonl"),
    );
    let filter_run = format!(
        "apiVersion: mira.dev/v1alpha1\nkind: FilterRun\nmetadata: {{name: filter}}\nspec:\n  distillationJobRef: students\n  \
         retention: {retention}\n  output: \"{output}\"\n  job: {{backoffLimit: 0}}\n",
        output = fx.uri("kept"),
    );
    [rubric_set, distillation_job, filter_run]
}

/// The three-source corpus in two groups: `prose` (web) and `technical` (code, math).
fn three_source_chain(fx: &Fixture, retention: f64) -> Vec<String> {
    let sources = THREE_SOURCES.map(|(name, ..)| (name, fx.uri(&format!("corpus/{name}/"))));
    let sources: Vec<(&str, &str)> = sources.iter().map(|(n, u)| (*n, u.as_str())).collect();
    let mut chain =
        vec![source_group(fx, "corpus", &sources, &[("prose", &["web"]), ("technical", &["code", "math"])])];
    chain.extend(downstream(fx, &["prose", "technical"], retention));
    chain
}

/// A one-source corpus in one group `prose`.
fn one_source_chain(fx: &Fixture) -> Vec<String> {
    let web = fx.uri("corpus/web/");
    let mut chain = vec![source_group(fx, "corpus", &[("web", &web)], &[("prose", &["web"])])];
    chain.extend(downstream(fx, &["prose"], 0.5));
    chain
}

/// The condition's status, or `-` when absent.
fn status_of<K: Pipeline>(object: &K, type_: &str) -> String {
    object
        .status()
        .and_then(|s| s.pipeline().condition(type_))
        .map_or_else(|| "-".into(), |c| format!("{} ({}: {})", c.status, c.reason, c.message))
}

fn assert_conditions_true<K: Pipeline>(object: &K, types: &[&str]) {
    for type_ in types {
        let condition = object.status().and_then(|s| s.pipeline().condition(type_));
        assert!(
            condition.is_some_and(|c| c.status == "True" && c.observed_generation == object.meta().generation),
            "{} {}: {type_} is {}",
            K::kind(&()),
            object.name_any(),
            status_of(object, type_)
        );
    }
}

/// Jobs of the namespace per `resource/stage/group` label triple.
async fn jobs_per_stage(fx: &Fixture) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for job in fx.jobs("app.kubernetes.io/managed-by=mira-operator").await {
        let labels = job.labels();
        let key = format!(
            "{}/{}/{}",
            labels.get("mira.dev/resource").map_or("?", String::as_str),
            labels.get("mira.dev/stage").map_or("?", String::as_str),
            labels.get("mira.dev/group").map_or("-", String::as_str),
        );
        *counts.entry(key).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn a_full_chain_reaches_ready_and_writes_the_kept_records_with_a_manifest() {
    let started = Instant::now();
    let mut fx = Fixture::new("chain").await;
    // A Node of its own whose kubelet endpoint serves the pods' logs (`kubectl mira logs` below).
    let node = format!("process-kubelet-{}", fx.namespace);
    fx.start_kubelet(&["--serve-logs", "--node-name", &node]);
    fx.start_operator(OperatorOptions::default());
    fx.upload_corpus(&THREE_SOURCES, 2, 60).await;
    fx.apply(&three_source_chain(&fx, 0.5).join("---\n"));

    // Status follows kstatus (a Ready condition, observedGeneration), so the generic tools wait
    // for a chain as they would for a Deployment.
    let timeout = format!("--timeout={}s", CHAIN.as_secs());
    let resources = ["sg/corpus", "rbs/rubrics", "dj/students", "fr/filter"];
    let mut wait = vec!["wait", "--for=condition=Ready", &timeout, "-n", &fx.namespace];
    wait.extend(resources);
    let waited = common::kubectl(&wait, None);
    assert!(waited.status.success(), "kubectl wait: {}\n{}", String::from_utf8_lossy(&waited.stderr), fx.diagnostics());
    assert_eq!(String::from_utf8_lossy(&waited.stdout).lines().count(), 4, "one line per resource met");
    let filter = fx.wait_ready::<FilterRun>("filter", STEP).await;
    let sg = fx.get::<SourceGroup>("corpus").await.unwrap();
    let rs = fx.get::<RubricSet>("rubrics").await.unwrap();
    let dj = fx.get::<DistillationJob>("students").await.unwrap();
    assert_conditions_true(&sg, &["Ready", "Clustered"]);
    assert_conditions_true(&rs, &["Ready", "Discovered"]);
    assert_conditions_true(&dj, &["Ready", "Labelled", "Distilled"]);
    assert_conditions_true(&filter, &["Ready", "Scored", "Thresholded", "Selected"]);
    let sg_status = sg.status.as_ref().unwrap();
    assert_eq!(sg_status.groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["prose", "technical"]);
    assert!(sg_status.sources.iter().all(|s| s.shards == 2), "{:?}", sg_status.sources);
    assert_eq!(dj.status.as_ref().unwrap().students.len(), 2, "a student per group");

    // Rubrics and plans go by reference: the RubricSet's status keeps counts and the rubrics'
    // digest (here of its pinned groups), which the label and distill workers checked; every
    // plan ConfigMap holds a plan's URI and SHA-256, not the plan.
    let rs_status = rs.status.as_ref().unwrap();
    assert!(rs_status.groups.iter().all(|g| g.pinned && g.dimensions == 2), "{:?}", rs_status.groups);
    let pinned = rs.rubrics(&sg.group_names(), None);
    assert_eq!(rs_status.digest.as_deref(), Some(scorer_runner::plan::rubrics_digest(&pinned).as_str()));
    let config_maps = fx.config_maps("app.kubernetes.io/managed-by=mira-operator").await;
    assert!(config_maps.len() >= 8, "a plan per stage: {}", config_maps.len());
    for config_map in &config_maps {
        let data = config_map.data.as_ref().and_then(|d| d.values().next()).expect("a plan ConfigMap holds one key");
        let pointer: scorer_runner::plan::PlanRef = serde_json::from_str(data).expect("a plan reference");
        let plan = fx.storage.get(&pointer.plan_uri).await.unwrap();
        assert_eq!(scorer_runner::plan::sha256_hex(&plan), pointer.sha256, "{}", pointer.plan_uri);
        assert!(data.len() < 1024, "{} bytes in ConfigMap {:?}", data.len(), config_map.metadata.name);
    }

    let status = filter.status.as_ref().unwrap();
    assert_eq!(status.groups.len(), 2);
    for group in &status.groups {
        let output = group.output.as_deref().unwrap_or_else(|| panic!("group {} has no output", group.name));
        assert!(output.starts_with(&fx.uri("kept")), "{output} is under spec.output");
        let manifest = fx.storage.get(&join(output, "manifest.json")).await.unwrap_or_else(|e| {
            panic!("the kept-data manifest of group {} is not at {output}: {e}\n{}", group.name, fx.diagnostics())
        });
        let manifest: Manifest = serde_json::from_slice(&manifest).expect("the manifest parses");
        let kept = &manifest.groups[&group.name];
        assert!(kept.kept_records > 0 && kept.kept_records < kept.total_records, "{}: {kept:?}", group.name);
        assert_eq!(group.kept.as_ref().map(|k| k.kept_tokens), Some(kept.kept_tokens), "status matches the manifest");
        for shard in manifest.shards.iter().filter(|s| s.kept.kept_records > 0) {
            let uri = shard.output.as_deref().expect("a shard with kept records names its output");
            assert!(fx.storage.get_opt(uri).await.unwrap().is_some(), "{uri} exists");
        }
    }
    let total = status.total.as_ref().expect("a total once every group is selected");
    assert_eq!(total.total_records, 360);

    // The run report, written next to the kept records before the status that links it.
    let report = status.report.as_deref().expect("a Ready FilterRun links its run report");
    assert!(report.starts_with(&fx.uri("kept")) && report.ends_with("/report.html"), "{report}");
    let html = fx.storage.get(report).await.unwrap_or_else(|e| panic!("no report at {report}: {e}"));
    let html = String::from_utf8_lossy(&html);
    assert!(html.contains("id=\"scores-prose\"") && html.contains("id=\"kept\"") && html.contains("<svg"), "{html}");

    // Every stage reports its end in its own Event, related to its Job.
    let events = Api::<Event>::namespaced(fx.client.clone(), &fx.namespace).list(&Default::default()).await.unwrap();
    for stage in &status.pipeline.stages {
        let job = stage.job.as_deref().expect("every stage ran a Job");
        let event = events.items.iter().find(|e| {
            e.reason.as_deref() == Some("StageSucceeded")
                && e.related.as_ref().and_then(|r| r.name.as_deref()) == Some(job)
        });
        let note = event.and_then(|e| e.note.as_deref()).unwrap_or_else(|| panic!("no StageSucceeded Event for {job}"));
        assert_eq!(note, format!("stage {} succeeded", stage.name));
    }

    // `kubectl get` tells the chain's story in its columns.
    let table = common::kubectl_ok(&["get", "sg,rbs,dj,fr", "-n", &fx.namespace, "-o", "wide"], None);
    for header in ["GROUPS", "SILHOUETTE", "DIMENSIONS", "STUDENTS", "MASKED", "RETENTION", "KEPT", "PROGRESS"] {
        assert!(table.contains(header), "no {header} column:\n{table}");
    }
    let filter_row = table.lines().find(|l| l.starts_with("filterrun.mira.dev/filter")).unwrap_or_default();
    let kept = total.kept_tokens as f64 / total.total_tokens as f64 * 100.0;
    assert!(filter_row.contains(&format!("{kept:.1}% of ")), "the Kept column:\n{table}");
    let dimensions = table.lines().find(|l| l.starts_with("rubricset.mira.dev/rubrics")).unwrap_or_default();
    assert!(dimensions.split_whitespace().any(|cell| cell == "4"), "2 groups x 2 dimensions:\n{table}");

    // `kubectl mira status`: the chain around the DistillationJob, upstream and downstream, as
    // kubectl runs its plugins (found on PATH as kubectl-mira).
    let plugins = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mira"), plugins.path().join("kubectl-mira")).unwrap();
    let path = format!("{}:{}", plugins.path().display(), std::env::var("PATH").unwrap_or_default());
    let plugin = |args: &[&str]| {
        std::process::Command::new(common::KUBECTL)
            .args(args)
            .env("PATH", &path)
            .env("KUBECONFIG", common::kubeconfig())
            .output()
            .unwrap()
    };
    let shown = plugin(&["mira", "status", "dj/students", "-n", &fx.namespace]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{text}{}", String::from_utf8_lossy(&shown.stderr));
    let ns = &fx.namespace;
    for line in [
        format!("SourceGroup {ns}/corpus: Ready"),
        format!("RubricSet {ns}/rubrics: Ready"),
        format!("DistillationJob {ns}/students: Ready"),
        format!("FilterRun {ns}/filter: Ready"),
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line:?}:\n{text}");
    }
    assert!(text.contains("  stage score/prose: Succeeded in "), "{text}");
    assert!(text.contains(&format!("  total: kept {} of", total.kept_tokens)), "{text}");
    let missing = plugin(&["mira", "status", "fr/nothing", "-n", ns]);
    assert_eq!(missing.status.code(), Some(2), "a name that is not there is bad input");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("FilterRun"), "{missing:?}");

    // `kubectl mira logs`: the logs of one stage's pods, through the API server (which asks the
    // Node's kubelet endpoint for them), each under a header naming its pod, Job and stage.
    let job = status.pipeline.stages.iter().find(|s| s.name == "score/prose").and_then(|s| s.job.clone()).unwrap();
    let logs = plugin(&["mira", "logs", "fr/filter", "--stage", "score", "--group", "prose", "-n", ns]);
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.status.success(), "{text}{}", String::from_utf8_lossy(&logs.stderr));
    let headers: Vec<&str> = text.lines().filter(|l| l.starts_with("==> pod ")).collect();
    assert!(!headers.is_empty() && headers.iter().all(|h| h.ends_with(&format!("Job {job}, stage score/prose <=="))));
    assert!(text.contains("progress: "), "the runner's own log:\n{text}");
    let tail = plugin(&["mira", "logs", "fr/filter", "--stage", "score", "--group", "prose", "-n", ns, "--tail", "1"]);
    let tail = String::from_utf8_lossy(&tail.stdout);
    assert_eq!(tail.lines().count(), 2 * headers.len(), "a header and one line per pod:\n{tail}");
    let ambiguous = plugin(&["mira", "logs", "fr/filter", "--stage", "score", "-n", ns]);
    assert_eq!(ambiguous.status.code(), Some(2), "{ambiguous:?}");
    assert!(String::from_utf8_lossy(&ambiguous.stderr).contains("2 stages of step score: name one with --group"));
    eprintln!("full chain Ready in {:.1?}: {:?}", started.elapsed(), jobs_per_stage(&fx).await);
}

#[tokio::test]
async fn a_running_stage_reports_its_progress_in_status_and_keeps_its_final_figures() {
    let mut fx = Fixture::new("progress").await;
    // One unit at a time, reported every 0.2 s, read into status every 0.3 s.
    fx.start_kubelet(&["--env", "MIRA_PARALLELISM=1", "--env", "MIRA_PROGRESS_SECONDS=0.2"]);
    fx.start_operator(OperatorOptions { progress_refresh: Some(0.3), ..Default::default() });
    fx.upload_corpus(&THREE_SOURCES[..1], 24, 3000).await;
    fx.apply(&one_source_chain(&fx).join("---\n"));

    // What `kubectl get fr` shows while the per-shard stages run, looked at every 50 ms.
    let mut seen: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut lines: BTreeSet<String> = BTreeSet::new();
    let deadline = Instant::now() + CHAIN;
    let filter = loop {
        if let Some(filter) = fx.get::<FilterRun>("filter").await {
            let status = filter.status.clone().unwrap_or_default();
            for stage in status.pipeline.stages.iter().filter(|s| s.phase == StagePhase::Running) {
                if let Some(progress) = &stage.progress {
                    seen.entry(stage.name.clone()).or_default().insert(progress.units_done);
                }
            }
            lines.extend(status.pipeline.progress.clone());
            if status.pipeline.ready_at(filter.metadata.generation) {
                break filter;
            }
        }
        assert!(Instant::now() < deadline, "FilterRun filter is not Ready\n{}", fx.diagnostics());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("units done seen in status while running: {seen:?}");
    let advancing: Vec<(&String, Vec<u64>)> = seen
        .iter()
        .map(|(stage, done)| (stage, done.iter().copied().filter(|&d| d > 0 && d < 24).collect::<Vec<_>>()))
        .filter(|(_, between)| between.len() >= 2)
        .collect();
    assert!(!advancing.is_empty(), "a stage's progress advanced in status while it ran: {seen:?}");
    assert!(lines.iter().any(|l| l.contains("/24 units")), "status.progress summed it up: {lines:?}");
    let status = filter.status.as_ref().unwrap();
    assert_eq!(status.pipeline.progress, None, "nothing runs once Ready");
    for stage in status.pipeline.stages.iter().filter(|s| s.step == Step::Score || s.step == Step::Select) {
        let last = stage.progress.as_ref().unwrap_or_else(|| panic!("{} kept no progress", stage.name));
        assert_eq!(
            (last.units_done, last.units_total, last.records, last.finished),
            (24, 24, 72_000, true),
            "{}",
            stage.name
        );
    }
}

#[tokio::test]
async fn a_filter_run_applied_first_waits_for_its_upstream_and_then_runs() {
    let fx = Fixture::started("waits").await;
    fx.upload_corpus(&THREE_SOURCES[..1], 2, 40).await;
    let chain = one_source_chain(&fx);

    fx.apply(&chain[3]);
    let waiting =
        fx.wait_condition::<FilterRun>("filter", "Ready", "False", "Waiting", "DistillationJob students", STEP).await;
    assert!(waiting.message.contains("not found"), "{}", waiting.message);
    let scored = fx.condition::<FilterRun>("filter", "Scored").await.expect("every stage condition is set");
    assert_eq!((scored.status.as_str(), scored.reason.as_str()), ("False", "Waiting"));
    fx.apply(&chain[2]);
    fx.wait_condition::<FilterRun>("filter", "Ready", "False", "Waiting", "RubricSet rubrics", STEP).await;
    assert!(fx.jobs("mira.dev/resource=filter").await.is_empty(), "no Job starts while the upstream is missing");

    fx.apply(&chain[..2].join("---\n"));
    fx.wait_ready::<FilterRun>("filter", CHAIN).await;
    let dj = fx.get::<DistillationJob>("students").await.unwrap();
    let filter = fx.get::<FilterRun>("filter").await.unwrap();
    assert_eq!(
        filter.status.as_ref().unwrap().pipeline.upstream_revision,
        dj.status.as_ref().unwrap().pipeline.revision,
        "the FilterRun ran on the DistillationJob's current outputs"
    );
}

#[tokio::test]
async fn a_failing_step_shows_the_runners_message_while_a_neighbour_reaches_ready() {
    let fx = Fixture::started("failing").await;
    fx.upload_corpus(&THREE_SOURCES[..1], 1, 30).await;
    let nothing = fx.uri("nothing/");
    let web = fx.uri("corpus/web/");
    fx.apply(&source_group(&fx, "broken", &[("empty", &nothing)], &[("all", &["empty"])]));
    fx.apply(&source_group(&fx, "corpus", &[("web", &web)], &[("prose", &["web"])]));

    // The runner's last line, `error: UnitsFailed: 1 of 1 units failed; first: ...: reading shard
    // <uri>: source "empty" has no shards ...`, becomes the reason and message.
    let clustered = fx.wait_condition::<SourceGroup>("broken", "Clustered", "False", "", "has no shards", STEP).await;
    assert!(clustered.message.starts_with("cluster: "), "the message names the stage: {}", clustered.message);
    assert!(clustered.message.contains(&nothing), "the message names the URI: {}", clustered.message);
    assert!(["UnitsFailed", "ShardError"].contains(&clustered.reason.as_str()), "{}", clustered.reason);
    let ready = fx.condition::<SourceGroup>("broken", "Ready").await.unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", clustered.reason.as_str()));
    assert!(
        ready.message.starts_with("stage cluster failed: ") && ready.message.contains("has no shards"),
        "{}",
        ready.message
    );
    let broken = fx.get::<SourceGroup>("broken").await.unwrap();
    assert_eq!(broken.status.as_ref().unwrap().pipeline.stage.as_deref(), Some("Failed"));

    fx.wait_ready::<SourceGroup>("corpus", STEP).await;
    // A failure is final for its generation: no retry Job is started.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fx.jobs("mira.dev/resource=broken").await.len(), 1, "{:?}", jobs_per_stage(&fx).await);
}

#[tokio::test]
async fn a_stage_outside_the_operators_allowlists_fails_not_allowed_and_creates_no_job() {
    let mut fx = Fixture::new("policy").await;
    fx.start_operator(OperatorOptions {
        args: vec!["--allowed-images=registry.example.test/mira/*".into()],
        ..Default::default()
    });
    let web = fx.uri("corpus/web/");
    let manifest = source_group(&fx, "miner", &[("web", &web)], &[("prose", &["web"])])
        .replace("job: {backoffLimit: 0}", "job: {backoffLimit: 0, image: \"evil.example.org/miner:1\"}");
    fx.apply(&manifest);
    let clustered =
        fx.wait_condition::<SourceGroup>("miner", "Clustered", "False", "NotAllowed", "evil.example.org", STEP).await;
    assert!(
        clustered.message.contains("registry.example.test/mira/*"),
        "the allowlist is named: {}",
        clustered.message
    );
    assert!(fx.jobs("mira.dev/resource=miner").await.is_empty(), "no Job was created");
}

#[tokio::test]
async fn invalid_manifests_are_rejected_by_kubectl_apply_with_the_schema_message() {
    let fx = Fixture::new("invalid").await;
    let error = fx.apply_rejected(
        "apiVersion: mira.dev/v1alpha1\nkind: FilterRun\nmetadata: {name: filter}\n\
         spec: {distillationJobRef: students, retention: 1.5, output: \"s3://kept/\"}\n",
    );
    assert!(error.contains("spec.retention"), "{error}");
    assert!(error.contains("less than or equal to 1"), "{error}");

    let error = fx.apply_rejected(
        "apiVersion: mira.dev/v1alpha1\nkind: SourceGroup\nmetadata: {name: corpus}\n\
         spec: {root: \"s3://b/mira\", sources: [{name: Web_Crawl, uri: \"s3://b/web/\"}]}\n",
    );
    assert!(error.contains("spec.sources"), "{error}");
    assert!(error.contains("should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'"), "{error}");
    assert!(fx.get::<FilterRun>("filter").await.is_none() && fx.get::<SourceGroup>("corpus").await.is_none());
}

#[tokio::test]
async fn baselines_select_from_a_source_group_alone_and_the_report_sets_them_side_by_side() {
    let fx = Fixture::started("baselines").await;
    fx.upload_corpus(&THREE_SOURCES, 2, 60).await;
    let sources = THREE_SOURCES.map(|(name, ..)| (name, fx.uri(&format!("corpus/{name}/"))));
    let sources: Vec<(&str, &str)> = sources.iter().map(|(n, u)| (*n, u.as_str())).collect();
    let corpus = source_group(&fx, "corpus", &sources, &[("prose", &["web"]), ("technical", &["code", "math"])]);
    // No RubricSet, no DistillationJob, no teacher: a random draw cut per source, and DSIR
    // towards the web source's records.
    let random = format!(
        "apiVersion: mira.dev/v1alpha1\nkind: FilterRun\nmetadata: {{name: random}}\nspec:\n  sourceGroupRef: corpus\n  \
         method: random\n  policy: source\n  retention: 0.5\n  output: \"{}\"\n  job: {{backoffLimit: 0}}\n",
        fx.uri("kept-random")
    );
    let dsir = format!(
        "apiVersion: mira.dev/v1alpha1\nkind: FilterRun\nmetadata: {{name: dsir}}\nspec:\n  sourceGroupRef: corpus\n  \
         method: dsir\n  dsir: {{target: \"{}\", sample: 200}}\n  retention: 0.5\n  output: \"{}\"\n  \
         job: {{backoffLimit: 0}}\n",
        fx.uri("corpus/web/"),
        fx.uri("kept-dsir")
    );
    // DSIR after the random draw is Ready, so that the report the operator writes for DSIR has
    // the random selection to set beside it.
    fx.apply(&[corpus, random].join("---\n"));
    let random = fx.wait_ready::<FilterRun>("random", CHAIN).await;
    fx.apply(&dsir);
    let dsir = fx.wait_ready::<FilterRun>("dsir", CHAIN).await;
    assert_conditions_true(&random, &["Ready", "Scored", "Thresholded", "Selected"]);
    assert_conditions_true(&dsir, &["Ready", "Scored", "Thresholded", "Selected"]);
    for group in &random.status.as_ref().unwrap().groups {
        let manifest = fx.storage.get(&join(group.output.as_deref().unwrap(), "manifest.json")).await.unwrap();
        let manifest: Manifest = serde_json::from_slice(&manifest).unwrap();
        for (source, kept) in &manifest.sources {
            let share = kept.kept_tokens as f64 / kept.total_tokens as f64;
            assert!((share - 0.5).abs() < 0.05, "{source} keeps half its tokens at random: {kept:?}");
        }
        assert!(!manifest.samples[&group.name].is_empty(), "the comparison sample");
    }
    let dsir_total = dsir.status.as_ref().unwrap().total.clone().unwrap();
    let share = dsir_total.kept_tokens as f64 / dsir_total.total_tokens as f64;
    assert!((share - 0.5).abs() < 0.05, "DSIR keeps its budget: {dsir_total:?}");
    // The DSIR weights were fitted once per group, next to its scores.
    let score = dsir.status.as_ref().unwrap().pipeline.stages.iter().find(|s| s.name == "score/technical").unwrap();
    assert!(fx.storage.get_opt(&join(&score.output, "dsir/technical.json")).await.unwrap().is_some());

    let written = dsir.status.as_ref().unwrap().report.clone().unwrap();
    let written = String::from_utf8_lossy(&fx.storage.get(&written).await.unwrap()).into_owned();
    assert!(written.contains("Beside the other selections") && written.contains("random (random, source, 0.5)"));

    // `mira report` on the cluster compares the selections of one corpus.
    let out = tempfile::tempdir().unwrap();
    let html = out.path().join("random.html");
    let report = std::process::Command::new(env!("CARGO_BIN_EXE_mira"))
        .args(["report", "fr/random", "-n", &fx.namespace, "-o"])
        .arg(&html)
        .env("KUBECONFIG", common::kubeconfig())
        .output()
        .unwrap();
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let html = std::fs::read_to_string(&html).unwrap();
    assert!(html.contains("Method <b>random</b>") && html.contains("Beside the other selections"), "{html}");
    assert!(html.contains("dsir (dsir, group, 0.5)"), "the DSIR selection is the peer: {html}");
}

/// Kills a Running worker Pod of `resource`'s `stage` Job while it holds a claim on a unit not
/// yet committed. Every worker of the stage is stopped (SIGSTOP) while their claims are read, so
/// that neither the claims nor the stage move meanwhile; one holding a unit is then killed
/// (SIGKILL) and the others go on. Returns the Pod's name and the units it held, which other
/// workers must redo; `None` when a worker finished before one was caught holding a unit.
async fn kill_a_worker_mid_unit(fx: &Fixture, resource: &str, stage: &str) -> Option<(String, Vec<String>)> {
    use k8s_openapi::api::core::v1::Pod;
    let pods: Api<Pod> = Api::namespaced(fx.client.clone(), &fx.namespace);
    let selector =
        kube::api::ListParams::default().labels(&format!("mira.dev/resource={resource},mira.dev/stage={stage}"));
    // A Pod's status lags its process: one that has just exited is not signalled.
    let signal = |signal: &str, pid: &str| {
        let out = std::process::Command::new("kill").args([signal, pid]).output().unwrap();
        out.status.success()
    };
    // The stage's output root is known once its Job is created, before its Pods run.
    let output = fx
        .wait_for(&format!("the {stage} Job"), CHAIN, || async {
            let run = fx.get::<FilterRun>(resource).await?;
            let record = run.status?.pipeline.stages.into_iter().find(|r| r.name.starts_with(stage))?;
            record.job.is_some().then_some(record.output)
        })
        .await;
    let deadline = Instant::now() + STEP;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let Ok(pods) = pods.list(&selector).await else { continue };
        let phase = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        if pods.items.iter().any(|p| phase(p) == "Succeeded") {
            return None;
        }
        let running: Vec<(String, String)> = pods
            .items
            .iter()
            .filter(|p| phase(p) == "Running")
            .filter_map(|p| {
                let container = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
                Some((p.name_any(), container.container_id.as_deref()?.strip_prefix("process://")?.to_string()))
            })
            .filter(|(_, pid)| signal("-STOP", pid))
            .collect();
        if running.is_empty() {
            continue;
        }
        // A commit sent before a worker stopped may still land: let the server finish it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut victim = None;
        for (pod, pid) in &running {
            let held = uncommitted_claims(fx, &output, pod).await;
            if victim.is_none() && !held.is_empty() {
                assert!(signal("-KILL", pid), "kill -KILL {pid}");
                victim = Some((pod.clone(), held));
            } else {
                signal("-CONT", pid);
            }
        }
        if victim.is_some() {
            return victim;
        }
    }
    panic!("no {stage} worker was seen holding a unit\n{}", fx.diagnostics());
}

/// The units under a stage's output root that `worker` has claimed and nobody has committed.
async fn uncommitted_claims(fx: &Fixture, output: &str, worker: &str) -> Vec<String> {
    let units = fx.storage.list(&join(output, "_units/")).await.unwrap_or_default();
    let committed: BTreeSet<&str> = units.iter().filter_map(|o| o.uri.strip_suffix("/commit.json")).collect();
    let mut held = Vec::new();
    for claim in &units {
        let (unit, file) = claim.uri.rsplit_once('/').unwrap();
        if !file.starts_with("claim.") || committed.contains(unit) {
            continue;
        }
        let Ok(Some(body)) = fx.storage.get_opt(&claim.uri).await else { continue };
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if body["worker"] == worker {
            held.push(unit.rsplit('/').next().unwrap().to_string());
        }
    }
    held
}

/// Each unit's committing worker, for a stage's output root.
async fn committers(fx: &Fixture, output: &str) -> BTreeMap<String, String> {
    let mut committers = BTreeMap::new();
    for object in fx.storage.list(&join(output, "_units/")).await.unwrap() {
        if let Some(unit) = object.uri.strip_suffix("/commit.json") {
            let commit: serde_json::Value = fx.storage.get_json(&object.uri).await.unwrap();
            committers.insert(unit.rsplit('/').next().unwrap().to_string(), commit["worker"].as_str().unwrap().into());
        }
    }
    committers
}

#[tokio::test]
async fn four_workers_share_score_and_select_and_a_killed_one_changes_no_kept_byte() {
    let mut fx = Fixture::new("workers").await;
    fx.start_kubelet(&["--max-running", "4"]);
    fx.start_operator(OperatorOptions::default());
    // Enough for several seconds of score and select on 2 cores, so that a kill lands mid-unit.
    let shards = 48;
    fx.upload_corpus(&THREE_SOURCES[..1], shards, 2500).await;
    let chain = one_source_chain(&fx);
    let named = |name: &str| {
        chain[3]
            .replace("name: filter}", &format!("name: {name}}}"))
            .replace(&fx.uri("kept"), &fx.uri(&format!("kept-{name}")))
    };
    let single = named("single");
    fx.apply(&chain[..3].join("---\n"));

    // A worker of each data stage is killed while it holds a unit; the Job replaces it and the
    // others take the unit over once its claim lapses. On a busy machine a stage may finish
    // before the test catches a worker holding a unit: another FilterRun then tries again.
    let mut caught = None;
    for name in ["shared", "shared-2", "shared-3"] {
        fx.apply(&named(name).replace("job: {backoffLimit: 0}", "job: {backoffLimit: 4, workers: 4}"));
        let Some(score) = kill_a_worker_mid_unit(&fx, name, "score").await else { continue };
        let Some(select) = kill_a_worker_mid_unit(&fx, name, "select").await else { continue };
        caught = Some((name, [("score", score), ("select", select)]));
        break;
    }
    let (name, killed) = caught.expect("three runs finished a stage before a worker was caught holding a unit");
    let shared = fx.wait_ready::<FilterRun>(name, CHAIN).await;
    fx.apply(&single);
    let single = fx.wait_ready::<FilterRun>("single", CHAIN).await;

    let stages = &shared.status.as_ref().unwrap().pipeline.stages;
    for (stage, (pod, held)) in &killed {
        let record = stages.iter().find(|r| r.name.starts_with(stage)).unwrap();
        let committers = committers(&fx, &record.output).await;
        assert_eq!(committers.len(), shards, "{stage}: every shard's unit is committed once: {committers:?}");
        for unit in held {
            assert_ne!(committers.get(unit), Some(pod), "{stage}: unit {unit} of the killed worker was redone");
        }
        let workers: BTreeSet<&String> = committers.values().collect();
        // How many of the four commit depends on when the kubelet starts each; two at least.
        assert!(workers.len() >= 2, "{stage}: the workers shared the units: {committers:?}");
    }

    // Byte for byte what one uninterrupted worker keeps.
    let fx = &fx;
    let manifest = |run: &FilterRun| {
        let output = run.status.as_ref().unwrap().groups[0].output.clone().unwrap();
        async move {
            serde_json::from_slice::<Manifest>(&fx.storage.get(&join(&output, "manifest.json")).await.unwrap()).unwrap()
        }
    };
    let (ours, theirs) = (manifest(&shared).await, manifest(&single).await);
    assert_eq!(ours.groups, theirs.groups);
    assert_eq!(ours.shards.len(), theirs.shards.len());
    for (a, b) in ours.shards.iter().zip(&theirs.shards) {
        assert_eq!((&a.source, &a.shard, &a.kept), (&b.source, &b.shard, &b.kept));
        match (&a.output, &b.output) {
            (Some(a), Some(b)) => {
                assert_eq!(fx.storage.get(a).await.unwrap(), fx.storage.get(b).await.unwrap(), "{a} and {b}")
            }
            (None, None) => {}
            outputs => panic!("one run kept records of {} and the other none: {outputs:?}", a.shard),
        }
    }
    assert!(ours.shards.iter().any(|s| s.output.is_some()));
}

#[tokio::test]
async fn an_s3_outage_during_score_delays_the_run_and_duplicates_nothing() {
    let s3 = common::OwnS3::start();
    let mut fx = Fixture::on("outage", s3.config()).await;
    fx.start_kubelet(&[]);
    fx.start_operator(OperatorOptions::default());
    let shards = 48;
    fx.upload_corpus(&THREE_SOURCES[..1], shards, 1000).await;
    let chain = one_source_chain(&fx);
    let filter = chain[3].replace("job: {backoffLimit: 0}", "job: {backoffLimit: 6, workers: 2}");
    fx.apply(&[&chain[..3], &[filter]].concat().join("---\n"));

    // Once score has committed a unit, the server goes away for a while, then comes back with its data.
    let output = fx
        .wait_for("score to commit a unit", CHAIN, || async {
            let run = fx.get::<FilterRun>("filter").await?;
            let record = run.status?.pipeline.stages.into_iter().find(|r| r.step == Step::Score)?;
            assert!(record.phase != StagePhase::Succeeded, "score finished before the outage");
            let units = fx.storage.list(&join(&record.output, "_units/")).await.ok()?;
            units.iter().any(|o| o.uri.ends_with("/commit.json")).then_some(record.output)
        })
        .await;
    s3.stop();
    tokio::time::sleep(Duration::from_secs(8)).await;
    s3.restart();

    let filter = fx.wait_ready::<FilterRun>("filter", CHAIN).await;
    assert_conditions_true(&filter, &["Ready", "Scored", "Thresholded", "Selected"]);
    assert_eq!(committers(&fx, &output).await.len(), shards, "every score unit committed once");
    let total = filter.status.as_ref().unwrap().total.clone().unwrap();
    assert_eq!(total.total_records, shards as u64 * 1000, "every record counted once");
    let output = filter.status.as_ref().unwrap().groups[0].output.clone().unwrap();
    let manifest: Manifest =
        serde_json::from_slice(&fx.storage.get(&join(&output, "manifest.json")).await.unwrap()).unwrap();
    let kept: u64 = manifest.shards.iter().map(|s| s.kept.kept_records).sum();
    assert_eq!((manifest.shards.len(), kept), (shards, total.kept_records), "each shard selected once");
}

#[tokio::test]
async fn a_retention_change_reruns_threshold_and_select_on_the_score_shards_already_written() {
    let fx = Fixture::started("retention").await;
    fx.upload_corpus(&THREE_SOURCES[..1], 2, 60).await;
    let chain = one_source_chain(&fx);
    fx.apply(&chain.join("---\n"));
    let before = fx.wait_ready::<FilterRun>("filter", CHAIN).await;
    let kept = |run: &FilterRun| run.status.as_ref().and_then(|s| s.total.as_ref()).map(|t| t.kept_tokens).unwrap();
    let score = |run: &FilterRun| {
        let stages = &run.status.as_ref().unwrap().pipeline.stages;
        stages.iter().find(|r| r.step == Step::Score).map(|r| (r.job.clone(), r.output.clone())).unwrap()
    };

    fx.apply(&chain[3].replace("retention: 0.5", "retention: 0.25"));
    let after = fx.wait_ready::<FilterRun>("filter", STEP).await;
    assert!(after.metadata.generation > before.metadata.generation);
    assert!(kept(&after) < kept(&before), "kept {} tokens at 0.25, {} at 0.5", kept(&after), kept(&before));
    assert_eq!(score(&after), score(&before), "score keeps its Job and its output");
    let jobs = jobs_per_stage(&fx).await;
    let expected = [("filter/score/prose", 1), ("filter/threshold/prose", 2), ("filter/select/prose", 2)];
    for (stage, count) in expected {
        assert_eq!(jobs.get(stage), Some(&count), "{stage}: {jobs:?}");
    }
}

#[tokio::test]
async fn credentials_from_a_named_secret_serve_the_operator_and_the_workers() {
    let mut fx = Fixture::new("secret").await;
    // Neither the workers nor the operator have S3 keys of their own: only the Secret's.
    fx.worker_env.retain(|name| !name.starts_with("AWS_") || *name == "AWS_REGION");
    fx.start_kubelet(&[]);
    fx.start_operator(OperatorOptions {
        chart_values: vec!["rbac.readSecrets=true".into(), "rbac.secretNames={s3-keys}".into()],
        without_s3_keys: true,
        ..Default::default()
    });
    let keys = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"].map(|k| std::env::var(k).expect("the test S3 keys"));
    common::kubectl_ok(
        &[
            "create",
            "secret",
            "generic",
            "s3-keys",
            "-n",
            &fx.namespace,
            &format!("--from-literal=AWS_ACCESS_KEY_ID={}", keys[0]),
            &format!("--from-literal=AWS_SECRET_ACCESS_KEY={}", keys[1]),
        ],
        None,
    );
    fx.upload_corpus(&THREE_SOURCES[..1], 1, 40).await;
    let chain =
        one_source_chain(&fx).join("---\n").replace("pathStyle: true}", "pathStyle: true, credentialsSecret: s3-keys}");
    fx.apply(&chain);
    let filter = fx.wait_ready::<FilterRun>("filter", CHAIN).await;
    assert_conditions_true(&filter, &["Ready", "Scored", "Thresholded", "Selected"]);

    // The chart's RBAC lets the operator read that Secret and no other.
    let account = format!("system:serviceaccount:{0}:{0}-mira-operator", fx.namespace);
    let can = |secret: &str| {
        let out = common::kubectl(&["auth", "can-i", "get", secret, "-n", &fx.namespace, "--as", &account], None);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!((can("secret/s3-keys").as_str(), can("secret/other").as_str()), ("yes", "no"));
}

#[tokio::test]
async fn deleting_a_resource_garbage_collects_its_jobs_and_config_maps() {
    let fx = Fixture::started("gc").await;
    fx.upload_corpus(&THREE_SOURCES[..1], 1, 30).await;
    let web = fx.uri("corpus/web/");
    fx.apply(&source_group(&fx, "corpus", &[("web", &web)], &[("prose", &["web"])]));
    fx.wait_ready::<SourceGroup>("corpus", STEP).await;
    let selector = "mira.dev/resource=corpus";
    assert_eq!(fx.jobs(selector).await.len(), 1);
    assert_eq!(fx.config_maps(selector).await.len(), 1);

    common::kubectl_ok(&["delete", "sourcegroup", "corpus", "-n", &fx.namespace, "--wait=false"], None);
    // The garbage collector of kube-controller-manager deletes what the SourceGroup owned.
    fx.wait_for("the garbage collector to delete the SourceGroup's Jobs and ConfigMaps", STEP, || async {
        let jobs = fx.jobs(selector).await.len();
        let config_maps = fx.config_maps(selector).await.len();
        (jobs == 0 && config_maps == 0).then_some(())
    })
    .await;
    fx.wait_for("the garbage collector to delete the Job's Pods", STEP, || async {
        let pods = common::kubectl_ok(&["get", "pods", "-n", &fx.namespace, "-o", "name"], None);
        pods.trim().is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_operator_restarted_mid_run_resumes_without_duplicate_jobs() {
    let mut fx = Fixture::new("restart").await;
    fx.start_kubelet(&[]);
    fx.start_operator(OperatorOptions { lease_identity: Some("first".into()), ..Default::default() });
    fx.upload_corpus(&THREE_SOURCES, 2, 40).await;
    fx.apply(&three_source_chain(&fx, 0.4).join("---\n"));

    // Crash the operator as soon as the FilterRun has started Jobs, while they run.
    fx.wait_for("the FilterRun's first Jobs", CHAIN, || async {
        (!fx.jobs("mira.dev/resource=filter").await.is_empty()).then_some(())
    })
    .await;
    fx.operators[0].kill();
    let before = jobs_per_stage(&fx).await;
    // A new replica (another identity) takes the Lease over once the first's expires.
    fx.start_operator(OperatorOptions { lease_identity: Some("second".into()), ..Default::default() });

    let filter = fx.wait_ready::<FilterRun>("filter", CHAIN).await;
    assert_conditions_true(&filter, &["Ready", "Scored", "Thresholded", "Selected"]);
    let after = jobs_per_stage(&fx).await;
    let duplicated: Vec<(&String, &usize)> = after.iter().filter(|(_, n)| **n != 1).collect();
    assert!(duplicated.is_empty(), "one Job per stage, before the crash {before:?}, after {after:?}");
    let expected = [
        "corpus/cluster/-",
        "students/distill/-",
        "filter/score/prose",
        "filter/score/technical",
        "filter/threshold/prose",
        "filter/threshold/technical",
        "filter/select/prose",
        "filter/select/technical",
    ];
    assert_eq!(after.keys().map(String::as_str).collect::<std::collections::BTreeSet<_>>(), expected.into());
    let stages = &filter.status.as_ref().unwrap().pipeline.stages;
    assert!(stages.iter().all(|r| r.job.is_some()), "every stage names the Job that ran it: {stages:#?}");
    eprintln!("Jobs when the operator was killed: {before:?}");
    let lease = common::kubectl_ok(
        &["get", "lease", "mira-operator", "-n", &fx.namespace, "-o", "jsonpath={.spec.holderIdentity}"],
        None,
    );
    assert_eq!(lease, "second", "the restarted replica holds the Lease");
}

#[tokio::test]
async fn of_two_replicas_one_leads_at_a_time_and_a_stopped_leader_hands_over_at_once() {
    use k8s_openapi::api::coordination::v1::Lease;
    let mut fx = Fixture::new("replicas").await;
    fx.start_kubelet(&[]);
    fx.start_operator(OperatorOptions { lease_identity: Some("one".into()), ..Default::default() });
    fx.start_operator(OperatorOptions { lease_identity: Some("two".into()), ..Default::default() });
    fx.upload_corpus(&THREE_SOURCES, 1, 30).await;
    // 30 records per source teach the students little: the test is about which replica acts.
    let chain = three_source_chain(&fx, 0.5).join("---\n");
    fx.apply(&chain.replace("  output:", "  onNoReliableDimension: KeepAtRandom\n  output:"));
    let filter = fx.wait_ready::<FilterRun>("filter", CHAIN).await;
    assert_conditions_true(&filter, &["Ready", "Scored", "Thresholded", "Selected"]);

    // A slow API server may pass the Lease on mid-run (a leader that cannot renew in time stops):
    // then the first leader's last Job precedes the second's taking over. Never do two act at once.
    let mut terms: Vec<(String, String, usize)> = (0..2)
        .map(|i| {
            let log = std::fs::read_to_string(&fx.operators[i].log).unwrap();
            let stamp = |line: &str| line.split_whitespace().next().unwrap_or_default().to_string();
            let mut lead = None;
            let (mut last_job, mut jobs) = (String::new(), 0);
            for line in log.lines() {
                if line.contains(" leading") && lead.is_none() {
                    lead = Some(stamp(line));
                } else if line.contains("created Job") {
                    assert!(lead.is_some(), "replica {} created a Job before leading:\n{log}", i + 1);
                    (last_job, jobs) = (stamp(line), jobs + 1);
                }
            }
            (lead.unwrap_or_default(), last_job, jobs)
        })
        .filter(|(lead, _, _)| !lead.is_empty())
        .collect();
    terms.sort();
    let created: usize = terms.iter().map(|t| t.2).sum();
    assert!(created > 0 && created == fx.jobs("app.kubernetes.io/managed-by=mira-operator").await.len(), "{terms:?}");
    if let [first, second] = &terms[..] {
        assert!(first.2 == 0 || first.1 < second.0, "the first leader created a Job after the second led: {terms:?}");
    }

    // A leader stopped with SIGTERM frees the Lease, and a standby takes it at once rather than
    // when it would have expired, or when its own next look at the Lease comes (up to 10 s
    // later). Stop the leader just after a renewal, so that expiry is far.
    fx.start_operator(OperatorOptions { lease_identity: Some("three".into()), ..Default::default() });
    let leases: kube::Api<Lease> = kube::Api::namespaced(fx.client.clone(), &fx.namespace);
    let spec = || async { leases.get("mira-operator").await.unwrap().spec.unwrap() };
    let before = spec().await;
    let renewed = fx
        .wait_for("the leader to renew its Lease", STEP, || async {
            let now = spec().await;
            (now.renew_time != before.renew_time).then_some(now)
        })
        .await;
    let leader = renewed.holder_identity.clone().unwrap();
    let index = ["one", "two"].iter().position(|id| *id == leader).unwrap();
    let stopped = k8s_openapi::jiff::Timestamp::now();
    fx.operators[index].stop();
    let taken = fx
        .wait_for("a standby to take the Lease", STEP, || async {
            let now = spec().await;
            now.holder_identity.as_ref().is_some_and(|h| *h != leader).then_some(now)
        })
        .await;
    let expiry =
        renewed.renew_time.unwrap().0 + std::time::Duration::from_secs(renewed.lease_duration_seconds.unwrap() as u64);
    let acquired = taken.acquire_time.unwrap().0;
    assert!(acquired < expiry, "the standby took the Lease at {acquired}, not before it expired at {expiry}");
    let handover = acquired.duration_since(stopped);
    assert!(handover.as_secs() < 5, "the standby took the Lease {handover:#} after the leader was stopped");
    let log = std::fs::read_to_string(&fx.operators[index].log).unwrap();
    assert!(log.contains("released the leader Lease"), "{log}");
}

#[tokio::test]
async fn the_gitops_overlays_render_with_their_references_renamed_and_the_api_server_accepts_them() {
    use serde::Deserialize;
    common::install_crds();
    // The overlays' namespace; another run of this test may have made it already.
    let _ = common::kubectl(&["create", "namespace", "data"], None);
    for (overlay, prefix) in [("pilot", "pilot-"), ("full", "")] {
        let dir = common::repo().join("examples/gitops/overlays").join(overlay);
        let rendered = common::kubectl_ok(&["kustomize", &dir.to_string_lossy()], None);
        let mut names = BTreeMap::new();
        let mut references = Vec::new();
        for document in serde_yaml::Deserializer::from_str(&rendered) {
            let object = serde_yaml::Value::deserialize(document).unwrap();
            let kind = object["kind"].as_str().unwrap().to_string();
            let name = object["metadata"]["name"].as_str().unwrap().to_string();
            assert_eq!(object["metadata"]["namespace"].as_str(), Some("data"), "{overlay}: {kind} {name}");
            assert!(name.starts_with(prefix), "{overlay}: {kind} {name}");
            let typed = match kind.as_str() {
                "SourceGroup" => serde_yaml::from_value::<SourceGroup>(object.clone()).err(),
                "RubricSet" => serde_yaml::from_value::<RubricSet>(object.clone()).err(),
                "DistillationJob" => serde_yaml::from_value::<DistillationJob>(object.clone()).err(),
                "FilterRun" => serde_yaml::from_value::<FilterRun>(object.clone()).err(),
                other => panic!("{overlay} renders a {other}"),
            };
            assert!(typed.is_none(), "{overlay}: {kind} {name} does not parse: {typed:?}");
            for (field, target) in [
                ("sourceGroupRef", "SourceGroup"),
                ("rubricSetRef", "RubricSet"),
                ("distillationJobRef", "DistillationJob"),
            ] {
                if let Some(reference) = object["spec"][field].as_str() {
                    references.push((target, reference.to_string()));
                }
            }
            names.insert(kind, name);
        }
        assert_eq!(names.len(), 4, "{overlay}: {names:?}");
        for (kind, reference) in references {
            assert_eq!(names.get(kind), Some(&reference), "{overlay}: a reference to a {kind} the overlay renamed");
        }
        // 1.20's OpenAPI lacks the CRDs' CEL rules, so kubectl's client-side check is off, as in
        // install_crds; the server checks the structural schema.
        let accepted = common::kubectl(&["apply", "--dry-run=server", "--validate=false", "-f", "-"], Some(&rendered));
        assert!(accepted.status.success(), "{overlay}: {}", String::from_utf8_lossy(&accepted.stderr));
    }
}
