//! Cluster mode: instances share rooms, publishes, disconnects and presence through Redis,
//! using `socketioxide-redis` (its protocol, over the `fred` client, through our
//! [`driver::ClusterDriver`]) — no protocol of ours. This module owns the connection to Redis
//! and the [`Link`]: whether cross-instance delivery works right now.
//!
//! Redis may be a single server (`redis://`, `rediss://` for TLS), a Redis Cluster
//! (`redis-cluster://`, `rediss-cluster://`) or a server behind Sentinel (`redis-sentinel://`,
//! `rediss-sentinel://`), in fred's URL syntax ([`redis_config`]). On a Redis Cluster, every
//! multi-key script keeps its keys in one slot (the history's keys share a hash tag), and
//! sharded pub/sub (`SSUBSCRIBE`, `SPUBLISH`, `PUBSUB SHARDNUMSUB`) goes to the node that owns
//! each channel's slot; sockgate's relay of kept messages is off there ([`Cluster::redis_cluster`]).
//!
//! fred reconnects with backoff and re-subscribes after an outage; while Redis is away the
//! hub sees [`Link::is_up`] turn false and delivers to local sockets only, so an instance
//! keeps serving its own users until cross-instance delivery resumes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use fred::clients::SubscriberClient;
use fred::interfaces::PubsubInterface;
use fred::prelude::{Builder, ClientLike, Config as RedisConfig, EventInterface, ReconnectPolicy};
use fred::types::RespVersion;
use fred::types::config::UnresponsiveConfig;
use socketioxide_redis::drivers::Driver;
use socketioxide_redis::{RedisAdapterConfig, RedisAdapterCtr};
use tokio::sync::{Notify, watch};

use crate::canary::{self, Canary};
use crate::metrics::Metrics;

pub mod driver;
pub mod query;

pub use driver::ClusterDriver;
pub use query::Queries;

/// The Socket.IO adapter type in cluster mode.
pub type ClusterAdapter =
    socketioxide_redis::CustomRedisAdapter<socketioxide::adapter::Emitter, ClusterDriver>;

/// Cross-instance messages buffered between the Redis connection and socketioxide-redis.
const PUBSUB_BUFFER: usize = 16 * 1024;

/// Why the link is down while its connection is lost or being re-established.
const LOST: &str = "the Redis link is down: delivering to local sockets only";
/// How a failed self-check starts the reason it gives.
const CANARY_FAILED: &str = "cluster self-check failed";

/// How long startup waits for Redis before giving up with an error.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected cluster: the adapter to build Socket.IO with, and the link to watch.
pub struct Cluster {
    pub adapter: RedisAdapterCtr<ClusterDriver>,
    pub link: Link,
    /// A regular (non-subscriber) connection, for the message history streams.
    pub commands: fred::clients::Client,
    /// The end-to-end self-check, to be run once the adapter is subscribed.
    pub canary: Canary,
    /// The subscription connection's driver, for channels of sockgate's own.
    pub driver: ClusterDriver,
    /// Cluster-wide reads, bounded by the request timeout.
    pub queries: Queries,
    /// Redis is a Redis Cluster: a script may touch only the keys and channels of one slot, so
    /// kept messages cannot be published from the script that appends them (the relay is off,
    /// see [`crate::realtime`]).
    pub redis_cluster: bool,
}

/// The live connection to Redis, and whether cross-instance delivery works right now.
///
/// An outage starts at the first sign of trouble — the connection lost or re-established, a
/// self-check late ([`crate::canary`]), a Redis command timing out on any path
/// ([`Link::suspect`]) — and ends only when a self-check passes on a connected, subscribed
/// link. Each end of an outage is counted in [`Link::restorations`]: whoever delivered only
/// locally meanwhile learns that the others can be told now.
#[derive(Clone)]
pub struct Link {
    client: SubscriberClient,
    /// False from a reconnect until the adapter's channels are subscribed again.
    subscribed: Arc<AtomicBool>,
    /// Whether the current connection loss was logged already (one line per loss, not per
    /// retry).
    outage_logged: Arc<AtomicBool>,
    /// Why the link is down, while it is; `None` while cross-instance delivery works.
    down: Arc<Mutex<Down>>,
    /// Outages ended so far.
    restored: Arc<watch::Sender<u64>>,
    /// Asks for a self-check now (after a reconnect, or when a command timed out).
    recheck: Arc<Notify>,
}

