//! `distill`: trains one student per group from the teacher's labels, measures teacher-student
//! agreement per (source, dimension) on a held-out split, and derives the reliability mask.
//!
//! Labels are JSONL (optionally .gz/.zst) records, one per labelled record:
//!
//! ```json
//! {"id": "r1", "source": "web", "text": "...", "scores": {"clarity": 4, "depth": 2},
//!  "rationales": {"clarity": "..."}}
//! ```
//!
//! `group` may be given but the plan's source-to-group map decides. A label is skipped (and
//! counted by reason) when it does not parse, its source is in no group of the plan, a dimension
//! of its group has no score, or a score is not an integer on the plan's scale. A record is in
//! the validation split when `hash(id)` falls below `validationFraction`, so every rerun and
//! worker agrees.
//!
//! The label files are read once per run: each label goes to the bounded train and validation
//! samples of the groups its source belongs to, so memory is bounded by the sample caps and not
//! by the number of labels.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::{blocking, Context};
use crate::bottom_k::BottomK;
use crate::error::{Error, Result};
use crate::featurize::{self, idf_weights};
use crate::formats::{for_each_batch, ShardWriter};
use crate::models::judge::JudgeRequest;
use crate::plan::Format;
use crate::plan::{Agreement, DistillGroup, DistillPlan, DistillResult, Source, StudentReport};
use crate::plan::{SkipCounts, TextSpec};
use crate::records::id_fraction;
use crate::ridge;
use crate::stats;
use crate::storage::join;
use crate::student::{BatchScores, Scorer, Student, StudentHeader, StudentKind, FORMAT};
use crate::units::unit_id;

/// One teacher label.
#[derive(Clone, Debug, Deserialize)]
pub struct Label {
    pub id: String,
    pub source: String,
    pub text: String,
    pub scores: BTreeMap<String, Value>,
    /// The teacher's one-sentence reason per dimension, when it gave one.
    #[serde(default)]
    pub rationales: BTreeMap<String, String>,
}

/// A label checked against its group's rubric: scores in head order.
#[derive(Clone, Debug)]
struct Example {
    id: String,
    source: String,
    text: String,
    scores: Vec<f32>,
    rationales: BTreeMap<String, String>,
}

pub async fn run(ctx: &Context, plan: &DistillPlan) -> Result<DistillResult> {
    if plan.groups.is_empty() {
        return Err(Error::plan("no groups"));
    }
    if !(0.0..1.0).contains(&plan.validation_fraction) {
        return Err(Error::plan("validationFraction must be in [0, 1)"));
    }
    let label_files = super::list_shards(
        &ctx.storage,
        &Source {
            name: "labels".into(),
            uri: plan.labels.clone(),
            format: None,
            text: TextSpec::default(),
            shard_fraction: None,
        },
    )
    .await?;
    let (samples, mut skipped_labels) = read_labels(ctx, plan, &label_files).await?;
    let ids: Vec<String> = plan.groups.iter().map(|g| unit_id(&g.name, &g.name)).collect();
    let commits = ctx.units(&plan.output).run(&ids, |i| train_group(ctx, plan, &plan.groups[i], &samples[i])).await?;
    let mut students = Vec::new();
    for commit in commits {
        let (report, skipped): (StudentReport, SkipCounts) = commit.output;
        skipped_labels.merge(&skipped);
        students.push(report);
    }
    let sft = plan.export_sft.then(|| join(&plan.output, "sft/"));
    let result = DistillResult { students, sft, skipped_labels };
    ctx.write_result(&plan.output, &result).await?;
    Ok(result)
}

/// Checks a label against the group's rubric.
fn to_example(label: &Label, group: &DistillGroup, plan: &DistillPlan) -> std::result::Result<Example, &'static str> {
    let mut scores = Vec::with_capacity(group.dimensions.len());
    for d in &group.dimensions {
        let score = label.scores.get(&d.id).and_then(Value::as_i64).ok_or("missing_score")?;
        if score < plan.scale.min as i64 || score > plan.scale.max as i64 {
            return Err("score_out_of_range");
        }
        scores.push(score as f32);
    }
    if label.text.trim().is_empty() {
        return Err("empty_text");
    }
    Ok(Example {
        id: label.id.clone(),
        source: label.source.clone(),
        text: label.text.clone(),
        scores,
        rationales: label.rationales.clone(),
    })
}

