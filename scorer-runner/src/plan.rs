//! The vocabulary shared by the operator and the data plane, defined once: the steps, stage plans
//! (what the operator writes into a ConfigMap and a step reads) and step results (what a step
//! writes back and the operator reads into status). All JSON, camelCase.
//!
//! With the `schema` feature the types that the operator's API embeds also derive `JsonSchema`,
//! so their doc comments are the `kubectl explain` text of those fields: they are written for
//! users.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::histogram::{Cut, Histogram};
use crate::length::{LengthDecile, LengthSample};

/// Most sources a SourceGroup may list (its status keeps a line per source).
pub const MAX_SOURCES: u32 = 512;
/// Most capability groups, and so most per-group entries in any status list.
pub const MAX_GROUPS: u32 = 100;
/// Most rubric dimensions per group.
pub const MAX_DIMENSIONS: u32 = 64;
/// Longest field path a `text` spec may give.
pub const MAX_FIELD: usize = 128;

/// A data-plane step: what a stage's Job runs (`scorer-runner <step>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::Subcommand)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum Step {
    /// Group sources into capability groups by content similarity.
    Cluster,
    /// Propose, cluster and anchor rubric dimensions per group with the teacher.
    Discover,
    /// Have the teacher score a sample of records on the anchored dimensions.
    Label,
    /// Train the per-group students from teacher labels; measure agreement; derive the mask.
    Distill,
    /// Score every record with its group's student.
    Score,
    /// Cut the score histograms to the retention target.
    Threshold,
    /// Write the kept records and the manifest.
    Select,
}

impl Step {
    /// The step's name on the `scorer-runner` command line and in labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Cluster => "cluster",
            Step::Discover => "discover",
            Step::Label => "label",
            Step::Distill => "distill",
            Step::Score => "score",
            Step::Threshold => "threshold",
            Step::Select => "select",
        }
    }

    /// The status condition that reports this step's stages.
    pub fn condition_type(self) -> &'static str {
        match self {
            Step::Cluster => "Clustered",
            Step::Discover => "Discovered",
            Step::Label => "Labelled",
            Step::Distill => "Distilled",
            Step::Score => "Scored",
            Step::Threshold => "Thresholded",
            Step::Select => "Selected",
        }
    }
}

// ---- sources and storage ----

/// How to reach S3. Credentials come from the standard AWS chain (environment, profile, web
/// identity, instance metadata) unless both explicit keys are given.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct StorageConfig {
    /// Custom endpoint (SeaweedFS, MinIO, Ceph...). Falls back to `MIRA_S3_ENDPOINT`, then AWS.
    pub endpoint: Option<String>,
    /// Region; falls back to the AWS chain, then `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); the default for custom endpoints.
    pub path_style: Option<bool>,
    /// Explicit access key (prefer the credential chain; for local runs only).
    pub access_key_id: Option<String>,
    /// Explicit secret key, paired with `access_key_id`.
    pub secret_access_key: Option<String>,
    /// Attempts per request, retried with exponential backoff on throttling, 5xx and timeouts.
    pub max_attempts: Option<u32>,
}

/// A shard format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Jsonl,
    #[serde(rename = "jsonl.gz")]
    JsonlGz,
    #[serde(rename = "jsonl.zst")]
    JsonlZst,
    Parquet,
}

impl Format {
    /// The file extension of a shard written in this format. (`Format::from_uri`, which reads a
    /// format off a shard's name, is in [`crate::formats`].)
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::JsonlGz => "jsonl.gz",
            Format::JsonlZst => "jsonl.zst",
            Format::Parquet => "parquet",
        }
    }

    /// Parquet's footer is at the end, so it is read from a local file; JSONL streams.
    pub fn needs_local_file(self) -> bool {
        self == Format::Parquet
    }
}

/// Where a record's text and id are.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TextSpec {
    /// Field holding the text; a dotted path reaches into nested objects. Default `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(max = MAX_FIELD)))]
    pub field: Option<String>,
    /// Field holding a chat or agent-trace `messages` array, rendered to text whole (never
    /// truncated). Takes precedence over `field`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(max = MAX_FIELD)))]
    pub messages_field: Option<String>,
    /// Field holding the record id (string or number); default: a hash of the text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(max = MAX_FIELD)))]
    pub id_field: Option<String>,
}

/// Skipped records per reason, with the first place each reason was seen.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SkipCounts {
    pub counts: BTreeMap<String, u64>,
    /// `shard#index` of the first record skipped for each reason: the earliest by shard, then by
    /// record, whatever order shards are merged in.
    pub first_seen: BTreeMap<String, String>,
}

impl SkipCounts {
    pub fn add_reason(&mut self, reason: &str, shard: &str, index: u64) {
        *self.counts.entry(reason.to_string()).or_default() += 1;
        self.first_seen.entry(reason.to_string()).or_insert_with(|| format!("{shard}#{index}"));
    }

