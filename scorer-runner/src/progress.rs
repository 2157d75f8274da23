//! How far a step has got, for the people waiting on it: a 3-hour score and a hung one look the
//! same from outside unless the step says where it is.
//!
//! Each worker counts the units it has seen committed (by anyone) out of the units it was given,
//! and the records and record bytes it read. Every few seconds it logs one `progress` line and
//! writes its counts to `<output>/_progress/<worker>.json`; the operator and `mira run` read
//! those few objects (one per worker) rather than listing every unit's commit, so reading
//! progress costs the same at 10 shards and at 100,000. The last write, at the step's end, stays
//! beside the result as the stage's final figures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::formats::Batch;
use crate::storage::{join, Storage};

/// The folder of the workers' progress objects under a step's output root.
pub const PROGRESS_DIR: &str = "_progress";

/// How often a worker reports when `MIRA_PROGRESS_SECONDS` is unset.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(10);

/// `MIRA_PROGRESS_SECONDS` when it is a number of seconds, at least 0.05 (zero, negative or
/// infinite values would spin, or panic in a timer); `default` otherwise.
pub fn every_from_env(default: Duration) -> Duration {
    std::env::var("MIRA_PROGRESS_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite())
        .map_or(default, |s| Duration::from_secs_f64(s.max(0.05)))
}

/// One worker's live counters.
#[derive(Debug)]
pub struct Progress {
    units_done: AtomicU64,
    units_resumed: AtomicU64,
    units_total: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    started: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            units_done: AtomicU64::new(0),
            units_resumed: AtomicU64::new(0),
            units_total: AtomicU64::new(0),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

impl Progress {
    /// Units given to this worker (a step that runs units twice adds both).
    pub fn add_units(&self, n: usize) {
        self.units_total.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A unit seen committed, by this worker or another; `resumed` when it was committed before
    /// this worker started (by an earlier run), which says nothing of the pace.
    pub fn unit_done(&self, resumed: bool) {
        self.units_done.fetch_add(1, Ordering::Relaxed);
        if resumed {
            self.units_resumed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A batch read: its records, and their bytes (uncompressed JSON; none for Parquet rows read
    /// as Arrow only).
    pub fn read(&self, batch: &Batch) {
        self.records.fetch_add(batch.records.len() as u64, Ordering::Relaxed);
        let bytes: usize = batch.records.iter().map(|r| r.bytes.len()).sum();
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self, finished: bool) -> Snapshot {
        Snapshot {
            units_done: self.units_done.load(Ordering::Relaxed),
            units_resumed: self.units_resumed.load(Ordering::Relaxed),
            units_total: self.units_total.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            elapsed_seconds: self.started.elapsed().as_secs_f64(),
            workers: 1,
            finished,
        }
    }
}

/// A worker's counts at one moment, or several workers' combined ([`Snapshot::combine`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Units known committed. Each worker sees every commit eventually, so the combined figure
    /// is the most any worker has seen.
    pub units_done: u64,
    /// Of those, units already committed when the workers started (a resumed run): left out
    /// of the pace the ETA is computed from.
    #[serde(default)]
    pub units_resumed: u64,
    /// Units of the step (its shards, groups or batches of teacher calls).
    pub units_total: u64,
    /// Records read (summed over workers; a unit redone after a killed worker counts twice).
    pub records: u64,
    /// Bytes of the records read (uncompressed JSON; none for Parquet rows copied as Arrow).
    pub bytes: u64,
    /// Since the (longest-running) worker started.
    pub elapsed_seconds: f64,
    /// Workers reporting.
    pub workers: u32,
    /// Every reporting worker has finished the step.
    pub finished: bool,
}

impl Snapshot {
    /// Several workers' snapshots as one; `None` for none.
    pub fn combine(snapshots: impl IntoIterator<Item = Snapshot>) -> Option<Snapshot> {
        snapshots.into_iter().reduce(|a, b| Snapshot {
            units_done: a.units_done.max(b.units_done),
            units_resumed: a.units_resumed.max(b.units_resumed),
            units_total: a.units_total.max(b.units_total),
            records: a.records + b.records,
            bytes: a.bytes + b.bytes,
            elapsed_seconds: a.elapsed_seconds.max(b.elapsed_seconds),
            workers: a.workers + b.workers,
            finished: a.finished && b.finished,
        })
    }

    /// Stages running side by side as one: their units and records add up; the time is the
    /// longest. `None` for none.
    pub fn sum(snapshots: impl IntoIterator<Item = Snapshot>) -> Option<Snapshot> {
        snapshots.into_iter().reduce(|a, b| Snapshot {
            units_done: a.units_done + b.units_done,
            units_resumed: a.units_resumed + b.units_resumed,
            units_total: a.units_total + b.units_total,
            ..Snapshot::combine([a, b]).expect("two snapshots")
        })
    }

    pub fn records_per_second(&self) -> f64 {
        if self.elapsed_seconds > 0.0 {
            self.records as f64 / self.elapsed_seconds
        } else {
            0.0
        }
    }

    /// Seconds left at the pace so far, from the units: unknown before the first unit commits.
    pub fn eta_seconds(&self) -> Option<f64> {
        if self.finished || (self.units_total > 0 && self.units_done >= self.units_total) {
            return Some(0.0);
        }
        let fresh = self.units_done.saturating_sub(self.units_resumed);
        (fresh > 0).then(|| self.elapsed_seconds * (self.units_total - self.units_done) as f64 / fresh as f64)
    }

    /// `12/40 units, 1.2k records/s, ETA 3m10s`: one line for a log, a column or a terminal.
    pub fn summary(&self) -> String {
        let mut line = match self.units_total {
            // Still listing its inputs, or loading a model, before it knows its units.
            0 if !self.finished => "starting".to_string(),
            total => format!("{}/{total} units", self.units_done),
        };
        if self.records > 0 {
            line.push_str(&format!(", {} records/s", si(self.records_per_second())));
        }
        match self.eta_seconds() {
            _ if self.finished => line.push_str(&format!(", took {}", duration(self.elapsed_seconds))),
            Some(eta) => line.push_str(&format!(", ETA {}", duration(eta))),
            None => {}
        }
        line
    }
}

/// `950`, `12.3k`, `4.1M`.
pub fn si(value: f64) -> String {
    match value {
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// `0.4s`, `45s`, `3m10s`, `2h05m`.
pub fn duration(seconds: f64) -> String {
    if seconds < 9.95 {
        return format!("{seconds:.1}s");
    }
    let s = seconds.round() as u64;
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The combined progress of every worker of the step writing under `output`; `None` before any
/// has reported. A progress object that does not parse (torn by a crash) is left out.
pub async fn read(storage: &Storage, output: &str) -> Result<Option<Snapshot>> {
    let objects = storage.list(&join(output, &format!("{PROGRESS_DIR}/"))).await?;
    let snapshots: Vec<Option<Snapshot>> = futures::stream::iter(objects)
        .map(|o| async move {
            let bytes = storage.get_opt(&o.uri).await?;
            Ok::<_, crate::Error>(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    Ok(Snapshot::combine(snapshots.into_iter().flatten()))
}

/// Reports a worker's progress every `every` until [`Reporter::finish`].
pub struct Reporter {
    task: tokio::task::JoinHandle<()>,
    stop: Arc<tokio::sync::Notify>,
    write: Arc<Write>,
}

struct Write {
    progress: Arc<Progress>,
    storage: Arc<Storage>,
    uri: String,
    step: &'static str,
}

impl Write {
    async fn report(&self, finished: bool) {
        let snapshot = self.progress.snapshot(finished);
        tracing::info!(
            step = self.step,
            units_done = snapshot.units_done,
            units_total = snapshot.units_total,
            records = snapshot.records,
            bytes = snapshot.bytes,
            records_per_second = format!("{:.1}", snapshot.records_per_second()),
            eta_seconds = snapshot.eta_seconds().map(|s| format!("{s:.0}")),
            "progress: {}",
            snapshot.summary()
        );
        // Progress is for people; failing to write it must not fail the step.
        if let Err(e) = self.storage.put_json(&self.uri, &snapshot).await {
            tracing::warn!(uri = %self.uri, error = %e, "could not write progress");
        }
    }
}

impl Reporter {
    pub fn start(
        progress: Arc<Progress>,
        storage: Arc<Storage>,
        output: &str,
        worker: &str,
        step: &'static str,
        every: Duration,
    ) -> Self {
        let name = crate::units::unit_id(worker, worker);
        let uri = join(output, &format!("{PROGRESS_DIR}/{name}.json"));
        let write = Arc::new(Write { progress, storage, uri, step });
        let stop = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn({
            let (write, stop) = (write.clone(), stop.clone());
            async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(every) => write.report(false).await,
                        () = stop.notified() => break,
                    }
                }
            }
        });
        Reporter { task, stop, write }
    }

    /// Stops the periodic reports, waiting for one being written (so that it cannot land after
    /// the last), and writes the last one.
    pub async fn finish(self, finished: bool) {
        self.stop.notify_one();
        let _ = self.task.await;
        self.write.report(finished).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(done: u64, total: u64, records: u64, elapsed: f64) -> Snapshot {
        Snapshot {
            units_done: done,
            units_resumed: 0,
            units_total: total,
            records,
            bytes: 0,
            elapsed_seconds: elapsed,
            workers: 1,
            finished: false,
        }
    }

    #[test]
    fn workers_combine_into_the_most_seen_units_and_the_sum_of_records() {
        let all = Snapshot::combine([snapshot(3, 10, 100, 20.0), snapshot(5, 10, 300, 10.0)]).unwrap();
        assert_eq!((all.units_done, all.units_total, all.records, all.workers), (5, 10, 400, 2));
        assert_eq!(all.elapsed_seconds, 20.0);
        assert_eq!(all.records_per_second(), 20.0);
        assert!(Snapshot::combine([]).is_none());
        let stages = Snapshot::sum([snapshot(3, 10, 100, 20.0), snapshot(5, 10, 300, 10.0)]).unwrap();
        assert_eq!((stages.units_done, stages.units_total, stages.records), (8, 20, 400));
    }

    #[test]
    fn the_eta_follows_the_pace_of_the_units_so_far() {
        assert_eq!(snapshot(0, 10, 0, 30.0).eta_seconds(), None);
        assert_eq!((snapshot(0, 0, 0, 3.0).eta_seconds(), snapshot(0, 0, 0, 3.0).summary()), (None, "starting".into()));
        assert_eq!(snapshot(2, 10, 0, 30.0).eta_seconds(), Some(120.0));
        assert_eq!(snapshot(10, 10, 0, 30.0).eta_seconds(), Some(0.0));
        let resumed = Snapshot { units_resumed: 8, ..snapshot(10, 20, 0, 30.0) };
        assert_eq!(resumed.eta_seconds(), Some(150.0), "2 units in 30 s, 10 to go; the 8 resumed took no time");
        assert_eq!(Snapshot { units_resumed: 2, ..snapshot(2, 10, 0, 1.0) }.eta_seconds(), None);
        assert_eq!(snapshot(2, 10, 1500, 30.0).summary(), "2/10 units, 50 records/s, ETA 2m00s");
        let done = Snapshot { finished: true, ..snapshot(10, 10, 90_000, 7300.0) };
        assert_eq!(done.summary(), "10/10 units, 12 records/s, took 2h01m");
        assert_eq!([duration(0.42), duration(12.4), duration(190.0)], ["0.4s", "12s", "3m10s"]);
    }

    #[tokio::test]
    async fn a_worker_reports_while_it_runs_and_once_more_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::new(Default::default()));
        let output = dir.path().join("out").display().to_string();
        let progress = Arc::new(Progress::default());
        progress.add_units(4);
        let reporter =
            Reporter::start(progress.clone(), storage.clone(), &output, "w-1", "score", Duration::from_millis(20));
        progress.unit_done(false);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let running = read(&storage, &output).await.unwrap().unwrap();
        assert_eq!((running.units_done, running.units_total, running.finished), (1, 4, false));
        progress.unit_done(false);
        reporter.finish(true).await;
        let last = read(&storage, &output).await.unwrap().unwrap();
        assert_eq!((last.units_done, last.finished), (2, true));
    }
}
