//! Shared helpers for the data-plane integration tests: a real S3 server (started by
//! `hack/s3-server.sh`, reached through `MIRA_S3_ENDPOINT`) and local disk, behind one API; and
//! the tiny generated models.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use scorer_runner::plan::StorageConfig;
use scorer_runner::steps::Context;
use scorer_runner::storage::Storage;
use scorer_runner::units::WorkerConfig;

/// Where a test keeps its data.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Local,
    S3,
}

pub fn s3_config() -> StorageConfig {
    let endpoint = std::env::var("MIRA_S3_ENDPOINT").expect(
        "MIRA_S3_ENDPOINT is not set: start the test S3 server with `hack/s3-server.sh start` (the README's test command does)",
    );
    StorageConfig { endpoint: Some(endpoint), path_style: Some(true), ..Default::default() }
}

/// A fresh root URI for a test: a temporary directory, or a new bucket on the test S3 server.
pub async fn root(backend: Backend, name: &str, tmp: &Path) -> (StorageConfig, String) {
    match backend {
        Backend::Local => (StorageConfig::default(), tmp.join(name).to_string_lossy().into_owned()),
        Backend::S3 => {
            let config = s3_config();
            let bucket = format!("{}-{}", name.replace('_', "-"), &uuid::Uuid::new_v4().simple().to_string()[..8]);
            create_bucket(&config, &bucket).await;
            (config, format!("s3://{bucket}"))
        }
    }
}

async fn create_bucket(config: &StorageConfig, bucket: &str) {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await;
    let s3 = aws_sdk_s3::config::Builder::from(&shared)
        .endpoint_url(config.endpoint.clone().unwrap())
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(s3).create_bucket().bucket(bucket).send().await.expect("create test bucket");
}

pub fn worker(id: &str) -> WorkerConfig {
    WorkerConfig { id: id.into(), lease: Duration::from_secs(5), parallelism: 2 }
}

pub fn context(config: &StorageConfig, worker_id: &str, scratch: &Path) -> Context {
    Context::new(config.clone(), worker(worker_id), scratch.join(worker_id))
}

/// Copies every file under a local directory to `root` (same relative paths).
pub async fn upload_dir(storage: &Storage, dir: &Path, root: &str) {
    for object in storage.list(&dir.to_string_lossy()).await.unwrap() {
        let relative = object.uri.strip_prefix(&*dir.to_string_lossy()).unwrap().trim_start_matches('/');
        storage.put_file(&scorer_runner::storage::join(root, relative), Path::new(&object.uri)).await.unwrap();
    }
}

/// Decompressed lines of a JSONL shard (any compression), as stored.
pub fn shard_lines(path: &Path) -> Vec<Vec<u8>> {
    use std::io::{BufRead, Read};
    let format = scorer_runner::plan::Format::from_uri(&path.to_string_lossy()).unwrap();
    let file: Box<dyn Read + Send> = Box::new(std::fs::File::open(path).unwrap());
    let reader = scorer_runner::formats::decoder("test", format, file).unwrap();
    std::io::BufReader::new(reader).split(b'\n').map(|l| l.unwrap()).filter(|l| !l.is_empty()).collect()
}

/// Downloads an object to a local file (for inspecting outputs on S3).
pub async fn fetch(storage: &Storage, uri: &str, dir: &Path) -> std::path::PathBuf {
    let path = dir.join(scorer_runner::storage::file_name(uri));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&path, storage.get(uri).await.unwrap()).unwrap();
    path
}

/// The path of a tiny model that `hack/tiny-models.sh` wrote under `$MIRA_TINY_MODELS`.
pub fn tiny_model(name: &str) -> String {
    let dir = std::path::PathBuf::from(std::env::var("MIRA_TINY_MODELS").expect(
        "MIRA_TINY_MODELS is not set: run `hack/tiny-models.sh <dir>` and point it there (the README's test command does)",
    ));
    dir.join(name).to_string_lossy().into_owned()
}

/// The committed units under a step's output root (each `commit.json`'s URI).
pub async fn commits(storage: &Storage, output: &str) -> Vec<String> {
    let objects = storage.list(&scorer_runner::storage::join(output, "_units/")).await.unwrap();
    objects.into_iter().map(|o| o.uri).filter(|u| u.ends_with("/commit.json")).collect()
}

/// The runner binary running `step` on a plan file, as worker `worker`, one unit at a time, with
/// a 1-second lease (so that a killed worker's units are free again at once).
pub fn runner(step: &str, plan: &Path, worker: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_scorer-runner"));
    cmd.args([step, "--plan"])
        .arg(plan)
        .env("MIRA_WORKER_ID", worker)
        .env("MIRA_LEASE_SECONDS", "1")
        .env("MIRA_PARALLELISM", "1");
    cmd
}

/// Runs `child` until `storage` holds at least `at_least` commits under `output`, then kills it
/// (SIGKILL) and returns how many were committed; fails if it finished or never got that far.
pub async fn kill_after_commits(
    mut child: std::process::Child,
    storage: &Storage,
    output: &str,
    at_least: usize,
    total: usize,
) -> usize {
    let started = std::time::Instant::now();
    loop {
        let n = commits(storage, output).await.len();
        assert!(n < total, "the worker finished before it could be killed; make units slower");
        if n >= at_least {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the worker exited before {at_least} commits");
        assert!(started.elapsed() < Duration::from_secs(300), "no unit committed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    commits(storage, output).await.len()
}
