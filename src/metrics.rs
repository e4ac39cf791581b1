//! Prometheus metrics: one registry, recorded into by each part, rendered as the text format
//! on the publish socket's `/metrics` (and the optional admin listener). Never on the public
//! port.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Label = [(&'static str, &'static str); 1];

/// Why a Socket.IO connection was refused.
#[derive(Debug, Clone, Copy)]
pub enum Reject {
    Unauthorized,
    SessionUnavailable,
    Origin,
    Capacity,
    AppStarting,
    PerUserLimit,
    AuthTooLarge,
}

impl Reject {
    fn label(self) -> &'static str {
        match self {
            Reject::Unauthorized => "unauthorized",
            Reject::SessionUnavailable => "session_unavailable",
            Reject::Origin => "origin",
            Reject::Capacity => "capacity",
            Reject::AppStarting => "app_starting",
            Reject::PerUserLimit => "per_user_limit",
            Reject::AuthTooLarge => "auth_too_large",
        }
    }
}

/// How a session look-up was answered.
#[derive(Debug, Clone, Copy)]
pub enum Lookup {
    Hit,
    Miss,
    Coalesced,
    Error,
}

/// Why a cross-instance message received from Redis was dropped before reaching the adapter
/// (see [`crate::cluster::driver`]).
#[derive(Debug, Clone, Copy)]
pub enum Dropped {
    /// The dispatcher fell behind fred's broadcast channel, which overwrote messages.
    Lagged,
    /// A channel's stream stayed full.
    Full,
    /// A channel's stream closed while still subscribed (its reader stopped: no socket
    /// waits on it; counted only).
    Closed,
}

