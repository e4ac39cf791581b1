//! `[upstream]`, the Node app sockgate fronts, and `[proxy]`, how requests to it are rewritten.

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::time::Duration;

use http::Uri;
use http::uri::{Authority, PathAndQuery};
use serde::{Deserialize, Deserializer, Serialize};

use super::value::{app_path, millis, parsed, shown};

/// The Node app sockgate fronts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `http://host:port` of the app; only plain HTTP on a private network makes sense here.
    #[serde(deserialize_with = "app_url", serialize_with = "shown")]
    pub url: AppUrl,
    #[serde(rename = "connect_timeout_ms", with = "millis")]
    pub connect_timeout: Duration,
    /// Time the app gets to send response headers; the body may stream for longer.
    #[serde(rename = "response_timeout_ms", with = "millis")]
    pub response_timeout: Duration,
    /// Must stay below Node's 5 s `keepAliveTimeout`, or a reused connection may be closed
    /// by Node while a request is on its way.
    #[serde(rename = "pool_idle_timeout_ms", with = "millis")]
    pub pool_idle_timeout: Duration,
    /// Idle connections kept for reuse; when all are busy more are opened, and those that come
    /// back to a full pool are closed.
    pub pool_max_idle_per_host: usize,
    /// What readiness (`/readyz`) requests from the app to see it answer HTTP: any status
    /// counts, no answer within 1 s does not. Must not need a login.
    #[serde(deserialize_with = "app_path", serialize_with = "shown")]
    pub ready_path: PathAndQuery,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: AppUrl {
                written: "http://127.0.0.1:4321".into(),
                authority: Authority::from_static("127.0.0.1:4321"),
            },
            connect_timeout: Duration::from_millis(2_000),
            response_timeout: Duration::from_millis(60_000),
            pool_idle_timeout: Duration::from_millis(4_000),
            pool_max_idle_per_host: 256,
            ready_path: PathAndQuery::from_static("/"),
        }
    }
}

/// `upstream.url` as written (shown, logged) with the `host:port` the proxy connects to.
#[derive(Debug, Clone, PartialEq)]
pub struct AppUrl {
    written: String,
    authority: Authority,
}

impl AppUrl {
    /// The app's `host:port`.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }
}

/// Reads as the URL the user wrote.
impl Deref for AppUrl {
    type Target = str;

    fn deref(&self) -> &str {
        &self.written
    }
}

impl fmt::Display for AppUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

impl FromStr for AppUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        let authority = match uri.authority() {
            Some(authority) if uri.scheme_str() == Some("http") => authority.clone(),
            _ => {
                return Err(format!(
                    "`{url}` must look like http://127.0.0.1:4321 (plain http, with host and port)"
                ));
            }
        };
        if uri.port().is_none() {
            return Err(format!(
                "`{url}` has no port: write the app's port, e.g. http://127.0.0.1:4321 \
                 (there is no default port)"
            ));
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(format!("`{url}` must not have a path"));
        }
        Ok(Self {
            written: url.to_string(),
            authority,
        })
    }
}

fn app_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<AppUrl, D::Error> {
    parsed(deserializer, str::parse)
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
