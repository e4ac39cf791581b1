//! `[webhooks]`: `user.online`… events POSTed to the app.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use http::Uri;
use http::uri::PathAndQuery;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use super::error::{Invalid, at_least_one};
use super::value::{millis, optional, path_on_app, shown_or_empty, text_or_off};

/// Webhooks to the app: `user.online` / `user.offline`, batched, signed and retried
/// ([`crate::webhooks`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Where batches are POSTed: a path starting with `/` (on the app, `upstream.url`) or a
    /// plain `http://host:port/path` URL; empty = webhooks off.
    #[serde(deserialize_with = "webhook_url", serialize_with = "shown_or_empty")]
    pub url: Option<WebhookUrl>,
    /// Which events are sent: `user.online`, `user.offline`, `room.occupied`,
    /// `room.vacated`, `member.added`, `member.removed`.
    /// Checked at load against `WEBHOOK_EVENTS`.
    #[serde(deserialize_with = "known_events")]
    pub events: Vec<&'static str>,
    /// HMAC-SHA256 key; when set every POST carries `X-Sockgate-Signature: sha256=<hex>` of
    /// the exact body; empty = unsigned.
    #[serde(deserialize_with = "text_or_off", serialize_with = "shown_or_empty")]
    pub secret: Option<String>,
    /// A user whose last socket closed is offline only if no socket of theirs opens within
    /// this time (a reload produces neither event).
    #[serde(rename = "grace_ms", with = "millis")]
    pub grace: Duration,
    /// Most events in one POST.
    pub max_batch: usize,
    /// How long a first event waits for others to share its POST.
    #[serde(rename = "linger_ms", with = "millis")]
    pub linger: Duration,
    /// Most events waiting to be sent; past it the oldest are dropped (and counted).
    pub max_queue: usize,
    /// Tries per batch (the first included) on a 5xx, 429, timeout or connection error.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled on each further one (at most 30 s).
    #[serde(rename = "retry_base_ms", with = "millis")]
    pub retry_base: Duration,
    /// Time the receiver gets to answer one POST.
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: Duration,
    /// Cluster mode: an instance that stops refreshing its liveness key for this long is
    /// dead, and its users go offline (unless connected elsewhere) within this plus a third
    /// of it.
    #[serde(rename = "instance_ttl_ms", with = "millis")]
    pub instance_ttl: Duration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            url: None,
            events: vec!["user.online", "user.offline"],
            secret: None,
            grace: Duration::from_millis(5_000),
            max_batch: 100,
            linger: Duration::from_millis(100),
            max_queue: 10_000,
            max_attempts: 5,
            retry_base: Duration::from_millis(500),
            timeout: Duration::from_millis(5_000),
            instance_ttl: Duration::from_millis(15_000),
        }
    }
}

/// Where webhook batches are POSTed.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookUrl {
    /// A path on the app, at `upstream.url`.
    OnApp(PathAndQuery),
    /// A plain `http://` URL elsewhere.
    At(Uri),
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OnApp(path) => path.fmt(f),
            Self::At(uri) => uri.fmt(f),
        }
    }
}

impl FromStr for WebhookUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        let parsed = if url.starts_with('/') {
            path_on_app(url).map(Self::OnApp)
        } else {
            url.parse::<Uri>()
                .ok()
                .filter(|u| u.scheme_str() == Some("http") && u.authority().is_some())
                .map(Self::At)
        };
        parsed.ok_or_else(|| {
            format!(
                "`{url}` must be a path on the app (e.g. /api/socket/webhooks) or a plain \
                 http:// URL (e.g. http://127.0.0.1:4321/api/socket/webhooks)"
            )
        })
    }
}

fn webhook_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<WebhookUrl>, D::Error> {
    optional(deserializer, str::parse)
}

/// The webhook events sockgate knows.
const WEBHOOK_EVENTS: [&str; 6] = [
    "user.online",
    "user.offline",
    "room.occupied",
    "room.vacated",
    "member.added",
    "member.removed",
];

/// Event names as sockgate spells them: an unknown one is refused, naming the known ones.
fn known_events<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<&'static str>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|name| {
            WEBHOOK_EVENTS
                .iter()
                .copied()
                .find(|known| known == name)
                .ok_or_else(|| {
                    D::Error::custom(format!("`{name}` is not one of {WEBHOOK_EVENTS:?}"))
                })
        })
        .collect()
}

impl WebhooksConfig {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        at_least_one(&[
            ("webhooks.max_batch", self.max_batch == 0),
            ("webhooks.max_queue", self.max_queue == 0),
            ("webhooks.max_attempts", self.max_attempts == 0),
            ("webhooks.timeout_ms", self.timeout.is_zero()),
            ("webhooks.instance_ttl_ms", self.instance_ttl.is_zero()),
        ])
    }
}
