//! `[log]`: what is logged, and how.

use serde::{Deserialize, Serialize};

use super::error::Invalid;

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

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl LogConfig {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        tracing_subscriber::EnvFilter::try_new(&self.filter)
            .map_err(|e| Invalid::new("log.filter", format!("`{}`: {e}", self.filter)))?;
        Ok(())
    }
}
