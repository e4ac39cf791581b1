//! Socket authentication through the app's own session route.
//!
//! A handshake's credentials (the headers the session route gets: `Cookie`, `Host` and
//! `auth.forward_headers`, plus `Authorization`) are sent to the app's session route, and the
//! user id (with the rooms the user belongs to, `auth.rooms_pointer`, and what presence shows
//! of them, `auth.user_info_pointer`) is read from the JSON
//! answer. Answers are cached under a SHA-256 of exactly those
//! header bytes (positive and negative TTLs, bounded size); concurrent look-ups of the same
//! credentials wait for one call; calls in flight are capped, and so are the look-ups waiting
//! for a place, so a deploy that reconnects every browser at once does not stampede the app
//! and nobody waits longer than `auth.timeout_ms`. A kick ([`SessionAuth::forget_user`])
//! makes every earlier answer about that user untrusted (`kicks`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use moka::Expiry;
use moka::future::Cache;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::kicks::{Kicks, Stamp};
use super::rooms::RoomRules;
use crate::config::{AuthConfig, ms};
use crate::metrics::{Lookup, Metrics};
use crate::upstream::Upstream;

/// Largest session-route answer read; a session object is small.
const MAX_SESSION_BODY: usize = 64 * 1024;

/// How often one check asks the app again when its user was kicked while it was answered.
const STALE_RETRIES: usize = 3;

/// Why a socket was not let in. The `Display` text is what the client sees in `connect_error`.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("unauthorized")]
    Unauthorized,
    /// The app could not say (down, slow, 5xx, too busy): fail closed, with a message of its own.
    #[error("session unavailable")]
    Unavailable(String),
}

/// Why a handshake's credentials are not even looked at.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum CredentialError {
    #[error("no credentials: a Socket.IO handshake needs the session cookie (or Authorization)")]
    Missing,
    #[error(
        "credentials of {bytes} bytes are over the limit of {max} bytes (auth.max_credential_bytes)"
    )]
    TooLarge { bytes: usize, max: usize },
}

/// What the session route says about a session it accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub user_id: Arc<str>,
    /// The rooms (besides the user room) its sockets are in: valid names only, capped.
    pub rooms: Arc<[Arc<str>]>,
    /// What presence rooms show of the user: JSON text of at most [`MAX_USER_INFO_BYTES`].
    pub info: Option<Arc<str>>,
}

/// Largest user info (serialized) presence shows; a larger one is logged and left out.
pub const MAX_USER_INFO_BYTES: usize = 1024;

/// The session, or the app's "no".
#[derive(Debug, Clone)]
enum Verdict {
    User(Session),
    Rejected,
}

/// A verdict, when the app was asked (for [`Kicks::kicked_since`]) and when it answered.
#[derive(Debug, Clone)]
struct Answer {
    verdict: Verdict,
    asked_at: Stamp,
    /// Before the cache inserts the answer, so the cache holds it at least this long + TTL.
    answered_at: Instant,
}

/// The session a handshake was let in on, with when the app gave it: it rides to the
/// socket's Socket.IO CONNECT ([`SessionAuth::reuse`]) so that the CONNECT neither parses the
/// credentials nor looks them up again.
#[derive(Debug)]
pub struct Admitted {
    session: Session,
    asked_at: Stamp,
    answered_at: Instant,
}

/// The SHA-256 of a handshake's credential headers: what the cache and the session binding
/// compare. Two requests with the same key sent the session route the same bytes.
pub type CredentialKey = [u8; 32];

/// What a handshake presented: the headers forwarded to the session route and their keys.
#[derive(Debug, Clone)]
pub struct Credentials {
    key: CredentialKey,
    secret: CredentialKey,
    headers: HeaderMap,
}

impl Credentials {
    /// Over every header read: what the session cache is keyed by.
    pub fn key(&self) -> &CredentialKey {
        &self.key
    }

