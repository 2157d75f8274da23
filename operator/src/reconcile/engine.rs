//! One reconcile pass: gate on the upstream chain, plan and track every stage, summarise the
//! results, and compute the conditions. Pure: the same input always gives the same output.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use scorer_runner::progress::Snapshot;
use scorer_runner::steps::RESULT;
use scorer_runner::storage::join;

use super::conditions::{merge, Desired};
use super::lineage::{gate, Lineage};
use super::{names, Finished, KindStatus, Pipeline, Planned, Policy, SecretEnv, StageDef, StepResults};
use crate::api::{JobTemplate, PipelineStatus, StagePhase, StageRecord, Step};
use crate::Error;

/// Everything one pass reads.
pub struct Input<'a, K> {
    pub resource: &'a K,
    pub lineage: &'a Lineage,
    /// Child Jobs by name, as observed.
    pub jobs: &'a BTreeMap<String, JobState>,
    /// Step results (`_result.json`) by stage output root; absent when not written (yet).
    pub results: &'a StepResults,
    /// The workers' progress by stage output root, read for stages not finished at the start
    /// of the pass.
    pub progress: &'a StageProgress,
    /// What the resource may ask of the cluster; stages that ask for more fail `NotAllowed`.
    pub policy: &'a Policy,
}

/// Progress by stage output root.
pub type StageProgress = BTreeMap<String, Snapshot>;

/// A child Job as an adapter observed it.
#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
    Pending,
    Running,
    Succeeded,
    /// `reason`: the adapter's own (a Job condition's reason, or the exit status); `log`: the
    /// tail of the worker's output, whose `error: <Category>: <message>` line wins.
    Failed {
        reason: String,
        log: String,
    },
}

/// What one pass decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Output<S> {
    pub status: S,
    pub actions: Vec<Action>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Store a stage's plan under its Job's name: a file locally; in a cluster, an object under
    /// the stage's `output` root, named by a ConfigMap.
    CreatePlanConfigMap {
        name: String,
        step: Step,
        group: Option<String>,
        plan: String,
        output: String,
    },
    /// Create a stage's Job, unless a Job of that name exists.
    CreateJob(Box<JobRequest>),
    /// Delete a Job whose stage was replanned or dropped while it ran (`mira run` drops its plan
    /// too; a plan ConfigMap stays with its resource until the resource is deleted).
    DeleteJob {
        name: String,
    },
    Event(Event),
}

/// A stage Job to create.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRequest {
    /// The Job's name, which is also its plan's ConfigMap (or file) name.
    pub name: String,
    pub stage: String,
    pub step: Step,
    pub group: Option<String>,
    pub template: JobTemplate,
    pub secrets: Vec<SecretEnv>,
}

/// An Event about the resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub warning: bool,
    pub reason: String,
    pub note: String,
    pub action: &'static str,
    /// The Job the Event is about. The Kubernetes adapter names it as the related object, which
    /// also keeps the Events of different stages apart (kube's recorder folds Events with the
    /// same reason, action and objects into one series, keeping the first note).
    pub job: Option<String>,
}

/// A stage with its plan addressed: the plan's digest names its output root.
struct Addressed {
    plan: String,
    output: String,
    digest: String,
    secrets: Vec<SecretEnv>,
}

/// A stage of the current plan: addressed once every stage it needs has finished.
struct Evaluated {
    def: StageDef,
    addressed: Option<Addressed>,
}

enum Evaluation<'a> {
    Waiting(String),
    Invalid(Error),
    Open { upstream_revision: Option<String>, stages: Vec<Evaluated>, finished: Finished<'a> },
}

fn evaluate<'a, K: Pipeline>(input: &Input<'a, K>) -> Evaluation<'a> {
    let chain = input.lineage.chain(input.resource.upstream_ref());
    let upstream_revision = match gate(&chain) {
        Ok(revision) => revision,
        Err(message) => return Evaluation::Waiting(message),
    };
    let defs = match input.resource.stages(input.lineage) {
        Ok(defs) => defs,
        Err(e) => return Evaluation::Invalid(e),
    };
    // While neither the spec nor the upstream changed, a stage that succeeded stays done at its
    // recorded output, even if this operator version would plan it differently: an upgrade
    // must not redo finished work.
    let previous = input.resource.status().map(|s| s.pipeline());
    let settled = previous
        .filter(|p| {
            p.observed_generation == input.resource.meta().generation && p.upstream_revision == upstream_revision
        })
        .map(|p| p.stages.as_slice())
        .unwrap_or_default();
    let mut finished = Finished::default();
    let mut stages = Vec::with_capacity(defs.len());
    for def in defs {
        let addressed = if def.after.iter().all(|s| finished.contains(s)) {
            match input.resource.plan(input.lineage, &def, &finished).and_then(|p| address(def.step, p)) {
                Ok(mut addressed) => {
                    if let Some(done) = settled.iter().find(|r| r.name == def.name && r.phase == StagePhase::Succeeded)
                    {
                        addressed.output.clone_from(&done.output);
                    }
                    Some(addressed)
                }
                Err(e) => return Evaluation::Invalid(e),
            }
        } else {
            None
        };
        if let Some(a) = &addressed {
            if let Some(result) = input.results.get(&a.output) {
                finished.insert(&def.name, a.output.clone(), result);
            }
        }
        stages.push(Evaluated { def, addressed });
    }
    Evaluation::Open { upstream_revision, stages, finished }
}