/// One group's labels as they are read: bounded train and validation samples, and the labels
/// its rubric refused, by reason.
struct Samples {
    train: BottomK<Example>,
    validation: BottomK<Example>,
    skipped: SkipCounts,
}

impl Samples {
    fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        Samples { train: BottomK::new(cap), validation: BottomK::new(cap), skipped: SkipCounts::default() }
    }

    /// Offers a label to the group's validation or train sample (by its id's hash), or counts
    /// why the group's rubric refuses it.
    fn offer(&mut self, label: &Label, group: &DistillGroup, plan: &DistillPlan, uri: &str, index: u64) {
        match to_example(label, group, plan) {
            Ok(example) => {
                let key = xxhash_rust::xxh3::xxh3_64_with_seed(example.id.as_bytes(), plan.split_seed ^ 0x5eed);
                let validation = id_fraction(&example.id, plan.split_seed) < plan.validation_fraction;
                let sample = if validation { &mut self.validation } else { &mut self.train };
                sample.offer(key, example);
            }
            Err(reason) => self.skipped.add_reason(reason, uri, index),
        }
    }

    fn finish(self) -> GroupLabels {
        GroupLabels {
            train: Arc::new(self.train.into_sorted()),
            validation: Arc::new(self.validation.into_sorted()),
            skipped: self.skipped,
        }
    }
}

/// One group's training input: its train and validation examples, in id-hash order (shared
/// with the blocking tasks that use them), and the labels it skipped.
struct GroupLabels {
    train: Arc<Vec<Example>>,
    validation: Arc<Vec<Example>>,
    skipped: SkipCounts,
}

/// Reads every label file once, offering each label to the samples of every group its source
/// is in. Returns each group's labels, in plan order, and the labels that belong to no group (a
/// line that is not a label, or a source no group lists), by reason.
async fn read_labels(
    ctx: &Context,
    plan: &DistillPlan,
    files: &[super::Shard],
) -> Result<(Vec<GroupLabels>, SkipCounts)> {
    let plan = Arc::new(plan.clone());
    let mut groups_of: HashMap<String, Vec<usize>> = HashMap::new();
    for (g, group) in plan.groups.iter().enumerate() {
        for source in &group.sources {
            groups_of.entry(source.clone()).or_default().push(g);
        }
    }
    let groups_of = Arc::new(groups_of);
    let mut samples: Vec<Samples> = plan.groups.iter().map(|_| Samples::new(plan.max_train_records)).collect();
    let mut unassigned = SkipCounts::default();
    for file in files {
        let (input, _guard) = ctx.open_shard(&file.uri, file.format).await?;
        let (uri, format, plan, groups_of) = (file.uri.clone(), file.format, plan.clone(), groups_of.clone());
        let progress = ctx.progress.clone();
        (samples, unassigned) = blocking(move || {
            for_each_batch(&uri, input, format, crate::formats::ReadOptions::default(), |batch| {
                progress.read(&batch);
                for raw in batch.records {
                    let Ok(label) = serde_json::from_slice::<Label>(&raw.bytes) else {
                        unassigned.add_reason("invalid_label", &uri, raw.index);
                        continue;
                    };
                    let Some(groups) = groups_of.get(&label.source) else {
                        unassigned.add_reason("source_in_no_group", &uri, raw.index);
                        continue;
                    };
                    for &g in groups {
                        samples[g].offer(&label, &plan.groups[g], &plan, &uri, raw.index);
                    }
                }
                Ok(ControlFlow::Continue(()))
            })?;
            Ok((samples, unassigned))
        })
        .await?;
    }
    Ok((samples.into_iter().map(Samples::finish).collect(), unassigned))
}

