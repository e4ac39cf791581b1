//! Webhooks to the app: `user.online` when a user's first socket opens, `user.offline` when
//! their last one closed and none opened within `webhooks.grace_ms` (a reload produces
//! neither). Cluster-wide in cluster mode, each event decided by exactly one instance.
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

use tokio::sync::mpsc;

use crate::config::{Config, ms};
use crate::metrics::Metrics;

use crate::occupancy::{self, Change, Transition};
pub use signature::sign;

/// The hook the realtime endpoint calls; does nothing when webhooks are off.
#[derive(Clone, Default)]
pub struct Webhooks {
    changes: Option<mpsc::UnboundedSender<Change>>,
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
        if config.url.is_empty() {
            return Self::default();
        }
        let target = match target(settings) {
            Ok(uri) => uri,
            Err(e) => {
                // Validated at load time; kept off rather than trusted.
                tracing::error!(
                    "webhooks.url `{}` is not a URL ({e}): webhooks off",
                    config.url
                );
                return Self::default();
            }
        };
        let instance = socketioxide_core::Uid::new().to_string();
        let outbox = sender::Outbox::new(config.max_queue, metrics.clone());
        let names = Names {
            online: config.events.iter().any(|e| e == ONLINE),
            offline: config.events.iter().any(|e| e == OFFLINE),
        };
        let minter = Minter {
            instance: instance.clone().into(),
            seq: Arc::new(AtomicU64::new(0)),
        };
        tokio::spawn(
            sender::Sender {
                outbox: outbox.clone(),
                target,
                secret: Some(config.secret.clone().into_bytes()).filter(|s| !s.is_empty()),
                max_batch: config.max_batch,
                linger: ms(config.linger_ms),
                max_attempts: config.max_attempts,
                retry_base: ms(config.retry_base_ms),
                timeout: ms(config.timeout_ms),
                metrics,
            }
            .run(),
        );
        let shared = redis.map(|(client, link)| {
            Arc::new(occupancy::Shared::new(
                client,
                link,
                instance,
                ms(config.instance_ttl_ms),
                NAMESPACE,
            ))
        });
        let report = move |transition, user: &Arc<str>, _: Option<&Arc<str>>| {
            let name = match transition {
                Transition::Arrived => ONLINE,
                Transition::Left => OFFLINE,
            };
            if names.enabled(name) {
                outbox.push(minter.event(name, user.clone()));
            }
        };
        let tx = occupancy::Tracker::spawn(shared, ms(config.grace_ms), Box::new(report));
        tracing::info!(url = %config.url, events = ?config.events, signed = !config.secret.is_empty(), "webhooks on");
        Self { changes: Some(tx) }
    }

    /// A socket of `user` (when known) opened; the returned [`Tab`] is closed when it goes.
    pub fn connected(&self, user: Option<Arc<str>>) -> Tab {
        let tab = self.changes.clone().zip(user);
        if let Some((changes, user)) = &tab {
            let _ = changes.send(Change::Up(user.clone(), None));
        }
        Tab(tab)
    }
}

/// One open socket as the webhooks see it.
#[derive(Clone)]
pub struct Tab(Option<(mpsc::UnboundedSender<Change>, Arc<str>)>);

impl Tab {
    /// The socket closed.
    pub fn closed(self) {
        if let Some((changes, user)) = self.0 {
            let _ = changes.send(Change::Down(user));
        }
    }
}

/// Where batches go: `webhooks.url`, a path on the upstream when it starts with `/`.
fn target(settings: &Config) -> Result<http::Uri, http::uri::InvalidUri> {
    let url = &settings.webhooks.url;
    if url.starts_with('/') {
        format!("http://{}{url}", settings.upstream_authority()).parse()
    } else {
        url.parse()
    }
}

/// Where the online users are kept in Redis (cluster mode).
const NAMESPACE: occupancy::Namespace = occupancy::Namespace {
    prefix: "{sockgate:wh}:",
    label: "webhooks",
};

pub(crate) const ONLINE: &str = "user.online";
pub(crate) const OFFLINE: &str = "user.offline";

/// Which event names `webhooks.events` lets through.
#[derive(Clone, Copy)]
struct Names {
    online: bool,
    offline: bool,
}

impl Names {
    fn enabled(&self, name: &str) -> bool {
        match name {
            ONLINE => self.online,
            OFFLINE => self.offline,
            _ => false,
        }
    }
}

/// One event as POSTed: `{"id","name","userId","at"}` (`at`: Unix time in milliseconds).
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct Event {
    /// Unique per event, the same on every retry: the receiver's idempotency key.
    pub id: String,
    pub name: &'static str,
    #[serde(rename = "userId", serialize_with = "as_str")]
    pub user_id: Arc<str>,
    pub at: u64,
}

fn as_str<S: serde::Serializer>(value: &Arc<str>, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_str(value)
}

/// Event ids: this instance's random id and a sequence number, unique across the cluster.
#[derive(Clone)]
struct Minter {
    instance: Arc<str>,
    seq: Arc<AtomicU64>,
}

impl Minter {
    fn event(&self, name: &'static str, user_id: Arc<str>) -> Event {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64;
        Event {
            id: format!("{}-{n}", self.instance),
            name,
            user_id,
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
        let a = minter.event(ONLINE, "alice".into());
        let b = minter.event(OFFLINE, "alice".into());
        assert_ne!(a.id, b.id);
        let json = serde_json::to_value(&a).unwrap_or_default();
        let keys: Vec<_> = json
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["id", "name", "userId", "at"]);
        assert_eq!(json["name"], "user.online");
        assert_eq!(json["userId"], "alice");
    }

    #[test]
    fn a_path_is_on_the_upstream_and_a_url_is_used_as_is() {
        let mut settings = Config::default();
        settings.upstream.url = "http://127.0.0.1:4000".into();
        settings.webhooks.url = "/api/socket/webhooks?v=1".into();
        assert_eq!(
            target(&settings).map(|u| u.to_string()).ok().as_deref(),
            Some("http://127.0.0.1:4000/api/socket/webhooks?v=1")
        );
        settings.webhooks.url = "http://10.0.0.5:9000/hooks".into();
        assert_eq!(
            target(&settings).map(|u| u.to_string()).ok().as_deref(),
            Some("http://10.0.0.5:9000/hooks")
        );
    }

    #[test]
    fn only_configured_names_pass() {
        let names = Names {
            online: true,
            offline: false,
        };
        assert!(names.enabled(ONLINE));
        assert!(!names.enabled(OFFLINE));
    }
}
