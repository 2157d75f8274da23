//! Stage plans (what the operator writes into a ConfigMap and a step reads) and step results
//! (what a step writes back and the operator reads into status). All JSON, camelCase.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::featurize::FeaturizerSpec;
use crate::formats::Format;
use crate::histogram::{Cut, Histogram};
use crate::records::{SkipCounts, TextSpec};
use crate::storage::StorageConfig;

/// One corpus source: where its shards are and how to read them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    pub name: String,
    /// A shard file, or a prefix (directory) holding shards.
    pub uri: String,
    /// Shard format; by default each shard's extension decides.
    #[serde(default)]
    pub format: Option<Format>,
    #[serde(default)]
    pub text: TextSpec,
}

/// A capability group: a name and its sources.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GroupDef {
    pub name: String,
    pub sources: Vec<String>,
}

/// Limits on reading records.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ReadLimits {
    pub batch_size: usize,
    pub max_record_bytes: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits { batch_size: 512, max_record_bytes: 16 << 20 }
    }
}

impl From<ReadLimits> for crate::formats::ReadOptions {
    fn from(l: ReadLimits) -> Self {
        crate::formats::ReadOptions { batch_size: l.batch_size.max(1), max_record_bytes: l.max_record_bytes, parquet_as_json: true }
    }
}

/// The integer scale teachers score on, and students predict within.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Scale {
    pub min: i32,
    pub max: i32,
}

impl Default for Scale {
    fn default() -> Self {
        Scale { min: 1, max: 5 }
    }
}

// ---- cluster ----

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPlan {
    #[serde(default)]
    pub storage: StorageConfig,
    pub output: String,
    pub sources: Vec<Source>,
    #[serde(default)]
    pub featurizer: FeaturizerSpec,
    /// Records sampled per source for its mean vector.
    #[serde(default = "default_sample")]
    pub sample_per_source: usize,
    /// Number of groups; chosen by silhouette over 2..=maxK when absent.
    #[serde(default)]
    pub k: Option<usize>,
    #[serde(default = "default_max_k")]
    pub max_k: usize,
    /// Explicit groups: no clustering, similarities still reported.
    #[serde(default)]
    pub groups: Option<Vec<GroupDef>>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub read: ReadLimits,
}

fn default_sample() -> usize {
    2000
}

