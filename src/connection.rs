//! One client connection on the public port: its place under `server.max_connections`, held
//! for as long as the socket is open (after an upgrade too), and its idle timer.
//!
//! hyper has no idle timeout for HTTP/2: a client that sends the preface and then nothing, or
//! only PINGs, would hold its socket forever. So once no request has been in flight for
//! `server.idle_timeout_ms`, the connection says so ([`Activity::went_idle`]: the server then
//! shuts it down gracefully, which is a GOAWAY for HTTP/2), and [`IDLE_CLOSE_GRACE`] later
//! its reads end (as if the client had closed) if it is still open. Only requests count as
//! activity (HTTP/2 PINGs and other frames do not), and a request counts until its response
//! body is finished. An upgraded connection (WebSocket, tunnel) belongs to whoever took it
//! over and has no idle timer here.
//!
//! The same timer keeps HTTP/1.1's header read timeout (a request head must be complete within
//! `server.header_read_timeout_ms` of the previous response's end): hyper's own would box and
//! register a timer per request ([`Connection::read_heads_within`]).
//!
//! A response the client takes nothing of (it stopped reading, or never opens its HTTP/2
//! window) would hold its app connection for as long as the client stays: see
//! [`Activity::send_stalled`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use engineioxide::RawTcp;
use http::{Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};

use crate::body::{self, Body, BoxError};
use crate::metrics::Metrics;

/// How long an idle connection told to shut down (GOAWAY) may take to close before its reads
/// end anyway: a client that ignores the GOAWAY does not keep it.
pub const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The cap on open client connections.
#[derive(Clone)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: usize,
}

impl ConnectionLimit {
    /// `configured == 0` derives the cap from the file descriptor limit (raised to its hard
    /// maximum first, as Go and nginx do: containers often start with a soft limit of 1,024),
    /// keeping 1/64 of it (256 to 4,096 descriptors) for the app connections those clients
    /// cause, the publish socket and the rest: sockets are what the descriptors are for.
    pub fn new(configured: usize) -> Self {
        let max = match configured {
            0 => fd_limit().map_or(10_000, |n| {
                n.saturating_sub((n / 64).clamp(256, 4096)).max(64)
            }),
            n => n,
        };
        Self {
            permits: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            max,
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A place for one more connection, if there is one.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }
}

/// The file descriptor limit, after raising the soft limit to the hard one (each socket is a
/// descriptor; nothing is gained by refusing connections the system allows).
fn fd_limit() -> Option<usize> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let soft = match soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        true => {
            tracing::info!(
                from = soft,
                to = hard,
                "raised the file descriptor limit (ulimit -n)"
            );
            hard
        }
        false => soft,
    };
    usize::try_from(soft).ok()
}

