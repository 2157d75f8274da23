//! `mira report`: one self-contained HTML file of what a FilterRun's chain found and did, for a
//! data team's review: the source groups, each group's anchored dimensions and the proposals
//! behind them, where the students agree with the teacher and what was masked, each group's
//! score distribution with its cut, what was kept per source, how scores follow length, and
//! how much of the selection no score ranked; and, beside the other selections of the same
//! corpus (a baseline's, say), how far they overlap ([`compare`]).
//!
//! The figures come from the four resources' statuses and from the stage results they point
//! to (score histograms, select manifests, discovery proposals), read in full from storage: the
//! statuses hold summaries only. The same [`Run`] is gathered from a local run's state
//! directory or from a cluster. Both adapters write it to the FilterRun's `status.report` (next
//! to the selected records) when the FilterRun turns Ready at a new revision
//! ([`write_when_new`]); `mira report` writes it on demand.

mod charts;
mod compare;
mod page;

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;

use kube::ResourceExt;
use scorer_runner::plan::{
    ClusterResult, DiscoverResult, DistillResult, GroupRubric, Manifest, ScoreResult, Step, StorageConfig,
};
use scorer_runner::steps::discover::Proposal;
use scorer_runner::steps::RESULT;
use scorer_runner::storage::{join, Storage};

use crate::api::{CutPolicy, DistillationJob, FilterRun, FilterRunStatus, Method, RubricSet, SourceGroup, StagePhase};
use crate::reconcile::{KindStatus, Lineage, Pipeline};
use crate::{Error, Result};

/// Everything a report shows.
pub struct Run {
    pub filter_run: FilterRun,
    pub source_group: SourceGroup,
    /// The SourceGroup's cluster result, with the source-by-source similarity matrix.
    pub cluster: Option<ClusterResult>,
    /// The DistillationJob's distill result, with the students' agreement tables.
    pub distilled: Option<DistillResult>,
    /// Method `mira`'s; a baseline has neither.
    pub rubric_set: Option<RubricSet>,
    /// Every group's rubric: pinned, or as discovered (read from the discover result).
    pub rubrics: Vec<GroupRubric>,
    pub distillation_job: Option<DistillationJob>,
    /// Discovery's proposals per group, as written (each names the anchor it became).
    pub proposals: BTreeMap<String, Vec<Proposal>>,
    /// The score step's results, whole (histograms and length samples included).
    pub scores: Vec<ScoreResult>,
    /// The select step's manifests, one per group.
    pub manifests: Vec<Manifest>,
    /// The other selections of the same corpus (FilterRuns under the same SourceGroup, in the
    /// same namespace) that have selected some group.
    pub peers: Vec<Peer>,
}

/// Another selection of the corpus.
pub struct Peer {
    pub name: String,
    pub method: Method,
    pub policy: CutPolicy,
    pub retention: f64,
    pub manifests: Vec<Manifest>,
}

/// Whether `peer` is another selection of `filter_run`'s corpus: another FilterRun, in the same
/// namespace, under the same SourceGroup. The report compares the two.
pub fn same_corpus(filter_run: (&FilterRun, &Lineage), peer: (&FilterRun, &Lineage)) -> bool {
    let corpus = |lineage: &Lineage| lineage.source_group.as_ref().map(|sg| sg.name_any());
    peer.0.name_any() != filter_run.0.name_any()
        && peer.0.namespace() == filter_run.0.namespace()
        && corpus(peer.1).is_some()
        && corpus(peer.1) == corpus(filter_run.1)
}

/// The results of `resource`'s finished stages of `step`, read from storage.
async fn results<T: serde::de::DeserializeOwned, K: Pipeline>(
    storage: &Storage,
    resource: &K,
    step: Step,
) -> Result<Vec<T>> {
    let uris = resource
        .status()
        .into_iter()
        .flat_map(|s| &s.pipeline().stages)
        .filter(|r| r.step == step && r.phase == StagePhase::Succeeded)
        .map(|r| join(&r.output, RESULT));
    let mut results = Vec::new();
    for uri in uris {
        results.push(storage.get_json::<T>(&uri).await.map_err(Error::ReadResult)?);
    }
    Ok(results)
}

