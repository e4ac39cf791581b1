//! The call to the app's session route, and what its answer says.
//!
//! One `GET` of `auth.session_path` with the handshake's forwarded headers; `401`/`403` (or a
//! 2xx without a user) is the app's "no", any other failure is no answer at all. The user id
//! is read at `auth.user_id_pointer`, the rooms the user belongs to at `auth.rooms_pointer`,
//! and what presence shows of them at `auth.user_info_pointer`.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};

use super::rooms::RoomRules;
use crate::config::AuthConfig;
use crate::upstream::Upstream;

/// Largest session-route answer read; a session object is small.
const MAX_SESSION_BODY: usize = 64 * 1024;

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
pub(super) enum Verdict {
    User(Session),
    Rejected,
}

/// The app's session route and where its answer keeps what sockgate reads.
pub(super) struct SessionRoute {
    upstream: Upstream,
    path: PathAndQuery,
    pointer: String,
    rooms_pointer: Option<String>,
    info_pointer: Option<String>,
    rooms: RoomRules,
}

impl SessionRoute {
    /// `rooms` judges the room names the session route returns.
    pub(super) fn new(config: &AuthConfig, rooms: RoomRules, upstream: Upstream) -> Self {
        Self {
            upstream,
            path: config.session_path.clone(),
            pointer: config.user_id_pointer.clone(),
            rooms_pointer: config.rooms_pointer.clone(),
            info_pointer: config.user_info_pointer.clone(),
            rooms,
        }
    }

    /// The route's path, as logs name it.
    pub(super) fn path(&self) -> &PathAndQuery {
        &self.path
    }

    /// The app this asks.
    pub(super) fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Asks the app about the session in `headers`, the call bounded by `timeout`.
    pub(super) async fn call(
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
                rooms: self
                    .rooms
                    .of_session(&id, at(&json, self.rooms_pointer.as_deref())),
                info: user_info(&id, at(&json, self.info_pointer.as_deref())),
                user_id: id.into(),
            }),
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

/// The value at `pointer` (none without a pointer).
fn at<'a>(json: &'a serde_json::Value, pointer: Option<&str>) -> Option<&'a serde_json::Value> {
    json.pointer(pointer?)
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
