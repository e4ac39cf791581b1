//! The cluster's end-to-end self-check. A Redis connection can look healthy (connected,
//! subscribed, Redis counting the subscription) and still carry nothing: the server stopped
//! (SIGSTOP, a frozen VM), publishes refused (`CLIENT PAUSE`), or messages lost between the
//! Redis client and the adapter. So every 500 ms each instance publishes a canary and waits
//! for it to come back; when the whole check does not pass within 1 s the link counts as down
//! — the hub then delivers to local sockets only, and `/readyz` says why — until one passes
//! again. A stall is noticed within 1.5 s at worst (sooner when a command times out first, see
//! [`Link::suspect`]).
//!
//! The canary travels the path of every cross-instance message: published with `SPUBLISH`
//! (`PUBLISH` with plain pub/sub, see [`super::pubsub`]) on the adapter's connection by the
//! adapter's driver, received through the driver's dispatcher from a subscription on that same
//! connection (re-subscribed after a reconnect with the adapter's channels). Once it is back, a probe follows the rest of the way a broadcast
//! takes: a request (fetch the sockets of a room nobody is in) on this instance's own request
//! channel of the `/` namespace, from a made-up server id, must be read, decoded and answered
//! by the namespace's adapter, and its answer come back on the made-up server's response
//! channel. No other instance has to answer: each instance judges its own path.
//!
//! Checks that keep failing while Redis answers on another connection mean the subscription
//! path itself is broken (whatever broke it): after [`REBUILD_AFTER`] failures in a row, once
//! Redis answered after two failed checks in a row (so not a stall that just ended), the
//! subscriber connection is replaced and its channels subscribed again, logged once with the
//! reason and counted (`sockgate_cluster_link_rebuilds_total`); again every
//! [`REBUILD_EVERY`] failures while it stays broken.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::ClientLike;
use futures_util::StreamExt;
use socketioxide_core::Uid;
use socketioxide_core::adapter::BroadcastOptions;
use socketioxide_core::adapter::remote_packet::{RequestOut, RequestTypeOut};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};

use super::driver::ClusterDriver;
use super::link::Link;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// How often a canary is sent.
pub const INTERVAL: Duration = Duration::from_millis(500);
/// How long a whole check (the canary's round trip, then the probe) may take before the link
/// counts as down. A stall is noticed within `INTERVAL + TIMEOUT` at worst.
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// The channel canaries travel on (every instance's pass there; each waits for its own).
pub const CHANNEL: &str = "sockgate-canary#";
/// Canaries waiting to be read; the others' canaries are read while waiting for one's own.
pub const BUFFER: usize = 256;
/// Failed checks in a row, while Redis answers, before the subscription path is rebuilt.
pub const REBUILD_AFTER: u32 = 5;
/// Failed checks between two rebuilds while the path stays broken (counted from a rebuild, so
/// a streak that began while Redis did not answer is rebuilt as soon as it does).
pub const REBUILD_EVERY: u32 = 30;

/// The adapter's channel prefix and the namespace the probe goes through (socketioxide-redis's
/// default prefix; sockgate's only namespace).
const ADAPTER_PREFIX: &str = "socket.io";
const NAMESPACE: &str = "/";
/// A room no socket is ever in (sockgate's own prefix): the probe's answer stays empty.
const PROBE_ROOM: &str = "sockgate:probe";

/// Another instance counts as seen while its last canary is younger than this.
const PEER_SEEN: Duration = Duration::from_secs(5);

/// A subscription to the canary channel, and the driver to publish on it.
pub struct Canary {
    pub driver: ClusterDriver,
    pub received: MessageStream<ChanItem>,
    /// The made-up server the probe's requests come from.
    pub prober: Uid,
    /// Answers to the probe, on the made-up server's response channel.
    pub answers: MessageStream<ChanItem>,
    /// Another connection, to tell "Redis is away" from "the subscription path is broken".
    pub commands: fred::clients::Client,
}

/// The channel every instance's adapter takes requests on: its subscribers are the servers.
pub fn request_channel() -> String {
    format!("{ADAPTER_PREFIX}-request#{NAMESPACE}#")
}

/// The channel answers to server `asker`'s requests come back on (the probe's, and the
/// cluster-wide reads' of [`crate::cluster::Queries`]).
pub fn answer_channel(asker: Uid) -> String {
    format!("{ADAPTER_PREFIX}-response#{NAMESPACE}#{asker}#")
}

/// When each other instance's canary last arrived, by instance id.
type Peers = HashMap<String, Instant>;

