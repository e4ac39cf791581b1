//! The reverse proxy: every request that is not Socket.IO goes to the app, streamed both ways.
//!
//! Bodies are never buffered: hyper's `Incoming` is handed to the upstream client as is, and
//! the app's response body (driving its app connection as it is read) is handed back to the
//! client frame by frame, so chunked SSR and SSE flush through as the app flushes them. `Host` is kept (frameworks check it).

mod headers;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::abuse::{Conduct, Held, Ticket};
use crate::body::{self, Body};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::upload::{FaultCell, MinRate, Upload};
use crate::upstream::{AppBody, Upstream, UpstreamError};

pub use headers::{effective_host, host_from_authority};
pub use upgrade::Tunnels;

/// A proxied request's answer body: the app's as it streams (holding its HTTP/2 slot), or
/// one of sockgate's own. Not boxed here: the server boxes it once, with its own wrapper.
pub type Answer = Either<Held<AppBody>, Body>;

/// One client connection as the app hears of it, worked out once for all its requests.
pub struct Client {
    pub peer: SocketAddr,
    /// `peer`'s address as an `X-Forwarded-For` value.
    forwarded_for: HeaderValue,
}

impl Client {
    pub fn new(peer: SocketAddr) -> Self {
        Self {
            peer,
            forwarded_for: headers::forwarded_for(peer.ip()),
        }
    }
}

#[derive(Clone)]
pub struct Proxy {
    upstream: Upstream,
    trust_forwarded: bool,
    tunnels: Tunnels,
    metrics: Arc<Metrics>,
    min_rate: MinRate,
}

impl Proxy {
    pub fn new(
        upstream: Upstream,
        trust_forwarded: bool,
        shutdown: Shutdown,
        metrics: Arc<Metrics>,
        min_rate: MinRate,
    ) -> Self {
        Self {
            upstream,
            trust_forwarded,
            tunnels: Tunnels::new(shutdown, metrics.clone()),
            metrics,
            min_rate,
        }
    }

    pub fn tunnels(&self) -> &Tunnels {
        &self.tunnels
    }

    /// Forwards one request from `peer` to the app and returns the app's answer, or a 502/504
    /// page that says why there is none, or a 400/408 when the client's body is at fault.
    /// An HTTP/2 request waits for one of its connection's app slots (`conduct`, which only
    /// HTTP/2 connections have).
    pub async fn forward(
        &self,
        mut req: Request<Incoming>,
        client: &Client,
        conduct: Option<&Arc<Conduct>>,
    ) -> Response<Answer> {
        let peer = client.peer;
        let upgrade = (req.version() == Version::HTTP_11)
            .then(|| headers::upgrade_protocol(req.headers()))
            .flatten();
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        forwarded(
            &mut parts.headers,
            &client.forwarded_for,
            self.trust_forwarded,
        );
        if let Some(protocol) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol.clone());
        }
        parts.uri = self.upstream.uri(parts.uri.path_and_query());
        parts.version = Version::HTTP_11;
        let method = parts.method.clone();
        let path = parts.uri.path().to_owned();
        // A body already at its end (a GET) has no rate to keep and no fault to record.
        let (body, client_fault) = match body.is_end_stream() {
            true => (Either::Right(Full::default()), None),
            false => {
                let (upload, fault) = Upload::new(body, self.min_rate);
                (Either::Left(upload), Some(fault))
            }
        };
        let req = Request::from_parts(parts, body);

        let started = Instant::now();
        let exchange = self.upstream.send(req, None);
        // An HTTP/1.1 client that goes away takes its connection: the aborted exchange is
        // the app's cue, and there is no stream to reuse.
        let (answer, ticket) = match conduct {
            Some(conduct) => {
                let (answer, ticket) = conduct.dispatch(exchange).await;
                (answer, Some(ticket))
            }
            None => (exchange.await, None),
        };
        let resp = match answer {
            Ok(resp) => resp,
            Err(_) if let Some(fault) = client_fault.as_ref().and_then(FaultCell::get) => {
                // The app is fine: the client sent a broken body, gave up, or trickled.
                tracing::debug!(%method, %path, %peer, "{fault}");
                self.metrics.client_error(fault.label());
                return fault.response().map(Either::Right);
            }
            Err(error) => {
                tracing::warn!(%method, %path, %peer, "{error}");
                self.metrics.upstream_error(match error {
                    UpstreamError::Unreachable(..) => "unreachable",
                    UpstreamError::Timeout(..) => "timeout",
                });
                let page = error_page(&error);
                self.metrics.proxied(page.status(), started.elapsed());
                return page.map(Either::Right);
            }
        };
        self.metrics.proxied(resp.status(), started.elapsed());
        self.answer(resp, client_upgrade, ticket, path)
    }

    /// The app's answer as the client gets it: a `101` hands both connections to a tunnel;
    /// anything else streams back without its hop-by-hop headers, holding its HTTP/2 slot
    /// (`ticket`) until its body ends.
    fn answer(
        &self,
        mut resp: Response<AppBody>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        ticket: Option<Ticket>,
        path: String,
    ) -> Response<Answer> {
        match client_upgrade {
            Some(client) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let app = hyper::upgrade::on(&mut resp);
                self.tunnels.open(client, app, path);
                let (parts, _) = resp.into_parts();
                Response::from_parts(parts, Either::Right(body::full(bytes::Bytes::new())))
            }
            _ => {
                let (mut parts, body) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                // The client's connection has its own version; hyper picks the wire format.
                parts.version = Version::default();
                let body = match ticket {
                    Some(ticket) => ticket.hold(body),
                    None => Held::unslotted(body),
                };
                Response::from_parts(parts, Either::Left(body))
            }
        }
    }
}

/// Sets `X-Forwarded-For/-Proto/-Host` for a request from `peer`, as the app should see it.
/// Also used for Socket.IO handshakes, whose headers go to the app's session route.
pub fn mark_forwarded(headers: &mut http::HeaderMap, peer: SocketAddr, trust_forwarded: bool) {
    forwarded(headers, &headers::forwarded_for(peer.ip()), trust_forwarded);
}

/// [`mark_forwarded`] with the client's address already made a header value.
fn forwarded(headers: &mut http::HeaderMap, client: &HeaderValue, trust_forwarded: bool) {
    let host = headers.get(header::HOST).cloned();
    headers::set_forwarded(
        headers,
        &headers::Forwarded {
            client,
            proto: "http",
            host: host.as_ref(),
            trust_incoming: trust_forwarded,
        },
    );
}

/// The page a browser shows when the app cannot answer: short, and saying whose fault it is.
pub fn error_page(error: &UpstreamError) -> Response<Body> {
    let (status, title) = match error {
        UpstreamError::Unreachable(..) => (StatusCode::BAD_GATEWAY, "502 Bad Gateway"),
        UpstreamError::Timeout(..) => (StatusCode::GATEWAY_TIMEOUT, "504 Gateway Timeout"),
    };
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1><p>sockgate: {}</p></body></html>\n",
        html_escape(&error.to_string())
    );
    let mut resp = Response::new(body::full(html));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
