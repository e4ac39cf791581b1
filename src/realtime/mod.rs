//! The Socket.IO endpoint sockgate answers itself: Engine.IO v4 / Socket.IO v5 over HTTP
//! long-polling and WebSocket, via `socketioxide`.
//!
//! The service is built once. A socket gets in only through the session check (`auth`), then
//! joins its user's room. It is one-way by design: the server emits, and whatever a client
//! emits is dropped unread (no handlers are registered).

mod auth;
mod hub;
mod origin;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use socketioxide::extract::SocketRef;
use socketioxide::handler::ConnectHandler;
use socketioxide::service::SocketIoService;
use socketioxide::{SocketIo, TransportType};
use tower::util::{BoxCloneSyncService, service_fn};

use crate::config::{RealtimeConfig, Transport, ms};
use crate::metrics::{Metrics, Reject};
use crate::shutdown::Shutdown;

pub use auth::{AuthError, Credentials, SessionAuth};
pub use hub::{Hub, HubStats, Target};
pub use origin::OriginPolicy;

/// What an authenticated socket carries for later checks.
#[derive(Clone)]
struct Identity {
    user_id: Arc<str>,
    credentials: Credentials,
}

/// The socketioxide service, with nothing behind it: routing to it is the server's job.
pub type RealtimeService = SocketIoService<
    BoxCloneSyncService<
        http::Request<hyper::body::Incoming>,
        http::Response<http_body_util::Empty<bytes::Bytes>>,
        std::convert::Infallible,
    >,
>;

/// Sockets currently connected on this instance, kept by connect/disconnect so the
/// connection cap costs nothing per handshake.
#[derive(Clone, Default, Debug)]
pub struct OpenSockets(Arc<AtomicUsize>);

impl OpenSockets {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Builds the Socket.IO service and the handle used to reach its sockets.
pub fn build(
    config: &RealtimeConfig,
    auth: Arc<SessionAuth>,
    metrics: Arc<Metrics>,
) -> (RealtimeService, SocketIo, OpenSockets) {
    let builder = SocketIo::builder()
        .req_path(config.path.clone())
        .ping_interval(ms(config.ping_interval_ms))
        .ping_timeout(ms(config.ping_timeout_ms))
        .max_payload(config.max_poll_payload_bytes)
        .ws_max_message_size(config.max_ws_message_bytes)
        .ws_max_frame_size(config.max_ws_message_bytes)
        .max_buffer_size(config.max_buffer_size);
    let has = |t| config.transports.contains(&t);
    let builder = match (has(Transport::Polling), has(Transport::Websocket)) {
        (true, false) => builder.transports([TransportType::Polling]),
        (false, true) => builder.transports([TransportType::Websocket]),
        _ => builder.transports([TransportType::Polling, TransportType::Websocket]),
    };
    let not_found = BoxCloneSyncService::new(service_fn(|_req| async {
        let mut resp = http::Response::new(http_body_util::Empty::new());
        *resp.status_mut() = http::StatusCode::NOT_FOUND;
        Ok::<_, std::convert::Infallible>(resp)
    }));
    let (svc, io) = builder.build_with_inner_svc(not_found);

    let room_prefix: Arc<str> = config.room_prefix.clone().into();
    let open = OpenSockets::default();
    let check = {
        let metrics = metrics.clone();
        move |socket: SocketRef| authenticate(socket, auth, metrics)
    };
    let on_connect = {
        let open = open.clone();
        move |socket: SocketRef| join_user_room(socket, room_prefix, open, metrics)
    };
    io.ns("/", on_connect.with(check));
    (svc, io, open)
}

async fn authenticate(
    socket: SocketRef,
    auth: Arc<SessionAuth>,
    metrics: Arc<Metrics>,
) -> Result<(), AuthError> {
    let result = check_session(&socket, &auth).await;
    if let Err(e) = &result {
        metrics.rejected(match e {
            AuthError::Unauthorized => Reject::Unauthorized,
            AuthError::Unavailable(_) => Reject::SessionUnavailable,
        });
    }
    result
}

async fn check_session(socket: &SocketRef, auth: &SessionAuth) -> Result<(), AuthError> {
    let Some(credentials) = auth.credentials(&socket.req_parts().headers) else {
        tracing::debug!(sid = %socket.id, "socket refused: no cookie");
        return Err(AuthError::Unauthorized);
    };
    match auth.authenticate(&credentials).await {
        Ok(user_id) => {
            socket.extensions.insert(Identity {
                user_id,
                credentials,
            });
            Ok(())
        }
        Err(e) => {
            tracing::debug!(sid = %socket.id, "socket refused: {e}");
            Err(e)
        }
    }
}

async fn join_user_room(
    socket: SocketRef,
    room_prefix: Arc<str>,
    open: OpenSockets,
    metrics: Arc<Metrics>,
) {
    let Some(identity) = socket.extensions.get::<Identity>() else {
        // Unreachable: the middleware only lets authenticated sockets through.
        let _ = socket.disconnect();
        return;
    };
    socket.join(format!("{room_prefix}{}", identity.user_id));
    metrics.connected();
    open.0.fetch_add(1, Ordering::Relaxed);
    socket.on_disconnect(move || async move {
        open.0.fetch_sub(1, Ordering::Relaxed);
    });
    tracing::debug!(sid = %socket.id, user = %identity.user_id, transport = ?socket.transport_type(), "socket connected");
}

/// Re-checks every connected socket's session every `interval`; a socket whose session ended
/// (logout, expiry) or now belongs to someone else is disconnected.
pub async fn revalidate_forever(
    io: SocketIo,
    auth: Arc<SessionAuth>,
    interval: Duration,
    concurrency: usize,
    shutdown: Shutdown,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.draining() => return,
        }
        let checks = io.sockets().into_iter().filter_map(|socket| {
            let identity = socket.extensions.get::<Identity>()?;
            let auth = auth.clone();
            Some(async move {
                match auth.authenticate(&identity.credentials).await {
                    Ok(id) if id == identity.user_id => false,
                    Ok(_) | Err(AuthError::Unauthorized) => {
                        tracing::info!(sid = %socket.id, user = %identity.user_id, "session ended: socket disconnected");
                        let _ = socket.disconnect();
                        true
                    }
                    // The app is unreachable: keep the socket; the next round decides.
                    Err(AuthError::Unavailable(_)) => false,
                }
            })
        });
        let closed = futures_util::stream::iter(checks)
            .buffer_unordered(concurrency.max(1))
            .filter(|closed| std::future::ready(*closed))
            .count()
            .await;
        if closed > 0 {
            tracing::info!(closed, "revalidation closed sockets whose session ended");
        }
    }
}
