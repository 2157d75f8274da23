//! The steps a MIRA Job runs. Each reads a plan, splits its work into units (see [`crate::units`]),
//! writes its outputs under the plan's `output` root, and finishes by writing `_result.json` there
//! for the operator to read back into status.

pub mod cluster;
pub mod discover;
pub mod distill;
pub mod label;
pub mod rubrics;
pub mod sample;
pub mod score;
pub mod select;
pub mod threshold;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::formats::ShardInput;
use crate::plan::Format;
use crate::plan::StorageConfig;
use crate::plan::{sha256_hex, PlanRef, Source, Step, StepPlan, StepResult};
use crate::progress::{Progress, Reporter};
use crate::storage::{join, Storage};
use crate::units::{Units, WorkerConfig};

/// The name of the result object under a step's output root.
pub const RESULT: &str = "_result.json";
/// The name of the plan object under a stage's output root, where a cluster's operator writes it.
pub const PLAN: &str = "_plan.json";

/// What every step gets besides its plan.
#[derive(Clone)]
pub struct Context {
    pub storage: Arc<Storage>,
    pub worker: WorkerConfig,
    /// Local scratch space: downloaded Parquet shards, tokenizers, models, unfinished outputs.
    pub scratch: PathBuf,
    /// `worker.parallelism` permits for [`Context::compute`], shared by every unit in flight.
    cpu: Arc<tokio::sync::Semaphore>,
    /// This worker's progress through the step, reported every `progress_every`.
    pub progress: Arc<Progress>,
    progress_every: Duration,
}

impl Context {
    pub fn new(storage: StorageConfig, worker: WorkerConfig, scratch: PathBuf) -> Self {
        let cpu = Arc::new(tokio::sync::Semaphore::new(worker.parallelism));
        let progress_every = crate::progress::every_from_env(crate::progress::DEFAULT_EVERY);
        Context {
            storage: Arc::new(Storage::new(storage)),
            worker,
            scratch,
            cpu,
            progress: Arc::default(),
            progress_every,
        }
    }

    pub fn units(&self, output: &str) -> Units {
        Units::new(self.storage.clone(), output, self.worker.clone(), self.progress.clone())
    }

    /// Runs a unit's CPU-bound work on the blocking pool, at most `worker.parallelism` at once
    /// across the units in flight: with [`Units::overlapping`], the other units meanwhile open
    /// their inputs and upload and commit their outputs.
    pub async fn compute<T: Send + 'static>(&self, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        let _permit = self.cpu.acquire().await.expect("the semaphore is never closed");
        blocking(f).await
    }

    /// A fresh scratch file path (removed when the guard drops).
    pub fn scratch_file(&self) -> Result<tempfile::TempPath> {
        std::fs::create_dir_all(&self.scratch).map_err(|e| Error::io(&self.scratch, e))?;
        Ok(tempfile::NamedTempFile::new_in(&self.scratch).map_err(|e| Error::io(&self.scratch, e))?.into_temp_path())
    }

    /// Opens a shard for reading: a local file in place; from S3, streamed for JSONL and
    /// downloaded first for Parquet. The returned guard keeps any downloaded copy alive.
    pub async fn open_shard(&self, uri: &str, format: Format) -> Result<(ShardInput, Option<tempfile::TempPath>)> {
        let local = matches!(crate::storage::Location::parse(uri)?, crate::storage::Location::Local(_));
        if local || format.needs_local_file() {
            let (path, guard) = self.local_file(uri).await?;
            return Ok((ShardInput::File(path), guard));
        }
        let stream = self.storage.open_read(uri).await?;
        Ok((ShardInput::Stream(Box::new(tokio_util::io::SyncIoBridge::new(stream))), None))
    }

    /// A local file holding the object `uri`: the file itself on local storage, else a scratch
    /// copy, which the returned guard removes when dropped.
    pub async fn local_file(&self, uri: &str) -> Result<(PathBuf, Option<tempfile::TempPath>)> {
        if let crate::storage::Location::Local(path) = crate::storage::Location::parse(uri)? {
            return Ok((path, None));
        }
        let tmp = self.scratch_file()?;
        self.storage.download(uri, &tmp).await?;
        Ok((tmp.to_path_buf(), Some(tmp)))
    }

    /// Writes the step's result object.
    pub async fn write_result<T: Serialize>(&self, output: &str, result: &T) -> Result<()> {
        self.storage.put_json(&join(output, RESULT), result).await
    }
}

/// A shard of a source, in listing order.
#[derive(Clone, Debug, PartialEq)]
pub struct Shard {
    pub uri: String,
    pub format: Format,
    pub size: u64,
    /// Its ETag or modification time ([`crate::storage::ObjectMeta::version`]).
    pub version: String,
}

/// One unit of the per-shard steps: a shard of a source of a group. `score` and `select` list
/// the same units under the same ids, so `select` finds each shard's scores by the id `score`
/// committed them under.
#[derive(Clone)]
pub struct ShardUnit {
    /// The group's position in the plan.
    pub group: usize,
    pub source: Source,
    pub shard: Shard,
    pub id: String,
}

