//! `DistillationJob`: teacher labels per group, a cheap student per group trained on them, and
//! the reliability mask from their agreement on held-out records.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{JobTemplate, LocalModel, ModelSpec, PipelineStatus};

/// Distils a RubricSet's teacher into one student per group. Labels are made by the teacher, or
/// imported when a team labelled records elsewhere (for example with a batch API).
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mira.dev",
    version = "v1alpha1",
    kind = "DistillationJob",
    namespaced,
    status = "DistillationJobStatus",
    shortname = "dj",
    category = "mira",
    derive = "PartialEq",
    doc = "Teacher labels and one student per group, with the reliability mask.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Students", type_ = "integer", json_path = ".status.studentCount"),
    printcolumn(name = "Masked", type_ = "string", json_path = ".status.maskedShare"),
    printcolumn(name = "Stage", type_ = "string", json_path = ".status.stage"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(super::NAME_LENGTH_RULE).message(super::NAME_LENGTH_MESSAGE)
)]
#[serde(rename_all = "camelCase")]
pub struct DistillationJobSpec {
    /// The RubricSet (same namespace) whose dimensions are distilled. Immutable.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("rubricSetRef is immutable"))]
    pub rubric_set_ref: String,
    /// Where the teacher labels come from.
    #[serde(default)]
    pub labels: LabelsSpec,
    /// The students.
    #[serde(default)]
    pub student: StudentSpec,
    /// Fraction of labelled records (chosen by id hash) held out to measure agreement. Default 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0), extend("exclusiveMinimum" = true, "exclusiveMaximum" = true))]
    #[x_kube(validation = Rule::new("self > 0.0 && self < 1.0").message("validationFraction must be in (0, 1)"))]
    pub validation_fraction: Option<f64>,
    /// When a (source, dimension) is unreliable and left out of record scores.
    #[serde(default)]
    pub mask: MaskSpec,
    /// Seed of label sampling and the validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The label and distill Jobs.
    #[serde(default)]
    pub job: JobTemplate,
}

impl DistillationJobSpec {
    /// A spec distilling `rubric_set_ref` with every other setting at its default.
    pub fn new(rubric_set_ref: impl Into<String>) -> Self {
        DistillationJobSpec {
            rubric_set_ref: rubric_set_ref.into(),
            labels: LabelsSpec::default(),
            student: StudentSpec::default(),
            validation_fraction: None,
            mask: MaskSpec::default(),
            seed: None,
            job: JobTemplate::default(),
        }
    }
}

/// Teacher labels: made by a teacher (the RubricSet's, unless `teacher` is set), or imported.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("!has(self.importUri) || (!has(self.recordsPerGroup) && !has(self.teacher))")
    .message("importUri excludes recordsPerGroup and teacher"))]
#[serde(rename_all = "camelCase")]
pub struct LabelsSpec {
    /// Records the teacher labels per group. Default 2000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub records_per_group: Option<u32>,
    /// A teacher other than the RubricSet's (for example a cheaper one for bulk labelling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<ModelSpec>,
    /// Label file or prefix (JSONL, optionally compressed) made elsewhere: no label Job runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = super::MAX_URI))]
    pub import_uri: Option<String>,
}

/// How students are built: regression heads on text features (the default), or an LLM judge.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("!has(self.judge) || !has(self.featurizer) || (!has(self.featurizer.hashed) && !has(self.featurizer.embedding))")
    .message("a judge student reads text, not features: set judge or featurizer, not both"))]
#[serde(rename_all = "camelCase")]
pub struct StudentSpec {
    /// Text features the regression heads read.
    #[serde(default)]
    pub featurizer: FeaturizerSpec,
    /// An LLM judge as the student instead of regression heads (the paper's setup), for example a
    /// model fine-tuned on the exported SFT data. It is checked against the teacher on the
    /// validation records and masked like the heads, and FilterRuns score every record with it
    /// (give their Jobs a GPU for a local judge). An endpoint's API key reaches both Jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<ModelSpec>,
    /// Ridge strengths to choose from (by leave-one-out error up to 2,000 training records, by
    /// error on held-out records above); defaults when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub lambdas: Vec<f64>,
    /// Training records per group, a sample by id hash above this (memory grows with it).
    /// Default 200000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_train_records: Option<u32>,
    /// Also write the labels as chat-format SFT data for training an LLM judge. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_sft: Option<bool>,
}

