//! Cluster mode: instances share rooms, publishes, disconnects and presence through Redis,
//! using `socketioxide-redis` (its protocol, over the `fred` client, through our
//! [`driver::ClusterDriver`]) — no protocol of ours. This module owns the connection to Redis
//! and the [`Link`]: whether cross-instance delivery works right now.
//!
//! Redis may be a single server (`redis://`, `rediss://` for TLS), a Redis Cluster
//! (`redis-cluster://`, `rediss-cluster://`) or a server behind Sentinel (`redis-sentinel://`,
//! `rediss-sentinel://`), in fred's URL syntax ([`crate::redis_url`]). On a Redis Cluster, every
//! multi-key script keeps its keys in one slot (the history's keys share a hash tag), and
//! sharded pub/sub (`SSUBSCRIBE`, `SPUBLISH`, `PUBSUB SHARDNUMSUB`) goes to the node that owns
//! each channel's slot; sockgate's relay of kept messages publishes plainly there
//! ([`Cluster::redis_cluster`]).
//! A Redis without sharded pub/sub (Redis 6, some providers) is used with plain pub/sub
//! ([`pubsub`], `cluster.pubsub`).
//!
//! fred reconnects with backoff and re-subscribes after an outage; while Redis is away the
//! hub sees [`Link::is_up`] turn false and delivers to local sockets only, so an instance
//! keeps serving its own users until cross-instance delivery resumes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fred::prelude::{Builder, ClientLike, Config as RedisConfig, ReconnectPolicy};
use fred::types::config::UnresponsiveConfig;
use socketioxide_redis::drivers::Driver;
use socketioxide_redis::{RedisAdapterConfig, RedisAdapterCtr};

use crate::config::PubSubMode;
use crate::metrics::Metrics;
use crate::redis_url::{redact, redis_config};

pub mod canary;
pub mod driver;
mod link;
pub mod pubsub;
pub mod query;

pub use canary::Canary;
pub use driver::ClusterDriver;
use link::CONNECT_TIMEOUT;
pub use link::{Link, subscribe_each};
pub use pubsub::PubSub;
pub use query::Queries;

/// The Socket.IO adapter type in cluster mode.
pub type ClusterAdapter =
    socketioxide_redis::CustomRedisAdapter<socketioxide::adapter::Emitter, ClusterDriver>;

/// Cross-instance messages buffered between the Redis connection and socketioxide-redis.
const PUBSUB_BUFFER: usize = 16 * 1024;

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
    /// Redis is a Redis Cluster: a script may touch only the keys and sharded channels of one
    /// slot, so the script that appends kept messages relays them with `PUBLISH` (see
    /// [`crate::realtime`]).
    pub redis_cluster: bool,
}

/// Connects to Redis (≥ 6.2, RESP3) at `url`, trusting `ca_file` too for TLS (see
/// [`redis_config`]), with the pub/sub commands `pubsub` says (see [`pubsub::choose`]). Fails
/// with the (password-free) URL when Redis refuses the connection, or does not answer within
/// 5 s, at startup: a platform restart is clearer than an instance that silently serves only
/// its own sockets.
pub async fn connect(
    url: &str,
    ca_file: Option<&str>,
    request_timeout: Duration,
    pubsub: PubSubMode,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Cluster> {
    let shown = redact(url);
    let config =
        redis_config(url, ca_file).map_err(|(key, reason)| anyhow::anyhow!("{key}: {reason}"))?;
    let redis_cluster = config.server.is_clustered();
    let builder = client_builder(config);
    let client = builder
        .build_subscriber_client()
        .with_context(|| format!("cannot configure the Redis client for `{shown}`"))?;
    let commands = builder
        .build()
        .with_context(|| format!("cannot configure the Redis client for `{shown}`"))?;

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
    let pubsub = pubsub_mode(pubsub, redis_cluster, &commands, &shown).await?;
    let link = Link::new(client.clone(), pubsub);
    let losses = driver::Losses::new(link.clone(), metrics);
    let driver = at_startup(&shown, ClusterDriver::new(client, losses, pubsub)).await?;
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

/// fred's builder for `config`, with sockgate's reconnection, timeouts and pub/sub buffer.
fn client_builder(config: RedisConfig) -> Builder {
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
    builder
}

/// Whether the server says it is a Redis Cluster node (`INFO cluster`: `cluster_enabled:1`).
/// A server that does not answer `INFO` (some managed offerings restrict it) is taken as not.
async fn is_cluster_node(commands: &fred::clients::Client) -> bool {
    let info = commands.custom::<String, &str>(
        fred::types::CustomCommand::new_static("INFO", fred::types::ClusterHash::Random, false),
        vec!["cluster"],
    );
    match tokio::time::timeout(CONNECT_TIMEOUT, info).await {
        Ok(Ok(info)) => info.lines().any(|l| l.trim() == "cluster_enabled:1"),
        _ => false,
    }
}

/// [`pubsub::settle`], bounded by the startup timeout, with errors that name the URL.
async fn pubsub_mode(
    setting: PubSubMode,
    redis_cluster: bool,
    commands: &fred::clients::Client,
    shown: &str,
) -> anyhow::Result<PubSub> {
    let settling = pubsub::settle(
        setting,
        redis_cluster,
        commands,
        (shown, canary::request_channel()),
    );
    tokio::time::timeout(CONNECT_TIMEOUT, settling)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "Redis at `{shown}` did not answer within {CONNECT_TIMEOUT:?} (cluster.redis_url)"
            )
        })?
        .with_context(|| format!("Redis at `{shown}` (cluster.pubsub)"))
}

/// `connecting`, bounded by the startup timeout, with errors that name the URL.
async fn at_startup<T, E>(
    shown: &str,
    connecting: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "Redis at `{shown}` did not answer within {CONNECT_TIMEOUT:?} (cluster.redis_url)"
            )
        })?
        .with_context(|| format!("cannot connect to Redis at `{shown}` (cluster.redis_url)"))
}
