//! The operator's one error type: one variant per failing action, with its typed source (kept,
//! and not repeated in the message, so a printed cause chain says each thing once); a short
//! category that becomes condition reasons, Event reasons and the metrics' `error` label; and
//! [`Error::retry`], the one place that decides whether trying again can help.

use std::path::PathBuf;

use scorer_runner::plan::Step;
use scorer_runner::Exit;

#[derive(Debug, thiserror::Error)]
#[cfg_attr(test, derive(strum::EnumCount))]
pub enum Error {
    // ---- the spec and its upstream chain: only a change to them helps ----
    /// The spec cannot be planned (for example it names a group its SourceGroup lacks).
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// An upstream resource is Ready but lacks something this one needs.
    #[error("upstream incomplete: {0}")]
    UpstreamIncomplete(String),

    /// The object does not match its CRD's types (so the watcher skips it until it changes).
    #[error("malformed object")]
    InvalidObject(#[source] Box<kube::core::error_boundary::InvalidObject>),

    /// A stage's plan could not be written as JSON.
    #[error("writing the {} plan", step.as_str())]
    WritePlan {
        step: Step,
        #[source]
        source: serde_json::Error,
    },

    // ---- step results ----
    /// A step wrote a result this operator cannot read.
    #[error("step result {uri} is not valid")]
    InvalidResult {
        uri: String,
        #[source]
        source: serde_json::Error,
    },

    /// A stage's output holds the result of another step (its output root was written by hand,
    /// or by a runner of another version).
    #[error("step result {uri} was written by step {}", found.as_str())]
    UnexpectedResult { uri: String, found: Step },

    /// Reading a step result from storage failed (not: the result is absent).
    #[error("reading step results")]
    ReadResult(#[source] scorer_runner::Error),

    /// Writing a stage's plan to storage, where its Job reads it, failed.
    #[error("writing the plan {uri}")]
    StorePlan {
        uri: String,
        #[source]
        source: scorer_runner::Error,
    },

    /// Writing a FilterRun's run report failed.
    #[error("writing the run report {uri}")]
    WriteReport {
        uri: String,
        #[source]
        source: scorer_runner::Error,
    },

    // ---- Kubernetes API calls ----
    #[error("connecting to the API server")]
    Connect(#[source] kube::Error),

    /// Reading an upstream object (`<Kind> <namespace>/<name>`).
    #[error("reading {object}")]
    GetObject {
        object: String,
        #[source]
        source: kube::Error,
    },

    #[error("listing Jobs")]
    ListJobs(#[source] kube::Error),

    #[error("listing the Pods of Job {job}")]
    ListPods {
        job: String,
        #[source]
        source: kube::Error,
    },

    /// Reading a credentials Secret (`<namespace>/<name>`): the operator reads a resource's
    /// results with the keys the resource names, never its own instead.
    #[error("reading Secret {secret} (the operator reads this resource's results with its keys; let it get Secrets: rbac.readSecrets)")]
    ReadSecret {
        secret: String,
        #[source]
        source: kube::Error,
    },

    #[error("creating ConfigMap {name}")]
    CreateConfigMap {
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("creating Job {name}")]
    CreateJob {
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("deleting Job {name}")]
    DeleteJob {
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("applying status")]
    ApplyStatus(#[source] kube::Error),

    /// Taking, renewing or releasing the leader Lease failed.
    #[error("leader Lease {name}")]
    Lease {
        name: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },

    /// This replica lost the leader Lease; it stops so that only one replica reconciles.
    #[error("lost leadership: Lease {0} was taken over")]
    LeadershipLost(String),

    /// The metrics and health server could not start.
    #[error("serving on {addr}")]
    Serve {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },

    // ---- `mira run` on one machine ----
    /// A manifest given to `mira run` is not a MIRA resource.
    #[error("manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },

    /// A file `mira` was asked to write (a CRD) could not be written.
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Local state could not be read or written.
    #[error("local state {path}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Another `mira run` holds the state directory.
    #[error(
        "state directory {} is in use by another `mira run`; wait for it to end, or give this run its own --state",
        dir.display()
    )]
    StateInUse { dir: PathBuf },

    /// `mira run` was stopped by a signal; its stage processes were stopped with it.
    #[error(
        "stopped by {0}; the running stages' processes were stopped too, and a rerun continues where this run stopped"
    )]
    Interrupted(&'static str),

    /// A local state file is not what `mira run` wrote.
    #[error("local state {path} is not valid")]
    StateFormat {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// `scorer-runner` is neither next to `mira` nor on PATH.
    #[error("scorer-runner is neither next to this binary nor on PATH; set MIRA_SCORER_RUNNER to its path")]
    RunnerMissing,

    /// `scorer-runner` could not be started.
    #[error("starting {program}")]
    RunnerStart {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A task that waited on a local worker panicked or was cancelled.
    #[error("a worker task failed")]
    WorkerTask(#[source] tokio::task::JoinError),

    /// The local run went round without any stage moving.
    #[error("no progress after {0} passes")]
    NoProgress(usize),

    /// A FilterRun would keep some sources' records at random (every dimension masked).
    #[error("{0}")]
    NoReliableDimension(String),

    /// Some sources of a FilterRun gave no usable record, or skipped most of theirs.
    #[error("{0}")]
    NoUsableRecords(String),

    // ---- the command line ----
    /// An argument names nothing that exists, or is not of the expected form.
    #[error("{0}")]
    InvalidArgument(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to do after a failed reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Transient (a call that may go through later): try again after a growing delay.
    Backoff,
    /// Permanent until the object, its upstream or the cluster's configuration changes: say so in
    /// a condition and an Event, and wait for a change.
    AwaitChange,
}

impl Error {
    pub fn state(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::State { path: path.into(), source }
    }

    pub fn write(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Write { path: path.into(), source }
    }

    pub fn state_format(path: impl Into<PathBuf>, source: serde_json::Error) -> Self {
        Error::StateFormat { path: path.into(), source }
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

    /// The API server's answer, for errors of API calls.
    fn kube(&self) -> Option<&kube::Error> {
        match self {
            Error::Connect(source)
            | Error::ListJobs(source)
            | Error::ApplyStatus(source)
            | Error::GetObject { source, .. }
            | Error::ListPods { source, .. }
            | Error::ReadSecret { source, .. }
            | Error::CreateConfigMap { source, .. }
            | Error::CreateJob { source, .. }
            | Error::DeleteJob { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Whether trying again can help. API calls are transient (a restarting API server, a
    /// conflict, a webhook timing out, RBAC being fixed), except those the server refused as
    /// invalid (400, 422), which only a change of the object can mend; storage is transient;
    /// everything about the spec, its upstream and the results it points to is permanent.
    pub fn retry(&self) -> Retry {
        if let Some(e) = self.kube() {
            return match e {
                kube::Error::Api(status) if matches!(status.code, 400 | 422) => Retry::AwaitChange,
                _ => Retry::Backoff,
            };
        }
        match self {
            Error::ReadResult(_)
            | Error::WriteReport { .. }
            | Error::StorePlan { .. }
            | Error::State { .. }
            | Error::StateInUse { .. }
            | Error::Write { .. }
            | Error::Lease { .. } => Retry::Backoff,
            _ => Retry::AwaitChange,
        }
    }

    /// The kind of cause, as `mira`'s exit code: what the operator would retry is an outage;
    /// everything else but a failed action or a bug is input to fix (the spec, the manifests,
    /// the local state's format, an API call the server refused as invalid).
    pub fn exit(&self) -> Exit {
        if self.retry() == Retry::Backoff {
            return Exit::Unreachable;
        }
        match self {
            Error::WritePlan { .. } | Error::WorkerTask(_) | Error::NoProgress(_) => Exit::Internal,
            Error::InvalidResult { .. }
            | Error::UnexpectedResult { .. }
            | Error::LeadershipLost(_)
            | Error::Serve { .. }
            | Error::RunnerStart { .. }
            | Error::Interrupted(_) => Exit::Failed,
            _ => Exit::BadInput,
        }
    }

    /// Short CamelCase category: the reason of conditions and Events, and a metrics label. Every
    /// one is in the README's Troubleshooting table.
    pub fn category(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::UpstreamIncomplete(_) => "UpstreamIncomplete",
            Error::InvalidObject(_) => "InvalidObject",
            Error::WritePlan { .. } => "InternalError",
            Error::InvalidResult { .. } | Error::UnexpectedResult { .. } => "InvalidResult",
            Error::ReadResult(_) | Error::WriteReport { .. } | Error::StorePlan { .. } => "StorageError",
            Error::Connect(_)
            | Error::GetObject { .. }
            | Error::ListJobs(_)
            | Error::ListPods { .. }
            | Error::ReadSecret { .. }
            | Error::CreateConfigMap { .. }
            | Error::CreateJob { .. }
            | Error::DeleteJob { .. }
            | Error::ApplyStatus(_)
            | Error::Lease { .. } => "KubeError",
            Error::LeadershipLost(_) => "LeadershipLost",
            Error::Serve { .. } => "ServeError",
            Error::Manifest { .. } => "ManifestError",
            Error::InvalidArgument(_) => "InvalidArgument",
            Error::NoReliableDimension(_) => "NoReliableDimension",
            Error::NoUsableRecords(_) => "NoUsableRecords",
            Error::State { .. } | Error::StateFormat { .. } | Error::StateInUse { .. } | Error::Write { .. } => {
                "StateError"
            }
            Error::Interrupted(_) => "Interrupted",
            Error::RunnerMissing | Error::RunnerStart { .. } | Error::WorkerTask(_) | Error::NoProgress(_) => {
                "RunnerError"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One error of every variant but `WorkerTask` (a JoinError cannot be made outside tokio's
    /// own tests). A test counts the variants, so a new one fails it until it is added here, and
    /// so to the README's table.
    fn every_error() -> Vec<Error> {
        let kube = || kube::Error::LinesCodecMaxLineLengthExceeded;
        let io = || std::io::Error::other("disk full");
        let json = || serde_json::from_str::<u8>("x").unwrap_err();
        let errors = vec![
            Error::InvalidSpec("x".into()),
            Error::UpstreamIncomplete("x".into()),
            Error::InvalidObject(Box::new(kube::core::error_boundary::InvalidObject {
                error: "x".into(),
                metadata: Default::default(),
            })),
            Error::WritePlan { step: Step::Score, source: json() },
            Error::InvalidResult { uri: "u".into(), source: json() },
            Error::UnexpectedResult { uri: "u".into(), found: Step::Score },
            Error::ReadResult(scorer_runner::Error::NotFound("u".into())),
            Error::WriteReport { uri: "u".into(), source: scorer_runner::Error::NotFound("u".into()) },
            Error::StorePlan { uri: "u".into(), source: scorer_runner::Error::NotFound("u".into()) },
            Error::Connect(kube()),
            Error::GetObject { object: "RubricSet n/r".into(), source: kube() },
            Error::ListJobs(kube()),
            Error::ListPods { job: "j".into(), source: kube() },
            Error::ReadSecret { secret: "n/s".into(), source: kube() },
            Error::CreateConfigMap { name: "c".into(), source: kube() },
            Error::CreateJob { name: "j".into(), source: kube() },
            Error::DeleteJob { name: "j".into(), source: kube() },
            Error::ApplyStatus(kube()),
            Error::Lease {
                name: "l".into(),
                source: kube_lease_manager::LeaseManagerError::NonexistentLease("l".into()),
            },
            Error::LeadershipLost("l".into()),
            Error::Serve { addr: "127.0.0.1:1".parse().unwrap(), source: io() },
            Error::Manifest { path: "m".into(), message: "x".into() },
            Error::State { path: "s".into(), source: io() },
            Error::Write { path: "w".into(), source: io() },
            Error::StateFormat { path: "s".into(), source: json() },
            Error::RunnerMissing,
            Error::RunnerStart { program: "p".into(), source: io() },
            Error::NoProgress(3),
            Error::StateInUse { dir: "/tmp/.mira".into() },
            Error::Interrupted("SIGTERM"),
            Error::InvalidArgument("deploy/x: expected <kind>/<name>".into()),
            Error::NoReliableDimension("every dimension of prose/web is masked".into()),
            Error::NoUsableRecords("prose/web: scored 0 records".into()),
        ];
        errors
    }

    /// The reasons listed in the README's Troubleshooting table.
    fn documented() -> Vec<String> {
        let readme = include_str!("../../README.md");
        let table = readme
            .split("## Troubleshooting")
            .nth(1)
            .expect("a Troubleshooting section")
            .split("\n## ")
            .next()
            .unwrap();
        table
            .lines()
            .filter(|l| l.starts_with("| `"))
            .flat_map(|l| {
                l.split('|')
                    .nth(1)
                    .unwrap()
                    .split(", ")
                    .map(|r| r.trim().trim_matches('`').to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn every_reason_the_operator_and_the_runner_give_is_in_the_troubleshooting_table() {
        let documented = documented();
        let runner = [
            scorer_runner::Error::InvalidUri { uri: "u".into(), reason: "x".into() },
            scorer_runner::Error::Storage { op: "get", uri: "u".into(), message: "x".into() },
            scorer_runner::Error::Shard { uri: "u".into(), message: "x".into() },
            scorer_runner::Error::Plan("x".into()),
            scorer_runner::Error::Student { uri: "u".into(), message: "x".into() },
            scorer_runner::Error::Tokenizer { uri: "u".into(), message: "x".into() },
            scorer_runner::Error::Model("x".into()),
            scorer_runner::Error::Endpoint { url: "u".into(), message: "x".into() },
            scorer_runner::Error::UnitsFailed { failed: 1, total: 2, first: "x".into() },
        ];
        let errors = every_error();
        let variants: std::collections::HashSet<_> = errors.iter().map(std::mem::discriminant).collect();
        assert_eq!(variants.len() + 1, <Error as strum::EnumCount>::COUNT, "every_error() lacks a variant");
        let categories = errors
            .iter()
            .map(Error::category)
            .chain(runner.iter().map(scorer_runner::Error::category))
            .chain(["RunnerError", "InternalError"]);
        for category in categories {
            assert!(
                documented.iter().any(|d| d == category),
                "{category} is not in the README's Troubleshooting table"
            );
        }
        // The engine's own reasons, and the adapters' for a Job that died without an error line.
        for reason in
            ["Waiting", "Running", "Succeeded", "Skipped", "ResultMissing", "BackoffLimitExceeded", "JobFailed"]
        {
            assert!(documented.iter().any(|d| d == reason), "{reason} is not in the README's Troubleshooting table");
        }
    }

    #[test]
    fn api_calls_and_storage_are_retried_and_the_rest_waits_for_a_change() {
        let invalid = kube::Error::Api(Box::new(kube::core::Status { code: 422, ..Default::default() }));
        let conflict = kube::Error::Api(Box::new(kube::core::Status { code: 409, ..Default::default() }));
        let refused = Error::CreateJob { name: "j".into(), source: invalid };
        assert_eq!((refused.retry(), refused.exit()), (Retry::AwaitChange, Exit::BadInput));
        let conflict = Error::ApplyStatus(conflict);
        assert_eq!((conflict.retry(), conflict.exit()), (Retry::Backoff, Exit::Unreachable));
        for e in every_error() {
            let expected = match e.category() {
                "KubeError" | "StorageError" | "StateError" if !matches!(e, Error::StateFormat { .. }) => {
                    Retry::Backoff
                }
                _ => Retry::AwaitChange,
            };
            assert_eq!(e.retry(), expected, "{}", e.chain());
        }
    }
}
