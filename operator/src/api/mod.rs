//! The MIRA API, group `mira.dev`, version `v1alpha1`: four resources forming one chain,
//! SourceGroup <- RubricSet <- DistillationJob <- FilterRun, and the types they share.
//!
//! Doc comments on spec and status fields become `kubectl explain` text, so they say what a field
//! means to a user. CEL rules (`x-kubernetes-validations`) reject bad specs at admission; they are
//! checked offline in this module's tests.

mod distillation_job;
mod filter_run;
mod job;
mod model;
mod rubric_set;
mod source_group;
mod status;

pub use distillation_job::*;
pub use filter_run::*;
pub use job::*;
pub use model::*;
pub use rubric_set::*;
pub use source_group::*;
pub use status::*;

pub use scorer_runner::histogram::Cut;
/// Types the API embeds from the data plane's vocabulary: the plan and result types are defined
/// once, in `scorer_runner::plan` (with `JsonSchema` behind its `schema` feature), so a status
/// reports exactly what a step wrote. Spec types stay here: they carry what only the API has
/// (optional fields whose defaults the planner applies, Secret references, CEL rules).
pub use scorer_runner::plan::Format;
pub use scorer_runner::plan::TextSpec;
pub use scorer_runner::plan::{
    Agreement, AnchoredDimension, CutPolicy, Dimension, GroupDef, GroupRubric, Kept, Scale, ScopedCut, SourceLength,
    Step, MAX_DIMENSIONS, MAX_FIELD, MAX_GROUPS, MAX_SOURCES,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every MIRA resource.
pub const GROUP: &str = "mira.dev";
/// Longest URI a spec may give where a status repeats it (a root, a source, an import, an
/// output, a tokenizer): every stage's output starts with the root, so this bounds the statuses
/// (see the `bounds` test).
pub const MAX_URI: usize = 512;

/// Names that end up in Job names, labels and object paths are DNS labels. The schema's `pattern`
/// holds on every server; the CEL rule adds a readable message where CEL runs (1.25 and later).
const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
const DNS_LABEL_RULE: &str = "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')";
const DNS_LABEL_MESSAGE: &str =
    "must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit";
/// CEL rule on the object: its name is the value of the `mira.dev/resource` label on its Jobs,
/// and label values are at most 63 characters.
const NAME_LENGTH_RULE: &str = "self.metadata.name.size() <= 63";
const NAME_LENGTH_MESSAGE: &str = "metadata.name must be at most 63 characters (it labels the resource's Jobs)";

/// Every CRD, in chain order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![SourceGroup::crd(), RubricSet::crd(), DistillationJob::crd(), FilterRun::crd()]
        .into_iter()
        .map(portable)
        .collect()
}

/// A CRD every supported server accepts: `null` is dropped from enums (the generator lists it for
/// optional enums; `nullable` already allows it, and API servers before 1.22 reject the CRD
/// otherwise).
fn portable(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(schema: &mut serde_json::Value) {
        match schema {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Array(values)) = map.get_mut("enum") {
                    values.retain(|v| !v.is_null());
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(&crd).expect("a CRD serializes to JSON");
    for version in value["spec"]["versions"].as_array_mut().into_iter().flatten() {
        walk(&mut version["schema"]["openAPIV3Schema"]);
    }
    serde_json::from_value(value).expect("a CRD stays a CRD without null enum values")
}

/// One CRD as YAML, as committed under `crds/`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    serde_yaml::to_string(crd).expect("a CRD serializes to YAML")
}

/// The file name a CRD is committed under: `<plural>.<group>.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or_default())
}

#[cfg(test)]
mod bounds;
#[cfg(test)]
mod tests;
