//! The largest object the operator can write for each kind, built at the limits the CRD schemas
//! state (groups, sources, dimensions, name and URI lengths) with every string at its longest and
//! every stage failed with the longest message it keeps: every object stays under 1 MiB (etcd
//! refuses 1.5 MiB) by design, not by how a run happens to go.

use serde_json::{json, Value};

use super::*;

/// etcd refuses a request over 1.5 MiB; an object at the limits must leave room for its
/// metadata (managed fields) and an update's envelope.
const OBJECT_LIMIT: usize = 1024 * 1024;
/// What `truncate` leaves of a condition's message, and of a stage's.
const MESSAGE: usize = crate::reconcile::MAX_MESSAGE;

fn text(prefix: &str, i: usize, len: usize) -> String {
    let head = format!("{prefix}{i}-");
    format!("{head}{}", "x".repeat(len.saturating_sub(head.len())))
}

fn uri(i: usize) -> String {
    format!("s3://{}", text("u", i, MAX_URI - 5))
}

fn groups() -> usize {
    MAX_GROUPS as usize
}

fn sources() -> usize {
    MAX_SOURCES as usize
}

/// Group `g`'s sources: the sources split over the groups.
fn members(g: usize) -> Vec<usize> {
    (0..sources()).filter(|s| s % groups() == g).collect()
}

fn pipeline(stages: usize) -> Value {
    let condition = |i: usize| {
        json!({"type": text("Type", i, 40), "status": "False", "reason": text("Reason", i, 60),
               "message": "m".repeat(MESSAGE), "lastTransitionTime": "2026-12-04T16:00:00Z", "observedGeneration": 1})
    };
    let stage = |i: usize| {
        json!({"name": format!("score/{}", text("g", i, 63)), "step": "score", "group": text("g", i, 63),
               "job": text("j", i, 63), "generation": i64::MAX,
               "output": format!("{}/{}/filterruns/{}/score/{}/0123456789abcdef", uri(0), text("ns", 0, 63), text("r", 0, 63), text("g", i, 63)),
               "phase": "Failed", "reason": text("Reason", i, 60), "message": "m".repeat(MESSAGE),
               "progress": {"unitsDone": u64::MAX, "unitsResumed": u64::MAX, "unitsTotal": u64::MAX, "records": u64::MAX,
                            "bytes": u64::MAX, "elapsedSeconds": 1.0e300, "workers": u32::MAX, "finished": true},
               "startedAt": "2026-12-04T16:00:00Z", "finishedAt": "2026-12-04T16:00:00Z"})
    };
    json!({"observedGeneration": i64::MAX, "conditions": (0..16).map(condition).collect::<Vec<_>>(),
           "stage": "m".repeat(MESSAGE), "progress": "m".repeat(MESSAGE),
           "stages": (0..stages).map(stage).collect::<Vec<_>>(),
           "revision": "0123456789abcdef0123456789abcdef", "upstreamRevision": "0123456789abcdef0123456789abcdef"})
}

fn with(mut pipeline: Value, fields: Value) -> Value {
    pipeline.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    pipeline
}

fn source_group() -> SourceGroup {
    let source = |s: usize| {
        json!({"name": text("s", s, 63), "uri": uri(s), "format": "jsonl.zst",
               "text": {"field": text("f", s, MAX_FIELD), "messagesField": text("m", s, MAX_FIELD), "idField": text("i", s, MAX_FIELD)},
               "shardFraction": 0.123456789})
    };
    let status = with(
        pipeline(1),
        json!({
            "groups": (0..groups()).map(|g| json!({"name": text("g", g, 63),
                "sources": members(g).into_iter().map(|s| text("s", s, 63)).collect::<Vec<_>>()})).collect::<Vec<_>>(),
            "sources": (0..sources()).map(|s| json!({"name": text("s", s, 63), "group": text("g", s % groups(), 63),
                "shards": u64::MAX, "bytes": u64::MAX, "sampledRecords": u64::MAX, "skippedRecords": u64::MAX,
                "nearest": {"source": text("s", s + 1, 63), "similarity": -0.123}})).collect::<Vec<_>>(),
            "similarity": uri(0), "silhouette": -0.123, "groupCount": MAX_GROUPS,
        }),
    );
    serde_json::from_value(json!({
        "apiVersion": "mira.dev/v1alpha1", "kind": "SourceGroup", "metadata": {"name": text("r", 0, 63), "namespace": text("ns", 0, 63)},
        "spec": {"storage": {}, "root": uri(0), "sources": (0..sources()).map(source).collect::<Vec<_>>()},
        "status": status,
    }))
    .expect("a SourceGroup at the limits")
}

fn rubric_set() -> RubricSet {
    let status = with(
        pipeline(1),
        json!({
            "groups": (0..groups()).map(|g| json!({"name": text("g", g, 63), "pinned": true, "dimensions": MAX_DIMENSIONS}))
                .collect::<Vec<_>>(),
            "discovered": uri(0), "digest": "0".repeat(64), "groupCount": MAX_GROUPS, "dimensionCount": MAX_GROUPS * MAX_DIMENSIONS,
        }),
    );
    serde_json::from_value(json!({
        "apiVersion": "mira.dev/v1alpha1", "kind": "RubricSet", "metadata": {"name": text("r", 0, 63), "namespace": text("ns", 0, 63)},
        "spec": {"sourceGroupRef": text("r", 0, 63), "teacher": {"endpoint": {"url": uri(0), "model": text("m", 0, 63)}}},
        "status": status,
    }))
    .expect("a RubricSet at the limits")
}

