//! `scorer-runner <step> --plan <file | URI | inline JSON>`: the command every MIRA Job runs.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use scorer_runner::steps::{self, Context};
use scorer_runner::units::WorkerConfig;

#[derive(Parser)]
#[command(name = "scorer-runner", version, about = "MIRA data-plane steps")]
struct Cli {
    #[command(subcommand)]
    step: Step,
    /// The stage plan: a local file, an s3:// URI, or inline JSON.
    #[arg(long, global = true, env = "MIRA_PLAN")]
    plan: Option<String>,
    /// Scratch directory for downloads and unfinished outputs.
    #[arg(long, global = true, env = "MIRA_SCRATCH")]
    scratch: Option<PathBuf>,
}

#[derive(Subcommand, Clone)]
enum Step {
    /// Group sources into capability groups by content similarity.
    Cluster,
    /// Propose, cluster and anchor rubric dimensions per group with the teacher.
    Discover,
    /// Have the teacher score a sample of records on the anchored dimensions.
    Label,
    /// Train the per-group students from teacher labels; measure agreement; derive the mask.
    Distill,
    /// Score every record with its group's student.
    Score,
    /// Cut the score histograms to the retention target.
    Threshold,
    /// Write the kept records and the manifest.
    Select,
    /// Serve a local model (directory or s3:// prefix) over an OpenAI-compatible API.
    #[cfg(feature = "llm")]
    Serve {
        #[arg(long)]
        model: String,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value_t = 32)]
        max_seqs: usize,
    },
}

async fn run(step: Step, plan: Option<&str>, scratch: PathBuf) -> scorer_runner::Result<serde_json::Value> {
    macro_rules! step {
        ($plan:ident, $module:ident) => {{
            let plan = plan.ok_or_else(|| scorer_runner::Error::plan("--plan (or MIRA_PLAN) is required"))?;
            let plan: scorer_runner::plan::$plan = steps::load_plan(plan).await?;
            let ctx = Context::new(plan.storage.clone(), WorkerConfig::from_env(), scratch);
            serde_json::to_value(steps::$module::run(&ctx, &plan).await?)
        }};
    }
    let value = match step {
        Step::Cluster => step!(ClusterPlan, cluster),
        Step::Discover => step!(DiscoverPlan, discover),
        Step::Label => step!(LabelPlan, label),
        Step::Distill => step!(DistillPlan, distill),
        Step::Score => step!(ScorePlan, score),
        Step::Threshold => step!(ThresholdPlan, threshold),
        Step::Select => step!(SelectPlan, select),
        #[cfg(feature = "llm")]
        Step::Serve { model, listen, max_seqs } => {
            let ctx = Context::new(Default::default(), WorkerConfig::from_env(), scratch);
            let dir = scorer_runner::models::model_dir(&ctx, &model).await?;
            scorer_runner::models::serve::serve(&dir, listen, max_seqs).await?;
            Ok(serde_json::Value::Null)
        }
    };
    value.map_err(|e| scorer_runner::Error::json("result", e))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let scratch = cli.scratch.unwrap_or_else(|| std::env::temp_dir().join("mira-scratch"));
    match run(cli.step, cli.plan.as_deref(), scratch).await {
        Ok(result) => {
            println!("{}", serde_json::to_string(&result).unwrap_or_default());
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
            std::process::ExitCode::FAILURE
        }
    }
}
