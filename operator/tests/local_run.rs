//! `mira run` end to end: a generated corpus goes through the whole chain (cluster, pinned
//! rubrics, distillation from imported labels, score, threshold, select) as local processes;
//! a rerun redoes nothing, and a changed retention reruns only the cuts and selections.
//!
//! Needs the `scorer-runner` binary: `MIRA_SCORER_RUNNER`, or built next to `mira`
//! (`cargo build -p scorer-runner`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mira_testkit::synth::{self, Kind, SynthSource};
use scorer_runner::plan::Format;

/// The real runner: `MIRA_SCORER_RUNNER`, or the one built next to `mira` (`cargo build
/// --workspace` builds both). Missing is a failure, not a skip: this test is what proves the chain.
fn scorer_runner() -> PathBuf {
    let runner = std::env::var_os("MIRA_SCORER_RUNNER")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_BIN_EXE_mira")).with_file_name("scorer-runner"));
    assert!(
        runner.is_file(),
        "no scorer-runner at {}: run `cargo build --workspace` or set MIRA_SCORER_RUNNER",
        runner.display()
    );
    runner
}

fn manifests(retention: f64) -> String {
    format!(
        r#"
apiVersion: mira.dev/v1alpha1
kind: SourceGroup
metadata: {{name: corpus}}
spec:
  root: out
  sources:
    - {{name: web, uri: corpus/web, text: {{idField: id}}}}
    - {{name: code, uri: corpus/code, text: {{idField: id}}}}
    - {{name: math, uri: corpus/math, text: {{idField: id}}}}
  grouping:
    groups:
      - {{name: prose, sources: [web]}}
      - {{name: technical, sources: [code, math]}}
---
apiVersion: mira.dev/v1alpha1
kind: RubricSet
metadata: {{name: rubrics}}
spec:
  sourceGroupRef: corpus
  teacher: {{endpoint: {{url: "http://unused/v1", model: unused}}}}
  pinned:
    - group: prose
      dimensions: [{{id: signal, name: Care}}, {{id: noise, name: Noise}}]
    - group: technical
      dimensions: [{{id: signal, name: Care}}, {{id: noise, name: Noise}}]
---
apiVersion: mira.dev/v1alpha1
kind: DistillationJob
metadata: {{name: students}}
spec:
  rubricSetRef: rubrics
  labels: {{importUri: labels.jsonl}}
  mask: {{minValidation: 3}}
---
apiVersion: mira.dev/v1alpha1
kind: FilterRun
metadata: {{name: filter}}
spec:
  distillationJobRef: students
  retention: {retention}
  output: kept
---
apiVersion: mira.dev/v1alpha1
kind: FilterRun
metadata: {{name: baseline}}
spec:
  sourceGroupRef: corpus
  method: random
  retention: 0.5
  output: kept-random
"#
    )
}

fn mira_run(dir: &Path, runner: &Path) -> (bool, String) {
    mira_run_file(&dir.join("mira.yaml"), runner)
}

fn mira_run_file(manifests: &Path, runner: &Path) -> (bool, String) {
    let Output { status, stdout, stderr } = Command::new(env!("CARGO_BIN_EXE_mira"))
        .args(["run", "-f"])
        .arg(manifests)
        .env("MIRA_SCORER_RUNNER", runner)
        .env("MIRA_PARALLELISM", "2")
        .env("MIRA_PROGRESS_SECONDS", "0.1")
        .output()
        .expect("mira runs");
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&stderr));
    (status.success(), stdout)
}

fn started(stdout: &str) -> Vec<String> {
    let mut stages: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.split_once(" stage ")?.1.split_once(" started Job ").map(|(s, _)| s.to_string()))
        .collect();
    stages.sort();
    stages
}

