//! MIRA's data plane: the steps every MIRA Job runs, and the storage, formats, featurizers and
//! work-unit protocol they share. The operator depends on this crate (without the model
//! features) for the plan and result types and for reading results back from storage.

pub mod ascii;
pub mod bottom_k;
pub mod error;
pub mod featurize;
pub mod formats;
pub mod histogram;
pub mod length;
pub mod models;
pub mod plan;
pub mod progress;
pub mod prompts;
pub mod rankers;
pub mod records;
pub mod ridge;
pub mod sparse;
pub mod stats;
pub mod steps;
pub mod storage;
pub mod student;
pub mod tie_draw;
pub mod units;

pub use error::{Error, Exit, Result};
