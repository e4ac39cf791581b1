//! `[cluster]`: several instances sharing rooms through Redis.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::Invalid;
use super::value::{millis, shown_or_empty, text_or_off};

/// Several instances sharing rooms through Redis.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://[[user]:password@]host:port[/db]` (Redis ≥ 7), `rediss://` for TLS,
    /// `redis[s]-cluster://host:port?node=host2:port2` for a Redis Cluster,
    /// `redis[s]-sentinel://host:port?node=…&sentinelServiceName=…` behind Sentinel; empty =
    /// single instance, in memory.
    #[serde(deserialize_with = "text_or_off", serialize_with = "shown_or_empty")]
    pub redis_url: Option<String>,
    /// A PEM file of CA certificates trusted for a TLS Redis (`rediss…` URLs), besides the
    /// system's; empty = the system's only.
    #[serde(deserialize_with = "text_or_off", serialize_with = "shown_or_empty")]
    pub tls_ca_file: Option<String>,
    /// How long cluster-wide questions (presence, stats) wait for the other instances.
    #[serde(rename = "request_timeout_ms", with = "millis")]
    pub request_timeout: Duration,
    /// Relayed messages (history on) the slowest live instance may not have read yet before
    /// publishes are refused with `503` + `Retry-After` (0 = never refused); see
    /// [`crate::realtime`]'s backpressure.
    pub max_lag: u64,
    /// Which pub/sub commands carry cross-instance messages: `auto` (sharded when Redis takes
    /// `SPUBLISH`, else plain), `sharded` (`SPUBLISH`/`SSUBSCRIBE`, Redis ≥ 7; required on a
    /// Redis Cluster), `plain` (`PUBLISH`/`SUBSCRIBE`: Redis 6, providers without sharded
    /// pub/sub). Every instance sharing a Redis must end up on the same.
    pub pubsub: PubSubMode,
}

/// `cluster.pubsub`: which pub/sub commands cross-instance messages travel with.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PubSubMode {
    /// Sharded when Redis takes `SPUBLISH` (asked once at connect), else plain.
    #[default]
    Auto,
    Sharded,
    Plain,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            tls_ca_file: None,
            request_timeout: Duration::from_millis(1_000),
            max_lag: 10_000,
            pubsub: PubSubMode::Auto,
        }
    }
}

impl ClusterConfig {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        match (&self.redis_url, &self.tls_ca_file) {
            (Some(url), ca_file) => {
                let redis = crate::redis_url::redis_config(url, ca_file.as_deref())
                    .map_err(|(key, reason)| Invalid::new(key, reason))?;
                if self.pubsub == PubSubMode::Plain && redis.server.is_clustered() {
                    return Err(Invalid::new(
                        "cluster.pubsub",
                        "is \"plain\" but cluster.redis_url is a Redis Cluster, where \
                         sockgate needs sharded pub/sub (Redis >= 7): use \"auto\" or \"sharded\"",
                    ));
                }
                Ok(())
            }
            (None, Some(_)) => Err(Invalid::new(
                "cluster.tls_ca_file",
                "is set but cluster.redis_url is empty (a single instance uses no Redis)",
            )),
            (None, None) => Ok(()),
        }
    }
}