/// The state of the current outage, if any.
#[derive(Default)]
struct Down {
    reason: Option<String>,
    /// Outages begun so far: a self-check ends the current outage only if no new sign of
    /// trouble came while it ran.
    begun: u64,
}

impl Link {
    /// Whether cross-instance delivery can work right now. While it cannot, callers act
    /// locally at once instead of waiting on Redis commands that would time out.
    pub fn is_up(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
            && self.client.is_connected()
            && self.state().reason.is_none()
    }

    /// Why cross-instance delivery is off, if it is.
    pub fn problem(&self) -> Option<String> {
        if let Some(reason) = self.state().reason.clone() {
            return Some(reason);
        }
        (!self.is_up()).then(|| LOST.into())
    }

    /// How many instances subscribe each of the sharded `channels`, asked on the subscription
    /// connection (RESP3 takes commands there): a stalled command connection does not hold it.
    /// One command per channel: on a Redis Cluster fred sends each to the node owning the
    /// channel's slot, where its sharded subscribers are (another node counts none).
    pub async fn shard_subscribers(
        &self,
        channels: Vec<String>,
    ) -> Result<Vec<(String, u64)>, fred::error::Error> {
        let mut counts = Vec::with_capacity(channels.len());
        for channel in channels {
            let count: Vec<(String, u64)> = self.client.pubsub_shardnumsub(channel).await?;
            counts.extend(count);
        }
        Ok(counts)
    }

    /// Outages ended so far; changes each time the link comes back after one.
    pub fn restorations(&self) -> watch::Receiver<u64> {
        self.restored.subscribe()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Down> {
        self.down.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts an outage (or prolongs the current one) for `reason`. Returns whether the link
    /// was up until now.
    fn take_down(&self, reason: String) -> bool {
        let mut down = self.state();
        down.begun += 1;
        let was_up = down.reason.is_none();
        if was_up {
            down.reason = Some(reason);
        }
        was_up
    }

    /// Outages begun so far, for [`Link::canary`].
    pub(crate) fn outages_begun(&self) -> u64 {
        self.state().begun
    }

    /// A Redis command on some path did not complete in time (a stalled server, or one stalled
    /// connection): the link is taken down at once, without waiting for the next self-check,
    /// and a self-check is asked for to bring it back as soon as the path works.
    pub fn suspect(&self, reason: String) {
        if self.take_down(format!(
            "Redis did not answer in time ({reason}): delivering to local sockets only"
        )) {
            tracing::warn!("{reason}: Redis link marked down, delivering to local sockets only");
        }
        self.recheck.notify_one();
    }

    /// Cross-instance messages were received but dropped on this instance ([`driver`]; it
    /// logs once per episode, so this does not log): the link is taken down at once, and a
    /// self-check asked for to bring it back, so that this instance's sockets are told
    /// `recovery_failed` as after any outage (see [`crate::realtime`]'s outage handling).
    pub fn messages_lost(&self, reason: String) {
        self.take_down(format!(
            "{reason}: delivering to local sockets only until a self-check passes"
        ));
        self.recheck.notify_one();
    }

    /// A Redis command for `what` failed with `error`: when it timed out or its connection
    /// broke, the link is suspect (see [`Link::suspect`]); other errors (a refused command)
    /// say nothing about the link.
    pub fn command_failed(&self, what: &str, error: &fred::error::Error) {
        use fred::error::ErrorKind;
        if matches!(
            error.kind(),
            ErrorKind::Timeout | ErrorKind::IO | ErrorKind::Canceled
        ) {
            self.suspect(format!("{what}: {error}"));
        }
    }

    /// Records a self-check that started when [`Link::outages_begun`] was `begun`: a failure
    /// takes the link down (logged once per streak); a pass ends the outage if none began
    /// meanwhile and the connection is up and subscribed.
    pub(crate) fn canary(&self, begun: u64, outcome: Result<(), String>) {
        let mut down = self.state();
        match outcome {
            Ok(()) => {
                let connected =
                    self.subscribed.load(Ordering::Acquire) && self.client.is_connected();
                if down.reason.is_some() && down.begun == begun && connected {
                    tracing::info!(
                        "cluster self-check passes again; cross-instance delivery resumes"
                    );
                    down.reason = None;
                    drop(down);
                    self.restored.send_modify(|n| *n += 1);
                }
            }
            Err(e) => {
                let failing = down
                    .reason
                    .as_ref()
                    .is_some_and(|r| r.starts_with(CANARY_FAILED));
                if !failing {
                    tracing::warn!("{CANARY_FAILED}, delivering to local sockets only: {e}");
                }
                down.begun += 1;
                down.reason = Some(format!("{CANARY_FAILED}: {e}"));
            }
        }
    }

    /// Replaces the subscriber connection (its channels are subscribed again once it is back,
    /// see [`Link::watch`]): for a path that stays broken while Redis answers, whatever broke
    /// it. Logged once per rebuild, with `reason`.
    pub(crate) fn rebuild(&self, reason: String) {
        tracing::warn!("rebuilding the Redis subscription connection: {reason}");
        let client = self.client.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(STARTUP_TIMEOUT, client.force_reconnection()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("reconnecting to Redis failed: {e}"),
                Err(_) => tracing::warn!("reconnecting to Redis took over {STARTUP_TIMEOUT:?}"),
            }
        });
    }

