//! `scorer-runner <step> --plan <file | URI | inline JSON>`: the command every MIRA Job runs.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use scorer_runner::plan::{Step, StepResult};
use scorer_runner::steps::{self, Context};
use scorer_runner::units::WorkerConfig;

#[derive(Parser)]
#[command(name = "scorer-runner", version, about = "MIRA data-plane steps")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The stage plan: a local file, an s3:// URI, or inline JSON.
    #[arg(long, global = true, env = "MIRA_PLAN")]
    plan: Option<String>,
    /// Scratch directory for downloads and unfinished outputs.
    #[arg(long, global = true, env = "MIRA_SCRATCH")]
    scratch: Option<PathBuf>,
}

#[derive(Subcommand, Clone)]
enum Command {
    #[command(flatten)]
    Step(Step),
    /// Serve a local model (directory or s3:// prefix) over an OpenAI-compatible API.
    #[cfg(feature = "llm")]
    Serve {
        #[arg(long)]
        model: String,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value_t = 32)]
        max_seqs: usize,
        /// A file holding the key every request must bear (`Authorization: Bearer <key>`), for
        /// example a mounted Secret; required to listen beyond loopback.
        #[arg(long, conflicts_with = "api_key")]
        api_key_file: Option<PathBuf>,
        /// The key itself, from the environment (a Secret's env in a Pod).
        #[arg(long = "api-key-env", env = "MIRA_SERVE_API_KEY", hide_env_values = true, hide = true)]
        api_key: Option<String>,
    },
}

async fn run(command: Command, plan: Option<&str>, scratch: PathBuf) -> scorer_runner::Result<Option<StepResult>> {
    match command {
        Command::Step(step) => {
            let plan = plan.ok_or_else(|| scorer_runner::Error::plan("--plan (or MIRA_PLAN) is required"))?;
            let plan = steps::load_plan(step, plan).await?;
            let ctx = Context::new(plan.storage().clone(), WorkerConfig::from_env(), scratch);
            steps::run(&ctx, &plan).await.map(Some)
        }
        #[cfg(feature = "llm")]
        Command::Serve { model, listen, max_seqs, api_key_file, api_key } => {
            let api_key = match api_key_file {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .map_err(|e| scorer_runner::Error::io(path.display().to_string(), e))?,
                ),
                None => api_key,
            };
            let storage = scorer_runner::storage::Storage::new(Default::default());
            let dir = scorer_runner::models::model_dir(&storage, &scratch, &model).await?;
            scorer_runner::models::serve::serve(&dir, listen, max_seqs, api_key).await?;
            Ok(None)
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: a Pod's log or a redirected file stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let scratch = cli.scratch.unwrap_or_else(|| std::env::temp_dir().join("mira-scratch"));
    match run(cli.command, cli.plan.as_deref(), scratch).await {
        Ok(result) => {
            if let Some(result) = result {
                println!("{}", serde_json::to_string(&result).unwrap_or_default());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            // The last line of a failed Job's log: the operator copies it into the stage condition.
            // Every error with a source already prints it; add the causes below that.
            let mut message = format!("{}: {e}", e.category());
            let mut source = std::error::Error::source(&e).and_then(|s| s.source());
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("error: {message}");
            e.exit().code()
        }
    }
}