/// Gives a plan its output root: `<base>/<digest of step and plan>`.
fn address(step: Step, planned: Planned) -> crate::Result<Addressed> {
    let mut plan = planned.plan;
    if plan.step() != step {
        return Err(Error::InvalidSpec(format!(
            "the {} stage was planned as a {} plan",
            step.as_str(),
            plan.step().as_str()
        )));
    }
    plan.output_mut().clear();
    let digest = names::digest(&[step.as_str(), &plan.canonical_json()]);
    let output = join(&planned.base, &digest[..16]);
    plan.output_mut().clone_from(&output);
    let plan = serde_json::to_string_pretty(&plan).map_err(|source| Error::WritePlan { step, source })?;
    Ok(Addressed { plan, output, digest, secrets: planned.secrets })
}

/// The output roots whose results this pass can use, with the step that writes each. Adapters
/// read them, [`slim_result`] them, and read again after new results let later stages be
/// planned, before calling [`reconcile`].
pub fn wanted_results<K: Pipeline>(input: &Input<K>) -> Vec<(String, Step)> {
    match evaluate(input) {
        Evaluation::Open { stages, .. } => {
            stages.into_iter().filter_map(|s| Some((s.addressed?.output, s.def.step))).collect()
        }
        Evaluation::Waiting(_) | Evaluation::Invalid(_) => Vec::new(),
    }
}

/// One reconcile pass; `now` stamps conditions and stages that change.
pub fn reconcile<K: Pipeline>(input: &Input<K>, now: &Time) -> Output<K::Status> {
    let generation = input.resource.meta().generation;
    let previous = input.resource.status().cloned().unwrap_or_default();
    let mut tracker = Tracker {
        resource: input.resource.name_any(),
        uid: input.resource.uid().unwrap_or_default(),
        generation: generation.unwrap_or(0),
        previous: previous.pipeline(),
        jobs: input.jobs,
        results: input.results,
        progress: input.progress,
        template: input.resource.job_template(),
        policy: input.policy,
        now,
        actions: Vec::new(),
    };
    let mut status = previous.clone();
    let (desired, stage) = match evaluate(input) {
        Evaluation::Waiting(message) => {
            status.pipeline_mut().revision = None;
            (blocked::<K>("Waiting", &message), "Waiting".to_string())
        }
        Evaluation::Invalid(error) => {
            status.pipeline_mut().revision = None;
            (blocked::<K>(error.category(), &error.chain()), error.category().to_string())
        }
        Evaluation::Open { upstream_revision, stages, finished } => {
            let tracked: Vec<Tracked> = stages.iter().map(|s| tracker.track(s)).collect();
            tracker.delete_superseded(&tracked);
            status = K::Status::default();
            let summary = input.resource.summarize(input.lineage, &finished, &mut status);
            let progress = Progress::of(&tracked);
            let ready = summary.is_ok() && progress.all_succeeded();
            let failed = summary.is_err() || progress.first_failed(None).is_some();
            let pipeline = status.pipeline_mut();
            pipeline.stages = tracked.iter().filter_map(|t| t.record.clone()).collect();
            pipeline.progress = running_progress(&pipeline.stages);
            pipeline.revision = ready.then(|| revision(input, &upstream_revision, &tracked));
            pipeline.upstream_revision = upstream_revision;
            let mut desired = vec![progress.ready(summary.err())];
            desired.extend(K::STEPS.iter().map(|&step| progress.step(step, || input.resource.skipped(step))));
            for finding in K::findings(&status) {
                // A finding that turns bad is also a Warning Event, once, where alerts look.
                let was_bad =
                    previous.pipeline().conditions.iter().any(|c| c.type_ == finding.type_ && c.status == "False");
                if !finding.status && !was_bad {
                    let (reason, note) = (finding.reason.clone(), finding.message.clone());
                    tracker.actions.push(Action::Event(Event {
                        warning: true,
                        reason,
                        note,
                        action: "Reconcile",
                        job: None,
                    }));
                }
                desired.push(finding);
            }
            (desired, progress.summary(K::STEPS, ready, failed))
        }
    };
    let pipeline = status.pipeline_mut();
    pipeline.conditions = merge(&previous.pipeline().conditions, desired, generation, now);
    pipeline.stage = Some(stage);
    pipeline.observed_generation = generation;
    Output { status, actions: tracker.actions }
}

