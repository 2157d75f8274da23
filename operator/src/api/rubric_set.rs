//! `RubricSet`: the rubric dimensions of each group of a SourceGroup, discovered by a teacher or
//! pinned in the spec.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Dimension, JobTemplate, ModelSpec, PipelineStatus, Scale};

/// Rubrics for a SourceGroup's groups. A teacher judges sampled records of each group in free
/// form; the proposals are clustered and the proposal nearest each cluster centre becomes an
/// anchored dimension. Groups listed in `pinned` skip discovery.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mira.dev",
    version = "v1alpha1",
    kind = "RubricSet",
    namespaced,
    status = "RubricSetStatus",
    shortname = "rbs",
    category = "mira",
    derive = "PartialEq",
    doc = "Rubric dimensions per capability group, discovered by a teacher or pinned.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Groups", type_ = "integer", json_path = ".status.groupCount"),
    printcolumn(name = "Dimensions", type_ = "integer", json_path = ".status.dimensionCount"),
    printcolumn(name = "Stage", type_ = "string", json_path = ".status.stage"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(super::NAME_LENGTH_RULE).message(super::NAME_LENGTH_MESSAGE)
)]
#[serde(rename_all = "camelCase")]
pub struct RubricSetSpec {
    /// The SourceGroup (same namespace) whose groups get rubrics. Immutable: create another
    /// RubricSet for another corpus.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("sourceGroupRef is immutable"))]
    pub source_group_ref: String,
    /// The model that judges records.
    pub teacher: ModelSpec,
    /// The integer scale dimensions are scored on.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self.min < self.max").message("min must be below max"))]
    pub scale: Scale,
    /// The most tokens of a record the teacher reads, and with it a judge student: a longer
    /// record is cut head plus tail (the cut is recorded with its label), never skipped. Counted
    /// with the model's tokenizer where it has one, else in whitespace-separated words. Default
    /// 2048.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16))]
    pub max_record_tokens: Option<u32>,
    /// Discovery sizes.
    #[serde(default)]
    pub discovery: DiscoverySpec,
    /// Fixed dimensions per group; these groups skip discovery (reproducible, GitOps-friendly).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = super::MAX_GROUPS))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["group".into()]))]
    pub pinned: Vec<PinnedGroup>,
    /// The discover Job.
    #[serde(default)]
    pub job: JobTemplate,
}

/// How much the teacher reads and proposes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscoverySpec {
    /// Records the teacher judges per group. Default 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub records_per_group: Option<u32>,
    /// Anchored dimensions kept per group. Default 15.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = super::MAX_DIMENSIONS))]
    pub dimensions_per_group: Option<u32>,
    /// Proposal clusters backed by fewer records are dropped. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_support: Option<u32>,
    /// Embeds proposals for clustering; a hashed bag of words when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedder: Option<ModelSpec>,
    /// Seed of record sampling and proposal clustering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// A group's fixed dimensions.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PinnedGroup {
    /// The group, as named in the SourceGroup's status.
    #[schemars(length(min = 1, max = 63), pattern(super::DNS_LABEL_PATTERN))]
    #[x_kube(validation = Rule::new(super::DNS_LABEL_RULE).message(super::DNS_LABEL_MESSAGE))]
    pub group: String,
    /// Its dimensions.
    #[schemars(length(min = 1, max = super::MAX_DIMENSIONS))]
    pub dimensions: Vec<Dimension>,
}

/// The rubrics.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RubricSetStatus {
    #[serde(flatten)]
    pub pipeline: PipelineStatus,
    /// Each group's rubric, in brief.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = super::MAX_GROUPS))]
    pub groups: Vec<RubricSummary>,
    /// The discover stage's result: every discovered group's anchored dimensions, with their
    /// descriptions, scoring guides and support, and the teacher's proposals behind them. (Their
    /// text grows with groups times dimensions, so it is there and in the run report, not here.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovered: Option<String>,
    /// SHA-256 of every group's rubric (pinned and discovered): the label and distill steps
    /// refuse rubrics that differ from those summarised here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Groups with a rubric (the `Groups` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_count: Option<u32>,
    /// Anchored dimensions over all groups (the `Dimensions` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimension_count: Option<u32>,
}

/// One group's rubric, in brief.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RubricSummary {
    /// The group.
    pub name: String,
    /// Whether its dimensions are pinned in the spec rather than discovered.
    #[serde(default)]
    pub pinned: bool,
    /// Its dimensions.
    #[serde(deserialize_with = "super::status::count")]
    #[schemars(with = "u32")]
    pub dimensions: u32,
}
