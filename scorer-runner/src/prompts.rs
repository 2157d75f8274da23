//! Discovery's prompts: the teacher's free-form proposals of quality dimensions for a record, and
//! the scoring guide of each anchored dimension. (The judge prompt, which scores a record on fixed
//! dimensions, is [`crate::models::judge::JudgeRequest`].)

use crate::plan::Scale;

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
