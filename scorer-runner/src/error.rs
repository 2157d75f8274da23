//! One error type for the data plane, one variant per failing step, sources kept, so that a Job's
//! last log line (which the operator copies into a condition) says exactly what failed and where.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid object URI {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },

    #[error("storage: {op} {uri}: {message}")]
    Storage { op: &'static str, uri: String, message: String },

    #[error("object not found: {0}")]
    NotFound(String),

    #[error("local I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("reading shard {uri}: {message}")]
    Shard { uri: String, message: String },

    #[error("invalid plan: {0}")]
    Plan(String),

    #[error("JSON in {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("parquet in {uri}: {source}")]
    Parquet {
        uri: String,
        #[source]
        source: parquet::errors::ParquetError,
    },

    #[error("arrow in {uri}: {source}")]
    Arrow {
        uri: String,
        #[source]
        source: arrow::error::ArrowError,
    },

    #[error("student artefact {uri}: {message}")]
    Student { uri: String, message: String },

    #[error("tokenizer {uri}: {message}")]
    Tokenizer { uri: String, message: String },

    #[error("model: {0}")]
    Model(String),

    /// An in-process model's engine stopped answering (its thread died, its channel closed, an
    /// internal error): every later request would fail alike, so the unit fails rather than
    /// skipping each record (a `Model` error is one record's).
    #[error("model engine: {0}")]
    ModelEngine(String),

    /// A model endpoint refused the request (its HTTP status) or could not be reached, after
    /// the retries a busy server gets: no reply at all, which fails the unit (a reply that does
    /// not fit the schema is a `Model` error, counted per record).
    #[error("endpoint {url}: {message}")]
    Endpoint { url: String, message: String },

    #[error("{failed} of {total} units failed; first: {first}")]
    UnitsFailed { failed: usize, total: usize, first: String },

    #[error("background task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How `mira` and `scorer-runner` exit on an error: one code per kind of cause, the same in
/// both, so that a script or a Job's `podFailurePolicy` can tell input to fix from an outage to
/// wait out, without reading the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The work itself failed (a stage, a model, too many units); the message says which.
    Failed = 1,
    /// The input must change: flags, manifests, a plan, a URI, data that cannot be read as its
    /// format, an object that does not exist. Also what clap exits with on a bad command line.
    BadInput = 2,
    /// Storage or the API server could not be reached or refused the call: trying again later
    /// may go through.
    Unreachable = 3,
    /// A bug: a task panicked or the engine did not converge.
    Internal = 4,
}

impl Exit {
    pub fn code(self) -> std::process::ExitCode {
        std::process::ExitCode::from(self as u8)
    }
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub fn json(what: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Json { what: what.into(), source }
    }

    pub fn plan(message: impl Into<String>) -> Self {
        Error::Plan(message.into())
    }

    /// The kind of cause, as an exit code.
    pub fn exit(&self) -> Exit {
        match self {
            Error::InvalidUri { .. }
            | Error::NotFound(_)
            | Error::Shard { .. }
            | Error::Parquet { .. }
            | Error::Arrow { .. }
            | Error::Plan(_)
            | Error::Json { .. } => Exit::BadInput,
            Error::Storage { .. } | Error::Io { .. } | Error::Endpoint { .. } => Exit::Unreachable,
            Error::Student { .. }
            | Error::Tokenizer { .. }
            | Error::Model(_)
            | Error::ModelEngine(_)
            | Error::UnitsFailed { .. } => Exit::Failed,
            Error::Join(_) => Exit::Internal,
        }
    }

    /// Short machine-readable category, used as the reason of conditions and Events.
    pub fn category(&self) -> &'static str {
        match self {
            Error::InvalidUri { .. } => "InvalidUri",
            Error::Storage { .. } | Error::NotFound(_) | Error::Io { .. } => "StorageError",
            Error::Shard { .. } | Error::Parquet { .. } | Error::Arrow { .. } => "ShardError",
            Error::Plan(_) | Error::Json { .. } => "InvalidPlan",
            Error::Student { .. } => "StudentError",
            Error::Tokenizer { .. } => "TokenizerError",
            Error::Model(_) | Error::ModelEngine(_) => "ModelError",
            Error::Endpoint { .. } => "EndpointError",
            Error::UnitsFailed { .. } => "UnitsFailed",
            Error::Join(_) => "InternalError",
        }
    }
}
