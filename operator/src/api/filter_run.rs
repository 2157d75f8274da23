//! `FilterRun`: score every record with its group's student, cut to a token retention target,
//! and write the kept records.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CutPolicy, JobTemplate, Kept, PipelineStatus, ScopedCut, SourceLength};

/// Filters the corpus with a DistillationJob's students (method `mira`), or with a baseline
/// selector over a SourceGroup's corpus (`random`, `dsir`), under the same policies, budgets and
/// outputs, so that selections compare record by record. Each group is scored by its own Job;
/// with the `group` and `source` policies a group is cut and selected as soon as it is scored,
/// with `global` the single cut waits for every group.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mira.dev",
    version = "v1alpha1",
    kind = "FilterRun",
    namespaced,
    status = "FilterRunStatus",
    shortname = "fr",
    category = "mira",
    derive = "PartialEq",
    doc = "Scores, thresholds and selects a corpus with a DistillationJob's students, or with a baseline selector.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Method", type_ = "string", json_path = ".spec.method"),
    printcolumn(name = "Retention", type_ = "number", json_path = ".spec.retention"),
    printcolumn(name = "Kept", type_ = "string", json_path = ".status.keptShare"),
    printcolumn(name = "Stage", type_ = "string", json_path = ".status.stage"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(super::NAME_LENGTH_RULE).message(super::NAME_LENGTH_MESSAGE)
)]
#[x_kube(validation = Rule::new("self.policy == 'group' || !has(self.groupRetention) || size(self.groupRetention) == 0")
    .message("groupRetention needs policy group"))]
#[x_kube(validation = Rule::new("(has(self.method) && self.method != 'mira') ? (has(self.sourceGroupRef) && !has(self.distillationJobRef)) : (has(self.distillationJobRef) && !has(self.sourceGroupRef))")
    .message("method mira (the default) takes distillationJobRef; the baseline methods take sourceGroupRef"))]
#[x_kube(validation = Rule::new("(has(self.method) && self.method == 'dsir') == has(self.dsir)")
    .message("dsir (the target sample) goes with method dsir, and only with it"))]
#[x_kube(validation = Rule::new("(has(self.method) && self.method == 'perplexity') == has(self.perplexity)")
    .message("perplexity (the reference model) goes with method perplexity, and only with it"))]
#[x_kube(validation = Rule::new("has(self.distillationJobRef) == has(oldSelf.distillationJobRef) && has(self.sourceGroupRef) == has(oldSelf.sourceGroupRef)")
    .message("a FilterRun's upstream (distillationJobRef or sourceGroupRef) is immutable"))]