/// The progress of the stages whose workers run, in one line; `None` when none reports.
fn running_progress(stages: &[StageRecord]) -> Option<String> {
    let running: Vec<&StageRecord> =
        stages.iter().filter(|r| r.phase == StagePhase::Running && r.progress.is_some()).collect();
    let total = Snapshot::sum(running.iter().filter_map(|r| r.progress.clone()))?;
    Some(match running.as_slice() {
        [one] => format!("{} {}", one.name, total.summary()),
        many => format!("{} stages: {}", many.len(), total.summary()),
    })
}

/// Conditions while no stage can be planned: all `False` for the same reason.
fn blocked<K: Pipeline>(reason: &str, message: &str) -> Vec<Desired> {
    std::iter::once("Ready")
        .chain(K::STEPS.iter().map(|s| s.condition_type()))
        .map(|type_| Desired::new(type_, false, reason, message))
        .collect()
}

/// Changes whenever the resource's outputs may have: its identity, generation, upstream and the
/// stage outputs (which are content-addressed).
fn revision<K: Pipeline>(input: &Input<K>, upstream: &Option<String>, tracked: &[Tracked]) -> String {
    let generation = input.resource.meta().generation.unwrap_or(0).to_string();
    let mut parts = vec![
        input.resource.meta().uid.as_deref().unwrap_or_default(),
        &generation,
        upstream.as_deref().unwrap_or_default(),
    ];
    parts.extend(tracked.iter().filter_map(|t| t.record.as_ref()).map(|r| r.output.as_str()));
    names::digest(&parts)[..16].to_string()
}

/// A stage after tracking: its record, or what it waits for.
struct Tracked {
    def: StageDef,
    record: Option<StageRecord>,
}

struct Tracker<'a> {
    resource: String,
    /// The resource's uid (empty for `mira run`'s manifests): Jobs and plans of a resource
    /// deleted and applied again under its name are not taken for the new one's.
    uid: String,
    generation: i64,
    previous: &'a PipelineStatus,
    jobs: &'a BTreeMap<String, JobState>,
    results: &'a StepResults,
    progress: &'a StageProgress,
    template: &'a JobTemplate,
    policy: &'a Policy,
    now: &'a Time,
    actions: Vec<Action>,
}

