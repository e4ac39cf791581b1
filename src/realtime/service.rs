//! The Socket.IO service as the router sees it ([`RealtimeService`]): one body type whatever
//! the adapter, a 404 for anything the router did not match, and how a handshake request is
//! prepared ([`Handshake`]) before Engine.IO keeps it for the session's life.

use std::convert::Infallible;
use std::sync::Arc;

use socketioxide::adapter::Adapter;
use socketioxide::service::SocketIoService;
use tower::ServiceExt;
use tower::util::{BoxCloneSyncService, service_fn};

use crate::body::{self, Body};
use crate::metrics::Metrics;
use crate::upload::Upload;

/// The Socket.IO endpoint as the router sees it: any adapter, one body type.
/// Request bodies reach Engine.IO through [`Upload`]: a polling POST must keep up the same
/// minimum data rate as a proxied upload.
pub type RealtimeService =
    BoxCloneSyncService<http::Request<Upload>, http::Response<Body>, Infallible>;

pub(super) type NotFound = BoxCloneSyncService<
    http::Request<Upload>,
    http::Response<http_body_util::Empty<bytes::Bytes>>,
    Infallible,
>;

/// Socket.IO only sees requests the router already matched; anything else is a 404.
pub(super) fn not_found() -> NotFound {
    BoxCloneSyncService::new(service_fn(|_req| async {
        let mut resp = http::Response::new(http_body_util::Empty::new());
        *resp.status_mut() = http::StatusCode::NOT_FOUND;
        Ok::<_, Infallible>(resp)
    }))
}

pub(super) fn erase<A: Adapter>(
    svc: SocketIoService<NotFound, A>,
    kept: Handshake,
) -> RealtimeService {
    let svc = ServiceExt::<http::Request<Upload>>::map_response(svc, body::boxed_response)
        .map_request(move |req| kept.prepare(req));
    BoxCloneSyncService::new(svc)
}

/// The headers a session keeps from its handshake: what the session check reads (Engine.IO's
/// own, [`ENGINE_IO_HEADERS`], are kept in any case).
type KeptHeaders = Arc<[http::HeaderName]>;

/// How a handshake request is prepared before Engine.IO keeps it for the session's life.
#[derive(Clone)]
pub(super) struct Handshake {
    pub(super) headers: KeptHeaders,
    /// With the msgpack parser every Socket.IO packet from a client is an Engine.IO binary
    /// message, which the engine refuses unless the session is marked.
    pub(super) accept_binary: bool,
    /// Every session is closed the moment its queue is full (a slow consumer), whatever
    /// filled it: a publish made here, a broadcast or a kick arriving from another instance.
    pub(super) close_when_full: engineioxide::CloseWhenFull,
}

impl Handshake {
    fn prepare<B>(&self, req: http::Request<B>) -> http::Request<B> {
        let mut req = detach_handshake_head(req, &self.headers);
        if is_handshake(&req) {
            if self.accept_binary {
                req.extensions_mut().insert(engineioxide::AcceptBinary);
            }
            req.extensions_mut().insert(self.close_when_full.clone());
        }
        req
    }
}

/// Counts and logs a slow consumer, once per socket: the engine calls it when it closes a
/// session whose queue is full.
pub(super) fn slow_consumer_closed(metrics: Arc<Metrics>) -> engineioxide::CloseWhenFull {
    engineioxide::CloseWhenFull(Arc::new(move || {
        metrics.slow_consumer();
        tracing::warn!("socket buffer full: slow consumer disconnected");
    }))
}
pub(super) const ENGINE_IO_HEADERS: [&http::HeaderName; 2] = [
    &http::header::SEC_WEBSOCKET_KEY,
    &http::header::CONTENT_TYPE,
];

/// A new Engine.IO session (no `sid` yet), as opposed to traffic of an open one.
pub fn is_handshake<B>(req: &http::Request<B>) -> bool {
    !req.uri()
        .query()
        .is_some_and(|q| q.split('&').any(|pair| pair.starts_with("sid=")))
}

