//! What `mira run` keeps on disk, so that a rerun continues where the last one stopped: per
//! resource the spec it last ran, its generation and status; per Job its outcome, plan and log.
//!
//! Layout under the state directory: `resources/<namespace>/<plural>/<name>.json`,
//! `jobs/<job>.json` (outcomes of finished Jobs), `plans/<job>.json`, `logs/<job>.log`, and
//! `scratch/` for the workers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::api::StagePhase;
use crate::reconcile::{JobState, KindStatus, Pipeline};
use crate::{Error, Result};

/// One resource as last saved. Spec and status are kept as the JSON written and parsed only
/// when read, so a file that an older `mira run` wrote, whose types no longer parse, makes the
/// resource start over (its spec counts as changed, its status as absent) rather than fail.
#[derive(Serialize, Deserialize)]
struct Saved {
    spec: Box<RawValue>,
    generation: i64,
    #[serde(default)]
    status: Option<Box<RawValue>>,
}

/// A finished Job's outcome. Jobs that were still running when a run stopped have none: the
/// next run starts them again under the same name, and they skip the units already committed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase")]
pub enum Outcome {
    Succeeded,
    Failed { reason: String, log: String },
}

impl From<Outcome> for JobState {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Succeeded => JobState::Succeeded,
            Outcome::Failed { reason, log } => JobState::Failed { reason, log },
        }
    }
}

#[derive(Clone)]
pub struct State {
    dir: PathBuf,
    /// An exclusive lock on `lock`, held while this run lasts (the kernel drops it when the
    /// process ends, however it ends): two runs on one state directory would start the same
    /// Jobs twice and overwrite each other's records. None for a reader (`mira report`).
    _lock: Option<std::sync::Arc<std::fs::File>>,
}

impl State {
    pub fn open(dir: &Path) -> Result<Self> {
        for sub in ["resources", "jobs", "plans", "logs", "scratch"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|e| Error::state(&path, e))?;
        }
        let dir = std::path::absolute(dir).map_err(|e| Error::state(dir, e))?;
        let path = dir.join("lock");
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::state(&path, e))?;
        match lock.try_lock() {
            Ok(()) => Ok(State { dir, _lock: Some(std::sync::Arc::new(lock)) }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::StateInUse { dir }),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::state(&path, e)),
        }
    }

    /// The state a run left, to read while that run may still go on: no lock, nothing created.
    pub fn read_only(dir: &Path) -> Result<Self> {
        let dir = std::path::absolute(dir).map_err(|e| Error::state(dir, e))?;
        if !dir.join("resources").is_dir() {
            let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "no run has saved its state here");
            return Err(Error::state(&dir, missing));
        }
        Ok(State { dir, _lock: None })
    }

    pub fn plan_path(&self, job: &str) -> PathBuf {
        self.dir.join("plans").join(format!("{job}.json"))
    }

    pub fn log_path(&self, job: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{job}.log"))
    }

    pub fn scratch(&self) -> PathBuf {
        self.dir.join("scratch")
    }

    fn resource_path<K: Pipeline>(&self, object: &K) -> PathBuf {
        self.dir
            .join("resources")
            .join(object.namespace().unwrap_or_default())
            .join(K::plural(&()).as_ref())
            .join(format!("{}.json", object.name_any()))
    }

    /// Gives a manifest's object its saved generation and status. A spec that differs from the
    /// saved one is a new generation, as the API server would count it; so is a rerun after a
    /// failure, so that failed stages are retried (a failure is final for its generation).
    pub fn adopt<K: Pipeline>(&self, object: &mut K) -> Result<()> {
        let path = self.resource_path(object);
        let meta = object.meta_mut();
        // What the API server would assign: an identity, and generation 1 for a new object.
        meta.uid = Some(format!(
            "local:{}/{}/{}",
            K::plural(&()),
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        ));
        meta.generation = Some(1);
        let saved: Saved = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::state_format(&path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::state(&path, e)),
        };
        let status: Option<K::Status> = saved.status.and_then(|s| serde_json::from_str(s.get()).ok());
        let failed = status.as_ref().is_some_and(|s| s.pipeline().stages.iter().any(|r| r.phase == StagePhase::Failed));
        let changed = serde_json::from_str::<K::Spec>(saved.spec.get()).ok().as_ref() != Some(object.spec());
        object.meta_mut().generation = Some(saved.generation + i64::from(changed || failed));
        *object.status_mut() = status;
        Ok(())
    }

    pub fn save<K: Pipeline>(&self, object: &K) -> Result<()> {
        let path = self.resource_path(object);
        let saved = Saved {
            spec: raw(object.spec(), &path)?,
            generation: object.meta().generation.unwrap_or(1),
            status: object.status().map(|s| raw(s, &path)).transpose()?,
        };
        write_json(&path, &saved)
    }

    /// Outcomes of the Jobs finished so far, as saved.
    pub fn outcomes(&self) -> Result<BTreeMap<String, Outcome>> {
        let dir = self.dir.join("jobs");
        let mut outcomes = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::state(&dir, e))? {
            let path = entry.map_err(|e| Error::state(&dir, e))?.path();
            let Some(job) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let bytes = std::fs::read(&path).map_err(|e| Error::state(&path, e))?;
            outcomes
                .insert(job.to_string(), serde_json::from_slice(&bytes).map_err(|e| Error::state_format(&path, e))?);
        }
        Ok(outcomes)
    }

    pub fn save_outcome(&self, job: &str, outcome: &Outcome) -> Result<()> {
        write_json(&self.dir.join("jobs").join(format!("{job}.json")), outcome)
    }

    pub fn write_plan(&self, job: &str, plan: &str) -> Result<PathBuf> {
        let path = self.plan_path(job);
        write_whole(&path, plan.as_bytes())?;
        Ok(path)
    }

    /// Forgets a deleted Job: its outcome and plan.
    pub fn forget(&self, job: &str) -> Result<()> {
        for path in [self.dir.join("jobs").join(format!("{job}.json")), self.plan_path(job)] {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::state(&path, e)),
                _ => {}
            }
        }
        Ok(())
    }
}

fn raw<T: Serialize>(value: &T, path: &Path) -> Result<Box<RawValue>> {
    serde_json::value::to_raw_value(value).map_err(|e| Error::state_format(path, e))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::state_format(path, e))?;
    write_whole(path, &bytes)
}

/// Writes a temporary file beside `path`, synced, then renames it there: an interrupted run or a
/// full disk never leaves half a file, and a failed write leaves no temporary one either.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::state(parent, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(parent).map_err(|e| Error::state(parent, e))?;
    tmp.write_all(bytes).and_then(|()| tmp.as_file().sync_all()).map_err(|e| Error::state(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| Error::state(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_run_at_a_time_holds_a_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = State::open(dir.path()).unwrap();
        let clone = first.clone();
        assert!(matches!(State::open(dir.path()), Err(Error::StateInUse { .. })));
        drop(first);
        assert!(matches!(State::open(dir.path()), Err(Error::StateInUse { .. })), "a clone still holds it");
        drop(clone);
        State::open(dir.path()).expect("free once the run ends");
    }
}
