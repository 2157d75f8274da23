//! Status shared by the four resources: the stage records and conditions the stage engine
//! computes, and the revision that dependents gate on.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use scorer_runner::progress::Snapshot;

use super::Step;

/// Where one stage is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StagePhase {
    /// Its Job exists but no worker runs yet (queued, scheduling, or suspended by Kueue).
    Pending,
    /// Workers are running.
    Running,
    /// Its result is written.
    Succeeded,
    /// Its Job failed; the stage stays failed until the spec changes.
    Failed,
}

/// One stage of a resource: the Job started for it and what became of it. Recorded as soon as the
/// Job is created, so a Job removed by its TTL is never started again for a finished stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageRecord {
    /// The stage, with its group for per-group stages: `cluster`, `score/code`.
    pub name: String,
    /// The data-plane step the stage runs.
    pub step: Step,
    /// The group of a per-group stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The Job that runs the stage; absent when an identical earlier run's result was reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The resource's `metadata.generation` when the stage started.
    pub generation: i64,
    /// Where the stage writes. Outputs are addressed by a digest of the stage's plan, so an
    /// unchanged stage keeps its output across spec changes and is not run again.
    pub output: String,
    /// Where the stage is.
    pub phase: StagePhase,
    /// Why it failed: the error category the step reported (`StorageError`, `ShardError`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The step's error message, or what was reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How far its workers have got (units, records read, elapsed), as they last reported;
    /// kept once the stage has finished as its final figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Snapshot>,
    /// When the stage started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the stage succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

/// Most stages a resource has: a FilterRun's score, threshold and select per group.
pub const MAX_STAGES: u32 = 3 * super::MAX_GROUPS;

/// The part of every MIRA status the stage engine owns; each kind's status flattens it in.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStatus {
    /// The `metadata.generation` this status was computed for. Dependents start only when it
    /// equals `metadata.generation` and `Ready` is `True`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, the summary, and one condition per stage (`Clustered`, `Scored`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// What the resource is doing, for `kubectl get`: `Waiting`, a stage and its progress,
    /// `Ready`, or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The running stages' progress in one line, for `kubectl get`: `score/code 12/40 units,
    /// 1.2k records/s, ETA 3m10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// One record per stage of the current plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_STAGES))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub stages: Vec<StageRecord>,
    /// A digest that changes whenever this resource's outputs may have changed; set while Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The upstream's `revision` the current stages were planned from. Dependents wait while it
    /// differs from the upstream's own `revision` (this resource has not caught up yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_revision: Option<String>,
}

impl PipelineStatus {
    /// The condition of a type, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Whether this status says Ready for `generation`: computed for it, and `Ready=True`.
    pub fn ready_at(&self, generation: Option<i64>) -> bool {
        self.observed_generation == generation
            && self.condition("Ready").is_some_and(|c| c.status == "True" && c.observed_generation == generation)
    }
}

/// Reads a count, or the list an earlier version kept in its place as its length: statuses
/// written before an upgrade stay readable (the next status write replaces them).
pub(crate) fn count<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Count {
        Number(u32),
        List(Vec<serde::de::IgnoredAny>),
    }
    Ok(match Count::deserialize(deserializer)? {
        Count::Number(n) => n,
        Count::List(items) => items.len() as u32,
    })
}
