//! The fixture of the end-to-end tests: the real API server and S3 server named by the
//! environment (`hack/test.sh` starts both; so do `hack/kube-up.sh` and `hack/s3-server.sh`), the
//! CRDs applied once per test binary, and per test a namespace, a bucket, `mira operator` watching
//! that namespace and `hack/process-kubelet.py` running its Pods as local processes. Processes
//! stop, and the namespace is deleted, when the fixture drops.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams};
use mira_operator::reconcile::{KindStatus, Pipeline};
use mira_testkit::synth::{self, Generated, Kind, SynthSource};
use scorer_runner::plan::Format;
use scorer_runner::plan::StorageConfig;
use scorer_runner::storage::{join, Storage};

/// The kubectl the test infrastructure uses.
pub const KUBECTL: &str = "/usr/bin/kubectl";
/// The image of the stage Jobs; the process kubelet runs its last path segment from `bin_dir()`.
pub const RUNNER_IMAGE: &str = "registry.invalid/mira/scorer-runner:test";
/// The S3 settings workers take from the kubelet's environment.
const S3_ENV: [&str; 4] = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "MIRA_S3_ENDPOINT"];

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the operator crate is in the workspace").to_path_buf()
}

/// Where cargo put `mira`, and `scorer-runner` next to it.
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_mira")).parent().expect("mira is in a directory").to_path_buf()
}

/// The cluster's kubeconfig; fails the test with what to run when there is none.
pub fn kubeconfig() -> PathBuf {
    match std::env::var_os("KUBECONFIG") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => panic!(
            "KUBECONFIG is not set: these tests need a real API server. Run them through `hack/test.sh`, or start \
             one with `hack/kube-up.sh start <dir>` and `set -a; . <dir>/kube.env; set +a`"
        ),
    }
}

/// The test S3 server's settings; fails the test with what to run when there is none.
pub fn s3_config() -> StorageConfig {
    let endpoint = std::env::var("MIRA_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "MIRA_S3_ENDPOINT is not set: these tests need the test S3 server. Run them through `hack/test.sh`, or \
             start it with `hack/s3-server.sh start <dir>` and `set -a; . <dir>/s3.env; set +a`"
        )
    });
    StorageConfig { endpoint: Some(endpoint), path_style: Some(true), ..Default::default() }
}

/// An S3 server of one test's own (hack/s3-server.sh, the shared server's keys on another port),
/// which the test may stop and start again with its data kept; stopped when dropped.
pub struct OwnS3 {
    dir: tempfile::TempDir,
    port: u16,
}

impl OwnS3 {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("mira-e2e-s3-").tempdir().expect("a temporary directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let own = OwnS3 { dir, port };
        own.script("start");
        own
    }

    pub fn stop(&self) {
        self.script("stop");
    }

    pub fn restart(&self) {
        self.script("start");
    }

    pub fn config(&self) -> StorageConfig {
        StorageConfig {
            endpoint: Some(format!("http://127.0.0.1:{}", self.port)),
            path_style: Some(true),
            ..Default::default()
        }
    }

    fn script(&self, command: &str) {
        let out = self.run(command).expect("running hack/s3-server.sh");
        assert!(out.status.success(), "hack/s3-server.sh {command}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn run(&self, command: &str) -> std::io::Result<std::process::Output> {
        Command::new("bash")
            .arg(repo().join("hack/s3-server.sh"))
            .args([command, &self.dir.path().to_string_lossy()])
            .env("MIRA_S3_PORT", self.port.to_string())
            .output()
    }
}

impl Drop for OwnS3 {
    fn drop(&mut self) {
        let _ = self.run("stop");
    }
}

/// A short suffix that differs between runs and tests, for namespaces and buckets.
pub fn unique() -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:x}{n}", (nanos as u64 ^ u64::from(std::process::id())) & 0xff_ffff)
}

/// Runs kubectl with the test kubeconfig; `stdin` is piped in when given.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut command = Command::new(KUBECTL);
    command.arg(format!("--kubeconfig={}", kubeconfig().display())).args(args);
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("running {KUBECTL}: {e}"));
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().expect("piped stdin").write_all(input.as_bytes()).expect("writing to kubectl");
    }
    child.wait_with_output().expect("kubectl runs")
}