    pub fn merge(&mut self, other: &SkipCounts) {
        for (reason, n) in &other.counts {
            *self.counts.entry(reason.clone()).or_default() += n;
        }
        for (reason, at) in &other.first_seen {
            match self.first_seen.get_mut(reason) {
                Some(seen) if place(seen) <= place(at) => {}
                Some(seen) => seen.clone_from(at),
                None => {
                    self.first_seen.insert(reason.clone(), at.clone());
                }
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// Counts by reason for a message: `invalid_json 3, missing_text 6`.
pub fn skip_reasons(counts: &BTreeMap<String, u64>) -> String {
    counts.iter().map(|(reason, n)| format!("{reason} {n}")).collect::<Vec<_>>().join(", ")
}

fn place(at: &str) -> (&str, u64) {
    match at.rsplit_once('#') {
        Some((shard, index)) => (shard, index.parse().unwrap_or(u64::MAX)),
        None => (at, 0),
    }
}

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
    /// Read only this fraction of the shards (a pilot run); see [`crate::steps::list_shards`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_fraction: Option<f64>,
}

/// A capability group: a name and its sources.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct GroupDef {
    /// Group name.
    pub name: String,
    /// Its sources.
    #[cfg_attr(feature = "schema", schemars(length(max = MAX_SOURCES)))]
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

/// The integer scale teachers score on, and students predict within.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Scale {
    /// Lowest score.
    pub min: i32,
    /// Highest score.
    pub max: i32,
}

impl Default for Scale {
    fn default() -> Self {
        Scale { min: 1, max: 5 }
    }
}

// ---- featurizers ----

/// Which featurizer a step uses, as named in plans and recorded in student artefacts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum FeaturizerSpec {
    /// Signed feature hashing of word (and character) n-grams; needs no model.
    Hashed(HashedSpec),
    /// An embedding model's vectors.
    Embedding { model: ModelSpec },
}

impl Default for FeaturizerSpec {
    fn default() -> Self {
        FeaturizerSpec::Hashed(HashedSpec::default())
    }
}

/// The hashed featurizer's settings ([`crate::featurize::HashedFeaturizer`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HashedSpec {
    /// log2 of the dimension (18 gives 262,144 buckets: few collisions, 1 MiB per head).
    pub dim_log2: u32,
    /// Word n-grams from 1 to this (2: unigrams and bigrams).
    pub word_ngrams: u32,
    /// Character n-gram lengths `[min, max]` over the lower-cased text; none by default.
    pub char_ngrams: Option<[u32; 2]>,
    /// Weight terms by `1 + ln(tf)` rather than raw counts.
    pub sublinear_tf: bool,
    /// Multiply by inverse document frequency learnt from the training records.
    pub idf: bool,
    /// Hash seed.
    pub seed: u64,
}

impl Default for HashedSpec {
    fn default() -> Self {
        HashedSpec { dim_log2: 18, word_ngrams: 2, char_ngrams: None, sublinear_tf: true, idf: false, seed: 0 }
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
    #[serde(default = "defaults::sample_per_source")]
    pub sample_per_source: usize,
    /// Number of groups; chosen by silhouette over 2..=maxK when absent.
    #[serde(default)]
    pub k: Option<usize>,
    #[serde(default = "defaults::max_k")]
    pub max_k: usize,
    /// Explicit groups: no clustering, similarities still reported.
    #[serde(default)]
    pub groups: Option<Vec<GroupDef>>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub read: ReadLimits,
}

/// What `cluster` read of one source to place it in a group.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceSample {
    pub name: String,
    /// Shards listed under the source's URI (the whole source, not only those sampled).
    pub shards: usize,
    /// Their total size as stored.
    pub bytes: u64,
    /// Records whose features went into the source's mean vector.
    pub sampled_records: usize,
    /// Records of the sample that could not be read, by reason.
    pub skipped: SkipCounts,
}

/// The capability groups and the evidence behind them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterResult {
    /// The groups: clustered, or as the plan gave them.
    pub groups: Vec<GroupDef>,
    /// The sources, in the order of the similarity matrix.
    pub sources: Vec<SourceSample>,
    /// Cosine similarity of the sources' mean feature vectors.
    pub similarity: Vec<Vec<f64>>,
    /// Mean silhouette of the grouping on those similarities (-1 to 1; higher is better
    /// separated).
    pub silhouette: f64,
}

