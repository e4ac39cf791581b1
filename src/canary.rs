//! The cluster's end-to-end self-check. A Redis connection can look healthy (connected,
//! subscribed, Redis counting the subscription) and still carry nothing: the server stopped
//! (SIGSTOP, a frozen VM), publishes refused (`CLIENT PAUSE`), or messages lost between the
//! Redis client and the adapter. So every second each instance publishes a canary and waits
//! for it to come back; when it does not within 1.5 s the link counts as down — the hub then
//! delivers to local sockets only, and `/readyz` says why — until one comes back again.
//!
//! The canary travels the path of every cross-instance message: published with `SPUBLISH` on
//! the adapter's connection by the adapter's driver, received through the driver's dispatcher
//! from a sharded subscription on that same connection (re-subscribed after a reconnect with
//! the adapter's channels). Only the channel is ours, so no socket, room or adapter request
//! is involved and no other instance has to answer: each instance judges its own path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use socketioxide_redis::drivers::fred::FredDriver;
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};

use crate::cluster::Link;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// How often a canary is sent.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// How long a canary may take to come back before the link counts as down. A stall is
/// noticed within `INTERVAL + TIMEOUT` at worst.
pub const TIMEOUT: Duration = Duration::from_millis(1500);
/// The channel canaries travel on (every instance's pass there; each waits for its own).
pub const CHANNEL: &str = "sockgate-canary#";
/// Canaries waiting to be read; the others' canaries are read while waiting for one's own.
pub const BUFFER: usize = 256;

/// Another instance counts as seen while its last canary is younger than this.
const PEER_SEEN: Duration = Duration::from_secs(5);

/// A subscription to the canary channel, and the driver to publish on it.
pub struct Canary {
    pub driver: FredDriver,
    pub received: MessageStream<ChanItem>,
}

/// When each other instance's canary last arrived, by instance id.
type Peers = HashMap<String, Instant>;

impl Canary {
    /// Sends a canary every [`INTERVAL`] until the drain starts, and tells `link` whether it
    /// came back in time.
    pub async fn run(mut self, link: Link, metrics: Arc<Metrics>, shutdown: Shutdown) {
        let me = instance_id();
        let mut peers = Peers::new();
        let mut ticker = tokio::time::interval(INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut now = false;
        for seq in 0u64.. {
            if !std::mem::take(&mut now) {
                tokio::select! {
                    _ = ticker.tick() => {}
                    () = link.recheck_requested() => ticker.reset(),
                    _ = shutdown.draining() => return,
                }
            }
            let canary = format!("{me}:{seq}").into_bytes();
            // A reconnect meanwhile: this round may have started on the lost connection;
            // start over on the new one.
            let outcome = tokio::select! {
                outcome = self.round_trip(canary, &mut peers) => outcome,
                () = link.recheck_requested() => {
                    now = true;
                    continue;
                }
            };
            peers.retain(|_, seen| seen.elapsed() < PEER_SEEN);
            metrics.cluster_canary(outcome.as_ref().ok().copied(), peers.len());
            link.canary(outcome.map(|_| ()));
        }
    }

    /// Publishes `canary` and waits for it to come back, within [`TIMEOUT`] in all, noting
    /// the other instances' canaries read meanwhile.
    async fn round_trip(&mut self, canary: Vec<u8>, peers: &mut Peers) -> Result<Duration, String> {
        let sent = Instant::now();
        let deadline = tokio::time::Instant::from_std(sent + TIMEOUT);
        match tokio::time::timeout_at(
            deadline,
            self.driver.publish(CHANNEL.into(), canary.clone()),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("publishing through Redis failed: {e}")),
            Err(_) => return Err(format!("Redis did not take a publish within {TIMEOUT:?}")),
        }
        loop {
            match tokio::time::timeout_at(deadline, self.received.next()).await {
                Ok(Some((_, data))) if data == canary => return Ok(sent.elapsed()),
                Ok(Some((_, data))) => {
                    // Another instance's canary, or one of ours that came back too late.
                    let id = String::from_utf8_lossy(&data);
                    let id = id.split(':').next().unwrap_or_default();
                    if !canary.starts_with(id.as_bytes()) {
                        peers.insert(id.to_owned(), Instant::now());
                    }
                }
                Ok(None) => return Err("the canary subscription is closed".into()),
                Err(_) => {
                    return Err(format!(
                        "a message published through Redis did not come back within {TIMEOUT:?}"
                    ));
                }
            }
        }
    }
}

/// Tells this instance's canaries from the others' (unique enough: process id, start time
/// and a per-process random hash seed).
fn instance_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let seed = RandomState::new().hash_one(nanos);
    format!("{:x}-{:x}", std::process::id(), seed)
}
