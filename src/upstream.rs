//! The pooled HTTP/1.1 client to the Node app, shared by the proxy, the session check
//! and channel authorization.
//!
//! One pool for the whole process: keep-alive connections are reused, and the idle timeout is
//! kept below Node's 5 s so a connection Node is about to close is never picked for a request.

use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamConfig;
use crate::upload::Upload;

/// A request body sent upstream: the client's streamed body, or one of sockgate's own
/// (empty for a `GET`: hyper sends no `Content-Length` for a body that is already at its end).
pub type UpstreamBody = Either<Upload, Full<Bytes>>;

/// Why the app did not answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the app at {0} is unreachable: {1}")]
    Unreachable(Authority, String),
    #[error("the app at {0} did not answer within {1:?}")]
    Timeout(Authority, Duration),
}

#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, UpstreamBody>,
    authority: Authority,
    response_timeout: Duration,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig, authority: Authority) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(30)));
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            // Keep the client's header case and order as they came in where hyper allows it.
            .http1_preserve_header_case(true)
            .http1_title_case_headers(false)
            .build(connector);
        Self {
            client,
            authority,
            response_timeout: config.response_timeout,
        }
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The URI of `path_and_query` on the app.
    pub fn uri(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            path_and_query
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("http://127.0.0.1/"))
    }

    /// Sends `req` (its URI already pointing at the app) and waits for the response head,
    /// bounded by the configured response timeout, or `timeout` when given. The exchange
    /// owns what it needs, so it can outlive the caller (see `abuse::Conduct::dispatch`).
    pub fn send(
        &self,
        req: Request<UpstreamBody>,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Response<Incoming>, UpstreamError>> + Send + 'static {
        let limit = timeout.unwrap_or(self.response_timeout);
        let authority = self.authority.clone();
        let exchange = tokio::time::timeout(limit, self.client.request(req));
        async move {
            match exchange.await {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(e)) => Err(UpstreamError::Unreachable(authority, describe(&e))),
                Err(_) => Err(UpstreamError::Timeout(authority, limit)),
            }
        }
    }
}

/// The innermost cause is what explains it ("Connection refused"), not hyper's wrapper.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text = inner.to_string();
        source = inner.source();
    }
    text
}
