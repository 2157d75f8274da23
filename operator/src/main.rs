//! `mira`: the MIRA operator (`mira operator`), the same pipeline on one machine (`mira run`),
//! and the CRDs (`mira crd`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mira_operator::reconcile::Policy;
use mira_operator::{api, kube, local, Error};
use scorer_runner::Exit;

#[derive(Parser)]
#[command(name = "mira", version, about = "MIRA: mid-training data selection on Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD.
    Crd {
        /// Write `<plural>.mira.dev.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Run MIRA resources from manifests on this machine, without a cluster. Resumable: a rerun
    /// continues where the last one stopped.
    Run {
        /// A manifest file, or a directory of `.yaml` files.
        #[arg(short = 'f', long = "filename")]
        manifests: PathBuf,
        /// Where state, plans, logs and scratch space go (default: `.mira/` next to the manifests).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Stage Jobs run at once.
        #[arg(long, default_value_t = 1)]
        parallel: usize,
    },
    /// A resource's chain on the cluster (upstream and downstream): each resource's conditions,
    /// stages with their progress, and what it produced. Also `kubectl mira status` with this
    /// binary installed as `kubectl-mira`.
    Status {
        /// `<kind>/<name>`: `fr/half`, `sourcegroup/corpus`, ...
        target: String,
        /// The namespace (default: the kubeconfig context's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// The logs of the pods of the Job that runs (or ran) one stage of a resource on the
    /// cluster, oldest pod first, as `kubectl logs` reads them. Also `kubectl mira logs`.
    Logs {
        /// `<kind>/<name>`: `fr/half`, `dj/students`, ...
        target: String,
        /// The stage's step: `cluster`, `discover`, `label`, `distill`, `score`, `threshold` or
        /// `select`.
        #[arg(long)]
        stage: String,
        /// The stage's group, for a per-group stage (needed where the step has several).
        #[arg(long)]
        group: Option<String>,
        /// The namespace (default: the kubeconfig context's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Only each pod's last lines.
        #[arg(long)]
        tail: Option<i64>,
    },
    /// Write a FilterRun's report: one self-contained HTML file of what its chain found and
    /// kept (groups, dimensions, agreement and masks, score distributions and cuts, kept tokens
    /// per source), of a cluster's run, or of a local one with `-f`. `mira run` writes it for
    /// each FilterRun that ends Ready.
    Report {
        /// `fr/<name>`.
        target: String,
        /// A local run's manifests, as given to `mira run -f`: report on that run.
        #[arg(short = 'f', long = "filename")]
        manifests: Option<PathBuf>,
        /// The local run's state directory (default: `.mira/` next to the manifests).
        #[arg(long, requires = "manifests")]
        state: Option<PathBuf>,
        /// The namespace on the cluster (default: the kubeconfig context's).
        #[arg(short = 'n', long, conflicts_with = "manifests")]
        namespace: Option<String>,
        /// The HTML file (default: for a local run, its `status.report` next to the selected
        /// records, where `mira run` writes it; for a cluster's, `<name>-report.html` here).
        #[arg(short = 'o', long)]
        out: Option<PathBuf>,
    },
    /// Run the controllers in a cluster.
    Operator {
        /// Address of `/metrics`, `/healthz` and `/readyz`.
        #[arg(long, env = "MIRA_LISTEN", default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// Image of stage Jobs whose resource sets no `spec.job.image`.
        #[arg(long, env = "MIRA_RUNNER_IMAGE")]
        runner_image: Option<String>,
        /// Run without leader election (only ever one replica).
        #[arg(long)]
        no_leader_election: bool,
        /// Namespace of the leader Lease (the operator's own).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// Name of the leader Lease.
        #[arg(long, default_value = "mira-operator")]
        lease_name: String,
        /// This replica's identity in the Lease (its Pod name).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "MIRA_WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// Seconds between reads of running stages' progress into status (workers report every
        /// 10 s); each read is a status write per running resource.
        #[arg(long, env = "MIRA_PROGRESS_REFRESH_SECONDS", default_value_t = 15.0)]
        progress_refresh_seconds: f64,
        /// Images a resource's `spec.job.image` may name (comma-separated; `prefix*` or
        /// `*suffix` patterns); empty allows any. The default runner image is always allowed.
        #[arg(long, env = "MIRA_ALLOWED_IMAGES", value_delimiter = ',')]
        allowed_images: Vec<String>,
        /// ServiceAccounts a resource's `spec.job.serviceAccountName` may name; empty allows any.
        #[arg(long, env = "MIRA_ALLOWED_SERVICE_ACCOUNTS", value_delimiter = ',')]
        allowed_service_accounts: Vec<String>,
        /// Hosts of the model endpoints a resource may send records to (`*.models.svc` style
        /// patterns allowed); empty allows any.
        #[arg(long, env = "MIRA_ALLOWED_ENDPOINT_HOSTS", value_delimiter = ',')]
        allowed_endpoint_hosts: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: a Pod's log or a redirected file stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse().command).await {
        Ok(code) => code,
        Err(e) => {
            // One line a user can act on; the whole structure only when asked for (RUST_LOG=debug).
            eprintln!("error: {}", e.chain());
            if tracing::enabled!(tracing::Level::DEBUG) {
                eprintln!("{e:?}");
            }
            e.exit().code()
        }
    }
}

async fn run(command: Command) -> Result<ExitCode, Error> {
    match command {
        Command::Crd { out_dir: None } => {
            for crd in api::crds() {
                print!("---\n{}", api::crd_yaml(&crd));
            }
        }
        Command::Crd { out_dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).map_err(|e| Error::write(&dir, e))?;
            for crd in api::crds() {
                let path = dir.join(api::crd_file_name(&crd));
                std::fs::write(&path, api::crd_yaml(&crd)).map_err(|e| Error::write(&path, e))?;
            }
        }
        Command::Status { target, namespace } => mira_operator::inspect::status(&target, namespace).await?,
        Command::Logs { target, stage, group, namespace, tail } => {
            mira_operator::logs::logs(&target, &stage, group.as_deref(), namespace, tail).await?
        }
        Command::Report { target, manifests, state, namespace, out } => {
            let path = match manifests {
                Some(manifests) => {
                    let name = mira_operator::inspect::filter_run_name(&target)?;
                    local::report(&manifests, state, &name, out).await?
                }
                None => mira_operator::inspect::report(&target, namespace, out).await?,
            };
            println!("{path}");
        }
        Command::Run { manifests, state, parallel } => {
            let ready = local::run(local::Options { manifests, state, parallel }).await?;
            // Every resource ran as far as it could; one that did not end Ready is a failed run.
            return Ok(if ready { ExitCode::SUCCESS } else { Exit::Failed.code() });
        }
        Command::Operator {
            listen,
            runner_image,
            no_leader_election,
            lease_namespace,
            lease_name,
            identity,
            namespace,
            progress_refresh_seconds,
            allowed_images,
            allowed_service_accounts,
            allowed_endpoint_hosts,
        } => {
            let identity = identity.unwrap_or_else(|| format!("mira-operator-{}", std::process::id()));
            let lease = (!no_leader_election).then_some(kube::LeaseOptions {
                namespace: lease_namespace,
                name: lease_name,
                identity,
            });
            let progress_refresh = std::time::Duration::from_secs_f64(progress_refresh_seconds.max(0.1));
            let nonempty = |list: Vec<String>| list.into_iter().filter(|s| !s.is_empty()).collect();
            let policy = Policy {
                images: nonempty(allowed_images),
                service_accounts: nonempty(allowed_service_accounts),
                endpoint_hosts: nonempty(allowed_endpoint_hosts),
            };
            kube::run(kube::Options { listen, runner_image, lease, namespace, progress_refresh, policy }).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
