//! `mira run -f <manifests>`: the stage engine on one machine, without a cluster. State lives
//! on local disk (resumable: a rerun continues where the last one stopped and never redoes a
//! finished stage), each Job is a local `scorer-runner` process, and Events become progress
//! lines.

mod console;
mod manifests;
mod runner;
mod state;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use scorer_runner::progress::{self, Snapshot};

use crate::api::{FilterRun, StagePhase};
use crate::describe;
use crate::reconcile::{reconcile, Action, Input, JobState, KindStatus, Pipeline, Policy};
use crate::report;
use crate::results::Results;
use crate::{Error, Result};
use console::Console;
use manifests::Resources;
use runner::Runner;
use state::{Outcome, State};

/// Passes in a row that may change something before the runner must wait for a Job; more means
/// the engine is not converging, which is a bug worth stopping for.
const MAX_BUSY_PASSES: usize = 100;
/// How often the stage processes report progress unless `MIRA_PROGRESS_SECONDS` says.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

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
    let (mut resources, state_dir) = load(&options.manifests, options.state.clone())?;
    let state = State::open(&state_dir)?;
    adopt(&state, &mut resources)?;
    println!("state: {}", state_dir.display());
    let every = progress::every_from_env(PROGRESS_EVERY);
    let mut local = Local {
        runner: Runner::new(runner::locate()?, state.clone(), options.parallel, every),
        finished: state.outcomes()?,
        state,
        results: Results::default(),
        console: Console::new(5 * every),
    };
    // Progress is read again at the pace the stage processes write it.
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = Stop::new()?;
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
        local.console.show(running(&resources));
        let (job, outcome) = tokio::select! {
            next = local.runner.next() => match next? {
                Some(finished) => finished,
                None => break,
            },
            _ = tick.tick() => continue,
            signal = stop.next() => {
                // The stage processes are killed before the state directory's lock is released:
                // their committed units stay, and a rerun redoes only what was in flight.
                local.console.clear();
                local.runner.stop().await;
                return Err(Error::Interrupted(signal));
            }
        };
        if let Outcome::Failed { reason, .. } = &outcome {
            let log = local.state.log_path(&job);
            local.console.line(&format!("! job {job} failed ({reason}); log: {}", log.display()));
        }
        local.state.save_outcome(&job, &outcome)?;
        local.finished.insert(job, outcome);
    }
    local.console.clear();
    println!();
    let ready = [
        describe_all(&resources.source_groups),
        describe_all(&resources.rubric_sets),
        describe_all(&resources.distillation_jobs),
        describe_all(&resources.filter_runs),
    ];
    let selections = resources.filter_runs_with_lineage();
    let ready_report = |f: &FilterRun| {
        let status = f.status.as_ref().filter(|s| s.pipeline.ready_at(f.metadata.generation));
        status.and_then(|s| s.report.clone())
    };
    for (filter_run, lineage) in &selections {
        let Some(report) = ready_report(filter_run) else { continue };
        // A selection that finished before another of its corpus was written without it: its
        // report is written again, beside every selection of the corpus made by now.
        let compared = selections
            .iter()
            .any(|(p, l)| report::same_corpus((filter_run, lineage), (p, l)) && ready_report(p).is_some());
        if compared {
            report::write(filter_run.clone(), lineage.clone(), &selections, &report).await?;
        }
        println!("report: {report}");
    }
    Ok(ready.iter().all(|r| *r))
}

/// `mira report -f <manifests>`: the report of the FilterRun `name` as a local run (perhaps
/// still going) left it, written to `out`: by default where the run writes it
/// (`status.report`), or `<name>-report.html` here before the FilterRun has selected.
pub async fn report(manifests: &Path, state: Option<PathBuf>, name: &str, out: Option<PathBuf>) -> Result<String> {
    let (mut resources, state_dir) = load(manifests, state)?;
    adopt(&State::read_only(&state_dir)?, &mut resources)?;
    let filter_run = resources
        .filter_runs
        .iter()
        .find(|f| f.name_any() == name)
        .ok_or_else(|| Error::InvalidArgument(format!("no FilterRun {name:?} in {}", manifests.display())))?;
    let uri = match out {
        Some(path) => path.display().to_string(),
        None => {
            filter_run.status.as_ref().and_then(|s| s.report.clone()).unwrap_or_else(|| format!("{name}-report.html"))
        }
    };
    let lineage = resources.lineage(&filter_run.namespace().unwrap_or_default(), filter_run.upstream_ref());
    report::write(filter_run.clone(), lineage, &resources.filter_runs_with_lineage(), &uri).await?;
    Ok(uri)
}

