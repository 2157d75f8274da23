//! Work units: how N workers share a step's work with no coordinator, and why a killed worker
//! loses nothing.
//!
//! Each unit (a shard, a group, ...) has a stable id. Under the step's output root:
//! - `_units/<id>/claim.<n>`: a lease, created with put-if-absent; the holder renews it while it
//!   works. A claim whose lease has run out is taken over by creating claim `n + 1`, which only one
//!   contender can do. Claims only avoid duplicate work; they never decide correctness.
//! - `_units/<id>/commit.json`: the unit's result, created with put-if-absent after its outputs
//!   are written. Exactly one commit per unit exists, whoever ran it and however often.
//! - `_units/<id>/failed.json`: the last error a worker met on the unit (informational).
//!
//! A folder per unit, because claiming lists the unit's claims: on local disk a listing reads
//! its whole folder, and one folder for every unit made each claim read every other unit's
//! files (quadratic in the number of units).
//!
//! Unit outputs are deterministic functions of the plan, written atomically at fixed keys, so two
//! workers that both ran a unit wrote the same bytes; readers trust only committed units.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::storage::{join, Storage};

/// Worker identity and lease timing.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub id: String,
    /// How long a claim holds without renewal; a killed worker's units are free again after it.
    pub lease: Duration,
    /// How many units this worker runs at once.
    pub parallelism: usize,
}

impl WorkerConfig {
    /// From the environment: `MIRA_WORKER_ID` (the pod name in a Job), `MIRA_LEASE_SECONDS`,
    /// `MIRA_PARALLELISM`; defaults: host name + pid, 60 s, the number of CPUs.
    pub fn from_env() -> Self {
        let id = std::env::var("MIRA_WORKER_ID").unwrap_or_else(|_| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
            format!("{host}-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8])
        });
        let lease = std::env::var("MIRA_LEASE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60.0);
        let parallelism = std::env::var("MIRA_PARALLELISM")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        WorkerConfig { id, lease: Duration::from_secs_f64(lease), parallelism: parallelism.max(1) }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Claim {
    worker: String,
    /// Unix milliseconds.
    expires_at: i64,
}

/// A unit's committed result.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Commit<T> {
    pub unit: String,
    pub worker: String,
    pub output: T,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Failure {
    unit: String,
    worker: String,
    error: String,
}

enum ClaimOutcome {
    Claimed(String),
    HeldByOther,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The unit protocol for one step's output root.
#[derive(Clone)]
pub struct Units {
    storage: Arc<Storage>,
    root: String,
    worker: WorkerConfig,
    /// Units processed at once.
    in_flight: usize,
    /// Counts the units as they commit.
    progress: Arc<Progress>,
}

impl Units {
    pub fn new(storage: Arc<Storage>, root: &str, worker: WorkerConfig, progress: Arc<Progress>) -> Self {
        Units { storage, root: root.to_string(), in_flight: worker.parallelism, worker, progress }
    }

    /// Twice `parallelism` units in flight, for a step whose units run their CPU-bound work
    /// through [`crate::steps::Context::compute`], which keeps that at `parallelism`: a unit's
    /// claim, reads, upload and commit then overlap another's compute instead of leaving a core
    /// idle (score had its two cores busy 173 % of the time, the plain read of the same shards
    /// 197 %).
    pub fn overlapping(mut self) -> Self {
        self.in_flight = 2 * self.worker.parallelism;
        self
    }

    fn key(&self, unit: &str, suffix: &str) -> String {
        join(&self.root, &format!("_units/{unit}/{suffix}"))
    }

    pub async fn commit_of<T: DeserializeOwned>(&self, unit: &str) -> Result<Option<Commit<T>>> {
        let uri = self.key(unit, "commit.json");
        let Some(bytes) = self.storage.get_opt(&uri).await? else { return Ok(None) };
        match serde_json::from_slice(&bytes) {
            Ok(commit) => Ok(Some(commit)),
            // Commits are written whole (put-if-absent of a synced file), so one that does not
            // parse was torn by a crash or a disk fault outside this code: the unit is not done.
            // It is removed, so that this worker's commit can take its place.
            Err(e) => {
                tracing::warn!(commit = %uri, error = %e, "a unit's commit does not parse; the unit is redone");
                self.storage.delete(&uri).await?;
                Ok(None)
            }
        }
    }

    async fn try_claim(&self, unit: &str) -> Result<ClaimOutcome> {
        let prefix = self.key(unit, "claim.");
        let latest = self
            .storage
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|o| o.uri.rsplit('.').next().and_then(|n| n.parse::<u64>().ok()).map(|n| (n, o.uri)))
            .max();
        let next = match latest {
            None => 0,
            Some((n, uri)) => match self.storage.get_opt(&uri).await? {
                Some(bytes) => match serde_json::from_slice::<Claim>(&bytes) {
                    // A live claim of this worker's own id was left by an earlier life of this
                    // worker (`mira run` names its workers after their Job, so a rerun after a
                    // stop would otherwise wait out the lease of its own killed process). Were
                    // that process still alive, both would run the unit and write the same bytes.
                    Ok(claim) if claim.expires_at > now_ms() && claim.worker != self.worker.id => {
                        return Ok(ClaimOutcome::HeldByOther)
                    }
                    // Expired, or torn (as a commit can be): free to claim anew.
                    _ => n + 1,
                },
                // Released (deleted) after a failure: free to claim anew.
                None => n + 1,
            },
        };
        let uri = self.key(unit, &format!("claim.{next}"));
        if self.storage.put_if_absent(&uri, self.claim_body()?).await? {
            Ok(ClaimOutcome::Claimed(uri))
        } else {
            Ok(ClaimOutcome::HeldByOther)
        }
    }

    fn claim_body(&self) -> Result<bytes::Bytes> {
        let claim =
            Claim { worker: self.worker.id.clone(), expires_at: now_ms() + self.worker.lease.as_millis() as i64 };
        Ok(serde_json::to_vec(&claim).map_err(|e| Error::json("claim", e))?.into())
    }

    /// Renews the claim every third of the lease until dropped.
    fn heartbeat(&self, claim_uri: String) -> tokio::task::JoinHandle<()> {
        let units = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(units.worker.lease / 3).await;
                if let Ok(body) = units.claim_body() {
                    if let Err(e) = units.storage.put(&claim_uri, body).await {
                        tracing::warn!(claim = %claim_uri, error = %e, "could not renew claim");
                    }
                }
            }
        })
    }

