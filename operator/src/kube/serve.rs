//! The operator's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process runs)
//! and `/readyz` (started: connected to the API server, and leading or standing by).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

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
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                continue;
            }
        };
        let health = health.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let response = respond(request.uri().path(), &health);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

fn respond(path: &str, health: &Health) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => {
            (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", health.metrics.render())
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if health.ready.load(Ordering::Relaxed) => (StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "starting\n".into()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_startup_and_unknown_paths_are_not_found() {
        let health = Health::default();
        assert_eq!(respond("/healthz", &health).status(), StatusCode::OK);
        assert_eq!(respond("/readyz", &health).status(), StatusCode::SERVICE_UNAVAILABLE);
        health.ready.store(true, Ordering::Relaxed);
        assert_eq!(respond("/readyz", &health).status(), StatusCode::OK);
        assert_eq!(respond("/metrics", &health).status(), StatusCode::OK);
        assert_eq!(respond("/other", &health).status(), StatusCode::NOT_FOUND);
    }
}
