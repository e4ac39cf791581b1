//! Configuration: the typed settings of every part of sockgate and the one place they are loaded.
//!
//! Precedence, lowest to highest: built-in defaults < `sidecar.toml` (or `--config PATH`) <
//! `SIDECAR_*` environment variables (nested keys joined by `__`, e.g. `SIDECAR_UPSTREAM__URL`) <
//! bare `PORT` (what Railway/Heroku/Fly set) < command-line flags. A value that does not parse or
//! validate stops startup with one line naming the key, where the value came from and why.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use http::Uri;
use serde::{Deserialize, Serialize};

/// The file read when `--config` is not given; a missing default file is not an error.
pub const DEFAULT_CONFIG_FILE: &str = "sidecar.toml";

/// The smallest `history.max_bytes`: a few dozen messages of a few KiB.
const MIN_HISTORY_BYTES: usize = 64 * 1024;

/// Everything sockgate can be told. Each section maps to one `[section]` of `sidecar.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub proxy: ProxyConfig,
    pub realtime: RealtimeConfig,
    pub auth: AuthConfig,
    pub channels: ChannelsConfig,
    pub publish: PublishConfig,
    pub admin: AdminConfig,
    pub cluster: ClusterConfig,
    pub history: HistoryConfig,
    pub webhooks: WebhooksConfig,
    pub log: LogConfig,
}

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

/// The Node app sockgate fronts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `http://host:port` of the app; only plain HTTP on a private network makes sense here.
    pub url: String,
    pub connect_timeout_ms: u64,
    /// Time the app gets to send response headers; the body may stream for longer.
    pub response_timeout_ms: u64,
    /// Must stay below Node's 5 s `keepAliveTimeout`, or a reused connection may be closed
    /// by Node while a request is on its way.
    pub pool_idle_timeout_ms: u64,
    pub pool_max_idle_per_host: usize,
    /// What readiness (`/readyz`) requests from the app to see it answer HTTP: any status
    /// counts, no answer within 1 s does not. Must not need a login.
    pub ready_path: String,
}

/// How proxied requests are rewritten.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Trust `X-Forwarded-*` sent by the client (true only behind a load balancer that sets
    /// them): append to them instead of overwriting.
    pub trust_forwarded: bool,
    /// Slowest request body accepted once the grace period is over (time the app spends not
    /// reading does not count); slower uploads get `408`. `0` = no minimum.
    pub min_body_rate_bytes_per_sec: u64,
    /// Time an upload may take before its rate is checked.
    pub min_body_rate_grace_ms: u64,
}

/// The Socket.IO endpoint sockgate answers itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RealtimeConfig {
    /// Path prefix served by sockgate; everything else goes to the app.
    pub path: String,
    /// Allowed Engine.IO transports: `polling`, `websocket`.
    pub transports: Vec<Transport>,
    pub ping_interval_ms: u64,
    pub ping_timeout_ms: u64,
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
    pub connect_timeout_ms: u64,
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

/// How sockets are authenticated through the app's own session route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Path (and optional query) of the app's session route, called with `GET`.
    pub session_path: String,
    /// Handshake request headers forwarded to the session route.
    pub forward_headers: Vec<String>,
    /// JSON pointer (RFC 6901) to the user id in the session route's response.
    pub user_id_pointer: String,
    /// JSON pointer to the rooms (an array of strings) the user's sockets join besides their
    /// user room; empty, or nothing at the pointer, = none.
    pub rooms_pointer: String,
    /// JSON pointer to what presence shows of a user (any JSON, at most 1 KiB serialized);
    /// empty, or nothing at the pointer, = null.
    pub user_info_pointer: String,
    pub timeout_ms: u64,
    pub cache_ttl_ms: u64,
    pub negative_ttl_ms: u64,
    pub cache_max_entries: u64,
    /// Most session-route calls in flight at once (a deploy reconnects every browser at once).
    pub max_concurrent: usize,
    /// How often connected sockets are re-checked; `0` turns revalidation off.
    pub revalidate_interval_ms: u64,
    /// Most session checks waiting for one of the `max_concurrent` places; further ones are
    /// refused at once ("session unavailable").
    pub max_waiting: usize,
    /// Largest credentials (the handshake headers the session check reads, together) a
    /// handshake may carry; larger ones get 431 before a session is made.
    pub max_credential_bytes: usize,
}