    /// Runs every unit not yet committed, sharing them with any other workers of the same step,
    /// and returns every unit's commit in the order given. See [`Units::run_each`].
    pub async fn run<T, F, Fut>(&self, unit_ids: &[String], process: F) -> Result<Vec<Commit<T>>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut commits: Vec<Option<Commit<T>>> = (0..unit_ids.len()).map(|_| None).collect();
        self.run_each(unit_ids, process, |i, commit| commits[i] = Some(commit)).await?;
        Ok(commits.into_iter().map(|c| c.expect("every unit committed")).collect())
    }

    /// Runs every unit not yet committed, sharing them with any other workers of the same step,
    /// and hands each unit's commit (with the unit's index) to `take` as it arrives, in no
    /// particular order: a step whose units' results add up keeps the sum, not every result, so
    /// its memory does not grow with the number of units. Waits for units other live workers
    /// hold; takes over those whose lease runs out. Each unit is tried at most once by this
    /// worker; if any failed, returns [`Error::UnitsFailed`] after all others are done.
    pub async fn run_each<T, F, Fut>(
        &self,
        unit_ids: &[String],
        process: F,
        mut take: impl FnMut(usize, Commit<T>),
    ) -> Result<()>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut committed = vec![false; unit_ids.len()];
        let mut failed: Vec<Option<String>> = vec![None; unit_ids.len()];
        self.progress.add_units(unit_ids.len());
        // Workers start at different offsets so they rarely contend for the same claim.
        let offset = (xxhash_rust::xxh3::xxh3_64(self.worker.id.as_bytes()) as usize) % unit_ids.len().max(1);
        let mut first_round = true;
        loop {
            let pending: Vec<usize> = (0..unit_ids.len())
                .map(|i| (i + offset) % unit_ids.len())
                .filter(|&i| !committed[i] && failed[i].is_none())
                .collect();
            if pending.is_empty() {
                break;
            }
            let mut outcomes = futures::stream::iter(pending)
                .map(|i| {
                    let fut = self.run_one(&unit_ids[i], &process, i);
                    async move { (i, fut.await) }
                })
                .buffer_unordered(self.in_flight);
            let mut waiting = 0;
            while let Some((i, outcome)) = outcomes.next().await {
                match outcome {
                    Ok(Some(commit)) => {
                        committed[i] = true;
                        // Another worker's commit found on the first try: done before this run.
                        self.progress.unit_done(first_round && commit.worker != self.worker.id);
                        take(i, commit);
                    }
                    Ok(None) => waiting += 1,
                    Err(e) => {
                        tracing::error!(unit = %unit_ids[i], error = %e, "unit failed");
                        failed[i] = Some(e.to_string());
                    }
                }
            }
            if waiting > 0 {
                // Units held by other workers: poll until they commit or their lease runs out.
                tracing::info!(
                    units = waiting,
                    lease_seconds = self.worker.lease.as_secs_f64(),
                    "waiting for units claimed by other workers to commit, or for their leases to lapse"
                );
                tokio::time::sleep((self.worker.lease / 4).min(Duration::from_secs(5))).await;
            }
            first_round = false;
        }
        let errors: Vec<String> =
            failed.iter().zip(unit_ids).filter_map(|(f, id)| f.as_ref().map(|e| format!("{id}: {e}"))).collect();
        if let Some(first) = errors.first() {
            return Err(Error::UnitsFailed { failed: errors.len(), total: unit_ids.len(), first: first.clone() });
        }
        Ok(())
    }

    /// One attempt at one unit: `Ok(None)` when another worker holds it.
    async fn run_one<T, F, Fut>(&self, unit: &str, process: &F, index: usize) -> Result<Option<Commit<T>>>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        if let Some(commit) = self.commit_of(unit).await? {
            return Ok(Some(commit));
        }
        let ClaimOutcome::Claimed(claim_uri) = self.try_claim(unit).await? else {
            return Ok(None);
        };
        // The unit may have been committed between the check and the claim.
        if let Some(commit) = self.commit_of(unit).await? {
            return Ok(Some(commit));
        }
        let heartbeat = self.heartbeat(claim_uri.clone());
        let result = match process(index).await {
            Ok(output) => self.commit(unit, output).await,
            Err(e) => Err(e),
        };
        heartbeat.abort();
        if let Err(e) = &result {
            // Recorded for whoever reads the units (best effort: on a full disk this write can
            // fail too).
            let failure = Failure { unit: unit.to_string(), worker: self.worker.id.clone(), error: e.to_string() };
            if let Err(e) = self.storage.put_json(&self.key(unit, "failed.json"), &failure).await {
                tracing::warn!(unit, error = %e, "could not record the unit's failure");
            }
        }
        // Released either way: after a failure so that another worker, or a rerun, may try at
        // once (the error may pass: a full disk emptied); after a commit because a claim left
        // behind would hold the unit, should its commit ever have to be redone, until the lease
        // lapsed. If the release fails, the lease lapses instead.
        if let Err(e) = self.storage.delete(&claim_uri).await {
            tracing::warn!(unit, error = %e, "could not release the unit's claim; it lapses with its lease");
        }
        result
    }

    /// Commits a unit's output, unless another worker committed the unit first: then that
    /// commit, the one every reader sees, is returned.
    async fn commit<T: Serialize + DeserializeOwned>(&self, unit: &str, output: T) -> Result<Option<Commit<T>>> {
        let commit = Commit { unit: unit.to_string(), worker: self.worker.id.clone(), output };
        let uri = self.key(unit, "commit.json");
        let body = serde_json::to_vec(&commit).map_err(|e| Error::json(&uri, e))?;
        let created = self.storage.put_if_absent(&uri, body.into()).await?;
        self.storage.delete(&self.key(unit, "failed.json")).await?;
        if created {
            return Ok(Some(commit));
        }
        tracing::info!(unit, "unit was committed by another worker first");
        self.commit_of(unit).await
    }
}

/// A unit id safe as an object-key segment, stable for the same input.
pub fn unit_id(label: &str, input: &str) -> String {
    let safe: String =
        label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    format!("{safe}-{:016x}", xxhash_rust::xxh3::xxh3_64(input.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(storage: &Arc<Storage>, root: &str, worker: &str) -> Units {
        let worker = WorkerConfig { id: worker.into(), lease: Duration::from_secs(600), parallelism: 1 };
        Units::new(storage.clone(), root, worker, Arc::default())
    }

    #[tokio::test]
    async fn a_live_claim_holds_off_other_workers_but_not_a_later_life_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::new(Default::default()));
        let root = dir.path().display().to_string();
        assert!(matches!(units(&storage, &root, "job-0").try_claim("u").await.unwrap(), ClaimOutcome::Claimed(_)));
        // The holder was killed with its claim unexpired.
        assert!(matches!(units(&storage, &root, "other").try_claim("u").await.unwrap(), ClaimOutcome::HeldByOther));
        assert!(matches!(units(&storage, &root, "job-0").try_claim("u").await.unwrap(), ClaimOutcome::Claimed(_)));
    }
}
