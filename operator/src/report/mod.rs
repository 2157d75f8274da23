//! `mira report`: one self-contained HTML file of what a FilterRun's chain found and did, for a
//! data team's review: the source groups, each group's anchored dimensions and the proposals
//! behind them, where the students agree with the teacher and what was masked, each group's
//! score distribution with its cut, what was kept per source, how scores follow length, and
//! how much of the selection no score ranked.
//!
//! The figures come from the four resources' statuses and from the stage results they point
//! to (score histograms, select manifests, discovery proposals), read in full from storage: the
//! statuses hold summaries only. The same [`Run`] is gathered from a local run's state
//! directory or from a cluster. Both adapters write it to the FilterRun's `status.report` (next
//! to the selected records) when the FilterRun turns Ready at a new revision
//! ([`write_when_new`]); `mira report` writes it on demand.

mod charts;
mod page;

use std::any::Any;
use std::collections::BTreeMap;

use kube::ResourceExt;
use scorer_runner::plan::{Manifest, ScoreResult, Step, StorageConfig};
use scorer_runner::steps::discover::Proposal;
use scorer_runner::steps::RESULT;
use scorer_runner::storage::{join, Storage};

use crate::api::{DistillationJob, FilterRun, FilterRunStatus, RubricSet, SourceGroup, StagePhase};
use crate::reconcile::{Lineage, Pipeline};
use crate::{Error, Result};

/// Everything a report shows.
pub struct Run {
    pub filter_run: FilterRun,
    pub source_group: SourceGroup,
    pub rubric_set: RubricSet,
    pub distillation_job: DistillationJob,
    /// Discovery's proposals per group, as written (each names the anchor it became).
    pub proposals: BTreeMap<String, Vec<Proposal>>,
    /// The score step's results, whole (histograms and length samples included).
    pub scores: Vec<ScoreResult>,
    /// The select step's manifests, one per group.
    pub manifests: Vec<Manifest>,
}

impl Run {
    /// Reads the stage results that the statuses of `filter_run` and its `lineage` point to.
    /// Fails when a resource of the chain is missing; stages not finished yet are left out.
    pub async fn gather(filter_run: FilterRun, lineage: Lineage, storage: &StorageConfig) -> Result<Run> {
        let missing = |kind: &str| {
            Error::UpstreamIncomplete(format!("the report of FilterRun {} needs its {kind}", filter_run.name_any()))
        };
        let source_group = lineage.source_group.ok_or_else(|| missing("SourceGroup"))?;
        let rubric_set = lineage.rubric_set.ok_or_else(|| missing("RubricSet"))?;
        let distillation_job = lineage.distillation_job.ok_or_else(|| missing("DistillationJob"))?;
        let storage = Storage::new(storage.clone());

        let mut proposals = BTreeMap::new();
        for group in rubric_set.status.iter().flat_map(|s| &s.groups) {
            let Some(uri) = &group.proposals else { continue };
            let bytes = storage.get(uri).await.map_err(Error::ReadResult)?;
            // A line this version cannot read is left out of the report, not fatal to it.
            let lines = bytes.split(|&b| b == b'\n').filter_map(|line| serde_json::from_slice(line).ok());
            proposals.insert(group.name.clone(), lines.collect());
        }
        let finished = |step: Step| -> Vec<String> {
            filter_run
                .status
                .iter()
                .flat_map(|s| &s.pipeline.stages)
                .filter(|r| r.step == step && r.phase == StagePhase::Succeeded)
                .map(|r| join(&r.output, RESULT))
                .collect()
        };
        let mut scores = Vec::new();
        for uri in finished(Step::Score) {
            scores.push(storage.get_json::<ScoreResult>(&uri).await.map_err(Error::ReadResult)?);
        }
        let mut manifests = Vec::new();
        for uri in finished(Step::Select) {
            manifests.push(storage.get_json::<Manifest>(&uri).await.map_err(Error::ReadResult)?);
        }
        Ok(Run { filter_run, source_group, rubric_set, distillation_job, proposals, scores, manifests })
    }

    /// The report as one HTML page.
    pub fn html(&self) -> String {
        page::render(self)
    }

    /// Writes the report to `uri` (an `s3://` URI or a path), whole or not at all.
    pub async fn put(&self, storage: &StorageConfig, uri: &str) -> Result<()> {
        Storage::new(storage.clone())
            .put(uri, self.html().into())
            .await
            .map_err(|source| Error::WriteReport { uri: uri.to_string(), source })
    }
}

/// `mira report`: writes the report of `filter_run` to `uri`, reading with the storage settings
/// its SourceGroup names and this machine's credentials.
pub async fn write(filter_run: FilterRun, lineage: Lineage, uri: &str) -> Result<()> {
    let storage = filter_run.storage(&lineage).map(|s| s.config()).unwrap_or_default();
    Run::gather(filter_run, lineage, &storage).await?.put(&storage, uri).await
}

/// Writes the report of `filter_run` to its `status.report` when `status` (its status after this
/// pass) is Ready at a revision the resource's current status does not have yet: once per
/// selection, whichever adapter runs it. Returns where it wrote, if it did.
pub async fn write_when_new(
    filter_run: &FilterRun,
    status: &FilterRunStatus,
    lineage: &Lineage,
    storage: &StorageConfig,
) -> Result<Option<String>> {
    let (Some(uri), Some(revision)) = (&status.report, &status.pipeline.revision) else { return Ok(None) };
    if filter_run.status.as_ref().and_then(|s| s.pipeline.revision.as_ref()) == Some(revision) {
        return Ok(None);
    }
    let mut updated = filter_run.clone();
    updated.status = Some(status.clone());
    Run::gather(updated, lineage.clone(), storage).await?.put(storage, uri).await?;
    Ok(Some(uri.clone()))
}

/// [`write_when_new`] when `object` is a FilterRun (for the adapters, which handle every kind
/// alike); nothing for the other kinds.
pub async fn write_if_filter_run<K: Pipeline>(
    object: &K,
    status: &K::Status,
    lineage: &Lineage,
    storage: &StorageConfig,
) -> Result<Option<String>>
where
    K::Status: 'static,
{
    let filter_run = (object as &dyn Any).downcast_ref::<FilterRun>();
    let status = (status as &dyn Any).downcast_ref::<FilterRunStatus>();
    match (filter_run, status) {
        (Some(filter_run), Some(status)) => write_when_new(filter_run, status, lineage, storage).await,
        _ => Ok(None),
    }
}
