//! How one client connection behaves, and what happens when it abuses HTTP/2.
//!
//! Two abuses that the HTTP/2 library lets through:
//!
//! - **Rapid reset after dispatch** (CVE-2023-44487, paced). h2 counts streams reset before
//!   they are handed on, not after; hyper then drops the request's future, which would abort
//!   the app's request, but most apps work on until their answer is ready whether or not the
//!   client is still there. So a reset HTTP/2 request keeps its *app slot* (one of
//!   `server.max_concurrent_streams` per connection) until the app has answered it (bounded by
//!   `upstream.response_timeout_ms`), an answered one keeps it until its body is over, and
//!   requests wait for a slot before they reach the app: one connection never has the app
//!   work on more than `max_concurrent_streams` requests at once. Requests reset before
//!   their answer is over (waiting, dispatched, or while their body streams) count against
//!   the connection: past [`reset_bound`] more than it let complete, it is closed.
//! - **Frames the library only logs** (e.g. PING acknowledgements nobody asked for): h2 logs a
//!   WARN per frame and carries on. [`AbuseLayer`] sees those events while the connection that
//!   caused them is being polled ([`Conduct::polling`]) and reports the connection instead.
//!
//! Either way the connection is reported once: one log line, `sockgate_protocol_abuse_total`
//! by kind, and the server closes it (GOAWAY, then cut after a grace).

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll, ready};

use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{Notify, Semaphore};
use tracing::Subscriber;
use tracing_subscriber::layer::{self, Layer};

use crate::metrics::Metrics;

/// Requests reset before their answer was over, beyond those the client let complete, that
/// close a connection: twice what it may have in flight at once.
pub fn reset_bound(max_concurrent_streams: u32) -> u32 {
    max_concurrent_streams.saturating_mul(2)
}

/// What a connection was closed for (the `kind` label of `sockgate_protocol_abuse_total`).
#[derive(Debug, Clone, Copy)]
pub enum Abuse {
    /// Too many HTTP/2 requests reset before their answer was over.
    RapidReset,
    /// HTTP/2 frames the protocol library warned about (e.g. unsolicited PING acks).
    H2Frames,
}

impl Abuse {
    pub fn label(self) -> &'static str {
        match self {
            Abuse::RapidReset => "rapid_reset",
            Abuse::H2Frames => "h2_frames",
        }
    }
}

/// One client connection's app slots, reset count and abuse report.
pub struct Conduct {
    peer: SocketAddr,
    /// App slots: the requests of this connection the app may work on at once.
    slots: Semaphore,
    /// Requests reset after dispatch, net of completed ones.
    resets: AtomicU32,
    reset_bound: u32,
    reported: AtomicBool,
    abused: Notify,
    metrics: Arc<Metrics>,
}

impl Conduct {
    pub fn new(peer: SocketAddr, max_concurrent_streams: u32, metrics: Arc<Metrics>) -> Arc<Self> {
        let slots = usize::try_from(max_concurrent_streams)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Self {
            peer,
            slots: Semaphore::new(slots),
            resets: AtomicU32::new(0),
            reset_bound: reset_bound(max_concurrent_streams),
            reported: AtomicBool::new(false),
            abused: Notify::new(),
            metrics,
        })
    }

    /// Completes once the connection has been reported for abuse.
    pub async fn abused(&self) {
        self.abused.notified().await;
    }

    /// Reports the connection (once): a log line, the metric, and the server closes it.
    pub fn report(&self, abuse: Abuse) {
        if self.reported.swap(true, Ordering::AcqRel) {
            return;
        }
        self.metrics.protocol_abuse(abuse.label());
        tracing::warn!(
            peer = %self.peer,
            kind = abuse.label(),
            "closing a client connection that abuses HTTP/2"
        );
        self.abused.notify_one();
    }

    /// Runs `exchange` (an HTTP/2 request to the app) in one of the connection's app slots.
    /// Dropped before it completes (the client reset the stream), the exchange still runs to
    /// its end in the background, keeping its slot: the app is working on it either way. A
    /// request reset while it waits for a slot or for the app counts against the connection.
    /// The answer comes with its [`Ticket`], which keeps the slot until the answer is over.
    pub async fn dispatch<T: Send + 'static>(
        self: &Arc<Self>,
        exchange: impl Future<Output = T> + Send + 'static,
    ) -> (T, Ticket) {
        let mut unanswered = Unanswered(Some(self));
        // `acquire` fails only on a closed semaphore, and this one is never closed; the
        // permit goes back when the `Slot` is dropped.
        if let Ok(permit) = self.slots.acquire().await {
            permit.forget();
        }
        let answered = Dispatched {
            exchange: Some(Box::pin(exchange)),
            slot: Some(Slot(self.clone())),
        }
        .await;
        unanswered.0 = None;
        answered
    }

    fn count_reset(&self) {
        if self.resets.fetch_add(1, Ordering::AcqRel) + 1 > self.reset_bound {
            self.report(Abuse::RapidReset);
        }
    }

    /// Saturating: one completed request forgives one earlier reset.
    fn forgive_reset(&self) {
        let _ = self
            .resets
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

type Exchange<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A request dropped before the app answered it; see [`Conduct::dispatch`].
struct Unanswered<'a>(Option<&'a Conduct>);

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(conduct) = self.0 {
            conduct.count_reset();
        }
    }
}

/// One of a connection's app slots, taken (owned, so a reset request can keep it).
struct Slot(Arc<Conduct>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.add_permits(1);
    }
}