impl Tracker<'_> {
    fn track(&mut self, stage: &Evaluated) -> Tracked {
        let record = stage.addressed.as_ref().map(|a| self.record(&stage.def, a));
        Tracked { def: stage.def.clone(), record }
    }

    /// The stage's record after this pass. A previous record is current when it has the same
    /// output and, if it failed, the same generation: a failure is final for its generation only.
    fn record(&mut self, def: &StageDef, a: &Addressed) -> StageRecord {
        let current = self
            .previous
            .stages
            .iter()
            .find(|r| r.name == def.name && r.output == a.output)
            .filter(|r| r.phase != StagePhase::Failed || r.generation == self.generation);
        let mut record = current.cloned().unwrap_or_else(|| StageRecord {
            name: def.name.clone(),
            step: def.step,
            group: def.group.clone(),
            job: None,
            generation: self.generation,
            output: a.output.clone(),
            phase: StagePhase::Pending,
            reason: None,
            message: None,
            progress: None,
            started_at: Some(self.now.clone()),
            finished_at: None,
        });
        if let Some(progress) = self.progress.get(&a.output) {
            record.progress = Some(progress.clone());
        }
        if let Some(progress) = record.progress.as_mut().filter(|_| self.results.contains_key(&a.output)) {
            // The result is written: the step is done, whatever a worker of an earlier Job left.
            progress.finished = true;
        }
        let job_name =
            || names::job_name(&self.resource, &self.uid, def.step, def.group.as_deref(), self.generation, &a.digest);
        if record.job.is_none() {
            // The operator stopped between creating this stage's Job and recording it: the Job of
            // the stage's deterministic name is its own.
            record.job = Some(job_name()).filter(|job| self.jobs.contains_key(job));
        }
        let result = join(&a.output, RESULT);
        if self.results.contains_key(&a.output) {
            if record.phase != StagePhase::Succeeded {
                let reused = record.job.is_none();
                record.phase = StagePhase::Succeeded;
                record.reason = None;
                record.message = reused.then(|| "reused the result of an identical earlier run".to_string());
                record.finished_at = Some(self.now.clone());
                let (reason, note) = match reused {
                    true => ("StageReused", format!("stage {} reused {result}", def.name)),
                    false => ("StageSucceeded", format!("stage {} succeeded", def.name)),
                };
                self.event(false, reason, note, record.job.clone());
            }
            return record;
        }
        match record.phase {
            StagePhase::Failed => return record,
            StagePhase::Succeeded => {
                return self.fail(record, "ResultMissing".into(), format!("the stage succeeded but {result} is gone"));
            }
            _ => {}
        }
        let job = record.job.clone().unwrap_or_else(job_name);
        record.job = Some(job.clone());
        match self.jobs.get(&job) {
            Some(JobState::Pending) => record.phase = StagePhase::Pending,
            Some(JobState::Running) => record.phase = StagePhase::Running,
            Some(JobState::Succeeded) => {
                return self.fail(record, "ResultMissing".into(), format!("Job {job} succeeded but wrote no {result}"));
            }
            Some(JobState::Failed { reason, log }) => {
                let (reason, message) = failure(reason, log);
                return self.fail(record, reason, message);
            }
            None => {
                if let Some(refusal) = self.policy.refusal(self.template, &a.plan) {
                    record.job = None;
                    return self.fail(record, "NotAllowed".into(), refusal);
                }
                self.actions.push(Action::CreatePlanConfigMap {
                    name: job.clone(),
                    step: def.step,
                    group: def.group.clone(),
                    plan: a.plan.clone(),
                    output: a.output.clone(),
                });
                self.actions.push(Action::CreateJob(Box::new(JobRequest {
                    name: job.clone(),
                    stage: def.name.clone(),
                    step: def.step,
                    group: def.group.clone(),
                    template: self.template.clone(),
                    secrets: a.secrets.clone(),
                })));
                if current.is_none() {
                    self.event(
                        false,
                        "StageStarted",
                        format!("stage {} started Job {job}", def.name),
                        Some(job.clone()),
                    );
                }
            }
        }
        record
    }

    fn fail(&mut self, mut record: StageRecord, reason: String, message: String) -> StageRecord {
        if record.phase != StagePhase::Failed {
            self.event(true, &reason, format!("stage {} failed: {message}", record.name), record.job.clone());
            record.finished_at = Some(self.now.clone());
        }
        record.phase = StagePhase::Failed;
        record.reason = Some(super::conditions::reason(&reason));
        // A worker's last words can run to kilobytes, and a status holds up to MAX_STAGES stages;
        // the Ready condition repeats the first failure's message.
        record.message = Some(super::conditions::truncate(&message, super::conditions::MAX_MESSAGE));
        record
    }

    /// Deletes Jobs of previous records that are no longer current while they still run.
    fn delete_superseded(&mut self, tracked: &[Tracked]) {
        let kept: Vec<&str> = tracked.iter().filter_map(|t| t.record.as_ref()?.job.as_deref()).collect();
        for previous in &self.previous.stages {
            let active = matches!(previous.phase, StagePhase::Pending | StagePhase::Running);
            if let Some(job) = previous.job.as_deref().filter(|j| active && !kept.contains(j)) {
                self.actions.push(Action::DeleteJob { name: job.to_string() });
                self.event(
                    false,
                    "StageSuperseded",
                    format!("stage {} was replanned; deleting Job {job}", previous.name),
                    Some(job.to_string()),
                );
            }
        }
    }

    fn event(&mut self, warning: bool, reason: &str, note: String, job: Option<String>) {
        let action = if warning { "StageFailed" } else { "Reconcile" };
        self.actions.push(Action::Event(Event { warning, reason: reason.to_string(), note, action, job }));
    }
}

/// The error category and message of a failed Job: from the last `error: <Category>: <message>`
/// line of its log (what `scorer-runner` prints last), else the adapter's reason and the log's
/// last line (a fixed text when the log is empty: statuses never hold empty strings).
pub fn failure(reason: &str, log: &str) -> (String, String) {
    let mut lines = log.lines().map(str::trim).filter(|l| !l.is_empty()).rev();
    let last = lines.clone().next().unwrap_or("the Job failed without any output");
    if let Some(error) = lines.find_map(|l| l.strip_prefix("error: ")) {
        if let Some((category, message)) = error.split_once(": ") {
            if !category.is_empty() && category.chars().all(|c| c.is_ascii_alphanumeric()) {
                return (category.to_string(), message.to_string());
            }
        }
        return (reason.to_string(), error.to_string());
    }
    (reason.to_string(), last.to_string())
}

