//! The stage engine: one pure function per reconcile, shared by the four kinds and both adapters.
//!
//! Input: the resource (spec, status, generation), its upstream chain, the child Jobs an adapter
//! observed, and the step results it read from storage. Output: the new status and the actions
//! that bring the world closer to it (create a plan ConfigMap and a Job, delete a Job, emit an
//! Event). Each kind configures the engine through [`Pipeline`]: its stages, how each stage's
//! plan is built from the spec and upstream statuses, and how results become status.
//!
//! Stage outputs are addressed by a digest of their plan, so a result at a stage's output root
//! means the stage is done: whatever ran it, and however long ago its Job was deleted.

mod conditions;
mod convert;
mod distillation_job;
mod engine;
mod filter_run;
mod lineage;
pub mod names;
mod policy;
mod rubric_set;
mod source_group;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use kube::core::object::{HasSpec, HasStatus};
use kube::Resource;
use scorer_runner::plan::{StepPlan, StepResult};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use conditions::{truncate, MAX_MESSAGE};
pub use engine::{reconcile, wanted_results, Action, Event, Input, JobRequest, JobState, Output, StageProgress};
pub use lineage::{Lineage, Link, Upstream, UpstreamRef};
pub use policy::Policy;

use crate::api::{JobTemplate, PipelineStatus, Step, StorageSpec};
use crate::{Error, Result};

/// A kind's status: its own fields around the engine's [`PipelineStatus`].
pub trait KindStatus: Clone + Default + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static {
    fn pipeline(&self) -> &PipelineStatus;
    fn pipeline_mut(&mut self) -> &mut PipelineStatus;
}

/// What a kind tells the engine. Every MIRA kind is namespaced: its upstream is in its namespace.
pub trait Pipeline:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + HasStatus<Status: KindStatus>
    + HasSpec<Spec: Serialize + DeserializeOwned + PartialEq>
    + Clone
    + std::fmt::Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The steps this kind may run, in order; each reports through its own condition.
    const STEPS: &'static [Step];

    /// The nearest upstream resource, if any.
    fn upstream_ref(&self) -> Option<UpstreamRef>;

    /// The Jobs' template.
    fn job_template(&self) -> &JobTemplate;

    /// The stages, each after every stage it needs. Called once the upstream chain is Ready.
    fn stages(&self, lineage: &Lineage) -> Result<Vec<StageDef>>;

    /// The plan of one stage, called once every stage it needs has finished.
    fn plan(&self, lineage: &Lineage, stage: &StageDef, finished: &Finished<'_>) -> Result<Planned>;

    /// The kind's status fields, from the stages finished so far.
    fn summarize(&self, lineage: &Lineage, finished: &Finished<'_>, status: &mut Self::Status) -> Result<()>;

    /// The object store of the chain (the SourceGroup's), where step results are read.
    fn storage<'a>(&'a self, lineage: &'a Lineage) -> Option<&'a StorageSpec> {
        lineage.source_group.as_ref().map(|sg| &sg.spec.storage)
    }

    /// Conditions beyond the stages', about what the stages found (that no dimension of a
    /// source proved reliable, say): computed from the summarized status on every reconcile.
    fn findings(_status: &Self::Status) -> Vec<conditions::Desired> {
        Vec::new()
    }

    /// Lines that tell a user what the resource produced (printed by `mira run` at the end).
    fn highlights(_status: &Self::Status) -> Vec<String> {
        Vec::new()
    }

    /// Why a step has no stage under this spec (the message of its `True` condition).
    fn skipped(&self, step: Step) -> String {
        format!("no {} stage is needed", step.as_str())
    }
}

/// One stage of a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageDef {
    /// `step` or `step/group`.
    pub name: String,
    pub step: Step,
    pub group: Option<String>,
    /// Stages that must finish first.
    pub after: Vec<String>,
}

impl StageDef {
    pub fn new(step: Step, group: Option<&str>, after: Vec<String>) -> Self {
        StageDef { name: stage_name(step, group), step, group: group.map(str::to_string), after }
    }
}

/// The name of a stage: `step` or `step/group`.
pub fn stage_name(step: Step, group: Option<&str>) -> String {
    match group {
        Some(group) => format!("{}/{group}", step.as_str()),
        None => step.as_str().to_string(),
    }
}

/// A stage's plan, before the engine addresses its output.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// The plan; its `output` is set by the engine.
    pub plan: StepPlan,
    /// Where outputs go; the engine appends the plan's digest.
    pub base: String,
    /// Environment variables the Job takes from Secrets.
    pub secrets: Vec<SecretEnv>,
}

impl Planned {
    pub fn new(plan: impl Into<StepPlan>, base: String, secrets: Vec<SecretEnv>) -> Self {
        Planned { plan: plan.into(), base, secrets }
    }
}

/// An environment variable read from a Secret key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretEnv {
    pub env: String,
    pub secret: String,
    pub key: String,
}

/// Step results by output root, slimmed ([`StepResult::slim`]). Shared, not copied: a result
/// never changes (outputs are content-addressed).
pub type StepResults = BTreeMap<String, Arc<StepResult>>;

/// The stages finished so far, with their output roots and results (borrowed from the pass's
/// [`StepResults`]).
#[derive(Clone, Debug, Default)]
pub struct Finished<'a> {
    stages: BTreeMap<String, (String, &'a StepResult)>,
}

impl<'a> Finished<'a> {
    fn insert(&mut self, stage: &str, output: String, result: &'a StepResult) {
        self.stages.insert(stage.to_string(), (output, result));
    }

    pub fn contains(&self, stage: &str) -> bool {
        self.stages.contains_key(stage)
    }

    /// A finished stage's output root.
    pub fn output(&self, stage: &str) -> Option<&str> {
        self.stages.get(stage).map(|(output, _)| output.as_str())
    }

    /// A finished stage's result, as the step that writes `T` wrote it.
    pub fn result<T>(&self, stage: &str) -> Result<Option<&'a T>>
    where
        for<'r> &'r T: TryFrom<&'r StepResult, Error = Step>,
    {
        self.stages
            .get(stage)
            .map(|(output, result)| {
                <&T>::try_from(*result).map_err(|found| Error::UnexpectedResult {
                    uri: scorer_runner::storage::join(output, scorer_runner::steps::RESULT),
                    found,
                })
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests;
