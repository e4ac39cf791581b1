//! `[server]`, the public listener, and `[admin]`, the optional admin listener.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::error::{Invalid, at_least_one};

/// The public listener: what browsers connect to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub host: IpAddr,
    pub port: u16,
    /// Time a client gets to send a complete request head (slowloris guard).
    pub header_read_timeout_ms: u64,
    /// Largest request head accepted; larger ones get `431`.
    pub max_header_bytes: usize,
    /// Time in-flight requests get to finish after SIGTERM before connections are cut.
    pub drain_timeout_ms: u64,
    /// Public readiness path for platform health checks (e.g. `/healthz`); empty = off.
    pub health_path: String,
    /// A connection with no request in flight for this long is closed (HTTP/1.1 keep-alive
    /// and HTTP/2 alike; hyper has no idle timeout of its own for HTTP/2).
    pub idle_timeout_ms: u64,
    /// Most client connections open at once (upgraded ones included); further connections
    /// are accepted and closed at once. `0` = the file descriptor limit (raised to the hard limit) less 1/64 of it (256 to 4,096).
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// A response whose next chunk the client has not taken for this long (it stopped reading,
    /// or never opens its HTTP/2 window) is cut and its app connection released.
    pub send_stall_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::from([0, 0, 0, 0]),
            port: 3000,
            header_read_timeout_ms: 10_000,
            max_header_bytes: 64 * 1024,
            drain_timeout_ms: 10_000,
            health_path: String::new(),
            idle_timeout_ms: 60_000,
            max_connections: 0,
            max_concurrent_streams: 100,
            send_stall_timeout_ms: 30_000,
        }
    }
}

impl ServerConfig {
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// `health_path` is checked against `realtime.path`, with the other rules across sections.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        at_least_one(&[
            (
                "server.max_concurrent_streams",
                u64::from(self.max_concurrent_streams),
            ),
            ("server.idle_timeout_ms", self.idle_timeout_ms),
            ("server.send_stall_timeout_ms", self.send_stall_timeout_ms),
        ])
    }
}

/// The optional admin listener: `/metrics`, `/livez`, `/readyz` over TCP (no publishing).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port`, e.g. `127.0.0.1:9464`; empty = off.
    pub listen: String,
}

impl AdminConfig {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if !self.listen.is_empty() && self.listen.parse::<SocketAddr>().is_err() {
            return Err(Invalid::new(
                "admin.listen",
                format!("`{}` is not an address like 127.0.0.1:9464", self.listen),
            ));
        }
        Ok(())
    }
}
