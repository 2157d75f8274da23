//! `SourceGroup`: the corpus' sources and how they form capability groups (the chain's root).

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{FeaturizerSpec, Format, GroupDef, JobTemplate, PipelineStatus, TextSpec};

/// The corpus' sources, and how to group them: `k` groups by content clustering, or explicit
/// groups. Every later stage of the chain writes under `root`.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mira.dev",
    version = "v1alpha1",
    kind = "SourceGroup",
    namespaced,
    status = "SourceGroupStatus",
    shortname = "sg",
    category = "mira",
    derive = "PartialEq",
    doc = "A corpus' sources and their capability groups: the root of a MIRA chain.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Groups", type_ = "integer", json_path = ".status.groupCount"),
    printcolumn(name = "Silhouette", type_ = "number", json_path = ".status.silhouette"),
    printcolumn(name = "Stage", type_ = "string", json_path = ".status.stage"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(super::NAME_LENGTH_RULE).message(super::NAME_LENGTH_MESSAGE)
)]
#[serde(rename_all = "camelCase")]
pub struct SourceGroupSpec {
    /// How workers and the operator reach the object store. Local paths need none of it.
    #[serde(default)]
    pub storage: StorageSpec,
    /// URI under which every stage of the chain writes: `s3://bucket/prefix` or a local path.
    #[schemars(length(min = 1, max = super::MAX_URI))]
    pub root: String,
    /// The corpus' sources.
    #[schemars(length(min = 1, max = super::MAX_SOURCES))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub sources: Vec<SourceSpec>,
    /// How sources form groups.
    #[serde(default)]
    pub grouping: GroupingSpec,
    /// The cluster Job.
    #[serde(default)]
    pub job: JobTemplate,
}

/// An S3-compatible object store. Credentials come from `credentialsSecret` when set, else from
/// the standard AWS chain (environment, web identity, instance metadata).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Endpoint of a non-AWS store (SeaweedFS, MinIO, Ceph), for example `http://s3.storage:8333`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region; `us-east-1` when neither this nor the AWS chain says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); the default with a custom endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// Secret with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, given to every worker (and
    /// read by the operator to fetch step results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

/// One corpus source.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// Source name, unique in the SourceGroup; it names output paths and status entries.
    #[schemars(length(min = 1, max = 63), pattern(super::DNS_LABEL_PATTERN))]
    #[x_kube(validation = Rule::new(super::DNS_LABEL_RULE).message(super::DNS_LABEL_MESSAGE))]
    pub name: String,
    /// A shard file, or a prefix (directory) holding shards: `s3://bucket/prefix/` or a path.
    #[schemars(length(min = 1, max = super::MAX_URI))]
    pub uri: String,
    /// Shard format; by default each shard's extension decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// How records carry their text and id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextSpec>,
    /// Use only this fraction of the source's shards, for a pilot run: the shards whose name
    /// hashes below it (at least one), the same on every stage and every rerun, and a subset of
    /// those a larger fraction picks. Absent: every shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0").message("shardFraction must be in (0, 1]"))]
    pub shard_fraction: Option<f64>,
}

/// How sources form groups: `k` clusters, the best `k` up to `maxK`, or explicit `groups`.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("!(has(self.k) && has(self.groups))").message("set k or groups, not both"))]
#[serde(rename_all = "camelCase")]
pub struct GroupingSpec {
    /// Number of groups. When absent, the best by silhouette in 2..=maxK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = super::MAX_GROUPS))]
    pub k: Option<u32>,
    /// Largest number of groups tried when `k` is absent. Default 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = super::MAX_GROUPS))]
    pub max_k: Option<u32>,
    /// Records sampled per source for its content vector. Default 2000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub sample_per_source: Option<u32>,
    /// Explicit groups: no clustering (similarities are still reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = super::MAX_GROUPS))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub groups: Option<Vec<GroupSpec>>,
    /// Seed of sampling and clustering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The features whose per-source means are clustered: hashed n-grams by default, or an
    /// embedding model's vectors (better at telling code, math and agent traces apart; give the
    /// cluster Job a GPU).
    #[serde(default)]
    pub featurizer: FeaturizerSpec,
}

/// An explicit group.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupSpec {
    /// Group name; it names Jobs, output paths and status entries.
    #[schemars(length(min = 1, max = 63), pattern(super::DNS_LABEL_PATTERN))]
    #[x_kube(validation = Rule::new(super::DNS_LABEL_RULE).message(super::DNS_LABEL_MESSAGE))]
    pub name: String,
    /// Names of the group's sources.
    #[schemars(length(min = 1, max = super::MAX_SOURCES))]
    pub sources: Vec<String>,
}

/// What clustering found.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceGroupStatus {
    #[serde(flatten)]
    pub pipeline: PipelineStatus,
    /// The capability groups and their sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = super::MAX_GROUPS))]
    pub groups: Vec<GroupDef>,
    /// Per source: its group, size, sample, and the source its content is closest to. The whole
    /// source-by-source similarity matrix grows with the square of the sources: it is in the
    /// cluster stage's result on storage (`similarity`) and in the run report, not here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = super::MAX_SOURCES))]
    pub sources: Vec<SourceStatus>,
    /// The cluster stage's result, which holds the sources' similarity matrix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similarity: Option<String>,
    /// Silhouette of the grouping (-1..1; higher is better separated; rounded to 3 decimals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silhouette: Option<f64>,
    /// How many groups there are (the `Groups` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_count: Option<u32>,
}

/// One source as clustering saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// Source name.
    pub name: String,
    /// The group it belongs to; absent when no explicit group lists it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Shards found.
    pub shards: u64,
    /// Bytes in its shards.
    pub bytes: u64,
    /// Records sampled for its content vector.
    pub sampled_records: u64,
    /// Sampled records skipped as malformed.
    pub skipped_records: u64,
    /// The other source whose content vector is closest to this one's; absent for a lone source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nearest: Option<NearestSource>,
}

/// A source's nearest neighbour by content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NearestSource {
    /// Its name.
    pub source: String,
    /// Cosine similarity of the two content vectors (rounded to 3 decimals); a source whose
    /// nearest neighbour is in another group sits between groups.
    pub similarity: f64,
}