async fn train_group(
    ctx: &Context,
    plan: &DistillPlan,
    group: &DistillGroup,
    labels: &GroupLabels,
) -> Result<(StudentReport, SkipCounts)> {
    if group.dimensions.is_empty() {
        return Err(Error::plan(format!("group {:?} has no dimensions", group.name)));
    }
    let GroupLabels { train, validation, skipped } = labels;
    if train.len() < 2 {
        return Err(Error::plan(format!(
            "group {:?}: {} usable training labels (need at least 2); skipped: {:?}",
            group.name,
            train.len(),
            skipped.counts
        )));
    }
    let student = build_student(ctx, plan, group, train).await?;
    let (plan_c, group_c, validation) = (plan.clone(), group.clone(), validation.clone());
    let (student, agreement, (unscored, validated)) = blocking(move || {
        let (agreement, counts) = agreement(&plan_c, &group_c, &student, &validation)?;
        Ok((student, agreement, counts))
    })
    .await?;
    let mut masked: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in agreement.iter().filter(|a| a.masked) {
        masked.entry(a.source.clone()).or_default().push(a.dimension.clone());
    }
    let student = student.with_mask(masked.clone());
    let bytes = student.to_bytes()?;
    let lambdas = match &student.scorer {
        Scorer::Heads { heads, .. } => {
            group.dimensions.iter().map(|d| d.id.clone()).zip(heads.lambdas.iter().copied()).collect()
        }
        Scorer::Judge { .. } => BTreeMap::new(),
    };
    let student_uri = join(&plan.output, &format!("students/{}.student", group.name));
    let report = StudentReport {
        group: group.name.clone(),
        student: student_uri.clone(),
        train_records: train.len(),
        validation_records: validated,
        lambdas,
        agreement,
        masked,
    };
    let mut skipped = skipped.clone();
    skipped.merge(&unscored);
    ctx.storage.put(&student_uri, bytes.into()).await?;
    if plan.export_sft {
        let tmp = ctx.scratch_file()?;
        let request = JudgeRequest::new(group.dimensions.clone(), plan.scale, false, plan.max_record_tokens);
        let (path, group_c, train) = (tmp.to_path_buf(), group.clone(), train.clone());
        blocking(move || {
            let mut writer = ShardWriter::create(&path, Format::Jsonl)?;
            for example in train.iter() {
                writer.write_line(&sft_example(&request, &group_c, example))?;
            }
            writer.finish()
        })
        .await?;
        ctx.storage.put_file(&join(&plan.output, &format!("sft/{}.jsonl", group.name)), &tmp).await?;
    }
    Ok((report, skipped))
}

/// A training example as one chat-format SFT record (system, user, assistant JSON scores): the
/// judge student's own request (rubric and scoring guides included, a long record cut head plus
/// tail at `maxRecordTokens` whitespace words, as the model to be tuned is not known here),
/// answered with the teacher's scores. The teacher's rationales ride beside the messages, not in the answer, so
/// that a model tuned on the messages answers exactly what a judge student is asked for.
fn sft_example(request: &JudgeRequest, group: &DistillGroup, example: &Example) -> Vec<u8> {
    let answer: serde_json::Map<String, Value> =
        group.dimensions.iter().zip(&example.scores).map(|(d, s)| (d.id.clone(), Value::from(*s as i64))).collect();
    let record = serde_json::json!({
        "messages": [
            {"role": "system", "content": request.system()},
            {"role": "user", "content": request.user(&example.text, None).0},
            {"role": "assistant", "content": Value::Object(answer).to_string()},
        ],
        "id": example.id,
        "source": example.source,
        "group": group.name,
        "rationales": example.rationales,
    });
    serde_json::to_vec(&record).expect("JSON values serialize")
}

/// The group's student: the LLM judge the plan names, or ridge heads trained on the labels.
async fn build_student(ctx: &Context, plan: &DistillPlan, group: &DistillGroup, train: &[Example]) -> Result<Student> {
    let kind_and_scorer = match &plan.judge {
        Some(model) => (
            StudentKind::Judge { model: model.clone(), max_record_tokens: plan.max_record_tokens },
            Scorer::judge(&ctx.storage, &ctx.scratch, model, &group.dimensions, plan.scale, plan.max_record_tokens)
                .await?,
        ),
        None => {
            let texts: Arc<Vec<String>> = Arc::new(train.iter().map(|e| e.text.clone()).collect());
            let idf = if featurize::uses_idf(&plan.featurizer) {
                let plain = featurize::build(&ctx.storage, &ctx.scratch, &plan.featurizer, None).await?;
                let texts = texts.clone();
                Some(blocking(move || Ok(idf_weights(plain.dim(), &plain.featurize(&refs(&texts))?))).await?)
            } else {
                None
            };
            let featurizer = featurize::build(&ctx.storage, &ctx.scratch, &plan.featurizer, idf.clone()).await?;
            let targets: Vec<Vec<f32>> =
                (0..group.dimensions.len()).map(|h| train.iter().map(|e| e.scores[h]).collect()).collect();
            let (f, lambdas) = (featurizer.clone(), plan.lambdas.clone());
            let heads =
                blocking(move || Ok(ridge::fit(&f.featurize(&refs(&texts))?, f.dim(), &targets, &lambdas))).await?;
            let kind = StudentKind::Heads {
                featurizer: plan.featurizer.clone(),
                dim: featurizer.dim(),
                bias: heads.bias.clone(),
                lambdas: heads.lambdas.clone(),
                has_idf: idf.is_some(),
            };
            (kind, Scorer::Heads { heads, featurizer, idf })
        }
    };
    let header = StudentHeader {
        format: FORMAT.into(),
        group: group.name.clone(),
        dimensions: group.dimensions.clone(),
        scale: plan.scale,
        masked: BTreeMap::new(),
        trained_on: train.len(),
        kind: kind_and_scorer.0,
    };
    Ok(Student::new(header, kind_and_scorer.1))
}

