//! sockgate's own keep-alive connections to the app (issue 34, stage 2).
//!
//! A connection is a hyper `conn::http1` pair: the `SendRequest` that hands it a request and
//! the `Connection` that does the I/O. No task of its own polls the `Connection`: whoever
//! holds the pair drives it, the exchange until the response head arrives, then the response
//! body ([`AppBody`]) on the task that streams it to the client. No dispatch task per
//! connection, no hop between tasks per request, no pool key to hash.
//!
//! Idle connections wait on a stack (the last one used is the next one out: its socket and
//! buffers are warm, and the old ones at the bottom time out), at most
//! `upstream.pool_max_idle_per_host` of them, none older than `upstream.pool_idle_timeout_ms`
//! (below Node's 5 s keep-alive). A connection is polled once when it is taken: one that Node
//! has closed meanwhile is seen then and dropped. A connection goes back when its response
//! body has ended; a body dropped before its end (the client went away) takes its connection
//! with it, closed.

use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::upload::Upload;

/// A request body sent upstream: the client's streamed body, or one of sockgate's own
/// (empty for a `GET`: hyper sends no `Content-Length` for a body that is already at its end).
pub type UpstreamBody = Either<Upload, Full<Bytes>>;

type Io = TokioIo<TcpStream>;

/// A request the app did not answer, and the request itself when it was never written (the
/// connection closed before it could be).
type Unanswered = TrySendError<Request<UpstreamBody>>;

/// One connection to the app.
struct Conn {
    sender: http1::SendRequest<UpstreamBody>,
    io: http1::Connection<Io, UpstreamBody>,
}

impl Conn {
    /// Drives the connection's I/O; `false` once it is closed.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        Pin::new(&mut self.io).poll(cx).is_pending()
    }
}

struct Idle {
    /// Boxed once for its life: moved as a pointer from the stack to a request, to its
    /// response body and back.
    conn: Box<Conn>,
    since: Instant,
}

/// The app's connections, shared by every clone of [`super::Upstream`].
#[derive(Clone)]
pub(super) struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    /// Oldest at the bottom, last returned on top.
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    authority: Authority,
    connect_timeout: Duration,
    builder: http1::Builder,
    /// The task that closes connections left idle too long (started with the first one).
    reaper: AtomicBool,
}

