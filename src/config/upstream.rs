//! `[upstream]`, the Node app sockgate fronts, and `[proxy]`, how requests to it are rewritten.

use http::Uri;
use serde::{Deserialize, Serialize};

use super::error::Invalid;

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
        let ready = &self.ready_path;
        if !ready.starts_with('/') || ready.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(Invalid::new(
                "upstream.ready_path",
                format!("`{ready}` must be a path starting with `/`"),
            ));
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
    pub min_body_rate_grace_ms: u64,
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