fn default_max_k() -> usize {
    8
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceSample {
    pub name: String,
    pub shards: usize,
    pub bytes: u64,
    pub sampled_records: usize,
    pub skipped: SkipCounts,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterResult {
    pub groups: Vec<GroupDef>,
    /// Source names, in the order of the similarity matrix.
    pub sources: Vec<SourceSample>,
    /// Cosine similarity of the sources' mean feature vectors.
    pub similarity: Vec<Vec<f64>>,
    pub silhouette: f64,
}

// ---- models (teacher, students) ----

/// A model a step runs: in-process through mistral.rs, or behind an OpenAI-compatible endpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum ModelSpec {
    /// A local model directory (safetensors + tokenizer) or GGUF file; an `s3://` prefix is
    /// downloaded to the scratch cache first.
    #[serde(rename_all = "camelCase")]
    Local {
        uri: String,
        /// GGUF file names inside `uri`, for quantised models.
        #[serde(default)]
        gguf_files: Vec<String>,
        /// Sequences batched together.
        #[serde(default)]
        max_num_seqs: Option<usize>,
    },
    /// An OpenAI-compatible `/v1/chat/completions` server (vLLM, SGLang, mistral.rs, hosted).
    #[serde(rename_all = "camelCase")]
    Endpoint {
        url: String,
        model: String,
        /// Environment variable holding the API key (from a Secret in a Job).
        #[serde(default)]
        api_key_env: Option<String>,
        #[serde(default)]
        max_concurrency: Option<usize>,
    },
}

// ---- discover ----

/// A group and its sources, as `discover` and `select` take them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GroupSources {
    pub name: String,
    pub sources: Vec<Source>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DiscoverPlan {
    #[serde(default)]
    pub storage: StorageConfig,
    pub output: String,
    pub groups: Vec<GroupSources>,
    pub teacher: ModelSpec,
    /// Embeds proposals for clustering; the hashed featurizer when absent.
    #[serde(default)]
    pub embedder: Option<ModelSpec>,
    #[serde(default = "default_discovery_records")]
    pub records_per_group: usize,
    #[serde(default = "default_dimensions")]
    pub dimensions_per_group: usize,
    /// Proposal clusters backed by fewer records are dropped.
    #[serde(default = "default_min_support")]
    pub min_support: usize,
    #[serde(default)]
    pub scale: Scale,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub read: ReadLimits,
}

fn default_discovery_records() -> usize {
    64
}

fn default_dimensions() -> usize {
    15
}

fn default_min_support() -> usize {
    2
}

/// An anchored rubric dimension.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnchoredDimension {
    #[serde(flatten)]
    pub dimension: DimensionRef,
    /// Records whose proposals fell in this dimension's cluster.
    pub support: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GroupRubric {
    pub name: String,
    pub dimensions: Vec<AnchoredDimension>,
    /// The proposals behind the anchors (JSONL).
    pub proposals: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DiscoverResult {
    pub groups: Vec<GroupRubric>,
}

// ---- label ----

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LabelGroup {
    pub name: String,
    pub sources: Vec<Source>,
    pub dimensions: Vec<DimensionRef>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LabelPlan {
    #[serde(default)]
    pub storage: StorageConfig,
    pub output: String,
    pub groups: Vec<LabelGroup>,
    pub teacher: ModelSpec,
    #[serde(default = "default_label_records")]
    pub records_per_group: usize,
    #[serde(default)]
    pub scale: Scale,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub read: ReadLimits,
}

fn default_label_records() -> usize {
    2000
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LabelResult {
    /// Prefix of the label files, as `distill` reads them.
    pub labels: String,
    pub labelled: BTreeMap<String, u64>,
    pub skipped: SkipCounts,
}

// ---- distill ----

/// A rubric dimension a student learns.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DimensionRef {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// How to score it: what each end of the scale means.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub guide: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DistillGroup {
    pub name: String,
    pub sources: Vec<String>,
    pub dimensions: Vec<DimensionRef>,
}

/// When a (source, dimension) is unreliable and masked out of the aggregate.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct MaskPolicy {
    /// Masked when Spearman correlation with the teacher is below this (or undefined).
    pub min_spearman: f64,
    /// Masked when the mean absolute error is above this.
    pub max_mae: f64,
    /// Masked when fewer validation records than this back the estimate.
    pub min_validation: usize,
}

impl Default for MaskPolicy {
    fn default() -> Self {
        MaskPolicy { min_spearman: 0.3, max_mae: 1.5, min_validation: 10 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DistillPlan {
    #[serde(default)]
    pub storage: StorageConfig,
    pub output: String,
    pub groups: Vec<DistillGroup>,
    /// Label file or prefix (JSONL, optionally compressed; see [`crate::steps::distill`]).
    pub labels: String,
    #[serde(default)]
    pub featurizer: FeaturizerSpec,
    #[serde(default)]
    pub scale: Scale,
    /// Fraction of records (by id hash) held out for validation.
    #[serde(default = "default_validation")]
    pub validation_fraction: f64,
    #[serde(default)]
    pub split_seed: u64,
    /// Ridge strengths to choose from (leave-one-out error); defaults when empty.
    #[serde(default)]
    pub lambdas: Vec<f64>,
    /// Training records per group, sampled by id hash above this (the dual solve is cubic).
    #[serde(default = "default_max_train")]
    pub max_train_records: usize,
    #[serde(default)]
    pub mask: MaskPolicy,
    /// Also write the labels as chat-format SFT data for training an LLM judge.
    #[serde(default = "default_true")]
    pub export_sft: bool,
    /// An LLM judge as the student (fine-tuned elsewhere, for example on the SFT export): no
    /// heads are trained; the judge is validated and masked like any student.
    #[serde(default)]
    pub judge: Option<ModelSpec>,
}

fn default_validation() -> f64 {
    0.2
}

fn default_max_train() -> usize {
    3000
}

fn default_true() -> bool {
    true
}

/// Teacher-student agreement for one (source, dimension) on the validation split.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Agreement {
    pub source: String,
    pub dimension: String,
    pub n: usize,
    pub mae: f64,
    pub spearman: Option<f64>,
    pub masked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StudentReport {
    pub group: String,
    pub student: String,
    pub train_records: usize,
    pub validation_records: usize,
    pub lambdas: BTreeMap<String, f64>,
    pub agreement: Vec<Agreement>,
    /// Masked dimensions per source.
    pub masked: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DistillResult {
    pub students: Vec<StudentReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sft: Option<String>,
    pub skipped_labels: SkipCounts,
}

// ---- score ----

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScoreGroup {
    pub name: String,
    pub sources: Vec<Source>,
    /// The student artefact written by `distill`.
    pub student: String,
}

/// How tokens are counted for budgets.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum TokenCounter {
    /// Whitespace-separated words.
    #[default]
    Whitespace,
    /// A `tokenizer.json` (Hugging Face tokenizers), local or on S3.
    Tokenizer { uri: String },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScorePlan {
    #[serde(default)]
    pub storage: StorageConfig,
    pub output: String,
    pub groups: Vec<ScoreGroup>,
    #[serde(default)]
    pub tokens: TokenCounter,
    /// Fraction trimmed from each end of a record's unmasked dimension scores.
    #[serde(default = "default_trim")]
    pub trim: f64,
    #[serde(default = "default_bins")]
    pub histogram_bins: usize,
    #[serde(default)]
    pub read: ReadLimits,
}

fn default_trim() -> f64 {
    0.1
}

fn default_bins() -> usize {
    10_000
}

/// One scored shard.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScoredShard {
    pub group: String,
    pub source: String,
    pub shard: String,
    pub scores: String,
    pub records: u64,
    pub tokens: u64,
    pub skipped: SkipCounts,
    pub histogram: Histogram,
}

/// Totals of one group or source.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScoreTotals {
    pub group: String,
    /// Absent for a group's totals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub shards: usize,
    pub records: u64,
    pub tokens: u64,
    pub skipped: SkipCounts,
    pub histogram: Histogram,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScoreResult {
    pub groups: Vec<ScoreTotals>,
    pub sources: Vec<ScoreTotals>,
    /// Masked dimensions per group and source, as the students applied them.
    pub masked: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

// ---- threshold ----

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum CutPolicy {
    /// One cut per group at its own retention (the default: keeps every capability).
    #[default]
    Group,
    /// One cut over all tokens.
    Global,
    /// One cut per source.
    Source,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ThresholdPlan {
    #[serde(default)]
    pub storage: StorageConfig,
    pub output: String,
    /// The `score` steps' output roots (one per group when groups are scored by separate Jobs);
    /// their totals are merged.
    pub scores: Vec<String>,
    #[serde(default)]
    pub policy: CutPolicy,
    /// Fraction of tokens kept, in (0, 1].
    pub retention: f64,
    /// Per-group retention overrides (group policy only).
    #[serde(default)]
    pub group_retention: BTreeMap<String, f64>,
}

/// One cut and what it applies to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScopedCut {
    /// `global`, a group name, or `group/source`.
    pub scope: String,
    pub retention: f64,
    #[serde(flatten)]
    pub cut: Cut,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ThresholdResult {
    pub policy: CutPolicy,
    pub cuts: Vec<ScopedCut>,
}

// ---- select ----

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SelectPlan {
    #[serde(default)]
    pub storage: StorageConfig,
    pub output: String,
    pub groups: Vec<GroupSources>,
    /// The `score` step's output root.
    pub score: String,
    /// The `threshold` step's output root.
    pub threshold: String,
    #[serde(default)]
    pub read: ReadLimits,
}

/// Kept and total counts.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Kept {
    pub kept_records: u64,
    pub total_records: u64,
    pub kept_tokens: u64,
    pub total_tokens: u64,
}

impl Kept {
    pub fn add(&mut self, other: &Kept) {
        self.kept_records += other.kept_records;
        self.total_records += other.total_records;
        self.kept_tokens += other.kept_tokens;
        self.total_tokens += other.total_tokens;
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SelectedShard {
    pub group: String,
    pub source: String,
    pub shard: String,
    /// The kept records' shard; absent when nothing was written (an empty Parquet input).
    pub output: Option<String>,
    #[serde(flatten)]
    pub kept: Kept,
}

/// The selection's manifest, written as `manifest.json` under the output root.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub total: Kept,
    pub groups: BTreeMap<String, Kept>,
    /// Keyed `group/source`.
    pub sources: BTreeMap<String, Kept>,
    pub thresholds: ThresholdResult,
    pub masked: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    pub shards: Vec<SelectedShard>,
}