impl ClusterResult {
    /// The group a source belongs to, if any lists it.
    pub fn group_of(&self, source: &str) -> Option<&GroupDef> {
        self.groups.iter().find(|g| g.sources.iter().any(|s| s == source))
    }
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

/// The `url` of every endpoint model spec in a serialized plan (its teacher, embedder, judge,
/// wherever it names one): what the operator checks against its allowed endpoint hosts.
pub fn endpoint_urls(plan: &serde_json::Value) -> Vec<String> {
    let mut urls = Vec::new();
    let mut stack = vec![plan];
    while let Some(value) = stack.pop() {
        match value {
            serde_json::Value::Object(map) => {
                if map.get("kind").and_then(|k| k.as_str()) == Some("endpoint") {
                    urls.extend(map.get("url").and_then(|u| u.as_str()).map(str::to_string));
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    urls
}

/// How a step puts sampled records to the teacher: the model, the score scale, the sample's seed
/// and the read limits. Discover and label share it (flattened into their plans' JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TeacherPass {
    pub teacher: ModelSpec,
    #[serde(default)]
    pub scale: Scale,
    /// Seeds the sample, so that a rerun asks the teacher about the same records.
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub read: ReadLimits,
    /// The most tokens of a record the teacher reads (its tokenizer's, where it has one); a
    /// longer record is cut head plus tail, and the cut is recorded with its label.
    #[serde(default = "defaults::max_record_tokens")]
    pub max_record_tokens: usize,
}

impl TeacherPass {
    pub fn new(teacher: ModelSpec) -> Self {
        TeacherPass {
            teacher,
            scale: Scale::default(),
            seed: 0,
            read: ReadLimits::default(),
            max_record_tokens: defaults::max_record_tokens(),
        }
    }
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
    #[serde(flatten)]
    pub pass: TeacherPass,
    /// Embeds proposals for clustering; the hashed featurizer when absent.
    #[serde(default)]
    pub embedder: Option<ModelSpec>,
    #[serde(default = "defaults::discovery_records_per_group")]
    pub records_per_group: usize,
    #[serde(default = "defaults::dimensions_per_group")]
    pub dimensions_per_group: usize,
    /// Proposal clusters backed by fewer records are dropped.
    #[serde(default = "defaults::min_support")]
    pub min_support: usize,
}

/// A dimension and the records behind it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct AnchoredDimension {
    #[serde(flatten)]
    pub dimension: Dimension,
    /// Records whose proposals fell in this dimension's cluster (discovered dimensions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub support: Option<u64>,
}

/// One group's rubric.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct GroupRubric {
    /// The group.
    pub name: String,
    /// Whether the dimensions were pinned in the spec rather than discovered.
    #[serde(default)]
    pub pinned: bool,
    /// Its dimensions.
    #[cfg_attr(feature = "schema", schemars(length(max = MAX_DIMENSIONS)))]
    pub dimensions: Vec<AnchoredDimension>,
    /// The teacher's proposals behind the anchors (JSONL), when discovered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposals: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DiscoverResult {
    pub groups: Vec<GroupRubric>,
}

/// The rubrics a label or distill plan names by reference: the discovered groups' anchors are
/// read from the discover stage's result, the pinned groups' dimensions come inline (they are the
/// RubricSet's own spec). The rubrics' text grows with groups times dimensions, so no object in
/// etcd holds it: the RubricSet's status keeps counts, the result's URI and this digest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RubricsRef {
    /// The `discover` stage's result, which holds the discovered groups' anchors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovered: Option<String>,
    /// The groups whose dimensions are pinned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pinned: Vec<GroupRubric>,
    /// [`rubrics_digest`] of every group's rubric as the operator summarised it: rubrics that
    /// differ when the step reads them are refused.
    pub sha256: String,
}

/// The SHA-256 of a set of group rubrics, whatever their order.
pub fn rubrics_digest(groups: &[GroupRubric]) -> String {
    let mut sorted: Vec<&GroupRubric> = groups.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sha256_hex(&serde_json::to_vec(&sorted).expect("rubrics serialize to JSON"))
}

// ---- label ----

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LabelGroup {
    pub name: String,
    pub sources: Vec<Source>,
    /// Inline, or filled in from the plan's `rubrics`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dimensions: Vec<Dimension>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LabelPlan {
    #[serde(default)]
    pub storage: StorageConfig,
    pub output: String,
    pub groups: Vec<LabelGroup>,
    /// The groups' dimensions by reference (what the operator writes), instead of inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rubrics: Option<RubricsRef>,
    #[serde(flatten)]
    pub pass: TeacherPass,
    #[serde(default = "defaults::label_records_per_group")]
    pub records_per_group: usize,
    /// Records a work unit labels and commits together: a killed Job loses the teacher calls of
    /// its units in flight, no more.
    #[serde(default = "defaults::label_records_per_unit")]
    pub records_per_unit: usize,
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

/// A rubric dimension.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Dimension {
    /// Stable identifier, used in scores and masks.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 63)))]
    pub id: String,
    /// Short name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// What the dimension measures.
    #[serde(default, skip_serializing_if = "String::is_empty")]
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
    /// Inline, or filled in from the plan's `rubrics`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dimensions: Vec<Dimension>,
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
    /// The groups' dimensions by reference (what the operator writes), instead of inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rubrics: Option<RubricsRef>,
    /// Label file or prefix (JSONL, optionally compressed; see [`crate::steps::distill`]).
    pub labels: String,
    #[serde(default)]
    pub featurizer: FeaturizerSpec,
    #[serde(default)]
    pub scale: Scale,
    /// Fraction of records (by id hash) held out for validation.
    #[serde(default = "defaults::validation_fraction")]
    pub validation_fraction: f64,
    #[serde(default)]
    pub split_seed: u64,
    /// Ridge strengths to choose from (leave-one-out error); defaults when empty.
    #[serde(default)]
    pub lambdas: Vec<f64>,
    /// Training records per group, sampled by id hash above this (the dual solve is cubic).
    #[serde(default = "defaults::max_train_records")]
    pub max_train_records: usize,
    #[serde(default)]
    pub mask: MaskPolicy,
    /// Also write the labels as chat-format SFT data for training an LLM judge.
    #[serde(default = "defaults::export_sft")]
    pub export_sft: bool,
    /// An LLM judge as the student (fine-tuned elsewhere, for example on the SFT export): no
    /// heads are trained; the judge is validated and masked like any student.
    #[serde(default)]
    pub judge: Option<ModelSpec>,
    /// The most tokens of a record a judge student reads: the teacher's, so that the student
    /// sees what the teacher saw. A longer record is cut head plus tail, never skipped.
    #[serde(default = "defaults::max_record_tokens")]
    pub max_record_tokens: usize,
}

/// Agreement of teacher and student on one (source, dimension), on the held-out records.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Agreement {
    /// The source.
    pub source: String,
    /// The dimension id.
    pub dimension: String,
    /// Held-out records behind the numbers. (Not `n`: YAML 1.1 parsers, kubectl's and Helm's among
    /// them, read a bare `n` as `false`; results written before the rename still read.)
    #[serde(alias = "n")]
    pub records: u64,
    /// Mean absolute error.
    pub mae: f64,
    /// Spearman rank correlation; absent when undefined (constant scores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spearman: Option<f64>,
    /// Whether the mask leaves this (source, dimension) out of record scores.
    pub masked: bool,
    /// Why it is masked.
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
    /// What ranks the group's records.
    pub ranker: RankerSpec,
}