/// The headers a session keeps from its handshake for the checks made after it (the session
/// at connect, a channel's authorization, revalidation: [`handshake_headers`]), copied into
/// one small allocation: a `HeaderMap` of even 3 headers takes ≈ 0.7 KiB (room for 6 entries
/// of 104 bytes and their index) for as long as the socket is open.
#[derive(Clone, Debug)]
pub(crate) struct KeptHead(Box<[(http::HeaderName, http::HeaderValue)]>);

/// The headers a session kept from its handshake request ([`KeptHead`]), as a map built for
/// the caller; a request that kept none (not prepared by [`Handshake`]) is read as it is.
pub(crate) fn handshake_headers(parts: &http::request::Parts) -> http::HeaderMap {
    let Some(KeptHead(kept)) = parts.extensions.get::<KeptHead>() else {
        return parts.headers.clone();
    };
    let mut headers = http::HeaderMap::with_capacity(kept.len());
    for (name, value) in kept.iter() {
        headers.append(name.clone(), value.clone());
    }
    headers
}

/// A handshake with its URI and the headers that are read later copied into their own
/// allocations. socketioxide keeps each session's handshake head for the session's life, and
/// hyper's parsed headers are slices of the connection's 8 KiB read buffer: without the copy
/// every idle socket would pin a whole read buffer, and with all the headers (a browser sends
/// a dozen) it would keep ≈ 1 KiB nobody reads. The request's own headers are only those
/// Engine.IO reads ([`ENGINE_IO_HEADERS`]); the others are kept as a [`KeptHead`].
fn detach_handshake_head<B>(req: http::Request<B>, kept: &[http::HeaderName]) -> http::Request<B> {
    if !is_handshake(&req) {
        return req;
    }
    let (mut parts, body) = req.into_parts();
    let copy = |name: &http::HeaderName| {
        parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|value| http::HeaderValue::from_bytes(value.as_bytes()).ok())
            .map(|value| (name.clone(), value))
            .collect::<Vec<_>>()
    };
    let engine: Vec<_> = ENGINE_IO_HEADERS.into_iter().flat_map(copy).collect();
    let head: Box<[_]> = kept
        .iter()
        .filter(|name| !ENGINE_IO_HEADERS.contains(name))
        .flat_map(copy)
        .collect();
    let mut headers = http::HeaderMap::with_capacity(engine.len());
    for (name, value) in engine {
        headers.append(name, value);
    }
    parts.headers = headers;
    parts.extensions.insert(KeptHead(head));
    if let Ok(uri) = parts.uri.to_string().parse() {
        parts.uri = uri;
    }
    http::Request::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> http::Request<()> {
        http::Request::builder()
            .uri(uri)
            .header("host", "example.com")
            .header("cookie", "sid=a")
            .header("cookie", "theme=dark")
            .header("user-agent", "Mozilla/5.0 (a long browser string)")
            .header("accept-language", "en")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap()
    }

    #[test]
    fn a_handshake_keeps_only_the_headers_read_later() {
        let kept: KeptHeaders = ["cookie", "host", "sec-websocket-key"]
            .map(http::HeaderName::from_static)
            .into();
        let req = detach_handshake_head(request("/socket.io/?EIO=4&transport=websocket"), &kept);
        assert_eq!(
            req.headers().len(),
            1,
            "only what Engine.IO reads: {:?}",
            req.headers()
        );
        assert_eq!(
            req.headers()["sec-websocket-key"],
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        let (parts, ()) = req.into_parts();
        let headers = &handshake_headers(&parts);
        assert_eq!(headers.len(), 3, "{headers:?}");
        assert!(headers.get("sec-websocket-key").is_none());
        let cookies: Vec<_> = headers.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["sid=a", "theme=dark"]);
        assert_eq!(headers["host"], "example.com");
        assert!(headers.get("user-agent").is_none());
        assert!(headers.get("accept-language").is_none());
        assert_eq!(parts.uri, "/socket.io/?EIO=4&transport=websocket");
    }

    #[test]
    fn traffic_of_an_open_session_is_left_alone() {
        let kept: KeptHeaders = [http::HeaderName::from_static("cookie")].into();
        let req = detach_handshake_head(
            request("/socket.io/?EIO=4&transport=polling&sid=abc"),
            &kept,
        );
        assert_eq!(req.headers().len(), 6);
    }
}
