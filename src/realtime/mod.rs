//! The Socket.IO endpoint sockgate answers itself: Engine.IO v4 / Socket.IO v5 over HTTP
//! long-polling and WebSocket, via `socketioxide`.
//!
//! The service is built once. A socket gets in only through the session check (`auth`), then
//! joins its user's room and the rooms its session lists. It is one-way by design: the server
//! emits, and whatever a client emits is dropped unread, except `subscribe`/`unsubscribe`/
//! `presence`, which `channels` handles with the app's authorization.

mod admission;
mod auth;
mod backpressure;
mod channels;
mod connect;
mod connect_auth;
mod credentials;
mod delivery;
mod figures;
mod gate;
mod history;
mod hub;
mod kicks;
mod membership;
mod origin;
mod outage;
mod payload;
mod recovery;
mod relay;
mod relayed;
mod revalidation;
mod rooms;
mod roster;
mod service;
mod session;
mod session_route;
mod slots;

use std::sync::Arc;

use socketioxide::{SocketIo, SocketIoBuilder, TransportType};

use crate::cluster::{Canary, Cluster, ClusterAdapter, ClusterDriver, Link, PubSub, Queries};
use crate::config::{Config, Parser, RealtimeConfig, Transport};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::webhooks::Webhooks;

use admission::Admission;
pub use auth::{AuthError, SessionAuth};
pub use backpressure::Refusal;
use backpressure::{Backpressure, reader_channel};
use channels::Channels;
use connect::{Handlers, register};
pub use credentials::Credentials;
pub use delivery::HubError;
pub use figures::{HubStats, Presence};
pub use gate::Gate;
use history::{History, Journal};
pub use hub::{Hub, Target};
pub use payload::Payload;
use recovery::Recovery;
use relay::Relay;
use revalidation::Revalidation;
pub use rooms::RoomRules;
pub use roster::Member;
use roster::Roster;
use service::{Handshake, RealtimeService, erase, not_found, slow_consumer_closed};
pub use session::{RECOVERY_FAILED, SOCKGATE_EVENTS};
pub use session_route::Session;
use socketioxide_redis::RedisAdapterCtr;
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};

/// A running Socket.IO endpoint.
pub struct Realtime {
    pub gate: Gate,
    pub hub: Arc<Hub>,
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
    let history = history(settings, cluster.as_ref(), &metrics);
    let relay = relay(settings, cluster.as_ref(), history.as_ref(), &metrics).await?;
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
        every: Some(settings.auth.revalidate_interval).filter(|d| !d.is_zero()),
        concurrency: settings.auth.max_concurrent,
        shutdown,
        channels: channels.clone(),
    };
    if let Some(c) = &cluster {
        auth.share_kicks(
            c.commands.clone(),
            c.link.clone(),
            settings.cluster.request_timeout,
        );
    }
    let admission = Admission::new(auth.clone(), config.max_pending_connections);
    let draining = revalidation.shutdown.clone();
    let parts = Parts {
        builder: engine(config),
        handshake: handshake(config, &auth, &metrics),
        handlers: Handlers {
            auth: auth.clone(),
            metrics: metrics.clone(),
            room_prefix: config.room_prefix.clone().into(),
            journal: journal.clone(),
            relay: relay.as_ref().map(|(r, ..)| r.clone()),
            webhooks,
            channels,
            max_sockets_per_user: config.max_sockets_per_user,
            max_auth_bytes: config.max_auth_bytes,
        },
        roster,
        revalidation,
        auth,
        metrics: metrics.clone(),
        journal,
        room_prefix: config.room_prefix.clone(),
    };
    let (service, hub) = match cluster {
        None => serve_local(parts),
        Some(Cluster {
            adapter,
            link,
            canary,
            queries,
            ..
        }) => serve_cluster(parts, adapter, link, canary, queries, relay).await?,
    };
    let hub = Arc::new(hub);
    tokio::spawn(hub.clone().tell_after_outages(draining));
    Ok(Realtime {
        gate: Gate::new(settings, admission, service, metrics),
        hub,
    })
}

