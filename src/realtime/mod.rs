//! The Socket.IO endpoint sockgate answers itself: Engine.IO v4 / Socket.IO v5 over HTTP
//! long-polling and WebSocket, via `socketioxide`.
//!
//! The service is built once. A socket gets in only through the session check (`auth`), then
//! joins its user's room and the rooms its session lists. It is one-way by design: the server
//! emits, and whatever a client emits is dropped unread, except `subscribe`/`unsubscribe`/
//! `presence`, which `channels` handles with the app's authorization.

mod admission;
mod auth;
mod channels;
mod connect;
mod figures;
mod history;
mod hub;
mod kicks;
mod origin;
mod outage;
mod recovery;
mod relay;
mod revalidation;
mod rooms;
mod roster;
mod session;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use socketioxide::adapter::Adapter;
use socketioxide::service::SocketIoService;
use socketioxide::{SocketIo, TransportType};
use tower::ServiceExt;
use tower::util::{BoxCloneSyncService, service_fn};

use crate::body::{self, Body};
use crate::cluster::{Cluster, ClusterAdapter};
use crate::config::{Config, Parser, Transport, ms};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::upload::Upload;
use crate::webhooks::Webhooks;

pub use admission::Admission;
pub use auth::{AuthError, Credentials, Session, SessionAuth};
use channels::Channels;
use connect::{Handlers, register};
pub use figures::{HubStats, Presence};
use history::{History, Journal};
pub use hub::{DRAINING, Hub, Target};
pub use origin::OriginPolicy;
use recovery::Recovery;
use relay::Relay;
use revalidation::Revalidation;
pub use rooms::RoomRules;
pub use roster::Member;
use roster::Roster;
pub use session::{RECOVERY_FAILED, SOCKGATE_EVENTS};
use socketioxide_redis::drivers::Driver;

/// The Socket.IO endpoint as the router sees it: any adapter, one body type.
/// Request bodies reach Engine.IO through [`Upload`]: a polling POST must keep up the same
/// minimum data rate as a proxied upload.
pub type RealtimeService =
    BoxCloneSyncService<http::Request<Upload>, http::Response<Body>, Infallible>;

/// A running Socket.IO endpoint.
pub struct Realtime {
    pub service: RealtimeService,
    pub hub: Arc<Hub>,
    pub open: OpenSockets,
    pub admission: Admission,
}

/// Realtime connections open or opening on this instance: each holds a [`Slot`] from its
/// handshake until the connection is gone, so the cap holds even for handshakes that arrive
/// together and costs nothing per request.
#[derive(Clone, Default, Debug)]
pub struct OpenSockets(Arc<AtomicUsize>);

impl OpenSockets {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// A slot if fewer than `max` are taken.
    pub fn reserve(&self, max: usize) -> Option<Slot> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::new(SlotGuard(self.clone()))))
    }
}

/// One connection's place under `realtime.max_connections`. It rides in the handshake
/// request's extensions, which the Engine.IO session keeps for its whole life; the place is
/// given back when the last copy is dropped (handshake refused, or session closed).
#[derive(Clone, Debug)]
pub struct Slot(
    #[allow(dead_code)] // held for its Drop
    Arc<SlotGuard>,
);

