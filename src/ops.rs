//! Operational endpoints: Prometheus `/metrics`, liveness `/livez`, readiness `/readyz`.
//!
//! Served on the publish socket, on the optional admin listener (`admin.listen`), and — the
//! readiness check only, opt-in via `server.health_path` — on the public port for platform
//! health checks. Readiness fails while draining and while the app is not reachable.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderValue, Method, Response, StatusCode, header};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;

use crate::body::{self, Body};
use crate::metrics::Metrics;
use crate::realtime::Hub;
use crate::shutdown::Shutdown;
use crate::supervisor::AppGate;

/// How long readiness waits for the app to accept a connection.
const APP_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct Ops {
    metrics: Arc<Metrics>,
    hub: Arc<Hub>,
    shutdown: Shutdown,
    gate: AppGate,
    upstream: Authority,
}

impl Ops {
    pub fn new(
        metrics: Arc<Metrics>,
        hub: Arc<Hub>,
        shutdown: Shutdown,
        gate: AppGate,
        upstream: Authority,
    ) -> Self {
        Self {
            metrics,
            hub,
            shutdown,
            gate,
            upstream,
        }
    }

    /// Answers `path` if it is an operational endpoint.
    pub async fn handle(&self, method: &Method, path: &str) -> Option<Response<Body>> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        match path {
            "/metrics" => Some(self.metrics_page()),
            "/livez" => Some(body::json(StatusCode::OK, &json!({"ok": true}))),
            "/readyz" => Some(self.readiness().await),
            _ => None,
        }
    }

    fn metrics_page(&self) -> Response<Body> {
        let (polling, websocket) = self.hub.sockets_by_transport();
        let gauge = |t| {
            self.metrics
                .sockets_open
                .get_or_create(&[("transport", t)])
                .clone()
        };
        gauge("polling").set(polling as i64);
        gauge("websocket").set(websocket as i64);
        let mut resp = Response::new(body::full(self.metrics.render()));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }

    /// 200 when sockgate accepts traffic and the app answers; 503 with the reason otherwise.
    pub async fn readiness(&self) -> Response<Body> {
        let problem = if self.shutdown.is_draining() {
            Some("draining".to_string())
        } else if !self.gate.is_open() {
            Some("the app is starting".to_string())
        } else {
            let probe = tokio::net::TcpStream::connect(self.upstream.as_str());
            match tokio::time::timeout(APP_PROBE_TIMEOUT, probe).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(format!("the app at {} is unreachable: {e}", self.upstream)),
                Err(_) => Some(format!(
                    "the app at {} did not accept within {APP_PROBE_TIMEOUT:?}",
                    self.upstream
                )),
            }
        };
        match problem {
            None => body::json(StatusCode::OK, &json!({"ready": true})),
            Some(reason) => body::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"ready": false, "reason": reason}),
            ),
        }
    }

    /// Serves only the operational endpoints on a TCP address (e.g. for a Prometheus scraper).
    pub async fn serve_admin(self, listener: TcpListener, shutdown: Shutdown) {
        let ops = Arc::new(self);
        loop {
            let (stream, _peer): (_, SocketAddr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!("admin accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.finished() => return,
            };
            let ops = ops.clone();
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let ops = ops.clone();
                    async move {
                        let resp = match ops.handle(req.method(), req.uri().path()).await {
                            Some(resp) => resp,
                            None => body::text(
                                StatusCode::NOT_FOUND,
                                "admin endpoints: /metrics /livez /readyz",
                            ),
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
            tokio::spawn(
                http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    }
}
