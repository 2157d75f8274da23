//! `mira report`: one self-contained HTML file of what a FilterRun's chain found and did, for a
//! data team's review: the source groups, each group's anchored dimensions and the proposals
//! behind them, where the students agree with the teacher and what was masked, each group's
//! score distribution with its cut, what was kept per source, how scores follow length, and
//! how much of the selection no score ranked.
//!
//! The figures come from the four resources' statuses and from the stage results they point
//! to (score histograms, select manifests, discovery proposals), read in full from storage: the
//! statuses hold summaries only. The same [`Run`] is gathered from a local run's state
//! directory or from a cluster, and `mira run` writes the report when a FilterRun is Ready.

mod charts;
mod page;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kube::ResourceExt;
use scorer_runner::plan::{Manifest, ScoreResult, Step, StorageConfig};
use scorer_runner::steps::discover::Proposal;
use scorer_runner::steps::RESULT;
use scorer_runner::storage::{join, Storage};

use crate::api::{DistillationJob, FilterRun, RubricSet, SourceGroup, StagePhase};
use crate::reconcile::Lineage;
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

    /// Writes the report to `path` (its directory created), whole or not at all.
    pub fn write(&self, path: &Path) -> Result<()> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
        let file = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::write(dir, e))?;
        std::fs::write(file.path(), self.html()).map_err(|e| Error::write(path, e))?;
        file.persist(path).map_err(|e| Error::write(path, e.error))?;
        Ok(())
    }
}

/// Where `mira run` writes the report of a FilterRun: `reports/<namespace>/<name>.html` in its
/// state directory.
pub fn local_path(state: &Path, filter_run: &FilterRun) -> PathBuf {
    state
        .join("reports")
        .join(filter_run.namespace().unwrap_or_default())
        .join(format!("{}.html", filter_run.name_any()))
}
