//! The HTTP teacher: against a real OpenAI-compatible server (`scorer-runner serve` with the tiny
//! model), and against a scripted misbehaving server for what a real one cannot be made to do on
//! demand (429s, 5xx, invalid replies).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use scorer_runner::models::Chat;
use scorer_runner::plan::ModelSpec;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5}},
        "required": ["score"],
        "additionalProperties": false,
        "x-guidance": {"whitespace_flexible": false}
    })
}

#[derive(serde::Deserialize, Debug, PartialEq)]
struct Reply {
    score: i64,
}

async fn endpoint(url: &str) -> Chat {
    endpoint_with_key(url, None).await
}

/// An endpoint teacher that sends the key in `api_key_env` (an environment variable's name).
async fn endpoint_with_key(url: &str, api_key_env: Option<&str>) -> Chat {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = common::context(&Default::default(), "t", tmp.path());
    // "default" is the name mistral.rs' server answers to for its one model.
    let spec = ModelSpec::Endpoint {
        url: url.into(),
        model: "default".into(),
        api_key_env: api_key_env.map(str::to_string),
        max_concurrency: Some(2),
    };
    Chat::load(&ctx.storage, &ctx.scratch, &spec).await.unwrap()
}

/// A server that answers each connection with the next scripted (status, body); the last one
/// repeats. Counts requests.
async fn scripted(replies: Vec<(u16, String)>) -> (String, Arc<AtomicUsize>) {
    let (url, count, _) = recording(replies).await;
    (url, count)
}