/// What the connection's requests have been doing, shared by its I/O and its service.
pub struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `born` of the last request start or end.
    last_ms: AtomicU64,
    upgraded: AtomicBool,
    /// Told once the connection has been idle for the whole timeout.
    idle: Notify,
    /// The HTTP/2 responses being sent, for the send-stall watch (dead ones pruned as it goes).
    sending: Mutex<Vec<Weak<Sending>>>,
    /// The HTTP/1.1 response being sent, as [`Sending::handed_at`]: hyper sends one at a time
    /// on a connection, so it needs no entry of its own (no allocation, no lock per response).
    sending_h1: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            idle: Notify::new(),
            sending: Mutex::new(Vec::new()),
            sending_h1: AtomicU64::new(0),
        })
    }

    /// Completes once no request has been in flight for `server.idle_timeout_ms` (it is
    /// noticed while the connection is being read, i.e. while its server task runs).
    pub async fn went_idle(&self) {
        self.idle.notified().await;
    }

    /// Milliseconds since the connection was accepted.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.born + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Watches this connection's responses for the client taking nothing of them for `limit`
    /// (`server.send_stall_timeout_ms`). hyper asks a response body for its next chunk only
    /// once it has written the last one (HTTP/1.1: its write buffer has room; HTTP/2: the
    /// client's window has), so a stalled body is never polled and cannot notice by itself:
    /// this one timer per connection does, waking when the oldest waiting chunk would be
    /// overdue. A body waiting for the app (SSE, slow SSR) is being polled, so never stalls.
    ///
    /// A stalled HTTP/2 stream's task is aborted: hyper drops its stream, which h2 resets
    /// (`RST_STREAM` `CANCEL`), and its body, which closes the app connection; the client's
    /// other streams go on. For HTTP/1.1 the response is the connection, so this completes
    /// and the server drops the connection (closing it, and the app connection with it).
    pub async fn send_stalled(&self, limit: Duration, peer: SocketAddr, metrics: &Metrics) {
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        let mut next = Instant::now() + limit;
        loop {
            tokio::time::sleep_until(next).await;
            let now = self.now_ms();
            // The oldest chunk still waiting that is not yet overdue; `now` when none waits.
            let mut oldest = now;
            let (mut reset, mut close) = (0u64, false);
            if let Some(since) = self.sending_h1.load(Ordering::Relaxed).checked_sub(1) {
                match now.saturating_sub(since) < limit_ms {
                    true => oldest = oldest.min(since),
                    false => close = true,
                }
            }
            self.sending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|sending| {
                    let Some(sending) = sending.upgrade() else {
                        return false;
                    };
                    let Some(since) = sending.handed_at.load(Ordering::Relaxed).checked_sub(1)
                    else {
                        return true;
                    };
                    if now.saturating_sub(since) < limit_ms {
                        oldest = oldest.min(since);
                        return true;
                    }
                    match sending.stream.get() {
                        Some(task) => {
                            task.abort();
                            reset += 1;
                            false
                        }
                        // Spawned but not yet told its handle: looked at again next time.
                        None => true,
                    }
                });
            if reset > 0 {
                metrics.send_stalled(reset);
                tracing::debug!(%peer, streams = reset, "HTTP/2 responses the client took nothing of for server.send_stall_timeout_ms: streams reset");
            }
            if close {
                metrics.send_stalled(1);
                tracing::debug!(%peer, "HTTP/1.1 response the client took nothing of for server.send_stall_timeout_ms: closing the connection");
                return;
            }
            next = self.born + Duration::from_millis(oldest.saturating_add(limit_ms));
        }
    }

    /// Counts a request from now until its response body is dropped, which `respond` ties
    /// to the response.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        InFlight(self.clone())
    }
}

/// One request in flight; see [`Activity::request`].
pub struct InFlight(Arc<Activity>);

impl InFlight {
    /// The response, with this request counted until its body is finished. A `101` hands
    /// the connection over for good.
    pub fn respond<B>(self, resp: Response<B>) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // HTTP/1.1 only: the upgraded socket keeps its `Activity`, but has no more
            // responses to watch.
            self.0.upgraded.store(true, Ordering::Relaxed);
        }
        // Outside an HTTP/2 stream's task, the response is the connection's HTTP/1.1 one.
        let sending = STREAM_TASK.try_with(|stream| self.0.watch(stream)).ok();
        resp.map(|inner| {
            body::boxed(Tracked {
                inner,
                sending,
                in_flight: self,
            })
        })
    }
}