#[test]
fn a_chain_runs_to_the_kept_records_and_a_rerun_redoes_only_what_changed() {
    let runner = scorer_runner();
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    let mut records = Vec::new();
    for (name, kind, format) in [
        ("web", Kind::Prose, Format::Jsonl),
        ("code", Kind::Code, Format::JsonlZst),
        ("math", Kind::Math, Format::JsonlGz),
    ] {
        let source =
            SynthSource { name: name.into(), kind, format, shards: 2, records_per_shard: 60, malformed_every: None };
        records.extend(synth::write_source(&corpus, &source, 7).unwrap());
    }
    synth::write_labels(&dir.path().join("labels.jsonl"), &records, 2, 7).unwrap();
    std::fs::write(dir.path().join("mira.yaml"), manifests(0.5)).unwrap();

    let (ok, stdout) = mira_run(dir.path(), &runner);
    assert!(ok, "the first run succeeds");
    // Each FilterRun (the chain's and the random baseline's) scores, cuts and selects per group.
    let per_group = ["score", "select", "threshold"].map(|s| [format!("{s}/prose"), format!("{s}/technical")]);
    let mut expected: Vec<String> = per_group.iter().flatten().flat_map(|s| [s.clone(), s.clone()]).collect();
    expected.extend(["cluster".to_string(), "distill".to_string()]);
    expected.sort();
    assert_eq!(started(&stdout), expected);
    assert!(stdout.contains("FilterRun default/filter: Ready"), "{stdout}");
    assert!(stdout.contains("FilterRun default/baseline: Ready"), "{stdout}");
    assert!(stdout.contains("Reliable=True Reliable: every source keeps"), "the signal dimension is kept: {stdout}");
    assert!(stdout.contains("Usable=True Usable: every source scored"), "{stdout}");
    assert!(dir.path().join("kept/prose").is_dir(), "kept records are written per group");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("  stage score/prose: Succeeded in ") && l.ends_with("(2 units, 120 records)")),
        "the final report says how long each stage took and what it read: {stdout}"
    );
    let saved = std::fs::read(dir.path().join(".mira/resources/default/filterruns/filter.json")).unwrap();
    let saved: serde_json::Value = serde_json::from_slice(&saved).unwrap();
    let lengths: Vec<(String, u64, usize)> = saved["status"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["lengths"].as_array().unwrap().clone())
        .map(|l| {
            (
                l["source"].as_str().unwrap().to_string(),
                l["sampled"].as_u64().unwrap(),
                l["deciles"].as_array().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(
        lengths,
        [("web".to_string(), 120, 10), ("code".to_string(), 120, 10), ("math".to_string(), 120, 10)],
        "each group's status says, per source, whether its cut follows length"
    );

    assert!(
        stdout.contains("group prose: scores by signal; masked noise (web)"),
        "the run says which dimensions each group's scores use: {stdout}"
    );

    // The report: written when the FilterRun is Ready, and again on demand by `mira report`;
    // every figure laid out with its marks in a real browser.
    let reports: Vec<PathBuf> = stdout.lines().filter_map(|l| l.strip_prefix("report: ")).map(PathBuf::from).collect();
    let report = dir.path().join("kept/report.html").canonicalize().unwrap();
    let baseline = dir.path().join("kept-random/report.html").canonicalize().unwrap();
    assert_eq!(reports, [report.clone(), baseline.clone()], "next to each FilterRun's kept records");
    // Each selection's report sets it beside the other: whichever finished first is written again.
    check_report_renders(&report, &["prose", "technical"], true);
    check_report_renders(&baseline, &["prose", "technical"], false);
    let again = dir.path().join("again.html");
    let out = Command::new(env!("CARGO_BIN_EXE_mira"))
        .args(["report", "fr/filter", "-f"])
        .arg(dir.path().join("mira.yaml"))
        .arg("-o")
        .arg(&again)
        .output()
        .expect("mira report runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let html = std::fs::read_to_string(&again).unwrap();
    assert!(html.contains("FilterRun default/filter") && html.contains("id=\"scores-prose\""), "{html}");

    let (ok, stdout) = mira_run(dir.path(), &runner);
    assert!(ok, "a rerun succeeds");
    assert!(started(&stdout).is_empty(), "a rerun redoes nothing: {stdout}");

    std::fs::write(dir.path().join("mira.yaml"), manifests(0.3)).unwrap();
    let (ok, stdout) = mira_run(dir.path(), &runner);
    assert!(ok, "a run with a new retention succeeds");
    assert_eq!(started(&stdout), ["select/prose", "select/technical", "threshold/prose", "threshold/technical"]);
}

/// Renders `report` in headless Chromium (`MIRA_CHROMIUM`, from `hack/install-tools.sh
/// chromium`) and checks that every figure the report must have was laid out at a visible size
/// with marks in it (SVG shapes, table cells), as the browser measured them; keeps a screenshot
/// as a test artefact under the target directory's `tmp/`.
fn check_report_renders(report: &Path, groups: &[&str], rubric: bool) {
    let chromium =
        std::env::var("MIRA_CHROMIUM").expect("MIRA_CHROMIUM: run `eval \"$(hack/install-tools.sh env chromium)\"`");
    let dir = tempfile::tempdir().unwrap();
    let headless = |args: &[&str], page: &Path| {
        let out = Command::new(&chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"])
            .args(args)
            .arg(format!("file://{}", page.display()))
            .env("HOME", dir.path())
            .output()
            .expect("chromium runs");
        assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // A copy of the page with a probe that writes, once laid out, each figure's size and how
    // many of its marks have a size.
    let probe = r#"<script>window.addEventListener('load', () => {
        const out = {};
        for (const f of document.querySelectorAll('figure.plot')) {
            const r = f.getBoundingClientRect();
            const marks = [...f.querySelectorAll('svg rect, svg path, svg polyline, svg circle, td')]
                .filter(e => { const b = e.getBoundingClientRect(); return b.width > 0 && b.height > 0; }).length;
            out[f.id] = {width: r.width, height: r.height, marks: marks};
        }
        const pre = document.createElement('pre');
        pre.id = 'layout';
        pre.textContent = JSON.stringify(out);
        document.body.appendChild(pre);
    });</script>"#;
    let probed = dir.path().join("probed.html");
    std::fs::write(&probed, std::fs::read_to_string(report).unwrap().replace("</body>", &format!("{probe}</body>")))
        .unwrap();
    let dom = headless(&["--dump-dom"], &probed);
    let layout =
        dom.split_once("<pre id=\"layout\">").and_then(|(_, rest)| rest.split_once("</pre>")).expect("the probe ran").0;
    let layout: serde_json::Value = serde_json::from_str(&layout.replace("&amp;", "&")).unwrap();
    let mut figures = vec!["similarity".to_string(), "kept".to_string(), "comparison".to_string()];
    for g in groups {
        figures.extend(["scores", "length", "unranked"].map(|f| format!("{f}-{g}")));
        if rubric {
            figures.extend(["dimensions", "agreement"].map(|f| format!("{f}-{g}")));
        }
    }
    if !rubric {
        let dimensions = layout.as_object().unwrap().keys().filter(|id| id.starts_with("dimensions-")).count();
        assert_eq!(dimensions, 0, "a baseline's report has no rubric: {layout}");
    }
    for id in &figures {
        let f = &layout[id.as_str()];
        let (height, marks) = (f["height"].as_f64().unwrap_or(0.0), f["marks"].as_u64().unwrap_or(0));
        assert!(height > 20.0 && marks > 0, "figure {id} is missing or empty: {f} of {layout}");
    }
    for chart in figures.iter().filter(|id| id.starts_with("scores-") || id.starts_with("length-") || *id == "kept") {
        assert!(layout[chart.as_str()]["marks"].as_u64().unwrap() >= 5, "chart {chart} has too few marks: {layout}");
    }
    let artefacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report");
    std::fs::create_dir_all(&artefacts).unwrap();
    let png = artefacts.join(format!("local-run-{}.png", if rubric { "report" } else { "baseline-report" }));
    headless(&[&format!("--screenshot={}", png.display()), "--window-size=1200,5000"], report);
    assert!(std::fs::metadata(&png).unwrap().len() > 10_000, "the screenshot has content");
}

#[test]
fn a_failed_stage_fails_the_run_with_the_runners_error_and_a_rerun_retries_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let runner = dir.path().join("failing-runner");
    std::fs::write(
        &runner,
        "#!/bin/sh\necho 'listing shards' >&2\necho 'error: ShardError: no shards under corpus/web' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&runner, std::fs::Permissions::from_mode(0o755)).unwrap();
    let manifest = dir.path().join("corpus.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: mira.dev/v1alpha1\nkind: SourceGroup\nmetadata: {name: corpus}\nspec: {root: out, sources: [{name: web, uri: corpus/web}]}\n",
    )
    .unwrap();

    let (ok, stdout) = mira_run_file(&manifest, &runner);
    assert!(!ok, "a failed stage fails the run");
    assert!(stdout.contains("Clustered=False ShardError: cluster: no shards under corpus/web"), "{stdout}");
    assert!(stdout.contains("! job corpus-cluster-g1-"), "the failed Job and its log are named: {stdout}");

    let (ok, stdout) = mira_run_file(&manifest, &runner);
    assert!(!ok);
    assert!(
        stdout.contains("stage cluster started Job corpus-cluster-g2-"),
        "a rerun retries the failed stage: {stdout}"
    );
}

/// `mira run` in `cwd` with these arguments and a runner that fails at once: (exit code, stdout,
/// stderr).
fn mira_in(cwd: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let Output { status, stdout, stderr } = Command::new(env!("CARGO_BIN_EXE_mira"))
        .current_dir(cwd)
        .arg("run")
        .args(args)
        .env("MIRA_SCORER_RUNNER", "/bin/false")
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("mira runs");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr).into_owned());
    assert!(!stderr.contains("stack backtrace"), "no backtrace unless asked for: {stderr}");
    (status.code(), stdout, stderr)
}

#[test]
fn manifests_are_found_by_bare_relative_and_directory_paths() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("runs");
    std::fs::create_dir(&sub).unwrap();
    let manifest =
        "apiVersion: mira.dev/v1alpha1\nkind: SourceGroup\nmetadata: {name: corpus}\nspec: {root: out, sources: [{name: web, uri: corpus/web}]}\n";
    std::fs::write(sub.join("corpus.yaml"), manifest).unwrap();
    let state = sub.canonicalize().unwrap().join(".mira");
    for (cwd, path) in [
        (sub.clone(), "corpus.yaml"),
        (dir.path().to_path_buf(), "runs/corpus.yaml"),
        (dir.path().to_path_buf(), "runs"),
    ] {
        let (code, stdout, stderr) = mira_in(&cwd, &["-f", path]);
        assert_eq!(code, Some(1), "the stage fails (the runner is /bin/false), so the run does: {stdout}{stderr}");
        assert!(
            stdout.contains(&format!("state: {}", state.display())),
            "{path}: state beside the manifests: {stdout}"
        );
        assert!(stdout.contains("stage cluster started Job corpus-cluster-"), "{path}: {stdout}");
    }
}

