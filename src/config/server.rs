//! `[server]`, the public listener, and `[admin]`, the optional admin listener.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::error::{Invalid, at_least_one};
use super::value::{millis, optional, shown_or_empty, text_or_off};

/// The public listener: what browsers connect to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub host: IpAddr,
    pub port: u16,
    /// Time a client gets to send a complete request head (slowloris guard).
    #[serde(rename = "header_read_timeout_ms", with = "millis")]
    pub header_read_timeout: Duration,
    /// Largest request head accepted; larger ones get `431`.
    pub max_header_bytes: usize,
    /// Time in-flight requests get to finish after SIGTERM before connections are cut.
    #[serde(rename = "drain_timeout_ms", with = "millis")]
    pub drain_timeout: Duration,
    /// Public readiness path for platform health checks (e.g. `/healthz`); empty = off.
    /// What it must look like is checked with the rules across sections.
    #[serde(deserialize_with = "text_or_off", serialize_with = "shown_or_empty")]
    pub health_path: Option<String>,
    /// A connection with no request in flight for this long is closed (HTTP/1.1 keep-alive
    /// and HTTP/2 alike; hyper has no idle timeout of its own for HTTP/2).
    #[serde(rename = "idle_timeout_ms", with = "millis")]
    pub idle_timeout: Duration,
    /// Most client connections open at once (upgraded ones included); further connections
    /// are accepted and closed at once. `0` = the file descriptor limit (raised to the hard limit) less 1/64 of it (256 to 4,096).
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// A response whose next chunk the client has not taken for this long (it stopped reading,
    /// or never opens its HTTP/2 window) is cut and its app connection released.
    #[serde(rename = "send_stall_timeout_ms", with = "millis")]
    pub send_stall_timeout: Duration,
    /// How the work is spread over the CPUs: see [`RuntimeShape`].
    pub runtime: RuntimeShape,
}

/// `server.runtime`: the shape of sockgate's async runtime (BENCHMARKS.md, "Stage 4 (issue
/// 34)": on one CPU the current-thread runtime does the same work in fewer instructions).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeShape {
    /// `single` when this process may use one CPU, `multi` when more.
    #[default]
    Auto,
    /// One work-stealing runtime with a worker per CPU (tokio's multi-thread runtime).
    Multi,
    /// One thread runs every task (tokio's current-thread runtime).
    Single,
}

/// The runtime `server.runtime` resolves to on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Multi,
    Single,
}

impl RuntimeShape {
    /// The runtime to start, given the CPUs this process may use (its affinity mask and
    /// cgroup quota, as `taskset` or a container's CPU limit leave them).
    pub fn resolve(self) -> Runtime {
        match self {
            Self::Multi => Runtime::Multi,
            Self::Single => Runtime::Single,
            Self::Auto => match std::thread::available_parallelism().map_or(1, usize::from) {
                1 => Runtime::Single,
                _ => Runtime::Multi,
            },
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::from([0, 0, 0, 0]),
            port: 3000,
            header_read_timeout: Duration::from_millis(10_000),
            max_header_bytes: 64 * 1024,
            drain_timeout: Duration::from_millis(10_000),
            health_path: None,
            idle_timeout: Duration::from_millis(60_000),
            max_connections: 0,
            max_concurrent_streams: 100,
            send_stall_timeout: Duration::from_millis(30_000),
            runtime: RuntimeShape::Auto,
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
                self.max_concurrent_streams == 0,
            ),
            ("server.idle_timeout_ms", self.idle_timeout.is_zero()),
            (
                "server.send_stall_timeout_ms",
                self.send_stall_timeout.is_zero(),
            ),
        ])
    }
}

/// The optional admin listener: `/metrics`, `/livez`, `/readyz` over TCP (no publishing).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port`, e.g. `127.0.0.1:9464`; empty = off.
    #[serde(deserialize_with = "admin_listen", serialize_with = "shown_or_empty")]
    pub listen: Option<SocketAddr>,
}

fn admin_listen<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    optional(deserializer, |text| {
        text.parse()
            .map_err(|_| format!("`{text}` is not an address like 127.0.0.1:9464"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_shape_resolves_to_one_runtime() {
        assert_eq!(RuntimeShape::Multi.resolve(), Runtime::Multi);
        assert_eq!(RuntimeShape::Single.resolve(), Runtime::Single);
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let auto = if cpus == 1 {
            Runtime::Single
        } else {
            Runtime::Multi
        };
        assert_eq!(RuntimeShape::Auto.resolve(), auto);
    }

    #[test]
    fn the_runtime_shape_is_written_in_kebab_case() {
        for (text, shape) in [
            ("auto", RuntimeShape::Auto),
            ("multi", RuntimeShape::Multi),
            ("single", RuntimeShape::Single),
        ] {
            let config: ServerConfig =
                toml::from_str(&format!("runtime = \"{text}\"")).expect("parses");
            assert_eq!(config.runtime, shape);
        }
        assert!(toml::from_str::<ServerConfig>("runtime = \"per-core\"").is_err());
    }
}