#[serde(rename_all = "camelCase")]
pub struct FilterRunSpec {
    /// The DistillationJob (same namespace) whose students score the records: method `mira`
    /// only. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("distillationJobRef is immutable"))]
    pub distillation_job_ref: Option<String>,
    /// The SourceGroup (same namespace) whose corpus a baseline method selects from: every
    /// method but `mira`, which reaches it through its DistillationJob. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("sourceGroupRef is immutable"))]
    pub source_group_ref: Option<String>,
    /// How records are ranked before the cut: `mira` (the default) by the DistillationJob's
    /// students; or a baseline that the MIRA paper compares the method with, to run beside it on
    /// the same corpus and budget: `random` (a seeded draw by record id, which keeps each
    /// source's token share; exactly so with policy `source`), `dsir` (importance resampling
    /// toward a target sample, `spec.dsir`) or `perplexity` (the records a reference model,
    /// `spec.perplexity`, finds most predictable).
    #[serde(default)]
    pub method: Method,
    /// The target of method `dsir`: records the selection should resemble.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsir: Option<DsirTarget>,
    /// The reference model of method `perplexity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<PerplexityModel>,
    /// Fraction of tokens kept, in (0, 1].
    #[schemars(range(min = 0.0, max = 1.0), extend("exclusiveMinimum" = true))]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0").message("retention must be in (0, 1]"))]
    pub retention: f64,
    /// Where cuts are made: per `group` (the default; keeps every capability), one `global`
    /// cut, or per `source`.
    #[serde(default)]
    pub policy: CutPolicy,
    /// Retention per group, overriding `retention` (policy `group` only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = super::MAX_GROUPS))]
    #[x_kube(validation = Rule::new("self.all(g, self[g] > 0.0 && self[g] <= 1.0)").message("every groupRetention must be in (0, 1]"))]
    pub group_retention: BTreeMap<String, f64>,
    /// How tokens are counted for budgets.
    #[serde(default)]
    pub tokens: TokensSpec,
    /// Fraction trimmed from each end of a record's unmasked dimension scores before averaging.
    /// Default 0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 0.5), extend("exclusiveMaximum" = true))]
    #[x_kube(validation = Rule::new("self >= 0.0 && self < 0.5").message("trim must be in [0, 0.5)"))]
    pub trim: Option<f64>,
    /// Bins of the score histograms a cut is found in, over the scale (default 10,000). The cut
    /// falls in a bin and the seeded draw settles that bin's records, which `threshold` reads a
    /// second time: more bins leave fewer records in that bin (integer judge scores fill a bin
    /// whatever its width) at the cost of larger score results (a group's and each source's
    /// histogram, up to 12 bytes a bin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 100_000))]
    pub histogram_bins: Option<u32>,
    /// URI under which the kept records are written, per group, in their source format.
    #[schemars(length(min = 1, max = super::MAX_URI))]
    pub output: String,
    /// What happens when the DistillationJob masked every dimension of some source (its
    /// `Reliable` condition is `False`, reason `NoReliableDimension`), so that the source's
    /// records would all score alike. `Fail` (the default) stops before scoring, `Ready=False`
    /// with that reason and the sources named, so that a random selection never passes for a
    /// ranked one; `KeepAtRandom` cuts such a source on its own: all its records get the same
    /// aggregate (the scale's midpoint), and the seeded draw keeps its group's retention share of
    /// its tokens at random by record id, without moving the ranked sources' cut (each group's
    /// `drawnTokens` counts them).
    #[serde(default)]
    pub on_no_reliable_dimension: NoReliableDimension,
    /// Let the FilterRun end Ready although a source gave no usable record, or skipped more
    /// records than it scored (its `Usable` condition says `False` either way). Off, the default:
    /// it ends `Ready=False`, reason `NoUsableRecords`, and `mira run` exits non-zero, so that a
    /// `text.field` or Parquet column that matches nothing never passes for a selection.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unusable_sources: bool,
    /// The score, threshold and select Jobs.
    #[serde(default)]
    pub job: JobTemplate,
}

/// How a FilterRun ranks records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Method {
    /// The DistillationJob's students, on the anchored dimensions they reproduce reliably.
    #[default]
    Mira,
    /// A seeded uniform draw by record id.
    Random,
    /// DSIR: hashed n-gram importance weights toward `spec.dsir.target`, Gumbel top-k.
    Dsir,
    /// Perplexity filtering: lowest perplexity under `spec.perplexity.model` first.
    Perplexity,
}

impl Method {
    /// As written in a spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Mira => "mira",
            Method::Random => "random",
            Method::Dsir => "dsir",
            Method::Perplexity => "perplexity",
        }
    }
}

/// The target sample of method `dsir`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DsirTarget {
    /// Shards of the records to resemble (a file or a prefix; `s3://` or a path), read with the
    /// SourceGroup's storage settings.
    #[schemars(length(min = 1, max = super::MAX_URI))]
    pub target: String,
    /// The target's format; by default each shard's extension decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<super::Format>,
    /// Where the target records' text is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<super::TextSpec>,
    /// Records sampled from the target, and from each source of a group, to estimate the two
    /// n-gram distributions. Default 20,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub sample: Option<u32>,
}

/// The reference model of method `perplexity`: a record ranks by its mean log-probability per
/// token under it, so the cut keeps the records of lowest perplexity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PerplexityModel {
    /// A language model the worker loads (an endpoint's chat API gives no log-probabilities of a
    /// given text): for example one trained on a high-quality reference set, as CCNet's was.
    pub model: super::LocalModel,
    /// Tokens of each record scored, from its beginning. A worker holds their logits over the
    /// model's vocabulary for one record at a time, 4 bytes each (1.2 GB for 2,048 tokens of a
    /// 150k vocabulary). Default 2,048.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 1_048_576))]
    pub max_tokens: Option<u32>,
}

