//! The Argo CD health check of `charts/mira-operator/argocd/argocd-cm.yaml`, run by a real Lua
//! interpreter (`MIRA_LUA`, from `hack/install-tools.sh lua`) on statuses the operator's own
//! stage engine computes: no status yet, a stage running, a stage failed, Ready, Ready with a
//! finding, a status for an older generation, and an upstream not Ready.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use mira_operator::api::{RubricSet, SourceGroup};
use mira_operator::reconcile::{reconcile, Input, JobState, Lineage, Pipeline, Policy, StageProgress};
use scorer_runner::plan::{ClusterResult, GroupDef, StepResult};
use serde_json::Value;

const SOURCE_GROUP: &str = "
apiVersion: mira.dev/v1alpha1
kind: SourceGroup
metadata: {name: corpus, namespace: data, uid: 0b5e, generation: 1}
spec:
  root: s3://bucket/mira
  sources: [{name: web, uri: s3://bucket/web/}]
  grouping: {groups: [{name: prose, sources: [web]}]}
";

const RUBRIC_SET: &str = "
apiVersion: mira.dev/v1alpha1
kind: RubricSet
metadata: {name: rubrics, namespace: data, uid: 7c1a, generation: 1}
spec:
  sourceGroupRef: corpus
  teacher: {endpoint: {url: http://teacher/v1, model: judge}}
";

/// The script Argo CD runs for every MIRA kind: one key per kind, valid as a ConfigMap key
/// (`[-._a-zA-Z0-9]+`: the API server refuses a `*`), all four the same script.
fn script() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/mira-operator/argocd/argocd-cm.yaml");
    let snippet: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let data = snippet["data"].as_mapping().expect("a data map");
    for key in data.keys().map(|k| k.as_str().unwrap()) {
        assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)), "{key} is no ConfigMap key");
    }
    let scripts: Vec<&str> = ["SourceGroup", "RubricSet", "DistillationJob", "FilterRun"]
        .iter()
        .map(|kind| {
            let key = format!("resource.customizations.health.mira.dev_{kind}");
            data.get(key.as_str()).and_then(|v| v.as_str()).unwrap_or_else(|| panic!("no {key}"))
        })
        .collect();
    assert!(scripts.iter().all(|s| *s == scripts[0]), "one script for every kind");
    scripts[0].to_string()
}

/// A JSON value as a Lua table constructor (`null` becomes `nil`, as in Argo CD).
fn lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!("{{{}}}", items.iter().map(lua).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => {
            let fields: Vec<String> = map.iter().map(|(k, v)| format!("[{k:?}] = {}", lua(v))).collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

/// What the health check says of `object`: its status and message.
fn health<K: serde::Serialize>(object: &K) -> (String, String) {
    let interpreter = std::env::var("MIRA_LUA").expect("MIRA_LUA: run `eval \"$(hack/install-tools.sh env lua)\"`");
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("check.lua");
    let body = format!(
        "obj = {}\nlocal function health()\n{}\nend\nlocal hs = health()\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        lua(&serde_json::to_value(object).unwrap()),
        script()
    );
    std::fs::write(&program, body).unwrap();
    let out = std::process::Command::new(interpreter).arg(&program).output().expect("lua runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = String::from_utf8(out.stdout).unwrap();
    let (status, message) = out.split_once('\n').unwrap();
    (status.to_string(), message.to_string())
}

/// One pass of the engine; the new status replaces the old.
fn pass<K: Pipeline>(
    object: &mut K,
    lineage: &Lineage,
    jobs: &BTreeMap<String, JobState>,
    results: &BTreeMap<String, Arc<StepResult>>,
) {
    let input = Input {
        resource: &*object,
        lineage,
        jobs,
        results,
        progress: &StageProgress::new(),
        policy: &Policy::default(),
    };
    let output = reconcile(&input, &Time(Timestamp::now()));
    *object.status_mut() = Some(output.status);
}

#[test]
fn the_argo_cd_health_check_reads_every_state_of_a_resource() {
    let none = (BTreeMap::new(), BTreeMap::new());
    let mut sg: SourceGroup = serde_yaml::from_str(SOURCE_GROUP).unwrap();
    let (status, message) = health(&sg);
    assert_eq!((status.as_str(), message.as_str()), ("Progressing", "waiting for the MIRA operator to reconcile"));

    pass(&mut sg, &Lineage::default(), &none.0, &none.1);
    let record = sg.status.as_ref().unwrap().pipeline.stages[0].clone();
    let job = record.job.clone().unwrap();
    let running = BTreeMap::from([(job.clone(), JobState::Running)]);
    pass(&mut sg, &Lineage::default(), &running, &none.1);
    let (status, message) = health(&sg);
    assert_eq!(status, "Progressing", "{message}");
    assert!(message.contains("running cluster"), "{message}");

    let mut failed = sg.clone();
    let log = "error: ShardError: source \"web\" has no shards";
    let jobs =
        BTreeMap::from([(job.clone(), JobState::Failed { reason: "BackoffLimitExceeded".into(), log: log.into() })]);
    pass(&mut failed, &Lineage::default(), &jobs, &none.1);
    let (status, message) = health(&failed);
    assert_eq!(status, "Degraded");
    assert!(message.starts_with("ShardError: ") && message.contains("has no shards"), "{message}");

    let result = ClusterResult {
        groups: vec![GroupDef { name: "prose".into(), sources: vec!["web".into()] }],
        sources: Vec::new(),
        similarity: Vec::new(),
        silhouette: 0.0,
    };
    let results = BTreeMap::from([(record.output.clone(), Arc::new(StepResult::Cluster(result)))]);
    let succeeded = BTreeMap::from([(job, JobState::Succeeded)]);
    pass(&mut sg, &Lineage::default(), &succeeded, &results);
    let (status, message) = health(&sg);
    assert_eq!((status.as_str(), message.as_str()), ("Healthy", "1 stage finished"));

    let mut with_finding = sg.clone();
    with_finding.status.as_mut().unwrap().pipeline.conditions.push(Condition {
        type_: "Usable".into(),
        status: "False".into(),
        reason: "NoUsableRecords".into(),
        message: "source web scored no record".into(),
        observed_generation: Some(1),
        last_transition_time: Time(Timestamp::now()),
    });
    let (status, message) = health(&with_finding);
    assert_eq!(status, "Healthy");
    assert!(message.ends_with("Usable=False NoUsableRecords: source web scored no record"), "{message}");

    let mut stale = sg.clone();
    stale.metadata.generation = Some(2);
    let (status, message) = health(&stale);
    assert_eq!(status, "Progressing", "a status for generation 1 says nothing of generation 2");
    assert!(message.contains("generation 2"), "{message}");

    let mut rs: RubricSet = serde_yaml::from_str(RUBRIC_SET).unwrap();
    pass(&mut rs, &Lineage::default(), &none.0, &none.1);
    let (status, message) = health(&rs);
    assert_eq!(status, "Progressing", "waiting on an upstream is not a failure");
    assert!(message.contains("SourceGroup corpus"), "{message}");
}