impl Activity {
    /// A new HTTP/2 response of `stream`, on the send-stall watch's list.
    fn watch(&self, stream: &Arc<OnceLock<AbortHandle>>) -> Arc<Sending> {
        let sending = Arc::new(Sending {
            handed_at: AtomicU64::new(0),
            stream: stream.clone(),
        });
        let mut watched = self.sending.lock().unwrap_or_else(PoisonError::into_inner);
        // Pruned before the list grows, so it holds about as many as are in flight.
        if watched.len() == watched.capacity() {
            watched.retain(|sending| sending.strong_count() > 0);
        }
        watched.push(Arc::downgrade(&sending));
        sending
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

tokio::task_local! {
    /// The HTTP/2 stream task a response is produced in (see [`StreamExecutor`]).
    static STREAM_TASK: Arc<OnceLock<AbortHandle>>;
}

/// Spawns hyper's HTTP/2 stream tasks, each knowing its own abort handle, so that the
/// send-stall watch can reset one stream: aborting its task drops hyper's handles on the
/// stream, which h2 answers with `RST_STREAM`.
#[derive(Clone, Copy)]
pub struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let task = Arc::new(OnceLock::new());
        let handle = tokio::spawn(STREAM_TASK.scope(task.clone(), fut)).abort_handle();
        let _ = task.set(handle);
    }
}

/// One HTTP/2 response being sent, as the send-stall watch sees it.
struct Sending {
    /// When (`Activity::now_ms` + 1) the body last handed hyper a frame that hyper has not
    /// come back from (it asks again once it has written it); 0 while hyper is asking, i.e.
    /// while the body waits for the app, and once it is done.
    handed_at: AtomicU64,
    /// The HTTP/2 stream task the response belongs to.
    stream: Arc<OnceLock<AbortHandle>>,
}

/// A response body, boxed once here with what watches it (the router hands it over unboxed).
struct Tracked<B> {
    inner: B,
    /// `None` for HTTP/1.1, watched in [`Activity::sending_h1`].
    sending: Option<Arc<Sending>>,
    in_flight: InFlight,
}

impl<B> Tracked<B> {
    fn handed_at(&self) -> &AtomicU64 {
        match &self.sending {
            Some(sending) => &sending.handed_at,
            None => &self.in_flight.0.sending_h1,
        }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        // Done (or given up): nothing of it waits any more. An HTTP/2 entry goes with its Arc.
        if self.sending.is_none() {
            self.in_flight.0.sending_h1.store(0, Ordering::Relaxed);
        }
    }
}

