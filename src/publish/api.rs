//! The publish API's routes: parse, validate, hand to the hub, answer JSON.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::message::{batch_from_json, parse_batch, parse_publish, publish_from_json};
use crate::body::{self, Body};
use crate::metrics::Metrics;
use crate::ops::Ops;
use crate::realtime::{Hub, HubError, Refusal, SessionAuth};

#[derive(Clone)]
pub struct PublishApi {
    hub: Arc<Hub>,
    ops: Ops,
    /// Told about kicks, so a kicked user's cached session is not reused.
    auth: Arc<SessionAuth>,
    max_body_bytes: usize,
    max_batch: usize,
    /// Time a request's body may take to arrive (`publish.body_timeout_ms`).
    body_timeout: Duration,
    metrics: Arc<Metrics>,
    /// `Authorization: Bearer <token>` every request must carry (the TCP listener's).
    token: Option<Arc<str>>,
}

/// `GET /users/{id}`: the user's presence, with what it covers.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct UserAnswer<'a> {
    user_id: &'a str,
    online: bool,
    #[serde(flatten)]
    presence: &'a crate::realtime::Presence,
}

/// An answer that is not a success, with its status.
struct Failure(StatusCode, String);

impl Failure {
    fn bad_request(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }
}

/// What a request is answered with when it did not fail.
enum Answer {
    Done(Value),
    /// A publish refused: an instance is too far behind.
    Busy(Refusal),
}

/// What `Retry-After` says to a publish refused because an instance is behind: about the time
/// an instance within the bound takes to report it caught up (every 200 ms), with room.
const RETRY_AFTER_SECS: u64 = 1;

/// A publish refused while an instance is more than `cluster.max_lag` relayed messages behind
/// (see `realtime`'s backpressure): `503` + `Retry-After`, and a body saying why. Nothing of it
/// was kept or delivered.
fn busy(refusal: Refusal) -> Response<Body> {
    let mut resp = body::json(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({
            "ok": false,
            "error": format!(
                "an instance is {} relayed messages behind, more than cluster.max_lag ({}): nothing was published, retry after {RETRY_AFTER_SECS} s",
                refusal.lag, refusal.max_lag
            ),
            "lag": refusal.lag,
            "maxLag": refusal.max_lag,
            "retryAfter": RETRY_AFTER_SECS,
        }),
    );
    resp.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from(RETRY_AFTER_SECS),
    );
    resp
}