    /// Resolves when a self-check is wanted before the next tick.
    pub(crate) async fn recheck_requested(&self) {
        self.recheck.notified().await;
    }

    /// Watches the connection: logs an outage once, and after every reconnect subscribes the
    /// adapter's (sharded) channels again before reporting the link up. fred's own
    /// `manage_subscriptions` replays plain channels first and stops at the first error, which
    /// left socketioxide-redis's sharded channels unsubscribed.
    fn watch(&self, shown: String) {
        let link = self.clone();
        let url = shown.clone();
        self.client.on_error(move |(error, _)| {
            if !link.client.is_connected() {
                link.take_down(LOST.into());
                if !link.outage_logged.swap(true, Ordering::AcqRel) {
                    tracing::warn!(redis = %url, "Redis connection lost; delivering to local sockets only until it is back: {error}");
                }
            }
            async { Ok(()) }
        });
        let link = self.clone();
        let url = shown.clone();
        self.client.on_reconnect(move |_| {
            // Whatever was published to this connection's channels since it broke is lost.
            link.take_down(LOST.into());
            // A connection closed and re-established at once (Redis closed it, e.g. past
            // `client-output-buffer-limit pubsub`) was never seen as lost by `on_error`.
            if !link.outage_logged.swap(true, Ordering::AcqRel) {
                tracing::warn!(redis = %url, "Redis subscriber connection re-established after it closed; what was published meanwhile is lost: this instance's sockets are told recovery_failed once a self-check passes");
            }
            link.subscribed.store(false, Ordering::Release);
            tokio::spawn(link.clone().resubscribe(shown.clone()));
            async { Ok(()) }
        });
    }

    async fn resubscribe(self, shown: String) {
        let channels: Vec<String> = self
            .client
            .tracked_shard_channels()
            .into_iter()
            .map(|c| c.to_string())
            .collect();
        for attempt in 1..=20u32 {
            if !self.client.is_connected() {
                return; // the next reconnect starts over
            }
            match subscribe_each(&self.client, &channels).await {
                Ok(()) => {
                    self.subscribed.store(true, Ordering::Release);
                    // A fresh connection with its subscriptions back: check it now rather than
                    // at the next tick, so delivery resumes as soon as it works.
                    self.recheck.notify_one();
                    self.outage_logged.store(false, Ordering::Release);
                    tracing::info!(redis = %shown, channels = channels.len(), "Redis connection restored; cross-instance delivery resumes once a self-check passes");
                    return;
                }
                Err(e) => {
                    tracing::warn!(redis = %shown, attempt, "re-subscribing after a Redis outage failed: {e}");
                    tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt.min(8))))
                        .await;
                }
            }
        }
    }
}