/// Rooms beyond the user's own: from the session route, or subscribed at runtime with the
/// app's authorization.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelsConfig {
    /// Path of the app's route that authorizes a `subscribe`, called with `POST`.
    pub authorize_path: String,
    /// Room prefixes any socket may subscribe to without asking the app.
    pub public_prefixes: Vec<String>,
    /// Most rooms a socket is in besides its user room (session rooms and subscriptions).
    pub max_rooms_per_socket: usize,
    /// Most `subscribe` and `presence` requests a socket may send per second (a burst of as
    /// many is fine).
    pub max_subscribes_per_sec: u32,
    /// Room prefixes whose members sockgate tracks: distinct users, announced with
    /// `presence:join`/`presence:leave` and listed on request.
    pub presence_prefixes: Vec<String>,
    /// How long a user's last socket may be gone from a presence room before they leave it
    /// (a reload within it produces neither a leave nor a join).
    pub presence_grace_ms: u64,
    /// Cluster mode: an instance that has not refreshed its presence liveness key for this
    /// long is taken for dead, and its members leave their rooms.
    pub presence_instance_ttl_ms: u64,
    /// Most distinct users a `subscribe` lets into a presence room: every arrival is
    /// announced to every member and a member list carries up to 1 KiB per member, so an
    /// unbounded room costs the square of its size. Rooms the session route lists are the
    /// app's word and not held to it.
    pub max_presence_members: usize,
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        Self {
            authorize_path: "/api/socket/authorize".into(),
            public_prefixes: Vec::new(),
            max_rooms_per_socket: 100,
            max_subscribes_per_sec: 10,
            presence_prefixes: vec!["presence:".into()],
            presence_grace_ms: 5_000,
            presence_instance_ttl_ms: 15_000,
            max_presence_members: 100,
        }
    }
}

/// The publish API the app calls over a Unix socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PublishConfig {
    pub socket: PathBuf,
    /// File mode of the socket, octal, e.g. `"0660"`.
    pub socket_mode: String,
    pub max_body_bytes: usize,
    pub max_batch: usize,
    /// Time a client gets to send a request's body, from its head on; past it `408` and the
    /// connection is closed (a stuck or trickling client holds no connection for longer).
    pub body_timeout_ms: u64,
    /// Loopback `host:port` for the same API over TCP, for apps that cannot use a Unix
    /// socket; empty = off. Requires `token`.
    pub tcp_listen: String,
    /// Bearer token the TCP listener requires (at least 16 characters).
    pub token: String,
}

/// The optional admin listener: `/metrics`, `/livez`, `/readyz` over TCP (no publishing).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port`, e.g. `127.0.0.1:9464`; empty = off.
    pub listen: String,
}

/// Several instances sharing rooms through Redis.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://[[user]:password@]host:port[/db]` (Redis ≥ 7), `rediss://` for TLS,
    /// `redis[s]-cluster://host:port?node=host2:port2` for a Redis Cluster,
    /// `redis[s]-sentinel://host:port?node=…&sentinelServiceName=…` behind Sentinel; empty =
    /// single instance, in memory.
    pub redis_url: String,
    /// A PEM file of CA certificates trusted for a TLS Redis (`rediss…` URLs), besides the
    /// system's; empty = the system's only.
    pub tls_ca_file: String,
    /// How long cluster-wide questions (presence, stats) wait for the other instances.
    pub request_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            tls_ca_file: String::new(),
            request_timeout_ms: 1_000,
        }
    }
}

