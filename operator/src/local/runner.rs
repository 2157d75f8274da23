//! Runs stage Jobs as local `scorer-runner` processes, a bounded number at a time.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::state::{Outcome, State};
use crate::reconcile::{JobRequest, JobState};
use crate::{Error, Result};

/// Bytes of a failed Job's log kept for its stage condition.
const LOG_TAIL: u64 = 4096;

/// The `scorer-runner` to run: `MIRA_SCORER_RUNNER` when set, else the one next to this binary,
/// else the one on `PATH`.
pub fn locate() -> Result<PathBuf> {
    const NAME: &str = "scorer-runner";
    if let Some(path) = std::env::var_os("MIRA_SCORER_RUNNER") {
        return Ok(PathBuf::from(path));
    }
    let beside =
        std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join(NAME))).filter(|p| p.is_file());
    let on_path = || {
        std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(NAME)).find(|p| p.is_file()))
    };
    beside.or_else(on_path).ok_or(Error::RunnerMissing)
}

/// A Job waiting for a free slot.
struct Queued {
    request: JobRequest,
    plan: PathBuf,
}

pub struct Runner {
    program: PathBuf,
    parallel: usize,
    state: State,
    queue: VecDeque<Queued>,
    running: JoinSet<(String, Outcome)>,
    /// Stops a running Job's process.
    kill: HashMap<String, oneshot::Sender<()>>,
    /// How often the processes report progress.
    progress_every: Duration,
}

impl Runner {
    pub fn new(program: PathBuf, state: State, parallel: usize, progress_every: Duration) -> Self {
        Runner {
            program,
            parallel: parallel.max(1),
            state,
            queue: VecDeque::new(),
            running: JoinSet::new(),
            kill: HashMap::new(),
            progress_every,
        }
    }

    /// Queues a Job; it starts when a slot is free.
    pub fn submit(&mut self, request: JobRequest, plan: PathBuf) -> Result<()> {
        if self.kill.contains_key(&request.name) || self.queue.iter().any(|q| q.request.name == request.name) {
            return Ok(());
        }
        self.queue.push_back(Queued { request, plan });
        self.start_queued()
    }

    /// Stops a Job, queued or running.
    pub fn delete(&mut self, job: &str) {
        self.queue.retain(|q| q.request.name != job);
        if let Some(kill) = self.kill.remove(job) {
            // The process may have just exited; then there is nothing to stop.
            let _ = kill.send(());
        }
    }

    /// Stops every Job, queued or running, and returns once their processes are killed (each
    /// process is killed when its task is dropped).
    pub async fn stop(&mut self) {
        self.queue.clear();
        self.kill.clear();
        self.running.shutdown().await;
    }

    /// Jobs not finished yet.
    pub fn active(&self) -> BTreeMap<String, JobState> {
        let queued = self.queue.iter().map(|q| (q.request.name.clone(), JobState::Pending));
        queued.chain(self.kill.keys().map(|name| (name.clone(), JobState::Running))).collect()
    }

    /// Waits for the next Job to finish; `None` when none is running. Deleted Jobs are not
    /// reported: nothing waits for them.
    pub async fn next(&mut self) -> Result<Option<(String, Outcome)>> {
        while let Some(joined) = self.running.join_next().await {
            let (job, outcome) = joined.map_err(Error::WorkerTask)?;
            let deleted = self.kill.remove(&job).is_none();
            self.start_queued()?;
            if !deleted {
                return Ok(Some((job, outcome)));
            }
        }
        Ok(None)
    }

    fn start_queued(&mut self) -> Result<()> {
        while self.running.len() < self.parallel {
            let Some(Queued { request, plan }) = self.queue.pop_front() else { break };
            let log = self.state.log_path(&request.name);
            let file = std::fs::File::create(&log).map_err(|e| Error::state(&log, e))?;
            let err = file.try_clone().map_err(|e| Error::state(&log, e))?;
            let mut child = tokio::process::Command::new(&self.program)
                .arg(request.step.as_str())
                .arg("--plan")
                .arg(&plan)
                .arg("--scratch")
                .arg(self.state.scratch())
                .env("MIRA_WORKER_ID", format!("{}-0", request.name))
                .env("MIRA_PROGRESS_SECONDS", self.progress_every.as_secs_f64().to_string())
                .stdin(Stdio::null())
                .stdout(file)
                .stderr(err)
                .kill_on_drop(true)
                .spawn()
                .map_err(|source| Error::RunnerStart { program: self.program.clone(), source })?;
            let (kill, killed) = oneshot::channel();
            self.kill.insert(request.name.clone(), kill);
            let job = request.name;
            self.running.spawn(async move {
                let status = tokio::select! {
                    status = child.wait() => status,
                    _ = killed => {
                        let _ = child.kill().await;
                        return (job, Outcome::Failed { reason: "Deleted".into(), log: String::new() });
                    }
                };
                let outcome = match status {
                    Ok(s) if s.success() => Outcome::Succeeded,
                    Ok(s) => Outcome::Failed {
                        reason: s.code().map_or("Killed".into(), |c| format!("ExitCode{c}")),
                        log: tail(&log),
                    },
                    Err(e) => Outcome::Failed { reason: "WaitFailed".into(), log: e.to_string() },
                };
                (job, outcome)
            });
        }
        Ok(())
    }
}

/// The last few KiB of a log, from a line start.
fn tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else { return String::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    match (len > LOG_TAIL, text.find('\n')) {
        (true, Some(i)) => text[i + 1..].to_string(),
        _ => text.into_owned(),
    }
}
