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
mod connect_auth;
mod history;
mod hub;
mod kicks;
mod origin;
mod outage;
mod relay;
mod roster;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;

use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::handler::ConnectHandler;
use socketioxide::service::SocketIoService;
use socketioxide::{SocketIo, TransportType, socket::DisconnectReason};
use socketioxide_core::adapter::DefinedAdapter;
use tower::ServiceExt;
use tower::util::{BoxCloneSyncService, service_fn};

use crate::body::{self, Body};
use crate::cluster::{Cluster, ClusterAdapter};
use crate::config::{Config, Parser, Transport, ms};
use crate::metrics::{Metrics, Reject};
use crate::shutdown::Shutdown;
use crate::upload::Upload;
use crate::webhooks::Webhooks;

pub use admission::Admission;
use admission::Ticket;
pub use auth::{AuthError, Credentials, Session, SessionAuth};
use channels::Channels;
pub use channels::RoomRules;
use connect_auth::{AuthTooLarge, ConnectAuth};
use history::{Head, History, Journal, Replay, Since};
pub use hub::{DRAINING, Hub, HubStats, Presence, Target};
pub use origin::OriginPolicy;
use relay::{Reached, Relay};
pub use roster::Member;
use roster::Roster;
use socketioxide_redis::drivers::Driver;

/// What an authenticated socket carries for later checks. Its credentials are read again
/// from the handshake head, which the session keeps anyway.
#[derive(Clone)]
struct Identity {
    user_id: Arc<str>,
    /// What presence rooms show of the user (`auth.user_info_pointer`).
    info: Option<Arc<str>>,
    /// The handshake asked for offsets (`auth.offset` or `auth.offsets`): kept messages of
    /// every room it joins come as `(data, {offset, room})`.
    offsets: bool,
}

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

/// What a replay needs: the history and its locks, the relay, the metrics. Shared by the
/// connect path and `subscribe`.
#[derive(Clone)]
struct Recovery {
    journal: Arc<Journal>,
    relay: Option<Arc<Relay>>,
    metrics: Arc<Metrics>,
}

impl Recovery {
    /// The history, when enabled.
    fn history(&self) -> Option<&History> {
        self.journal.history()
    }
}

/// What the connect path needs, shared by every socket.
#[derive(Clone)]
struct Handlers {
    auth: Arc<SessionAuth>,
    metrics: Arc<Metrics>,
    room_prefix: Arc<str>,
    journal: Arc<Journal>,
    relay: Option<Arc<Relay>>,
    webhooks: Webhooks,
    channels: Arc<Channels>,
    max_sockets_per_user: usize,
    max_auth_bytes: usize,
}

/// Where a socket's replay starts, and in which shape it gets user messages, decided at the
/// handshake.
#[derive(Clone)]
struct ReplayFrom {
    since: Since,
    shape: Shape,
}

/// How a socket gets its user room's messages. Socket.IO clients in other languages call a
/// handler with every argument sent (python-socketio raises on an extra one), so the offset
/// goes only to sockets that asked for recovery.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Exactly what was published: one argument.
    Plain,
    /// `(data, {offset, room})`: the handshake's `auth` has an `offset` key (even `null`) or
    /// an `offsets` key.
    WithOffset,
}

impl Shape {
    fn asked(auth: Option<&serde_json::Value>) -> Self {
        match auth.filter(|a| a.get("offset").is_some() || a.get("offsets").is_some()) {
            Some(_) => Shape::WithOffset,
            None => Shape::Plain,
        }
    }
}

/// Longest offset taken from a client, in bytes (sockgate's own are under 64).
const MAX_OFFSET_BYTES: usize = 128;

/// What a handshake's `auth.offsets` (`{"<room>": "<last offset seen>"}`) asks for, bounded:
/// at most `max` entries are read (the rooms of later ones get `recovery_failed`, as do
/// offsets that are not strings or longer than [`MAX_OFFSET_BYTES`]; an empty offset is
/// never one sockgate issued, so it makes the replay a gap). Only the user's own room and
/// its session's rooms count: an entry for any other room is dropped unread, so a client
/// never gets the history of a room it is not in.
#[derive(Default, Debug, PartialEq)]
struct AskedOffsets {
    /// The user room's entry (`auth.offset` wins over it).
    user: Option<String>,
    /// Session rooms to replay from the offset given.
    rooms: Vec<(Arc<str>, String)>,
}