/// What ranks a group's records in `score`: its student (the MIRA method), or one of the
/// baseline selectors MIRA is compared with. See [`crate::rankers`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum RankerSpec {
    /// The student artefact written by `distill`.
    Student(String),
    /// A seeded hash of each record's id: a uniform draw, which keeps each source's share of
    /// the tokens in expectation (exactly, cut per source).
    Random,
    /// Importance resampling toward a target sample (DSIR).
    Dsir(DsirSpec),
    /// Perplexity filtering: each record's mean log-probability per token under a reference
    /// language model.
    Perplexity(PerplexitySpec),
}

/// Perplexity filtering (as in Wenzek et al. 2020, CCNet, and the perplexity baselines the MIRA
/// paper compares with): records of lower perplexity under a reference model rank higher.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PerplexitySpec {
    /// The reference language model, in-process (a local directory or GGUF files).
    pub model: ModelSpec,
    /// Tokens of each record scored, from its beginning: a mean per token needs no more than a
    /// window, and the worker holds a record's logits, tokens x vocabulary floats.
    #[serde(default = "defaults::max_record_tokens")]
    pub max_tokens: usize,
}

/// DSIR (Xie et al. 2023): importance weights of hashed word unigrams and bigrams between a
/// target sample and the group's raw records, and a Gumbel top-k draw on their logarithm.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DsirSpec {
    /// The records the selection should resemble (for example a high-quality reference set).
    pub target: Source,
    /// Records sampled from the target, and from each source of the group, to estimate the
    /// two n-gram distributions.
    #[serde(default = "defaults::dsir_sample")]
    pub sample: usize,
    /// log2 of the number of hashed n-gram buckets (the paper uses 10,000; 14 gives 16,384).
    #[serde(default = "defaults::dsir_dim_log2")]
    pub dim_log2: u32,
}

impl PerplexitySpec {
    pub fn new(model: ModelSpec) -> Self {
        PerplexitySpec { model, max_tokens: defaults::max_record_tokens() }
    }
}

impl DsirSpec {
    pub fn new(target: Source) -> Self {
        DsirSpec { target, sample: defaults::dsir_sample(), dim_log2: defaults::dsir_dim_log2() }
    }
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
    #[serde(default = "defaults::trim")]
    pub trim: f64,
    #[serde(default = "defaults::histogram_bins")]
    pub histogram_bins: usize,
    #[serde(default)]
    pub read: ReadLimits,
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
    /// A uniform sample of its records' tokens and scores.
    #[serde(default)]
    pub length: LengthSample,
}