/// An answered request's app slot, kept until the answer is over: dropped, it counts as a
/// completed request (an error page, a body that ended); see [`Ticket::hold`].
pub struct Ticket {
    slot: Option<Slot>,
}

impl Ticket {
    /// `body`, keeping the slot until it ends. Dropped before its end (the client reset the
    /// stream), it counts as a reset request.
    pub fn hold<B: HttpBody>(self, body: B) -> Held<B> {
        let ticket = (!body.is_end_stream()).then_some(self);
        Held { body, ticket }
    }

    fn abandon(mut self) {
        if let Some(slot) = self.slot.take() {
            slot.0.count_reset();
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            slot.0.forgive_reset();
        }
    }
}

/// A response body with its request's [`Ticket`].
pub struct Held<B> {
    body: B,
    ticket: Option<Ticket>,
}

impl<B> Held<B> {
    /// A body that holds no slot (an HTTP/1.1 answer).
    pub fn unslotted(body: B) -> Self {
        Self { body, ticket: None }
    }
}

impl<B: HttpBody + Unpin> HttpBody for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = ready!(Pin::new(&mut self.body).poll_frame(cx));
        // Over when the app ended it, well or not (the server may not poll past the end).
        if !matches!(polled, Some(Ok(_))) || self.body.is_end_stream() {
            self.ticket = None;
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for Held<B> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            ticket.abandon();
        }
    }
}

/// A request to the app in its slot; see [`Conduct::dispatch`].
struct Dispatched<T: Send + 'static> {
    exchange: Option<Exchange<T>>,
    slot: Option<Slot>,
}

impl<T: Send + 'static> Future for Dispatched<T> {
    type Output = (T, Ticket);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(T, Ticket)> {
        let Some(exchange) = self.exchange.as_mut() else {
            return Poll::Pending;
        };
        let out = ready!(exchange.as_mut().poll(cx));
        self.exchange = None;
        let ticket = Ticket {
            slot: self.slot.take(),
        };
        Poll::Ready((out, ticket))
    }
}

impl<T: Send + 'static> Drop for Dispatched<T> {
    fn drop(&mut self) {
        let Some(exchange) = self.exchange.take() else {
            return;
        };
        let slot = self.slot.take();
        // Outside a runtime (it is shutting down) there is nobody left to answer.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            // The answer is dropped: an unfinished body closes its app connection.
            drop(exchange.await);
            drop(slot);
        });
    }
}

thread_local! {
    /// The client connection whose HTTP/2 state this thread is advancing, if any.
    static POLLING: Cell<Option<Arc<Conduct>>> = const { Cell::new(None) };
}

/// A connection future that, while polled, is the connection [`AbuseLayer`] reports.
pub struct Polling<F> {
    conn: F,
    conduct: Option<Arc<Conduct>>,
}

impl<F> Polling<F> {
    /// `conn`, polled with `conduct`'s connection as the one [`AbuseLayer`] reports; without
    /// one (HTTP/1.1, which the HTTP/2 library never warns about) polled as it is.
    pub fn new(conduct: Option<&Arc<Conduct>>, conn: F) -> Self {
        Self {
            conn,
            conduct: conduct.cloned(),
        }
    }
}

impl<F: Future + Unpin> Future for Polling<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if self.conduct.is_none() {
            return Pin::new(&mut self.conn).poll(cx);
        }
        // Moved in and out, not cloned: no atomic operation per poll.
        let previous = POLLING.replace(self.conduct.take());
        let polled = Pin::new(&mut self.conn).poll(cx);
        self.conduct = POLLING.replace(previous);
        polled
    }
}

/// Reports the connection being polled when the HTTP/2 library warns about what its peer
/// sent. Install it with a filter that passes only those events (see `telemetry`).
pub struct AbuseLayer;

impl<S: Subscriber> Layer<S> for AbuseLayer {
    fn on_event(&self, _event: &tracing::Event<'_>, _ctx: layer::Context<'_, S>) {
        let conduct = POLLING.take();
        if let Some(conduct) = &conduct {
            conduct.report(Abuse::H2Frames);
        }
        POLLING.set(conduct);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;

    fn conduct(max_concurrent_streams: u32) -> Arc<Conduct> {
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        Conduct::new(peer, max_concurrent_streams, Arc::new(Metrics::new()))
    }

    /// Starts a request whose exchange ends after `ms`, and resets it (drops it) at once.
    fn reset(conduct: &Arc<Conduct>, ms: u64) {
        let mut request = Box::pin(conduct.dispatch(tokio::time::sleep(Duration::from_millis(ms))));
        assert!(request.as_mut().now_or_never().is_none());
    }

    #[tokio::test]
    async fn a_reset_request_keeps_its_slot_until_its_exchange_ends() {
        let conduct = conduct(1);
        reset(&conduct, 300);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), conduct.dispatch(async {}))
                .await
                .is_err(),
            "a second request reached the app while the reset one was still being answered"
        );
        tokio::time::timeout(Duration::from_secs(2), conduct.dispatch(async {}))
            .await
            .expect("the slot comes back once the reset request's exchange ends");
    }

    #[tokio::test]
    async fn resets_past_the_bound_net_of_completions_report_the_connection() {
        let conduct = conduct(2);
        for _ in 0..reset_bound(2) {
            reset(&conduct, 1);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        conduct.dispatch(async {}).await;
        reset(&conduct, 1);
        assert!(
            !conduct.reported.load(Ordering::Acquire),
            "a completion forgives a reset"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        reset(&conduct, 1);
        assert!(conduct.reported.load(Ordering::Acquire));
    }
}