/// The message history, when `history.enabled`: in memory on one instance, in Redis streams
/// in a cluster.
fn history(
    settings: &Config,
    cluster: Option<&Cluster>,
    metrics: &Arc<Metrics>,
) -> Option<History> {
    let kept = &settings.history;
    match (cluster, kept.enabled) {
        (_, false) => None,
        (None, true) => Some(History::memory(
            kept.max_messages,
            kept.max_age,
            kept.max_bytes,
            metrics.clone(),
        )),
        (Some(c), true) => Some(History::redis(
            c.commands.clone(),
            c.link.clone(),
            kept.max_messages,
            kept.max_age,
        )),
    }
}

/// The relay of kept messages across instances, with its subscriptions: the relay's channel
/// and the marker channels (what this instance reads, for the others to count).
type Relaying = (
    Arc<Relay>,
    MessageStream<ChanItem>,
    Vec<MessageStream<ChanItem>>,
);

/// The relay, when a cluster keeps history in Redis. On a Redis Cluster its channel is plain
/// (see [`relay::CLUSTER_CHANNEL`]): the cluster bus carries each relay message to every node.
async fn relay(
    settings: &Config,
    cluster: Option<&Cluster>,
    history: Option<&History>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<Relaying>> {
    let (Some(c), Some(shared)) = (cluster, history.and_then(History::shared)) else {
        return Ok(None);
    };
    let mode = match c.redis_cluster {
        true => PubSub::Plain,
        false => c.link.pubsub(),
    };
    // First: once counted as listening, this instance gets kept messages by this channel only.
    let channel = c
        .driver
        .subscribe_with(mode, relay::CHANNEL.into(), RELAY_BUFFER)
        .await
        .map_err(|e| anyhow::anyhow!("cannot subscribe to `{}` in Redis: {e}", relay::CHANNEL))?;
    let origin = socketioxide_core::Uid::new().to_string();
    // Nothing is published on the markers: listening says "this instance relays channels",
    // "reads several entries in one message", "this instance is alive" (its own reader
    // channel, for the backpressure) and, on a Redis Cluster, "relays".
    let mut markers = vec![
        marker(c, relay::ROOMS_CHANNEL).await?,
        marker(c, relay::BATCHES_CHANNEL).await?,
        marker(c, &reader_channel(&origin)).await?,
    ];
    if c.redis_cluster {
        tracing::info!(
            "Redis Cluster: sockgate's relay publishes with PUBLISH (forwarded to every node \
             by the cluster bus), the adapter with SPUBLISH"
        );
        markers.push(marker(c, relay::CLUSTER_CHANNEL).await?);
    }
    let backpressure = Backpressure::new(
        origin.clone(),
        settings.cluster.max_lag,
        c.commands.clone(),
        metrics.clone(),
    );
    let relay = Relay::new(
        shared.clone(),
        origin,
        settings.realtime.room_prefix.as_str().into(),
        c.redis_cluster,
        Arc::new(backpressure),
    );
    Ok(Some((Arc::new(relay), channel, markers)))
}

/// A subscription to a channel nothing is published on, held to be counted.
async fn marker(c: &Cluster, name: &str) -> anyhow::Result<MessageStream<ChanItem>> {
    c.driver
        .subscribe(name.into(), 1)
        .await
        .map_err(|e| anyhow::anyhow!("cannot subscribe to `{name}` in Redis: {e}"))
}

/// Whether sockgate runs on one thread (`server.runtime`, resolved): there a sender writes a
/// WebSocket's frame itself when nothing is queued, which saves waking the socket's writer
/// task. On several threads the writer tasks of a broadcast's sockets share the threads,
/// and that is faster than one publishing loop writing them all (BENCHMARKS.md, issue 32's
/// stage 4).
fn one_thread() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|rt| rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
}

