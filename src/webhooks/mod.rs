//! Webhooks to the app: `user.online` when a user's first socket opens, `user.offline` when
//! their last one closed and none opened within `webhooks.grace_ms` (a reload produces
//! neither); `room.occupied`/`room.vacated` the same for a channel's sockets; and
//! `member.added`/`member.removed` when presence rooms gain or lose a user (decided by the
//! realtime roster). Cluster-wide in cluster mode, each event decided by exactly one instance.
//!
//! ```text
//! realtime (connect / disconnect) ─▶ Tab ─▶ occupancy (counts, grace, Redis) ─▶ sender ─▶ POST
//! ```
//!
//! The realtime endpoint calls [`Webhooks::connected`] for each authenticated socket and
//! [`Tab::closed`] when it goes; both only post to a channel. An [`occupancy`] tracker turns those into
//! events, the `sender` batches, signs, retries and bounds them.
//!
//! Memory: the change channel is unbounded but holds at most an open and a close per
//! socket (sockets are capped by `realtime.max_connections`); the tracker keeps one entry per
//! connected user and one timer per user within their grace period; the queue holds at most
//! `webhooks.max_queue` events plus the one batch in flight.

mod sender;
mod signature;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::uri::Authority;
use tokio::sync::mpsc;

use crate::config::{Config, WebhookUrl, WebhooksConfig};
use crate::metrics::Metrics;

use crate::occupancy::{self, Change, Transition};
pub use signature::sign;

/// The hook the realtime endpoint calls; does nothing when webhooks are off.
#[derive(Clone, Default)]
pub struct Webhooks(Option<Arc<On>>);

/// Webhooks that are on.
struct On {
    /// Users' sockets (online/offline).
    users: mpsc::UnboundedSender<Change>,
    /// Channels' sockets (occupied/vacated), when either event is wanted.
    rooms: Option<mpsc::UnboundedSender<Change>>,
    names: Names,
    outbox: sender::Outbox,
    minter: Minter,
}

impl Webhooks {
    /// Starts the tracker and the sender when `webhooks.url` is set (else the hook is off).
    /// `redis` (cluster mode: a command connection and the link's health) makes
    /// online/offline cluster-wide.
    pub fn start(
        settings: &Config,
        redis: Option<(fred::clients::Client, crate::cluster::Link)>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let config = &settings.webhooks;
        let Some(url) = &config.url else {
            return Self::default();
        };
        let target = match target(url, settings.upstream.url.authority()) {
            Ok(uri) => uri,
            Err(e) => {
                // A path and an authority that parsed at load make a URI; kept off rather
                // than trusted.
                tracing::error!("webhooks.url `{url}` is not a URL ({e}): webhooks off");
                return Self::default();
            }
        };
        let instance = socketioxide_core::Uid::new().to_string();
        let outbox = sender::Outbox::new(config.max_queue, metrics.clone());
        let names = Names(config.events.clone());
        let minter = Minter {
            instance: instance.clone().into(),
            seq: Arc::new(AtomicU64::new(0)),
        };
        spawn_sender(config, target, outbox.clone(), metrics);
        let shared = |namespace| {
            redis.clone().map(|(client, link)| {
                Arc::new(occupancy::Shared::new(
                    client,
                    link,
                    instance.clone(),
                    config.instance_ttl,
                    namespace,
                ))
            })
        };
        let tracked = |namespace, arrived: &'static str, left: &'static str| {
            let (names, outbox, minter) = (names.clone(), outbox.clone(), minter.clone());
            let report = move |transition, key: &Arc<str>, _: Option<&Arc<str>>| {
                let name = match transition {
                    Transition::Arrived => arrived,
                    Transition::Left => left,
                };
                if names.enabled(name) {
                    let (user, room) = match arrived {
                        ONLINE => (Some(&**key), None),
                        _ => (None, Some(&**key)),
                    };
                    outbox.push(minter.event(name, user, room));
                }
            };
            occupancy::Tracker::spawn(shared(namespace), config.grace, Box::new(report))
        };
        let users = tracked(USERS, ONLINE, OFFLINE);
        let rooms = (names.enabled(OCCUPIED) || names.enabled(VACATED))
            .then(|| tracked(ROOMS, OCCUPIED, VACATED));
        tracing::info!(url = %url, events = ?config.events, signed = config.secret.is_some(), "webhooks on");
        Self(Some(Arc::new(On {
            users,
            rooms,
            names,
            outbox,
            minter,
        })))
    }

    /// A socket of `user` (when known) opened; the returned [`Tab`] is closed when it goes.
    pub fn connected(&self, user: Option<Arc<str>>) -> Tab {
        let tab = self.0.as_ref().map(|on| on.users.clone()).zip(user);
        Tab {
            _open: tab.map(|(changes, user)| {
                let _ = changes.send(Change::Up(user.clone(), None));
                Arc::new(OpenTab { changes, user })
            }),
        }
    }

    /// A socket joined channel `room` (counted for `room.occupied`).
    pub fn room_joined(&self, room: &str) {
        if let Some(rooms) = self.0.as_ref().and_then(|on| on.rooms.as_ref()) {
            let _ = rooms.send(Change::Up(room.into(), None));
        }
    }

    /// A socket left channel `room`, or closed (counted for `room.vacated`).
    pub fn room_left(&self, room: &str) {
        if let Some(rooms) = self.0.as_ref().and_then(|on| on.rooms.as_ref()) {
            let _ = rooms.send(Change::Down(room.into()));
        }
    }

