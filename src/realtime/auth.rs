//! Socket authentication through the app's own session route.
//!
//! A handshake's credentials (its `Cookie`, or `Authorization`) are sent to the app's session
//! route, and the user id is read from the JSON answer. Answers are cached per credentials
//! (positive and negative TTLs, bounded size); concurrent look-ups of the same credentials wait
//! for one call; and calls in flight are capped, so a deploy that reconnects every browser at
//! once does not stampede the app.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Either, Empty, Limited};
use moka::Expiry;
use moka::future::Cache;
use tokio::sync::Semaphore;

use crate::config::{AuthConfig, ms};
use crate::metrics::{Lookup, Metrics};
use crate::upstream::Upstream;

/// Largest session-route answer read; a session object is small.
const MAX_SESSION_BODY: usize = 64 * 1024;

/// Why a socket was not let in. The `Display` text is what the client sees in `connect_error`.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("unauthorized")]
    Unauthorized,
    /// The app could not say (down, slow, 5xx): fail closed, with a message of its own.
    #[error("session unavailable")]
    Unavailable(String),
}

/// The user a session belongs to, or the app's "no".
#[derive(Debug, Clone)]
enum Verdict {
    User(Arc<str>),
    Rejected,
}

/// What a handshake presented: the headers forwarded to the session route and their cache key.
#[derive(Debug, Clone)]
pub struct Credentials {
    key: u128,
    headers: HeaderMap,
}

pub struct SessionAuth {
    upstream: Upstream,
    path: PathAndQuery,
    forward: Vec<HeaderName>,
    pointer: String,
    timeout: Duration,
    cache: Cache<u128, Verdict>,
    permits: Semaphore,
    hash_keys: (RandomState, RandomState),
    metrics: Arc<Metrics>,
}

struct VerdictExpiry {
    positive: Duration,
    negative: Duration,
}

impl Expiry<u128, Verdict> for VerdictExpiry {
    fn expire_after_create(&self, _: &u128, verdict: &Verdict, _: Instant) -> Option<Duration> {
        Some(match verdict {
            Verdict::User(_) => self.positive,
            Verdict::Rejected => self.negative,
        })
    }
}

impl SessionAuth {
    pub fn new(config: &AuthConfig, upstream: Upstream, metrics: Arc<Metrics>) -> Self {
        let cache = Cache::builder()
            .max_capacity(config.cache_max_entries)
            .expire_after(VerdictExpiry {
                positive: ms(config.cache_ttl_ms),
                negative: ms(config.negative_ttl_ms),
            })
            .build();
        let forward = config
            .forward_headers
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        Self {
            upstream,
            path: config
                .session_path
                .parse()
                .unwrap_or_else(|_| PathAndQuery::from_static("/api/session")),
            forward,
            pointer: config.user_id_pointer.clone(),
            timeout: ms(config.timeout_ms),
            cache,
            permits: Semaphore::new(config.max_concurrent),
            hash_keys: (RandomState::new(), RandomState::new()),
            metrics,
        }
    }

    /// The request headers [`Self::credentials`] reads.
    pub fn read_headers(&self) -> impl Iterator<Item = &HeaderName> {
        [&header::COOKIE, &header::AUTHORIZATION, &header::HOST]
            .into_iter()
            .chain(&self.forward)
    }

