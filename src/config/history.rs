//! `[history]`: recent messages kept per room for clients that reconnect.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::Invalid;
use super::value::millis;

/// The smallest `history.max_bytes`: a few dozen messages of a few KiB.
const MIN_HISTORY_BYTES: usize = 64 * 1024;

/// Recent messages kept per user so reconnecting clients get what they missed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    pub enabled: bool,
    /// Messages kept per user (about this many in cluster mode: Redis trims approximately).
    pub max_messages: usize,
    /// How long a user's messages are kept after their last one.
    #[serde(rename = "max_age_ms", with = "millis")]
    pub max_age: Duration,
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
            max_age: Duration::from_millis(120_000),
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

impl HistoryConfig {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.max_bytes < MIN_HISTORY_BYTES {
            return Err(Invalid::new(
                "history.max_bytes",
                format!(
                    "{} is below {MIN_HISTORY_BYTES} (64 KiB), too little to recover anything; \
                     turn history off with history.enabled = false instead",
                    self.max_bytes
                ),
            ));
        }
        Ok(())
    }
}