impl PublishApi {
    pub fn new(
        hub: Arc<Hub>,
        ops: Ops,
        auth: Arc<SessionAuth>,
        max_body_bytes: usize,
        max_batch: usize,
        body_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            hub,
            ops,
            auth,
            max_body_bytes,
            max_batch,
            body_timeout,
            metrics,
            token: None,
        }
    }

    /// The same API, answering only requests that carry `token`.
    pub fn requiring_token(&self, token: &str) -> Self {
        Self {
            token: Some(token.into()),
            ..self.clone()
        }
    }

    fn authorized<B>(&self, req: &Request<B>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        constant_time_eq(given, token.as_bytes())
    }

    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Unpin,
        B::Error: Into<crate::body::BoxError>,
    {
        if !self.authorized(&req) {
            let mut resp = body::json(
                StatusCode::UNAUTHORIZED,
                &json!({"ok": false, "error": "missing or wrong bearer token (publish.token)"}),
            );
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return resp;
        }
        if let Some(resp) = self.ops.handle(req.method(), req.uri().path()).await {
            return resp;
        }
        match self.route(req).await {
            Ok(Answer::Done(value)) => body::json(StatusCode::OK, &value),
            Ok(Answer::Busy(refusal)) => busy(refusal),
            Err(Failure(status, error)) => {
                tracing::debug!(%status, "publish API refused a request: {error}");
                let mut resp = body::json(status, &json!({"ok": false, "error": error}));
                if status == StatusCode::REQUEST_TIMEOUT {
                    // The rest of the body may still be on its way: the connection cannot
                    // carry another request.
                    resp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                resp
            }
        }
    }

    async fn route<B>(&self, req: Request<B>) -> Result<Answer, Failure>
    where
        B: http_body::Body<Data = bytes::Bytes> + Unpin,
        B::Error: Into<crate::body::BoxError>,
    {
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = req.method().clone();
        let allow = |allowed: &Method| -> Result<(), Failure> {
            if method == allowed {
                Ok(())
            } else {
                Err(Failure(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{method} {path} is not allowed; use {allowed}"),
                ))
            }
        };
        let done = match segments.as_slice() {
            ["publish"] => {
                allow(&Method::POST)?;
                return self.publish(&self.read_body(req).await?).await;
            }
            ["publish", "batch"] => {
                allow(&Method::POST)?;
                return self.publish_batch(&self.read_body(req).await?).await;
            }
            ["users", id, "disconnect"] => {
                allow(&Method::POST)?;
                self.disconnect_user(decoded(id, "user id")?).await
            }
            ["users", id] => {
                allow(&Method::GET)?;
                self.user(decoded(id, "user id")?).await
            }
            ["rooms", room] => {
                allow(&Method::GET)?;
                let room = decoded(room, "room")?;
                let info = self.hub.room(&room).await;
                serde_json::to_value(info).map_err(|e| internal(e.to_string()))
            }
            ["stats"] => {
                allow(&Method::GET)?;
                let stats = self.hub.stats().await;
                serde_json::to_value(stats).map_err(|e| internal(e.to_string()))
            }
            ["health"] => {
                allow(&Method::GET)?;
                Ok(json!({"ok": true}))
            }
            _ => Err(Failure(
                StatusCode::NOT_FOUND,
                format!(
                    "no route {path}; routes: POST /publish, POST /publish/batch, \
                     POST /users/{{id}}/disconnect, GET /users/{{id}}, GET /rooms/{{room}}, GET /stats, GET /health, \
                     GET /metrics, GET /livez, GET /readyz"
                ),
            )),
        };
        done.map(Answer::Done)
    }

    /// `POST /publish`: one message.
    async fn publish(&self, body: &[u8]) -> Result<Answer, Failure> {
        let msg = match publish_from_json(body) {
            Some(msg) => msg,
            None => parse_publish(&json_value(body)?, "")
                .map_err(|e| Failure::bad_request(e.to_string()))?,
        };
        if let Some(refusal) = self.hub.refusal() {
            return Ok(Answer::Busy(refusal));
        }
        let recipients = self
            .hub
            .publish(&msg.target, &msg.event, &msg.data)
            .await
            .map_err(hub_failure)?;
        Ok(Answer::Done(json!({"ok": true, "recipients": recipients})))
    }

    /// `POST /publish/batch`: up to `publish.max_batch` messages, in order.
    async fn publish_batch(&self, body: &[u8]) -> Result<Answer, Failure> {
        let messages = match batch_from_json(body, self.max_batch) {
            Some(messages) => messages,
            None => parse_batch(&json_value(body)?, self.max_batch)
                .map_err(|e| Failure::bad_request(e.to_string()))?,
        };
        if let Some(refusal) = self.hub.refusal() {
            return Ok(Answer::Busy(refusal));
        }
        let batch: Vec<_> = messages
            .iter()
            .map(|m| (&m.target, m.event.as_str(), &m.data))
            .collect();
        let recipients = self.hub.publish_batch(&batch).await.map_err(hub_failure)?;
        Ok(Answer::Done(
            json!({"ok": true, "messages": messages.len(), "recipients": recipients}),
        ))
    }

    /// `POST /users/{id}/disconnect`: the user's sessions forgotten, their sockets dropped.
    async fn disconnect_user(&self, id: String) -> Result<Value, Failure> {
        // Forgotten first: a socket reconnecting as soon as it is dropped must find no cached
        // session to come back on.
        if let Err(reason) = self.auth.forget_user(&id).await {
            tracing::warn!(user = %id, "kick not shared with the other instances: {reason}");
        }
        let disconnected = self.hub.disconnect_user(&id).await.map_err(hub_failure)?;
        Ok(json!({"ok": true, "userId": id, "disconnected": disconnected}))
    }

    /// `GET /users/{id}`: whether the user is online, and where.
    async fn user(&self, id: String) -> Result<Value, Failure> {
        let presence = self.hub.presence(&id).await;
        let answer = UserAnswer {
            user_id: &id,
            online: presence.sockets > 0,
            presence: &presence,
        };
        serde_json::to_value(answer).map_err(|e| internal(e.to_string()))
    }

    /// The request's body, within `publish.max_body_bytes` and `publish.body_timeout_ms`.
    async fn read_body<B>(&self, req: Request<B>) -> Result<bytes::BytesMut, Failure>
    where
        B: http_body::Body<Data = bytes::Bytes> + Unpin,
        B::Error: Into<crate::body::BoxError>,
    {
        let too_large = || {
            Failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "body is larger than {} bytes (publish.max_body_bytes)",
                    self.max_body_bytes
                ),
            )
        };
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut body = req.into_body();
        if declared.is_some_and(|len| len > self.max_body_bytes as u64) {
            discard(body).await;
            return Err(too_large());
        }
        let mut bytes = bytes::BytesMut::new();
        let read = async {
            while let Some(frame) = body.frame().await {
                let frame = frame
                    .map_err(|e| Failure::bad_request(format!("cannot read body: {}", e.into())))?;
                if let Ok(data) = frame.into_data() {
                    if bytes.len() + data.len() > self.max_body_bytes {
                        return Err(too_large());
                    }
                    bytes.extend_from_slice(&data);
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.body_timeout, read).await {
            Ok(Ok(())) => {}
            Ok(Err(failure)) => {
                if failure.0 == StatusCode::PAYLOAD_TOO_LARGE {
                    discard(body).await;
                }
                return Err(failure);
            }
            Err(_) => {
                // Counted, and logged like any refused request (DEBUG): a stuck client
                // retrying writes no line per attempt.
                self.metrics.publish_body_timeout();
                return Err(Failure(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the body did not arrive within {} ms (publish.body_timeout_ms)",
                        self.body_timeout.as_millis()
                    ),
                ));
            }
        }
        if bytes.is_empty() {
            return Err(Failure::bad_request("empty body: expected a JSON object"));
        }
        Ok(bytes)
    }
}