impl Pool {
    pub(super) fn new(
        authority: Authority,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        let mut builder = http1::Builder::new();
        // Keep the client's header case and order as they came in where hyper allows it.
        builder.preserve_header_case(true).title_case_headers(false);
        Self {
            shared: Arc::new(Shared {
                idle: Mutex::new(Vec::new()),
                max_idle,
                idle_timeout,
                authority,
                connect_timeout,
                builder,
                reaper: AtomicBool::new(false),
            }),
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection, or a new one, and
    /// returns the response with the connection riding on its body. A request that a reused
    /// connection never wrote (it closed under it) is sent again, on another connection. An
    /// `Upgrade` request's connection is handed to a task of its own, never to come back.
    pub(super) async fn request(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<AppBody>, String> {
        let upgrade = req.headers().contains_key(header::UPGRADE);
        loop {
            let (conn, reused) = match self.shared.checkout() {
                Some(conn) => (conn, true),
                None => (self.shared.connect().await?, false),
            };
            let answer = match upgrade {
                true => upgrade_exchange(conn, req).await,
                false => self.exchange(conn, req).await,
            };
            match answer {
                Ok(resp) => return Ok(resp),
                Err(mut unanswered) => match unanswered.take_message() {
                    Some(unwritten) if reused => {
                        tracing::debug!(
                            "a reused app connection closed before the request was written; sending it again"
                        );
                        req = unwritten;
                    }
                    _ => return Err(describe(&unanswered.into_error())),
                },
            }
        }
    }

    /// Writes `req` on `conn` and drives it until the response head is in.
    async fn exchange(
        &self,
        mut conn: Box<Conn>,
        req: Request<UpstreamBody>,
    ) -> Result<Response<AppBody>, Unanswered> {
        let mut sent = pin!(conn.sender.try_send_request(req));
        let mut conn = Some(conn);
        // Only the connection answers, and only while it is driven here: `sent` is polled
        // without a waker. The connection is driven without one first (hyper's channels
        // would keep this task's waker and wake it again for what it takes in this very
        // poll), and with this task's only when that brought nothing.
        let mut step = |cx: &mut Context<'_>| {
            if let Some(open) = conn.as_mut()
                && !open.drive(cx)
            {
                // Closed: dropping it answers the request (with the request, if unwritten).
                conn = None;
            }
            sent.as_mut().poll(&mut Context::from_waker(Waker::noop()))
        };
        let resp = poll_fn(|cx| match step(&mut Context::from_waker(Waker::noop())) {
            Poll::Pending => step(cx),
            answered => answered,
        })
        .await?;
        Ok(resp.map(|body| AppBody {
            body,
            conn,
            pool: Arc::downgrade(&self.shared),
        }))
    }
}

/// An `Upgrade` request: its connection becomes the app's end of a tunnel if the app
/// switches protocols, so it runs on a task of its own, which keeps it until it is over.
async fn upgrade_exchange(
    conn: Box<Conn>,
    req: Request<UpstreamBody>,
) -> Result<Response<AppBody>, Unanswered> {
    let Conn { mut sender, io } = *conn;
    tokio::spawn(async move {
        if let Err(e) = io.with_upgrades().await {
            tracing::debug!("app connection of an upgrade request: {e}");
        }
    });
    let resp = sender.try_send_request(req).await?;
    Ok(resp.map(|body| AppBody {
        body,
        conn: None,
        pool: Weak::new(),
    }))
}

impl Shared {
    fn idle(&self) -> MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the connections idle for too long off the bottom of `idle` (to be closed once
    /// the lock is released).
    fn expire(&self, idle: &mut Vec<Idle>, now: Instant) -> Vec<Idle> {
        let fresh = idle
            .iter()
            .position(|held| now.duration_since(held.since) < self.idle_timeout)
            .unwrap_or(idle.len());
        idle.drain(..fresh).collect()
    }

    /// The most recently returned idle connection that is still open and ready. It is polled
    /// without a waker: the request's exchange polls it again at once, with the task's own
    /// (and sending it the request then wakes no task).
    fn checkout(&self) -> Option<Box<Conn>> {
        let cx = &mut Context::from_waker(Waker::noop());
        loop {
            let mut idle = self.idle();
            let top = idle.pop()?;
            if top.since.elapsed() >= self.idle_timeout {
                // Everything below it is older still.
                let stale = std::mem::take(&mut *idle);
                drop(idle);
                drop((top, stale));
                return None;
            }
            drop(idle);
            let mut conn = top.conn;
            if conn.drive(cx) && conn.sender.is_ready() {
                return Some(conn);
            }
        }
    }

    /// Takes `conn` back (its last response is over), unless the stack is full.
    fn put(self: &Arc<Self>, conn: Box<Conn>) {
        let now = Instant::now();
        let mut idle = self.idle();
        let stale = self.expire(&mut idle, now);
        let extra = match idle.len() < self.max_idle {
            true => {
                idle.push(Idle { conn, since: now });
                None
            }
            false => Some(conn),
        };
        drop(idle);
        drop((stale, extra));
        if !self.reaper.swap(true, Ordering::Relaxed) {
            self.start_reaper();
        }
    }

    /// Closes idle connections past their timeout when no request comes to do it.
    fn start_reaper(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = Arc::downgrade(self);
        let every = self.idle_timeout.max(Duration::from_millis(100));
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let mut idle = shared.idle();
                let stale = shared.expire(&mut idle, Instant::now());
                drop(idle);
                drop(stale);
            }
        });
    }

    /// A new connection to the app.
    async fn connect(&self) -> Result<Box<Conn>, String> {
        let connecting = TcpStream::connect(self.authority.as_str());
        let tcp = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(elapsed) => return Err(elapsed.to_string()),
        };
        // As hyper-util's connector did: no Nagle delay, and a dead peer noticed in time.
        let _ = tcp.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(30));
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        let (sender, io) = self
            .builder
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| describe(&e))?;
        Ok(Box::new(Conn { sender, io }))
    }
}

/// The app's response body, driving its connection as it is read; the connection goes back
/// to the pool when the body ends, and is closed if the body is dropped before.
pub struct AppBody {
    body: Incoming,
    /// `None` once given back, closed, or owned by an upgrade task.
    conn: Option<Box<Conn>>,
    pool: Weak<Shared>,
}