impl Run {
    /// Reads the stage results that the statuses of `filter_run` and its `lineage` point to, and
    /// the select manifests of those `peers` that selected from the same SourceGroup. Fails when
    /// a resource of the chain is missing; stages not finished yet are left out.
    pub async fn gather(
        filter_run: FilterRun,
        lineage: Lineage,
        peers: &[(FilterRun, Lineage)],
        storage: &StorageConfig,
    ) -> Result<Run> {
        let missing = |kind: &str| {
            Error::UpstreamIncomplete(format!("the report of FilterRun {} needs its {kind}", filter_run.name_any()))
        };
        let corpus_peers: Vec<&FilterRun> =
            peers.iter().filter(|(p, l)| same_corpus((&filter_run, &lineage), (p, l))).map(|(p, _)| p).collect();
        let source_group = lineage.source_group.ok_or_else(|| missing("SourceGroup"))?;
        let (rubric_set, distillation_job) = match filter_run.spec.method {
            Method::Mira => (
                Some(lineage.rubric_set.ok_or_else(|| missing("RubricSet"))?),
                Some(lineage.distillation_job.ok_or_else(|| missing("DistillationJob"))?),
            ),
            Method::Random | Method::Dsir | Method::Perplexity => (None, None),
        };
        let mut compared = Vec::new();
        let storage = Storage::new(storage.clone());
        for peer in corpus_peers {
            // Another selection is context: one whose manifests cannot be read is left out.
            let manifests = match results::<Manifest, _>(&storage, peer, Step::Select).await {
                Ok(manifests) => manifests,
                Err(e) => {
                    tracing::warn!(peer = %peer.name_any(), error = %e.chain(), "left out of the comparison");
                    Vec::new()
                }
            };
            if !manifests.is_empty() {
                compared.push(Peer {
                    name: peer.name_any(),
                    method: peer.spec.method,
                    policy: peer.spec.policy,
                    retention: peer.spec.retention,
                    manifests,
                });
            }
        }

        // The upstream tables (rubrics, similarity, agreement) are context: an unreadable one
        // leaves its charts out rather than holding the selection back.
        let context = |what: &str, e: Error| {
            tracing::warn!(error = %e.chain(), "the report goes without the {what}");
        };
        let discovered = match rubric_set.as_ref().and_then(|r| r.status.as_ref()?.discovered.as_ref()) {
            Some(uri) => storage
                .get_json::<DiscoverResult>(uri)
                .await
                .map_err(|e| context("discovered rubrics", Error::ReadResult(e)))
                .ok(),
            None => None,
        };
        let rubrics = match &rubric_set {
            Some(rs) => rs.rubrics(&source_group.group_names(), discovered.as_ref()),
            None => Vec::new(),
        };
        let mut proposals = BTreeMap::new();
        for group in &rubrics {
            let Some(uri) = &group.proposals else { continue };
            // Proposals are the report's context, not its figures: a file gone (cleaned up, or
            // never written by an older runner) leaves the group's proposals out of the page.
            let Some(bytes) = storage.get_opt(uri).await.map_err(Error::ReadResult)? else { continue };
            // A line this version cannot read is left out of the report, not fatal to it.
            let lines = bytes.split(|&b| b == b'\n').filter_map(|line| serde_json::from_slice(line).ok());
            proposals.insert(group.name.clone(), lines.collect());
        }
        let cluster = results::<ClusterResult, _>(&storage, &source_group, Step::Cluster)
            .await
            .map_err(|e| context("source similarity", e))
            .ok()
            .and_then(|mut r| r.pop());
        let distilled = match &distillation_job {
            Some(dj) => results::<DistillResult, _>(&storage, dj, Step::Distill)
                .await
                .map_err(|e| context("students' agreement", e))
                .ok()
                .and_then(|mut r| r.pop()),
            None => None,
        };
        let scores = results::<ScoreResult, _>(&storage, &filter_run, Step::Score).await?;
        let manifests = results::<Manifest, _>(&storage, &filter_run, Step::Select).await?;
        Ok(Run {
            filter_run,
            source_group,
            cluster,
            distilled,
            rubric_set,
            rubrics,
            distillation_job,
            proposals,
            scores,
            manifests,
            peers: compared,
        })
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

/// `mira report`: writes the report of `filter_run` to `uri`, beside `peers` (other FilterRuns,
/// with their lineage), reading with the storage settings its SourceGroup names and this
/// machine's credentials.
pub async fn write(filter_run: FilterRun, lineage: Lineage, peers: &[(FilterRun, Lineage)], uri: &str) -> Result<()> {
    let storage = filter_run.storage(&lineage).map(|s| s.config()).unwrap_or_default();
    Run::gather(filter_run, lineage, peers, &storage).await?.put(&storage, uri).await
}

/// Writes the report of `filter_run` to its `status.report` when `status` (its status after this
/// pass) is Ready at a revision the resource's current status does not have yet: once per
/// selection, whichever adapter runs it, beside the selections `peers` lists (awaited only then).
/// Returns where it wrote, if it did.
pub async fn write_when_new(
    filter_run: &FilterRun,
    status: &FilterRunStatus,
    lineage: &Lineage,
    peers: impl Future<Output = Vec<(FilterRun, Lineage)>>,
    storage: &StorageConfig,
) -> Result<Option<String>> {
    let (Some(uri), Some(revision)) = (&status.report, &status.pipeline.revision) else { return Ok(None) };
    if filter_run.status.as_ref().and_then(|s| s.pipeline.revision.as_ref()) == Some(revision) {
        return Ok(None);
    }
    let mut updated = filter_run.clone();
    updated.status = Some(status.clone());
    Run::gather(updated, lineage.clone(), &peers.await, storage).await?.put(storage, uri).await?;
    Ok(Some(uri.clone()))
}

/// [`write_when_new`] when `object` is a FilterRun (for the adapters, which handle every kind
/// alike); nothing for the other kinds.
pub async fn write_if_filter_run<K: Pipeline>(
    object: &K,
    status: &K::Status,
    lineage: &Lineage,
    peers: impl Future<Output = Vec<(FilterRun, Lineage)>>,
    storage: &StorageConfig,
) -> Result<Option<String>>
where
    K::Status: 'static,
{
    let filter_run = (object as &dyn Any).downcast_ref::<FilterRun>();
    let status = (status as &dyn Any).downcast_ref::<FilterRunStatus>();
    match (filter_run, status) {
        (Some(filter_run), Some(status)) => write_when_new(filter_run, status, lineage, peers, storage).await,
        _ => Ok(None),
    }
}