fn refs(texts: &[String]) -> Vec<&str> {
    texts.iter().map(String::as_str).collect()
}

/// Teacher-student agreement on the validation split per (source, dimension), and the mask.
/// Also returns validation records the student could not score, and how many it scored.
/// The teacher's and the student's scores of the same records, in the same order.
type ScorePairs = (Vec<f64>, Vec<f64>);

fn agreement(
    plan: &DistillPlan,
    group: &DistillGroup,
    student: &Student,
    validation: &[Example],
) -> Result<(Vec<Agreement>, (SkipCounts, usize))> {
    let heads = group.dimensions.len();
    // (source, head) -> (teacher, student) pairs
    let mut pairs: BTreeMap<(&str, usize), ScorePairs> = BTreeMap::new();
    let mut unscored = SkipCounts::default();
    let mut scored = 0;
    let mut predictions = BatchScores::default();
    for chunk in validation.chunks(256) {
        let texts: Vec<&str> = chunk.iter().map(|e| e.text.as_str()).collect();
        student.score_batch(&texts, &mut predictions)?;
        for (example, predicted) in chunk.iter().zip(predictions.iter()) {
            let Some(predicted) = predicted else {
                unscored.add_reason("student_no_reply", &example.source, 0);
                continue;
            };
            scored += 1;
            for (h, (&teacher, &student)) in example.scores.iter().zip(predicted).take(heads).enumerate() {
                let entry = pairs.entry((example.source.as_str(), h)).or_default();
                entry.0.push(teacher as f64);
                entry.1.push(student as f64);
            }
        }
    }
    let mut out = Vec::new();
    for source in &group.sources {
        for (h, dim) in group.dimensions.iter().enumerate() {
            let (teacher, pred) = pairs.remove(&(source.as_str(), h)).unwrap_or_default();
            let n = teacher.len();
            let mae = stats::mae(&teacher, &pred);
            let spearman = stats::spearman(&teacher, &pred);
            let reason = if n < plan.mask.min_validation {
                Some(format!("{n} validation records < {}", plan.mask.min_validation))
            } else if spearman.is_none_or(|r| r < plan.mask.min_spearman) {
                Some(format!(
                    "spearman {} < {}",
                    spearman.map_or("undefined".into(), |r| format!("{r:.3}")),
                    plan.mask.min_spearman
                ))
            } else if mae > plan.mask.max_mae {
                Some(format!("MAE {mae:.3} > {}", plan.mask.max_mae))
            } else {
                None
            };
            out.push(Agreement {
                source: source.clone(),
                dimension: dim.id.clone(),
                records: n as u64,
                mae,
                spearman,
                masked: reason.is_some(),
                reason,
            });
        }
    }
    Ok((out, (unscored, scored)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Dimension;
    use crate::plan::Format;
    use crate::steps::Shard;

    fn group(name: &str, sources: &[&str]) -> DistillGroup {
        let dimension =
            Dimension { id: "d".into(), name: String::new(), description: String::new(), guide: String::new() };
        DistillGroup {
            name: name.into(),
            sources: sources.iter().map(|s| s.to_string()).collect(),
            dimensions: vec![dimension],
        }
    }

    fn ids(examples: &[Example]) -> Vec<(&str, &str)> {
        examples.iter().map(|e| (e.source.as_str(), e.id.as_str())).collect()
    }

    #[tokio::test]
    async fn labels_are_read_once_into_each_group_of_their_source_in_bounded_samples() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Context::new(Default::default(), crate::units::WorkerConfig::from_env(), dir.path().join("scratch"));
        // "books" is in both groups; "forum" in none.
        let plan: DistillPlan = serde_json::from_value(serde_json::json!({
            "output": dir.path().join("out"), "labels": dir.path().join("labels"), "groups": [], "maxTrainRecords": 5,
        }))
        .unwrap();
        let plan = DistillPlan { groups: vec![group("a", &["web", "books"]), group("b", &["code", "books"])], ..plan };
        let mut lines: Vec<String> = Vec::new();
        for source in ["web", "code", "books"] {
            for i in 0..40 {
                lines.push(serde_json::json!({"id": format!("{source}-{i}"), "source": source, "text": "some text", "scores": {"d": 1 + i % 5}}).to_string());
            }
        }
        lines.push("not a label".into());
        lines.push(serde_json::json!({"id": "f", "source": "forum", "text": "t", "scores": {"d": 3}}).to_string());
        lines.push(serde_json::json!({"id": "w", "source": "web", "text": "t", "scores": {}}).to_string());
        // The same labels in reverse order, in a second set of files: samples must not depend on
        // the order labels are read in.
        let mut read = Vec::new();
        for (name, order) in [("forward", lines.clone()), ("reverse", lines.iter().rev().cloned().collect())] {
            let path = dir.path().join(format!("{name}.jsonl"));
            std::fs::write(&path, order.join("\n") + "\n").unwrap();
            let shard =
                Shard { uri: path.to_string_lossy().into(), format: Format::Jsonl, size: 0, version: String::new() };
            read.push(read_labels(&ctx, &plan, &[shard]).await.unwrap());
        }
        let (groups, unassigned) = &read[0];
        assert_eq!(unassigned.counts, BTreeMap::from([("invalid_label".into(), 1), ("source_in_no_group".into(), 1)]));
        assert_eq!(
            groups[0].skipped.counts,
            BTreeMap::from([("missing_score".into(), 1)]),
            "counted in the group of its source"
        );
        assert!(groups[1].skipped.counts.is_empty());
        for (labels, sources) in groups.iter().zip([["web", "books"], ["code", "books"]]) {
            assert_eq!(labels.train.len(), 5, "capped");
            assert_eq!(labels.validation.len(), 5, "capped");
            for (source, _) in ids(&labels.train).into_iter().chain(ids(&labels.validation)) {
                assert!(sources.contains(&source), "{source} not in {sources:?}");
            }
        }
        let (reversed, _) = &read[1];
        for (forward, reverse) in groups.iter().zip(reversed) {
            assert_eq!(ids(&forward.train), ids(&reverse.train));
            assert_eq!(ids(&forward.validation), ids(&reverse.validation));
        }
    }

    #[test]
    fn sft_lines_carry_the_rubric_guides_and_the_teachers_rationales() {
        let mut group = group("a", &["web"]);
        group.dimensions[0].guide = "1: off-topic. 5: every claim sourced.".into();
        let request = JudgeRequest::new(group.dimensions.clone(), crate::plan::Scale::default(), false, 100);
        let example = Example {
            id: "r1".into(),
            source: "web".into(),
            text: "the record".into(),
            scores: vec![4.0],
            rationales: BTreeMap::from([("d".into(), "cites two papers".into())]),
        };
        let line: Value = serde_json::from_slice(&sft_example(&request, &group, &example)).unwrap();
        let user = line["messages"][1]["content"].as_str().unwrap();
        assert!(user.contains("1: off-topic. 5: every claim sourced.") && user.ends_with("the record"), "{user}");
        assert_eq!(line["messages"][2]["content"], r#"{"d":4}"#);
        assert_eq!(line["rationales"]["d"], "cites two papers");

        // A record past the cut is read head plus tail, as the teacher and a judge student read it.
        let short = JudgeRequest::new(group.dimensions.clone(), crate::plan::Scale::default(), false, 4);
        let long = Example { text: "one two three four five six".into(), ..example };
        let line: Value = serde_json::from_slice(&sft_example(&short, &group, &long)).unwrap();
        let user = line["messages"][1]["content"].as_str().unwrap();
        assert!(user.ends_with("one two\n[... 2 tokens omitted ...]\nfive six"), "{user}");
    }
}