/// A text featurizer: `hashed` (the default) or `embedding`.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("!has(self.hashed) || !has(self.embedding)").message("set at most one of hashed or embedding"))]
#[serde(rename_all = "camelCase")]
pub struct FeaturizerSpec {
    /// Signed hashing of word (and optionally character) n-grams: no model, no vocabulary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashed: Option<HashedFeaturizer>,
    /// Vectors of an embedding model (Qwen3-Embedding, EmbeddingGemma architectures) that the
    /// distill and score workers run with mistral.rs: slower than hashing, better on code and
    /// agent traces. Give the DistillationJob's and FilterRuns' Jobs a GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<EmbeddingFeaturizer>,
}

/// Embedding-model features.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingFeaturizer {
    /// The embedding model, loaded in the worker.
    pub model: LocalModel,
}

/// Hashed n-gram features.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HashedFeaturizer {
    /// log2 of the dimension. Default 18.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 4, max = 24))]
    pub dim_log2: Option<u32>,
    /// Word n-grams from 1 to this. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 5))]
    pub word_ngrams: Option<u32>,
    /// Character n-gram lengths `[min, max]`; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 2))]
    pub char_ngrams: Option<Vec<u32>>,
    /// Weight terms by `1 + ln(tf)`. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sublinear_tf: Option<bool>,
    /// Weight by inverse document frequency learnt from the training records. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idf: Option<bool>,
    /// Hash seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// The reliability mask.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaskSpec {
    /// Masked when Spearman correlation with the teacher is below this. Default 0.3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_spearman: Option<f64>,
    /// Masked when the mean absolute error is above this. Default 1.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mae: Option<f64>,
    /// Masked when fewer validation records back the estimate. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_validation: Option<u32>,
}

/// Labels, students and agreement.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DistillationJobStatus {
    #[serde(flatten)]
    pub pipeline: PipelineStatus,
    /// The labels the students learnt from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// Records the teacher labelled, per group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = super::MAX_GROUPS))]
    pub labelled: Vec<GroupCount>,
    /// One student per group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = super::MAX_GROUPS))]
    pub students: Vec<StudentStatus>,
    /// Chat-format SFT data exported from the labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sft: Option<String>,
    /// Students trained (the `Students` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student_count: Option<u32>,
    /// The share of (source, dimension) pairs masked for disagreeing with the teacher, over
    /// every student: `20% (6 of 30)` (the `Masked` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_share: Option<String>,
    /// `group/source` of the sources whose every dimension is masked: no score ranks them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = super::MAX_SOURCES))]
    pub unranked: Vec<String>,
    /// The distill stage's result, which holds the students' agreement with the teacher per
    /// (source, dimension) on the held-out records (MAE, Spearman, why masked). That table
    /// grows with sources times dimensions, so it is there and in the run report, not here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<String>,
}

/// A count per group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupCount {
    /// The group.
    pub group: String,
    /// The count.
    pub records: u64,
}

/// One group's student.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StudentStatus {
    /// The group.
    pub group: String,
    /// The student artefact `score` loads.
    pub student: String,
    /// Records it was trained on.
    pub train_records: u64,
    /// Held-out records its agreement was measured on.
    pub validation_records: u64,
    /// The dimensions it scores.
    #[serde(default, deserialize_with = "super::status::count")]
    #[schemars(with = "u32")]
    pub dimensions: u32,
    /// The sources its agreement was measured on.
    #[serde(default)]
    pub sources: u32,
    /// The (source, dimension) pairs masked for disagreeing with the teacher; which ones is in
    /// the agreement table (`status.agreement`) and the run report.
    #[serde(default, deserialize_with = "super::status::count")]
    #[schemars(with = "u32")]
    pub masked: u32,
    /// What its scores use, in brief: `scores by signal; masked noise (web, agent)`, cut at
    /// 512 bytes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 512))]
    pub summary: String,
}
