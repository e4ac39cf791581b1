//! Who may open an Engine.IO session, and who may use an open one.
//!
//! A handshake must carry credentials (a cookie or `Authorization`, within
//! `auth.max_credential_bytes`) that the app's session route accepts (asked through the
//! session cache; the answer rides in the [`Ticket`] to the Socket.IO CONNECT that follows,
//! which reuses it while the cache would, unless the user was kicked since) before it gets
//! anything; then it takes one of `realtime.max_pending_connections` places until its
//! Socket.IO CONNECT passes the session check (or the session ends:
//! `realtime.connect_timeout_ms` closes one that never does). A made-up cookie thus gets
//! `401` and never a session, a place or a slot.
//! Every later request of a polling session — polls, posts, the WebSocket upgrade — must
//! present the same credentials (`Cookie`, `Authorization`, the app's own forwarded headers:
//! `Credentials::secret`) as its handshake: the Engine.IO `sid` alone is not a bearer token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::auth::{Admitted, AuthError, SessionAuth};
use super::credentials::{CredentialError, CredentialKey};
use crate::body::{self, Body};
use crate::metrics::Reject;

/// An Engine.IO open packet is a couple of hundred bytes; anything longer is not one.
const MAX_OPEN_PACKET: usize = 4096;

/// The gate in front of the Socket.IO endpoint. Cheap to share: one per process.
#[derive(Clone)]
pub struct Admission {
    auth: Arc<SessionAuth>,
    max_pending: usize,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    pending: AtomicUsize,
    /// Open polling sessions (by Engine.IO sid) and the secret of their handshake.
    bound: Mutex<HashMap<Box<str>, CredentialKey>>,
}

/// A request that is not let through, with what the client is told.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
    /// How the refusal is counted in `sockgate_rejected_total`.
    pub reason: Reject,
}

impl Refusal {
    /// The answer: the status and message, with `Retry-After` when it is worth retrying.
    pub fn response(&self) -> Response<Body> {
        let mut resp = body::text(self.status, &self.message);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}

/// A handshake's place among the pending sessions and its entry among the bound ones, and the
/// session it was let in on until its CONNECT takes it. It rides in the handshake request's
/// extensions, which the Engine.IO session keeps for its whole life, so the place and the
/// entry are given back when the session ends, however it ends.
#[derive(Clone)]
pub struct Ticket(Arc<TicketInner>);

struct TicketInner {
    key: CredentialKey,
    /// Boxed: once taken, a ticket keeps only a pointer's room for it.
    admitted: Mutex<Option<Box<Admitted>>>,
    pending: AtomicBool,
    sid: OnceLock<Box<str>>,
    shared: Arc<Shared>,
}

impl Ticket {
    /// The session the handshake was let in on, for the first CONNECT only: any later one
    /// looks its credentials up as before.
    pub fn take_admitted(&self) -> Option<Admitted> {
        self.0
            .admitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .map(|admitted| *admitted)
    }

    /// The session passed its Socket.IO CONNECT: it no longer counts as pending.
    pub fn connected(&self) {
        if self.0.pending.swap(false, Ordering::AcqRel) {
            self.0.shared.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Binds the session a polling handshake opened to the handshake's credentials; the
    /// response goes on unchanged. Other handshakes (WebSocket, refused) have no later
    /// requests to check.
    pub async fn bind(self, resp: Response<Body>) -> Response<Body> {
        if resp.status() != StatusCode::OK {
            return resp;
        }
        let (parts, body) = resp.into_parts();
        let bytes = match read_open_packet(body).await {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!("Socket.IO handshake answer unreadable, session not bound: {e}");
                return body::text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the realtime session could not be opened",
                );
            }
        };
        if let Some(sid) = open_packet_sid(&bytes) {
            let sid: Box<str> = sid.into();
            self.0
                .shared
                .bound
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(sid.clone(), self.0.key);
            // If the session already ended, dropping `self` below removes the entry again.
            let _ = self.0.sid.set(sid);
        }
        drop(self);
        Response::from_parts(parts, body::full(bytes))
    }
}

impl Drop for TicketInner {
    fn drop(&mut self) {
        if *self.pending.get_mut() {
            self.shared.pending.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(sid) = self.sid.get() {
            self.shared
                .bound
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(sid);
        }
    }
}

impl Admission {
    pub fn new(auth: Arc<SessionAuth>, max_pending: usize) -> Self {
        Self {
            auth,
            max_pending,
            shared: Arc::default(),
        }
    }

