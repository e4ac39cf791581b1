//! Shutdown: the moments every long-lived task watches.
//!
//! `draining` starts on SIGTERM/SIGINT: the public listener stops accepting, readiness fails,
//! in-flight work may finish. `sockets_closed` follows once every Socket.IO socket has been
//! closed: only then are the public connections told to close, because a long-polling client
//! collects what was queued for it (its close packet last) with one more request on the
//! connection it already has — new connections are refused by then. `forced` fires when the drain deadline passes: whatever is still
//! open (tunnels, sockets, slow responses) is cut so the process can exit. `finished` comes
//! once the public side is done: the local endpoints (publish socket, admin listener), which
//! kept answering meanwhile — readiness says "draining" there — close last. `aborted` (a second
//! signal) forces at once and skips the app's grace too.

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

#[derive(Clone, Default)]
pub struct Shutdown {
    draining: CancellationToken,
    sockets_closed: CancellationToken,
    forced: CancellationToken,
    finished: CancellationToken,
    aborted: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn begin_drain(&self) {
        self.draining.cancel();
    }

    /// Every Socket.IO socket is closed (or the realtime side has none).
    pub fn sockets_are_closed(&self) {
        self.sockets_closed.cancel();
    }

    pub fn sockets_closed(&self) -> WaitForCancellationFuture<'_> {
        self.sockets_closed.cancelled()
    }

    pub fn force(&self) {
        self.draining.cancel();
        self.forced.cancel();
    }

    pub fn finish(&self) {
        self.finished.cancel();
    }

    pub fn finished(&self) -> WaitForCancellationFuture<'_> {
        self.finished.cancelled()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    pub fn draining(&self) -> WaitForCancellationFuture<'_> {
        self.draining.cancelled()
    }

    pub fn forced(&self) -> WaitForCancellationFuture<'_> {
        self.forced.cancelled()
    }

    /// A second signal: stop now, without waiting for anything (not even the app's grace).
    pub fn abort(&self) {
        self.force();
        self.aborted.cancel();
    }

    pub fn aborted(&self) -> WaitForCancellationFuture<'_> {
        self.aborted.cancelled()
    }
}

/// Resolves on the first SIGTERM or SIGINT (what `docker stop`, Railway and Ctrl-C send).
pub async fn termination_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}
