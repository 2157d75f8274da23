//! `mira run -f <manifests>`: the stage engine on one machine, without a cluster. State lives
//! on local disk (resumable: a rerun continues where the last one stopped and never redoes a
//! finished stage), each Job is a local `scorer-runner` process, and Events become progress
//! lines.

mod manifests;
mod runner;
mod state;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::reconcile::{reconcile, Action, Input, JobState, KindStatus, Pipeline};
use crate::results::Results;
use crate::{Error, Result};
use manifests::Resources;
use runner::Runner;
use state::{Outcome, State};

/// Passes in a row that may change something before the runner must wait for a Job; more means
/// the engine is not converging, which is a bug worth stopping for.
const MAX_BUSY_PASSES: usize = 100;

pub struct Options {
    /// A manifest file, or a directory of them.
    pub manifests: PathBuf,
    /// State directory; `.mira/` next to the manifests by default.
    pub state: Option<PathBuf>,
    /// Jobs run at once.
    pub parallel: usize,
}

/// Runs every resource as far as it goes; true when all ended Ready.
pub async fn run(options: Options) -> Result<bool> {
    // Against the working directory, once: a bare file name has an empty parent, which would
    // otherwise become the base of the state directory and of the manifests' relative paths.
    let manifests = std::path::absolute(&options.manifests)
        .map_err(|e| Error::Manifest { path: options.manifests.clone(), message: e.to_string() })?;
    let mut resources = manifests::load(&manifests)?;
    let state_dir = options.state.clone().unwrap_or_else(|| default_state_dir(&manifests));
    let state = State::open(&state_dir)?;
    adopt(&state, &mut resources)?;
    println!("state: {}", state_dir.display());
    let mut local = Local {
        runner: Runner::new(runner::locate()?, state.clone(), options.parallel),
        finished: state.outcomes()?,
        state,
        results: Results::default(),
    };
    let mut busy = 0;
    loop {
        if local.pass(&mut resources).await? {
            busy += 1;
            if busy > MAX_BUSY_PASSES {
                return Err(Error::NoProgress(MAX_BUSY_PASSES));
            }
            continue;
        }
        busy = 0;
        let Some((job, outcome)) = local.runner.next().await? else { break };
        if let Outcome::Failed { reason, .. } = &outcome {
            println!("! job {job} failed ({reason}); log: {}", local.state.log_path(&job).display());
        }
        local.state.save_outcome(&job, &outcome)?;
        local.finished.insert(job, outcome);
    }
    println!();
    let ready = [
        report(&resources.source_groups),
        report(&resources.rubric_sets),
        report(&resources.distillation_jobs),
        report(&resources.filter_runs),
    ];
    Ok(ready.iter().all(|r| *r))
}

/// `.mira/` in the manifests' directory (an absolute path).
fn default_state_dir(manifests: &Path) -> PathBuf {
    let dir = if manifests.is_dir() { manifests } else { manifests.parent().unwrap_or(manifests) };
    dir.join(".mira")
}

fn adopt(state: &State, resources: &mut Resources) -> Result<()> {
    resources.source_groups.iter_mut().try_for_each(|o| state.adopt(o))?;
    resources.rubric_sets.iter_mut().try_for_each(|o| state.adopt(o))?;
    resources.distillation_jobs.iter_mut().try_for_each(|o| state.adopt(o))?;
    resources.filter_runs.iter_mut().try_for_each(|o| state.adopt(o))
}

struct Local {
    state: State,
    runner: Runner,
    /// Outcomes of finished Jobs, as saved in the state (read once, then kept up to date).
    finished: BTreeMap<String, Outcome>,
    results: Results,
}

impl Local {
    /// Reconciles every resource once, upstream kinds first; true when anything changed.
    async fn pass(&mut self, resources: &mut Resources) -> Result<bool> {
        let mut changed = self.pass_kind(resources, |r| &mut r.source_groups).await?;
        changed |= self.pass_kind(resources, |r| &mut r.rubric_sets).await?;
        changed |= self.pass_kind(resources, |r| &mut r.distillation_jobs).await?;
        changed |= self.pass_kind(resources, |r| &mut r.filter_runs).await?;
        Ok(changed)
    }

    async fn pass_kind<K: Pipeline>(
        &mut self,
        resources: &mut Resources,
        objects: fn(&mut Resources) -> &mut Vec<K>,
    ) -> Result<bool> {
        let mut changed = false;
        for i in 0..objects(resources).len() {
            let mut object = objects(resources)[i].clone();
            changed |= self.reconcile(&mut object, resources).await?;
            objects(resources)[i] = object;
        }
        Ok(changed)
    }

    async fn reconcile<K: Pipeline>(&mut self, object: &mut K, resources: &Resources) -> Result<bool> {
        let lineage = resources.lineage(&object.namespace().unwrap_or_default(), object.upstream_ref());
        let mut jobs: BTreeMap<String, JobState> =
            self.finished.iter().map(|(job, o)| (job.clone(), o.clone().into())).collect();
        jobs.extend(self.runner.active());
        let results = match object.storage(&lineage) {
            Some(storage) => self.results.gather(object, &lineage, &jobs, &storage.config()).await?,
            None => BTreeMap::new(),
        };
        let output = reconcile(
            &Input { resource: &*object, lineage: &lineage, jobs: &jobs, results: &results },
            &Time(Timestamp::now()),
        );
        let mut changed = !output.actions.is_empty();
        for action in output.actions {
            self.apply(&*object, action)?;
        }
        if object.status() != Some(&output.status) {
            *object.status_mut() = Some(output.status);
            self.state.save(object)?;
            changed = true;
        }
        Ok(changed)
    }

    fn apply<K: Pipeline>(&mut self, object: &K, action: Action) -> Result<()> {
        match action {
            Action::CreatePlanConfigMap { name, plan, .. } => {
                self.state.write_plan(&name, &plan)?;
            }
            Action::CreateJob(request) => {
                for secret in request.secrets.iter().filter(|s| std::env::var_os(&s.env).is_none()) {
                    println!(
                        "  note: {} reads ${} (Secret {} key {} in a cluster); it is not set",
                        request.name, secret.env, secret.secret, secret.key
                    );
                }
                let plan = self.state.plan_path(&request.name);
                self.runner.submit(*request, plan)?;
            }
            Action::DeleteJob { name } => {
                self.runner.delete(&name);
                self.state.forget(&name)?;
                self.finished.remove(&name);
            }
            Action::Event(event) => {
                println!(
                    "{} {} {}: {}",
                    if event.warning { "!" } else { "-" },
                    K::kind(&()),
                    object.name_any(),
                    event.note
                );
            }
        }
        Ok(())
    }
}

/// Prints each resource's conditions; true when all are Ready.
fn report<K: Pipeline>(objects: &[K]) -> bool {
    let mut all_ready = true;
    for object in objects {
        let status = object.status().cloned().unwrap_or_default();
        let pipeline = status.pipeline();
        let ready = pipeline.ready_at(object.meta().generation);
        all_ready &= ready;
        println!(
            "{} {}/{}: {}",
            K::kind(&()),
            object.namespace().unwrap_or_default(),
            object.name_any(),
            pipeline.stage.as_deref().unwrap_or("-")
        );
        for c in &pipeline.conditions {
            let message = if c.message.is_empty() { String::new() } else { format!(": {}", c.message) };
            println!("  {}={} {}{message}", c.type_, c.status, c.reason);
        }
        for line in K::highlights(&status) {
            println!("  {line}");
        }
    }
    all_ready
}
