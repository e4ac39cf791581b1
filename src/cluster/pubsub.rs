//! Which pub/sub commands carry cross-instance messages (`cluster.pubsub`): sharded
//! (`SPUBLISH`, `SSUBSCRIBE`, `SUNSUBSCRIBE`, `PUBSUB SHARDNUMSUB`; Redis ≥ 7, and what a Redis
//! Cluster needs: each channel lives on the node owning its slot) or plain (`PUBLISH`,
//! `SUBSCRIBE`, `UNSUBSCRIBE`, `PUBSUB NUMSUB`; Redis 6, and hosted Redis without sharded
//! pub/sub, e.g. Upstash). On a single server (or behind Sentinel) both deliver the same way;
//! the adapter's channels, the self-check's, the relay's and the append script's publish all
//! follow the one chosen at connect — except on a Redis Cluster, where the relay's channel is
//! always plain ([`crate::realtime`]'s `relay`). Instances on different modes do not hear each
//! other: `auto` picks the same on a given Redis.

use fred::clients::{Client, SubscriberClient};
use fred::error::{Error, ErrorKind};
use fred::interfaces::PubsubInterface;

use crate::config::PubSubMode;

/// The pub/sub commands in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubSub {
    Sharded,
    Plain,
}

/// A channel nobody subscribes to: `auto` asks Redis whether it takes `SPUBLISH` there.
const PROBE_CHANNEL: &str = "sockgate:pubsub-probe";

impl PubSub {
    /// The publish command, as a script calls it.
    pub fn publish_command(self) -> &'static str {
        match self {
            Self::Sharded => "SPUBLISH",
            Self::Plain => "PUBLISH",
        }
    }

    pub(super) async fn publish(
        self,
        conn: &SubscriberClient,
        chan: String,
        val: Vec<u8>,
    ) -> Result<(), Error> {
        match self {
            Self::Sharded => conn.spublish::<u64, _, _>(chan, val).await?,
            Self::Plain => conn.publish::<u64, _, _>(chan, val).await?,
        };
        Ok(())
    }

    pub(super) async fn subscribe(self, conn: &SubscriberClient, chan: &str) -> Result<(), Error> {
        match self {
            Self::Sharded => conn.ssubscribe(chan).await,
            Self::Plain => conn.subscribe(chan).await,
        }
    }

    pub(super) async fn unsubscribe(
        self,
        conn: &SubscriberClient,
        chan: String,
    ) -> Result<(), Error> {
        match self {
            Self::Sharded => conn.sunsubscribe(chan).await,
            Self::Plain => conn.unsubscribe(chan).await,
        }
    }

    /// How many connections subscribe `chan` (`PUBSUB SHARDNUMSUB`, sent to the node owning
    /// its slot on a Redis Cluster, or `PUBSUB NUMSUB`).
    pub(super) async fn subscribers(
        self,
        conn: &SubscriberClient,
        chan: String,
    ) -> Result<Vec<(String, u64)>, Error> {
        match self {
            Self::Sharded => conn.pubsub_shardnumsub(chan).await,
            Self::Plain => conn.pubsub_numsub(chan).await,
        }
    }

    /// The channels `conn` subscribed in this mode, to subscribe again after a reconnect.
    pub(super) fn tracked(self, conn: &SubscriberClient) -> Vec<String> {
        let tracked = match self {
            Self::Sharded => conn.tracked_shard_channels(),
            Self::Plain => conn.tracked_channels(),
        };
        tracked.into_iter().map(|c| c.to_string()).collect()
    }
}

impl std::fmt::Display for PubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sharded => "sharded pub/sub (SPUBLISH/SSUBSCRIBE)",
            Self::Plain => "plain pub/sub (PUBLISH/SUBSCRIBE)",
        })
    }
}

