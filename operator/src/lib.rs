//! MIRA's control plane: the API types, the stage engine that plans and tracks each resource's
//! Jobs (a pure function), and its two adapters: a Kubernetes controller and a local runner.

pub mod api;
pub mod describe;
pub mod error;
pub mod inspect;
pub mod kube;
pub mod local;
pub mod logs;
pub mod reconcile;
pub mod report;
pub mod results;

pub use error::{Error, Result};