/// What scoring the corpus found, for the threshold step and the FilterRun's status.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScoreResult {
    /// One per group.
    pub groups: Vec<ScoreTotals>,
    /// One per (group, source).
    pub sources: Vec<ScoreTotals>,
    /// Masked dimensions per group and source, as the students applied them.
    pub masked: BTreeMap<String, BTreeMap<String, Vec<String>>>,
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
    /// Records scored.
    pub records: u64,
    /// Their tokens, as the plan counts them.
    pub tokens: u64,
    /// Records that could not be read or scored, by reason.
    pub skipped: SkipCounts,
    /// Tokens per aggregate score: what the threshold step cuts.
    pub histogram: Histogram,
    /// A uniform sample of the records' tokens and scores (sources only; empty for groups).
    #[serde(default, skip_serializing_if = "LengthSample::is_empty")]
    pub length: LengthSample,
    /// Rank correlation of aggregate score with length over that sample (sources only); near
    /// zero when the scores do not follow length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length_correlation: Option<f64>,
    /// The student's mask drops every dimension of this source (sources only): each record has
    /// the scale's midpoint as its aggregate, and the threshold step cuts the source on its own,
    /// by the seeded draw.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unranked: bool,
}

// ---- threshold ----

/// Where retention cuts are made.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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

/// A retention cut and what it applies to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ScopedCut {
    /// `global`, the group, or `group/source`.
    pub scope: String,
    /// Target fraction of tokens.
    pub retention: f64,
    /// Tokens of the records skipped at scoring (malformed, unreadable), estimated at their
    /// source's mean tokens per scored record. They count in the target, which is `retention`
    /// of scored plus skipped tokens, all taken from the scored records: a source that skips a
    /// tenth of its records does not shrink its budget by a tenth.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped_tokens: u64,
    #[serde(flatten)]
    pub cut: Cut,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ScopedCut {
    /// Whether the cut applies to records of `group`: the global cut, the group's, or one of
    /// its sources'.
    pub fn applies_to(&self, group: &str) -> bool {
        self.scope == "global"
            || self.scope == group
            || self.scope.strip_prefix(group).is_some_and(|rest| rest.starts_with('/'))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ThresholdResult {
    pub policy: CutPolicy,
    pub cuts: Vec<ScopedCut>,
    /// Per source: whether its scores, and its cut, follow length.
    #[serde(default)]
    pub lengths: Vec<SourceLength>,
}

/// Whether a source's scores and cut follow its records' length, from a uniform sample.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct SourceLength {
    /// The source's group.
    pub group: String,
    /// The source.
    pub source: String,
    /// Records sampled.
    pub sampled: u64,
    /// Rank correlation of aggregate score with tokens (so with log tokens); near zero when
    /// the scores do not follow length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank_correlation: Option<f64>,
    /// The share of tokens kept in each tenth of the sample by length, shortest first: near the
    /// retention everywhere when the cut does not follow length.
    #[cfg_attr(feature = "schema", schemars(length(max = 10)))]
    pub deciles: Vec<LengthDecile>,
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

/// Kept and total records and tokens.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Kept {
    /// Records kept.
    pub kept_records: u64,
    /// Records read.
    pub total_records: u64,
    /// Tokens kept.
    pub kept_tokens: u64,
    /// Tokens read.
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
    /// The shard's part of its group's comparison sample (see [`Manifest::samples`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sample: Vec<SampledRecord>,
}

/// A record of a comparison sample, and what the selection made of it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SampledRecord {
    /// Its tie-draw key, a hash of its id: the same in every selection of the corpus.
    pub key: u64,
    pub aggregate: f32,
    pub tokens: u64,
    pub kept: bool,
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
    /// Per group, the scored records with the smallest keys (a hash of the id): a uniform
    /// sample, and the same records in every selection of the corpus, whatever its method. Two
    /// selections compare on it (kept-set overlap, score correlation) without reading either's
    /// records again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub samples: BTreeMap<String, Vec<SampledRecord>>,
}

/// The defaults of the plans' optional settings: what a plan file that leaves a field out gets,
/// and what the plans' constructors start from.
pub(crate) mod defaults {
    pub fn dsir_sample() -> usize {
        20_000
    }

    pub fn dsir_dim_log2() -> u32 {
        14
    }

    pub fn sample_per_source() -> usize {
        2000
    }

    pub fn max_k() -> usize {
        8
    }

    pub fn discovery_records_per_group() -> usize {
        64
    }

    pub fn dimensions_per_group() -> usize {
        15
    }

    pub fn min_support() -> usize {
        2
    }

    pub fn label_records_per_group() -> usize {
        2000
    }

    pub fn label_records_per_unit() -> usize {
        1000
    }

    pub fn max_record_tokens() -> usize {
        2048
    }

    pub fn validation_fraction() -> f64 {
        0.2
    }

    pub fn max_train_records() -> usize {
        200_000
    }

    pub fn export_sft() -> bool {
        true
    }

    pub fn trim() -> f64 {
        0.1
    }

    pub fn histogram_bins() -> usize {
        10_000
    }
}

