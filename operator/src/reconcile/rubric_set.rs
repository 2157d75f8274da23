//! RubricSet: one `discover` stage over the groups without pinned dimensions (none when every
//! group is pinned).

use kube::ResourceExt;
use scorer_runner::plan::{rubrics_digest, DiscoverPlan, DiscoverResult, GroupSources, RubricsRef, Scale};
use scorer_runner::steps::RESULT;
use scorer_runner::storage::join;

use super::convert::{self, upstream};
use super::{Finished, KindStatus, Lineage, Pipeline, Planned, StageDef, UpstreamRef};
use crate::api::{
    AnchoredDimension, GroupRubric, JobTemplate, PipelineStatus, RubricSet, RubricSetStatus, RubricSummary,
    SourceGroup, Step,
};
use crate::{Error, Result};

/// The environment variables endpoint API keys reach workers in.
pub const TEACHER_KEY_ENV: &str = "MIRA_TEACHER_API_KEY";
const EMBEDDER_KEY_ENV: &str = "MIRA_EMBEDDER_API_KEY";

impl KindStatus for RubricSetStatus {
    fn pipeline(&self) -> &PipelineStatus {
        &self.pipeline
    }
    fn pipeline_mut(&mut self) -> &mut PipelineStatus {
        &mut self.pipeline
    }
}

impl RubricSet {
    /// The SourceGroup's groups that need discovery; errors on pinned groups it lacks.
    fn unpinned(&self, sg: &SourceGroup) -> Result<Vec<String>> {
        let groups = sg.group_names();
        if let Some(unknown) = self.spec.pinned.iter().find(|p| !groups.contains(&p.group)) {
            return Err(Error::InvalidSpec(format!(
                "pinned group {:?} is not a group of SourceGroup {} ({})",
                unknown.group,
                sg.name_any(),
                groups.join(", ")
            )));
        }
        Ok(groups.into_iter().filter(|g| !self.spec.pinned.iter().any(|p| &p.group == g)).collect())
    }

    /// Every group's rubric, in `groups`' order: pinned in the spec, or in `discovered` (the
    /// discover stage's result). Groups with neither are left out.
    pub fn rubrics(&self, groups: &[String], discovered: Option<&DiscoverResult>) -> Vec<GroupRubric> {
        groups
            .iter()
            .filter_map(|name| {
                if let Some(pinned) = self.spec.pinned.iter().find(|p| &p.group == name) {
                    let dimensions = pinned
                        .dimensions
                        .iter()
                        .map(|d| AnchoredDimension { dimension: d.clone(), support: None })
                        .collect();
                    return Some(GroupRubric { name: name.clone(), pinned: true, dimensions, proposals: None });
                }
                discovered?.groups.iter().find(|g| &g.name == name).cloned()
            })
            .collect()
    }

    /// Where the label and distill steps read the rubrics from: the status's discover result
    /// and digest, and the pinned groups of the spec.
    pub fn rubrics_ref(&self) -> Result<RubricsRef> {
        let status = self.status.as_ref().filter(|s| !s.groups.is_empty());
        let (Some(status), Some(digest)) = (status, status.and_then(|s| s.digest.clone())) else {
            return Err(Error::UpstreamIncomplete(format!("RubricSet {} has no rubrics", self.name_any())));
        };
        let pinned = status.groups.iter().filter(|g| g.pinned).map(|g| g.name.clone()).collect::<Vec<_>>();
        Ok(RubricsRef { discovered: status.discovered.clone(), pinned: self.rubrics(&pinned, None), sha256: digest })
    }

    /// The rubric scale, for every step that scores.
    pub fn scale(&self) -> Scale {
        self.spec.scale
    }

    /// The most tokens of a record the teacher (and a judge student) reads, for every step that
    /// puts records to a model.
    pub fn max_record_tokens(&self, default: usize) -> usize {
        self.spec.max_record_tokens.map_or(default, |n| n as usize)
    }
}

impl Pipeline for RubricSet {
    const STEPS: &'static [Step] = &[Step::Discover];

    fn upstream_ref(&self) -> Option<UpstreamRef> {
        Some(UpstreamRef::SourceGroup(self.spec.source_group_ref.clone()))
    }

    fn job_template(&self) -> &JobTemplate {
        &self.spec.job
    }

    fn stages(&self, lineage: &Lineage) -> Result<Vec<StageDef>> {
        let sg = upstream(&lineage.source_group, "SourceGroup")?;
        let needed = !self.unpinned(sg)?.is_empty();
        Ok(needed.then(|| StageDef::new(Step::Discover, None, Vec::new())).into_iter().collect())
    }

    fn plan(&self, lineage: &Lineage, stage: &StageDef, _: &Finished<'_>) -> Result<Planned> {
        let sg = upstream(&lineage.source_group, "SourceGroup")?;
        let groups = self
            .unpinned(sg)?
            .into_iter()
            .map(|name| Ok(GroupSources { sources: convert::group_sources(sg, &name)?, name }))
            .collect::<Result<Vec<_>>>()?;
        let (teacher, mut secrets) = convert::model(&self.spec.teacher, TEACHER_KEY_ENV)?;
        let mut plan = DiscoverPlan::new(groups, teacher);
        plan.storage = sg.spec.storage.config();
        plan.pass.scale = self.scale();
        plan.pass.max_record_tokens = self.max_record_tokens(plan.pass.max_record_tokens);
        let discovery = &self.spec.discovery;
        if let Some(embedder) = &discovery.embedder {
            let (embedder, secret) = convert::model(embedder, EMBEDDER_KEY_ENV)?;
            plan.embedder = Some(embedder);
            secrets.extend(secret);
        }
        if let Some(n) = discovery.records_per_group {
            plan.records_per_group = n as usize;
        }
        if let Some(n) = discovery.dimensions_per_group {
            plan.dimensions_per_group = n as usize;
        }
        if let Some(n) = discovery.min_support {
            plan.min_support = n as usize;
        }
        plan.pass.seed = discovery.seed.unwrap_or_default();
        secrets.extend(convert::storage_secrets(&sg.spec.storage));
        Ok(Planned::new(plan, convert::stage_base(&sg.spec.root, self, &stage.name), secrets))
    }

    fn summarize(&self, lineage: &Lineage, finished: &Finished<'_>, status: &mut RubricSetStatus) -> Result<()> {
        let sg = upstream(&lineage.source_group, "SourceGroup")?;
        let discovered = finished.result::<DiscoverResult>(Step::Discover.as_str())?;
        let rubrics = self.rubrics(&sg.group_names(), discovered);
        status.groups = rubrics
            .iter()
            .map(|g| RubricSummary { name: g.name.clone(), pinned: g.pinned, dimensions: g.dimensions.len() as u32 })
            .collect();
        status.discovered = finished.output(Step::Discover.as_str()).map(|output| join(output, RESULT));
        status.digest = Some(rubrics_digest(&rubrics));
        status.group_count = Some(status.groups.len() as u32);
        status.dimension_count = Some(status.groups.iter().map(|g| g.dimensions).sum());
        Ok(())
    }

    fn skipped(&self, _: Step) -> String {
        "every group has pinned dimensions".into()
    }
}
