//! The one way into the Socket.IO endpoint ([`Gate`]): every request under `realtime.path`
//! passes the origin check, then either the binding of an open session to its handshake's
//! credentials, or, for a handshake, admission (credentials, the session route, a pending
//! place) and a place under `realtime.max_connections`, before Engine.IO sees it. Every
//! refusal on the way is counted in `sockgate_rejected_total` here.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tower::ServiceExt;

use super::admission::{Admission, Refusal};
use super::origin::OriginPolicy;
use super::service::{RealtimeService, is_handshake};
use super::slots::OpenSockets;
use crate::body::{self, Body};
use crate::config::{Config, is_under};
use crate::metrics::{Metrics, Reject};
use crate::proxy::mark_forwarded;
use crate::upload::{MinRate, Upload};

/// The gatekeeper of `realtime.path`, built once by [`super::start`]; the router calls
/// [`Gate::handle`] once per request under the path.
pub struct Gate {
    path: String,
    origin: OriginPolicy,
    /// Credentials and pending places of handshakes; the binding of sessions to them.
    admission: Admission,
    open: OpenSockets,
    max_connections: usize,
    service: RealtimeService,
    metrics: Arc<Metrics>,
    trust_forwarded: bool,
    /// What a polling POST's body must keep up (the proxy's `proxy.min_body_rate_*`).
    min_body_rate: MinRate,
}

impl Gate {
    pub(super) fn new(
        settings: &Config,
        admission: Admission,
        service: RealtimeService,
        metrics: Arc<Metrics>,
    ) -> Self {
        let trust_forwarded = settings.proxy.trust_forwarded;
        Self {
            path: settings.realtime.path.clone(),
            origin: OriginPolicy::new(&settings.realtime.allowed_origins, trust_forwarded),
            admission,
            open: OpenSockets::default(),
            max_connections: settings.realtime.max_connections,
            service,
            metrics,
            trust_forwarded,
            min_body_rate: MinRate::from(&settings.proxy),
        }
    }

    /// Whether a request path is the Socket.IO endpoint's.
    pub fn serves(&self, path: &str) -> bool {
        is_under(path, &self.path)
    }

    /// Counts a request under the path refused because the supervised app is still starting
    /// (the router answers it, as it answers every other request then).
    pub fn refused_app_starting(&self) {
        self.metrics.rejected(Reject::AppStarting);
    }

    /// Lets a request under the path through to Engine.IO, or answers why not.
    pub async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        if let Err(reason) = self.origin.check(req.headers()) {
            self.metrics.rejected(Reject::Origin);
            tracing::warn!(%peer, "Socket.IO handshake refused: {reason}");
            return body::text(StatusCode::FORBIDDEN, "origin not allowed");
        }
        // The session route sees the client's address like the app's pages do.
        mark_forwarded(req.headers_mut(), peer, self.trust_forwarded);
        if !is_handshake(&req) {
            if let Err(refusal) = self.admission.check(&req) {
                if refusal.status == StatusCode::FORBIDDEN {
                    self.metrics.rejected(refusal.reason);
                    tracing::warn!(%peer, "Socket.IO request refused: {}", refusal.message);
                }
                return refusal.response();
            }
            return self.call_engine(req).await;
        }
        let ticket = match self.admission.admit(req.headers()).await {
            Ok(ticket) => ticket,
            Err(refusal) => {
                self.metrics.rejected(refusal.reason);
                tracing::debug!(%peer, "Socket.IO handshake refused: {}", refusal.message);
                return refusal.response();
            }
        };
        match self.open.reserve(self.max_connections) {
            Some(slot) => {
                req.extensions_mut().insert(slot);
            }
            None => {
                self.metrics.rejected(Reject::Capacity);
                tracing::warn!(%peer, max = self.max_connections, "Socket.IO handshake refused: connection cap reached (realtime.max_connections)");
                return Refusal {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: "too many realtime connections; retry later".into(),
                    reason: Reject::Capacity,
                }
                .response();
            }
        }
        req.extensions_mut().insert(ticket.clone());
        let resp = self.call_engine(req).await;
        ticket.bind(resp).await
    }

    /// Hands a request to Engine.IO. A body the client trickled or broke is answered as the
    /// proxy answers it (`408`/`400`, connection closed), whatever Engine.IO made of it.
    async fn call_engine(&self, req: Request<Incoming>) -> Response<Body> {
        let (parts, incoming) = req.into_parts();
        let (upload, client_fault) = Upload::new(incoming, self.min_body_rate);
        let resp = match self
            .service
            .clone()
            .oneshot(Request::from_parts(parts, upload))
            .await
        {
            Ok(resp) => resp.map(body::boxed),
            Err(never) => match never {},
        };
        match client_fault.get() {
            Some(fault) => {
                self.metrics.client_error(fault.label());
                fault.response()
            }
            None => resp,
        }
    }
}
