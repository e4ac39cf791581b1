//! Configuration: the typed settings of every part of sockgate and the one place they are loaded.
//!
//! Precedence, lowest to highest: built-in defaults < `sidecar.toml` (or `--config PATH`) <
//! `SIDECAR_*` environment variables (nested keys joined by `__`, e.g. `SIDECAR_UPSTREAM__URL`) <
//! bare `PORT` (what Railway/Heroku/Fly set) < command-line flags. A value that does not parse or
//! validate stops startup with one line naming the key, where the value came from and why.

mod auth;
mod channels;
mod cluster;
mod error;
mod history;
mod log;
mod publish;
mod realtime;
mod server;
mod source;
mod upstream;
mod value;
mod webhooks;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use auth::AuthConfig;
pub use channels::ChannelsConfig;
pub use cluster::{ClusterConfig, PubSubMode};
pub use error::ConfigError;
use error::Invalid;
pub use history::HistoryConfig;
pub use log::{LogConfig, LogFormat};
pub use publish::{PublishConfig, current_uid, default_socket_path};
pub use realtime::{Parser, RealtimeConfig, Transport};
pub use server::{AdminConfig, Runtime, RuntimeShape, ServerConfig};
use source::{Named, from_figment, source_of};
pub use upstream::{AppUrl, ProxyConfig, UpstreamConfig};
pub use webhooks::{WebhookUrl, WebhooksConfig};