/// [`scripted`], also keeping each request's JSON body, in the order they came.
async fn recording(replies: Vec<(u16, String)>) -> (String, Arc<AtomicUsize>, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let (seen, kept) = (count.clone(), bodies.clone());
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let (status, body) = replies[n.min(replies.len() - 1)].clone();
            let kept = kept.clone();
            tokio::spawn(async move {
                if let Some(request) = read_request_body(&mut socket).await {
                    kept.lock().unwrap().push(request);
                }
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\nretry-after: 0\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, count, bodies)
}

/// The JSON body of one HTTP request: the headers, then as many bytes as `content-length` says.
async fn read_request_body(socket: &mut tokio::net::TcpStream) -> Option<serde_json::Value> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length:"))?.trim().parse().ok()?;
            if buf.len() >= end + 4 + length {
                return serde_json::from_slice(&buf[end + 4..end + 4 + length]).ok();
            }
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn completion(content: &str) -> String {
    json!({"choices": [{"message": {"role": "assistant", "content": content}}]}).to_string()
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_then_the_reply_parses() {
    let (url, count) =
        scripted(vec![(429, "{}".into()), (503, "{}".into()), (200, completion("{\"score\": 4}"))]).await;
    let chat = endpoint(&url).await;
    let reply: Reply = chat.json("s", "u", &schema(), |_| true).await.unwrap();
    assert_eq!(reply, Reply { score: 4 });
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

/// At temperature 0 the same prompt gets the same reply: each request after an unusable reply
/// says what was wrong with it, so it is never the same request twice.
#[tokio::test]
async fn invalid_replies_are_asked_again_with_what_was_wrong_a_bounded_number_of_times() {
    let (url, count, bodies) = recording(vec![
        (200, completion("not json")),
        (200, completion("{\"score\": 9}")),
        (200, completion("{\"score\": 3")),
    ])
    .await;
    let chat = endpoint(&url).await;
    let err = chat.json::<Reply>("s", "u", &schema(), |r| (1..=5).contains(&r.score)).await.unwrap_err();
    assert!(err.to_string().contains("cut off after"), "{err}");
    assert_eq!(count.load(Ordering::SeqCst), scorer_runner::models::ATTEMPTS);
    let bodies = bodies.lock().unwrap();
    let users: Vec<&str> = bodies.iter().map(|b| b["messages"][1]["content"].as_str().unwrap()).collect();
    assert_eq!(users[0], "u");
    assert!(users[1].starts_with("u\n\nYour last reply was not the JSON asked for"), "{}", users[1]);
    assert!(users[2].starts_with("u\n\nYour last reply was a value out of bounds"), "{}", users[2]);
    // The token cap is the longest reply the schema allows: `{"score":5}`.
    assert!(bodies.iter().all(|b| b["max_tokens"] == 11), "{bodies:?}");
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let (url, count) = scripted(vec![(400, "{\"error\": \"bad schema\"}".into())]).await;
    let chat = endpoint(&url).await;
    let err = chat.json::<Reply>("s", "u", &schema(), |_| true).await.unwrap_err();
    assert!(err.to_string().contains("400") && err.to_string().contains("bad schema"), "{err}");
    assert_eq!(err.category(), "EndpointError");
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

/// A teacher that refuses every request (a wrong key) fails the label step with its HTTP status,
/// which becomes the stage's condition message; its records are not counted as replies that did
/// not fit the schema.
#[tokio::test]
async fn a_teacher_refusing_every_request_fails_the_label_step_with_its_http_status() {
    use mira_testkit::synth::{self, Kind, SynthSource};
    use scorer_runner::plan::{Dimension, Format, LabelGroup, LabelPlan, Source, TeacherPass, TextSpec};

    let (url, _) = scripted(vec![(401, "{\"error\": \"invalid api key\"}".into())]).await;
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    let web = SynthSource {
        name: "web".into(),
        kind: Kind::Prose,
        format: Format::Jsonl,
        shards: 1,
        records_per_shard: 8,
        malformed_every: None,
    };
    synth::write_source(&corpus, &web, 1).unwrap();
    let ctx = common::context(&Default::default(), "w", tmp.path());
    let source = Source {
        name: "web".into(),
        uri: corpus.join("web").display().to_string(),
        format: None,
        text: TextSpec::default(),
        shard_fraction: None,
    };
    let dimension =
        Dimension { id: "care".into(), name: "Care".into(), description: "care".into(), guide: String::new() };
    let teacher = ModelSpec::Endpoint { url, model: "m".into(), api_key_env: None, max_concurrency: Some(2) };
    let plan = LabelPlan {
        storage: Default::default(),
        output: tmp.path().join("label").display().to_string(),
        groups: vec![LabelGroup { name: "all".into(), sources: vec![source], dimensions: vec![dimension] }],
        rubrics: None,
        pass: TeacherPass::new(teacher),
        records_per_group: 4,
        records_per_unit: 2,
    };
    let err = scorer_runner::steps::label::run(&ctx, &plan).await.unwrap_err();
    assert!(err.to_string().contains("HTTP 401") && err.to_string().contains("invalid api key"), "{err}");
    assert!(["EndpointError", "UnitsFailed"].contains(&err.category()), "{}", err.category());
}

#[cfg(feature = "llm")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_openai_compatible_server_answers_under_the_schema_to_requests_bearing_its_key() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let hf_home = tempfile::tempdir().unwrap();
    let key_file = hf_home.path().join("key");
    std::fs::write(&key_file, "s3cret-teacher-key\n").unwrap();
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_scorer-runner"))
        .args(["serve", "--model", &common::tiny_model("qwen3-tiny"), "--listen", &format!("127.0.0.1:{port}")])
        .arg("--api-key-file")
        .arg(&key_file)
        .env("HF_HOME", hf_home.path())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1");
    let client = reqwest::Client::new();
    let models = |key: Option<&'static str>| {
        let request = client.get(format!("{url}/models"));
        let request = match key {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
        async move { request.send().await.ok().map(|r| r.status().as_u16()) }
    };
    let ready = async {
        for _ in 0..240 {
            if models(Some("s3cret-teacher-key")).await == Some(200) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        false
    };
    let up = ready.await;
    let (without, wrong) = (models(None).await, models(Some("guess")).await);
    // The teacher's spec names the variable that holds the key, as a Job gets it from a Secret.
    std::env::set_var("MIRA_TEST_TEACHER_KEY", "s3cret-teacher-key");
    let reply = if up {
        let chat = endpoint_with_key(&url, Some("MIRA_TEST_TEACHER_KEY")).await;
        Some(chat.json::<Reply>("Score the text.", "hello world", &schema(), |r| (1..=5).contains(&r.score)).await)
    } else {
        None
    };
    server.kill().unwrap();
    server.wait().unwrap();
    let reply = reply.expect("the server did not come up within 60 s").expect("a valid reply");
    assert!((1..=5).contains(&reply.score));
    assert_eq!((without, wrong), (Some(401), Some(401)), "requests without the key are refused");
}

#[cfg(feature = "llm")]
#[test]
fn serve_refuses_to_listen_beyond_loopback_without_a_key() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scorer-runner"))
        .args(["serve", "--model", &common::tiny_model("qwen3-tiny"), "--listen", "0.0.0.0:0"])
        .env_remove("MIRA_SERVE_API_KEY")
        .env("HF_HOME", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("without an API key"), "{stderr}");
}