#[test]
fn errors_are_one_line_with_an_exit_code_by_cause() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.yaml"), "apiVersion: mira.dev/v1alpha1\nkind: SourceGroup\nspec: [\n")
        .unwrap();
    std::fs::write(dir.path().join("not-a-dir"), "").unwrap();
    std::fs::write(
        dir.path().join("corpus.yaml"),
        "apiVersion: mira.dev/v1alpha1\nkind: SourceGroup\nmetadata: {name: corpus}\nspec: {root: out, sources: [{name: web, uri: corpus/web}]}\n",
    )
    .unwrap();
    for (args, code, says) in [
        (&["-f", "missing.yaml"][..], 2, "missing.yaml"),
        (&["-f", "broken.yaml"], 2, "broken.yaml"),
        (&["-f", "corpus.yaml", "--state", "not-a-dir/state"], 3, "not-a-dir"),
    ] {
        let (exit, stdout, stderr) = mira_in(dir.path(), args);
        assert_eq!(exit, Some(code), "{args:?}: {stdout}{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line: {stderr}");
        assert!(lines[0].starts_with("error: ") && lines[0].contains(says), "{args:?}: {stderr}");
    }
}

/// What the API server would refuse, `mira run` refuses before any work, naming the field: an
/// unknown field (a typo loses nothing silently), the CRDs' rules, and repeated list-map keys
/// (two groups of one name once scored and selected only one of them).
#[test]
fn manifests_are_checked_as_the_api_server_would() {
    let dir = tempfile::tempdir().unwrap();
    let source_group = |grouping: &str| {
        format!(
            "apiVersion: mira.dev/v1alpha1\nkind: SourceGroup\nmetadata: {{name: corpus}}\nspec:\n  root: out\n  sources: [{{name: web, uri: a}}, {{name: code, uri: b}}]\n  grouping: {grouping}\n"
        )
    };
    let filter_run = |spec: &str| {
        format!("apiVersion: mira.dev/v1alpha1\nkind: FilterRun\nmetadata: {{name: f}}\nspec: {{distillationJobRef: d, output: out, {spec}}}\n")
    };
    for (manifest, says) in [
        (filter_run("retension: 0.5, retention: 0.5"), "unknown field spec.retension"),
        (source_group("{k: 2, groups: [{name: g, sources: [web, code]}]}"), "spec.grouping: set k or groups, not both"),
        (
            source_group("{groups: [{name: g, sources: [web]}, {name: g, sources: [code]}]}"),
            "spec.grouping.groups[1]: duplicate entry with name=\"g\"",
        ),
        (filter_run("retention: 0.5, policy: global, groupRetention: {g: 0.3}"), "groupRetention"),
        (filter_run("retention: 1.5"), "retention must be in (0, 1]"),
        (filter_run("retention: 0.5").replace("name: f", "name: ../f"), "metadata.name \"../f\" must be a DNS"),
        (
            filter_run("retention: 0.5").replace("name: f", "name: f, namespace: ../ns"),
            "metadata.namespace \"../ns\" must be a DNS label",
        ),
    ] {
        std::fs::write(dir.path().join("m.yaml"), &manifest).unwrap();
        let (code, stdout, stderr) = mira_in(dir.path(), &["-f", "m.yaml"]);
        assert_eq!(code, Some(2), "{manifest}: {stdout}{stderr}");
        assert!(stderr.contains(says), "{manifest}: wants {says:?}: {stderr}");
        assert!(!dir.path().join(".mira").exists(), "nothing is run or written: {manifest}");
    }
}