/// Subscribes `client` to the sharded `channels` again, one `SSUBSCRIBE` per channel. Redis
/// confirms each channel of an `SSUBSCRIBE` with a reply of its own, and fred takes exactly one
/// reply for it: with several channels in one command, the other confirmations were read as
/// the replies of the next commands on the connection, and from then on every command got an
/// earlier command's reply (a publish failing with "Cannot convert array to number", a
/// subscriber count belonging to another request, the last commands waiting on replies that
/// never came) until the connection was replaced.
pub async fn subscribe_each(
    client: &SubscriberClient,
    channels: &[String],
) -> Result<(), fred::error::Error> {
    for channel in channels {
        client.ssubscribe(channel.as_str()).await?;
    }
    Ok(())
}

/// The URL schemes taken, fred's (its `valkey…` spellings aside).
const SCHEMES: [&str; 6] = [
    "redis://",
    "rediss://",
    "redis-cluster://",
    "rediss-cluster://",
    "redis-sentinel://",
    "rediss-sentinel://",
];

/// The client configuration for `url` (fred's URL syntax, see the module doc), trusting the
/// CA certificates of the PEM file `ca_file` besides the system's when it is not empty. An
/// error names the configuration key to fix and why, without the URL's passwords.
pub fn redis_config(url: &str, ca_file: &str) -> Result<RedisConfig, (&'static str, String)> {
    let shown = redact(url);
    if !SCHEMES.iter().any(|scheme| url.starts_with(scheme)) {
        return Err((
            "cluster.redis_url",
            format!(
                "`{shown}` must start with {} (or be empty for a single instance)",
                SCHEMES.join(", ")
            ),
        ));
    }
    let mut config = RedisConfig::from_url(url).map_err(|e| {
        (
            "cluster.redis_url",
            format!("`{shown}` is not a Redis URL: {}", e.details()),
        )
    })?;
    config.version = RespVersion::RESP3;
    if !ca_file.is_empty() {
        if config.tls.is_none() {
            return Err((
                "cluster.tls_ca_file",
                format!(
                    "is set but cluster.redis_url `{shown}` does not use TLS (rediss://, \
                     rediss-cluster:// or rediss-sentinel://)"
                ),
            ));
        }
        let trusted = trusting(ca_file).map_err(|e| ("cluster.tls_ca_file", e))?;
        config.tls = Some(fred::types::config::TlsConnector::from(trusted).into());
    }
    Ok(config)
}

