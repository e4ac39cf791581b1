//! A client's request body on its way to the app: it must keep up a minimum data rate, and
//! when it fails, the proxy learns that the client was at fault, not the app.
//!
//! The rate is measured like Kestrel's `MinRequestBodyDataRate`: only time spent waiting for
//! the client counts (not time the app takes to read), and only after a grace period, so a
//! slow start or a pause is fine but a client trickling bytes to hold a client and an app
//! connection open is cut.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::body::BoxError;
use crate::config::ProxyConfig;

/// The slowest acceptable upload; `bytes_per_sec == 0` turns the check off.
#[derive(Debug, Clone, Copy)]
pub struct MinRate {
    pub bytes_per_sec: u64,
    pub grace: Duration,
}

impl From<&ProxyConfig> for MinRate {
    fn from(config: &ProxyConfig) -> Self {
        Self {
            bytes_per_sec: config.min_body_rate_bytes_per_sec,
            grace: config.min_body_rate_grace,
        }
    }
}

/// Why a client's body could not be passed on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientFault {
    #[error("the request body arrived slower than {0} bytes/s (proxy.min_body_rate_bytes_per_sec)")]
    TooSlow(u64),
    #[error("malformed or incomplete request body: {0}")]
    BadBody(String),
}

impl ClientFault {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            ClientFault::TooSlow(_) => "body_too_slow",
            ClientFault::BadBody(_) => "bad_body",
        }
    }

    /// The answer to a request whose body the client got wrong. The connection is closed:
    /// the rest of the body cannot be trusted (and a trickling client must not keep it).
    pub fn response(&self) -> http::Response<crate::body::Body> {
        let status = match self {
            ClientFault::TooSlow(_) => http::StatusCode::REQUEST_TIMEOUT,
            ClientFault::BadBody(_) => http::StatusCode::BAD_REQUEST,
        };
        let mut resp = crate::body::text(status, self.to_string());
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        resp
    }
}

/// Where an [`Upload`] leaves its [`ClientFault`], read by whoever consumed the body (the
/// proxy when the app request fails, the router after Engine.IO refused a polling POST).
#[derive(Debug, Clone, Default)]
pub struct FaultCell(Arc<OnceLock<ClientFault>>);

impl FaultCell {
    pub fn get(&self) -> Option<&ClientFault> {
        self.0.get()
    }

    fn record(&self, fault: ClientFault) -> BoxError {
        let error = Box::new(fault.clone());
        let _ = self.0.set(fault);
        error
    }
}

/// The client's body, checked as it streams.
#[derive(Debug)]
pub struct Upload {
    inner: Incoming,
    rate: MinRate,
    received: u64,
    /// Time spent waiting for the client, up to the current wait.
    waited: Duration,
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    fault: FaultCell,
}

impl Upload {
    pub fn new(inner: Incoming, rate: MinRate) -> (Self, FaultCell) {
        let fault = FaultCell::default();
        let upload = Self {
            inner,
            rate,
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
            fault: fault.clone(),
        };
        (upload, fault)
    }

    /// When the current wait becomes too long: the grace period, or as long as the bytes
    /// received so far pay for at the minimum rate, whichever is later.
    fn due(&self, waiting_since: Instant) -> Instant {
        let earned = Duration::from_secs_f64(self.received as f64 / self.rate.bytes_per_sec as f64);
        let allowance = self.rate.grace.max(earned);
        waiting_since + allowance.saturating_sub(self.waited)
    }

    fn stop_waiting(&mut self) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.stop_waiting();
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let fault = ClientFault::BadBody(e.to_string());
                Poll::Ready(Some(Err(this.fault.record(fault))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending if this.rate.bytes_per_sec == 0 => Poll::Pending,
            Poll::Pending => {
                let since = *this.waiting_since.get_or_insert_with(Instant::now);
                let due = this.due(since);
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                if timer.deadline() != due {
                    timer.as_mut().reset(due);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let fault = ClientFault::TooSlow(this.rate.bytes_per_sec);
                        Poll::Ready(Some(Err(this.fault.record(fault))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