/// kubectl's stdout; fails the test with its stderr when it fails.
pub fn kubectl_ok(args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(args, stdin);
    assert!(out.status.success(), "kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Applies `crds/` once per test binary and waits until the server serves them.
pub fn install_crds() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let crds = repo().join("crds");
        let crds = crds.to_string_lossy();
        // A 1.20 server's OpenAPI lacks `x-kubernetes-validations` (1.23), so kubectl's client-side
        // check would refuse the CRDs; the server itself accepts them and ignores the CEL rules.
        kubectl_ok(&["apply", "--validate=false", "-f", &crds], None);
        kubectl_ok(&["wait", "--for=condition=Established", "--timeout=60s", "-f", &crds], None);
    });
}

/// Creates a bucket on the test S3 server.
pub async fn create_bucket(config: &StorageConfig, bucket: &str) {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await;
    let s3 = aws_sdk_s3::config::Builder::from(&shared)
        .endpoint_url(config.endpoint.clone().expect("an S3 endpoint"))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(s3)
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating bucket {bucket}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
}

/// A child process, stopped (TERM, then KILL) when dropped. Its output goes to `log`.
pub struct Process {
    name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, command: &mut Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("a log file handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Process { name: name.into(), child: Some(child), log }
    }

    /// Stops the process as a crash would: SIGKILL, no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process politely: SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if matches!(child.try_wait(), Ok(None)) {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last lines of its output.
    pub fn tail(&self, lines: usize) -> String {
        format!("--- {} ({}) ---\n{}", self.name, self.log.display(), tail(&self.log, lines))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How `mira operator` runs.
#[derive(Clone, Debug, Default)]
pub struct OperatorOptions {
    /// Hold a Lease with this identity instead of running without leader election.
    pub lease_identity: Option<String>,
    /// `/metrics` here (default: a port the kernel picks).
    pub listen: Option<String>,
    /// Run as cluster admin instead of as a ServiceAccount with the Helm chart's RBAC.
    pub admin: bool,
    /// `--progress-refresh-seconds` (default: the operator's).
    pub progress_refresh: Option<f64>,
    /// More arguments of `mira operator` (its allowlists, say).
    pub args: Vec<String>,
    /// `--set` values of the Helm chart whose RBAC the operator runs with (the first operator
    /// of a fixture renders it).
    pub chart_values: Vec<String>,
    /// Start it without this environment's S3 keys.
    pub without_s3_keys: bool,
}

/// The Helm binary: `MIRA_HELM` (hack/install-tools.sh env), else `helm` on PATH.
fn helm() -> String {
    std::env::var("MIRA_HELM").unwrap_or_else(|_| "helm".into())
}

/// One test's world: a namespace, a bucket, and (once started) an operator and a kubelet.
pub struct Fixture {
    pub namespace: String,
    pub bucket: String,
    pub s3: StorageConfig,
    pub storage: Storage,
    pub client: kube::Client,
    /// Logs, Pod work directories and the generated corpus; kept when `MIRA_E2E_KEEP` is set.
    pub dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    /// The operators started, in order (several when a test runs replicas).
    pub operators: Vec<Process>,
    pub kubelet: Option<Process>,
    /// A kubeconfig of the chart's ServiceAccount, once made.
    operator_kubeconfig: Option<PathBuf>,
    /// The variables of this environment the kubelet passes to every Pod (default: the S3
    /// endpoint, region and keys).
    pub worker_env: Vec<&'static str>,
}

impl Fixture {
    /// A namespace and a bucket named after the test, with the CRDs installed.
    pub async fn new(name: &str) -> Self {
        Self::on(name, s3_config()).await
    }

    /// The same on another S3 server (with the shared server's keys).
    pub async fn on(name: &str, s3: StorageConfig) -> Self {
        kubeconfig();
        install_crds();
        let suffix = unique();
        let namespace = format!("e2e-{name}-{suffix}");
        let bucket = format!("mira-e2e-{name}-{suffix}");
        create_bucket(&s3, &bucket).await;
        kubectl_ok(&["create", "namespace", &namespace], None);
        let client = kube::Client::try_default().await.expect("a client for KUBECONFIG");
        let temp =
            tempfile::Builder::new().prefix(&format!("mira-{namespace}-")).tempdir().expect("a temporary directory");
        Fixture {
            namespace,
            bucket,
            storage: Storage::new(s3.clone()),
            s3,
            client,
            dir: temp.path().to_path_buf(),
            temp: Some(temp),
            operators: Vec::new(),
            kubelet: None,
            operator_kubeconfig: None,
            worker_env: S3_ENV.to_vec(),
        }
    }

    /// A new fixture with the kubelet and an operator running.
    pub async fn started(name: &str) -> Self {
        let mut fixture = Fixture::new(name).await;
        fixture.start_kubelet(&[]);
        fixture.start_operator(OperatorOptions::default());
        fixture
    }

    /// `s3://<bucket>/<path>`.
    pub fn uri(&self, path: &str) -> String {
        format!("s3://{}/{}", self.bucket, path.trim_start_matches('/'))
    }

    /// Starts `hack/process-kubelet.py` for this namespace: stage Pods run `scorer-runner` from
    /// the build, with the S3 settings of this environment. `extra` adds kubelet arguments.
    pub fn start_kubelet(&mut self, extra: &[&str]) {
        let runner = bin_dir().join("scorer-runner");
        assert!(
            runner.is_file(),
            "{} is missing: build the workspace first (`cargo build --workspace --all-targets`)",
            runner.display()
        );
        self.start_kubelet_with(&bin_dir(), extra);
    }

    /// Starts the kubelet with executables looked up in `bin` (a stand-in `scorer-runner`).
    pub fn start_kubelet_with(&mut self, bin: &Path, extra: &[&str]) {
        let mut command = Command::new("python3");
        command
            .arg(repo().join("hack/process-kubelet.py"))
            .arg("--log-dir")
            .arg(self.dir.join("pods"))
            .arg("--work-dir")
            .arg(self.dir.join("work"))
            .arg("--bin-dir")
            .arg(bin)
            .args(["--namespace", &self.namespace, "--max-running", "2", "--poll", "0.2"])
            .args(["--kubeconfig", &kubeconfig().to_string_lossy(), "--kubectl", KUBECTL])
            // Short unit leases: a killed worker's units are taken over quickly.
            .args(["--env", "MIRA_LEASE_SECONDS=5", "--env", "MIRA_PARALLELISM=2", "--env", "RUST_LOG=info"])
            .args(extra);
        for name in &self.worker_env {
            command.args(["--pass-env", name]);
        }
        self.kubelet = Some(Process::spawn("process-kubelet", &mut command, self.dir.join("kubelet.log")));
    }

    /// The release name of the chart's RBAC in this namespace (its ClusterRole is cluster-wide).
    fn release(&self) -> &str {
        &self.namespace
    }

    /// A kubeconfig for the ServiceAccount the Helm chart makes, bound to the chart's
    /// ClusterRole and leader-election Role, as the operator runs in a cluster.
    fn chart_rbac_kubeconfig(&mut self, values: &[String]) -> PathBuf {
        if let Some(path) = &self.operator_kubeconfig {
            return path.clone();
        }
        let chart = repo().join("charts/mira-operator");
        let rendered = Command::new(helm())
            .args(["template", self.release()])
            .arg(&chart)
            .args(["--namespace", &self.namespace, "--set", "leaderElection.leaseName=mira-operator"])
            .args(values.iter().flat_map(|v| ["--set", v]))
            .args(["--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/clusterrole.yaml"])
            .args(["--show-only", "templates/leader-election-rbac.yaml"])
            .output()
            .unwrap_or_else(|e| {
                panic!("running {}: {e}; run through hack/test.sh, or eval \"$(hack/install-tools.sh env)\"", helm())
            });
        assert!(rendered.status.success(), "helm template: {}", String::from_utf8_lossy(&rendered.stderr));
        self.apply(&String::from_utf8_lossy(&rendered.stdout));
        let account = format!("{}-mira-operator", self.release());
        let token = kubectl_ok(&["create", "token", &account, "-n", &self.namespace, "--duration=2h"], None);
        let mut config: serde_json::Value =
            serde_json::from_str(&kubectl_ok(&["config", "view", "--raw", "--minify", "-o", "json"], None))
                .expect("kubectl prints the kubeconfig as JSON");
        config["users"][0]["user"] = serde_json::json!({ "token": token.trim() });
        let path = self.dir.join("operator.kubeconfig");
        std::fs::write(&path, config.to_string()).expect("writing the operator's kubeconfig");
        self.operator_kubeconfig = Some(path.clone());
        path
    }

    /// Starts `mira operator` watching this namespace only, by default with the chart's RBAC.
    pub fn start_operator(&mut self, options: OperatorOptions) {
        let config = if options.admin { kubeconfig() } else { self.chart_rbac_kubeconfig(&options.chart_values) };
        let log = self.dir.join(format!("operator-{}.log", self.operators.len() + 1));
        let mut command = Command::new(env!("CARGO_BIN_EXE_mira"));
        command
            .args(["operator", "--namespace", &self.namespace])
            .args(["--listen", options.listen.as_deref().unwrap_or("127.0.0.1:0")])
            .env("MIRA_RUNNER_IMAGE", RUNNER_IMAGE)
            .env("KUBECONFIG", config)
            .env("RUST_LOG", "info,mira_operator=debug");
        if options.without_s3_keys {
            command.env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY");
        }
        if let Some(seconds) = options.progress_refresh {
            command.args(["--progress-refresh-seconds", &seconds.to_string()]);
        }
        command.args(&options.args);
        match &options.lease_identity {
            Some(identity) => {
                command.args(["--lease-namespace", &self.namespace, "--identity", identity]);
            }
            None => {
                command.arg("--no-leader-election");
            }
        }
        self.operators.push(Process::spawn("mira operator", &mut command, log));
    }

    /// `kubectl apply` of manifests into this namespace.
    pub fn apply(&self, manifests: &str) {
        kubectl_ok(&["apply", "-n", &self.namespace, "-f", "-"], Some(manifests));
    }

    /// `kubectl apply` that is expected to fail: its stderr.
    pub fn apply_rejected(&self, manifests: &str) -> String {
        let out = kubectl(&["apply", "-n", &self.namespace, "-f", "-"], Some(manifests));
        assert!(!out.status.success(), "kubectl apply accepted what it should reject:\n{manifests}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A source per entry, `shards` shards of `records` records each, uploaded under
    /// `corpus/<name>/`; with teacher labels for every other record at `labels.jsonl`.
    pub async fn upload_corpus(
        &self,
        sources: &[(&str, Kind, Format)],
        shards: usize,
        records: usize,
    ) -> Vec<Generated> {
        let local = self.dir.join("corpus");
        let mut generated = Vec::new();
        for (name, kind, format) in sources {
            let source = SynthSource {
                name: name.to_string(),
                kind: *kind,
                format: *format,
                shards,
                records_per_shard: records,
                malformed_every: None,
            };
            generated.extend(synth::write_source(&local, &source, 7).expect("writing a synthetic source"));
        }
        self.upload_dir(&local, "corpus").await;
        let labels = self.dir.join("labels.jsonl");
        synth::write_labels(&labels, &generated, 2, 7).expect("writing labels");
        self.storage.put_file(&self.uri("labels.jsonl"), &labels).await.expect("uploading labels");
        generated
    }

    /// Copies every file under a local directory to `s3://<bucket>/<prefix>/`.
    pub async fn upload_dir(&self, dir: &Path, prefix: &str) {
        let local = Storage::new(StorageConfig::default());
        let root = dir.to_string_lossy().into_owned();
        for object in local.list(&root).await.expect("listing a local directory") {
            let relative = object.uri.strip_prefix(&root).expect("under the root").trim_start_matches('/');
            self.storage
                .put_file(&join(&self.uri(prefix), relative), Path::new(&object.uri))
                .await
                .unwrap_or_else(|e| panic!("uploading {}: {e}", object.uri));
        }
    }

    /// A resource of this namespace, if it exists.
    pub async fn get<K: Pipeline>(&self, name: &str) -> Option<K> {
        Api::<K>::namespaced(self.client.clone(), &self.namespace)
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("reading {} {name}: {e}", K::kind(&())))
    }

    /// A condition of a resource, if both exist.
    pub async fn condition<K: Pipeline>(&self, name: &str, type_: &str) -> Option<Condition> {
        let object = self.get::<K>(name).await?;
        object.status().and_then(|s| s.pipeline().condition(type_).cloned())
    }

    /// Waits until `check` yields a value, polling every half second; on timeout the test fails
    /// with `what` and the state of the namespace (statuses, Jobs, Pods, logs).
    pub async fn wait_for<T, F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?} waiting for {what}\n{}", self.diagnostics());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until a resource is Ready at its current generation; returns it.
    pub async fn wait_ready<K: Pipeline>(&self, name: &str, timeout: Duration) -> K {
        self.wait_for(&format!("{} {name} to be Ready", K::kind(&())), timeout, || async {
            let object = self.get::<K>(name).await?;
            let ready = object.status().is_some_and(|s| s.pipeline().ready_at(object.meta().generation));
            ready.then_some(object)
        })
        .await
    }

    /// Waits until a condition has the status, and its reason and message contain the given
    /// text; returns it.
    pub async fn wait_condition<K: Pipeline>(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
        message: &str,
        timeout: Duration,
    ) -> Condition {
        let what = format!("{} {name}: {type_}={status} with reason {reason:?} and message {message:?}", K::kind(&()));
        self.wait_for(&what, timeout, || async {
            self.condition::<K>(name, type_)
                .await
                .filter(|c| c.status == status && c.reason.contains(reason) && c.message.contains(message))
        })
        .await
    }

    /// The Jobs of this namespace whose labels match `selector`.
    pub async fn jobs(&self, selector: &str) -> Vec<Job> {
        Api::<Job>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default().labels(selector))
            .await
            .expect("listing Jobs")
            .items
    }

    /// The ConfigMaps of this namespace whose labels match `selector`.
    pub async fn config_maps(&self, selector: &str) -> Vec<ConfigMap> {
        Api::<ConfigMap>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default().labels(selector))
            .await
            .expect("listing ConfigMaps")
            .items
    }