/// The Engine.IO/Socket.IO settings of `[realtime]`: path, pings, sizes, parser, transports.
fn engine(config: &RealtimeConfig) -> SocketIoBuilder {
    let builder = SocketIo::builder()
        .req_path(config.path.clone())
        .ping_interval(config.ping_interval)
        .ping_timeout(config.ping_timeout)
        .max_payload(config.max_poll_payload_bytes)
        .ws_max_message_size(config.max_ws_message_bytes)
        .ws_max_frame_size(config.max_ws_message_bytes)
        .max_buffer_size(config.max_buffer_size)
        .ws_read_buffer_size(config.ws_read_buffer_bytes)
        .ws_raw_tcp(crate::connection::raw_tcp)
        .ws_direct_write(one_thread())
        .connect_timeout(config.connect_timeout);
    let builder = match config.parser {
        Parser::Default => builder,
        Parser::Msgpack => builder.with_parser(socketioxide::ParserConfig::msgpack()),
    };
    let has = |t| config.transports.contains(&t);
    match (has(Transport::Polling), has(Transport::Websocket)) {
        (true, false) => builder.transports([TransportType::Polling]),
        (false, true) => builder.transports([TransportType::Websocket]),
        _ => builder.transports([TransportType::Polling, TransportType::Websocket]),
    }
}

/// What the service keeps of a handshake request: the headers the session check and
/// Engine.IO read, whether binary frames are accepted, and what a full buffer does.
fn handshake(config: &RealtimeConfig, auth: &SessionAuth, metrics: &Arc<Metrics>) -> Handshake {
    let mut kept_headers: Vec<_> = auth.read_headers().cloned().collect();
    kept_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    kept_headers.dedup();
    Handshake {
        headers: kept_headers.into(),
        accept_binary: config.parser == Parser::Msgpack,
        close_when_full: slow_consumer_closed(metrics.clone()),
    }
}

/// What [`start`] built for the service, before it is served locally or on the cluster.
struct Parts {
    builder: SocketIoBuilder,
    handlers: Handlers,
    handshake: Handshake,
    roster: Arc<Roster>,
    revalidation: Revalidation,
    auth: Arc<SessionAuth>,
    metrics: Arc<Metrics>,
    journal: Arc<Journal>,
    room_prefix: String,
}

/// One instance: the service in memory, its handlers and presence, revalidation running.
fn serve_local(parts: Parts) -> (RealtimeService, Hub) {
    let (svc, io) = parts.builder.build_with_inner_svc(not_found());
    register(&io, parts.handlers);
    parts.roster.announce_on(io.clone());
    tokio::spawn(parts.revalidation.run(io.clone(), parts.auth));
    (
        erase(svc, parts.handshake),
        Hub::local(
            io,
            parts.room_prefix,
            parts.metrics,
            parts.journal,
            parts.roster,
        ),
    )
}

/// A cluster: the service on the Redis adapter, its handlers subscribed, then the canary,
/// the relay and revalidation running.
async fn serve_cluster(
    parts: Parts,
    adapter: RedisAdapterCtr<ClusterDriver>,
    link: Link,
    canary: Canary,
    queries: Queries,
    relay: Option<Relaying>,
) -> anyhow::Result<(RealtimeService, Hub)> {
    let Parts {
        builder,
        handlers,
        handshake,
        roster,
        revalidation,
        auth,
        metrics,
        journal,
        room_prefix,
    } = parts;
    let (svc, io) = builder
        .with_adapter::<ClusterAdapter>(adapter)
        .build_with_inner_svc(not_found());
    register(&io, handlers)
        .await
        .map_err(|e| anyhow::anyhow!("cannot subscribe to the cluster's Redis channels: {e}"))?;
    roster.announce_on(io.clone());
    tokio::spawn(canary.run(
        link.clone(),
        metrics.clone(),
        revalidation.shutdown.clone(),
        io.config().server_id,
    ));
    let relay = relay.map(|(relay, channel, markers)| {
        tokio::spawn(relay.clone().run(
            io.clone(),
            journal.clone(),
            channel,
            markers,
            link.clone(),
            revalidation.shutdown.clone(),
        ));
        relay
    });
    tokio::spawn(revalidation.run(io.clone(), auth));
    Ok((
        erase(svc, handshake),
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
    ))
}

/// Kept messages of other instances buffered between Redis and the relay.
const RELAY_BUFFER: usize = 16 * 1024;
