//! The public server: accepts connections, speaks HTTP/1.1 and h2c, and routes each request
//! to the Socket.IO endpoint or to the proxy.
//!
//! The router is built once at startup and shared by every connection; only the peer address
//! is per connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::body::{self, Body};
use crate::config::{ServerConfig, ms};
use crate::proxy::Proxy;
use crate::realtime::{OriginPolicy, RealtimeService};
use crate::shutdown::Shutdown;
use crate::supervisor::AppGate;

/// Routes requests: the Socket.IO path to sockgate's own endpoint, everything else to the app.
pub struct Router {
    realtime_path: String,
    origin: OriginPolicy,
    realtime: RealtimeService,
    proxy: Proxy,
    gate: AppGate,
}

impl Router {
    pub fn new(
        realtime_path: String,
        origin: OriginPolicy,
        realtime: RealtimeService,
        proxy: Proxy,
        gate: AppGate,
    ) -> Self {
        Self {
            realtime_path,
            origin,
            realtime,
            proxy,
            gate,
        }
    }

    /// Whether `path` is under the Socket.IO path, respecting the segment boundary
    /// (`/socket.io-admin` belongs to the app).
    fn is_realtime(&self, path: &str) -> bool {
        path.strip_prefix(self.realtime_path.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        if !self.gate.is_open() {
            let mut resp = body::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the app is starting; retry in a moment",
            );
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            return resp;
        }
        if !self.is_realtime(req.uri().path()) {
            return self.proxy.forward(req, peer).await;
        }
        if let Err(reason) = self.origin.check(req.headers()) {
            tracing::warn!(%peer, "Socket.IO handshake refused: {reason}");
            return body::text(StatusCode::FORBIDDEN, "origin not allowed");
        }
        match self.realtime.clone().oneshot(req).await {
            Ok(resp) => resp.map(body::boxed),
            Err(never) => match never {},
        }
    }
}

/// Accepts connections until shutdown begins, then waits (up to the drain deadline) for
/// in-flight requests to finish.
pub async fn serve(
    listener: TcpListener,
    router: Arc<Router>,
    config: &ServerConfig,
    shutdown: Shutdown,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ms(config.header_read_timeout_ms))
        .max_buf_size(config.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
    let graceful = GracefulShutdown::new();

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.draining() => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |req| {
            let router = router.clone();
            async move { Ok::<_, Infallible>(router.handle(req, peer).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all HTTP connections drained"),
        _ = shutdown.forced() => tracing::warn!("drain deadline passed: open HTTP connections cut"),
    }
}