// ---- plans with their defaults ----
//
// Each plan's constructor takes what the plan cannot do without and gives every other field the
// default a plan file that leaves the field out gets (the `serde(default = ...)` functions
// above), so a builder starts from the same defaults a step reads. A test checks that the two
// agree.

impl ClusterPlan {
    pub fn new(sources: Vec<Source>) -> Self {
        ClusterPlan {
            storage: StorageConfig::default(),
            output: String::new(),
            sources,
            featurizer: FeaturizerSpec::default(),
            sample_per_source: defaults::sample_per_source(),
            k: None,
            max_k: defaults::max_k(),
            groups: None,
            seed: 0,
            read: ReadLimits::default(),
        }
    }
}

impl DiscoverPlan {
    pub fn new(groups: Vec<GroupSources>, teacher: ModelSpec) -> Self {
        DiscoverPlan {
            storage: StorageConfig::default(),
            output: String::new(),
            groups,
            pass: TeacherPass::new(teacher),
            embedder: None,
            records_per_group: defaults::discovery_records_per_group(),
            dimensions_per_group: defaults::dimensions_per_group(),
            min_support: defaults::min_support(),
        }
    }
}

impl LabelPlan {
    pub fn new(groups: Vec<LabelGroup>, teacher: ModelSpec) -> Self {
        LabelPlan {
            storage: StorageConfig::default(),
            output: String::new(),
            groups,
            rubrics: None,
            pass: TeacherPass::new(teacher),
            records_per_group: defaults::label_records_per_group(),
            records_per_unit: defaults::label_records_per_unit(),
        }
    }
}

impl DistillPlan {
    pub fn new(groups: Vec<DistillGroup>, labels: String) -> Self {
        DistillPlan {
            storage: StorageConfig::default(),
            output: String::new(),
            groups,
            rubrics: None,
            labels,
            featurizer: FeaturizerSpec::default(),
            scale: Scale::default(),
            validation_fraction: defaults::validation_fraction(),
            split_seed: 0,
            lambdas: Vec::new(),
            max_train_records: defaults::max_train_records(),
            mask: MaskPolicy::default(),
            export_sft: defaults::export_sft(),
            judge: None,
            max_record_tokens: defaults::max_record_tokens(),
        }
    }
}

impl ScorePlan {
    pub fn new(groups: Vec<ScoreGroup>) -> Self {
        ScorePlan {
            storage: StorageConfig::default(),
            output: String::new(),
            groups,
            tokens: TokenCounter::default(),
            trim: defaults::trim(),
            histogram_bins: defaults::histogram_bins(),
            read: ReadLimits::default(),
        }
    }
}

impl ThresholdPlan {
    pub fn new(scores: Vec<String>, retention: f64) -> Self {
        ThresholdPlan {
            storage: StorageConfig::default(),
            output: String::new(),
            scores,
            policy: CutPolicy::default(),
            retention,
            group_retention: BTreeMap::new(),
        }
    }
}

impl SelectPlan {
    pub fn new(groups: Vec<GroupSources>, score: String, threshold: String) -> Self {
        SelectPlan {
            storage: StorageConfig::default(),
            output: String::new(),
            groups,
            score,
            threshold,
            read: ReadLimits::default(),
        }
    }
}

// ---- plans by reference ----

/// What a stage's plan ConfigMap holds on a cluster: where the plan is on storage and its
/// SHA-256. A plan grows with the sources, groups and rubrics it names; passed by reference, the
/// ConfigMap (an object in etcd) stays a few hundred bytes at any scale, and the plan sits beside
/// the outputs it addresses (`<output root>/_plan.json`, content-addressed like them).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanRef {
    /// The plan object.
    pub plan_uri: String,
    /// Its SHA-256 (hex): a plan changed since the operator wrote it is refused.
    pub sha256: String,
    /// How to reach it (no keys: the worker's environment has its credentials).
    #[serde(default)]
    pub storage: StorageConfig,
}

/// The SHA-256 of some bytes, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

// ---- any step's plan and result ----