    /// Lets a handshake in, or says why not: no credentials (401), credentials too large
    /// (431), credentials the session route refuses (401), the session route cannot say
    /// (503, within `auth.timeout_ms`), too many sessions pending (503). Nothing is allocated
    /// for a refused one, and it never takes a pending place.
    pub async fn admit(&self, headers: &HeaderMap) -> Result<Ticket, Refusal> {
        let credentials = self.auth.credentials(headers).map_err(|e| Refusal {
            status: match e {
                CredentialError::Missing => StatusCode::UNAUTHORIZED,
                CredentialError::TooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            },
            message: e.to_string(),
            reason: Reject::Unauthorized,
        })?;
        // Through the cache and its coalescing; the answer goes on to the CONNECT.
        let admitted = self.auth.check(&credentials).await.map_err(|e| match e {
            AuthError::Unauthorized => Refusal {
                status: StatusCode::UNAUTHORIZED,
                message: e.to_string(),
                reason: Reject::Unauthorized,
            },
            AuthError::Unavailable(_) => Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: e.to_string(),
                reason: Reject::SessionUnavailable,
            },
        })?;
        self.shared
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_pending).then_some(n + 1)
            })
            .map_err(|_| Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!(
                    "too many connections still connecting (realtime.max_pending_connections = {}); retry later",
                    self.max_pending
                ),
                reason: Reject::Capacity,
            })?;
        Ok(Ticket(Arc::new(TicketInner {
            key: *credentials.secret(),
            admitted: Mutex::new(Some(Box::new(admitted))),
            pending: AtomicBool::new(true),
            sid: OnceLock::new(),
            shared: self.shared.clone(),
        })))
    }

    /// Checks a request of an open session (it has a `sid`): it must carry the credentials
    /// its handshake carried. A sid no polling handshake bound — unknown, ended, or a
    /// WebSocket session's — goes on to Engine.IO, which answers it as the reference server
    /// does (1 "Session ID unknown", 3 "Bad request" for a transport the session is not on).
    pub fn check<B>(&self, req: &Request<B>) -> Result<(), Refusal> {
        let Some(sid) = query_sid(req.uri().query().unwrap_or_default()) else {
            return Ok(());
        };
        let bound = self
            .shared
            .bound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(sid)
            .copied();
        let Some(bound) = bound else {
            return Ok(());
        };
        let presented = self.auth.credentials(req.headers()).ok();
        if presented.is_some_and(|c| *c.secret() == bound) {
            return Ok(());
        }
        Err(Refusal {
            status: StatusCode::FORBIDDEN,
            message: "this realtime session belongs to other credentials (its handshake had \
                      another cookie or authorization)"
                .into(),
            reason: Reject::Unauthorized,
        })
    }
}

/// The body of a polling handshake's answer: one short open packet.
async fn read_open_packet(mut body: Body) -> Result<bytes::Bytes, String> {
    let mut bytes = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > MAX_OPEN_PACKET {
                return Err(format!("longer than {MAX_OPEN_PACKET} bytes"));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes.freeze())
}

/// The `sid` of an Engine.IO open packet (`0{"sid":"…",…}`).
fn open_packet_sid(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body).ok()?;
    let json = &text[text.find('{')?..];
    let start = json.find("\"sid\":\"")? + "\"sid\":\"".len();
    let len = json[start..].find('"')?;
    Some(&json[start..start + len]).filter(|sid| !sid.is_empty())
}

/// The sid a request is for: the first `sid=` pair, exactly as engineioxide's parser reads
/// it, so the session checked here is the session served.
fn query_sid(query: &str) -> Option<&str> {
    query.split('&').find_map(|pair| pair.strip_prefix("sid="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sid_of_an_open_packet() {
        let open =
            br#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000}"#;
        assert_eq!(open_packet_sid(open), Some("lv_VI97HAXpY6yYWAAAC"));
        assert_eq!(open_packet_sid(b"0{\"sid\":\"\"}"), None);
        assert_eq!(open_packet_sid(b"not an open packet"), None);
        assert_eq!(
            query_sid("EIO=4&transport=polling&sid=abc&t=1"),
            Some("abc")
        );
        assert_eq!(query_sid("EIO=4&transport=polling"), None);
        assert_eq!(query_sid("sid=first&sid=second"), Some("first"));
    }
}