/// The resources of `manifests` and the state directory (`.mira/` beside them by default).
/// The manifests' path is made absolute against the working directory, once: a bare file name
/// has an empty parent, which would otherwise become the base of the state directory and of
/// the manifests' relative paths.
fn load(manifests: &Path, state: Option<PathBuf>) -> Result<(Resources, PathBuf)> {
    let manifests = std::path::absolute(manifests)
        .map_err(|e| Error::Manifest { path: manifests.to_path_buf(), message: e.to_string() })?;
    let resources = manifests::load(&manifests)?;
    let state_dir = state.unwrap_or_else(|| default_state_dir(&manifests));
    Ok((resources, state_dir))
}

/// SIGINT and SIGTERM, which stop the run and its stage processes with it: without a handler
/// the processes would outlive `mira run` and go on writing into its state directory.
struct Stop {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Stop {
    fn new() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let listen = |kind| signal(kind).map_err(|e| Error::state("signal handler", e));
        Ok(Stop { interrupt: listen(SignalKind::interrupt())?, terminate: listen(SignalKind::terminate())? })
    }

    /// The name of the next signal received.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
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
    console: Console,
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
        let config = object.storage(&lineage).map(|s| s.config());
        let (results, progress) = match &config {
            Some(config) => self.results.observe(object, &lineage, &jobs, config).await?,
            None => Default::default(),
        };
        let output = reconcile(
            &Input {
                resource: &*object,
                lineage: &lineage,
                jobs: &jobs,
                results: &results,
                progress: &progress,
                // Whoever runs `mira run` is also who would set an operator's allowlists.
                policy: &Policy::default(),
            },
            &Time(Timestamp::now()),
        );
        if let Some(config) = &config {
            let peers = async { resources.filter_runs_with_lineage() };
            if let Some(uri) = report::write_if_filter_run(&*object, &output.status, &lineage, peers, config).await? {
                self.console.line(&format!("- {} {}: wrote the run report {uri}", K::kind(&()), object.name_any()));
            }
        }
        let mut changed = !output.actions.is_empty();
        for action in output.actions {
            self.apply(&*object, action)?;
        }
        if object.status() != Some(&output.status) {
            // Progress moves with every report of a worker: saved, but not a change that makes
            // the loop pass again at once rather than wait for a Job (it would never rest).
            changed |= object.status().map(without_progress) != Some(without_progress(&output.status));
            *object.status_mut() = Some(output.status);
            self.state.save(object)?;
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
                    self.console.line(&format!(
                        "  note: {} reads ${} (Secret {} key {} in a cluster); it is not set",
                        request.name, secret.env, secret.secret, secret.key
                    ));
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
                let mark = if event.warning { "!" } else { "-" };
                self.console.line(&format!("{mark} {} {}: {}", K::kind(&()), object.name_any(), event.note));
            }
        }
        Ok(())
    }
}

/// A status without its progress figures.
fn without_progress<S: KindStatus>(status: &S) -> S {
    let mut status = status.clone();
    let pipeline = status.pipeline_mut();
    pipeline.progress = None;
    for record in &mut pipeline.stages {
        record.progress = None;
    }
    status
}

/// Prints each resource's conditions, stages and highlights; true when all are Ready.
fn describe_all<K: Pipeline>(objects: &[K]) -> bool {
    let mut all_ready = true;
    for object in objects {
        all_ready &= object.status().is_some_and(|s| s.pipeline().ready_at(object.meta().generation));
        for line in describe::describe(object) {
            println!("{line}");
        }
    }
    all_ready
}

/// Every running stage's progress, keyed by `Kind/name stage`.
fn running(resources: &Resources) -> BTreeMap<String, Snapshot> {
    fn of<K: Pipeline>(objects: &[K], into: &mut BTreeMap<String, Snapshot>) {
        for object in objects {
            let Some(status) = object.status() else { continue };
            for record in status.pipeline().stages.iter().filter(|r| r.phase == StagePhase::Running) {
                if let Some(progress) = &record.progress {
                    into.insert(format!("{}/{} {}", K::kind(&()), object.name_any(), record.name), progress.clone());
                }
            }
        }
    }
    let mut running = BTreeMap::new();
    of(&resources.source_groups, &mut running);
    of(&resources.rubric_sets, &mut running);
    of(&resources.distillation_jobs, &mut running);
    of(&resources.filter_runs, &mut running);
    running
}
