//! SourceGroup: one `cluster` stage.

use scorer_runner::plan::{ClusterPlan, ClusterResult, GroupDef};
use scorer_runner::steps::RESULT;
use scorer_runner::storage::join;

use super::convert;
use super::{Finished, KindStatus, Lineage, Pipeline, Planned, StageDef, UpstreamRef};
use crate::api::{
    JobTemplate, NearestSource, PipelineStatus, SourceGroup, SourceGroupStatus, SourceStatus, Step, StorageSpec,
};
use crate::Result;

impl KindStatus for SourceGroupStatus {
    fn pipeline(&self) -> &PipelineStatus {
        &self.pipeline
    }
    fn pipeline_mut(&mut self) -> &mut PipelineStatus {
        &mut self.pipeline
    }
}

impl SourceGroup {
    /// The names of its groups, in status order.
    pub fn group_names(&self) -> Vec<String> {
        self.status.iter().flat_map(|s| s.groups.iter().map(|g| g.name.clone())).collect()
    }
}

impl Pipeline for SourceGroup {
    const STEPS: &'static [Step] = &[Step::Cluster];

    fn upstream_ref(&self) -> Option<UpstreamRef> {
        None
    }

    fn job_template(&self) -> &JobTemplate {
        &self.spec.job
    }

    fn storage<'a>(&'a self, _: &'a Lineage) -> Option<&'a StorageSpec> {
        Some(&self.spec.storage)
    }

    fn stages(&self, _: &Lineage) -> Result<Vec<StageDef>> {
        Ok(vec![StageDef::new(Step::Cluster, None, Vec::new())])
    }

    fn plan(&self, _: &Lineage, stage: &StageDef, _: &Finished<'_>) -> Result<Planned> {
        let spec = &self.spec;
        let sources: Vec<_> = spec.sources.iter().map(convert::source).collect();
        let mut plan = ClusterPlan::new(sources);
        plan.storage = spec.storage.config();
        let grouping = &spec.grouping;
        plan.k = grouping.k.map(|k| k as usize);
        if let Some(max_k) = grouping.max_k {
            plan.max_k = max_k as usize;
        }
        if let Some(sample) = grouping.sample_per_source {
            plan.sample_per_source = sample as usize;
        }
        plan.groups = grouping.groups.as_ref().map(|groups| {
            groups.iter().map(|g| GroupDef { name: g.name.clone(), sources: g.sources.clone() }).collect()
        });
        plan.seed = grouping.seed.unwrap_or_default();
        plan.featurizer = convert::featurizer(&grouping.featurizer);
        let base = convert::stage_base(&spec.root, self, &stage.name);
        Ok(Planned::new(plan, base, convert::storage_secrets(&spec.storage)))
    }

    fn highlights(status: &SourceGroupStatus) -> Vec<String> {
        status.groups.iter().map(|g| format!("group {}: {}", g.name, g.sources.join(", "))).collect()
    }

    fn summarize(&self, _: &Lineage, finished: &Finished<'_>, status: &mut SourceGroupStatus) -> Result<()> {
        let Some(result) = finished.result::<ClusterResult>(Step::Cluster.as_str())? else { return Ok(()) };
        status.groups = result.groups.clone();
        status.sources = result
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| SourceStatus {
                name: s.name.clone(),
                group: result.group_of(&s.name).map(|g| g.name.clone()),
                shards: s.shards as u64,
                bytes: s.bytes,
                sampled_records: s.sampled_records as u64,
                skipped_records: s.skipped.total(),
                nearest: nearest(result, i),
            })
            .collect();
        status.similarity = finished.output(Step::Cluster.as_str()).map(|output| join(output, RESULT));
        status.silhouette = Some((result.silhouette * 1000.0).round() / 1000.0);
        status.group_count = Some(status.groups.len() as u32);
        Ok(())
    }
}

/// The source most similar to source `i` of a cluster result, other than itself.
fn nearest(result: &ClusterResult, i: usize) -> Option<NearestSource> {
    let row = result.similarity.get(i)?;
    let (j, similarity) =
        row.iter().enumerate().filter(|&(j, x)| j != i && x.is_finite()).max_by(|a, b| a.1.total_cmp(b.1))?;
    Some(NearestSource {
        source: result.sources.get(j)?.name.clone(),
        similarity: (similarity * 1000.0).round() / 1000.0,
    })
}
