//! The pooled HTTP/1.1 client to the Node app, shared by the proxy, the session check
//! and channel authorization.
//!
//! One pool for the whole process ([`pool`]): keep-alive connections are reused, and the idle
//! timeout is kept below Node's 5 s so a connection Node is about to close is never picked for
//! a request.

mod pool;

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri};

use crate::config::UpstreamConfig;

pub use pool::{AppBody, UpstreamBody};

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
    pool: pool::Pool,
    authority: Authority,
    /// `Host` for a request that comes without one: the app's `host[:port]`.
    host: HeaderValue,
    response_timeout: Duration,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig, authority: Authority) -> Self {
        let pool = pool::Pool::new(
            authority.clone(),
            config.connect_timeout,
            config.pool_idle_timeout,
            config.pool_max_idle_per_host,
        );
        // As hyper-util's client wrote it: the port left out when it is HTTP's default.
        let host = match authority.port_u16() {
            Some(80) => authority.host(),
            _ => authority.as_str(),
        };
        let host =
            HeaderValue::from_str(host).unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Self {
            pool,
            authority,
            host,
            response_timeout: config.response_timeout,
        }
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The URI of `path_and_query` on the app, as an HTTP/1.1 request line names it (origin
    /// form: the connection already goes to the app).
    pub fn uri(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(
            path_and_query
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
    }

    /// Sends `req` (its URI from [`Upstream::uri`]) and waits for the response head, bounded
    /// by the configured response timeout, or `timeout` when given. A request without `Host`
    /// gets the app's. The exchange owns what it needs, so it can outlive the caller (see
    /// `abuse::Conduct::dispatch`).
    pub fn send(
        &self,
        mut req: Request<UpstreamBody>,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Response<AppBody>, UpstreamError>> + Send + 'static {
        let limit = timeout.unwrap_or(self.response_timeout);
        let authority = self.authority.clone();
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut().insert(header::HOST, self.host.clone());
        }
        let pool = self.pool.clone();
        async move {
            match tokio::time::timeout(limit, pool.request(req)).await {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(e)) => Err(UpstreamError::Unreachable(authority, e)),
                Err(_) => Err(UpstreamError::Timeout(authority, limit)),
            }
        }
    }
}
