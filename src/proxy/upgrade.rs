//! Tunnels for HTTP Upgrades on the app's own paths (its WebSocket endpoints, Vite HMR…).
//!
//! Once both sides have switched protocols, bytes are copied both ways until either side
//! closes. Tunnels are counted, and cut when the shutdown drain deadline passes.

use std::sync::Arc;

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

#[derive(Clone)]
pub struct Tunnels {
    tracker: TaskTracker,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
}

impl Tunnels {
    pub fn new(shutdown: Shutdown, metrics: Arc<Metrics>) -> Self {
        Self {
            tracker: TaskTracker::new(),
            metrics,
            shutdown,
        }
    }

    /// Tunnels currently open.
    pub fn open_count(&self) -> i64 {
        self.metrics.tunnels_open.get()
    }

    /// Waits until every tunnel has closed (they are cut at the drain deadline).
    pub async fn closed(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Joins the client's and the app's upgraded connections once both are ready.
    pub fn open(&self, client: OnUpgrade, app: OnUpgrade, path: String) {
        let metrics = self.metrics.clone();
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            let (client, app) = match tokio::try_join!(client, app) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(%path, "upgrade did not complete: {e}");
                    return;
                }
            };
            metrics.tunnel_opened();
            tokio::select! {
                result = copy(client, app) => {
                    if let Err(e) = result {
                        tracing::debug!(%path, "tunnel closed: {e}");
                    }
                }
                _ = shutdown.forced() => tracing::info!(%path, "tunnel cut at drain deadline"),
            }
            metrics.tunnel_closed();
        });
    }
}

async fn copy(client: Upgraded, app: Upgraded) -> std::io::Result<(u64, u64)> {
    let mut client = TokioIo::new(client);
    let mut app = TokioIo::new(app);
    tokio::io::copy_bidirectional(&mut client, &mut app).await
}