/// Every shard of every source of every group, as units, and their ids in the same order (what
/// [`Units::run`] takes): `groups` gives each group's name and sources, in plan order.
pub async fn shard_units<'p>(
    storage: &Storage,
    groups: impl IntoIterator<Item = (&'p str, &'p [Source])>,
) -> Result<(Vec<ShardUnit>, Vec<String>)> {
    let mut units = Vec::new();
    for (g, (name, sources)) in groups.into_iter().enumerate() {
        for source in sources {
            for shard in list_shards(storage, source).await? {
                // Bound to the shard's bytes, not only its name: a unit committed before the
                // shard was rewritten is not this shard's, and a resumed run redoes it.
                let content = format!("{}\n{}\n{}", shard.uri, shard.size, shard.version);
                let id = crate::units::unit_id(&format!("{name}-{}", source.name), &content);
                units.push(ShardUnit { group: g, source: source.clone(), shard, id });
            }
        }
    }
    let ids = units.iter().map(|u| u.id.clone()).collect();
    Ok((units, ids))
}

/// Every shard of a source: files whose extension names a format (any file when the source
/// names its format), excluding hidden and `_`-prefixed marker files. No shards is an error: a
/// wrong URI must not pass as an empty source.
pub async fn list_shards(storage: &Storage, source: &Source) -> Result<Vec<Shard>> {
    let objects = storage.list(&source.uri).await?;
    let shards: Vec<Shard> = objects
        .into_iter()
        .filter(|o| {
            let name = crate::storage::file_name(&o.uri);
            !name.starts_with('_') && !name.starts_with('.')
        })
        .filter_map(|o| {
            let format = source.format.or_else(|| Format::from_uri(&o.uri))?;
            Some(Shard { uri: o.uri, format, size: o.size, version: o.version })
        })
        .collect();
    let shards = match source.shard_fraction {
        Some(fraction) if fraction < 1.0 => shard_subset(&source.uri, shards, fraction),
        _ => shards,
    };
    if shards.is_empty() {
        return Err(Error::Shard {
            uri: source.uri.clone(),
            message: format!("source {:?} has no shards (.jsonl, .jsonl.gz, .jsonl.zst, .parquet) there", source.name),
        });
    }
    Ok(shards)
}

/// A pilot's shards: those whose name (relative to the source, so that a copy of the source
/// elsewhere picks the same ones) hashes below `fraction`, and always the lowest, so that no
/// source is empty. A larger fraction picks a superset: a pilot's outputs stand for the full
/// run's on the same shards.
fn shard_subset(source_uri: &str, shards: Vec<Shard>, fraction: f64) -> Vec<Shard> {
    let key = |s: &Shard| crate::records::id_fraction(s.uri.strip_prefix(source_uri).unwrap_or(&s.uri), 0);
    let lowest = shards.iter().map(key).fold(f64::INFINITY, f64::min);
    shards.into_iter().filter(|s| key(s) < fraction || key(s) == lowest).collect()
}

/// Reads the plan of `step` from a local file, an object URI, or inline JSON.
pub async fn load_plan(step: Step, location: &str) -> Result<StepPlan> {
    let bytes = read_plan(location).await?;
    let plan = StepPlan::parse(step, &bytes).map_err(|e| Error::json(format!("plan {location}"), e))?;
    // A group's name keys its outputs: two of one name would write into one another.
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = group_names(&plan).into_iter().find(|name| !seen.insert(*name)) {
        return Err(Error::plan(format!("group {twice:?} is listed twice")));
    }
    Ok(plan)
}

/// A plan's bytes from a local file, an object URI or inline JSON; a [`PlanRef`] found there
/// (what a plan ConfigMap holds on a cluster) is followed to the plan it names, whose SHA-256 must
/// be the one it gives.
pub async fn read_plan(location: &str) -> Result<bytes::Bytes> {
    let bytes = if location.trim_start().starts_with('{') {
        location.as_bytes().to_vec().into()
    } else {
        Storage::new(StorageConfig::default()).get(location).await?
    };
    let Ok(pointer) = serde_json::from_slice::<PlanRef>(&bytes) else { return Ok(bytes) };
    let plan = Storage::new(pointer.storage).get(&pointer.plan_uri).await?;
    let found = sha256_hex(&plan);
    if found != pointer.sha256 {
        return Err(Error::plan(format!(
            "plan {} has SHA-256 {found}, not the {} its reference names: it changed after the operator wrote it",
            pointer.plan_uri, pointer.sha256
        )));
    }
    Ok(plan)
}