impl AppBody {
    /// Drives the connection with `cx` and polls the body (without a waker while the
    /// connection is open; with `cx` once it is closed and dropped, which ends the body).
    fn drive_then_poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(conn) = self.conn.as_mut() {
            if conn.drive(cx) {
                let unwoken = &mut Context::from_waker(Waker::noop());
                return Pin::new(&mut self.body).poll_frame(unwoken);
            }
            self.conn = None;
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }

    /// Gives the connection back if it is open; one still busy (the app answered before it
    /// read the whole request body) is driven on a task until it is ready. Polled without a
    /// waker: whoever takes it next polls it first.
    fn release(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        if !conn.drive(&mut Context::from_waker(Waker::noop())) {
            return;
        }
        if conn.sender.is_ready() {
            pool.put(conn);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let ready = poll_fn(|cx| match conn.drive(cx) {
                false => Poll::Ready(false),
                true if conn.sender.is_ready() => Poll::Ready(true),
                true => Poll::Pending,
            })
            .await;
            if ready {
                pool.put(conn);
            }
        });
    }
}

impl Body for AppBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        // Only this connection fills the body, and only while it is driven here, so the body
        // is polled without a waker: first for what is already in, then after driving the
        // connection without a waker (hyper's channel would keep this task's and wake it
        // again for the frame taken in this very poll), then with this task's waker.
        let unwoken = &mut Context::from_waker(Waker::noop());
        let mut polled = match this.conn {
            Some(_) => Pin::new(&mut this.body).poll_frame(unwoken),
            None => Pin::new(&mut this.body).poll_frame(cx),
        };
        if polled.is_pending() {
            polled = this.drive_then_poll(unwoken);
        }
        if polled.is_pending() {
            polled = this.drive_then_poll(cx);
        }
        match &polled {
            Poll::Ready(Some(Ok(_))) if !this.body.is_end_stream() => {}
            Poll::Ready(None | Some(Ok(_))) => this.release(),
            Poll::Ready(Some(Err(_))) => this.conn = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for AppBody {
    fn drop(&mut self) {
        // A body over before it was read (no content, `HEAD`, `304`) still gives its
        // connection back; one cut short does not.
        if self.conn.is_some() && self.body.is_end_stream() {
            self.release();
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

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    async fn app() -> (TcpListener, Pool) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let authority = listener.local_addr().expect("addr").to_string();
        let authority = authority.parse().expect("authority");
        let pool = Pool::new(authority, Duration::from_secs(1), Duration::from_secs(4), 2);
        (listener, pool)
    }

    fn get() -> Request<UpstreamBody> {
        Request::get("/")
            .header(header::HOST, "app.test")
            .body(Either::Right(Full::default()))
            .expect("request")
    }

    /// A connection the app has already closed (its FIN has arrived).
    async fn closed_by_the_app(listener: &TcpListener, pool: &Pool) -> Box<Conn> {
        let conn = pool.shared.connect().await.expect("connect");
        drop(listener.accept().await.expect("accept"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn
    }

    #[tokio::test]
    async fn a_request_a_closed_connection_never_wrote_comes_back() {
        let (listener, pool) = app().await;
        let conn = closed_by_the_app(&listener, &pool).await;
        let Err(mut unanswered) = pool.exchange(conn, get()).await else {
            panic!("a closed connection answered");
        };
        assert!(
            unanswered.take_message().is_some(),
            "the request was not given back: {}",
            unanswered.error()
        );
    }

    #[tokio::test]
    async fn checkout_passes_over_a_connection_the_app_closed() {
        let (listener, pool) = app().await;
        let conn = closed_by_the_app(&listener, &pool).await;
        pool.shared.put(conn);
        let taken = pool.shared.checkout();
        assert!(taken.is_none(), "a closed connection was handed out");
        assert!(pool.shared.idle().is_empty());
    }

    #[tokio::test]
    async fn the_stack_keeps_no_more_than_its_bound() {
        let (listener, pool) = app().await;
        let mut accepted = Vec::new();
        for _ in 0..3 {
            let conn = pool.shared.connect().await.expect("connect");
            accepted.push(listener.accept().await.expect("accept"));
            pool.shared.put(conn);
        }
        assert_eq!(
            pool.shared.idle().len(),
            2,
            "the bound is 2; the third is closed"
        );
    }
}