#[derive(Debug)]
struct SlotGuard(OpenSockets);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Builds the Socket.IO service once — in memory, or on the Redis adapter when `cluster` is
/// given — and starts session revalidation.
pub async fn start(
    settings: &Config,
    cluster: Option<Cluster>,
    auth: Arc<SessionAuth>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> anyhow::Result<Realtime> {
    let config = &settings.realtime;
    let redis = cluster
        .as_ref()
        .map(|c| (c.commands.clone(), c.link.clone()));
    let webhooks = Webhooks::start(settings, redis.clone(), metrics.clone());
    let roster = Arc::new(Roster::start(settings, redis, webhooks.clone()));
    let kept = &settings.history;
    let history = match (&cluster, kept.enabled) {
        (_, false) => None,
        (None, true) => Some(History::memory(
            kept.max_messages,
            ms(kept.max_age_ms),
            kept.max_bytes,
            metrics.clone(),
        )),
        (Some(c), true) => Some(History::redis(
            c.commands.clone(),
            c.link.clone(),
            kept.max_messages,
            ms(kept.max_age_ms),
        )),
    };
    let relay = match (&cluster, history.as_ref().and_then(History::shared)) {
        // On a Redis Cluster the append script may not publish to the relay's channel (another
        // slot than the stream's): kept messages go through the adapter, as while an older
        // sockgate is connected — at least once across instances, clients dropping offsets
        // they have seen (README, "Managed Redis").
        (Some(c), Some(_)) if c.redis_cluster => {
            tracing::info!(
                "Redis Cluster: kept messages cross instances through the adapter (at least \
                 once; clients drop offsets they have seen), not sockgate's relay"
            );
            None
        }
        (Some(c), Some(shared)) => Some((
            Arc::new(Relay::new(
                shared.clone(),
                socketioxide_core::Uid::new().to_string(),
                config.room_prefix.as_str().into(),
            )),
            c.driver
                .subscribe(relay::CHANNEL.into(), RELAY_BUFFER)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot subscribe to `{}` in Redis: {e}", relay::CHANNEL)
                })?,
            // Nothing is published there: listening says "this instance relays channels".
            c.driver
                .subscribe(relay::ROOMS_CHANNEL.into(), 1)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot subscribe to `{}` in Redis: {e}",
                        relay::ROOMS_CHANNEL
                    )
                })?,
        )),
        _ => None,
    };
    let journal = Arc::new(Journal::new(history));
    let channels = Arc::new(Channels::new(
        settings,
        auth.clone(),
        roster.clone(),
        webhooks.clone(),
        Recovery {
            journal: journal.clone(),
            relay: relay.as_ref().map(|(r, ..)| r.clone()),
            metrics: metrics.clone(),
        },
    ));
    let revalidation = Revalidation {
        every: Some(ms(settings.auth.revalidate_interval_ms)).filter(|d| !d.is_zero()),
        concurrency: settings.auth.max_concurrent,
        shutdown,
        channels: channels.clone(),
    };
    if let Some(c) = &cluster {
        auth.share_kicks(
            c.commands.clone(),
            c.link.clone(),
            ms(settings.cluster.request_timeout_ms),
        );
    }
    let builder = SocketIo::builder()
        .req_path(config.path.clone())
        .ping_interval(ms(config.ping_interval_ms))
        .ping_timeout(ms(config.ping_timeout_ms))
        .max_payload(config.max_poll_payload_bytes)
        .ws_max_message_size(config.max_ws_message_bytes)
        .ws_max_frame_size(config.max_ws_message_bytes)
        .max_buffer_size(config.max_buffer_size)
        .ws_read_buffer_size(config.ws_read_buffer_bytes)
        .connect_timeout(ms(config.connect_timeout_ms));
    let builder = match config.parser {
        Parser::Default => builder,
        Parser::Msgpack => builder.with_parser(socketioxide::ParserConfig::msgpack()),
    };
    let has = |t| config.transports.contains(&t);
    let builder = match (has(Transport::Polling), has(Transport::Websocket)) {
        (true, false) => builder.transports([TransportType::Polling]),
        (false, true) => builder.transports([TransportType::Websocket]),
        _ => builder.transports([TransportType::Polling, TransportType::Websocket]),
    };
    let open = OpenSockets::default();
    let mut kept_headers: Vec<_> = auth
        .read_headers()
        .chain(ENGINE_IO_HEADERS)
        .cloned()
        .collect();
    kept_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    kept_headers.dedup();
    let kept_headers = Handshake {
        headers: kept_headers.into(),
        accept_binary: config.parser == Parser::Msgpack,
        close_when_full: slow_consumer_closed(metrics.clone()),
    };
    let admission = Admission::new(auth.clone(), config.max_pending_connections);
    let handlers = Handlers {
        auth: auth.clone(),
        metrics: metrics.clone(),
        room_prefix: config.room_prefix.clone().into(),
        journal: journal.clone(),
        relay: relay.as_ref().map(|(r, ..)| r.clone()),
        webhooks,
        channels,
        max_sockets_per_user: config.max_sockets_per_user,
    };
    let room_prefix = config.room_prefix.clone();
    let draining = revalidation.shutdown.clone();
    let (service, hub) = match cluster {
        None => {
            let (svc, io) = builder.build_with_inner_svc(not_found());
            register(&io, handlers);
            roster.announce_on(io.clone());
            tokio::spawn(revalidation.run(io.clone(), auth));
            (
                erase(svc, kept_headers),
                Hub::local(io, room_prefix, metrics, journal, roster),
            )
        }
        Some(Cluster {
            adapter,
            link,
            canary,
            queries,
            ..
        }) => {
            let (svc, io) = builder
                .with_adapter::<ClusterAdapter>(adapter)
                .build_with_inner_svc(not_found());
            register(&io, handlers).await.map_err(|e| {
                anyhow::anyhow!("cannot subscribe to the cluster's Redis channels: {e}")
            })?;
            roster.announce_on(io.clone());
            tokio::spawn(canary.run(
                link.clone(),
                metrics.clone(),
                revalidation.shutdown.clone(),
                io.config().server_id,
            ));
            let relay = relay.map(|(relay, channel, marker)| {
                tokio::spawn(relay.clone().run(
                    io.clone(),
                    journal.clone(),
                    channel,
                    marker,
                    link.clone(),
                    revalidation.shutdown.clone(),
                ));
                relay
            });
            tokio::spawn(revalidation.run(io.clone(), auth));
            (
                erase(svc, kept_headers),
                Hub::cluster(
                    io,
                    link,
                    queries,
                    room_prefix,
                    metrics,
                    journal,
                    relay,
                    roster,
                ),
            )
        }
    };
    let hub = Arc::new(hub);
    tokio::spawn(hub.clone().tell_after_outages(draining));
    Ok(Realtime {
        service,
        hub,
        open,
        admission,
    })
}