/// An enum with one variant per step, its [`Step`] and its parser: the shape [`StepPlan`] and
/// [`StepResult`] share.
macro_rules! step_enum {
    ($(#[$doc:meta])* $name:ident { $($step:ident($ty:ident)),* }) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Serialize)]
        #[serde(untagged)]
        pub enum $name {
            $($step($ty),)*
        }

        impl $name {
            /// The step this belongs to.
            pub fn step(&self) -> Step {
                match self {
                    $($name::$step(_) => Step::$step,)*
                }
            }

            /// Parses the JSON of `step`'s variant.
            pub fn parse(step: Step, json: &[u8]) -> serde_json::Result<Self> {
                match step {
                    $(Step::$step => serde_json::from_slice(json).map($name::$step),)*
                }
            }
        }

        $(
            impl From<$ty> for $name {
                fn from(value: $ty) -> Self {
                    $name::$step(value)
                }
            }
        )*
    };
}

macro_rules! steps {
    ($($step:ident($plan:ident -> $result:ident)),* $(,)?) => {
        step_enum! {
            /// A stage plan, whichever step runs it: what the operator builds and hands a Job, and
            /// what the Job's runner parses back ([`StepPlan::parse`]) and runs.
            StepPlan { $($step($plan)),* }
        }

        step_enum! {
            /// A step's result, whichever step wrote it: what a Job's runner writes under the plan's
            /// output root and the operator parses back ([`StepResult::parse`]) into status.
            StepResult { $($step($result)),* }
        }

        impl StepPlan {
            /// Where the step writes its outputs and its result.
            pub fn output(&self) -> &str {
                match self {
                    $(StepPlan::$step(p) => &p.output,)*
                }
            }

            /// Where the step writes its outputs and its result.
            pub fn output_mut(&mut self) -> &mut String {
                match self {
                    $(StepPlan::$step(p) => &mut p.output,)*
                }
            }

            /// How the step reaches storage.
            pub fn storage(&self) -> &StorageConfig {
                match self {
                    $(StepPlan::$step(p) => &p.storage,)*
                }
            }
        }

        $(
            impl<'a> TryFrom<&'a StepResult> for &'a $result {
                type Error = Step;

                /// The result if `StepResult` is this step's; else the step it is from.
                fn try_from(result: &'a StepResult) -> Result<Self, Step> {
                    match result {
                        StepResult::$step(r) => Ok(r),
                        other => Err(other.step()),
                    }
                }
            }
        )*
    };
}

steps! {
    Cluster(ClusterPlan -> ClusterResult),
    Discover(DiscoverPlan -> DiscoverResult),
    Label(LabelPlan -> LabelResult),
    Distill(DistillPlan -> DistillResult),
    Score(ScorePlan -> ScoreResult),
    Threshold(ThresholdPlan -> ThresholdResult),
    Select(SelectPlan -> Manifest),
}

impl StepResult {
    /// The result without the parts that grow with the corpus and that no plan or status reads:
    /// a score result's histograms and length samples (one per group and source, up to
    /// `histogramBins` bins and a few thousand records each; the threshold step reads them from
    /// storage itself) and a select result's per-shard list.
    /// At 10,000 shards in 20 groups the full results take hundreds of MiB in memory.
    pub fn slim(&mut self) {
        match self {
            StepResult::Score(score) => {
                for totals in score.groups.iter_mut().chain(&mut score.sources) {
                    totals.histogram = Histogram::new(totals.histogram.min, totals.histogram.max, 0);
                    totals.length = LengthSample::default();
                }
            }
            StepResult::Select(manifest) => {
                manifest.shards = Vec::new();
                manifest.samples = BTreeMap::new();
            }
            StepResult::Cluster(_)
            | StepResult::Discover(_)
            | StepResult::Label(_)
            | StepResult::Distill(_)
            | StepResult::Threshold(_) => {}
        }
    }
}

impl StepPlan {
    /// The plan as JSON with every object's keys sorted, whatever the field order in the code:
    /// what a plan's digest (its output address) is computed from, so that reordering fields in
    /// a refactor does not move every output.
    pub fn canonical_json(&self) -> String {
        fn sorted(value: serde_json::Value) -> serde_json::Value {
            match value {
                serde_json::Value::Object(map) => {
                    let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                    serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
                }
                serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(sorted).collect()),
                other => other,
            }
        }
        let value = serde_json::to_value(self).expect("plans serialize to JSON");
        serde_json::to_string(&sorted(value)).expect("JSON values serialize")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn local(uri: &str) -> ModelSpec {
        ModelSpec::Local { uri: uri.into(), gguf_files: Vec::new(), max_num_seqs: None }
    }

