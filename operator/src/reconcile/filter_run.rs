//! FilterRun: per group `score`, then `threshold` and `select`. With the `group` and `source`
//! policies each group is cut and selected as soon as it is scored; `global` cuts once, after
//! every group is scored. Method `mira` scores with a DistillationJob's students; a baseline
//! method with a ranker of its own over its SourceGroup's corpus, through the same stages.

use std::collections::BTreeSet;

use kube::ResourceExt;
use scorer_runner::plan::skip_reasons;
use scorer_runner::plan::{
    DsirSpec, GroupSources, Manifest, PerplexitySpec, RankerSpec, ScoreGroup, ScorePlan, ScoreResult, SelectPlan,
    Source, ThresholdPlan, ThresholdResult, TokenCounter,
};
use scorer_runner::progress::si;
use scorer_runner::storage::join;

use super::conditions::Desired;
use super::convert::{self, upstream};
use super::distillation_job::JUDGE_KEY_ENV;
use super::{stage_name, Finished, KindStatus, Lineage, Pipeline, Planned, StageDef, UpstreamRef};
use crate::api::{
    CutPolicy, DistillationJob, FilterGroupStatus, FilterRun, FilterRunStatus, JobTemplate, Kept, Method,
    NoReliableDimension, PipelineStatus, SourceGroup, SourceScored, Step,
};
use crate::{Error, Result};

impl KindStatus for FilterRunStatus {
    fn pipeline(&self) -> &PipelineStatus {
        &self.pipeline
    }
    fn pipeline_mut(&mut self) -> &mut PipelineStatus {
        &mut self.pipeline
    }
}

impl FilterRun {
    /// The resource the FilterRun names above it: its DistillationJob (method `mira`) or its
    /// SourceGroup (the baselines). The schema's rules say the same; this holds where they do
    /// not run (`mira run`, servers before 1.25).
    fn upstream(&self) -> Result<UpstreamRef> {
        let spec = &self.spec;
        match (spec.method, &spec.distillation_job_ref, &spec.source_group_ref) {
            (Method::Mira, Some(dj), None) => Ok(UpstreamRef::DistillationJob(dj.clone())),
            (Method::Mira, ..) => Err(Error::InvalidSpec(
                "method mira (the default) takes distillationJobRef, and no sourceGroupRef".into(),
            )),
            (method, None, Some(sg)) => {
                if (method == Method::Dsir) != spec.dsir.is_some() {
                    return Err(Error::InvalidSpec(
                        "dsir (the target sample) goes with method dsir, and only with it".into(),
                    ));
                }
                if (method == Method::Perplexity) != spec.perplexity.is_some() {
                    return Err(Error::InvalidSpec(
                        "perplexity (the reference model) goes with method perplexity, and only with it".into(),
                    ));
                }
                if spec.trim.is_some() {
                    return Err(Error::InvalidSpec(format!(
                        "trim averages a student's dimensions: method {} has none",
                        method.as_str()
                    )));
                }
                Ok(UpstreamRef::SourceGroup(sg.clone()))
            }
            (method, ..) => Err(Error::InvalidSpec(format!(
                "method {} takes sourceGroupRef, and no distillationJobRef",
                method.as_str()
            ))),
        }
    }

    /// The `tokenizer.json` budgets count with: the one named, or the teacher's; `None` for
    /// whitespace words.
    fn tokenizer(&self, lineage: &Lineage) -> Result<Option<String>> {
        let tokens = &self.spec.tokens;
        if tokens.from_teacher != Some(true) {
            return Ok(tokens.tokenizer.clone());
        }
        let refuse = |why: &str| {
            Err(Error::InvalidSpec(format!(
                "tokens.fromTeacher: {why}; name tokens.tokenizer (a tokenizer.json) instead"
            )))
        };
        if tokens.tokenizer.is_some() {
            return refuse("tokens.tokenizer is set too");
        }
        if self.spec.method != Method::Mira {
            return refuse(&format!("method {} has no teacher", self.spec.method.as_str()));
        }
        let rs = upstream(&lineage.rubric_set, "RubricSet")?;
        match &rs.spec.teacher.local {
            Some(local) if local.gguf_files.is_empty() => Ok(Some(join(&local.uri, "tokenizer.json"))),
            Some(_) => {
                refuse(&format!("the teacher of RubricSet {} is in GGUF files, with no tokenizer.json", rs.name_any()))
            }
            None => refuse(&format!("the teacher of RubricSet {} is behind an endpoint", rs.name_any())),
        }
    }

