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
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            tls_ca_file: None,
            request_timeout: Duration::from_millis(1_000),
            max_lag: 10_000,
        }
    }
}

impl ClusterConfig {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        match (&self.redis_url, &self.tls_ca_file) {
            (Some(url), ca_file) => {
                crate::redis_url::redis_config(url, ca_file.as_deref())
                    .map_err(|(key, reason)| Invalid::new(key, reason))?;
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