type NotFound = BoxCloneSyncService<
    http::Request<Upload>,
    http::Response<http_body_util::Empty<bytes::Bytes>>,
    Infallible,
>;

/// Socket.IO only sees requests the router already matched; anything else is a 404.
fn not_found() -> NotFound {
    BoxCloneSyncService::new(service_fn(|_req| async {
        let mut resp = http::Response::new(http_body_util::Empty::new());
        *resp.status_mut() = http::StatusCode::NOT_FOUND;
        Ok::<_, Infallible>(resp)
    }))
}

fn erase<A: Adapter>(svc: SocketIoService<NotFound, A>, kept: Handshake) -> RealtimeService {
    let svc = ServiceExt::<http::Request<Upload>>::map_response(svc, body::boxed_response)
        .map_request(move |req| kept.prepare(req));
    BoxCloneSyncService::new(svc)
}

/// The headers a session keeps from its handshake: what the session check reads, and what
/// Engine.IO reads from the request it is handed.
type KeptHeaders = Arc<[http::HeaderName]>;

/// How a handshake request is prepared before Engine.IO keeps it for the session's life.
#[derive(Clone)]
struct Handshake {
    headers: KeptHeaders,
    /// With the msgpack parser every Socket.IO packet from a client is an Engine.IO binary
    /// message, which the engine refuses unless the session is marked.
    accept_binary: bool,
    /// Every session is closed the moment its queue is full (a slow consumer), whatever
    /// filled it: a publish made here, a broadcast or a kick arriving from another instance.
    close_when_full: engineioxide::CloseWhenFull,
}