/// A TLS client configuration trusting the system's CA certificates and those of `ca_file`.
fn trusting(ca_file: &str) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    // The system's certificates that load (a missing system store is no reason to refuse the
    // file's).
    let (system, _) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let mut added = 0usize;
    let certs = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| format!("cannot read `{ca_file}`: {e}"))?;
    for cert in certs {
        let cert =
            cert.map_err(|e| format!("`{ca_file}` is not a PEM file of certificates: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("`{ca_file}` holds a certificate rustls cannot use: {e}"))?;
        added += 1;
    }
    if added == 0 {
        return Err(format!("`{ca_file}` holds no PEM certificate"));
    }
    tracing::debug!(
        system,
        added,
        "trusting the CA certificates of cluster.tls_ca_file"
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot configure TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Connects to Redis (≥ 7, RESP3) at `url`, trusting `ca_file` too for TLS (see
/// [`redis_config`]). Fails with the (password-free) URL when Redis refuses the connection,
/// or does not answer within 5 s, at startup: a platform restart is clearer than an instance
/// that silently serves only its own sockets.
pub async fn connect(
    url: &str,
    ca_file: &str,
    request_timeout: Duration,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Cluster> {
    let shown = redact(url);
    let config =
        redis_config(url, ca_file).map_err(|(key, reason)| anyhow::anyhow!("{key}: {reason}"))?;
    let redis_cluster = config.server.is_clustered();
    let mut builder = Builder::from_config(config);
    builder
        // Retries at most 1 s apart: after a stall, or a restart, the link is back within
        // about a second of Redis answering, and an attempt waits for Redis 2 s, so a 40 s
        // stall costs each connection about a dozen attempts, not a storm.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 1_000, 2))
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
            // A server that stops answering (stopped process, frozen host) while its TCP
            // connection stays up: the connection is dropped and re-established once a
            // command has waited this long, instead of every command timing out on it.
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(Duration::from_secs(1)),
                interval: Duration::from_millis(250),
            };
        })
        .with_performance_config(|p| {
            p.default_command_timeout = Duration::from_secs(1);
            // The driver's dispatcher reads every published message from one broadcast channel
            // of this size; fred's default (32) overflowed under a burst of cross-instance
            // publishes. What a lagging dispatcher still loses is counted and signalled
            // (see `driver`). A slot is one message handle.
            p.broadcast_channel_capacity = PUBSUB_BUFFER;
        });
    let client = builder
        .build_subscriber_client()
        .with_context(|| format!("cannot configure the Redis client for `{shown}`"))?;
    let commands = builder
        .build()
        .with_context(|| format!("cannot configure the Redis client for `{shown}`"))?;

    let link = Link {
        client: client.clone(),
        subscribed: Arc::new(AtomicBool::new(true)),
        outage_logged: Arc::new(AtomicBool::new(false)),
        down: Arc::new(Mutex::new(Down::default())),
        restored: Arc::new(watch::channel(0).0),
        recheck: Arc::new(Notify::new()),
    };
    // First, so that a Redis Cluster node behind a plain URL is named before a subscription
    // fails with MOVED.
    at_startup(&shown, commands.init()).await?;
    if !redis_cluster && is_cluster_node(&commands).await {
        anyhow::bail!(
            "cluster.redis_url `{shown}` points at a node of a Redis Cluster: use the \
             redis-cluster:// scheme (rediss-cluster:// for TLS) with the same host, port and \
             credentials, else the keys and channels of the other nodes' slots fail with MOVED"
        );
    }
    let losses = driver::Losses::new(link.clone(), metrics);
    let driver = at_startup(&shown, ClusterDriver::new(client, losses)).await?;
    let prober = socketioxide_core::Uid::new();
    let canary = Canary {
        received: at_startup(
            &shown,
            driver.subscribe(canary::CHANNEL.into(), canary::BUFFER),
        )
        .await?,
        answers: at_startup(
            &shown,
            driver.subscribe(canary::answer_channel(prober), canary::BUFFER),
        )
        .await?,
        prober,
        driver: driver.clone(),
        commands: commands.clone(),
    };
    let queries = at_startup(&shown, Queries::new(driver.clone(), request_timeout)).await?;
    link.watch(shown);
    let adapter = RedisAdapterCtr::new_with_driver(
        driver.clone(),
        RedisAdapterConfig::new().with_request_timeout(request_timeout),
    );
    Ok(Cluster {
        adapter,
        link,
        commands,
        canary,
        driver,
        queries,
        redis_cluster,
    })
}

/// Whether the server says it is a Redis Cluster node (`INFO cluster`: `cluster_enabled:1`).
/// A server that does not answer `INFO` (some managed offerings restrict it) is taken as not.
async fn is_cluster_node(commands: &fred::clients::Client) -> bool {
    let info = commands.custom::<String, &str>(
        fred::types::CustomCommand::new_static("INFO", fred::types::ClusterHash::Random, false),
        vec!["cluster"],
    );
    match tokio::time::timeout(STARTUP_TIMEOUT, info).await {
        Ok(Ok(info)) => info.lines().any(|l| l.trim() == "cluster_enabled:1"),
        _ => false,
    }
}

/// `connecting`, bounded by the startup timeout, with errors that name the URL.
async fn at_startup<T, E>(
    shown: &str,
    connecting: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    tokio::time::timeout(STARTUP_TIMEOUT, connecting)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "Redis at `{shown}` did not answer within {STARTUP_TIMEOUT:?} (cluster.redis_url)"
            )
        })?
        .with_context(|| format!("cannot connect to Redis at `{shown}` (cluster.redis_url)"))
}

