//! Test support for MIRA's crates: a dev-dependency of `scorer-runner` and `mira-operator`,
//! kept out of their production APIs.

pub mod full_disk;
pub mod synth;
