//! A client for OpenAI-compatible `/v1/chat/completions` servers (vLLM, SGLang, mistral.rs,
//! hosted APIs), for teachers too large to run inside a Job. Requests carry a JSON-schema
//! response format; at most `max_concurrency` are in flight; 429, 5xx and timeouts are retried
//! with exponential backoff (honouring `Retry-After`), other errors are not.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

const MAX_ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct Client {
    http: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<String>,
    permits: Semaphore,
    max_concurrency: usize,
}

impl Client {
    /// `base_url` is the API root (`http://host:port/v1`); the key is read from `api_key_env`.
    pub fn new(base_url: &str, model: &str, api_key_env: Option<&str>, max_concurrency: usize) -> Result<Self> {
        let api_key = match api_key_env {
            Some(var) => {
                Some(std::env::var(var).map_err(|_| Error::Model(format!("API key variable {var} is not set")))?)
            }
            None => None,
        };
        let timeout = std::env::var("MIRA_ENDPOINT_TIMEOUT_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(timeout))
            .build()
            .map_err(|e| Error::Model(format!("HTTP client: {e}")))?;
        let max_concurrency = max_concurrency.max(1);
        Ok(Client {
            http,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            model: model.into(),
            api_key,
            permits: Semaphore::new(max_concurrency),
            max_concurrency,
        })
    }

    pub fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }

    pub async fn complete(&self, system: &str, user: &str, schema: &Value, max_tokens: usize) -> Result<String> {
        let body = json!({
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "mira", "strict": true, "schema": schema}},
        });
        let _permit = self.permits.acquire().await.map_err(|e| Error::Model(e.to_string()))?;
        let mut backoff = FIRST_BACKOFF;
        let mut last = String::new();
        for attempt in 1..=MAX_ATTEMPTS {
            let mut request = self.http.post(&self.url).json(&body);
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            let wait = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    let value: Value =
                        response.json().await.map_err(|e| Error::Model(format!("{}: reply body: {e}", self.url)))?;
                    return value["choices"][0]["message"]["content"]
                        .as_str()
                        .map(str::to_string)
                        .ok_or_else(|| Error::Model(format!("{}: reply has no message content", self.url)));
                }
                Ok(response) if response.status().as_u16() == 429 || response.status().is_server_error() => {
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<f64>().ok())
                        .map(Duration::from_secs_f64);
                    last = format!("HTTP {}", response.status());
                    retry_after.unwrap_or(backoff)
                }
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    let message = format!("HTTP {status}: {}", super::clip(&text, 300));
                    return Err(Error::Endpoint { url: self.url.clone(), message });
                }
                Err(e) if e.is_timeout() || e.is_connect() => {
                    last = e.to_string();
                    backoff
                }
                Err(e) => return Err(Error::Endpoint { url: self.url.clone(), message: e.to_string() }),
            };
            if attempt < MAX_ATTEMPTS {
                tracing::warn!(url = %self.url, attempt, error = %last, "retrying");
                tokio::time::sleep(wait.min(MAX_BACKOFF)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        Err(Error::Endpoint {
            url: self.url.clone(),
            message: format!("gave up after {MAX_ATTEMPTS} attempts: {last}"),
        })
    }
}