/// The mode for `setting` on the Redis at `shown` ([`choose`]), logged once with why, and
/// a warning when instances on the other mode share this Redis ([`others`]: subscribers of
/// the adapter's `requests` channel).
pub(super) async fn settle(
    setting: PubSubMode,
    redis_cluster: bool,
    commands: &Client,
    (shown, requests): (&str, String),
) -> anyhow::Result<PubSub> {
    let (pubsub, why) = choose(setting, redis_cluster, commands).await?;
    tracing::info!(redis = %shown, "cross-instance messages use {pubsub}: {why}");
    if !redis_cluster && let Some(others) = others(pubsub, commands, requests).await {
        tracing::warn!(
            instances = others,
            "instances on the other pub/sub mode share this Redis (cluster.pubsub differs): \
             they and this instance do not hear each other; set the same cluster.pubsub \
             everywhere (\"auto\" picks the same on one Redis)"
        );
    }
    Ok(pubsub)
}

/// The mode for `setting` on the Redis `commands` reaches (`redis_cluster`: a Redis Cluster),
/// and why. Unless told `plain`, Redis is asked once whether it takes `SPUBLISH` (on a channel
/// nobody subscribes to): `auto` takes plain pub/sub when it refuses; `sharded`, and any mode
/// on a Redis Cluster, fail startup then, saying what to change. Redis refuses `SPUBLISH` when
/// it answers an error (an unknown or renamed command, an ACL without it) and takes `PUBLISH`
/// on the same channel; a timeout, a broken connection or `PUBLISH` failing too (Redis still
/// loading, …) fails startup whatever the mode: it says nothing about the commands.
pub(super) async fn choose(
    setting: PubSubMode,
    redis_cluster: bool,
    commands: &Client,
) -> anyhow::Result<(PubSub, String)> {
    if setting == PubSubMode::Plain {
        return Ok((PubSub::Plain, "cluster.pubsub = \"plain\"".into()));
    }
    let refused = match commands.spublish::<u64, _, _>(PROBE_CHANNEL, "").await {
        Ok(_) => None,
        Err(e) if is_transient(&e) => return Err(e.into()),
        Err(e) => {
            commands.publish::<u64, _, _>(PROBE_CHANNEL, "").await?;
            Some(e)
        }
    };
    match (setting, refused) {
        (PubSubMode::Sharded, None) => Ok((PubSub::Sharded, "cluster.pubsub = \"sharded\"".into())),
        (_, None) => Ok((
            PubSub::Sharded,
            "cluster.pubsub = \"auto\" and Redis takes SPUBLISH".into(),
        )),
        (_, Some(e)) if redis_cluster => anyhow::bail!(
            "this Redis Cluster refuses SPUBLISH ({e}): sockgate needs sharded pub/sub on a \
             Redis Cluster (Redis >= 7)"
        ),
        (PubSubMode::Sharded, Some(e)) => anyhow::bail!(
            "Redis refuses SPUBLISH ({e}) but cluster.pubsub = \"sharded\": set it to \"auto\" \
             or \"plain\" for a Redis without sharded pub/sub (Redis 6, some providers)"
        ),
        (_, Some(e)) => Ok((
            PubSub::Plain,
            format!("cluster.pubsub = \"auto\" and Redis refuses SPUBLISH ({e})"),
        )),
    }
}

/// How many servers subscribe the adapter's request `channel` with the other mode than
/// `pubsub`, when any: instances told otherwise on the same Redis, which and this one do not
/// hear each other. Asked once at startup; a Redis that does not answer counts none.
async fn others(pubsub: PubSub, commands: &Client, channel: String) -> Option<u64> {
    let counted: Result<Vec<(String, u64)>, Error> = match pubsub {
        PubSub::Sharded => commands.pubsub_numsub(channel).await,
        PubSub::Plain => commands.pubsub_shardnumsub(channel).await,
    };
    let count = counted.ok()?.first().map_or(0, |(_, n)| *n);
    (count > 0).then_some(count)
}

/// Whether `e` is the connection failing, not Redis answering.
fn is_transient(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Timeout | ErrorKind::IO | ErrorKind::Canceled
    )
}
