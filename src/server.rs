//! The public server: accepts connections, speaks HTTP/1.1 and h2c, and routes each request
//! to the Socket.IO endpoint or to the proxy.
//!
//! The router is built once at startup and shared by every connection; only the peer address
//! is per connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::abuse::{Conduct, Polling};
use crate::accept::{self, Drain, Drained, Until};
use crate::body::{self, Body};
use crate::config::ServerConfig;
use crate::connection::{Activity, Connection, ConnectionLimit, IDLE_CLOSE_GRACE, StreamExecutor};
use crate::metrics::Metrics;
use crate::ops::Ops;
use crate::proxy::{Answer, Client, Proxy, host_from_authority};
use crate::realtime::Gate;
use crate::shutdown::Shutdown;
use crate::supervisor::AppGate;

/// Routes requests: the Socket.IO path to sockgate's own endpoint, everything else to the app.
/// Built once at startup.
pub struct Router {
    /// The Socket.IO endpoint's way in: every check of a request under `realtime.path`.
    pub realtime: Gate,
    pub proxy: Proxy,
    pub gate: AppGate,
    /// Public readiness path, when configured.
    pub health_path: Option<String>,
    pub ops: Ops,
    pub metrics: Arc<Metrics>,
}

impl Router {
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        client: &Client,
        conduct: Option<&Arc<Conduct>>,
    ) -> Response<Answer> {
        host_from_authority(&mut req);
        let path = req.uri().path();
        // The readiness check and the Socket.IO path are boxed: their futures (the app probe,
        // the session check, Engine.IO) are kilobytes, and inline they would make every
        // proxied request's future as large, which hyper moves (copies) to start it.
        if self.health_path.as_deref() == Some(path) {
            return Box::pin(self.ops.readiness()).await.map(Either::Right);
        }
        let realtime = self.realtime.serves(path);
        if !self.gate.is_open() {
            if realtime {
                self.realtime.refused_app_starting();
            }
            return unavailable("the app is starting; retry in a moment").map(Either::Right);
        }
        if realtime {
            Box::pin(self.realtime.handle(req, client.peer))
                .await
                .map(Either::Right)
        } else {
            self.proxy.forward(req, client, conduct).await
        }
    }
}

