//! The judge prompt: one template for every place a model scores a record on a rubric (the
//! teacher's labels, the exported SFT data, an LLM student), so the student is trained and run on
//! exactly what the teacher saw.

use crate::plan::{DimensionRef, Scale};

/// The judge's instructions. Teachers also give a short rationale per dimension; students only
/// the scores.
pub fn judge_system(scale: Scale, with_rationale: bool) -> String {
    let answer = if with_rationale {
        "an object with its integer `score` and a one-sentence `rationale`"
    } else {
        "its integer score"
    };
    format!(
        "You are a data-quality judge for LLM mid-training data. Score the record on each rubric \
         dimension with an integer from {} (worst) to {} (best). Answer with a JSON object mapping \
         each dimension id to {answer}.",
        scale.min, scale.max
    )
}

pub const DISCOVER_SYSTEM: &str = "You are an expert curator of LLM mid-training data. Given one \
record, propose the quality dimensions that matter most for judging records like it: for each, a \
short name, a one-sentence description, why it matters for this record, and this record's score.";

pub fn discover_user(source: &str, text: &str, scale: Scale) -> String {
    format!("Source: {source}\nScore each dimension from {} to {}.\n\nRecord:\n{text}", scale.min, scale.max)
}

pub const GUIDE_SYSTEM: &str = "You write scoring guides for data-quality rubrics: for one \
dimension, say concretely what the lowest, middle and highest scores look like.";

pub fn guide_user(name: &str, description: &str, scale: Scale) -> String {
    format!("Dimension: {name}\nDescription: {description}\nScale: {} to {}.", scale.min, scale.max)
}

pub fn judge_user(dimensions: &[DimensionRef], text: &str) -> String {
    let mut out = String::from("Rubric:\n");
    for d in dimensions {
        out.push_str(&format!("- {}", d.id));
        if !d.name.is_empty() && d.name != d.id {
            out.push_str(&format!(" ({})", d.name));
        }
        if !d.description.is_empty() {
            out.push_str(&format!(": {}", d.description));
        }
        out.push('\n');
    }
    out.push_str("\nRecord:\n");
    out.push_str(text);
    out
}