    /// Over every header read except those that describe the client rather than who it is
    /// ([`describes_the_client`]): what an open session is bound to. `Cookie`, `Authorization`
    /// and any header of the app's own in `auth.forward_headers` (an API key, a tenant) are in
    /// it, since the app may authenticate on any of them. `User-Agent`, `Host` or the client
    /// address prove nothing (anyone can send them), and they legitimately differ between one
    /// client's requests: Node's socket.io-client sends a `User-Agent` on polling requests but
    /// none on its WebSocket upgrade, and a phone's address changes.
    pub fn secret(&self) -> &CredentialKey {
        &self.secret
    }

    /// The headers sent on to the app, on the session route and any other call made for
    /// this socket (a `subscribe`'s authorization).
    pub(super) fn forwarded(&self) -> &HeaderMap {
        &self.headers
    }
}

/// Headers that say what and where the client is, not who: left out of a session's binding.
fn describes_the_client(name: &HeaderName) -> bool {
    [
        header::HOST,
        header::USER_AGENT,
        header::FORWARDED,
        HeaderName::from_static("x-forwarded-for"),
        HeaderName::from_static("x-real-ip"),
    ]
    .contains(name)
}

pub struct SessionAuth {
    upstream: Upstream,
    path: PathAndQuery,
    /// Every header the key covers, in a fixed order; `forwarded` says which are sent on.
    read: Vec<HeaderName>,
    forwarded: Vec<bool>,
    max_credential_bytes: usize,
    pointer: String,
    rooms_pointer: String,
    info_pointer: String,
    rooms: RoomRules,
    timeout: Duration,
    cache: Cache<CredentialKey, Answer>,
    /// How long the cache may hold a session (`auth.cache_ttl_ms`; none held when
    /// `auth.cache_max_entries` is 0): an [`Admitted`] session is reused no longer.
    reuse_for: Duration,
    permits: Semaphore,
    waiting: AtomicUsize,
    max_waiting: usize,
    kicks: Kicks,
    metrics: Arc<Metrics>,
}

struct VerdictExpiry {
    positive: Duration,
    negative: Duration,
}

impl Expiry<CredentialKey, Answer> for VerdictExpiry {
    fn expire_after_create(
        &self,
        _: &CredentialKey,
        answer: &Answer,
        _: Instant,
    ) -> Option<Duration> {
        Some(match answer.verdict {
            Verdict::User(_) => self.positive,
            Verdict::Rejected => self.negative,
        })
    }
}

