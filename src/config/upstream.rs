//! `[upstream]`, the Node app sockgate fronts, and `[proxy]`, how requests to it are rewritten.

use std::time::Duration;

use http::Uri;
use http::uri::PathAndQuery;
use serde::{Deserialize, Deserializer, Serialize};

use super::error::Invalid;
use super::value::{millis, parsed, path_on_app, shown};

/// The Node app sockgate fronts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `http://host:port` of the app; only plain HTTP on a private network makes sense here.
    pub url: String,
    #[serde(rename = "connect_timeout_ms", with = "millis")]
    pub connect_timeout: Duration,
    /// Time the app gets to send response headers; the body may stream for longer.
    #[serde(rename = "response_timeout_ms", with = "millis")]
    pub response_timeout: Duration,
    /// Must stay below Node's 5 s `keepAliveTimeout`, or a reused connection may be closed
    /// by Node while a request is on its way.
    #[serde(rename = "pool_idle_timeout_ms", with = "millis")]
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// What readiness (`/readyz`) requests from the app to see it answer HTTP: any status
    /// counts, no answer within 1 s does not. Must not need a login.
    #[serde(deserialize_with = "ready_path", serialize_with = "shown")]
    pub ready_path: PathAndQuery,
}

fn ready_path<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PathAndQuery, D::Error> {
    parsed(deserializer, |text| {
        path_on_app(text).ok_or_else(|| format!("`{text}` must be a path starting with `/`"))
    })
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:4321".into(),
            connect_timeout: Duration::from_millis(2_000),
            response_timeout: Duration::from_millis(60_000),
            pool_idle_timeout: Duration::from_millis(4_000),
            pool_max_idle_per_host: 256,
            ready_path: PathAndQuery::from_static("/"),
        }
    }
}

impl UpstreamConfig {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let fail = |reason: String| Invalid::new("upstream.url", reason);
        let url = &self.url;
        let uri: Uri = url
            .parse()
            .map_err(|e| fail(format!("`{url}` is not a URL: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(fail(format!(
                "`{url}` must look like http://127.0.0.1:4321 (plain http, with host and port)"
            )));
        }
        if uri.port().is_none() {
            return Err(fail(format!(
                "`{url}` has no port: write the app's port, e.g. http://127.0.0.1:4321 \
                 (there is no default port)"
            )));
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(fail(format!("`{url}` must not have a path")));
        }
        Ok(())
    }
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
    #[serde(rename = "min_body_rate_grace_ms", with = "millis")]
    pub min_body_rate_grace: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            trust_forwarded: false,
            min_body_rate_bytes_per_sec: 240,
            min_body_rate_grace: Duration::from_millis(5_000),
        }
    }
}