/// Waits (up to `limit`) until the client has sent enough to tell HTTP/1 from HTTP/2, and
/// says which (`None`: neither came). The per-head read timeout starts only after that, so
/// without this a client that connects and sends nothing — or half the HTTP/2 preface — would
/// hold its connection forever. A connection that does not open with the preface is HTTP/1.x
/// for good (hyper serves HTTP/2 only with prior knowledge; an `h2c` upgrade is not taken),
/// and its request heads get `limit` each from here on ([`Connection::read_heads_within`]).
async fn request_started(stream: &mut Connection, limit: std::time::Duration) -> Option<Version> {
    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let wait = async {
        let mut buf = [0u8; 24];
        loop {
            match stream.stream().peek(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) if !H2_PREFACE.starts_with(&buf[..n]) => return Some(Version::HTTP_11),
                Ok(n) if n >= H2_PREFACE.len() => return Some(Version::HTTP_2),
                // Part of the HTTP/2 preface: peek returns at once, so pause before looking again.
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    };
    let version = tokio::time::timeout(limit, wait).await.ok().flatten()?;
    if version != Version::HTTP_2 {
        stream.read_heads_within(limit);
    }
    Some(version)
}

/// Completes once the connection of `conduct` has been reported for abuse; never without one.
async fn reported(conduct: Option<&Arc<Conduct>>) {
    match conduct {
        Some(conduct) => conduct.abused().await,
        None => std::future::pending().await,
    }
}

fn unavailable(message: &str) -> Response<Body> {
    let mut resp = body::text(StatusCode::SERVICE_UNAVAILABLE, message);
    resp.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    resp
}

/// Accepts connections until shutdown begins, then waits (up to the drain deadline) for
/// in-flight requests to finish.
pub async fn serve(
    listener: TcpListener,
    router: Arc<Router>,
    config: &ServerConfig,
    shutdown: Shutdown,
) {
    let builder = connection_builder(config);
    let limit = ConnectionLimit::new(config.max_connections);
    tracing::info!(
        max = limit.max(),
        "client connection cap (server.max_connections)"
    );
    let accepting = accept::serve(
        listener,
        |e| tracing::warn!("accept failed: {e}"),
        Until::Draining,
        &shutdown,
        |stream, peer, drain| {
            let Some(place) = limit.admit() else {
                tracing::debug!(%peer, max = limit.max(), "connection refused: too many open (server.max_connections)");
                drop(stream);
                return None;
            };
            let _ = stream.set_nodelay(true);
            let (stream, activity) = Connection::new(stream, place, config.idle_timeout);
            Some(serve_connection(
                stream,
                activity,
                peer,
                router.clone(),
                config,
                builder.clone(),
                drain,
            ))
        },
    );
    match accepting.await {
        Drained::All => tracing::info!("all HTTP connections drained"),
        Drained::Cut => tracing::warn!("drain deadline passed: open HTTP connections cut"),
    }
}

/// The HTTP servers of a client connection, with the limits of `server.*`.
///
/// HTTP/1.x connections (the version is known before serving: `request_started`) are served
/// by hyper's own HTTP/1 server, as hyper-util's auto builder would serve them, but without
/// its wrapper: an upgraded connection is then sockgate's [`Connection`] itself, which
/// `connection::raw_tcp` gives back to the engine as its TCP stream (issue 32 stage 3).
#[derive(Clone)]
struct Builders {
    http1: http1::Builder,
    /// h2c.
    auto: auto::Builder<StreamExecutor>,
}

fn connection_builder(config: &ServerConfig) -> Builders {
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        // Kept by the connection's own timer (`Connection::read_heads_within`): hyper's boxes
        // and registers a new timer for every request.
        .header_read_timeout(None)
        .max_buf_size(config.max_header_bytes.max(8192))
        .keep_alive(true);
    // Only for connections that opened with the HTTP/2 preface (`request_started`): its
    // HTTP/1 side is never used, so it has no settings.
    let mut builder = auto::Builder::new(StreamExecutor);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(config.max_concurrent_streams)
        // A peer that stops answering PINGs is gone, even in the middle of a long stream.
        .keep_alive_interval(Some(config.idle_timeout))
        .keep_alive_timeout(config.header_read_timeout);
    Builders {
        http1,
        auto: builder,
    }
}

/// What each request of one client connection is served with: one reference to take per
/// request, however many parts.
struct Serving {
    router: Arc<Router>,
    client: Client,
    /// HTTP/2 only.
    conduct: Option<Arc<Conduct>>,
}

/// One client connection's task: its requests go to the router until it closes, goes idle,
/// stalls, abuses HTTP/2 or the drain begins.
fn serve_connection(
    mut stream: Connection,
    activity: Arc<Activity>,
    peer: SocketAddr,
    router: Arc<Router>,
    config: &ServerConfig,
    builder: Builders,
    drain: Drain,
) -> impl Future<Output = ()> + Send + 'static {
    let header_read_timeout = config.header_read_timeout;
    let idle = activity.clone();
    let send_stall_timeout = config.send_stall_timeout;
    let metrics = router.metrics.clone();
    let max_concurrent_streams = config.max_concurrent_streams;
    async move {
        let Some(version) = request_started(&mut stream, header_read_timeout).await else {
            tracing::debug!(%peer, "connection closed: no request within the header read timeout");
            return;
        };
        // Only HTTP/2 has app slots to hold and abuse to report: an HTTP/1.1 connection's
        // requests carry no `Conduct`, and its task watches for no report.
        let watch = (version == Version::HTTP_2)
            .then(|| Conduct::new(peer, max_concurrent_streams, metrics.clone()));
        let serving = Arc::new(Serving {
            router,
            client: Client::new(peer),
            conduct: watch.clone(),
        });
        let service = hyper::service::service_fn(move |req| {
            let serving = serving.clone();
            let request = activity.request();
            async move {
                let Serving {
                    router,
                    client,
                    conduct,
                } = &*serving;
                let resp = router.handle(req, client, conduct.as_ref()).await;
                Ok::<_, Infallible>(request.respond(resp))
            }
        });
        let stalled = idle.send_stalled(send_stall_timeout, peer, &metrics);
        let io = TokioIo::new(stream);
        let ended = if version == Version::HTTP_2 {
            let conn = builder.auto.serve_connection_with_upgrades(io, service);
            let shutdown = |conn: Pin<&mut _>| auto::UpgradeableConnection::graceful_shutdown(conn);
            drive(conn, shutdown, watch, &idle, &drain, stalled).await
        } else {
            let conn = builder.http1.serve_connection(io, service).with_upgrades();
            let shutdown =
                |conn: Pin<&mut _>| http1::UpgradeableConnection::graceful_shutdown(conn);
            drive(conn, shutdown, watch, &idle, &drain, stalled).await
        };
        if let Err(e) = ended {
            tracing::debug!(%peer, "connection ended: {e}");
        }
    }
}

/// Serves one connection until it ends, goes idle, stalls (`stalled`), abuses HTTP/2 or the
/// drain begins.
async fn drive<C, E>(
    conn: C,
    mut graceful_shutdown: impl FnMut(Pin<&mut C>),
    watch: Option<Arc<Conduct>>,
    idle: &Activity,
    drain: &Drain,
    stalled: impl Future<Output = ()>,
) -> Result<(), String>
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    tokio::pin!(stalled);
    // Shut down gracefully (GOAWAY for HTTP/2: streams in flight finish) when the
    // connection has been idle for server.idle_timeout_ms, or when the drain begins.
    // A connection that abuses HTTP/2 gets the GOAWAY too, and is cut after a grace.
    let mut closing = false;
    let cut = tokio::time::sleep(std::time::Duration::MAX);
    tokio::pin!(cut);
    let mut abused = false;
    loop {
        tokio::select! {
            ended = Polling::new(watch.as_ref(), conn.as_mut()) => {
                return ended.map_err(|e| e.to_string());
            }
            // An HTTP/1.1 response the client stopped taking: dropping the connection
            // closes it and the app connection its body holds.
            () = &mut stalled => return Ok(()),
            () = reported(watch.as_ref()), if watch.is_some() && !abused => {
                abused = true;
                if !std::mem::replace(&mut closing, true) {
                    graceful_shutdown(conn.as_mut());
                }
                cut.as_mut().reset(tokio::time::Instant::now() + IDLE_CLOSE_GRACE);
            }
            _ = &mut cut, if abused => return Ok(()),
            () = idle_or_draining(idle, drain), if !closing => {
                closing = true;
                graceful_shutdown(conn.as_mut());
            }
        }
    }
}

/// When a connection should close gracefully: it went idle, or the drain began.
async fn idle_or_draining(idle: &Activity, drain: &Drain) {
    tokio::select! {
        () = idle.went_idle() => {}
        _ = drain.started() => {}
    }
}
