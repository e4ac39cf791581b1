//! Socket authentication through the app's own session route.
//!
//! A handshake's credentials (`credentials`) are sent to the app's session route
//! (`session_route`), which says who the user is. Answers are cached under the credentials'
//! key (positive and negative TTLs, bounded size); concurrent look-ups of the same
//! credentials wait for one call; calls in flight are capped, and so are the look-ups waiting
//! for a place, so a deploy that reconnects every browser at once does not stampede the app
//! and nobody waits longer than `auth.timeout_ms`. A kick ([`SessionAuth::forget_user`])
//! makes every earlier answer about that user untrusted (`kicks`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderName};
use moka::Expiry;
use moka::future::Cache;
use tokio::sync::Semaphore;

use super::credentials::{CredentialError, CredentialKey, CredentialReader, Credentials};
use super::kicks::{Kicks, Stamp};
use super::rooms::RoomRules;
use super::session_route::{SessionRoute, Verdict};
use crate::config::AuthConfig;
use crate::metrics::{Lookup, Metrics};
use crate::upstream::Upstream;

/// What the session check answers with, named here by the code that asks it.
pub use super::session_route::Session;

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

pub struct SessionAuth {
    reader: CredentialReader,
    route: SessionRoute,
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
                positive: config.cache_ttl,
                negative: config.negative_ttl,
            })
            .build();
        Self {
            reader: CredentialReader::new(config),
            route: SessionRoute::new(config, rooms, upstream),
            timeout: config.timeout,
            cache,
            reuse_for: if config.cache_max_entries == 0 {
                Duration::ZERO
            } else {
                config.cache_ttl
            },
            permits: Semaphore::new(config.max_concurrent),
            waiting: AtomicUsize::new(0),
            max_waiting: config.max_waiting,
            kicks: Kicks::new(config.cache_ttl + config.timeout + Duration::from_secs(1)),
            metrics,
        }
    }

    /// The request headers [`Self::credentials`] reads.
    pub fn read_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.reader.read_headers()
    }

    /// The credentials in a request, or why they are refused without asking the app
    /// ([`CredentialReader::credentials`]).
    pub fn credentials(&self, request_headers: &HeaderMap) -> Result<Credentials, CredentialError> {
        self.reader.credentials(request_headers)
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
            let cached = self.cache.contains_key(credentials.key());
            let entry = self
                .cache
                .entry(*credentials.key())
                .or_try_insert_with(self.ask_app(credentials.forwarded()))
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
            self.cache.invalidate(credentials.key()).await;
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
        self.route.upstream()
    }

    async fn ask_app(&self, headers: &HeaderMap) -> Result<Answer, String> {
        let (result, took) = self
            .bounded("session route", |remaining| async move {
                let asked_at = self.kicks.stamp();
                let verdict = self.route.call(headers, remaining).await?;
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
                tracing::warn!(path = %self.route.path(), "session route failed, socket refused: {reason}");
                Err(reason)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