/// One look-up waiting for a place under `auth.max_concurrent`.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize, max: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(count))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SessionAuth {
    /// `rooms` judges the room names the session route returns.
    pub fn new(
        config: &AuthConfig,
        rooms: RoomRules,
        upstream: Upstream,
        metrics: Arc<Metrics>,
    ) -> Self {
        let cache = Cache::builder()
            .max_capacity(config.cache_max_entries)
            .expire_after(VerdictExpiry {
                positive: ms(config.cache_ttl_ms),
                negative: ms(config.negative_ttl_ms),
            })
            .build();
        let mut forward: Vec<HeaderName> = config
            .forward_headers
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        // The app sees the host the browser used, as it does for its pages.
        forward.push(header::HOST);
        let mut read = forward.clone();
        read.extend([header::COOKIE, header::AUTHORIZATION]);
        read.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        read.dedup();
        let forwarded = read.iter().map(|name| forward.contains(name)).collect();
        Self {
            upstream,
            path: config
                .session_path
                .parse()
                .unwrap_or_else(|_| PathAndQuery::from_static("/api/session")),
            read,
            forwarded,
            max_credential_bytes: config.max_credential_bytes,
            pointer: config.user_id_pointer.clone(),
            rooms_pointer: config.rooms_pointer.clone(),
            info_pointer: config.user_info_pointer.clone(),
            rooms,
            timeout: ms(config.timeout_ms),
            cache,
            reuse_for: if config.cache_max_entries == 0 {
                Duration::ZERO
            } else {
                ms(config.cache_ttl_ms)
            },
            permits: Semaphore::new(config.max_concurrent),
            waiting: AtomicUsize::new(0),
            max_waiting: config.max_waiting,
            kicks: Kicks::new(
                ms(config.cache_ttl_ms) + ms(config.timeout_ms) + Duration::from_secs(1),
            ),
            metrics,
        }
    }

    /// The request headers [`Self::credentials`] reads.
    pub fn read_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.read.iter()
    }

    /// The credentials in a request: the headers forwarded to the session route, and a key
    /// over every header read (`Cookie` lines — HTTP/2 crumbs included — joined with "; " as
    /// RFC 9113 §8.2.3 says, so the app and the key see the same cookie). Refused without
    /// asking the app when there is neither a cookie nor `Authorization`, or when they are
    /// over `auth.max_credential_bytes`.
    pub fn credentials(&self, request_headers: &HeaderMap) -> Result<Credentials, CredentialError> {
        if !request_headers.contains_key(header::COOKIE)
            && !request_headers.contains_key(header::AUTHORIZATION)
        {
            return Err(CredentialError::Missing);
        }
        let bytes: usize = self
            .read
            .iter()
            .flat_map(|name| request_headers.get_all(name))
            .map(|value| value.len())
            .sum();
        if bytes > self.max_credential_bytes {
            return Err(CredentialError::TooLarge {
                bytes,
                max: self.max_credential_bytes,
            });
        }
        let mut digest = Sha256::new();
        let mut secret = Sha256::new();
        let mut headers = HeaderMap::new();
        for (name, forwarded) in self.read.iter().zip(&self.forwarded) {
            let values = canonical_values(name, request_headers);
            let is_secret = !describes_the_client(name);
            // Length-prefixed, so no two different header sets hash the same bytes.
            let mut update = |bytes: &[u8]| {
                digest.update(bytes);
                if is_secret {
                    secret.update(bytes);
                }
            };
            update(&(name.as_str().len() as u64).to_be_bytes());
            update(name.as_str().as_bytes());
            update(&(values.len() as u64).to_be_bytes());
            for value in &values {
                update(&(value.len() as u64).to_be_bytes());
                update(value.as_bytes());
            }
            if *forwarded {
                for value in values {
                    headers.append(name.clone(), value);
                }
            }
        }
        Ok(Credentials {
            key: digest.finalize().into(),
            secret: secret.finalize().into(),
            headers,
        })
    }

    /// The session for these credentials, from the cache or from one session-route call.
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<Session, AuthError> {
        self.check(credentials)
            .await
            .map(|admitted| admitted.session)
    }

    /// [`Self::authenticate`], keeping when the answer was given, for [`Self::reuse`].
    pub(super) async fn check(&self, credentials: &Credentials) -> Result<Admitted, AuthError> {
        for _ in 0..STALE_RETRIES {
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
            let Answer {
                verdict,
                asked_at,
                answered_at,
            } = entry.into_value();
            let session = match verdict {
                Verdict::User(session) => session,
                Verdict::Rejected => return Err(AuthError::Unauthorized),
            };
            if self.still_trusted(&session.user_id, asked_at).await? {
                return Ok(Admitted {
                    session,
                    asked_at,
                    answered_at,
                });
            }
            // Given before the user was kicked: not trusted, the app is asked again.
            self.cache.invalidate(&credentials.key).await;
        }
        Err(AuthError::Unavailable(
            "the user was kicked during every session check".into(),
        ))
    }

    /// The session a handshake was let in on, for its Socket.IO CONNECT, trusted exactly as
    /// the cache would trust it: `None` — look the credentials up again — once the cache
    /// would no longer hold that answer, or when its user was kicked since it was asked.
    pub(super) async fn reuse(&self, admitted: Admitted) -> Option<Result<Session, AuthError>> {
        if admitted.answered_at.elapsed() >= self.reuse_for {
            return None;
        }
        match self
            .still_trusted(&admitted.session.user_id, admitted.asked_at)
            .await
        {
            Ok(true) => Some(Ok(admitted.session)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Whether an answer about `user_id` asked at `asked_at` may still be trusted: not once
    /// the user was kicked after it. Fails closed when that cannot be known.
    async fn still_trusted(&self, user_id: &str, asked_at: Stamp) -> Result<bool, AuthError> {
        match self.kicks.kicked_since(user_id, asked_at).await {
            Ok(kicked) => Ok(!kicked),
            Err(reason) => {
                tracing::warn!("socket refused: {reason}");
                self.metrics.session_lookup(Lookup::Error);
                Err(AuthError::Unavailable(reason))
            }
        }
    }

    /// Forgets every session of `user_id` (a kick: logout, ban): cached answers and answers
    /// still on their way are not trusted any more, so the next socket of that user is let in
    /// only on a fresh answer from the app — on every instance, once [`Self::share_kicks`]
    /// was called. Returns why the kick could not be shared with the other instances.
    pub async fn forget_user(&self, user_id: &str) -> Result<(), String> {
        self.kicks.kick(user_id).await
    }

    /// Cluster mode: kicks are written to and read from Redis through `client` while `link`
    /// is up, each command bounded by `timeout`.
    pub fn share_kicks(
        &self,
        client: fred::clients::Client,
        link: crate::cluster::Link,
        timeout: Duration,
    ) {
        self.kicks.share_through(client, link, timeout);
    }

    /// Runs one call to the app (`what` names it in errors) under the session check's bounds:
    /// a place under `auth.max_concurrent` (at most `auth.max_waiting` wait for one), and
    /// `auth.timeout_ms` for the wait and the call together; `call` gets the time left.
    /// Returns the result and how long the call itself took.
    pub(super) async fn bounded<T, F, Fut>(
        &self,
        what: &str,
        call: F,
    ) -> (Result<T, String>, Option<Duration>)
    where
        F: FnOnce(Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let started = Instant::now();
        let permit = {
            let Some(_waiting) = Waiting::enter(&self.waiting, self.max_waiting) else {
                let reason = format!(
                    "{} calls already wait for the app (auth.max_waiting)",
                    self.max_waiting
                );
                return (Err(reason), None);
            };
            match tokio::time::timeout(self.timeout, self.permits.acquire()).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return (Err("calls to the app are shut down".into()), None),
                Err(_) => {
                    let reason = format!(
                        "no {what} call could start within {:?} (auth.max_concurrent calls busy)",
                        self.timeout
                    );
                    return (Err(reason), None);
                }
            }
        };
        let remaining = self.timeout.saturating_sub(started.elapsed());
        let called = Instant::now();
        let result = tokio::time::timeout(remaining, call(remaining))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "{what} did not answer within {:?} (auth.timeout_ms, slot wait included)",
                    self.timeout
                ))
            });
        drop(permit);
        (result, Some(called.elapsed()))
    }

    /// The app this checks sessions with.
    pub(super) fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    async fn ask_app(&self, headers: &HeaderMap) -> Result<Answer, String> {
        let (result, took) = self
            .bounded("session route", |remaining| async move {
                let asked_at = self.kicks.stamp();
                let verdict = self.call_session_route(headers, remaining).await?;
                Ok(Answer {
                    verdict,
                    asked_at,
                    answered_at: Instant::now(),
                })
            })
            .await;
        if let Some(took) = took {
            self.metrics.session_call(took);
        }
        match result {
            Ok(answer) => Ok(answer),
            Err(reason) => {
                tracing::warn!(path = %self.path, "session route failed, socket refused: {reason}");
                Err(reason)
            }
        }
    }

    async fn call_session_route(
        &self,
        headers: &HeaderMap,
        timeout: Duration,
    ) -> Result<Verdict, String> {
        let mut req = Request::new(Either::Right(Full::default()));
        *req.method_mut() = Method::GET;
        *req.uri_mut() = self.upstream.uri(Some(&self.path));
        *req.headers_mut() = headers.clone();
        req.headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let resp = self
            .upstream
            .send(req, Some(timeout))
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Ok(Verdict::Rejected);
        }
        if !status.is_success() {
            return Err(format!("session route answered {status}"));
        }
        let body = Limited::new(resp.into_body(), MAX_SESSION_BODY)
            .collect()
            .await
            .map_err(|e| format!("session route body: {e}"))?
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("session route answered {status} without JSON: {e}"))?;
        Ok(match user_id_at(&json, &self.pointer) {
            Some(id) => Verdict::User(Session {
                rooms: self.rooms.of_session(&id, at(&json, &self.rooms_pointer)),
                info: user_info(&id, at(&json, &self.info_pointer)),
                user_id: id.into(),
            }),
            // A 2xx without a user (e.g. `{"userId": null}`) is the app's way to say "nobody".
            None => Verdict::Rejected,
        })
    }
}