/// The URL without its credentials (the user and password before the host, Sentinel's
/// `sentinelPassword`), for logs and errors.
pub(crate) fn redact(url: &str) -> String {
    let shown = match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_string(),
    };
    const SECRET: &str = "sentinelPassword=";
    match shown.find(SECRET) {
        Some(start) => {
            let value = start + SECRET.len();
            let end = shown[value..].find('&').map_or(shown.len(), |e| value + e);
            format!("{}***{}", &shown[..value], &shown[end..])
        }
        None => shown,
    }
}

#[cfg(test)]
impl Link {
    /// A link whose connection was never made (down, as while Redis is away), with a
    /// commands client on the same unconnected configuration.
    pub(crate) fn never_connected() -> (Link, fred::clients::Client) {
        let builder = Builder::default_centralized();
        let link = Link {
            client: builder
                .build_subscriber_client()
                .expect("default Redis configuration"),
            subscribed: Arc::new(AtomicBool::new(false)),
            outage_logged: Arc::new(AtomicBool::new(false)),
            down: Arc::new(Mutex::new(Down::default())),
            restored: Arc::new(watch::channel(0).0),
            recheck: Arc::new(Notify::new()),
        };
        (link, builder.build().expect("default Redis configuration"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            super::redact("redis://:secret@db:6379"),
            "redis://***@db:6379"
        );
        assert_eq!(
            super::redact("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            super::redact("rediss://app:secret@db:6380/0"),
            "rediss://***@db:6380/0"
        );
        assert_eq!(
            super::redact(
                "redis-sentinel://:secret@s1:26379?sentinelServiceName=m&sentinelPassword=hush&node=s2:26379"
            ),
            "redis-sentinel://***@s1:26379?sentinelServiceName=m&sentinelPassword=***&node=s2:26379"
        );
    }

    #[test]
    fn managed_redis_urls_are_taken() {
        let cluster = super::redis_config(
            "redis-cluster://app:secret@10.0.0.1:7000?node=10.0.0.2:7000&node=10.0.0.3:7000",
            "",
        )
        .expect("a cluster URL");
        assert!(cluster.server.is_clustered());
        assert_eq!(cluster.username.as_deref(), Some("app"));
        assert_eq!(cluster.password.as_deref(), Some("secret"));
        let tls = super::redis_config("rediss://:secret@db:6380", "").expect("a TLS URL");
        assert!(tls.tls.is_some() && tls.server.is_centralized());
        let tls_cluster =
            super::redis_config("rediss-cluster://db:7000", "").expect("a TLS cluster URL");
        assert!(tls_cluster.tls.is_some() && tls_cluster.server.is_clustered());
        let sentinel = super::redis_config(
            "redis-sentinel://s1:26379/0?node=s2:26379&sentinelServiceName=mymaster",
            "",
        )
        .expect("a Sentinel URL");
        assert!(sentinel.server.is_sentinel());
    }

    #[test]
    fn bad_urls_name_the_key_without_the_password() {
        let (key, reason) =
            super::redis_config("http://:secret@db:6379", "").expect_err("not Redis");
        assert_eq!(key, "cluster.redis_url");
        assert!(!reason.contains("secret"), "{reason}");
        let (key, reason) =
            super::redis_config("redis-sentinel://:secret@s1:26379", "").expect_err("no service");
        assert_eq!(key, "cluster.redis_url");
        assert!(!reason.contains("secret"), "{reason}");
        let (key, _) = super::redis_config("redis://db:6379", "/etc/ca.pem").expect_err("no TLS");
        assert_eq!(key, "cluster.tls_ca_file");
        let (key, reason) = super::redis_config("rediss://db:6379", "/nonexistent/ca.pem")
            .expect_err("no such file");
        assert_eq!(key, "cluster.tls_ca_file");
        assert!(reason.contains("/nonexistent/ca.pem"), "{reason}");
    }
}