impl AskedOffsets {
    fn read(
        auth: Option<&serde_json::Value>,
        user_room: &str,
        session: &[Arc<str>],
        max: usize,
        socket: &str,
    ) -> Self {
        let mut asked = AskedOffsets::default();
        let Some(map) = auth.and_then(|a| a.get("offsets")) else {
            return asked;
        };
        let Some(map) = map.as_object() else {
            if !map.is_null() {
                tracing::warn!(socket, "auth.offsets is not an object: ignored");
            }
            return asked;
        };
        let (mut past, mut bad, mut strangers) = (0usize, 0usize, 0usize);
        for (i, (room, offset)) in map.iter().enumerate() {
            let member = match session.iter().find(|r| ***r == **room) {
                Some(room) => Some(room.clone()),
                None if room == user_room => None,
                None => {
                    strangers += 1;
                    continue;
                }
            };
            let offset = match offset {
                // "Seen nothing yet": live from the join, as without an entry.
                serde_json::Value::Null => continue,
                _ if i >= max => {
                    past += 1;
                    String::new()
                }
                serde_json::Value::String(o) if o.len() <= MAX_OFFSET_BYTES && !o.is_empty() => {
                    o.clone()
                }
                _ => {
                    bad += 1;
                    String::new()
                }
            };
            match member {
                Some(room) => asked.rooms.push((room, offset)),
                None => asked.user = Some(offset),
            }
        }
        if past > 0 {
            tracing::warn!(
                socket,
                entries = map.len(),
                max,
                "auth.offsets has more entries than channels.max_rooms_per_socket: rooms past it are not replayed (recovery_failed)"
            );
        }
        if bad > 0 {
            tracing::warn!(
                socket,
                bad,
                "auth.offsets has offsets that are not strings of at most {MAX_OFFSET_BYTES} bytes: those rooms are not replayed (recovery_failed)"
            );
        }
        if strangers > 0 {
            tracing::debug!(
                socket,
                strangers,
                "auth.offsets names rooms the socket is not in: ignored"
            );
        }
        asked
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
        max_auth_bytes: config.max_auth_bytes,
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

/// Why a Socket.IO CONNECT is refused; the text is the client's `connect_error` message.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error(transparent)]
    Session(#[from] AuthError),
    #[error("too many sockets for this user (realtime.max_sockets_per_user)")]
    TooManySockets,
    #[error(transparent)]
    AuthTooLarge(#[from] AuthTooLarge),
}

/// Registers the one namespace: the session check (which joins the user's room), then the
/// bookkeeping of connected sockets.
fn register<A: Adapter + DefinedAdapter>(io: &SocketIo<A>, handlers: Handlers) -> A::InitRes {
    let check = {
        let handlers = handlers.clone();
        move |socket: SocketRef<A>, auth: ConnectAuth<A>| authenticate(socket, auth, handlers)
    };
    let on_connect = move |socket: SocketRef<A>| on_connected(socket, handlers);
    io.ns("/", on_connect.with(check))
}

async fn authenticate<A: Adapter>(
    socket: SocketRef<A>,
    auth: ConnectAuth<A>,
    handlers: Handlers,
) -> Result<(), Refused> {
    let result = match auth.parse(handlers.max_auth_bytes) {
        Ok(auth) => check_session(&socket, auth, &handlers).await,
        Err(too_large) => Err(too_large.into()),
    };
    match &result {
        Ok(()) => let_in(&socket, &handlers),
        Err(e) => {
            tracing::debug!(socket = %log_id(socket.id), "socket refused: {e}");
            handlers.metrics.rejected(match e {
                Refused::Session(AuthError::Unauthorized) => Reject::Unauthorized,
                Refused::Session(AuthError::Unavailable(_)) => Reject::SessionUnavailable,
                Refused::TooManySockets => Reject::PerUserLimit,
                Refused::AuthTooLarge(_) => Reject::AuthTooLarge,
            });
        }
    }
    result
}

/// Sets up a socket the session check let in, before socketioxide sends it CONNECT: the
/// connect handler runs in a task of its own, later, and a client emits what it buffered
/// (a `subscribe`, say) the moment CONNECT arrives — an event with no handler yet is dropped
/// unanswered. The disconnect handler is here for the same reason: a socket that closes
/// before its connect handler runs is still matched by a departure.
fn let_in<A: Adapter>(socket: &SocketRef<A>, handlers: &Handlers) {
    handlers.channels.register(socket);
    // The session's rooms (but those to replay) are entered here already, for the same reason
    // as the user room: a publish made as soon as the client reports "connected" must find
    // the socket in them. Only the adapter's rooms: a socket that never gets its CONNECT is
    // removed from them by socketioxide, with no disconnect handler to undo presence or
    // occupancy, which the connect handler records (`follow_session`).
    if let Some(SessionRooms { rooms, replays }) = socket.extensions.get::<SessionRooms>() {
        let offsets = socket
            .extensions
            .get::<Identity>()
            .is_some_and(|i| i.offsets);
        handlers
            .channels
            .enter_early(socket, &rooms, &replays, offsets);
    }
    let tab = handlers
        .webhooks
        .connected(socket.extensions.get::<Identity>().map(|i| i.user_id));
    let channels = handlers.channels.clone();
    socket.on_disconnect(move |socket: SocketRef<A>, reason: DisconnectReason| {
        drop(tab); // down once this handler's last clone is gone (see `Tab`)
        channels.closed(&socket);
        async move { hub::close_transport(&socket, reason) }
    });
}

async fn check_session<A: Adapter>(
    socket: &SocketRef<A>,
    auth: Option<serde_json::Value>,
    handlers: &Handlers,
) -> Result<(), Refused> {
    let credentials = handlers
        .auth
        .credentials(&socket.req_parts().headers)
        .map_err(|_| Refused::Session(AuthError::Unauthorized))?;
    let Session {
        user_id,
        rooms,
        info,
    } = handlers.auth.authenticate(&credentials).await?;
    let room = format!("{}{user_id}", handlers.room_prefix);
    // Counted on this instance, connected or still joining; handshakes at the same moment
    // may each see the last place.
    let open = socket
        .local()
        .within(vec![room.clone(), connecting_room(&user_id)])
        .sockets()
        .len();
    if open >= handlers.max_sockets_per_user {
        tracing::warn!(user = %user_id, open, "socket refused: the user has realtime.max_sockets_per_user sockets open");
        return Err(Refused::TooManySockets);
    }
    if let Some(ticket) = socket.req_parts().extensions.get::<Ticket>() {
        ticket.connected();
    }
    tracing::debug!(socket = %log_id(socket.id), user = %user_id, transport = ?socket.transport_type(), "socket authenticated");
    let mut asked = AskedOffsets::default();
    let mut offsets = false;
    match handlers.journal.history() {
        // socketioxide sends the client its CONNECT before the connect handler runs, so the
        // room is joined here: a publish made as soon as the client reports "connected" must
        // find the socket in it.
        None => socket.join(room),
        // With history, the connect handler joins the user room after replaying; what is
        // published from now on until then is part of the replay. Meanwhile the socket waits
        // in a room of its own, where a kick (`disconnect`) still finds it.
        Some(history) => {
            let shape = Shape::asked(auth.as_ref());
            let socket_log = log_id(socket.id);
            asked = AskedOffsets::read(
                auth.as_ref(),
                &room,
                &rooms,
                handlers.channels.max_rooms(),
                &socket_log,
            );
            let offset = auth
                .as_ref()
                .and_then(|a| a.get("offset"))
                .and_then(|o| o.as_str())
                .map(str::to_owned)
                .or(asked.user.take());
            let since = match offset {
                Some(offset) => {
                    socket.join(connecting_room(&user_id));
                    Since::Client(offset)
                }
                None => {
                    // Under the room lock: a message is either published before (and in the
                    // head, delivered to no one here) or after (and the socket, now in its
                    // connecting room, counts as a recipient and gets it from the replay).
                    let _publishing = handlers.journal.lock(&room).await;
                    socket.join(connecting_room(&user_id));
                    Since::Head(history.head(&room).await)
                }
            };
            offsets = shape == Shape::WithOffset;
            socket.extensions.insert(ReplayFrom { since, shape });
        }
    }
    socket.extensions.insert(Identity {
        user_id,
        info,
        offsets,
    });
    socket.extensions.insert(SessionRooms {
        rooms,
        replays: asked.rooms.into(),
    });
    Ok(())
}

/// The rooms the handshake's session listed, until the socket joins them (in `let_in`), and
/// those of them to replay from the offset the client gave.
#[derive(Clone)]
struct SessionRooms {
    rooms: Arc<[Arc<str>]>,
    replays: Arc<[(Arc<str>, String)]>,
}

async fn on_connected<A: Adapter>(socket: SocketRef<A>, handlers: Handlers) {
    handlers.metrics.connected();
    // Recorded first, before anything here waits: with the disconnect handler (set in
    // `let_in`), every presence arrival made here is matched by a departure. The rooms to
    // replay count as joined (presence, occupancy, bounds) but the socket enters them only
    // once their replay is sent, under their lock.
    let mut replays: Arc<[(Arc<str>, String)]> = Arc::new([]);
    if let Some(SessionRooms { rooms, replays: r }) = socket.extensions.remove::<SessionRooms>()
        && socket.connected()
    {
        let deferred: Vec<Arc<str>> = r.iter().map(|(room, _)| room.clone()).collect();
        handlers.channels.follow_session(&socket, &rooms, &deferred);
        replays = r;
    }
    let recovery = Recovery {
        journal: handlers.journal.clone(),
        relay: handlers.relay.clone(),
        metrics: handlers.metrics.clone(),
    };
    if let (Some(history), Some(ReplayFrom { since, shape }), Some(identity)) = (
        handlers.journal.history(),
        // Taken, not copied: it is needed once, and each socket's memory counts.
        socket.extensions.remove::<ReplayFrom>(),
        socket.extensions.get::<Identity>(),
    ) {
        let room = format!("{}{}", handlers.room_prefix, identity.user_id);
        let _joined = recover(
            &socket,
            &recovery,
            history,
            &room,
            since,
            shape,
            || true,
            || {
                finish_joining(&socket, room.clone(), &identity.user_id, shape);
                true
            },
        )
        .await;
    }
    if let Some(history) = handlers.journal.history() {
        for (room, offset) in replays.iter() {
            let channels = &handlers.channels;
            let _joined = recover(
                &socket,
                &recovery,
                history,
                room,
                Since::Client(offset.clone()),
                Shape::WithOffset,
                || channels.is_member(&socket, room),
                || channels.enter(&socket, room, true),
            )
            .await;
        }
    }
}

/// Replays to `socket` what `room` has after `since` (or tells it `recovery_failed`), then
/// `join`s it, under the room's lock: a publish to the room through this instance, and a
/// message relayed from another one, waits, so each message is either replayed or delivered
/// live — once, in order. Nothing is sent unless `member` holds under the lock (a socket that
/// left the room meanwhile gets none of its history). The lock is held until the returned
/// guard is dropped (a `subscribe` answers its ack first); the flag says whether it joined.
#[allow(clippy::too_many_arguments)]
async fn recover<'a, A: Adapter>(
    socket: &SocketRef<A>,
    recovery: &'a Recovery,
    history: &History,
    room: &str,
    since: Since,
    shape: Shape,
    member: impl FnOnce() -> bool,
    join: impl FnOnce() -> bool,
) -> (tokio::sync::MutexGuard<'a, ()>, bool) {
    let publishing = recovery.journal.lock(room).await;
    if !member() {
        return (publishing, false);
    }
    let metrics = &recovery.metrics;
    let mut replayed = replay(socket, metrics, history, room, &since, shape).await;
    if !join() {
        return (publishing, false);
    }
    let relayed = recovery
        .relay
        .as_ref()
        .filter(|r| r.everyone_listens_for(room));
    let again = (relayed.is_none() && history.is_shared() && shape == Shape::WithOffset)
        .then_some(())
        .and(replayed.clone());
    if let Some(reached) = again {
        // An older instance publishes through the adapter, past this lock: a message it
        // appended after the read above may have reached this instance live before the
        // join, and so this socket neither way. Read again from where the replay ended;
        // what also came live is sent twice, and clients drop an offset that is not newer
        // than the last they saw. A socket without offsets cannot tell a repeat, so it is
        // not read again: like on a plain Socket.IO server, a message published while it
        // was joining may miss it, but none comes twice.
        let since = match reached.or(since_offset(since.clone())) {
            Some(offset) => Since::Client(offset),
            None => Since::Head(Head::Empty),
        };
        replayed = replay(socket, metrics, history, room, &since, shape)
            .await
            .map(|again| again.or(since_offset(since.clone())));
    }
    if let Some(relay) = &recovery.relay {
        let start = since_offset(since.clone());
        let reached = match &replayed {
            None => Reached::Unknown,
            Some(Some(last)) => Reached::At(last),
            Some(None) => match (&start, &since) {
                (Some(offset), _) => Reached::At(offset),
                (None, Since::Head(Head::Empty)) => Reached::Empty,
                (None, _) => Reached::Unknown,
            },
        };
        relay.joined(room, socket.id, reached);
    }
    (publishing, true)
}

/// The offset a replay starts after, if any.
fn since_offset(since: Since) -> Option<String> {
    match since {
        Since::Client(offset) | Since::Head(Head::At(offset)) => Some(offset),
        Since::Head(_) => None,
    }
}

/// Sends `socket` what `room` has after `since` in the socket's shape, or `recovery_failed`.
/// Returns `None` after a gap, else the last offset sent (`None` inside when nothing was).
async fn replay<A: Adapter>(
    socket: &SocketRef<A>,
    metrics: &Metrics,
    history: &History,
    room: &str,
    since: &Since,
    shape: Shape,
) -> Option<Option<String>> {
    match history.replay(room, since).await {
        Replay::Entries(entries) => {
            if !entries.is_empty() {
                tracing::debug!(socket = %log_id(socket.id), replayed = entries.len(), "replaying missed messages");
            }
            let last = entries.last().map(|e| e.offset.clone());
            let deadline = tokio::time::Instant::now() + REPLAY_DEADLINE;
            for entry in entries {
                let sent = match shape {
                    Shape::Plain => {
                        emit_waiting(socket, &entry.event, &*entry.data, deadline).await
                    }
                    Shape::WithOffset => {
                        let meta = serde_json::json!({ "offset": entry.offset, "room": room });
                        emit_waiting(socket, &entry.event, &(&*entry.data, meta), deadline).await
                    }
                };
                if !sent {
                    // Closed (by the client, or below for not reading): it reconnects with
                    // the last offset it got, so nothing is skipped.
                    if hub::close_now(socket) {
                        metrics.slow_consumer();
                        tracing::warn!(socket = %log_id(socket.id), "replay not read within {REPLAY_DEADLINE:?}: slow consumer disconnected");
                    }
                    return None;
                }
            }
            Some(last)
        }
        // A client that asked for no offsets and has seen nothing: there is nothing it could
        // refetch on this word, so it starts with live messages.
        Replay::Gap if shape == Shape::Plain && *since == Since::Head(Head::Unknown) => Some(None),
        Replay::Gap => {
            tracing::debug!(socket = %log_id(socket.id), "history gap: client told to refetch");
            let _ = socket.emit(
                RECOVERY_FAILED,
                &serde_json::json!({ "reason": "messages since the last offset are no longer kept", "room": room }),
            );
            None
        }
    }
}

/// Kept messages of other instances buffered between Redis and the relay.
const RELAY_BUFFER: usize = 16 * 1024;

/// How long a replay may wait for room in a socket's queue (a client that reads slower than
/// its missed messages are sent): the room lock is held meanwhile, so publishes to the user
/// through this instance wait too. Past it the socket is closed as a slow consumer.
const REPLAY_DEADLINE: Duration = Duration::from_secs(5);

/// Emits one replayed message, waiting (until `deadline`) while the socket's queue is full
/// rather than dropping it: a replay is written as fast as it can be queued, and may be longer
/// than the queue (`history.max_messages` above `realtime.max_buffer_size`). False if the
/// socket is closed or the deadline passed.
async fn emit_waiting<A: Adapter, T: serde::Serialize + ?Sized>(
    socket: &SocketRef<A>,
    event: &str,
    payload: &T,
    deadline: tokio::time::Instant,
) -> bool {
    /// The queue tells whether it is full, not when it has room again: polled.
    const RECHECK: Duration = Duration::from_millis(5);
    // An emit into a full queue closes the socket as a slow consumer: wait for room first.
    while hub::queue_full(socket) {
        if tokio::time::Instant::now() >= deadline || !socket.connected() {
            return false;
        }
        tokio::time::sleep(RECHECK).await;
    }
    socket.emit(event, payload).is_ok()
}

/// Moves a socket from its connecting room to its user room (and, when it gets offsets, to its
/// user's recovery room, in the same call: a message is never delivered to it in between).
fn finish_joining<A: Adapter>(socket: &SocketRef<A>, room: String, user_id: &str, shape: Shape) {
    match shape {
        Shape::Plain => socket.join(room),
        Shape::WithOffset => socket.join([room, recovery_room(user_id)]),
    }
    socket.leave(connecting_room(user_id));
    // A socket that closed while its replay waited was removed from its rooms already; the
    // join above would keep it in the room map for good.
    if !socket.connected() {
        socket.leave_all();
    }
}

/// How a socket is named in logs. Its id is the Engine.IO sid, which lets whoever holds it
/// poll the session (with matching credentials), so logs get a short hash of it instead:
/// enough to follow one socket through the log, useless to reach it.
pub(crate) fn log_id(sid: impl std::fmt::Display) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(sid.to_string().as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The room a user's socket waits in between its handshake and the end of its replay.
/// Outside `realtime.room_prefix` on purpose: it is not a user room and never published to.
pub(crate) fn connecting_room(user_id: &str) -> String {
    format!("{CONNECTING_ROOM_PREFIX}{user_id}")
}
pub(crate) const CONNECTING_ROOM_PREFIX: &str = "sockgate:connecting:";

/// The room of a user's sockets that get `(data, {offset})`; they are in the user room too,
/// which the hub's plain delivery excepts this room from. Internal, never published to by name.
pub(crate) fn recovery_room(user_id: &str) -> String {
    format!("{RECOVERY_ROOM_PREFIX}{user_id}")
}
pub(crate) const RECOVERY_ROOM_PREFIX: &str = "sockgate:recovery:";

/// The room of a channel's sockets that get `(data, {offset, room})`, beside the channel itself
/// (as [`recovery_room`] is for a user room). Internal, never published to by name.
pub(crate) fn offsets_room(room: &str) -> String {
    format!("{OFFSETS_ROOM_PREFIX}{room}")
}
pub(crate) const OFFSETS_ROOM_PREFIX: &str = "sockgate:offsets:";

/// The internal rooms that go with a room whose messages are kept.
pub(crate) struct Companions {
    /// Where its sockets that get offsets are (they are in the room too).
    pub with_offset: String,
    /// Where its sockets wait while their replay runs, for a user room (a channel's wait in
    /// no room: they enter it once replayed).
    pub waiting: Option<String>,
}

/// The companions of `room`: a user room's (under `room_prefix`) or a channel's.
pub(crate) fn companions(room_prefix: &str, room: &str) -> Companions {
    match room.strip_prefix(room_prefix) {
        Some(user) => Companions {
            with_offset: recovery_room(user),
            waiting: Some(connecting_room(user)),
        },
        None => Companions {
            with_offset: offsets_room(room),
            waiting: None,
        },
    }
}

/// The event a client gets when its missed messages cannot be replayed.
pub const RECOVERY_FAILED: &str = "recovery_failed";

/// Every event sockgate itself emits to clients; the publish API refuses them.
pub const SOCKGATE_EVENTS: [&str; 1] = [RECOVERY_FAILED];

/// Periodic re-check of connected sockets' sessions.
pub struct Revalidation {
    /// `None` turns revalidation off.
    pub every: Option<Duration>,
    pub concurrency: usize,
    pub shutdown: Shutdown,
    channels: Arc<Channels>,
}

impl Revalidation {
    /// Every `every`, re-checks each local socket's session; a socket whose session ended
    /// (logout, expiry) or now belongs to someone else is disconnected, and the others follow
    /// their session's rooms.
    async fn run<A: Adapter>(self, io: SocketIo<A>, auth: Arc<SessionAuth>) {
        let Some(every) = self.every else { return };
        let mut ticker = tokio::time::interval(every);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = self.shutdown.draining() => return,
            }
            let checks = io.local().sockets().into_iter().filter_map(|socket| {
                let identity = socket.extensions.get::<Identity>()?;
                let credentials = auth.credentials(&socket.req_parts().headers).ok()?;
                let auth = auth.clone();
                let channels = self.channels.clone();
                Some(async move {
                    match auth.authenticate(&credentials).await {
                        Ok(session) if session.user_id == identity.user_id => {
                            channels.follow_session(&socket, &session.rooms, &[]);
                            false
                        }
                        Ok(_) | Err(AuthError::Unauthorized) => {
                            tracing::info!(socket = %log_id(socket.id), user = %identity.user_id, "session ended: socket disconnected");
                            hub::disconnect(&socket);
                            true
                        }
                        // The app is unreachable: keep the socket; the next round decides.
                        Err(AuthError::Unavailable(_)) => false,
                    }
                })
            });
            let closed = futures_util::stream::iter(checks)
                .buffer_unordered(self.concurrency.max(1))
                .filter(|closed| std::future::ready(*closed))
                .count()
                .await;
            if closed > 0 {
                tracing::info!(closed, "revalidation closed sockets whose session ended");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reserved::INTERNAL_PREFIX;

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
    fn internal_rooms_carry_the_internal_prefix() {
        assert!(connecting_room("alice").starts_with(INTERNAL_PREFIX));
        assert!(recovery_room("alice").starts_with(INTERNAL_PREFIX));
        assert!(offsets_room("team:7").starts_with(INTERNAL_PREFIX));
        // A user id cannot make its recovery room a channel's offsets room.
        assert!(!offsets_room("x").starts_with(RECOVERY_ROOM_PREFIX));
        assert!(!recovery_room("x").starts_with(OFFSETS_ROOM_PREFIX));
    }

    #[test]
    fn asked_offsets_are_bounded_and_only_for_the_sockets_rooms() {
        let session: Vec<Arc<str>> = vec!["team:1".into(), "team:2".into(), "team:3".into()];
        let read = |auth: serde_json::Value, max| {
            AskedOffsets::read(Some(&auth), "user:a", &session, max, "test")
        };
        let asked = read(
            serde_json::json!({ "offsets": {
                "team:9": "r-1",            // not a member: dropped unread
                "user:b": "r-1",            // another user's room: dropped unread
                "sockgate:recovery:b": "r-1",
                "user:a": "r-2",
                "team:1": "r-3",
                "team:2": null,             // seen nothing: live
                "team:3": "x".repeat(MAX_OFFSET_BYTES + 1),
            }}),
            100,
        );
        assert_eq!(asked.user.as_deref(), Some("r-2"));
        let rooms: Vec<(&str, &str)> = asked
            .rooms
            .iter()
            .map(|(r, o)| (&**r, o.as_str()))
            .collect();
        // An overlong offset is kept as one that names nothing: its replay is a gap.
        assert_eq!(rooms, [("team:1", "r-3"), ("team:3", "")]);
        // Entries past the bound are not replayed: their rooms get a gap.
        let mut many = serde_json::Map::new();
        for i in 0..1000 {
            many.insert(format!("junk:{i}"), "r-1".into());
        }
        many.insert("team:1".into(), "r-3".into());
        let asked = read(serde_json::json!({ "offsets": many }), 3);
        assert_eq!(asked.rooms.len(), 1);
        assert_eq!(asked.rooms[0].1, "");
        assert_eq!(
            read(serde_json::json!({ "offsets": ["team:1"] }), 3),
            AskedOffsets::default()
        );
        assert_eq!(
            read(serde_json::json!({ "offset": "r-1" }), 3),
            AskedOffsets::default()
        );
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