    /// The groups to filter, in the SourceGroup's order; with method `mira` each needs a student.
    fn groups(&self, sg: &SourceGroup, dj: Option<&DistillationJob>) -> Result<Vec<String>> {
        let groups = sg.group_names();
        if let Some(unknown) = self.spec.group_retention.keys().find(|g| !groups.contains(g)) {
            return Err(Error::InvalidSpec(format!(
                "groupRetention names {unknown:?}, not a group of SourceGroup {}",
                sg.name_any()
            )));
        }
        if let Some(dj) = dj {
            for group in &groups {
                student(dj, group)?;
            }
        }
        Ok(groups)
    }

    /// The DistillationJob, which method `mira` needs and the baselines do not have.
    fn distillation_job<'a>(&self, lineage: &'a Lineage) -> Result<Option<&'a DistillationJob>> {
        match self.spec.method {
            Method::Mira => upstream(&lineage.distillation_job, "DistillationJob").map(Some),
            Method::Random | Method::Dsir | Method::Perplexity => Ok(None),
        }
    }

    /// What ranks `group`'s records.
    fn ranker(&self, dj: Option<&DistillationJob>, group: &str) -> Result<RankerSpec> {
        match (self.spec.method, dj, &self.spec.dsir, &self.spec.perplexity) {
            (Method::Mira, Some(dj), ..) => Ok(RankerSpec::Student(student(dj, group)?.into())),
            (Method::Random, ..) => Ok(RankerSpec::Random),
            (Method::Perplexity, _, _, Some(perplexity)) => {
                let mut spec = PerplexitySpec::new(convert::local_model(&perplexity.model));
                if let Some(max_tokens) = perplexity.max_tokens {
                    spec.max_tokens = max_tokens as usize;
                }
                Ok(RankerSpec::Perplexity(spec))
            }
            (Method::Dsir, _, Some(dsir), _) => {
                let mut spec = DsirSpec::new(Source {
                    name: "target".into(),
                    uri: dsir.target.clone(),
                    format: dsir.format,
                    text: dsir.text.clone().unwrap_or_default(),
                    shard_fraction: None,
                });
                if let Some(sample) = dsir.sample {
                    spec.sample = sample as usize;
                }
                Ok(RankerSpec::Dsir(spec))
            }
            _ => Err(Error::InvalidSpec(format!("method {} is missing its settings", self.spec.method.as_str()))),
        }
    }

    /// The threshold stage a group's selection uses.
    fn threshold_of(&self, group: &str) -> String {
        match self.spec.policy {
            CutPolicy::Global => stage_name(Step::Threshold, None),
            CutPolicy::Group | CutPolicy::Source => stage_name(Step::Threshold, Some(group)),
        }
    }
}

fn student<'a>(dj: &'a DistillationJob, group: &str) -> Result<&'a str> {
    dj.status.iter().flat_map(|s| &s.students).find(|s| s.group == group).map(|s| s.student.as_str()).ok_or_else(|| {
        Error::UpstreamIncomplete(format!("DistillationJob {} has no student for group {group:?}", dj.name_any()))
    })
}

/// A finished stage's output root, which a later stage reads.
fn output<'a>(finished: &'a Finished<'_>, stage: &str) -> Result<&'a str> {
    finished.output(stage).ok_or_else(|| Error::InvalidSpec(format!("stage {stage} planned before it finished")))
}

impl Pipeline for FilterRun {
    const STEPS: &'static [Step] = &[Step::Score, Step::Threshold, Step::Select];

    fn upstream_ref(&self) -> Option<UpstreamRef> {
        // An incoherent spec names nothing above it; `stages` says why.
        self.upstream().ok()
    }

    fn job_template(&self) -> &JobTemplate {
        &self.spec.job
    }