fn group_names(plan: &StepPlan) -> Vec<&str> {
    match plan {
        StepPlan::Cluster(p) => p.groups.iter().flatten().map(|g| g.name.as_str()).collect(),
        StepPlan::Discover(p) => p.groups.iter().map(|g| g.name.as_str()).collect(),
        StepPlan::Label(p) => p.groups.iter().map(|g| g.name.as_str()).collect(),
        StepPlan::Distill(p) => p.groups.iter().map(|g| g.name.as_str()).collect(),
        StepPlan::Score(p) => p.groups.iter().map(|g| g.name.as_str()).collect(),
        StepPlan::Threshold(_) => Vec::new(),
        StepPlan::Select(p) => p.groups.iter().map(|g| g.name.as_str()).collect(),
    }
}

/// Runs a plan's step, reporting its progress under the plan's output root (see
/// [`crate::progress`]).
pub async fn run(ctx: &Context, plan: &StepPlan) -> Result<StepResult> {
    let reporter = Reporter::start(
        ctx.progress.clone(),
        ctx.storage.clone(),
        plan.output(),
        &ctx.worker.id,
        plan.step().as_str(),
        ctx.progress_every,
    );
    let result = run_step(ctx, plan).await;
    reporter.finish(result.is_ok()).await;
    result
}

async fn run_step(ctx: &Context, plan: &StepPlan) -> Result<StepResult> {
    Ok(match plan {
        StepPlan::Cluster(plan) => cluster::run(ctx, plan).await?.into(),
        StepPlan::Discover(plan) => discover::run(ctx, plan).await?.into(),
        StepPlan::Label(plan) => {
            let mut plan = plan.clone();
            let groups = plan.groups.iter_mut().map(|g| (&g.name, &mut g.dimensions));
            rubrics::fill(&ctx.storage, plan.rubrics.as_ref(), groups).await?;
            label::run(ctx, &plan).await?.into()
        }
        StepPlan::Distill(plan) => {
            let mut plan = plan.clone();
            let groups = plan.groups.iter_mut().map(|g| (&g.name, &mut g.dimensions));
            rubrics::fill(&ctx.storage, plan.rubrics.as_ref(), groups).await?;
            distill::run(ctx, &plan).await?.into()
        }
        StepPlan::Score(plan) => score::run(ctx, plan).await?.into(),
        StepPlan::Threshold(plan) => threshold::run(ctx, plan).await?.into(),
        StepPlan::Select(plan) => select::run(ctx, plan).await?.into(),
    })
}

/// Runs CPU-bound work on the blocking pool.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::TextSpec;

    #[tokio::test]
    async fn a_plan_reference_is_followed_and_a_plan_changed_since_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let plan = r#"{"output":"o","sources":[]}"#;
        let uri = dir.path().join(PLAN).display().to_string();
        std::fs::write(&uri, plan).unwrap();
        let pointer =
            PlanRef { plan_uri: uri.clone(), sha256: sha256_hex(plan.as_bytes()), storage: Default::default() };
        let location = serde_json::to_string(&pointer).unwrap();
        assert_eq!(read_plan(&location).await.unwrap(), plan.as_bytes());
        // A plan that is no reference is read as it is.
        assert_eq!(read_plan(plan).await.unwrap(), plan.as_bytes());

        std::fs::write(&uri, r#"{"output":"elsewhere","sources":[]}"#).unwrap();
        let error = read_plan(&location).await.unwrap_err().to_string();
        assert!(error.contains("changed after the operator wrote it"), "{error}");
    }

    #[tokio::test]
    async fn a_pilot_reads_a_stable_fraction_of_the_shards_and_a_larger_one_a_superset() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..400 {
            std::fs::write(dir.path().join(format!("part-{i:05}.jsonl")), "{}\n").unwrap();
        }
        let storage = Storage::new(StorageConfig::default());
        let source = |fraction| Source {
            name: "web".into(),
            uri: dir.path().display().to_string(),
            format: None,
            text: TextSpec::default(),
            shard_fraction: fraction,
        };
        let uris = |shards: Vec<Shard>| -> std::collections::BTreeSet<String> {
            shards.into_iter().map(|s| crate::storage::file_name(&s.uri).to_string()).collect()
        };
        let all = uris(list_shards(&storage, &source(None)).await.unwrap());
        let tenth = uris(list_shards(&storage, &source(Some(0.1))).await.unwrap());
        let half = uris(list_shards(&storage, &source(Some(0.5))).await.unwrap());
        assert_eq!(all.len(), 400);
        assert!((25..=55).contains(&tenth.len()), "about a tenth: {}", tenth.len());
        assert!((170..=230).contains(&half.len()), "about half: {}", half.len());
        assert!(tenth.is_subset(&half), "a larger pilot reads every shard a smaller one did");
        assert_eq!(tenth, uris(list_shards(&storage, &source(Some(0.1))).await.unwrap()), "the same on every call");
        assert_eq!(list_shards(&storage, &source(Some(1e-9))).await.unwrap().len(), 1, "never an empty source");
        assert_eq!(uris(list_shards(&storage, &source(Some(1.0))).await.unwrap()), all);
    }
}
