//! The accept loop every listener shares: the public port, the publish socket (and its
//! optional loopback TCP port) and the admin port.
//!
//! It accepts until its shutdown moment (the public port at `draining`, the local endpoints at
//! `finished`), backing off when accepting fails (out of file descriptors and the like) instead
//! of spinning. Every connection it spawns is tracked: once accepting stops (on the public port:
//! once the sockets are closed too, see [`Until::Draining`]), each is told to close gracefully
//! ([`Drain`]) and all are waited for, until the drain deadline (`forced`) cuts the wait. What a connection does is its listener's business; only the loop is shared.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

use crate::shutdown::Shutdown;

/// How long the loop pauses after a failed accept: the failure (EMFILE…) usually lasts a
/// moment, and accepting again at once would spin a core.
const BACK_OFF: Duration = Duration::from_millis(50);

/// A listener the loop accepts on.
pub trait Listener: Send {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    type Peer: Send + 'static;
    fn accept_io(&self) -> impl Future<Output = io::Result<(Self::Io, Self::Peer)>> + Send;
}

impl Listener for TcpListener {
    type Io = TcpStream;
    type Peer = SocketAddr;
    async fn accept_io(&self) -> io::Result<(TcpStream, SocketAddr)> {
        self.accept().await
    }
}

impl Listener for UnixListener {
    type Io = UnixStream;
    type Peer = tokio::net::unix::SocketAddr;
    async fn accept_io(&self) -> io::Result<(UnixStream, Self::Peer)> {
        self.accept().await
    }
}

/// A borrowed listener stays open while its connections drain (the publish socket: its file
/// is removed only once they are done); an owned one is closed as soon as accepting stops.
impl<L: Listener + Sync> Listener for &L {
    type Io = L::Io;
    type Peer = L::Peer;
    fn accept_io(&self) -> impl Future<Output = io::Result<(Self::Io, Self::Peer)>> + Send {
        (**self).accept_io()
    }
}

/// When a listener stops accepting.
#[derive(Clone, Copy)]
pub enum Until {
    /// At the start of the drain (the public port: new clients go elsewhere). Its connections
    /// stay open until the Socket.IO sockets are closed: a long-polling client's next poll, on
    /// the connection it has, collects what was queued for it before its session closes.
    Draining,
    /// Once the public side is done (the local endpoints, which answer "draining" meanwhile).
    Finished,
}

/// How the connections of a listener ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every connection closed.
    All,
    /// The drain deadline passed with connections still open; they are left to the process
    /// exit.
    Cut,
}

/// Told to a connection when its listener stops accepting: it should close gracefully.
pub struct Drain {
    started: CancellationToken,
    watcher: Watcher,
}

impl Drain {
    /// Resolves once the listener has stopped accepting.
    pub fn started(&self) -> WaitForCancellationFuture<'_> {
        self.started.cancelled()
    }

    /// Runs a hyper connection to its end, shutting it down gracefully (open requests finish,
    /// then it closes) once the drain starts.
    pub fn serve<C: GracefulConnection>(self, conn: C) -> impl Future<Output = C::Output> {
        self.watcher.watch(conn)
    }
}