    fn stages(&self, lineage: &Lineage) -> Result<Vec<StageDef>> {
        self.upstream()?;
        let sg = upstream(&lineage.source_group, "SourceGroup")?;
        let dj = self.distillation_job(lineage)?;
        let groups = self.groups(sg, dj)?;
        if let Some(dj) = dj.filter(|_| self.spec.on_no_reliable_dimension == NoReliableDimension::Fail) {
            let unranked = dj.status.as_ref().map(|s| s.unranked.clone()).unwrap_or_default();
            if !unranked.is_empty() {
                return Err(Error::NoReliableDimension(format!(
                    "DistillationJob {} masked every dimension of {}, so their records would be kept at random, not \
                     by quality: improve the students (see its Reliable condition), or set \
                     spec.onNoReliableDimension: KeepAtRandom",
                    dj.name_any(),
                    unranked.join(", ")
                )));
            }
        }
        let score = |g: &str| stage_name(Step::Score, Some(g));
        let mut stages: Vec<StageDef> =
            groups.iter().map(|g| StageDef::new(Step::Score, Some(g), Vec::new())).collect();
        match self.spec.policy {
            CutPolicy::Global => {
                stages.push(StageDef::new(Step::Threshold, None, groups.iter().map(|g| score(g)).collect()))
            }
            CutPolicy::Group | CutPolicy::Source => {
                stages.extend(groups.iter().map(|g| StageDef::new(Step::Threshold, Some(g), vec![score(g)])))
            }
        }
        stages
            .extend(groups.iter().map(|g| StageDef::new(Step::Select, Some(g), vec![score(g), self.threshold_of(g)])));
        Ok(stages)
    }

    fn plan(&self, lineage: &Lineage, stage: &StageDef, finished: &Finished<'_>) -> Result<Planned> {
        let sg = upstream(&lineage.source_group, "SourceGroup")?;
        let dj = self.distillation_job(lineage)?;
        let mut secrets = convert::storage_secrets(&sg.spec.storage);
        let storage = sg.spec.storage.config();
        let base = convert::stage_base(&sg.spec.root, self, &stage.name);
        match (stage.step, stage.group.as_deref()) {
            (Step::Score, Some(group)) => {
                // A judge student behind an endpoint needs its API key where it scores.
                if let Some(judge) = dj.and_then(|dj| dj.spec.student.judge.as_ref()) {
                    secrets.extend(convert::model(judge, JUDGE_KEY_ENV)?.1);
                }
                let groups = vec![ScoreGroup {
                    name: group.into(),
                    sources: convert::group_sources(sg, group)?,
                    ranker: self.ranker(dj, group)?,
                }];
                let mut plan = ScorePlan::new(groups);
                plan.storage = storage;
                if let Some(uri) = self.tokenizer(lineage)? {
                    plan.tokens = TokenCounter::Tokenizer { uri };
                }
                if let Some(trim) = self.spec.trim {
                    plan.trim = trim;
                }
                if let Some(bins) = self.spec.histogram_bins {
                    plan.histogram_bins = bins as usize;
                }
                Ok(Planned::new(plan, base, secrets))
            }
            (Step::Threshold, group) => {
                let scores =
                    stage.after.iter().map(|s| output(finished, s).map(str::to_string)).collect::<Result<Vec<_>>>()?;
                let mut plan = ThresholdPlan::new(scores, self.spec.retention);
                plan.storage = storage;
                plan.policy = self.spec.policy;
                plan.group_retention = self
                    .spec
                    .group_retention
                    .iter()
                    .filter(|(g, _)| group == Some(g.as_str()))
                    .map(|(g, r)| (g.clone(), *r))
                    .collect();
                Ok(Planned::new(plan, base, secrets))
            }
            (Step::Select, Some(group)) => {
                let groups = vec![GroupSources { name: group.into(), sources: convert::group_sources(sg, group)? }];
                let score = output(finished, &stage_name(Step::Score, Some(group)))?;
                let threshold = output(finished, &self.threshold_of(group))?;
                let mut plan = SelectPlan::new(groups, score.to_string(), threshold.to_string());
                plan.storage = storage;
                Ok(Planned::new(plan, join(&self.spec.output, group), secrets))
            }
            _ => Err(Error::InvalidSpec(format!("FilterRun has no stage {}", stage.name))),
        }
    }

    /// `Usable`, once sources are scored: `False` (reason `NoUsableRecords`) when a source gave
    /// no usable record, or skipped more records than it scored: most often a `text.field` or a
    /// Parquet column that matches nothing, which would otherwise end Ready with nothing kept.
    ///
    /// `Tokens`, once sources are scored: `False` (reason `WhitespaceWords`) when the budgets
    /// count whitespace-separated words because no tokenizer is named, which misjudges code and
    /// unspaced scripts against a model's tokens; `True` (reason `Tokenizer`) naming it.
    fn findings(status: &FilterRunStatus) -> Vec<Desired> {
        if status.groups.iter().all(|g| g.records.is_none()) {
            return Vec::new();
        }
        let usable = match unusable(status) {
            None => Desired::new("Usable", true, "Usable", "every source scored more records than it skipped"),
            Some(message) => Desired::new("Usable", false, "NoUsableRecords", message),
        };
        let tokens = match status.token_counter.as_deref() {
            Some(uri) if uri != WHITESPACE_WORDS => {
                Desired::new("Tokens", true, "Tokenizer", format!("budgets count the tokens of {uri}"))
            }
            _ => Desired::new(
                "Tokens",
                false,
                "WhitespaceWords",
                "budgets count whitespace-separated words, not a model's tokens: name spec.tokens.tokenizer (the \
                 tokenizer.json of the model to be trained), or set spec.tokens.fromTeacher when it shares the \
                 teacher's, for budgets in its tokens",
            ),
        };
        vec![usable, tokens]
    }