    /// Presence room `room` gained (`added`) or lost `user`, as decided cluster-wide by the
    /// realtime roster.
    pub fn member(&self, added: bool, room: &str, user: &str) {
        let Some(on) = &self.0 else { return };
        let name = if added { MEMBER_ADDED } else { MEMBER_REMOVED };
        if on.names.enabled(name) {
            on.outbox
                .push(on.minter.event(name, Some(user), Some(room)));
        }
    }
}

/// One open socket as the webhooks see it. It closes when its last clone is dropped (the
/// disconnect handler that holds it runs once, on a clone), so a socket whose handler is
/// dropped unrun — its CONNECT could not be sent — still goes down.
#[derive(Clone)]
pub struct Tab {
    _open: Option<Arc<OpenTab>>,
}

struct OpenTab {
    changes: mpsc::UnboundedSender<Change>,
    user: Arc<str>,
}

impl Drop for OpenTab {
    fn drop(&mut self) {
        let _ = self.changes.send(Change::Down(self.user.clone()));
    }
}

/// Starts the task that batches, signs, posts and retries what `outbox` holds to `target`.
fn spawn_sender(
    config: &WebhooksConfig,
    target: http::Uri,
    outbox: sender::Outbox,
    metrics: Arc<Metrics>,
) {
    tokio::spawn(
        sender::Sender {
            outbox,
            target,
            secret: config.secret.clone().map(String::into_bytes),
            max_batch: config.max_batch,
            linger: config.linger,
            max_attempts: config.max_attempts,
            retry_base: config.retry_base,
            timeout: config.timeout,
            metrics,
        }
        .run(),
    );
}

/// Where batches go: `webhooks.url`, on the upstream (`app`) when it is a path.
fn target(url: &WebhookUrl, app: &Authority) -> Result<http::Uri, http::uri::InvalidUri> {
    match url {
        WebhookUrl::OnApp(path) => format!("http://{app}{path}").parse(),
        WebhookUrl::At(uri) => Ok(uri.clone()),
    }
}

/// Where the online users and occupied channels are kept in Redis (cluster mode): apart,
/// so a user id and a room name never share a key.
const USERS: occupancy::Namespace = occupancy::Namespace {
    prefix: "{sockgate:wh}:",
    label: "webhooks",
};
const ROOMS: occupancy::Namespace = occupancy::Namespace {
    prefix: "{sockgate:wh-rooms}:",
    label: "webhooks (rooms)",
};

pub(crate) const ONLINE: &str = "user.online";
pub(crate) const OFFLINE: &str = "user.offline";
pub(crate) const OCCUPIED: &str = "room.occupied";
pub(crate) const VACATED: &str = "room.vacated";
pub(crate) const MEMBER_ADDED: &str = "member.added";
pub(crate) const MEMBER_REMOVED: &str = "member.removed";

/// Which event names `webhooks.events` lets through.
#[derive(Clone)]
struct Names(Vec<&'static str>);

impl Names {
    fn enabled(&self, name: &str) -> bool {
        self.0.contains(&name)
    }
}

/// One event as POSTed: `{"id","name","userId"?,"room"?,"at"}` (`at`: Unix time in
/// milliseconds).
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct Event {
    /// Unique per event, the same on every retry: the receiver's idempotency key.
    pub id: String,
    pub name: &'static str,
    #[serde(rename = "userId", skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    pub at: u64,
}

/// Event ids: this instance's random id and a sequence number, unique across the cluster.
#[derive(Clone)]
struct Minter {
    instance: Arc<str>,
    seq: Arc<AtomicU64>,
}

impl Minter {
    fn event(&self, name: &'static str, user_id: Option<&str>, room: Option<&str>) -> Event {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64;
        Event {
            id: format!("{}-{n}", self.instance),
            name,
            user_id: user_id.map(str::to_owned),
            room: room.map(str::to_owned),
            at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_unique_ids_and_the_documented_shape() {
        let minter = Minter {
            instance: "abc".into(),
            seq: Arc::new(AtomicU64::new(0)),
        };
        let a = minter.event(ONLINE, Some("alice"), None);
        let b = minter.event(OFFLINE, Some("alice"), None);
        assert_ne!(a.id, b.id);
        let json = serde_json::to_value(&a).unwrap_or_default();
        let keys: Vec<_> = json
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["id", "name", "userId", "at"]);
        assert_eq!(json["name"], "user.online");
        assert_eq!(json["userId"], "alice");
        let member = minter.event(MEMBER_ADDED, Some("alice"), Some("presence:d"));
        let json = serde_json::to_value(&member).unwrap_or_default();
        assert_eq!(json["room"], "presence:d");
        let vacated = minter.event(VACATED, None, Some("team:1"));
        let json = serde_json::to_value(&vacated).unwrap_or_default();
        let keys: Vec<_> = json
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["id", "name", "room", "at"]);
    }

    #[test]
    fn a_path_is_on_the_upstream_and_a_url_is_used_as_is() {
        let app = Authority::from_static("127.0.0.1:4000");
        let target = |url: &str| {
            let url: WebhookUrl = url.parse().expect("a webhook URL");
            target(&url, &app).map(|u| u.to_string()).ok()
        };
        assert_eq!(
            target("/api/socket/webhooks?v=1").as_deref(),
            Some("http://127.0.0.1:4000/api/socket/webhooks?v=1")
        );
        assert_eq!(
            target("http://10.0.0.5:9000/hooks").as_deref(),
            Some("http://10.0.0.5:9000/hooks")
        );
    }

    #[test]
    fn only_configured_names_pass() {
        let names = Names(vec![ONLINE]);
        assert!(names.enabled(ONLINE));
        assert!(!names.enabled(OFFLINE));
    }
}