/// Accepts on `listener` until `until`, handing each connection to `connection`, which
/// returns the connection's task (spawned and tracked) or `None` to refuse it. Then closes an
/// owned listener, tells every connection to drain, and waits for them up to the deadline.
/// `failed` logs an accept error (in the listener's module, as its warning always was).
pub async fn serve<L, C, F>(
    listener: L,
    failed: fn(&io::Error),
    until: Until,
    shutdown: &Shutdown,
    mut connection: C,
) -> Drained
where
    L: Listener,
    C: FnMut(L::Io, L::Peer, Drain) -> Option<F>,
    F: Future<Output = ()> + Send + 'static,
{
    let started = CancellationToken::new();
    // Connections served through `Drain::serve` are shut down by this one; the others watch
    // `started` themselves. Either way the tracker knows when each task is done.
    let graceful = GracefulShutdown::new();
    let tasks = TaskTracker::new();
    let stop = async {
        match until {
            Until::Draining => shutdown.draining().await,
            Until::Finished => shutdown.finished().await,
        }
    };
    tokio::pin!(stop);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept_io() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    failed(&e);
                    tokio::time::sleep(BACK_OFF).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let drain = Drain {
            started: started.clone(),
            watcher: graceful.watcher(),
        };
        if let Some(task) = connection(io, peer, drain) {
            tasks.spawn(task);
        }
    }
    drop(listener);
    tasks.close();
    if let Until::Draining = until {
        tokio::select! {
            () = shutdown.sockets_closed() => {}
            () = shutdown.forced() => {}
        }
    }
    started.cancel();
    let drained = async {
        graceful.shutdown().await;
        tasks.wait().await;
    };
    tokio::select! {
        () = drained => Drained::All,
        () = shutdown.forced() => Drained::Cut,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Accepts one connection whose task ends `linger` after the drain starts (never, if
    /// `None`), then drains; returns how the drain ended and whether the task had finished.
    async fn drain_one(linger: Option<Duration>) -> (Drained, bool) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let shutdown = Shutdown::new();
        let finished = Arc::new(AtomicBool::new(false));
        let (accepted_tx, accepted) = tokio::sync::oneshot::channel();
        let mut accepted_tx = Some(accepted_tx);
        let serving = serve(listener, |_| {}, Until::Draining, &shutdown, {
            let finished = finished.clone();
            move |stream, _peer, drain| {
                let finished = finished.clone();
                if let Some(tx) = accepted_tx.take() {
                    let _ = tx.send(());
                }
                Some(async move {
                    let _open = stream;
                    drain.started().await;
                    match linger {
                        Some(linger) => tokio::time::sleep(linger).await,
                        None => std::future::pending().await,
                    }
                    finished.store(true, Ordering::SeqCst);
                })
            }
        });
        let _client = TcpStream::connect(addr).await.expect("connect");
        let stop = async {
            accepted.await.expect("accepted");
            shutdown.begin_drain();
            shutdown.sockets_are_closed();
            tokio::time::sleep(Duration::from_millis(300)).await;
            shutdown.force();
        };
        let (drained, ()) = tokio::join!(serving, stop);
        (drained, finished.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn connections_are_waited_for_at_the_drain() {
        let (drained, finished) = drain_one(Some(Duration::from_millis(50))).await;
        assert_eq!(drained, Drained::All);
        assert!(
            finished,
            "the drain returned before the connection's task ended"
        );
    }

    /// The public port's connections are told to close only once the sockets are: a
    /// long-polling client collects its last packets on the connection it has.
    #[tokio::test]
    async fn public_connections_drain_after_the_sockets_close() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let shutdown = Shutdown::new();
        let (accepted_tx, accepted) = tokio::sync::oneshot::channel();
        let (told_tx, mut told) = tokio::sync::oneshot::channel();
        let mut txs = Some((accepted_tx, told_tx));
        let serving = serve(
            listener,
            |_| {},
            Until::Draining,
            &shutdown,
            move |stream, _, drain| {
                let (accepted_tx, told_tx) = txs.take()?;
                let _ = accepted_tx.send(());
                Some(async move {
                    let _open = stream;
                    drain.started().await;
                    let _ = told_tx.send(());
                })
            },
        );
        let _client = TcpStream::connect(addr).await.expect("connect");
        let stop = async {
            accepted.await.expect("accepted");
            shutdown.begin_drain();
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(
                told.try_recv().is_err(),
                "told to close while sockets were still open"
            );
            shutdown.sockets_are_closed();
            tokio::time::timeout(Duration::from_secs(5), &mut told)
                .await
                .expect("told to close once the sockets are")
                .expect("the connection's task ran");
        };
        let (drained, ()) = tokio::join!(serving, stop);
        assert_eq!(drained, Drained::All);
    }

    #[tokio::test]
    async fn the_deadline_cuts_the_wait() {
        let (drained, finished) = drain_one(None).await;
        assert_eq!(drained, Drained::Cut);
        assert!(!finished);
    }
}
