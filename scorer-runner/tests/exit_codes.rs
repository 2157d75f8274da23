//! What a failed `scorer-runner` prints and how it exits: one `error: <Category>: ...` line (the
//! line the operator copies into a condition) and an exit code by kind of cause, so that a script
//! or a Job's failure policy can tell input to fix from an outage.

use std::process::Command;

/// Runs a step on an inline plan; (exit code, last line of stderr).
fn step(step: &str, plan: &str) -> (Option<i32>, String) {
    let scratch = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_scorer-runner"))
        .args([step, "--plan", plan, "--scratch"])
        .arg(scratch.path())
        .env("RUST_BACKTRACE", "1")
        .env_remove("MIRA_S3_ENDPOINT")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("stack backtrace"), "{stderr}");
    (output.status.code(), stderr.lines().last().unwrap_or_default().to_string())
}

#[test]
fn a_plan_that_does_not_parse_is_bad_input() {
    let (code, line) = step("threshold", "{\"output\": ");
    assert_eq!(code, Some(2), "{line}");
    assert!(line.starts_with("error: InvalidPlan: "), "{line}");
}

#[test]
fn a_missing_input_is_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = serde_json::json!({
        "output": tmp.path().join("out"),
        "scores": [tmp.path().join("no-such-scores")],
        "retention": 0.5,
    });
    let (code, line) = step("threshold", &plan.to_string());
    assert_eq!(code, Some(2), "{line}");
    assert!(line.contains("no-such-scores"), "the message names what is missing: {line}");
}

#[test]
fn storage_that_cannot_be_reached_is_an_outage() {
    // A port nothing listens on: connection refused on every attempt.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let plan = serde_json::json!({
        "storage": {"endpoint": format!("http://127.0.0.1:{port}"), "region": "us-east-1",
                    "accessKeyId": "k", "secretAccessKey": "s", "maxAttempts": 1},
        "output": "s3://bucket/out",
        "scores": ["s3://bucket/scores"],
        "retention": 0.5,
    });
    let (code, line) = step("threshold", &plan.to_string());
    assert_eq!(code, Some(3), "{line}");
    assert!(line.starts_with("error: StorageError: "), "{line}");
}

#[test]
fn a_plan_that_lists_a_group_twice_is_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let group = serde_json::json!({"name": "g", "sources": [{"name": "web", "uri": tmp.path().join("web")}]});
    let plan = serde_json::json!({
        "output": tmp.path().join("out"),
        "groups": [group, group],
        "score": tmp.path().join("score"),
        "threshold": tmp.path().join("threshold"),
    });
    let (code, line) = step("select", &plan.to_string());
    assert_eq!(code, Some(2), "{line}");
    assert!(line.contains("group \"g\" is listed twice"), "{line}");
    assert!(!tmp.path().join("out").exists(), "nothing is written");
}