/// A header's values as the session route gets them: `Cookie` lines (or HTTP/2 crumbs)
/// joined into one, every other header line as it came.
fn canonical_values(name: &HeaderName, headers: &HeaderMap) -> Vec<HeaderValue> {
    let values: Vec<HeaderValue> = headers.get_all(name).iter().cloned().collect();
    if name != header::COOKIE || values.len() < 2 {
        return values;
    }
    let joined = values
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    match HeaderValue::from_bytes(&joined) {
        Ok(one) => vec![one],
        // Cannot happen (valid values joined by "; " stay valid); if it did, every line is
        // still keyed and forwarded.
        Err(_) => values,
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

/// The value at `pointer` (none for an empty pointer).
fn at<'a>(json: &'a serde_json::Value, pointer: &str) -> Option<&'a serde_json::Value> {
    Some(pointer)
        .filter(|p| !p.is_empty())
        .and_then(|p| json.pointer(p))
}

/// The user info presence shows, serialized once: absent or `null` is none, and so is one
/// over [`MAX_USER_INFO_BYTES`] (logged: the app should send less).
fn user_info(user_id: &str, value: Option<&serde_json::Value>) -> Option<Arc<str>> {
    let value = value.filter(|v| !v.is_null())?;
    let text = value.to_string();
    if text.len() > MAX_USER_INFO_BYTES {
        tracing::warn!(user = %user_id, bytes = text.len(), max = MAX_USER_INFO_BYTES, "session route's user info is too large for presence: left out");
        return None;
    }
    Some(text.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn auth() -> SessionAuth {
        auth_with(AuthConfig {
            max_credential_bytes: 1024,
            ..AuthConfig::default()
        })
    }

    fn auth_with(config: AuthConfig) -> SessionAuth {
        let upstream = Upstream::new(
            &crate::config::UpstreamConfig::default(),
            http::uri::Authority::from_static("127.0.0.1:9"),
        );
        SessionAuth::new(
            &config,
            RoomRules::new(&crate::config::Config::default()),
            upstream,
            Arc::new(Metrics::new()),
        )
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn key(auth: &SessionAuth, pairs: &[(&str, &str)]) -> CredentialKey {
        *auth.credentials(&headers(pairs)).unwrap().key()
    }

    #[test]
    fn the_key_covers_every_cookie_line_not_just_the_first() {
        let auth = auth();
        let both = key(&auth, &[("cookie", "lang=en"), ("cookie", "sid=alice")]);
        let first = key(&auth, &[("cookie", "lang=en")]);
        assert_ne!(both, first);
        // HTTP/2 crumbs and one joined line are the same bytes for the app, so the same key.
        assert_eq!(both, key(&auth, &[("cookie", "lang=en; sid=alice")]));
        let forwarded = auth
            .credentials(&headers(&[("cookie", "lang=en"), ("cookie", "sid=alice")]))
            .unwrap()
            .headers;
        let cookies: Vec<_> = forwarded.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["lang=en; sid=alice"]);
    }

    #[test]
    fn the_key_covers_every_forwarded_header_and_authorization() {
        let auth = auth();
        let base = [("cookie", "sid=a"), ("host", "a.test"), ("user-agent", "x")];
        let k = key(&auth, &base);
        for changed in [
            [("cookie", "sid=a"), ("host", "b.test"), ("user-agent", "x")],
            [("cookie", "sid=a"), ("host", "a.test"), ("user-agent", "y")],
            [
                ("cookie", "sid=a"),
                ("host", "a.test"),
                ("x-forwarded-for", "1.2.3.4"),
            ],
            [
                ("cookie", "sid=a"),
                ("host", "a.test"),
                ("authorization", "Bearer t"),
            ],
        ] {
            assert_ne!(k, key(&auth, &changed), "{changed:?}");
        }
        // The secret covers what identifies the user (cookie, Authorization, the app's own
        // headers), not what describes the client.
        let secret = |pairs: &[(&str, &str)]| *auth.credentials(&headers(pairs)).unwrap().secret();
        assert_eq!(
            secret(&base),
            secret(&[("cookie", "sid=a"), ("user-agent", "z")])
        );
        assert_ne!(secret(&base), secret(&[("cookie", "sid=b")]));
        assert_ne!(
            secret(&base),
            secret(&[("cookie", "sid=a"), ("authorization", "Bearer t")])
        );
        // A header of the app's own is a credential too.
        let config = AuthConfig {
            forward_headers: vec!["cookie".into(), "x-tenant".into()],
            ..AuthConfig::default()
        };
        let upstream = Upstream::new(
            &crate::config::UpstreamConfig::default(),
            http::uri::Authority::from_static("127.0.0.1:9"),
        );
        let tenant = SessionAuth::new(
            &config,
            RoomRules::new(&crate::config::Config::default()),
            upstream,
            Arc::new(Metrics::new()),
        );
        let secret_of =
            |pairs: &[(&str, &str)]| *tenant.credentials(&headers(pairs)).unwrap().secret();
        assert_ne!(
            secret_of(&[("cookie", "sid=a"), ("x-tenant", "a")]),
            secret_of(&[("cookie", "sid=a"), ("x-tenant", "b")])
        );
        // A header nobody reads does not change the key.
        let mut unread = base.to_vec();
        unread.push(("accept-language", "fr"));
        assert_eq!(k, key(&auth, &unread));
        // Length prefixes: moving bytes between values changes the key.
        assert_ne!(
            key(&auth, &[("cookie", "a"), ("user-agent", "bc")]),
            key(&auth, &[("cookie", "ab"), ("user-agent", "c")])
        );
    }

    #[test]
    fn credentials_are_required_and_bounded() {
        let auth = auth();
        assert_eq!(
            auth.credentials(&headers(&[("host", "a.test")]))
                .unwrap_err(),
            CredentialError::Missing
        );
        assert!(
            auth.credentials(&headers(&[("authorization", "Bearer t")]))
                .is_ok()
        );
        let big = "x".repeat(1025);
        assert!(matches!(
            auth.credentials(&headers(&[("cookie", &big)])).unwrap_err(),
            CredentialError::TooLarge {
                bytes: 1025,
                max: 1024
            }
        ));
    }

    #[tokio::test]
    async fn a_handshake_session_is_reused_only_while_the_cache_would_trust_it() {
        let auth = auth();
        let session = Session {
            user_id: "alice".into(),
            rooms: Arc::new([]),
            info: None,
        };
        let admitted = |auth: &SessionAuth| Admitted {
            session: session.clone(),
            asked_at: auth.kicks.stamp(),
            answered_at: Instant::now(),
        };
        assert_eq!(auth.reuse(admitted(&auth)).await, Some(Ok(session.clone())));
        // Asked before a kick: looked up again.
        let before = admitted(&auth);
        auth.forget_user("alice").await.unwrap();
        assert_eq!(auth.reuse(before).await, None);
        assert!(auth.reuse(admitted(&auth)).await.is_some());
        // Older than auth.cache_ttl_ms: the cache would have let it go.
        let old = Admitted {
            answered_at: Instant::now()
                .checked_sub(auth.reuse_for + Duration::from_millis(1))
                .unwrap(),
            ..admitted(&auth)
        };
        assert_eq!(auth.reuse(old).await, None);
        // No cache: every CONNECT asks the app, as before.
        let uncached = auth_with(AuthConfig {
            cache_max_entries: 0,
            ..AuthConfig::default()
        });
        assert_eq!(uncached.reuse(admitted(&uncached)).await, None);
    }

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