    /// What a failing test prints: the resources and their statuses, Jobs, Pods, Events, the
    /// operator's and the kubelet's logs, and the last lines of every Pod's log.
    pub fn diagnostics(&self) -> String {
        let ns = self.namespace.as_str();
        let mut out = String::new();
        let mut section = |title: &str, body: String| {
            let _ = writeln!(out, "===== {title} =====\n{}", body.trim_end());
        };
        let run = |args: &[&str]| {
            let o = kubectl(args, None);
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
        };
        section("resources", run(&["get", "-n", ns, "sourcegroups,rubricsets,distillationjobs,filterruns,jobs,pods"]));
        let status = run(&[
            "get",
            "-n",
            ns,
            "sourcegroups,rubricsets,distillationjobs,filterruns",
            "-o",
            r#"jsonpath={range .items[*]}{.kind} {.metadata.name} generation {.metadata.generation}: {.status}{"\n\n"}{end}"#,
        ]);
        section("statuses", status);
        section("events", run(&["get", "events", "-n", ns, "--sort-by=.lastTimestamp"]));
        let mut logs = String::new();
        let mut operators: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("operator-")))
            .collect();
        operators.sort();
        for log in operators {
            let _ = writeln!(logs, "--- {} ---\n{}", log.display(), tail(&log, 60));
        }
        if let Some(kubelet) = &self.kubelet {
            let _ = writeln!(logs, "{}", kubelet.tail(40));
        }
        let mut pods: Vec<PathBuf> =
            std::fs::read_dir(self.dir.join("pods")).into_iter().flatten().flatten().map(|e| e.path()).collect();
        pods.sort();
        for log in pods {
            let _ = writeln!(logs, "--- pod log {} ---\n{}", log.display(), tail(&log, 15));
        }
        section("logs", logs);
        out
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for operator in &mut self.operators {
            operator.stop();
        }
        if let Some(kubelet) = &mut self.kubelet {
            kubelet.stop();
        }
        if self.operator_kubeconfig.is_some() {
            let name = format!("{}-mira-operator", self.release());
            let _ = kubectl(&["delete", "clusterrole,clusterrolebinding", &name, "--ignore-not-found"], None);
        }
        if std::env::var_os("MIRA_E2E_KEEP").is_some() {
            if let Some(temp) = self.temp.take() {
                eprintln!("kept {} and namespace {}", temp.keep().display(), self.namespace);
            }
            return;
        }
        let _ = kubectl(&["delete", "namespace", &self.namespace, "--wait=false"], None);
    }
}