    /// The credentials in a handshake, or `None` when it carries none (no cookie, no
    /// `Authorization`): such a socket is refused without asking the app.
    pub fn credentials(&self, request_headers: &HeaderMap) -> Option<Credentials> {
        let cookie = request_headers.get(header::COOKIE);
        let authorization = request_headers.get(header::AUTHORIZATION);
        if cookie.is_none() && authorization.is_none() {
            return None;
        }
        // Two independent 64-bit keyed hashes: a collision (two sessions sharing a cache slot)
        // is out of reach, and the cache never holds the cookie itself.
        let material = (
            cookie.map(HeaderValue::as_bytes),
            authorization.map(HeaderValue::as_bytes),
        );
        let key = (u128::from(self.hash_keys.0.hash_one(material)) << 64)
            | u128::from(self.hash_keys.1.hash_one(material));
        let mut headers = HeaderMap::new();
        for name in &self.forward {
            for value in request_headers.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        // The app sees the host the browser used, as it does for its pages.
        if let Some(host) = request_headers.get(header::HOST) {
            headers.insert(header::HOST, host.clone());
        }
        Some(Credentials { key, headers })
    }

    /// The user id for these credentials, from the cache or from one session-route call.
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<Arc<str>, AuthError> {
        let cached = self.cache.contains_key(&credentials.key);
        let entry = self
            .cache
            .entry(credentials.key)
            .or_try_insert_with(self.ask_app(&credentials.headers))
            .await;
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                self.metrics.session_lookup(Lookup::Error);
                return Err(AuthError::Unavailable(e.to_string()));
            }
        };
        self.metrics
            .session_lookup(match (entry.is_fresh(), cached) {
                (true, _) => Lookup::Miss,
                (false, true) => Lookup::Hit,
                (false, false) => Lookup::Coalesced,
            });
        match entry.into_value() {
            Verdict::User(id) => Ok(id),
            Verdict::Rejected => Err(AuthError::Unauthorized),
        }
    }

    async fn ask_app(&self, headers: &HeaderMap) -> Result<Verdict, String> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| "session checks are shut down".to_string())?;
        let started = Instant::now();
        let result = self.call_session_route(headers).await;
        self.metrics.session_call(started.elapsed());
        if let Err(reason) = &result {
            tracing::warn!(path = %self.path, "session route failed, socket refused: {reason}");
        }
        result
    }

    async fn call_session_route(&self, headers: &HeaderMap) -> Result<Verdict, String> {
        let mut req = Request::new(Either::Right(Empty::new()));
        *req.method_mut() = Method::GET;
        *req.uri_mut() = self.upstream.uri(Some(&self.path));
        *req.headers_mut() = headers.clone();
        req.headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let started = Instant::now();
        let resp = self
            .upstream
            .send(req, Some(self.timeout))
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Ok(Verdict::Rejected);
        }
        if !status.is_success() {
            return Err(format!("session route answered {status}"));
        }
        let remaining = self.timeout.saturating_sub(started.elapsed());
        let body = tokio::time::timeout(
            remaining,
            Limited::new(resp.into_body(), MAX_SESSION_BODY).collect(),
        )
        .await
        .map_err(|_| format!("session route body not read within {:?}", self.timeout))?
        .map_err(|e| format!("session route body: {e}"))?
        .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("session route answered {status} without JSON: {e}"))?;
        Ok(match user_id_at(&json, &self.pointer) {
            Some(id) => Verdict::User(id.into()),
            // A 2xx without a user (e.g. `{"userId": null}`) is the app's way to say "nobody".
            None => Verdict::Rejected,
        })
    }
}

/// The user id at `pointer`: a non-empty string, or a number (kept as its decimal text).
fn user_id_at(json: &serde_json::Value, pointer: &str) -> Option<String> {
    match json.pointer(pointer)? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn user_id_accepts_strings_and_numbers_only() {
        assert_eq!(
            user_id_at(&json!({"userId": "a"}), "/userId").as_deref(),
            Some("a")
        );
        assert_eq!(
            user_id_at(&json!({"userId": 42}), "/userId").as_deref(),
            Some("42")
        );
        assert_eq!(
            user_id_at(&json!({"user": {"id": 7}}), "/user/id").as_deref(),
            Some("7")
        );
        assert_eq!(user_id_at(&json!({"userId": null}), "/userId"), None);
        assert_eq!(user_id_at(&json!({"userId": ""}), "/userId"), None);
        assert_eq!(user_id_at(&json!({"userId": true}), "/userId"), None);
        assert_eq!(user_id_at(&json!({}), "/userId"), None);
    }
}
