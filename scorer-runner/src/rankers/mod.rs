//! What ranks a group's records in `score`: its student (the MIRA method), or a baseline
//! selector that the MIRA paper compares the method with: a seeded random draw, DSIR's
//! importance weights toward a target sample ([`dsir`]), or a reference model's perplexity
//! ([`perplexity`]). Every ranker gives each record an
//! aggregate in a fixed range and its own score columns, so `threshold` (its policies and token
//! budgets) and `select` treat every method alike, and two selections of one corpus compare
//! record by record.

pub mod dsir;
pub mod perplexity;

use std::collections::BTreeMap;

use crate::error::Result;
use crate::plan::{RankerSpec, ScoreGroup};
use crate::records::{id_fraction, TextRecord};
use crate::stats::trimmed_mean;
use crate::steps::Context;
use crate::student::{BatchScores, Student};

pub use dsir::Dsir;
pub use perplexity::Perplexity;

/// The salt of the random baseline's draw: apart from the tie draw's hash of the id, so that the
/// records a random selection keeps are not those a tie would.
const RANDOM_SALT: u64 = 0x6d69_7261_7261_6e64;

pub enum Ranker {
    /// The group's student: the trimmed mean of its dimensions unmasked for the record's source.
    Student {
        student: Student,
        trim: f64,
    },
    Random,
    Dsir(Dsir),
    Perplexity(Perplexity),
}

impl Ranker {
    /// Loads the group's student, or fits (or reads back) a baseline's model of the group.
    pub async fn load(ctx: &Context, group: &ScoreGroup, trim: f64, output: &str) -> Result<Self> {
        Ok(match &group.ranker {
            RankerSpec::Student(uri) => {
                Ranker::Student { student: Student::load(&ctx.storage, &ctx.scratch, uri).await?, trim }
            }
            RankerSpec::Random => Ranker::Random,
            RankerSpec::Dsir(spec) => Ranker::Dsir(Dsir::load(ctx, spec, group, output).await?),
            RankerSpec::Perplexity(spec) => Ranker::Perplexity(Perplexity::load(ctx, spec).await?),
        })
    }

    /// How many score columns every record gets.
    fn width(&self) -> usize {
        match self {
            Ranker::Student { student, .. } => student.header.dimensions.len(),
            Ranker::Random | Ranker::Dsir(_) => 1,
            Ranker::Perplexity(_) => 2,
        }
    }

    /// The score columns every record gets, besides its aggregate.
    pub fn columns(&self) -> Vec<&str> {
        match self {
            Ranker::Student { student, .. } => student.header.dimensions.iter().map(|d| d.id.as_str()).collect(),
            Ranker::Random => vec!["random"],
            Ranker::Dsir(_) => vec!["log_importance"],
            Ranker::Perplexity(_) => vec!["mean_log_prob", "perplexity"],
        }
    }

    /// The range of the aggregate, which the score histograms span.
    pub fn range(&self) -> (f64, f64) {
        match self {
            Ranker::Student { student, .. } => (student.header.scale.min as f64, student.header.scale.max as f64),
            Ranker::Random | Ranker::Dsir(_) => (0.0, 1.0),
            Ranker::Perplexity(_) => (perplexity::FLOOR, 0.0),
        }
    }

    /// Whether no score ranks `source`: its student masked every dimension for it. Each of its
    /// records then gets the range's midpoint, so that the threshold cuts it by the seeded draw.
    pub fn ranks_none(&self, source: &str) -> bool {
        matches!(self, Ranker::Student { student, .. } if student.ranks_none(source))
    }

    /// The dimensions masked per source (a student's only).
    pub fn masked(&self) -> BTreeMap<String, Vec<String>> {
        match self {
            Ranker::Student { student, .. } => student.header.masked.clone(),
            Ranker::Random | Ranker::Dsir(_) | Ranker::Perplexity(_) => BTreeMap::new(),
        }
    }

    /// Why a record the ranker gave no score is skipped, as the skip counts name it.
    pub fn unscored_reason(&self) -> &'static str {
        match self {
            Ranker::Perplexity(_) => "no_perplexity",
            Ranker::Student { .. } | Ranker::Random | Ranker::Dsir(_) => "student_no_reply",
        }
    }

    /// Ranks a batch of `source`'s records into `out` (emptied first).
    pub fn rank(&self, source: &str, records: &[&TextRecord<'_>], out: &mut Ranked) -> Result<()> {
        out.clear(self.width());
        match self {
            Ranker::Student { student, trim } => {
                let texts: Vec<&str> = records.iter().map(|r| &*r.text).collect();
                let Ranked { aggregates, values, predictions, .. } = out;
                student.score_batch(&texts, predictions)?;
                let (lo, hi) = self.range();
                let unranked = self.ranks_none(source).then_some(((lo + hi) / 2.0) as f32);
                let unmasked = student.unmasked(source);
                let mut kept = Vec::new();
                for predicted in predictions.iter() {
                    let Some(scores) = predicted else {
                        aggregates.push(None);
                        continue;
                    };
                    kept.clear();
                    match unmasked {
                        Some(mask) => kept.extend(scores.iter().zip(mask).filter(|(_, &u)| u).map(|(s, _)| *s)),
                        // No mask for the source: all dimensions count.
                        None => kept.extend_from_slice(scores),
                    }
                    let aggregate = unranked.or_else(|| trimmed_mean(&mut kept, *trim)).unwrap_or(f32::NAN);
                    aggregates.push(Some(aggregate));
                    values.extend_from_slice(scores);
                }
            }
            Ranker::Random => {
                for record in records {
                    let draw = id_fraction(&record.id, RANDOM_SALT) as f32;
                    out.push(Some(draw), &[draw]);
                }
            }
            Ranker::Dsir(dsir) => {
                for record in records {
                    let log_weight = dsir.log_weight(&record.text, &mut out.grams);
                    out.push(Some(dsir.key(log_weight, &record.id)), &[log_weight as f32]);
                }
            }
            Ranker::Perplexity(perplexity) => {
                for mean in perplexity.mean_log_probs(records)? {
                    match mean {
                        Some(mean) => {
                            let aggregate = mean.clamp(perplexity::FLOOR, 0.0) as f32;
                            out.push(Some(aggregate), &[mean as f32, (-mean).exp() as f32]);
                        }
                        None => out.push(None, &[]),
                    }
                }
            }
        }
        Ok(())
    }
}

/// A batch's ranks: per record, its aggregate and score columns, or none where a judge student
/// gave no usable reply. Reused from batch to batch.
#[derive(Default)]
pub struct Ranked {
    width: usize,
    aggregates: Vec<Option<f32>>,
    values: Vec<f32>,
    predictions: BatchScores,
    grams: crate::featurize::GramScratch,
}

impl Ranked {
    fn clear(&mut self, width: usize) {
        self.width = width;
        self.aggregates.clear();
        self.values.clear();
    }

    fn push(&mut self, aggregate: Option<f32>, columns: &[f32]) {
        self.aggregates.push(aggregate);
        self.values.extend_from_slice(columns);
    }

    /// Each record's aggregate and columns, in order; `None` for a record not ranked.
    pub fn iter(&self) -> impl Iterator<Item = Option<(f32, &[f32])>> {
        let mut at = 0;
        self.aggregates.iter().map(move |aggregate| {
            let aggregate = (*aggregate)?;
            let columns = &self.values[at..at + self.width];
            at += self.width;
            Some((aggregate, columns))
        })
    }
}
