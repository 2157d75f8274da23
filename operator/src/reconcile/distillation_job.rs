//! DistillationJob: `label` (unless labels are imported), then `distill`.

use std::collections::BTreeSet;

use scorer_runner::plan::{
    DistillGroup, DistillPlan, DistillResult, LabelGroup, LabelPlan, LabelResult, StudentReport,
};
use scorer_runner::steps::RESULT;
use scorer_runner::storage::join;

use super::conditions::{truncate, Desired};
use super::convert::{self, upstream};
use super::rubric_set::TEACHER_KEY_ENV;
use super::{Finished, KindStatus, Lineage, Pipeline, Planned, StageDef, UpstreamRef};
use crate::api::{
    DistillationJob, DistillationJobStatus, GroupCount, JobTemplate, PipelineStatus, Step, StudentStatus,
};
use crate::{Error, Result};

impl KindStatus for DistillationJobStatus {
    fn pipeline(&self) -> &PipelineStatus {
        &self.pipeline
    }
    fn pipeline_mut(&mut self) -> &mut PipelineStatus {
        &mut self.pipeline
    }
}

/// The environment variable an endpoint judge student's API key reaches the distill and score
/// workers in.
pub const JUDGE_KEY_ENV: &str = "MIRA_JUDGE_API_KEY";

impl Pipeline for DistillationJob {
    const STEPS: &'static [Step] = &[Step::Label, Step::Distill];

    fn upstream_ref(&self) -> Option<UpstreamRef> {
        Some(UpstreamRef::RubricSet(self.spec.rubric_set_ref.clone()))
    }

    fn job_template(&self) -> &JobTemplate {
        &self.spec.job
    }

    fn stages(&self, _: &Lineage) -> Result<Vec<StageDef>> {
        Ok(match self.spec.labels.import_uri {
            Some(_) => vec![StageDef::new(Step::Distill, None, Vec::new())],
            None => vec![
                StageDef::new(Step::Label, None, Vec::new()),
                StageDef::new(Step::Distill, None, vec![Step::Label.as_str().into()]),
            ],
        })
    }