impl Dropped {
    pub fn label(self) -> &'static str {
        match self {
            Dropped::Lagged => "lagged",
            Dropped::Full => "full",
            Dropped::Closed => "closed",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub sockets_open: Family<Label, Gauge>,
    connects: Counter,
    rejects: Family<Label, Counter>,
    session_lookups: Family<Label, Counter>,
    session_call_seconds: Histogram,
    publishes: Counter,
    deliveries: Counter,
    dropped_deliveries: Counter,
    slow_consumers: Counter,
    proxied: Family<Label, Counter>,
    /// `proxied`'s counter of each status class (1xx to 5xx), looked up once: the family's
    /// lookup takes a lock and hashes the label, for every proxied request. Created on first
    /// use, so a class shows in `/metrics` once it has happened, as before.
    proxied_by_class: [OnceLock<Counter>; 5],
    upstream_seconds: Histogram,
    upstream_errors: Family<Label, Counter>,
    client_errors: Family<Label, Counter>,
    send_stalls: Counter,
    protocol_abuse: Family<Label, Counter>,
    tunnels_opened: Counter,
    pub tunnels_open: Gauge,
    cluster_canary_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    cluster_canary_failures: Counter,
    cluster_canary_peers: Gauge,
    cluster_link_rebuilds: Counter,
    cluster_link_up: Gauge,
    cluster_messages_dropped: Family<Label, Counter>,
    cluster_relay_lag: Gauge,
    publishes_refused: Counter,
    publish_delivery_seconds: Histogram,
    webhook_delivered: Counter,
    webhook_failed: Counter,
    webhook_dropped: Counter,
    webhook_queue: Gauge,
    history_bytes: Gauge,
    history_rooms_evicted: Counter,
    publish_body_timeouts: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("sockgate"),
            sockets_open: Family::default(),
            connects: Counter::default(),
            rejects: Family::default(),
            session_lookups: Family::default(),
            session_call_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            publishes: Counter::default(),
            deliveries: Counter::default(),
            dropped_deliveries: Counter::default(),
            slow_consumers: Counter::default(),
            proxied: Family::default(),
            proxied_by_class: Default::default(),
            upstream_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            upstream_errors: Family::default(),
            client_errors: Family::default(),
            send_stalls: Counter::default(),
            protocol_abuse: Family::default(),
            tunnels_opened: Counter::default(),
            tunnels_open: Gauge::default(),
            cluster_canary_seconds: Gauge::default(),
            cluster_canary_failures: Counter::default(),
            cluster_canary_peers: Gauge::default(),
            cluster_link_rebuilds: Counter::default(),
            cluster_link_up: Gauge::default(),
            cluster_messages_dropped: Family::default(),
            cluster_relay_lag: Gauge::default(),
            publishes_refused: Counter::default(),
            publish_delivery_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            webhook_delivered: Counter::default(),
            webhook_failed: Counter::default(),
            webhook_dropped: Counter::default(),
            webhook_queue: Gauge::default(),
            history_bytes: Gauge::default(),
            history_rooms_evicted: Counter::default(),
            publish_body_timeouts: Counter::default(),
        };
        let r = &mut m.registry;
        r.register(
            "sockets_open",
            "Open Socket.IO sockets by transport",
            m.sockets_open.clone(),
        );
        r.register("socket_connects", "Sockets accepted", m.connects.clone());
        r.register(
            "socket_rejects",
            "Socket.IO connections refused, by reason",
            m.rejects.clone(),
        );
        r.register(
            "session_lookups",
            "Session checks by outcome: cache hit, miss (app called), coalesced, error",
            m.session_lookups.clone(),
        );
        r.register(
            "session_call_seconds",
            "Latency of calls to the app's session route",
            m.session_call_seconds.clone(),
        );
        r.register("publishes", "Messages published", m.publishes.clone());
        r.register(
            "deliveries",
            "Messages handed to sockets",
            m.deliveries.clone(),
        );
        r.register(
            "dropped_deliveries",
            "Messages not delivered because a socket's buffer was full",
            m.dropped_deliveries.clone(),
        );
        r.register(
            "cluster_canary_seconds",
            "Round trip of the last cluster self-check through Redis (cluster mode)",
            m.cluster_canary_seconds.clone(),
        );
        r.register(
            "cluster_canary_failures",
            "Cluster self-checks through Redis that failed or came back late",
            m.cluster_canary_failures.clone(),
        );
        r.register(
            "cluster_canary_peers",
            "Other instances whose self-check messages arrived in the last 5 s (cluster mode)",
            m.cluster_canary_peers.clone(),
        );
        r.register(
            "cluster_link_up",
            "1 while cross-instance delivery through Redis works, 0 while the link is down (cluster mode)",
            m.cluster_link_up.clone(),
        );
        r.register(
            "cluster_relay_lag_messages",
            "Relayed messages (history on) the slowest live instance has not read yet, as of the last report (cluster mode); past cluster.max_lag publishes are refused",
            m.cluster_relay_lag.clone(),
        );
        r.register(
            "publishes_refused",
            "Publish requests refused with 503 + Retry-After because an instance was more than cluster.max_lag relayed messages behind",
            m.publishes_refused.clone(),
        );
        r.register(
            "cluster_link_rebuilds",
            "Subscriber connections replaced because self-checks kept failing while Redis answered",
            m.cluster_link_rebuilds.clone(),
        );
        for cause in [Dropped::Lagged, Dropped::Full, Dropped::Closed] {
            // Present at 0 from the start, so that a first loss shows as a change.
            m.cluster_messages_dropped
                .get_or_create(&[("cause", cause.label())])
                .inc_by(0);
        }
        r.register(
            "cluster_messages_dropped",
            "Cross-instance messages received from Redis but dropped before delivery, by cause: lagged and full take the cluster link down, and this instance's sockets are told recovery_failed once it is back; closed (a stream whose reader stopped, at the drain) is counted only (cluster mode)",
            m.cluster_messages_dropped.clone(),
        );
        r.register(
            "publish_delivery_seconds",
            "Time from a publish reaching the hub until it was handed to every targeted socket of this instance (through Redis in cluster mode)",
            m.publish_delivery_seconds.clone(),
        );
        r.register(
            "slow_consumers_disconnected",
            "Sockets disconnected because they did not read fast enough",
            m.slow_consumers.clone(),
        );
        r.register(
            "proxied_requests",
            "Requests proxied to the app, by response status class",
            m.proxied.clone(),
        );
        r.register(
            "upstream_response_seconds",
            "Time until the app's response headers",
            m.upstream_seconds.clone(),
        );
        r.register(
            "upstream_errors",
            "Requests the app did not answer, by kind",
            m.upstream_errors.clone(),
        );
        r.register(
            "tunnels_opened",
            "HTTP upgrades tunnelled to the app",
            m.tunnels_opened.clone(),
        );
        r.register(
            "tunnels_open",
            "Upgrade tunnels currently open",
            m.tunnels_open.clone(),
        );
        r.register(
            "client_errors",
            "Proxied requests refused because of the client (malformed, aborted or too slow body), by reason",
            m.client_errors.clone(),
        );
        r.register(
            "send_stalls",
            "Responses cut because the client took nothing of them for server.send_stall_timeout_ms (HTTP/2 stream reset, HTTP/1.1 connection closed)",
            m.send_stalls.clone(),
        );
        r.register(
            "protocol_abuse",
            "Client connections closed for abusing HTTP/2 (resets after dispatch, frames the protocol library warned about), by kind",
            m.protocol_abuse.clone(),
        );
        r.register(
            "webhook_events_delivered",
            "Webhook events the receiver accepted (2xx)",
            m.webhook_delivered.clone(),
        );
        r.register(
            "webhook_events_failed",
            "Webhook events given up on: refused (4xx) or still failing after webhooks.max_attempts",
            m.webhook_failed.clone(),
        );
        r.register(
            "webhook_events_dropped",
            "Webhook events dropped unsent because the queue was full (webhooks.max_queue)",
            m.webhook_dropped.clone(),
        );
        r.register(
            "webhook_queue_events",
            "Webhook events waiting to be sent",
            m.webhook_queue.clone(),
        );
        r.register(
            "history_bytes",
            "Memory the single-instance history holds (estimated), at most history.max_bytes",
            m.history_bytes.clone(),
        );
        r.register(
            "history_rooms_evicted",
            "Rooms whose kept messages were dropped to stay within history.max_bytes (their offsets get recovery_failed)",
            m.history_rooms_evicted.clone(),
        );
        r.register(
            "publish_body_timeouts",
            "Publish API requests whose body did not arrive within publish.body_timeout_ms (408, connection closed)",
            m.publish_body_timeouts.clone(),
        );
        m
    }

    /// What the single-instance history holds now, and how many rooms it just evicted.
    pub fn history(&self, bytes: usize, evicted: usize) {
        self.history_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.history_rooms_evicted.inc_by(evicted as u64);
    }

    pub fn publish_body_timeout(&self) {
        self.publish_body_timeouts.inc();
    }

    /// `count` webhook events were accepted by the receiver.
    pub fn webhook_delivered(&self, count: usize) {
        self.webhook_delivered.inc_by(count as u64);
    }

    /// `count` webhook events were given up on.
    pub fn webhook_failed(&self, count: usize) {
        self.webhook_failed.inc_by(count as u64);
    }

    /// A webhook event was dropped from the full queue.
    pub fn webhook_dropped(&self) {
        self.webhook_dropped.inc();
    }

    /// Webhook events waiting now.
    pub fn webhook_queue(&self, len: usize) {
        self.webhook_queue.set(len as i64);
    }

    pub fn connected(&self) {
        self.connects.inc();
    }

    pub fn rejected(&self, reason: Reject) {
        self.rejects
            .get_or_create(&[("reason", reason.label())])
            .inc();
    }

    pub fn session_lookup(&self, outcome: Lookup) {
        let label = match outcome {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Coalesced => "coalesced",
            Lookup::Error => "error",
        };
        self.session_lookups
            .get_or_create(&[("result", label)])
            .inc();
    }

    pub fn session_call(&self, took: Duration) {
        self.session_call_seconds.observe(took.as_secs_f64());
    }

    pub fn published(&self, deliveries: usize, dropped: usize, took: Duration) {
        self.publishes.inc();
        self.publish_delivery_seconds.observe(took.as_secs_f64());
        self.deliveries.inc_by(deliveries as u64);
        self.dropped_deliveries.inc_by(dropped as u64);
    }

    pub fn publishes_total(&self) -> u64 {
        self.publishes.get()
    }

    pub fn deliveries_total(&self) -> u64 {
        self.deliveries.get()
    }

    /// A cluster self-check: its round trip (`None` when it failed or came back late), and
    /// how many other instances' checks were seen lately.
    pub fn cluster_canary(&self, round_trip: Option<Duration>, peers: usize) {
        self.cluster_canary_peers.set(peers as i64);
        match round_trip {
            Some(took) => {
                self.cluster_canary_seconds.set(took.as_secs_f64());
            }
            None => {
                self.cluster_canary_failures.inc();
            }
        }
    }

    /// Whether the cluster link is up (see [`crate::cluster::Link`]), as of now.
    pub fn cluster_link(&self, up: bool) {
        self.cluster_link_up.set(i64::from(up));
    }

    /// Relayed messages the slowest live instance has not read (see
    /// [`crate::realtime`]'s backpressure).
    pub fn cluster_relay_lag(&self, messages: u64) {
        self.cluster_relay_lag
            .set(i64::try_from(messages).unwrap_or(i64::MAX));
    }

    /// A publish request was refused because an instance was too far behind the relay.
    pub fn publish_refused(&self) {
        self.publishes_refused.inc();
    }

    /// The cluster's subscriber connection was replaced (see [`crate::cluster::canary`]).
    pub fn cluster_link_rebuilt(&self) {
        self.cluster_link_rebuilds.inc();
    }

    /// `count` cross-instance messages were dropped on this instance for `cause`.
    pub fn cluster_messages_dropped(&self, cause: Dropped, count: u64) {
        self.cluster_messages_dropped
            .get_or_create(&[("cause", cause.label())])
            .inc_by(count);
    }

    pub fn slow_consumer(&self) {
        self.slow_consumers.inc();
    }

    pub fn proxied(&self, status: http::StatusCode, took: Duration) {
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        // A StatusCode is 100..=999; 6xx and up count as 5xx, as before.
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.proxied_by_class[class]
            .get_or_init(|| {
                self.proxied
                    .get_or_create(&[("class", CLASSES[class])])
                    .clone()
            })
            .inc();
        self.upstream_seconds.observe(took.as_secs_f64());
    }

    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors.get_or_create(&[("kind", kind)]).inc();
    }

    pub fn client_error(&self, reason: &'static str) {
        self.client_errors
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    pub fn send_stalled(&self, responses: u64) {
        self.send_stalls.inc_by(responses);
    }

    pub fn protocol_abuse(&self, kind: &'static str) {
        self.protocol_abuse.get_or_create(&[("kind", kind)]).inc();
    }

    pub fn tunnel_opened(&self) {
        self.tunnels_opened.inc();
        self.tunnels_open.inc();
    }

    pub fn tunnel_closed(&self) {
        self.tunnels_open.dec();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!("cannot render metrics: {e}");
        }
        out
    }
}
