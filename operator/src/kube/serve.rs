//! The operator's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process runs)
//! and `/readyz` (started: connected to the API server, and leading or standing by).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::metrics::Metrics;

/// What the endpoints report.
#[derive(Default)]
pub struct Health {
    pub metrics: Metrics,
    pub ready: AtomicBool,
}

/// Serves the endpoints on a bound listener until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, health: Arc<Health>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    if let Err(e) = axum::serve(listener, router(health)).await {
        tracing::warn!(error = %e, "the metrics and health server stopped");
    }
}

fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], health.metrics.render())
}

async fn readyz(State(health): State<Arc<Health>>) -> (StatusCode, &'static str) {
    if health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// The status line and body of `GET path`, over a real connection.
    async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response.lines().next().unwrap_or_default().to_string();
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        (status, body)
    }

    #[tokio::test]
    async fn readiness_follows_startup_and_unknown_paths_are_not_found() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Arc::new(Health::default());
        tokio::spawn(serve(listener, health.clone()));
        assert_eq!(get(addr, "/healthz").await, ("HTTP/1.1 200 OK".into(), "ok\n".into()));
        assert_eq!(get(addr, "/readyz").await.0, "HTTP/1.1 503 Service Unavailable");
        health.ready.store(true, Ordering::Relaxed);
        assert_eq!(get(addr, "/readyz").await.0, "HTTP/1.1 200 OK");
        health.metrics.reconciled("FilterRun", std::time::Duration::from_millis(5));
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.contains("mira_operator_reconciliations_total{kind=\"FilterRun\"} 1"), "{body}");
        assert_eq!(get(addr, "/other").await.0, "HTTP/1.1 404 Not Found");
    }
}