/// The body as a JSON value, or a 400 that says where it is not JSON.
fn json_value(body: &[u8]) -> Result<Value, Failure> {
    serde_json::from_slice(body)
        .map_err(|e| Failure::bad_request(format!("body is not valid JSON: {e}")))
}

/// Compares without an early exit, so response timing says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads what is left of a refused body (bounded in size and time) so the client, still
/// sending, gets the 413 instead of a broken pipe.
async fn discard<B: http_body::Body + Unpin>(mut body: B) {
    const MAX_DISCARD: usize = 16 * 1024 * 1024;
    let drain = async {
        let mut seen = 0;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                seen += bytes::Buf::remaining(&data);
                if seen > MAX_DISCARD {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
}

/// A path segment naming `what` ("user id", "room"), percent-decoded.
fn decoded(segment: &str, what: &str) -> Result<String, Failure> {
    let value = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| Failure::bad_request(format!("{what} in the path is not UTF-8")))?;
    if value.is_empty() {
        return Err(Failure::bad_request(format!("{what} in the path is empty")));
    }
    Ok(value.into_owned())
}

/// A publish or kick refused because the hub is draining is the service's state (`503`), not
/// an internal error.
fn hub_failure(error: HubError) -> Failure {
    match error {
        HubError::Draining => Failure(StatusCode::SERVICE_UNAVAILABLE, error.to_string()),
        HubError::Serialize(_) | HubError::Adapter(_) => internal(error.to_string()),
    }
}

fn internal(error: String) -> Failure {
    tracing::error!("publish failed: {error}");
    Failure(StatusCode::INTERNAL_SERVER_ERROR, error)
}