impl Canary {
    /// Sends a canary and a probe every [`INTERVAL`] until the drain starts, tells `link`
    /// whether they came back in time, and rebuilds the link when they keep failing while
    /// Redis answers. `server` is this instance's Socket.IO server id (the adapter's).
    pub async fn run(mut self, link: Link, metrics: Arc<Metrics>, shutdown: Shutdown, server: Uid) {
        let me = instance_id();
        let mut peers = Peers::new();
        // Failed checks in a row, and how many had failed at this streak's last rebuild.
        let mut failing = 0u32;
        let mut rebuilt_at: Option<u32> = None;
        // Whether Redis answered after the last failed check (asked once a rebuild is due).
        let mut answered = false;
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
            let begun = link.outages_begun();
            // A reconnect or a timed-out command meanwhile: this round may have started on
            // the lost connection, or before the trouble; start over.
            let outcome = tokio::select! {
                outcome = self.check(canary, server, &mut peers) => outcome,
                () = link.recheck_requested() => {
                    now = true;
                    continue;
                }
            };
            peers.retain(|_, seen| seen.elapsed() < PEER_SEEN);
            metrics.cluster_canary(outcome.as_ref().ok().copied(), peers.len());
            let failure = outcome.err();
            link.canary(begun, failure.clone().map_or(Ok(()), Err));
            let Some(e) = failure else {
                (failing, rebuilt_at, answered) = (0, None, false);
                continue;
            };
            failing += 1;
            let due = failing >= REBUILD_AFTER
                && rebuilt_at.is_none_or(|at| failing - at >= REBUILD_EVERY);
            // Redis must answer after two failed checks in a row: a check sent during a stall
            // that has just ended fails although the path is fine, and Redis answers then.
            let answered_before =
                std::mem::replace(&mut answered, due && self.redis_answers().await);
            if answered && answered_before {
                rebuilt_at = Some(failing);
                metrics.cluster_link_rebuilt();
                link.rebuild(format!(
                    "{failing} self-checks in a row failed ({e}) while Redis answers"
                ));
            }
        }
    }

    /// Whether Redis answers a PING on the other connection within [`TIMEOUT`].
    async fn redis_answers(&self) -> bool {
        matches!(
            tokio::time::timeout(TIMEOUT, self.commands.ping::<String>(None)).await,
            Ok(Ok(_))
        )
    }

    /// The canary's round trip, then the probe through the namespace's adapter, within
    /// [`TIMEOUT`] in all.
    async fn check(
        &mut self,
        canary: Vec<u8>,
        server: Uid,
        peers: &mut Peers,
    ) -> Result<Duration, String> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let took = self.round_trip(canary, deadline, peers).await?;
        self.probe(server, deadline).await?;
        Ok(took)
    }

    /// Asks this instance's adapter, through Redis, for the sockets of a room nobody is in,
    /// as another instance would, and waits for its answer until `deadline`.
    async fn probe(&mut self, server: Uid, deadline: tokio::time::Instant) -> Result<(), String> {
        let mut opts = BroadcastOptions::default();
        opts.rooms.push(PROBE_ROOM.into());
        let request = RequestOut::new(self.prober, RequestTypeOut::FetchSockets, &opts);
        let id = request.id;
        let request =
            rmp_serde::to_vec(&request).map_err(|e| format!("cannot encode the probe: {e}"))?;
        let channel = format!("{ADAPTER_PREFIX}-request#{NAMESPACE}#{server}#");
        match tokio::time::timeout_at(deadline, self.driver.publish(channel, request)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("publishing the probe through Redis failed: {e}")),
            Err(_) => return Err(format!("Redis did not take the probe within {TIMEOUT:?}")),
        }
        loop {
            match tokio::time::timeout_at(deadline, self.answers.next()).await {
                Ok(Some((_, answer))) if socketioxide_redis::read_req_id(&answer) == Some(id) => {
                    return Ok(());
                }
                // A late answer to an earlier probe.
                Ok(Some(_)) => {}
                Ok(None) => return Err("the probe's answer subscription is closed".into()),
                Err(_) => {
                    return Err(format!(
                        "the namespace's adapter did not answer a request through Redis within {TIMEOUT:?}"
                    ));
                }
            }
        }
    }

    /// Publishes `canary` and waits for it to come back until `deadline`, noting the other
    /// instances' canaries read meanwhile.
    async fn round_trip(
        &mut self,
        canary: Vec<u8>,
        deadline: tokio::time::Instant,
        peers: &mut Peers,
    ) -> Result<Duration, String> {
        let sent = Instant::now();
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