impl Handshake {
    fn prepare<B>(&self, req: http::Request<B>) -> http::Request<B> {
        let mut req = detach_handshake_head(req, &self.headers);
        if is_handshake(&req) {
            if self.accept_binary {
                req.extensions_mut().insert(engineioxide::AcceptBinary);
            }
            req.extensions_mut().insert(self.close_when_full.clone());
        }
        req
    }
}

/// Counts and logs a slow consumer, once per socket: the engine calls it when it closes a
/// session whose queue is full.
fn slow_consumer_closed(metrics: Arc<Metrics>) -> engineioxide::CloseWhenFull {
    engineioxide::CloseWhenFull(Arc::new(move || {
        metrics.slow_consumer();
        tracing::warn!("socket buffer full: slow consumer disconnected");
    }))
}
const ENGINE_IO_HEADERS: [&http::HeaderName; 2] = [
    &http::header::SEC_WEBSOCKET_KEY,
    &http::header::CONTENT_TYPE,
];

/// A new Engine.IO session (no `sid` yet), as opposed to traffic of an open one.
pub fn is_handshake<B>(req: &http::Request<B>) -> bool {
    !req.uri()
        .query()
        .is_some_and(|q| q.split('&').any(|pair| pair.starts_with("sid=")))
}

/// A handshake with its URI and the headers that are read later copied into their own
/// allocations. socketioxide keeps each session's handshake head for the session's life, and
/// hyper's parsed headers are slices of the connection's 8 KiB read buffer: without the copy
/// every idle socket would pin a whole read buffer, and with all the headers (a browser sends
/// a dozen) it would keep ≈ 1 KiB nobody reads.
fn detach_handshake_head<B>(req: http::Request<B>, kept: &[http::HeaderName]) -> http::Request<B> {
    if !is_handshake(&req) {
        return req;
    }
    let (mut parts, body) = req.into_parts();
    let present = kept
        .iter()
        .map(|name| parts.headers.get_all(name).iter().count())
        .sum();
    let mut headers = http::HeaderMap::with_capacity(present);
    for name in kept {
        for value in parts.headers.get_all(name) {
            if let Ok(value) = http::HeaderValue::from_bytes(value.as_bytes()) {
                headers.append(name.clone(), value);
            }
        }
    }
    parts.headers = headers;
    if let Ok(uri) = parts.uri.to_string().parse() {
        parts.uri = uri;
    }
    http::Request::from_parts(parts, body)
}

/// Kept messages of other instances buffered between Redis and the relay.
const RELAY_BUFFER: usize = 16 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> http::Request<()> {
        http::Request::builder()
            .uri(uri)
            .header("host", "example.com")
            .header("cookie", "sid=a")
            .header("cookie", "theme=dark")
            .header("user-agent", "Mozilla/5.0 (a long browser string)")
            .header("accept-language", "en")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap()
    }

    #[test]
    fn a_handshake_keeps_only_the_headers_read_later() {
        let kept: KeptHeaders = ["cookie", "host", "sec-websocket-key"]
            .map(http::HeaderName::from_static)
            .into();
        let req = detach_handshake_head(request("/socket.io/?EIO=4&transport=websocket"), &kept);
        let headers = req.headers();
        assert_eq!(headers.len(), 4, "{headers:?}");
        let cookies: Vec<_> = headers.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["sid=a", "theme=dark"]);
        assert_eq!(headers["host"], "example.com");
        assert!(headers.get("user-agent").is_none());
        assert!(headers.get("accept-language").is_none());
        assert_eq!(req.uri(), "/socket.io/?EIO=4&transport=websocket");
    }

    #[test]
    fn traffic_of_an_open_session_is_left_alone() {
        let kept: KeptHeaders = [http::HeaderName::from_static("cookie")].into();
        let req = detach_handshake_head(
            request("/socket.io/?EIO=4&transport=polling&sid=abc"),
            &kept,
        );
        assert_eq!(req.headers().len(), 6);
    }
}
