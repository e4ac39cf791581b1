//! `[realtime]`: the Socket.IO endpoint sockgate answers itself.

use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Serialize};

use super::error::{Invalid, at_least_one};
use super::value::millis;

/// The Socket.IO endpoint sockgate answers itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RealtimeConfig {
    /// Path prefix served by sockgate; everything else goes to the app.
    pub path: String,
    /// Allowed Engine.IO transports: `polling`, `websocket`.
    pub transports: Vec<Transport>,
    #[serde(rename = "ping_interval_ms", with = "millis")]
    pub ping_interval: Duration,
    #[serde(rename = "ping_timeout_ms", with = "millis")]
    pub ping_timeout: Duration,
    /// Largest HTTP long-polling POST body accepted from a client. Clients only send
    /// handshakes, pongs and `subscribe`/`unsubscribe`/`presence` (sockgate takes no other
    /// client events), so this is small. Also the most sockgate batches into one polling response (a larger message goes alone).
    pub max_poll_payload_bytes: u64,
    /// Largest WebSocket message (and frame) accepted from a client; a larger one closes the
    /// socket. Binary attachments are refused whatever their size. What sockgate sends is
    /// not limited by it.
    pub max_ws_message_bytes: usize,
    /// Largest `auth` payload of a Socket.IO CONNECT (its JSON text, or its msgpack bytes);
    /// a larger one is refused with a `connect_error` before it is parsed. sockgate reads
    /// only `offset` / `offsets` from it, so it is bounded apart from messages.
    pub max_auth_bytes: usize,
    /// Packets queued per socket before it counts as a slow consumer.
    pub max_buffer_size: usize,
    /// Read buffer per WebSocket; clients send almost nothing, so a small one saves memory
    /// on every idle socket.
    pub ws_read_buffer_bytes: usize,
    /// Origins allowed besides the request's own host, e.g. `https://app.example.com`.
    pub allowed_origins: Vec<String>,
    /// Room a socket joins once authenticated: `{room_prefix}{userId}`.
    pub room_prefix: String,
    /// Most sockets open at once; further handshakes get 503 (the proxy keeps working).
    pub max_connections: usize,
    /// Most sockets one user may have open on this instance: a logged-in client must not
    /// take every slot of `max_connections` from everyone else. Further CONNECTs get a
    /// `connect_error`.
    pub max_sockets_per_user: usize,
    /// Most Engine.IO sessions that have not completed their Socket.IO CONNECT (new ones,
    /// and ones whose session check failed); further handshakes get 503.
    pub max_pending_connections: usize,
    /// Time a new session gets to complete its Socket.IO CONNECT (including the session
    /// check) before it is closed and its memory freed.
    #[serde(rename = "connect_timeout_ms", with = "millis")]
    pub connect_timeout: Duration,
    /// How Socket.IO packets are encoded: `default` (JSON text, socket.io-parser) or
    /// `msgpack` (binary, for clients using socket.io-msgpack-parser). Every client of an
    /// instance must use the same one, as with the reference server.
    pub parser: Parser,
}

/// A Socket.IO packet encoding.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Parser {
    #[default]
    Default,
    Msgpack,
}

/// An Engine.IO transport.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Polling,
    Websocket,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self {
            path: "/socket.io".into(),
            transports: vec![Transport::Polling, Transport::Websocket],
            ping_interval: Duration::from_millis(25_000),
            ping_timeout: Duration::from_millis(20_000),
            max_poll_payload_bytes: 16 * 1024,
            max_ws_message_bytes: 16 * 1024,
            max_auth_bytes: 16 * 1024,
            max_buffer_size: 128,
            ws_read_buffer_bytes: 256,
            allowed_origins: Vec::new(),
            room_prefix: "user:".into(),
            max_connections: 50_000,
            max_sockets_per_user: 100,
            max_pending_connections: 1024,
            connect_timeout: Duration::from_millis(10_000),
            parser: Parser::Default,
        }
    }
}

impl RealtimeConfig {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let path = &self.path;
        if !path.starts_with('/') || path.len() < 2 || path.ends_with('/') {
            return Err(Invalid::new(
                "realtime.path",
                format!("`{path}` must start with `/`, not end with `/`, and not be `/`"),
            ));
        }
        if self.transports.is_empty() {
            return Err(Invalid::new(
                "realtime.transports",
                "at least one of \"polling\", \"websocket\" is needed",
            ));
        }
        for origin in &self.allowed_origins {
            let ok = origin
                .parse::<Uri>()
                .is_ok_and(|u| u.scheme().is_some() && u.authority().is_some());
            if !ok && origin != "*" {
                return Err(Invalid::new(
                    "realtime.allowed_origins",
                    format!("`{origin}` is not an origin like https://app.example.com"),
                ));
            }
        }
        at_least_one(&[
            (
                "realtime.max_sockets_per_user",
                self.max_sockets_per_user == 0,
            ),
            (
                "realtime.max_pending_connections",
                self.max_pending_connections == 0,
            ),
        ])?;
        if self.max_auth_bytes < 256 {
            return Err(Invalid::new(
                "realtime.max_auth_bytes",
                "must be at least 256 (an `auth.offset` has to fit)",
            ));
        }
        if self.max_ws_message_bytes < 1024 || self.max_poll_payload_bytes < 1024 {
            let key = if self.max_ws_message_bytes < 1024 {
                "realtime.max_ws_message_bytes"
            } else {
                "realtime.max_poll_payload_bytes"
            };
            return Err(Invalid::new(
                key,
                "must be at least 1024 (a CONNECT with its auth payload must fit)",
            ));
        }
        Ok(())
    }
}
