//! The operator's one error type: one variant per failing step, sources kept (and not repeated
//! in the messages, so a printed cause chain says each thing once), and a short category that
//! becomes condition reasons, Event reasons and the metrics' `error` label.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot be planned (for example it names a group its SourceGroup lacks).
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// An upstream resource is Ready but lacks something this one needs.
    #[error("upstream incomplete: {0}")]
    UpstreamIncomplete(String),

    /// A step wrote a result this operator cannot read.
    #[error("step result {uri} is not valid")]
    InvalidResult {
        uri: String,
        #[source]
        source: serde_json::Error,
    },

    /// Reading a step result from storage failed (not: the result is absent).
    #[error("reading step results")]
    Storage(#[source] scorer_runner::Error),

    /// A Kubernetes API call failed.
    #[error("{action}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },

    /// The object does not match its CRD's types (so the watcher skips it until it changes).
    #[error("malformed object")]
    InvalidObject(#[source] Box<kube::core::error_boundary::InvalidObject>),

    /// A manifest given to `mira run` is not a MIRA resource.
    #[error("manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },

    /// Local state (`mira run`) could not be read or written.
    #[error("local state {path}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// `scorer-runner` could not be found or started.
    #[error("starting scorer-runner: {0}")]
    Runner(String),

    /// This replica lost the leader Lease; it stops so that only one replica reconciles.
    #[error("lost leadership: {0}")]
    LeadershipLost(String),

    /// The metrics and health server could not start.
    #[error("serving on {addr}")]
    Serve {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube { action: action.into(), source }
    }

    pub fn state(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::State { path: path.into(), source }
    }

    /// The message and every source's, each once: for conditions and Event notes, which have
    /// no room for a cause chain of their own.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            let part = s.to_string();
            if !text.contains(&part) {
                text.push_str(": ");
                text.push_str(&part);
            }
            source = s.source();
        }
        text
    }

    /// Short CamelCase category: the reason of conditions and Events, and a metrics label.
    pub fn category(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::UpstreamIncomplete(_) => "UpstreamIncomplete",
            Error::InvalidResult { .. } => "InvalidResult",
            Error::Storage(_) => "StorageError",
            Error::Kube { .. } => "KubeError",
            Error::InvalidObject(_) => "InvalidObject",
            Error::Manifest { .. } => "ManifestError",
            Error::State { .. } => "StateError",
            Error::Runner(_) => "RunnerError",
            Error::LeadershipLost(_) => "LeadershipLost",
            Error::Serve { .. } => "ServeError",
        }
    }
}