/// Where the stages are, for conditions and the `stage` column.
struct Progress<'a> {
    tracked: &'a [Tracked],
}

impl<'a> Progress<'a> {
    fn of(tracked: &'a [Tracked]) -> Self {
        Progress { tracked }
    }

    fn phase(t: &Tracked) -> Option<StagePhase> {
        t.record.as_ref().map(|r| r.phase)
    }

    fn all_succeeded(&self) -> bool {
        self.tracked.iter().all(|t| Self::phase(t) == Some(StagePhase::Succeeded))
    }

    fn first_failed(&self, step: Option<Step>) -> Option<&StageRecord> {
        self.tracked
            .iter()
            .filter(|t| step.is_none_or(|s| t.def.step == s))
            .filter_map(|t| t.record.as_ref())
            .find(|r| r.phase == StagePhase::Failed)
    }

    fn ready(&self, summary_error: Option<Error>) -> Desired {
        if let Some(failed) = self.first_failed(None) {
            let message = format!("stage {} failed: {}", failed.name, failed.message.as_deref().unwrap_or_default());
            return Desired::new("Ready", false, failed.reason.as_deref().unwrap_or("Failed"), message);
        }
        if let Some(e) = summary_error {
            return Desired::new("Ready", false, e.category(), e.chain());
        }
        let done = self.tracked.iter().filter(|t| Self::phase(t) == Some(StagePhase::Succeeded)).count();
        if done == self.tracked.len() {
            let message = match done {
                0 => "no stage needed".to_string(),
                1 => "1 stage finished".to_string(),
                n => format!("{n} stages finished"),
            };
            return Desired::new("Ready", true, "Succeeded", message);
        }
        let running: Vec<&str> = self
            .tracked
            .iter()
            .filter(|t| t.record.is_some() && Self::phase(t) != Some(StagePhase::Succeeded))
            .map(|t| t.def.name.as_str())
            .collect();
        let message = format!("{done}/{} stages finished; running {}", self.tracked.len(), list(&running));
        Desired::new("Ready", false, "Running", message)
    }

    fn step(&self, step: Step, skipped: impl FnOnce() -> String) -> Desired {
        let of_step: Vec<&Tracked> = self.tracked.iter().filter(|t| t.def.step == step).collect();
        let type_ = step.condition_type();
        if of_step.is_empty() {
            return Desired::new(type_, true, "Skipped", skipped());
        }
        if let Some(failed) = self.first_failed(Some(step)) {
            let message = format!("{}: {}", failed.name, failed.message.as_deref().unwrap_or_default());
            return Desired::new(type_, false, failed.reason.as_deref().unwrap_or("Failed"), message);
        }
        let done = of_step.iter().filter(|t| Self::phase(t) == Some(StagePhase::Succeeded)).count();
        let progress = |what: &str| match of_step.as_slice() {
            [one] => format!("stage {} {what}", one.def.name),
            _ => format!("{done}/{} groups finished", of_step.len()),
        };
        if done == of_step.len() {
            return Desired::new(type_, true, "Succeeded", progress("succeeded"));
        }
        if of_step.iter().any(|t| t.record.is_some()) {
            return Desired::new(type_, false, "Running", progress("is running"));
        }
        let waits_for: Vec<&str> = of_step.iter().flat_map(|t| t.def.after.iter().map(String::as_str)).collect();
        Desired::new(type_, false, "Waiting", format!("waiting for {}", list(&waits_for)))
    }

    /// `Ready`, `Failed`, or the first unfinished step with its progress (`score 2/5`).
    fn summary(&self, steps: &[Step], ready: bool, failed: bool) -> String {
        if ready {
            return "Ready".into();
        }
        if failed {
            return "Failed".into();
        }
        for &step in steps {
            let of_step: Vec<&Tracked> = self.tracked.iter().filter(|t| t.def.step == step).collect();
            let done = of_step.iter().filter(|t| Self::phase(t) == Some(StagePhase::Succeeded)).count();
            if done < of_step.len() {
                return match of_step.len() {
                    1 => step.as_str().to_string(),
                    n => format!("{} {done}/{n}", step.as_str()),
                };
            }
        }
        "Running".into()
    }
}

/// At most three names, then a count of the rest.
fn list(names: &[&str]) -> String {
    let mut names: Vec<&str> = names.to_vec();
    names.dedup();
    match names.len() {
        0 => "nothing".into(),
        n if n <= 3 => names.join(", "),
        n => format!("{} and {} more", names[..3].join(", "), n - 3),
    }
}
