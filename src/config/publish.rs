//! `[publish]`: the publish API the app calls over a Unix socket (or loopback TCP).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::{Invalid, at_least_one};
use super::value::{millis, optional, parsed, shown_or_empty};

/// The publish API the app calls over a Unix socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PublishConfig {
    pub socket: PathBuf,
    /// File mode of the socket, octal, e.g. `"0660"`.
    #[serde(deserialize_with = "file_mode", serialize_with = "octal")]
    pub socket_mode: u32,
    pub max_body_bytes: usize,
    pub max_batch: usize,
    /// Time a client gets to send a request's body, from its head on; past it `408` and the
    /// connection is closed (a stuck or trickling client holds no connection for longer).
    #[serde(rename = "body_timeout_ms", with = "millis")]
    pub body_timeout: Duration,
    /// Loopback `host:port` for the same API over TCP, for apps that cannot use a Unix
    /// socket; empty = off. Requires `token`.
    #[serde(deserialize_with = "tcp_listen", serialize_with = "shown_or_empty")]
    pub tcp_listen: Option<SocketAddr>,
    /// Bearer token the TCP listener requires (at least 16 characters).
    pub token: String,
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            // Empty: resolved at load time to a private per-user path (`default_socket_path`).
            socket: PathBuf::new(),
            socket_mode: 0o660,
            max_body_bytes: 1024 * 1024,
            max_batch: 1000,
            body_timeout: Duration::from_millis(10_000),
            tcp_listen: None,
            token: String::new(),
        }
    }
}

/// `$XDG_RUNTIME_DIR/sockgate/sockgate.sock` when `XDG_RUNTIME_DIR` is set (a per-user
/// directory only that user can enter), else `/tmp/sockgate-<uid>/sockgate.sock`. The Node
/// client (`clients/node`) resolves its default the same way.
pub fn default_socket_path(xdg_runtime_dir: Option<OsString>, uid: u32) -> PathBuf {
    match xdg_runtime_dir.filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("sockgate").join("sockgate.sock"),
        None => PathBuf::from(format!("/tmp/sockgate-{uid}")).join("sockgate.sock"),
    }
}

/// The effective user id, as the default path and the ownership checks use it.
pub fn current_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

impl PublishConfig {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if let Some(addr) = self.tcp_listen {
            if !addr.ip().is_loopback() {
                return Err(Invalid::new(
                    "publish.tcp_listen",
                    format!(
                        "`{addr}` is not a loopback address: publishing must not be reachable from the network"
                    ),
                ));
            }
            if self.token.len() < 16 {
                return Err(Invalid::new(
                    "publish.token",
                    "publish.tcp_listen needs a token of at least 16 characters (SIDECAR_PUBLISH__TOKEN)",
                ));
            }
        }
        at_least_one(&[
            ("publish.max_batch", self.max_batch == 0),
            ("publish.body_timeout_ms", self.body_timeout.is_zero()),
        ])
    }
}

/// `socket_mode`: octal text (`"0660"`, `"0o660"`) to the mode bits.
fn file_mode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    parsed(deserializer, |text| {
        u32::from_str_radix(text.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| format!("`{text}` is not an octal file mode like \"0660\""))
    })
}

/// The mode bits as the octal text a user writes.
fn octal<S: Serializer>(mode: &u32, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_args!("{mode:04o}"))
}

fn tcp_listen<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SocketAddr>, D::Error> {
    optional(deserializer, |text| {
        text.parse()
            .map_err(|_| format!("`{text}` is not an address like 127.0.0.1:7070"))
    })
}
