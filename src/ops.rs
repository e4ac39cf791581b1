//! Operational endpoints: Prometheus `/metrics`, liveness `/livez`, readiness `/readyz`, and
//! the status page (`/`, `/status.json`; see [`crate::status`]).
//!
//! Served on the publish socket, on the optional admin listener (`admin.listen`), and — the
//! readiness check only, opt-in via `server.health_path` — on the public port for platform
//! health checks. Readiness fails while draining, while the app does not answer HTTP, and in
//! cluster mode while the Redis link is down or its end-to-end check is late.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use crate::accept::{self, Until};
use crate::body::{self, Body};
use crate::metrics::Metrics;
use crate::realtime::Hub;
use crate::shutdown::Shutdown;
use crate::status::{self, StatusHistory};
use crate::supervisor::AppGate;
use crate::upstream::Upstream;

/// How long readiness waits for the app's answer (its response head).
const APP_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an app probe's outcome is reused: a storm of readiness probes costs the app one
/// request per second.
const APP_PROBE_CACHE: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Ops {
    metrics: Arc<Metrics>,
    hub: Arc<Hub>,
    shutdown: Shutdown,
    gate: AppGate,
    app: Arc<AppProbe>,
    history: StatusHistory,
}

impl Ops {
    pub fn new(
        metrics: Arc<Metrics>,
        hub: Arc<Hub>,
        shutdown: Shutdown,
        gate: AppGate,
        upstream: Upstream,
        ready_path: PathAndQuery,
    ) -> Self {
        // The status page's samples start with the operational endpoints that serve them.
        let history = StatusHistory::default();
        tokio::spawn(history.clone().run(hub.clone(), metrics.clone()));
        Self {
            history,
            metrics,
            hub,
            shutdown,
            gate,
            app: Arc::new(AppProbe {
                upstream,
                path: ready_path,
                last: tokio::sync::Mutex::new(None),
            }),
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
            "/" => {
                let mut resp = Response::new(body::full(status::PAGE));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                Some(resp)
            }
            "/status.json" => Some(self.status_json().await),
            _ => None,
        }
    }

    /// What the status page shows: `/stats`'s figures now, and the recent samples.
    async fn status_json(&self) -> Response<Body> {
        let stats = self.hub.stats().await;
        body::json(
            StatusCode::OK,
            &json!({
                "stats": stats,
                "sample_every_ms": status::SAMPLE_EVERY.as_millis() as u64,
                "samples": self.history.samples(),
            }),
        )
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
        if let Some(up) = self.hub.cluster_link_up() {
            self.metrics.cluster_link(up);
        }
        let mut resp = Response::new(body::full(self.metrics.render()));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }

    /// 200 when sockgate accepts traffic, the app answers HTTP and (in cluster mode) Redis
    /// carries messages between instances; 503 with the reason otherwise.
    pub async fn readiness(&self) -> Response<Body> {
        let problem = if self.shutdown.is_draining() {
            Some("draining".to_string())
        } else if !self.gate.is_open() {
            Some("the app is starting".to_string())
        } else if let Some(problem) = self.app.problem().await {
            Some(problem)
        } else {
            self.hub.cluster_problem()
        };
        match problem {
            None => body::json(StatusCode::OK, &json!({"ready": true})),
            Some(reason) => body::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"ready": false, "reason": reason}),
            ),
        }
    }

    /// Serves only the operational endpoints on a TCP address (e.g. for a Prometheus scraper),
    /// until the public side has drained; open requests then finish.
    pub async fn serve_admin(self, listener: TcpListener, shutdown: Shutdown) {
        let ops = Arc::new(self);
        let accepting = accept::serve(
            listener,
            |e| tracing::warn!("admin accept failed: {e}"),
            Until::Finished,
            &shutdown,
            |stream, _peer, drain| {
                let ops = ops.clone();
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let ops = ops.clone();
                        async move {
                            let resp = match ops.handle(req.method(), req.uri().path()).await {
                                Some(resp) => resp,
                                None => body::text(
                                    StatusCode::NOT_FOUND,
                                    "admin endpoints: / /status.json /metrics /livez /readyz",
                                ),
                            };
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                Some(async move {
                    let _ = drain.serve(conn).await;
                })
            },
        );
        accepting.await;
    }
}

/// Whether the app answers HTTP: an app that accepts connections but never answers (stuck
/// event loop, exhausted worker pool) is not ready, though a TCP connect succeeds.
struct AppProbe {
    upstream: Upstream,
    path: PathAndQuery,
    /// When the app was last asked, and what was wrong then (`None`: it answered). Held while
    /// asking, so concurrent readiness probes wait for one request instead of each sending one.
    last: tokio::sync::Mutex<Option<(Instant, Option<String>)>>,
}

impl AppProbe {
    /// A connect on every probe (cheap: an app that died is seen at once), an HTTP request
    /// at most once per [`APP_PROBE_CACHE`] (a hung app is seen within about a second).
    async fn problem(&self) -> Option<String> {
        let app = self.upstream.authority();
        match tokio::time::timeout(APP_PROBE_TIMEOUT, TcpStream::connect(app.as_str())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Some(format!("the app at {app} is unreachable: {e}")),
            Err(_) => {
                return Some(format!(
                    "the app at {app} did not accept within {APP_PROBE_TIMEOUT:?}"
                ));
            }
        }
        let mut last = self.last.lock().await;
        if let Some((at, problem)) = last.as_ref()
            && at.elapsed() < APP_PROBE_CACHE
        {
            return problem.clone();
        }
        let problem = self.ask().await;
        *last = Some((Instant::now(), problem.clone()));
        problem
    }

    /// Any status counts as an answer: readiness asks whether the app serves HTTP, not
    /// whether this path succeeds.
    async fn ask(&self) -> Option<String> {
        let mut req = Request::new(http_body_util::Either::Right(
            http_body_util::Full::default(),
        ));
        *req.uri_mut() = self.upstream.uri(Some(&self.path));
        if let Ok(host) = HeaderValue::from_str(self.upstream.authority().as_str()) {
            req.headers_mut().insert(header::HOST, host);
        }
        match self.upstream.send(req, Some(APP_PROBE_TIMEOUT)).await {
            Ok(_) => None,
            Err(e) => Some(format!("{e} (GET {}, upstream.ready_path)", self.path)),
        }
    }
}