/// Processes whose command line mentions `needle` (the stage processes of a state directory).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{}: {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

#[test]
fn one_run_per_state_directory_and_a_stopped_run_stops_its_stages_and_resumes() {
    use std::io::BufRead;
    let runner = scorer_runner();
    let dir = tempfile::tempdir().unwrap();
    let mut records = Vec::new();
    for (name, kind) in [("web", Kind::Prose), ("code", Kind::Code), ("math", Kind::Math)] {
        let source = SynthSource {
            name: name.into(),
            kind,
            format: Format::Jsonl,
            shards: 12,
            records_per_shard: 1000,
            malformed_every: None,
        };
        records.extend(synth::write_source(&dir.path().join("corpus"), &source, 7).unwrap());
    }
    synth::write_labels(&dir.path().join("labels.jsonl"), &records, 2, 7).unwrap();
    std::fs::write(dir.path().join("mira.yaml"), manifests(0.5)).unwrap();
    let mira = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mira"));
        command
            .args(["run", "-f"])
            .arg(dir.path().join("mira.yaml"))
            .env("MIRA_SCORER_RUNNER", &runner)
            .env("MIRA_PARALLELISM", "1");
        command
    };

    let mut first = mira().stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut lines = std::io::BufReader::new(first.stdout.take().unwrap()).lines();
    let started = lines.by_ref().map(|l| l.unwrap()).find(|l| l.contains(" started Job "));
    assert!(started.is_some(), "the first run starts a stage");

    let second = mira().output().unwrap();
    assert_eq!(second.status.code(), Some(3), "busy: try again later {second:?}");
    assert!(String::from_utf8_lossy(&second.stderr).contains("is in use by another `mira run`"), "{second:?}");

    let state = dir.path().join(".mira").display().to_string();
    // A stage may just have finished, with the next one not yet started: give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while processes_mentioning(&state).is_empty() {
        assert!(std::time::Instant::now() < deadline, "a stage process runs");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Command::new("kill").args(["-TERM", &first.id().to_string()]).status().unwrap();
    let stopped = first.wait_with_output().unwrap();
    assert_eq!(stopped.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&stopped.stderr).contains("stopped by SIGTERM"), "{stopped:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !processes_mentioning(&state).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "stage processes outlived the run: {:?}",
            processes_mentioning(&state)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let rerun = mira().output().unwrap();
    assert!(rerun.status.success(), "{}", String::from_utf8_lossy(&rerun.stderr));
    assert!(String::from_utf8_lossy(&rerun.stdout).contains("FilterRun default/filter: Ready"));
}