impl<B> HttpBody for Tracked<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        this.handed_at().store(0, Ordering::Relaxed);
        let polled = Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map(|frame| frame.map(|frame| frame.map_err(Into::into)));
        if let Poll::Ready(Some(Ok(_))) = polled {
            let now = this.in_flight.0.now_ms();
            this.handed_at()
                .store(now.saturating_add(1), Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's socket, holding its place under the cap and ending its reads when idle.
pub struct Connection {
    stream: TcpStream,
    _place: OwnedSemaphorePermit,
    activity: Arc<Activity>,
    idle_timeout: Duration,
    /// HTTP/1.x only ([`Connection::read_heads_within`]): how long the client may take to
    /// send a request head, counted from the end of the previous response (or from its
    /// first bytes). hyper has a timer for this, but boxes and registers a new one for every
    /// request; the idle timer below covers it for nothing.
    header_timeout: Option<Duration>,
    /// `None` once the connection is upgraded: a registered timer keeps the waker of the
    /// task that last polled it, which would pin the finished HTTP task (≈ 2.4 KiB) for the
    /// life of every WebSocket.
    timer: Option<Pin<Box<Sleep>>>,
    /// Armed when the connection went idle: when its reads end if it is still open.
    closing: Option<Pin<Box<Sleep>>>,
}

impl Connection {
    pub fn new(
        stream: TcpStream,
        place: OwnedSemaphorePermit,
        idle_timeout: Duration,
    ) -> (Self, Arc<Activity>) {
        let activity = Activity::new();
        let conn = Self {
            stream,
            _place: place,
            activity: activity.clone(),
            idle_timeout,
            header_timeout: None,
            timer: Some(Box::pin(tokio::time::sleep(idle_timeout))),
            closing: None,
        };
        (conn, activity)
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The connection is HTTP/1.x (it did not open with the HTTP/2 preface) and its first
    /// bytes have come: from now on each request head must be complete within `limit`
    /// (`server.header_read_timeout_ms`) of the previous response's end, or of now for the
    /// first, else its reads end (hyper closes the connection, as its own header read
    /// timeout did).
    pub fn read_heads_within(&mut self, limit: Duration) {
        self.activity.touch();
        self.header_timeout = Some(limit);
        if let Some(timer) = self.timer.as_mut() {
            let head_due = Instant::now() + limit;
            if head_due < timer.deadline() {
                timer.as_mut().reset(head_due);
            }
        }
    }

    /// Whether the connection has waited too long for a request (a head, or any request for
    /// the idle timeout); otherwise keeps the timer armed. The timer never fires late:
    /// `last` only moves forward, so a deadline set from an earlier `last` (or while a
    /// request was in flight) is early, and is moved on only when it fires. Re-arming it for
    /// every request, as each one moves `last`, would take a timer removal and insertion per
    /// request.
    fn due(&mut self, cx: &mut Context<'_>) -> Due {
        let activity = &self.activity;
        if activity.upgraded.load(Ordering::Relaxed) {
            self.timer = None;
            return Due::Nothing;
        }
        let Some(timer) = self.timer.as_mut() else {
            return Due::Nothing;
        };
        // The shorter of the two limits: the first a quiet connection reaches.
        let (limit, due) = match self.header_timeout {
            Some(head) if head <= self.idle_timeout => (head, Due::HeadLate),
            _ => (self.idle_timeout, Due::Idle),
        };
        while timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let next = match activity.in_flight.load(Ordering::Acquire) {
                0 if now >= activity.last() + limit => return due,
                0 => activity.last() + limit,
                // Busy: look again a whole limit from now, after the request.
                _ => now + limit,
            };
            timer.as_mut().reset(next);
        }
        Due::Nothing
    }
}

/// A WebSocket's connection given back as its TCP stream after the upgrade, keeping its place
/// under the cap (engineioxide's writer then owns the write half: issue 32 stage 3). Any
/// other upgraded connection (an HTTP/2 stream) is given back as it is.
pub fn raw_tcp(upgraded: hyper::upgrade::Upgraded) -> Result<RawTcp, hyper::upgrade::Upgraded> {
    let parts = upgraded.downcast::<TokioIo<Connection>>()?;
    let Connection { stream, _place, .. } = parts.io.into_inner();
    Ok(RawTcp {
        stream,
        read_buf: parts.read_buf,
        keep: Box::new(_place),
    })
}

/// What a quiet connection's timer says ([`Connection::due`]).
enum Due {
    Nothing,
    /// No request for `server.idle_timeout_ms`: the connection is shut down gracefully.
    Idle,
    /// HTTP/1.x: no complete request head within `server.header_read_timeout_ms`.
    HeadLate,
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if polled.is_ready() {
            return polled;
        }
        match self.due(cx) {
            Due::Nothing => Poll::Pending,
            // End of stream: hyper closes the connection (a half-sent head is an incomplete
            // message to it), as when its own header read timeout fired.
            Due::HeadLate => {
                tracing::debug!(
                    "no complete request head within server.header_read_timeout_ms: closing"
                );
                Poll::Ready(Ok(()))
            }
            Due::Idle => {
                let closing = self.closing.get_or_insert_with(|| {
                    tracing::debug!("connection idle for server.idle_timeout_ms: shutting it down");
                    Box::pin(tokio::time::sleep(IDLE_CLOSE_GRACE))
                });
                match closing.as_mut().poll(cx) {
                    Poll::Pending => {
                        // The server task shuts the connection down on the first of these:
                        // GOAWAY for HTTP/2, a close for an idle HTTP/1.1 keep-alive.
                        self.activity.idle.notify_one();
                        Poll::Pending
                    }
                    // Still open after the grace: end of stream, hyper closes the connection
                    // as if the client had.
                    Poll::Ready(()) => Poll::Ready(Ok(())),
                }
            }
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