/// Recent messages kept per user so reconnecting clients get what they missed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    pub enabled: bool,
    /// Messages kept per user (about this many in cluster mode: Redis trims approximately).
    pub max_messages: usize,
    /// How long a user's messages are kept after their last one.
    pub max_age_ms: u64,
    /// Most memory the single-instance history may take, all rooms together (an estimate of
    /// what its messages hold); past it the rooms least recently published to are dropped
    /// whole. Not used in cluster mode: Redis bounds its own memory (`maxmemory`).
    pub max_bytes: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_messages: 100,
            max_age_ms: 120_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

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

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` env-filter directives; `RUST_LOG` wins when set.
    pub filter: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
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

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:4321".into(),
            connect_timeout_ms: 2_000,
            response_timeout_ms: 60_000,
            pool_idle_timeout_ms: 4_000,
            pool_max_idle_per_host: 256,
            ready_path: "/".into(),
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            trust_forwarded: false,
            min_body_rate_bytes_per_sec: 240,
            min_body_rate_grace_ms: 5_000,
        }
    }
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self {
            path: "/socket.io".into(),
            transports: vec![Transport::Polling, Transport::Websocket],
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            max_poll_payload_bytes: 16 * 1024,
            max_ws_message_bytes: 16 * 1024,
            max_auth_bytes: 8 * 1024,
            max_buffer_size: 128,
            ws_read_buffer_bytes: 256,
            allowed_origins: Vec::new(),
            room_prefix: "user:".into(),
            max_connections: 50_000,
            max_sockets_per_user: 100,
            max_pending_connections: 1024,
            connect_timeout_ms: 10_000,
            parser: Parser::Default,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            session_path: "/api/session".into(),
            forward_headers: vec![
                "cookie".into(),
                "user-agent".into(),
                "x-forwarded-for".into(),
            ],
            user_id_pointer: "/userId".into(),
            rooms_pointer: "/rooms".into(),
            user_info_pointer: "/user".into(),
            timeout_ms: 5_000,
            cache_ttl_ms: 30_000,
            negative_ttl_ms: 5_000,
            cache_max_entries: 100_000,
            max_concurrent: 32,
            revalidate_interval_ms: 300_000,
            max_waiting: 512,
            max_credential_bytes: 16 * 1024,
        }
    }
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            // Empty: resolved at load time to a private per-user path (`default_socket_path`).
            socket: PathBuf::new(),
            socket_mode: "0660".into(),
            max_body_bytes: 1024 * 1024,
            max_batch: 1000,
            body_timeout_ms: 10_000,
            tcp_listen: String::new(),
            token: String::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            format: LogFormat::Text,
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

impl ServerConfig {
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}

impl PublishConfig {
    /// The socket file mode parsed from its octal text (validated at load time).
    pub fn mode(&self) -> u32 {
        parse_mode(&self.socket_mode).unwrap_or(0o660)
    }
}

/// Milliseconds from config to a `Duration`.
pub fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

/// A configuration that cannot be used, explained in one line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: key `{key}` from {source_name}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub source_name: String,
    pub reason: String,
}

/// Values given on the command line; `None` leaves lower layers in charge.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub host: Option<IpAddr>,
    pub port: Option<u16>,
    pub upstream_url: Option<String>,
    pub publish_socket: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// Loads the layered configuration. `file` is `--config`; when it is `None` the default
    /// `sidecar.toml` in the working directory is read if present.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let figment = Self::figment(file, overrides)?;
        let mut config: Config = figment.extract().map_err(|e| from_figment(&figment, e))?;
        config.validate(&figment)?;
        if config.publish.socket.as_os_str().is_empty() {
            config.publish.socket =
                default_socket_path(std::env::var_os("XDG_RUNTIME_DIR"), current_uid());
        }
        Ok(config)
    }

    fn figment(file: Option<&Path>, overrides: &Overrides) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Named::new(
            "the built-in defaults",
            Serialized::defaults(Config::default()),
        ));
        match file {
            Some(path) if !path.exists() => {
                return Err(ConfigError {
                    key: "--config".into(),
                    source_name: "the command line".into(),
                    reason: format!("file {} does not exist", path.display()),
                });
            }
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE));
            }
            None => {}
        }
        figment = figment.merge(Env::prefixed("SIDECAR_").split("__"));
        if let Ok(port) = std::env::var("PORT") {
            let port: u16 = port.trim().parse().map_err(|_| ConfigError {
                key: "server.port".into(),
                source_name: "environment variable `PORT`".into(),
                reason: format!("`{port}` is not a port number (0-65535)"),
            })?;
            figment = figment.merge(Named::new(
                "environment variable `PORT`",
                Serialized::default("server.port", port),
            ));
        }
        if let Some(host) = overrides.host {
            figment = figment.merge(Named::new(
                "command-line flag `--host`",
                Serialized::default("server.host", host),
            ));
        }
        if let Some(port) = overrides.port {
            figment = figment.merge(Named::new(
                "command-line flag `--port`",
                Serialized::default("server.port", port),
            ));
        }
        if let Some(url) = &overrides.upstream_url {
            figment = figment.merge(Named::new(
                "command-line flag `--upstream`",
                Serialized::default("upstream.url", url),
            ));
        }
        if let Some(socket) = &overrides.publish_socket {
            figment = figment.merge(Named::new(
                "command-line flag `--publish-socket`",
                Serialized::default("publish.socket", socket),
            ));
        }
        if let Some(format) = overrides.log_format {
            figment = figment.merge(Named::new(
                "command-line flag `--log-format`",
                Serialized::default("log.format", format),
            ));
        }
        Ok(figment)
    }

    /// Checks that need more than a type: each failure names its key and where it came from.
    fn validate(&self, figment: &Figment) -> Result<(), ConfigError> {
        let fail = |key: &str, reason: String| ConfigError {
            key: key.into(),
            source_name: source_of(figment, key),
            reason,
        };
        let uri: Uri = self.upstream.url.parse().map_err(|e| {
            fail(
                "upstream.url",
                format!("`{}` is not a URL: {e}", self.upstream.url),
            )
        })?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(fail(
                "upstream.url",
                format!(
                    "`{}` must look like http://127.0.0.1:4321 (plain http, with host and port)",
                    self.upstream.url
                ),
            ));
        }
        if uri.port().is_none() {
            return Err(fail(
                "upstream.url",
                format!(
                    "`{}` has no port: write the app's port, e.g. http://127.0.0.1:4321 \
                     (there is no default port)",
                    self.upstream.url
                ),
            ));
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(fail(
                "upstream.url",
                format!("`{}` must not have a path", self.upstream.url),
            ));
        }
        let ready = &self.upstream.ready_path;
        if !ready.starts_with('/') || ready.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(fail(
                "upstream.ready_path",
                format!("`{ready}` must be a path starting with `/`"),
            ));
        }
        let path = &self.realtime.path;
        if !path.starts_with('/') || path.len() < 2 || path.ends_with('/') {
            return Err(fail(
                "realtime.path",
                format!("`{path}` must start with `/`, not end with `/`, and not be `/`"),
            ));
        }
        if self.realtime.transports.is_empty() {
            return Err(fail(
                "realtime.transports",
                "at least one of \"polling\", \"websocket\" is needed".into(),
            ));
        }
        for origin in &self.realtime.allowed_origins {
            let ok = origin
                .parse::<Uri>()
                .is_ok_and(|u| u.scheme().is_some() && u.authority().is_some());
            if !ok && origin != "*" {
                return Err(fail(
                    "realtime.allowed_origins",
                    format!("`{origin}` is not an origin like https://app.example.com"),
                ));
            }
        }
        if !self.auth.session_path.starts_with('/') {
            return Err(fail(
                "auth.session_path",
                format!("`{}` must start with `/`", self.auth.session_path),
            ));
        }
        if !self.auth.user_id_pointer.is_empty() && !self.auth.user_id_pointer.starts_with('/') {
            return Err(fail(
                "auth.user_id_pointer",
                format!(
                    "`{}` is not a JSON pointer (it starts with `/`, e.g. /userId or /user/id)",
                    self.auth.user_id_pointer
                ),
            ));
        }
        for (key, pointer, example) in [
            ("auth.rooms_pointer", &self.auth.rooms_pointer, "/rooms"),
            (
                "auth.user_info_pointer",
                &self.auth.user_info_pointer,
                "/user",
            ),
        ] {
            if !pointer.is_empty() && !pointer.starts_with('/') {
                return Err(fail(
                    key,
                    format!(
                        "`{pointer}` is not a JSON pointer (it starts with `/`, e.g. {example}), or empty for none"
                    ),
                ));
            }
        }
        let authorize = &self.channels.authorize_path;
        if !authorize.starts_with('/') || authorize.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(fail(
                "channels.authorize_path",
                format!("`{authorize}` must be a path starting with `/`"),
            ));
        }
        for (key, prefix) in self
            .channels
            .public_prefixes
            .iter()
            .map(|p| ("channels.public_prefixes", p))
            .chain(
                self.channels
                    .presence_prefixes
                    .iter()
                    .map(|p| ("channels.presence_prefixes", p)),
            )
        {
            let reserved = [
                crate::reserved::INTERNAL_PREFIX,
                self.realtime.room_prefix.as_str(),
            ];
            if prefix.is_empty()
                || reserved
                    .iter()
                    .any(|r| prefix.starts_with(r) || r.starts_with(prefix.as_str()))
            {
                return Err(fail(
                    key,
                    format!(
                        "`{prefix}` must be non-empty and must not overlap `{}` or realtime.room_prefix (`{}`)",
                        crate::reserved::INTERNAL_PREFIX,
                        self.realtime.room_prefix
                    ),
                ));
            }
        }
        for (key, value) in [
            (
                "channels.max_subscribes_per_sec",
                u64::from(self.channels.max_subscribes_per_sec),
            ),
            (
                "channels.presence_instance_ttl_ms",
                self.channels.presence_instance_ttl_ms,
            ),
            (
                "channels.max_presence_members",
                self.channels.max_presence_members as u64,
            ),
            (
                "realtime.max_sockets_per_user",
                self.realtime.max_sockets_per_user as u64,
            ),
        ] {
            if value == 0 {
                return Err(fail(key, "must be at least 1".into()));
            }
        }
        for name in &self.auth.forward_headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(fail(
                    "auth.forward_headers",
                    format!("`{name}` is not a header name"),
                ));
            }
        }
        if self.auth.max_concurrent == 0 {
            return Err(fail("auth.max_concurrent", "must be at least 1".into()));
        }
        if self.realtime.max_pending_connections == 0 {
            return Err(fail(
                "realtime.max_pending_connections",
                "must be at least 1".into(),
            ));
        }
        if self.realtime.connect_timeout_ms <= self.auth.timeout_ms {
            return Err(fail(
                "realtime.connect_timeout_ms",
                format!(
                    "{} must be longer than auth.timeout_ms ({}): the session check happens \
                     within it",
                    self.realtime.connect_timeout_ms, self.auth.timeout_ms
                ),
            ));
        }
        if self.realtime.max_auth_bytes < 256 {
            return Err(fail(
                "realtime.max_auth_bytes",
                "must be at least 256 (an `auth.offset` has to fit)".into(),
            ));
        }
        if self.auth.max_credential_bytes < 256 {
            return Err(fail(
                "auth.max_credential_bytes",
                "must be at least 256 (a session cookie has to fit)".into(),
            ));
        }
        if parse_mode(&self.publish.socket_mode).is_none() {
            return Err(fail(
                "publish.socket_mode",
                format!(
                    "`{}` is not an octal file mode like \"0660\"",
                    self.publish.socket_mode
                ),
            ));
        }
        if !self.admin.listen.is_empty() && self.admin.listen.parse::<SocketAddr>().is_err() {
            return Err(fail(
                "admin.listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:9464",
                    self.admin.listen
                ),
            ));
        }
        let health = &self.server.health_path;
        if !health.is_empty() && (!health.starts_with('/') || is_under(health, &self.realtime.path))
        {
            return Err(fail(
                "server.health_path",
                format!("`{health}` must start with `/` and be outside realtime.path"),
            ));
        }
        let redis = &self.cluster.redis_url;
        if !redis.is_empty() {
            crate::redis_url::redis_config(redis, &self.cluster.tls_ca_file)
                .map_err(|(key, reason)| fail(key, reason))?;
        } else if !self.cluster.tls_ca_file.is_empty() {
            return Err(fail(
                "cluster.tls_ca_file",
                "is set but cluster.redis_url is empty (a single instance uses no Redis)".into(),
            ));
        }
        if !self.publish.tcp_listen.is_empty() {
            let addr: SocketAddr = self.publish.tcp_listen.parse().map_err(|_| {
                fail(
                    "publish.tcp_listen",
                    format!(
                        "`{}` is not an address like 127.0.0.1:7070",
                        self.publish.tcp_listen
                    ),
                )
            })?;
            if !addr.ip().is_loopback() {
                return Err(fail(
                    "publish.tcp_listen",
                    format!(
                        "`{addr}` is not a loopback address: publishing must not be reachable from the network"
                    ),
                ));
            }
            if self.publish.token.len() < 16 {
                return Err(fail(
                    "publish.token",
                    "publish.tcp_listen needs a token of at least 16 characters (SIDECAR_PUBLISH__TOKEN)".into(),
                ));
            }
        }
        if self.realtime.max_ws_message_bytes < 1024 || self.realtime.max_poll_payload_bytes < 1024
        {
            let key = if self.realtime.max_ws_message_bytes < 1024 {
                "realtime.max_ws_message_bytes"
            } else {
                "realtime.max_poll_payload_bytes"
            };
            return Err(fail(
                key,
                "must be at least 1024 (a CONNECT with its auth payload must fit)".into(),
            ));
        }
        if self.server.max_concurrent_streams == 0 {
            return Err(fail(
                "server.max_concurrent_streams",
                "must be at least 1".into(),
            ));
        }
        if self.server.idle_timeout_ms == 0 {
            return Err(fail("server.idle_timeout_ms", "must be at least 1".into()));
        }
        if self.server.send_stall_timeout_ms == 0 {
            return Err(fail(
                "server.send_stall_timeout_ms",
                "must be at least 1".into(),
            ));
        }
        if self.publish.max_batch == 0 {
            return Err(fail("publish.max_batch", "must be at least 1".into()));
        }
        if self.publish.body_timeout_ms == 0 {
            return Err(fail("publish.body_timeout_ms", "must be at least 1".into()));
        }
        if self.history.max_bytes < MIN_HISTORY_BYTES {
            return Err(fail(
                "history.max_bytes",
                format!(
                    "{} is below {MIN_HISTORY_BYTES} (64 KiB), too little to recover anything; \
                     turn history off with history.enabled = false instead",
                    self.history.max_bytes
                ),
            ));
        }
        self.validate_webhooks(&fail)?;
        tracing_subscriber::EnvFilter::try_new(&self.log.filter)
            .map_err(|e| fail("log.filter", format!("`{}`: {e}", self.log.filter)))?;
        Ok(())
    }

    fn validate_webhooks(
        &self,
        fail: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let hooks = &self.webhooks;
        let url = &hooks.url;
        let ok = url.is_empty()
            || if url.starts_with('/') {
                url.parse::<http::uri::PathAndQuery>().is_ok()
            } else {
                url.parse::<Uri>()
                    .is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some())
            };
        if !ok {
            return Err(fail(
                "webhooks.url",
                format!(
                    "`{url}` must be a path on the app (e.g. /api/socket/webhooks) or a plain \
                     http:// URL (e.g. http://127.0.0.1:4321/api/socket/webhooks)"
                ),
            ));
        }
        if let Some(bad) = hooks
            .events
            .iter()
            .find(|e| !WEBHOOK_EVENTS.contains(&e.as_str()))
        {
            return Err(fail(
                "webhooks.events",
                format!("`{bad}` is not one of {WEBHOOK_EVENTS:?}"),
            ));
        }
        for (key, value) in [
            ("webhooks.max_batch", hooks.max_batch as u64),
            ("webhooks.max_queue", hooks.max_queue as u64),
            ("webhooks.max_attempts", u64::from(hooks.max_attempts)),
            ("webhooks.timeout_ms", hooks.timeout_ms),
            ("webhooks.instance_ttl_ms", hooks.instance_ttl_ms),
        ] {
            if value == 0 {
                return Err(fail(key, "must be at least 1".into()));
            }
        }
        Ok(())
    }

    /// Settings that are valid but likely wrong. Returned, not logged: configuration is loaded
    /// before logging is set up, so the caller logs them once it is.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.upstream.pool_idle_timeout_ms >= 5_000 {
            warnings.push(format!(
                "upstream.pool_idle_timeout_ms = {} is not below Node's 5 s keep-alive; \
                 reused connections may be closed under a request",
                self.upstream.pool_idle_timeout_ms
            ));
        }
        warnings
    }

    /// The upstream's `host:port`, as the proxy connects to it.
    pub fn upstream_authority(&self) -> String {
        self.upstream
            .url
            .parse::<Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.to_string()))
            .unwrap_or_else(|| "127.0.0.1:4321".into())
    }

    /// The effective configuration as TOML, for `--print-config` (secrets masked).
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.publish.token.is_empty() {
            shown.publish.token = "(set, hidden)".into();
        }
        if !shown.webhooks.secret.is_empty() {
            shown.webhooks.secret = "(set, hidden)".into();
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// Parser messages come with a multi-line source excerpt; a startup error is one line.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '|' || c == '^' || c == ' '))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `path` is `prefix` or below it, respecting the segment boundary: `/socket.io/x` is
/// under `/socket.io`, `/socket.io-admin` is not.
pub fn is_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn parse_mode(text: &str) -> Option<u32> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
}

/// A layer under a name people recognise ("command-line flag `--upstream`"): figment names a
/// serialized value by its Rust type and source line, which means nothing to a user.
struct Named<P> {
    name: &'static str,
    inner: P,
}

impl<P: figment::Provider> Named<P> {
    fn new(name: &'static str, inner: P) -> Self {
        Self { name, inner }
    }
}

impl<P: figment::Provider> figment::Provider for Named<P> {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.name)
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        self.inner.data()
    }
}

/// Names where `key` got its value: a file path, an environment variable, or the defaults.
fn source_of(figment: &Figment, key: &str) -> String {
    match figment.find_metadata(key) {
        Some(meta) => describe(meta, key),
        None => "the defaults".into(),
    }
}

/// "TOML file /app/sidecar.toml", "`SIDECAR_` environment variable(s) `SIDECAR_SERVER__PORT`"…
fn describe(meta: &figment::Metadata, key: &str) -> String {
    match &meta.source {
        Some(source) => format!("{} {source}", meta.name),
        // The env provider has no source; name the exact variable instead.
        None if meta.name.contains("environment") => {
            format!("environment variable `{}`", env_variable(key))
        }
        None => meta.name.to_string(),
    }
}

/// The `SIDECAR_` variable that set `key`, spelled as it is in the environment: figment
/// lowercases names and matches the prefix in any case, and a variable may set a whole
/// section (`SIDECAR_REALTIME='{path="/ws"}'`), so the longest key prefix that names a
/// variable is the one.
fn env_variable(key: &str) -> String {
    let segments: Vec<&str> = key.split('.').collect();
    let set: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .collect();
    (1..=segments.len())
        .rev()
        .map(|n| format!("SIDECAR_{}", segments[..n].join("__")))
        .find_map(|wanted| {
            set.iter()
                .find(|name| name.trim().eq_ignore_ascii_case(&wanted))
                .map(|name| name.trim().to_string())
        })
        .unwrap_or_else(|| format!("SIDECAR_{}", key.replace('.', "__").to_uppercase()))
}

/// figment's own text puts its list of choices in one more pair of backticks
/// (``polling` or `websocket``); the list reads cleanly without them.
fn reason_of(kind: &figment::error::Kind) -> String {
    use figment::error::{Kind, OneOf};
    match kind {
        Kind::UnknownVariant(found, expected) => {
            format!(
                "unknown variant: found `{found}`, expected {}",
                OneOf(expected)
            )
        }
        Kind::UnknownField(found, expected) => {
            format!(
                "unknown field: found `{found}`, expected {}",
                OneOf(expected)
            )
        }
        other => one_line(&other.to_string()),
    }
}

fn from_figment(figment: &Figment, error: figment::Error) -> ConfigError {
    // A list entry's index (`realtime.transports.0`) is no key anyone wrote; the value found
    // in the reason says which entry it is.
    let written: Vec<&str> = error
        .path
        .iter()
        .map(String::as_str)
        .filter(|segment| segment.parse::<usize>().is_err())
        .collect();
    let key = if written.is_empty() {
        "(top level)".to_string()
    } else {
        written.join(".")
    };
    let source_name = match &error.metadata {
        Some(meta) => describe(meta, &key),
        None => source_of(figment, &key),
    };
    ConfigError {
        key,
        source_name,
        reason: reason_of(&error.kind),
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return figment::Error
mod tests {
    use super::*;
    use figment::Jail;

    fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::load(None, overrides)
    }

    #[test]
    fn shipped_sidecar_toml_documents_the_defaults() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_FILE);
            let config = Config::load(Some(&shipped), &Overrides::default()).expect("loads");
            let mut expected = Config::default();
            expected.publish.socket =
                PathBuf::from(format!("/tmp/sockgate-{}/sockgate.sock", current_uid()));
            assert_eq!(
                config, expected,
                "the default socket path is private, per user"
            );
            Ok(())
        });
    }

    #[test]
    fn readme_documents_every_key() {
        let readme = include_str!("../README.md");
        let defaults = toml::Value::try_from(Config::default()).expect("serializes");
        for (section, keys) in defaults.as_table().expect("table") {
            for key in keys.as_table().expect("section").keys() {
                let row = format!("| `{section}.{key}` |");
                assert!(
                    readme.contains(&row),
                    "README's configuration reference lacks {row}"
                );
            }
        }
    }

    #[test]
    fn webhook_settings_are_checked() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            for (key, value, reason) in [
                (
                    "SIDECAR_WEBHOOKS__URL",
                    "https://app.example.com/hooks",
                    "plain http://",
                ),
                ("SIDECAR_WEBHOOKS__URL", "api/hooks", "a path on the app"),
                (
                    "SIDECAR_WEBHOOKS__EVENTS",
                    "[\"user.away\"]",
                    "is not one of",
                ),
                ("SIDECAR_WEBHOOKS__MAX_QUEUE", "0", "at least 1"),
            ] {
                jail.set_env(key, value);
                let e = load(&Overrides::default()).expect_err(value);
                assert!(e.to_string().contains(reason), "{value}: {e}");
                jail.clear_env();
            }
            jail.set_env("SIDECAR_WEBHOOKS__URL", "/api/socket/webhooks");
            jail.set_env("SIDECAR_WEBHOOKS__SECRET", "s3cret");
            let config = load(&Overrides::default()).expect("a path on the app is fine");
            assert!(!config.to_toml().contains("s3cret"), "the secret is hidden");
            Ok(())
        });
    }

    #[test]
    fn layers_apply_in_order_file_env_port_flags() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                DEFAULT_CONFIG_FILE,
                "[server]\nport = 1000\n[upstream]\nurl = \"http://127.0.0.1:5000\"\n",
            )?;
            assert_eq!(load(&Overrides::default()).unwrap().server.port, 1000);
            jail.set_env("SIDECAR_SERVER__PORT", "2000");
            jail.set_env("SIDECAR_AUTH__FORWARD_HEADERS", "[\"cookie\"]");
            let config = load(&Overrides::default()).unwrap();
            assert_eq!(config.server.port, 2000);
            assert_eq!(config.auth.forward_headers, vec!["cookie".to_string()]);
            assert_eq!(config.upstream.url, "http://127.0.0.1:5000");
            jail.set_env("PORT", "3000");
            assert_eq!(load(&Overrides::default()).unwrap().server.port, 3000);
            let flags = Overrides {
                port: Some(4000),
                upstream_url: Some("http://127.0.0.1:6000".into()),
                ..Overrides::default()
            };
            let config = load(&flags).unwrap();
            assert_eq!(config.server.port, 4000);
            assert_eq!(config.upstream.url, "http://127.0.0.1:6000");
            Ok(())
        });
    }

    #[test]
    fn errors_name_key_source_and_reason() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(DEFAULT_CONFIG_FILE, "[server]\nport = \"x\"\n")?;
            let e = load(&Overrides::default()).unwrap_err();
            assert_eq!(e.key, "server.port");
            assert!(e.source_name.contains("sidecar.toml"), "{e}");

            jail.create_file(DEFAULT_CONFIG_FILE, "[realtime]\ntransport = []\n")?;
            let e = load(&Overrides::default()).unwrap_err();
            assert!(e.to_string().contains("transport"), "{e}");

            jail.create_file(DEFAULT_CONFIG_FILE, "")?;
            jail.set_env("SIDECAR_UPSTREAM__URL", "localhost:4321");
            let e = load(&Overrides::default()).unwrap_err();
            assert_eq!(e.key, "upstream.url");
            assert!(e.source_name.contains("SIDECAR_UPSTREAM__URL"), "{e}");

            jail.set_env("SIDECAR_UPSTREAM__URL", "http://127.0.0.1:1");
            jail.set_env("SIDECAR_REALTIME__MAX_AUTH_BYTES", "100");
            let e = load(&Overrides::default()).unwrap_err();
            assert_eq!(e.key, "realtime.max_auth_bytes");
            assert!(
                e.source_name.contains("SIDECAR_REALTIME__MAX_AUTH_BYTES"),
                "{e}"
            );

            jail.set_env("SIDECAR_REALTIME__MAX_AUTH_BYTES", "256");
            jail.set_env("SIDECAR_PUBLISH__SOCKET_MODE", "999");
            let e = load(&Overrides::default()).unwrap_err();
            assert_eq!(e.key, "publish.socket_mode");

            jail.set_env("SIDECAR_PUBLISH__SOCKET_MODE", "\"0600\"");
            for (var, key) in [
                ("SIDECAR_HISTORY__MAX_BYTES", "history.max_bytes"),
                (
                    "SIDECAR_PUBLISH__BODY_TIMEOUT_MS",
                    "publish.body_timeout_ms",
                ),
            ] {
                jail.set_env(var, "0");
                let e = load(&Overrides::default()).unwrap_err();
                assert_eq!(e.key, key);
                assert!(e.source_name.contains(var), "{e}");
                jail.set_env(var, "65536");
            }
            jail.set_env("SIDECAR_PUBLISH__SOCKET_MODE", "0600");
            jail.set_env("PORT", "http");
            let e = load(&Overrides::default()).unwrap_err();
            assert!(e.to_string().contains("`PORT`"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn errors_name_what_the_user_wrote() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("SIDECAR_REALTIME__TRANSPORTS", "[\"carrier-pigeon\"]");
            let e = load(&Overrides::default()).unwrap_err();
            assert_eq!(e.key, "realtime.transports", "{e}");
            assert_eq!(
                e.source_name, "environment variable `SIDECAR_REALTIME__TRANSPORTS`",
                "{e}"
            );
            assert!(
                e.reason
                    .ends_with("found `carrier-pigeon`, expected `polling` or `websocket`"),
                "{e}"
            );

            jail.clear_env();
            jail.set_env("sidecar_log__format", "xml");
            let e = load(&Overrides::default()).unwrap_err();
            assert_eq!(e.key, "log.format", "{e}");
            assert_eq!(
                e.source_name, "environment variable `sidecar_log__format`",
                "{e}"
            );
            assert!(!e.reason.contains("``"), "{e}");

            jail.clear_env();
            jail.create_file(
                DEFAULT_CONFIG_FILE,
                "[realtime]\ntransports = [\"polling\", \"pigeon\"]\n",
            )?;
            let e = load(&Overrides::default()).unwrap_err();
            assert_eq!(e.key, "realtime.transports", "{e}");
            assert!(e.source_name.contains("sidecar.toml"), "{e}");
            assert!(!e.reason.contains("``"), "{e}");

            jail.create_file(DEFAULT_CONFIG_FILE, "[realtime]\ntransport = []\n")?;
            let e = load(&Overrides::default()).unwrap_err();
            assert!(!e.reason.contains("``"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_flag_the_defaults_and_a_missing_port() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            let flag = |url: &str| Overrides {
                upstream_url: Some(url.into()),
                ..Overrides::default()
            };
            let e = load(&flag("localhost:4321")).unwrap_err();
            assert_eq!(e.source_name, "command-line flag `--upstream`", "{e}");
            assert!(!e.to_string().contains("src/"), "no source locations: {e}");

            let e = load(&flag("http://localhost")).unwrap_err();
            assert_eq!(e.key, "upstream.url");
            assert!(e.reason.contains("has no port"), "{e}");
            assert!(load(&flag("http://localhost:4321")).is_ok());

            let defaults = Figment::from(Named::new(
                "the built-in defaults",
                Serialized::defaults(Config::default()),
            ));
            assert_eq!(source_of(&defaults, "server.port"), "the built-in defaults");
            Ok(())
        });
    }

    #[test]
    fn default_path_is_per_user() {
        assert_eq!(
            default_socket_path(Some("/run/user/1000".into()), 1000),
            PathBuf::from("/run/user/1000/sockgate/sockgate.sock")
        );
        assert_eq!(
            default_socket_path(None, 1000),
            PathBuf::from("/tmp/sockgate-1000/sockgate.sock")
        );
        assert_eq!(
            default_socket_path(Some("".into()), 7),
            PathBuf::from("/tmp/sockgate-7/sockgate.sock")
        );
    }
}