    fn highlights(status: &FilterRunStatus) -> Vec<String> {
        let kept = |k: &Kept| {
            format!(
                "kept {} of {} tokens ({} of {} records)",
                k.kept_tokens, k.total_tokens, k.kept_records, k.total_records
            )
        };
        let mut lines: Vec<String> = status
            .groups
            .iter()
            .filter_map(|g| {
                let drawn = match g.drawn_tokens {
                    Some(drawn) if drawn > 0 => format!("; {drawn} of those tokens by a draw among tied scores"),
                    _ => String::new(),
                };
                Some(format!("group {}: {} in {}{drawn}", g.name, kept(g.kept.as_ref()?), g.output.as_deref()?))
            })
            .collect();
        lines.extend(
            status
                .groups
                .iter()
                .flat_map(|g| &g.sources)
                .filter(|s| s.skipped_records() > 0)
                .map(|s| format!("source {}: {}", s.name, skip_summary(s))),
        );
        lines.extend(status.total.as_ref().map(|t| format!("total: {}", kept(t))));
        lines
    }

    fn summarize(&self, lineage: &Lineage, finished: &Finished<'_>, status: &mut FilterRunStatus) -> Result<()> {
        let sg = upstream(&lineage.source_group, "SourceGroup")?;
        let mut groups = Vec::new();
        // The sum over groups, once every group has selected.
        let mut total = Some(Kept::default());
        for name in sg.group_names() {
            let mut group = FilterGroupStatus { name: name.clone(), ..Default::default() };
            if let Some(score) = finished.result::<ScoreResult>(&stage_name(Step::Score, Some(&name)))? {
                if let Some(totals) = score.groups.iter().find(|t| t.group == name) {
                    group.scored_shards = Some(totals.shards as u64);
                    group.records = Some(totals.records);
                    group.tokens = Some(totals.tokens);
                    group.skipped_records = Some(totals.skipped.total());
                }
                group.sources = score
                    .sources
                    .iter()
                    .filter(|t| t.group == name)
                    .map(|t| SourceScored {
                        name: t.source.clone().unwrap_or_default(),
                        records: t.records,
                        skipped: t.skipped.counts.clone(),
                    })
                    .collect();
            }
            if let Some(threshold) = finished.result::<ThresholdResult>(&self.threshold_of(&name))? {
                group.cuts = threshold.cuts.iter().filter(|c| c.applies_to(&name)).cloned().collect();
                group.lengths = threshold.lengths.iter().filter(|l| l.group == name).cloned().collect();
            }
            let select = stage_name(Step::Select, Some(&name));
            let selected = finished.result::<Manifest>(&select)?.and_then(|m| m.groups.get(&name).cloned());
            total = total.zip(selected.as_ref()).map(|(mut total, kept)| {
                total.add(kept);
                total
            });
            // Tokens no score ranked: kept by the draw among records tied at the group's cuts,
            // and every kept token of its unranked sources. A global cut's draw is no group's.
            group.drawn_tokens = selected.is_some().then(|| {
                group
                    .cuts
                    .iter()
                    .filter(|c| c.scope != "global")
                    .filter_map(|c| c.cut.tie.as_ref())
                    .map(|t| t.tokens)
                    .sum()
            });
            group.kept = selected;
            group.output = finished.output(&select).map(str::to_string);
            groups.push(group);
        }
        keep_listed_sources(&mut groups);
        status.groups = groups;
        status.token_counter = Some(self.tokenizer(lineage)?.unwrap_or_else(|| WHITESPACE_WORDS.into()));
        status.total = total.filter(|_| !status.groups.is_empty());
        status.report = status.total.as_ref().map(|_| join(&self.spec.output, REPORT_FILE));
        status.kept_share = status.total.as_ref().map(|t| {
            let share = if t.total_tokens > 0 { 100.0 * t.kept_tokens as f64 / t.total_tokens as f64 } else { 0.0 };
            format!("{share:.1}% of {} tokens", si(t.total_tokens as f64))
        });
        match unusable(status) {
            Some(message) if !self.spec.allow_unusable_sources => Err(Error::NoUsableRecords(format!(
                "{message}; fix the sources, or set spec.allowUnusableSources: true to keep the selection of the rest"
            ))),
            _ => Ok(()),
        }
    }
}