    /// A plan built by its constructor, and the same required fields read as a step reads a plan
    /// file, must be the same plan: defaults have one source.
    #[test]
    fn constructors_give_the_defaults_a_plan_file_gets() {
        let source = Source {
            name: "web".into(),
            uri: "/data/web".into(),
            format: None,
            text: TextSpec::default(),
            shard_fraction: None,
        };
        let group = GroupSources { name: "g".into(), sources: vec![source.clone()] };
        let dims =
            vec![Dimension { id: "d".into(), name: String::new(), description: String::new(), guide: String::new() }];
        let label_group = LabelGroup { name: "g".into(), sources: vec![source.clone()], dimensions: dims.clone() };
        let distill_group = DistillGroup { name: "g".into(), sources: vec!["web".into()], dimensions: dims };
        let score_group =
            ScoreGroup { name: "g".into(), sources: vec![source.clone()], ranker: RankerSpec::Student("s".into()) };
        let cases: Vec<(StepPlan, serde_json::Value)> = vec![
            (ClusterPlan::new(vec![source.clone()]).into(), json!({"output": "", "sources": [source]})),
            (
                DiscoverPlan::new(vec![group.clone()], local("m")).into(),
                json!({"output": "", "groups": [group], "teacher": local("m")}),
            ),
            (
                LabelPlan::new(vec![label_group.clone()], local("m")).into(),
                json!({"output": "", "groups": [label_group], "teacher": local("m")}),
            ),
            (
                DistillPlan::new(vec![distill_group.clone()], "l".into()).into(),
                json!({"output": "", "groups": [distill_group], "labels": "l"}),
            ),
            (ScorePlan::new(vec![score_group.clone()]).into(), json!({"output": "", "groups": [score_group]})),
            (
                ThresholdPlan::new(vec!["s".into()], 0.5).into(),
                json!({"output": "", "scores": ["s"], "retention": 0.5}),
            ),
            (
                SelectPlan::new(vec![group.clone()], "s".into(), "t".into()).into(),
                json!({"output": "", "groups": [group], "score": "s", "threshold": "t"}),
            ),
        ];
        for (built, required) in cases {
            let read = StepPlan::parse(built.step(), &serde_json::to_vec(&required).unwrap()).unwrap();
            assert_eq!(built, read, "{:?}", built.step());
            // And a plan survives its JSON unchanged.
            assert_eq!(StepPlan::parse(built.step(), &serde_json::to_vec(&built).unwrap()).unwrap(), built);
        }
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let dims =
            vec![Dimension { id: "d".into(), name: "n".into(), description: String::new(), guide: String::new() }];
        let mut plan = DistillPlan::new(
            vec![DistillGroup { name: "g".into(), sources: vec!["web".into()], dimensions: dims }],
            "l".into(),
        );
        plan.lambdas = vec![2.0, 1.0];
        let canonical = StepPlan::from(plan).canonical_json();
        assert!(
            canonical.starts_with(r#"{"exportSft":true,"featurizer":{"charNgrams":null,"dimLog2":18,"#),
            "{canonical}"
        );
        assert!(canonical.contains(r#""groups":[{"dimensions":[{"id":"d","name":"n"}],"name":"g","sources":["web"]}],"judge":null,"labels":"l","lambdas":[2.0,1.0],"#), "{canonical}");
    }

    #[test]
    fn slim_results_keep_the_counts_and_drop_what_grows_with_the_corpus() {
        let mut histogram = Histogram::new(1.0, 5.0, 10_000);
        histogram.add(3.0, 100);
        let mut sampler = crate::length::LengthSampler::default();
        (0..100).for_each(|i| sampler.offer(i, 1 + i, 3.0));
        let length = sampler.finish();
        let totals = |source: Option<&str>| ScoreTotals {
            group: "code".into(),
            source: source.map(Into::into),
            shards: 2,
            records: 10,
            tokens: 1000,
            skipped: SkipCounts::default(),
            histogram: histogram.clone(),
            length: length.clone(),
            length_correlation: Some(0.02),
            unranked: false,
        };
        let mut score = StepResult::from(ScoreResult {
            groups: vec![totals(None)],
            sources: vec![totals(Some("py"))],
            masked: BTreeMap::new(),
        });
        score.slim();
        let StepResult::Score(slim) = &score else { unreachable!() };
        assert_eq!(
            (slim.groups[0].shards, slim.groups[0].tokens, slim.sources[0].records),
            (2, 1000, 10),
            "counts stay"
        );
        assert!(slim
            .groups
            .iter()
            .chain(&slim.sources)
            .all(|t| t.histogram.tokens.is_empty() && t.histogram.records.is_empty() && t.length.is_empty()));
        assert_eq!(slim.sources[0].length_correlation, Some(0.02), "the correlation stays");

        let kept = Kept { kept_records: 1, total_records: 2, kept_tokens: 10, total_tokens: 20 };
        let shard = SelectedShard {
            group: "code".into(),
            source: "py".into(),
            shard: "a".into(),
            output: None,
            kept: kept.clone(),
            sample: Vec::new(),
        };
        let sampled = SampledRecord { key: 7, aggregate: 3.5, tokens: 10, kept: true };
        let mut manifest = StepResult::from(Manifest {
            total: kept.clone(),
            groups: BTreeMap::from([("code".to_string(), kept.clone())]),
            sources: BTreeMap::new(),
            thresholds: ThresholdResult { policy: CutPolicy::Group, cuts: Vec::new(), lengths: Vec::new() },
            masked: BTreeMap::new(),
            shards: vec![shard],
            samples: BTreeMap::from([("code".to_string(), vec![sampled])]),
        });
        manifest.slim();
        let StepResult::Select(slim) = &manifest else { unreachable!() };
        assert!(slim.shards.is_empty() && slim.samples.is_empty());
        assert_eq!(slim.groups["code"], kept);

        let mut cluster = StepResult::from(ClusterResult {
            groups: Vec::new(),
            sources: Vec::new(),
            similarity: Vec::new(),
            silhouette: 0.5,
        });
        let before = cluster.clone();
        cluster.slim();
        assert_eq!(cluster, before);
    }
}
