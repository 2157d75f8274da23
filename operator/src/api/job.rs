//! How a resource's stage Jobs run: image, workers, resources and scheduling.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The Jobs a resource runs for its stages. Every field is optional; Jobs get the operator's
/// defaults where a field is absent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobTemplate {
    /// Container image holding `scorer-runner`; the operator's `--runner-image` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Pods working on a stage at once. Workers claim work units (shards) from shared storage,
    /// so any number is safe; extra workers simply find no work. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub workers: Option<i32>,
    /// CPU, memory and GPUs per worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ComputeResources>,
    /// Node labels a worker's node must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the workers tolerate (for example GPU nodes' taints).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
    /// PriorityClass of the workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Kueue LocalQueue to submit the Jobs to (the `kueue.x-k8s.io/queue-name` label). Kueue then
    /// decides when they start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// ServiceAccount of the workers (for example one bound to an IAM role for S3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Seconds a stage's Job may run before it is stopped and the stage fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
    /// Failed worker pods retried before the stage fails. Default 3. Retries lose no finished
    /// work: committed units are skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub backoff_limit: Option<i32>,
    /// Seconds a finished Job is kept before Kubernetes deletes it. The stage's outcome stays in
    /// status either way. Default 86400 (one day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
    /// Most disk a worker's scratch space (models copied from S3, shard copies) may fill before
    /// the kubelet evicts the worker, for example `200Gi` for a large local teacher. Default
    /// `100Gi`: a runaway worker cannot fill its node's disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch_size_limit: Option<Quantity>,
}

/// Compute resources of one worker. Requests equal limits for memory, so a worker is never
/// killed for memory its node promised to others.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeResources {
    /// CPU request, for example `4` or `500m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory request and limit, for example `16Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// NVIDIA GPUs (`nvidia.com/gpu` limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16))]
    pub gpu: Option<i32>,
}