/// What a FilterRun does with sources that no dimension ranks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NoReliableDimension {
    /// Stop before scoring, and say which sources.
    #[default]
    Fail,
    /// Cut each such source on its own, keeping its retention share by the seeded draw.
    KeepAtRandom,
}

/// How tokens are counted: with `tokenizer`, with the teacher's (`fromTeacher`), or, when
/// neither is set, as whitespace-separated words (the `Tokens` condition then says so).
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("!(has(self.tokenizer) && has(self.fromTeacher) && self.fromTeacher)").message("set tokenizer or fromTeacher, not both"))]
#[serde(rename_all = "camelCase")]
pub struct TokensSpec {
    /// A `tokenizer.json` (Hugging Face tokenizers), `s3://` or a path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = super::MAX_URI))]
    pub tokenizer: Option<String>,
    /// Count with the `tokenizer.json` of the RubricSet's teacher, a local model directory (a
    /// teacher behind an endpoint or in GGUF files has none at hand: name `tokenizer` instead).
    /// For when the model to be trained shares the teacher's tokenizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_teacher: Option<bool>,
}

/// Scores, cuts and kept tokens per group.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterRunStatus {
    #[serde(flatten)]
    pub pipeline: PipelineStatus,
    /// Per group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = super::MAX_GROUPS))]
    pub groups: Vec<FilterGroupStatus>,
    /// Kept and total over all groups, once every group is selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Kept>,
    /// The share of tokens kept over all groups, once every group is selected: `49.8% of 1.2M
    /// tokens` (the `Kept` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_share: Option<String>,
    /// What the token budgets count: the `tokenizer.json` named in `spec.tokens`, or
    /// `whitespace words` (the `Tokens` condition says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_counter: Option<String>,
    /// The run report, one HTML file (groups, dimensions, agreement and masks, score
    /// distributions and cuts, kept tokens per source), written next to the selected records
    /// once every group is selected, and again whenever the selection changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
}

/// One group's filtering.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilterGroupStatus {
    /// The group.
    pub name: String,
    /// Shards scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored_shards: Option<u64>,
    /// Records scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// Tokens scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Records skipped as malformed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_records: Option<u64>,
    /// The cuts that apply to the group: the global or group cut; with policy `source`, those
    /// of the sources listed in `sources` or `lengths` (every cut is in the threshold result and
    /// the run report).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = super::MAX_SOURCES))]
    pub cuts: Vec<ScopedCut>,
    /// Records scored and records skipped by reason, for the sources of the run (32 at most)
    /// that most need a look: the 16 that skipped the largest share of their records (those with
    /// no usable record first) and the 16 whose scores follow length most.
    /// Every source's counts are in the score result and the run report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = super::MAX_SOURCES))]
    pub sources: Vec<SourceScored>,
    /// Whether scores and the cut follow record length, for the same sources as `sources`. Every source's are in the threshold result and the run
    /// report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = super::MAX_SOURCES))]
    pub lengths: Vec<SourceLength>,
    /// What was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<Kept>,
    /// Of the kept tokens, those kept by the seeded draw among records tied at the cut rather
    /// than ranked by their score (all of them for a source no dimension ranks). Under the
    /// `global` policy only the latter: that cut's one draw spans every group (its cut in `cuts`
    /// has the total).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drawn_tokens: Option<u64>,
    /// Where the group's kept records and `manifest.json` are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Sources of the group that gave no usable record or skipped more records than they
    /// scored, whether `sources` lists them or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unusable_sources: Option<u32>,
}

/// What scoring made of one source's records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceScored {
    /// The source.
    pub name: String,
    /// Records scored.
    pub records: u64,
    /// Records skipped, by reason (`invalid_json`, `missing_text`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped: BTreeMap<String, u64>,
}

impl SourceScored {
    pub fn skipped_records(&self) -> u64 {
        self.skipped.values().sum()
    }

    /// No usable record, or more skipped than scored: most often a `text.field` or a Parquet
    /// column that matches nothing.
    pub fn unusable(&self) -> bool {
        self.records == 0 || self.skipped_records() > self.records
    }
}