    fn plan(&self, lineage: &Lineage, stage: &StageDef, finished: &Finished<'_>) -> Result<Planned> {
        let rs = upstream(&lineage.rubric_set, "RubricSet")?;
        let sg = upstream(&lineage.source_group, "SourceGroup")?;
        let mut secrets = convert::storage_secrets(&sg.spec.storage);
        let storage = sg.spec.storage.config();
        let base = convert::stage_base(&sg.spec.root, self, &stage.name);
        let rubrics = rs.rubrics_ref()?;
        let groups = rs.status.as_ref().map(|s| s.groups.as_slice()).unwrap_or_default();
        if stage.step == Step::Label {
            let groups = groups
                .iter()
                .map(|g| {
                    Ok(LabelGroup {
                        name: g.name.clone(),
                        sources: convert::group_sources(sg, &g.name)?,
                        dimensions: Vec::new(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let (teacher, secret) =
                convert::model(self.spec.labels.teacher.as_ref().unwrap_or(&rs.spec.teacher), TEACHER_KEY_ENV)?;
            secrets.extend(secret);
            let mut plan = LabelPlan::new(groups, teacher);
            plan.rubrics = Some(rubrics);
            plan.storage = storage;
            plan.pass.scale = rs.scale();
            plan.pass.max_record_tokens = rs.max_record_tokens(plan.pass.max_record_tokens);
            if let Some(n) = self.spec.labels.records_per_group {
                plan.records_per_group = n as usize;
            }
            plan.pass.seed = self.spec.seed.unwrap_or_default();
            return Ok(Planned::new(plan, base, secrets));
        }
        let labels =
            self.labels(finished)?.ok_or_else(|| Error::InvalidSpec("distill planned before labels exist".into()))?;
        let groups = groups
            .iter()
            .map(|g| {
                Ok(DistillGroup {
                    name: g.name.clone(),
                    sources: convert::group_sources(sg, &g.name)?.into_iter().map(|s| s.name).collect(),
                    dimensions: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut plan = DistillPlan::new(groups, labels);
        plan.rubrics = Some(rubrics);
        plan.storage = storage;
        plan.scale = rs.scale();
        plan.max_record_tokens = rs.max_record_tokens(plan.max_record_tokens);
        let student = &self.spec.student;
        plan.featurizer = convert::featurizer(&student.featurizer);
        if let Some(judge) = &student.judge {
            let (judge, secret) = convert::model(judge, JUDGE_KEY_ENV)?;
            plan.judge = Some(judge);
            secrets.extend(secret);
        }
        plan.lambdas = student.lambdas.clone();
        if let Some(n) = student.max_train_records {
            plan.max_train_records = n as usize;
        }
        if let Some(export) = student.export_sft {
            plan.export_sft = export;
        }
        if let Some(fraction) = self.spec.validation_fraction {
            plan.validation_fraction = fraction;
        }
        plan.split_seed = self.spec.seed.unwrap_or_default();
        let mask = &self.spec.mask;
        if let Some(v) = mask.min_spearman {
            plan.mask.min_spearman = v;
        }
        if let Some(v) = mask.max_mae {
            plan.mask.max_mae = v;
        }
        if let Some(v) = mask.min_validation {
            plan.mask.min_validation = v as usize;
        }
        Ok(Planned::new(plan, base, secrets))
    }

    fn summarize(&self, _: &Lineage, finished: &Finished<'_>, status: &mut DistillationJobStatus) -> Result<()> {
        status.labels = self.labels(finished)?;
        if let Some(labelled) = finished.result::<LabelResult>(Step::Label.as_str())? {
            status.labelled = labelled
                .labelled
                .iter()
                .map(|(group, &records)| GroupCount { group: group.clone(), records })
                .collect();
        }
        let Some(distilled) = finished.result::<DistillResult>(Step::Distill.as_str())? else { return Ok(()) };
        status.sft.clone_from(&distilled.sft);
        status.students = distilled
            .students
            .iter()
            .map(|s| StudentStatus {
                group: s.group.clone(),
                student: s.student.clone(),
                train_records: s.train_records as u64,
                validation_records: s.validation_records as u64,
                dimensions: dimension_ids(s).len() as u32,
                sources: s.agreement.iter().map(|a| &a.source).collect::<BTreeSet<_>>().len() as u32,
                masked: s.agreement.iter().filter(|a| a.masked).count() as u32,
                summary: truncate(&summary(s), MAX_SUMMARY),
            })
            .collect();
        status.student_count = Some(status.students.len() as u32);
        let pairs = distilled.students.iter().flat_map(|s| &s.agreement);
        let (masked, all) = pairs.fold((0, 0), |(m, a), p| (m + p.masked as usize, a + 1));
        status.masked_share =
            (all > 0).then(|| format!("{:.0}% ({masked} of {all})", 100.0 * masked as f64 / all as f64));
        status.unranked = unranked_sources(&distilled.students);
        status.agreement = finished.output(Step::Distill.as_str()).map(|output| join(output, RESULT));
        Ok(())
    }

    /// `Reliable`, once students exist: `False` (reason `NoReliableDimension`) when every
    /// dimension of some source is masked, so that its records all score alike and the cut keeps
    /// them by the tie draw alone, a random selection where the user expects a ranked one.
    fn findings(status: &DistillationJobStatus) -> Vec<Desired> {
        if status.students.is_empty() {
            return Vec::new();
        }
        let unranked = &status.unranked;
        if unranked.is_empty() {
            return vec![Desired::new(
                "Reliable",
                true,
                "Reliable",
                "every source keeps at least one dimension on which the student agrees with the teacher",
            )];
        }
        let message = format!(
            "every dimension is masked for {} (the student's held-out agreement with the teacher is below the mask's \
             thresholds: see the agreement table at status.agreement, or the run report): their records score alike, \
             and a FilterRun keeps them by a \
             random draw, not by quality",
            unranked.join(", ")
        );
        vec![Desired::new("Reliable", false, "NoReliableDimension", message)]
    }

    fn skipped(&self, _: Step) -> String {
        format!("labels imported from {}", self.spec.labels.import_uri.as_deref().unwrap_or_default())
    }

    /// Per group, the dimensions its scores use and those masked, with the sources they are
    /// masked for.
    fn highlights(status: &DistillationJobStatus) -> Vec<String> {
        status.students.iter().map(|s| format!("group {}: {}", s.group, s.summary)).collect()
    }
}

/// `group/source` of every source whose dimensions are all masked: no score ranks its records.
fn unranked_sources(students: &[StudentReport]) -> Vec<String> {
    students
        .iter()
        .flat_map(|s| {
            let sources: BTreeSet<&str> = s.agreement.iter().map(|a| a.source.as_str()).collect();
            sources
                .into_iter()
                .filter(|&source| s.agreement.iter().filter(|a| a.source == source).all(|a| a.masked))
                .map(|source| format!("{}/{source}", s.group))
                .collect::<Vec<_>>()
        })
        .collect()
}

impl DistillationJob {
    /// The labels the students learn from: imported, or written by the label stage.
    fn labels(&self, finished: &Finished<'_>) -> Result<Option<String>> {
        if let Some(uri) = &self.spec.labels.import_uri {
            return Ok(Some(uri.clone()));
        }
        Ok(finished.result::<LabelResult>(Step::Label.as_str())?.map(|r| r.labels.clone()))
    }
}

/// The longest student summary a status keeps.
const MAX_SUMMARY: usize = 512;

/// The dimensions a student's agreement covers, in order.
fn dimension_ids(student: &StudentReport) -> BTreeSet<&str> {
    student.agreement.iter().map(|a| a.dimension.as_str()).collect()
}

/// `scores by signal; masked noise (books, web)`: the dimensions a student's scores use (those
/// some source keeps) and those masked, with the sources they are masked for.
fn summary(student: &StudentReport) -> String {
    let sources = student.agreement.iter().map(|a| &a.source).collect::<BTreeSet<_>>().len();
    // Per dimension, the sources it is masked for.
    let masked_for: Vec<(&str, Vec<&str>)> = dimension_ids(student)
        .into_iter()
        .map(|d| {
            let masked: BTreeSet<&str> =
                student.agreement.iter().filter(|a| a.dimension == d && a.masked).map(|a| a.source.as_str()).collect();
            (d, masked.into_iter().collect())
        })
        .collect();
    let used: Vec<&str> = masked_for.iter().filter(|(_, m)| m.len() < sources).map(|(d, _)| *d).collect();
    let masked: Vec<String> =
        masked_for.iter().filter(|(_, m)| !m.is_empty()).map(|(d, m)| format!("{d} ({})", m.join(", "))).collect();
    let used = if used.is_empty() { "no dimension".to_string() } else { used.join(", ") };
    let masked = if masked.is_empty() { String::new() } else { format!("; masked {}", masked.join(", ")) };
    format!("scores by {used}{masked}")
}