/// The file read when `--config` is not given; a missing default file is not an error.
pub const DEFAULT_CONFIG_FILE: &str = "sidecar.toml";

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
        config
            .validate()
            .map_err(|Invalid { key, reason }| ConfigError {
                key: key.into(),
                source_name: source_of(&figment, key),
                reason,
            })?;
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

    /// Each section's own checks, then the rules between sections; the first key refused
    /// is reported.
    fn validate(&self) -> Result<(), Invalid> {
        self.realtime.validate()?;
        self.auth.validate()?;
        self.channels.validate()?;
        self.check_across()?;
        self.publish.validate()?;
        self.server.validate()?;
        self.cluster.validate()?;
        self.history.validate()?;
        self.webhooks.validate()?;
        self.log.validate()
    }

    /// Rules that tie one section's values to another's.
    fn check_across(&self) -> Result<(), Invalid> {
        self.channels.check_prefixes(&self.realtime.room_prefix)?;
        if self.realtime.connect_timeout <= self.auth.timeout {
            return Err(Invalid::new(
                "realtime.connect_timeout_ms",
                format!(
                    "{} must be longer than auth.timeout_ms ({}): the session check happens \
                     within it",
                    self.realtime.connect_timeout.as_millis(),
                    self.auth.timeout.as_millis()
                ),
            ));
        }
        if let Some(health) = &self.server.health_path
            && (!health.starts_with('/') || is_under(health, &self.realtime.path))
        {
            return Err(Invalid::new(
                "server.health_path",
                format!("`{health}` must start with `/` and be outside realtime.path"),
            ));
        }
        Ok(())
    }

    /// Settings that are valid but likely wrong. Returned, not logged: configuration is loaded
    /// before logging is set up, so the caller logs them once it is.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.upstream.pool_idle_timeout >= Duration::from_secs(5) {
            warnings.push(format!(
                "upstream.pool_idle_timeout_ms = {} is not below Node's 5 s keep-alive; \
                 reused connections may be closed under a request",
                self.upstream.pool_idle_timeout.as_millis()
            ));
        }
        warnings
    }

    /// The effective configuration as TOML, for `--print-config` (secrets masked).
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.publish.token.is_empty() {
            shown.publish.token = "(set, hidden)".into();
        }
        if shown.webhooks.secret.is_some() {
            shown.webhooks.secret = Some("(set, hidden)".into());
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// Whether `path` is `prefix` or below it, respecting the segment boundary: `/socket.io/x` is
/// under `/socket.io`, `/socket.io-admin` is not.
pub fn is_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return figment::Error
mod tests {
    use super::*;
    use figment::Jail;
    use std::net::SocketAddr;

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

    /// Every key `--print-config` shows (the defaults, serialized) is in the shipped
    /// `sidecar.toml` with its default, and the file has no key sockgate does not know: the
    /// file is the reference a user copies from.
    #[test]
    fn sidecar_toml_shows_every_key_with_its_default() {
        let shipped: toml::Table = include_str!("../../sidecar.toml")
            .parse()
            .expect("sidecar.toml parses");
        let defaults = toml::Table::try_from(Config::default()).expect("serializes");
        for (section, keys) in &defaults {
            let keys = keys.as_table().expect("a section");
            let written = shipped.get(section).and_then(toml::Value::as_table);
            for (key, default) in keys {
                let value = written.and_then(|w| w.get(key));
                assert_eq!(
                    value,
                    Some(default),
                    "sidecar.toml lacks `{section}.{key}` with its default"
                );
            }
            for key in written.into_iter().flat_map(|w| w.keys()) {
                assert!(
                    keys.contains_key(key),
                    "sidecar.toml has `{section}.{key}`, which sockgate does not know"
                );
            }
        }
        for section in shipped.keys() {
            assert!(
                defaults.contains_key(section),
                "sidecar.toml has [{section}], which sockgate does not know"
            );
        }
    }

    /// The first backticked value of a reference row's default cell, as TOML shows it
    /// (strings without quotes, lists without spaces).
    fn documented_default(cell: &str) -> String {
        let value = cell.split('`').nth(1).unwrap_or(cell);
        value.trim_matches('"').replace(' ', "")
    }

    fn shown_default(value: &toml::Value) -> String {
        match value {
            toml::Value::String(s) => s.clone(),
            other => other.to_string().replace(' ', ""),
        }
    }

    #[test]
    fn the_configuration_reference_documents_every_key_with_its_default() {
        let reference = include_str!("../../docs/configuration.md");
        let rows: std::collections::HashMap<&str, &str> = reference
            .lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split(" | ").collect();
                let key = cells.first()?.strip_prefix("| `")?.strip_suffix('`')?;
                key.contains('.').then_some((key, *cells.get(2)?))
            })
            .collect();
        let defaults = toml::Value::try_from(Config::default()).expect("serializes");
        let defaults = defaults.as_table().expect("table");
        for (section, keys) in defaults {
            for (key, value) in keys.as_table().expect("section") {
                let name = format!("{section}.{key}");
                let cell = rows
                    .get(name.as_str())
                    .unwrap_or_else(|| panic!("docs/configuration.md lacks `{name}`"));
                assert_eq!(
                    documented_default(cell),
                    shown_default(value),
                    "docs/configuration.md gives `{name}` another default"
                );
            }
        }
        for name in rows.keys() {
            let (section, key) = name.split_once('.').expect("section.key");
            assert!(
                defaults
                    .get(section)
                    .and_then(|keys| keys.get(key))
                    .is_some(),
                "docs/configuration.md documents `{name}`, which sockgate does not know"
            );
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
            assert_eq!(config.auth.forward_headers, ["cookie"]);
            assert_eq!(&*config.upstream.url, "http://127.0.0.1:5000");
            jail.set_env("PORT", "3000");
            assert_eq!(load(&Overrides::default()).unwrap().server.port, 3000);
            let flags = Overrides {
                port: Some(4000),
                upstream_url: Some("http://127.0.0.1:6000".into()),
                ..Overrides::default()
            };
            let config = load(&flags).unwrap();
            assert_eq!(config.server.port, 4000);
            assert_eq!(&*config.upstream.url, "http://127.0.0.1:6000");
            Ok(())
        });
    }

    #[test]
    fn cluster_pubsub_takes_three_modes_and_no_plain_on_a_redis_cluster() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("SIDECAR_CLUSTER__REDIS_URL", "redis://127.0.0.1:6379");
            jail.set_env("SIDECAR_CLUSTER__PUBSUB", "plain");
            let config = load(&Overrides::default()).expect("plain on one server");
            assert_eq!(config.cluster.pubsub, PubSubMode::Plain);
            jail.set_env("SIDECAR_CLUSTER__PUBSUB", "shard");
            assert_eq!(
                load(&Overrides::default()).unwrap_err().key,
                "cluster.pubsub"
            );
            jail.set_env(
                "SIDECAR_CLUSTER__REDIS_URL",
                "redis-cluster://127.0.0.1:7000",
            );
            jail.set_env("SIDECAR_CLUSTER__PUBSUB", "plain");
            let e = load(&Overrides::default()).unwrap_err();
            assert_eq!(e.key, "cluster.pubsub");
            assert!(e.to_string().contains("Redis Cluster"), "{e}");
            jail.set_env("SIDECAR_CLUSTER__PUBSUB", "sharded");
            assert!(load(&Overrides::default()).is_ok());
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

    /// Values parsed into their types at load (addresses, modes, paths, durations) are refused
    /// with their key, where they came from and the section's words, as any other bad value;
    /// and `--print-config` shows them as they are written, so its output loads back the same.
    #[test]
    fn typed_values_are_refused_by_key_and_shown_as_written() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("SIDECAR_ADMIN__LISTEN", "localhost");
            let e = load(&Overrides::default()).unwrap_err();
            assert_eq!(
                e.to_string(),
                "invalid configuration: key `admin.listen` from environment variable \
                 `SIDECAR_ADMIN__LISTEN`: `localhost` is not an address like 127.0.0.1:9464"
            );
            jail.clear_env();
            for (file, key, reason) in [
                (
                    "[publish]\ntcp_listen = \"7070\"\n",
                    "publish.tcp_listen",
                    "`7070` is not an address like 127.0.0.1:7070",
                ),
                (
                    "[publish]\nsocket_mode = \"0999\"\n",
                    "publish.socket_mode",
                    "`0999` is not an octal file mode like \"0660\"",
                ),
                (
                    "[upstream]\nready_path = \"health\"\n",
                    "upstream.ready_path",
                    "`health` must be a path starting with `/`",
                ),
                (
                    "[auth]\nsession_path = \"/my session\"\n",
                    "auth.session_path",
                    "`/my session` is not a path",
                ),
            ] {
                jail.create_file(DEFAULT_CONFIG_FILE, file)?;
                let e = load(&Overrides::default()).unwrap_err();
                assert_eq!((e.key.as_str(), e.reason.as_str()), (key, reason), "{file}");
                assert!(e.source_name.contains("sidecar.toml"), "{e}");
            }
            jail.create_file(
                DEFAULT_CONFIG_FILE,
                "[admin]\nlisten = \"127.0.0.1:9464\"\n[publish]\nsocket_mode = \"0o600\"\n\
                 [server]\nhealth_path = \"/healthz\"\ndrain_timeout_ms = 1500\n",
            )?;
            let config = load(&Overrides::default()).expect("loads");
            assert_eq!(
                config.admin.listen,
                Some(SocketAddr::from(([127, 0, 0, 1], 9464)))
            );
            assert_eq!(config.publish.socket_mode, 0o600);
            assert_eq!(config.server.drain_timeout, Duration::from_millis(1500));
            let shown = config.to_toml();
            for line in [
                "listen = \"127.0.0.1:9464\"",
                "socket_mode = \"0600\"",
                "health_path = \"/healthz\"",
                "drain_timeout_ms = 1500",
                "tcp_listen = \"\"",
            ] {
                assert!(shown.contains(line), "{line} in {shown}");
            }
            jail.create_file(DEFAULT_CONFIG_FILE, &shown)?;
            assert_eq!(load(&Overrides::default()).expect("reloads"), config);
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