/// Sources a status lists figures for by each measure: per-source figures grow with the
/// sources, and a status must stay bounded; every source's are in the score and threshold
/// results and the run report.
const LISTED_SOURCES: usize = 16;

/// Keeps the per-source figures (scored and skipped, length, a per-source cut) of the sources
/// that most need a look: the [`LISTED_SOURCES`] that skipped the largest share of their records
/// (those with no usable record first), and the [`LISTED_SOURCES`] whose scores follow record
/// length most.
pub(super) fn keep_listed_sources(groups: &mut [FilterGroupStatus]) {
    let key = |group: &str, source: &str| format!("{group}/{source}");
    // (no usable record, skipped share, key): those with none first, then the largest shares.
    let mut skipping: Vec<(bool, f64, String)> = groups
        .iter()
        .flat_map(|g| g.sources.iter().map(move |s| (g, s)))
        .filter(|(_, s)| s.records == 0 || s.skipped_records() > 0)
        .map(|(g, s)| (s.records == 0, s.skipped_records() as f64 / s.records.max(1) as f64, key(&g.name, &s.name)))
        .collect();
    skipping.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)).then_with(|| a.2.cmp(&b.2)));
    let mut following: Vec<(f64, String)> = groups
        .iter()
        .flat_map(|g| &g.lengths)
        .map(|l| (l.rank_correlation.map_or(0.0, f64::abs), key(&l.group, &l.source)))
        .collect();
    following.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let listed: BTreeSet<String> = skipping
        .into_iter()
        .take(LISTED_SOURCES)
        .map(|(_, _, key)| key)
        .chain(following.into_iter().take(LISTED_SOURCES).map(|(_, key)| key))
        .collect();
    for group in groups {
        let name = group.name.clone();
        group.unusable_sources = Some(group.sources.iter().filter(|s| s.unusable()).count() as u32);
        group.sources.retain(|s| listed.contains(&key(&name, &s.name)));
        group.lengths.retain(|l| listed.contains(&key(&l.group, &l.source)));
        group.cuts.retain(|c| c.scope == "global" || c.scope == name || listed.contains(&c.scope));
    }
}

/// `status.tokenCounter` when no tokenizer is named.
const WHITESPACE_WORDS: &str = "whitespace words";

/// The run report's name under the FilterRun's output.
const REPORT_FILE: &str = "report.html";

/// The sources that gave no usable record or skipped more than they scored, said for a user, if
/// any.
pub(super) fn unusable(status: &FilterRunStatus) -> Option<String> {
    let unusable: Vec<String> = status
        .groups
        .iter()
        .flat_map(|g| g.sources.iter().map(move |s| (g.name.as_str(), s)))
        .filter(|(_, s)| s.unusable())
        .map(|(group, s)| format!("{group}/{}: {}", s.name, skip_summary(s)))
        .collect();
    // The status lists a few sources only; the count is of all of them (a status written
    // before the count has only the listed ones).
    let all: usize = status
        .groups
        .iter()
        .map(|g| g.unusable_sources.map_or_else(|| g.sources.iter().filter(|s| s.unusable()).count(), |n| n as usize))
        .sum();
    let more = match all.saturating_sub(unusable.len()) {
        0 => String::new(),
        n => format!("; and {n} more (every source's figures are in the score results and the run report)"),
    };
    (!unusable.is_empty()).then(|| {
        format!(
            "sources that gave no usable record or skipped most of them (check text.field, text.messagesField and the \
             format): {}{more}",
            unusable.join("; ")
        )
    })
}

/// `scored 351 records, skipped 9 (invalid_json 3, missing_text 6)`.
fn skip_summary(source: &SourceScored) -> String {
    match source.skipped_records() {
        0 => format!("scored {} records", source.records),
        n => format!("scored {} records, skipped {n} ({})", source.records, skip_reasons(&source.skipped)),
    }
}