fn distillation_job() -> DistillationJob {
    let student = |g: usize| {
        json!({"group": text("g", g, 63), "student": uri(g), "trainRecords": u64::MAX, "validationRecords": u64::MAX,
               "dimensions": MAX_DIMENSIONS, "sources": MAX_SOURCES, "masked": MAX_SOURCES * MAX_DIMENSIONS,
               "summary": "s".repeat(512)})
    };
    let status = with(
        pipeline(2),
        json!({
            "labels": uri(0),
            "labelled": (0..groups()).map(|g| json!({"group": text("g", g, 63), "records": u64::MAX})).collect::<Vec<_>>(),
            "students": (0..groups()).map(student).collect::<Vec<_>>(),
            "sft": uri(0), "studentCount": MAX_GROUPS, "maskedShare": "100% (32768 of 32768)",
            "unranked": (0..sources()).map(|s| format!("{}/{}", text("g", s, 63), text("s", s, 63))).collect::<Vec<_>>(),
            "agreement": uri(0),
        }),
    );
    serde_json::from_value(json!({
        "apiVersion": "mira.dev/v1alpha1", "kind": "DistillationJob", "metadata": {"name": text("r", 0, 63), "namespace": text("ns", 0, 63)},
        "spec": {"rubricSetRef": text("r", 0, 63)},
        "status": status,
    }))
    .expect("a DistillationJob at the limits")
}

fn filter_run() -> FilterRun {
    let cut = |scope: String| {
        json!({"scope": scope, "retention": 0.123456789, "bin": u64::MAX, "threshold": -1.0e300, "totalTokens": u64::MAX, "targetTokens": u64::MAX,
                     "keptTokens": u64::MAX, "keptRecords": u64::MAX, "totalRecords": u64::MAX, "errorBoundTokens": u64::MAX,
                     "tie": {"bin": u64::MAX, "below": u64::MAX, "records": u64::MAX, "tokens": u64::MAX}})
    };
    let kept =
        json!({"keptRecords": u64::MAX, "totalRecords": u64::MAX, "keptTokens": u64::MAX, "totalTokens": u64::MAX});
    // Per-source figures are listed for two sets of LISTED_SOURCES sources at most.
    let listed = |g: usize| members(g).into_iter().filter(|s| *s < 32).collect::<Vec<_>>();
    let group = |g: usize| {
        json!({"name": text("g", g, 63), "scoredShards": u64::MAX, "records": u64::MAX, "tokens": u64::MAX, "skippedRecords": u64::MAX,
               "cuts": std::iter::once(cut(text("g", g, 63)))
                   .chain(listed(g).into_iter().map(|s| cut(format!("{}/{}", text("g", g, 63), text("s", s, 63)))))
                   .collect::<Vec<_>>(),
               "sources": listed(g).into_iter().map(|s| json!({"name": text("s", s, 63), "records": u64::MAX,
                   "skipped": {"invalid_json": u64::MAX, "missing_text": u64::MAX, "too_long": u64::MAX, "invalid_utf8": u64::MAX,
                               "not_an_object": u64::MAX, "empty_text": u64::MAX, "invalid_reply": u64::MAX, "other": u64::MAX}}))
                   .collect::<Vec<_>>(),
               "lengths": listed(g).into_iter().map(|s| json!({"group": text("g", g, 63), "source": text("s", s, 63), "sampled": u64::MAX,
                   "rankCorrelation": -0.123456789,
                   "deciles": (0..10).map(|_| json!({"maxTokens": u64::MAX, "records": u64::MAX, "keptFraction": 0.123456789}))
                       .collect::<Vec<_>>()}))
                   .collect::<Vec<_>>(),
               "kept": kept, "drawnTokens": u64::MAX, "output": uri(g)})
    };
    // Score, threshold and select per group.
    let status = with(
        pipeline(MAX_STAGES as usize),
        json!({"groups": (0..groups()).map(group).collect::<Vec<_>>(), "total": kept, "keptShare": "100.0% of 18446.7P tokens",
               "tokenCounter": uri(0), "report": uri(0)}),
    );
    serde_json::from_value(json!({
        "apiVersion": "mira.dev/v1alpha1", "kind": "FilterRun", "metadata": {"name": text("r", 0, 63), "namespace": text("ns", 0, 63)},
        "spec": {"distillationJobRef": text("r", 0, 63), "retention": 0.5, "output": uri(0), "policy": "source"},
        "status": status,
    }))
    .expect("a FilterRun at the limits")
}

fn sizes<K: serde::Serialize>(object: &K) -> (usize, usize) {
    let value = serde_json::to_value(object).unwrap();
    (serde_json::to_vec(&value).unwrap().len(), serde_json::to_vec(&value["status"]).unwrap().len())
}

#[test]
fn every_object_the_operator_writes_stays_bounded_at_the_schemas_limits() {
    let objects = [
        ("SourceGroup", sizes(&source_group())),
        ("RubricSet", sizes(&rubric_set())),
        ("DistillationJob", sizes(&distillation_job())),
        ("FilterRun", sizes(&filter_run())),
    ];
    for (kind, (object, status)) in objects {
        println!("{kind}: object {object} bytes, status {status} bytes");
        assert!(object <= OBJECT_LIMIT, "{kind} can reach {object} bytes");
    }
    // A plan ConfigMap holds a plan reference: a URI, a digest and the storage settings.
    let pointer = scorer_runner::plan::PlanRef {
        plan_uri: format!("{}/{}", uri(0), "p".repeat(400)),
        sha256: "0".repeat(64),
        storage: scorer_runner::plan::StorageConfig {
            endpoint: Some(uri(0)),
            region: Some(text("r", 0, 63)),
            path_style: Some(true),
            max_attempts: Some(u32::MAX),
            ..Default::default()
        },
    };
    let plan = serde_json::to_vec(&pointer).unwrap().len();
    assert!(plan < 4096, "a plan reference of {plan} bytes");
}
