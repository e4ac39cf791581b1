//! `[webhooks]`: `user.online`… events POSTed to the app.

use http::Uri;
use serde::{Deserialize, Serialize};

use super::error::{Invalid, at_least_one};

/// Webhooks to the app: `user.online` / `user.offline`, batched, signed and retried
/// ([`crate::webhooks`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Where batches are POSTed: a path starting with `/` (on the app, `upstream.url`) or a
    /// plain `http://host:port/path` URL; empty = webhooks off.
    pub url: String,
    /// Which events are sent: `user.online`, `user.offline`, `room.occupied`,
    /// `room.vacated`, `member.added`, `member.removed`.
    pub events: Vec<String>,
    /// HMAC-SHA256 key; when set every POST carries `X-Sockgate-Signature: sha256=<hex>` of
    /// the exact body.
    pub secret: String,
    /// A user whose last socket closed is offline only if no socket of theirs opens within
    /// this time (a reload produces neither event).
    pub grace_ms: u64,
    /// Most events in one POST.
    pub max_batch: usize,
    /// How long a first event waits for others to share its POST.
    pub linger_ms: u64,
    /// Most events waiting to be sent; past it the oldest are dropped (and counted).
    pub max_queue: usize,
    /// Tries per batch (the first included) on a 5xx, 429, timeout or connection error.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled on each further one (at most 30 s).
    pub retry_base_ms: u64,
    /// Time the receiver gets to answer one POST.
    pub timeout_ms: u64,
    /// Cluster mode: an instance that stops refreshing its liveness key for this long is
    /// dead, and its users go offline (unless connected elsewhere) within this plus a third
    /// of it.
    pub instance_ttl_ms: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            events: vec!["user.online".into(), "user.offline".into()],
            secret: String::new(),
            grace_ms: 5_000,
            max_batch: 100,
            linger_ms: 100,
            max_queue: 10_000,
            max_attempts: 5,
            retry_base_ms: 500,
            timeout_ms: 5_000,
            instance_ttl_ms: 15_000,
        }
    }
}

/// The webhook events sockgate knows.
pub const WEBHOOK_EVENTS: [&str; 6] = [
    "user.online",
    "user.offline",
    "room.occupied",
    "room.vacated",
    "member.added",
    "member.removed",
];

impl WebhooksConfig {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let url = &self.url;
        let ok = url.is_empty()
            || if url.starts_with('/') {
                url.parse::<http::uri::PathAndQuery>().is_ok()
            } else {
                url.parse::<Uri>()
                    .is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some())
            };
        if !ok {
            return Err(Invalid::new(
                "webhooks.url",
                format!(
                    "`{url}` must be a path on the app (e.g. /api/socket/webhooks) or a plain \
                     http:// URL (e.g. http://127.0.0.1:4321/api/socket/webhooks)"
                ),
            ));
        }
        if let Some(bad) = self
            .events
            .iter()
            .find(|e| !WEBHOOK_EVENTS.contains(&e.as_str()))
        {
            return Err(Invalid::new(
                "webhooks.events",
                format!("`{bad}` is not one of {WEBHOOK_EVENTS:?}"),
            ));
        }
        at_least_one(&[
            ("webhooks.max_batch", self.max_batch as u64),
            ("webhooks.max_queue", self.max_queue as u64),
            ("webhooks.max_attempts", u64::from(self.max_attempts)),
            ("webhooks.timeout_ms", self.timeout_ms),
            ("webhooks.instance_ttl_ms", self.instance_ttl_ms),
        ])
    }
}
