//! The pub/sub driver socketioxide-redis runs on in cluster mode: `SPUBLISH`, `SSUBSCRIBE`,
//! `SUNSUBSCRIBE` and `PUBSUB SHARDNUMSUB` on the subscriber connection, as
//! `socketioxide_redis::drivers::fred::FredDriver` does (or their plain counterparts, see
//! [`super::pubsub`]), and the dispatcher that hands each received message to the stream of its
//! channel — with no message lost silently.
//!
//! fred hands every received message to one broadcast channel
//! ([`super::PUBSUB_BUFFER`] slots), read here by one dispatcher task, which feeds one bounded
//! stream per subscribed channel (socketioxide-redis's `stream_buffer`). FredDriver drops a
//! message at once, with a WARN per message, when that stream is full, and loses what the
//! broadcast channel overwrote when the dispatcher lags. Here:
//! - a full stream is waited on, up to [`FULL_WAIT`] per message, before the message is
//!   dropped; while a channel keeps overflowing its messages are not waited on again (the
//!   dispatcher is shared by every channel, the self-check's included), until its stream takes
//!   one again;
//! - every message still lost (the dispatcher lagged, a stream stayed full) is counted
//!   (`sockgate_cluster_messages_dropped_total{cause}`), logged once per loss episode, and
//!   takes the link down ([`Link::messages_lost`]): once the self-check brings it back, every
//!   socket of this instance is told `recovery_failed` ([`crate::realtime`]'s outage
//!   handling), so a client that missed one refetches;
//! - a message for a stream whose reader is gone while still subscribed (the adapter or the
//!   self-check stopped, during the drain) is counted (`cause="closed"`) only: no socket
//!   waits on it.
//!
//! A loss episode ends when the link is restored: the next loss logs again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::{ClientLike, EventInterface};
use fred::types::Message;
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::{broadcast, mpsc, watch};

use super::link::Link;
use super::pubsub::PubSub;
use crate::metrics::{Dropped, Metrics};

/// How long a message waits for room in its channel's full stream before it is dropped.
/// Short: the dispatcher serves every channel, and the self-check fails after 1 s.
pub const FULL_WAIT: Duration = Duration::from_millis(250);

type Handlers = HashMap<String, mpsc::Sender<ChanItem>>;

/// socketioxide-redis's driver over the cluster's subscriber connection (see the module doc).
#[derive(Clone)]
pub struct ClusterDriver {
    handlers: Arc<RwLock<Handlers>>,
    conn: SubscriberClient,
    pubsub: PubSub,
}

/// A Redis error, as the [`Driver`] trait wants it.
#[derive(Debug)]
pub struct DriverError(fred::error::Error);

impl std::fmt::Display for DriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for DriverError {}

impl From<fred::error::Error> for DriverError {
    fn from(e: fred::error::Error) -> Self {
        Self(e)
    }
}

/// Where losses are reported: the link to take down, the counters, the episode's state.
pub(crate) struct Losses {
    link: Link,
    metrics: Arc<Metrics>,
    /// The link's restorations as of the current episode's start; `None` between episodes.
    episode: Option<u64>,
    restored: watch::Receiver<u64>,
}

impl Losses {
    pub(crate) fn new(link: Link, metrics: Arc<Metrics>) -> Self {
        Self {
            restored: link.restorations(),
            link,
            metrics,
            episode: None,
        }
    }

    /// `count` messages were lost for `cause`: counted, logged when an episode begins, and the
    /// link taken down so that this instance's sockets are told once it is back.
    fn lost(&mut self, cause: Dropped, count: u64, detail: &str) {
        self.metrics.cluster_messages_dropped(cause, count);
        let restorations = *self.restored.borrow_and_update();
        let reason = format!(
            "{count} cross-instance message(s) dropped on this instance ({}: {detail})",
            cause.label()
        );
        if self.episode != Some(restorations) {
            self.episode = Some(restorations);
            tracing::warn!(
                cause = cause.label(),
                "{reason}: cluster link marked down; once it is back, every socket of this \
                 instance is told recovery_failed and refetches (further drops until then are \
                 counted in sockgate_cluster_messages_dropped_total, not logged)"
            );
        }
        self.link.messages_lost(reason);
    }
}

/// Hands each message fred received to its channel's stream until fred's channel closes.
async fn dispatch(
    mut rx: broadcast::Receiver<Message>,
    handlers: Arc<RwLock<Handlers>>,
    mut losses: Losses,
) {
    // Channels whose stream stayed full: their messages are not waited on until one fits.
    let mut overflowing: HashSet<String> = HashSet::new();
    loop {
        let msg = match rx.recv().await {
            Ok(msg) => msg,
            // fred keeps its sender for the client's lifetime, across reconnects.
            Err(broadcast::error::RecvError::Closed) => return,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                losses.lost(
                    Dropped::Lagged,
                    n,
                    "the dispatcher fell behind the Redis connection",
                );
                continue;
            }
        };
        let chan = msg.channel.to_string();
        let Some(data) = msg.value.into_owned_bytes() else {
            continue;
        };
        let tx = handlers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&chan)
            .cloned();
        let Some(tx) = tx else {
            // Published before this channel's subscription, or after its unsubscription: no
            // stream of this instance wanted it.
            tracing::debug!(chan, "no handler for channel");
            continue;
        };
        deliver(&handlers, &mut overflowing, &mut losses, &tx, (chan, data)).await;
    }
}

/// Hands one message to its channel's stream `tx`: waited on up to [`FULL_WAIT`] unless the
/// channel is `overflowing`, lost (and counted) if it does not fit, dropped with its channel
/// forgotten if the stream's reader is gone.
async fn deliver(
    handlers: &RwLock<Handlers>,
    overflowing: &mut HashSet<String>,
    losses: &mut Losses,
    tx: &mpsc::Sender<ChanItem>,
    item: ChanItem,
) {
    let was_overflowing = overflowing.contains(&item.0);
    let sent = if was_overflowing {
        tx.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(item) => (item, false),
            mpsc::error::TrySendError::Closed(item) => (item, true),
        })
    } else {
        tx.send_timeout(item, FULL_WAIT).await.map_err(|e| match e {
            mpsc::error::SendTimeoutError::Timeout(item) => (item, false),
            mpsc::error::SendTimeoutError::Closed(item) => (item, true),
        })
    };
    match sent {
        Ok(()) if was_overflowing => {
            // The stream took one again: its messages are waited on again.
            overflowing.retain(|c| {
                handlers
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(c)
                    .is_some_and(|other| !other.same_channel(tx))
            });
        }
        Ok(()) => {}
        Err(((chan, _), false)) => {
            if !was_overflowing {
                overflowing.insert(chan.clone());
            }
            losses.lost(
                Dropped::Full,
                1,
                &format!("the stream of `{chan}` was full for {FULL_WAIT:?}"),
            );
        }
        Err(((chan, _), true)) => {
            // Its reader is gone although still subscribed: the namespace's adapter or the
            // self-check stopped (the drain), so no socket waits on it. Counted, forgotten
            // (counted once), not a loss to tell clients about.
            handlers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&chan);
            overflowing.remove(&chan);
            losses.metrics.cluster_messages_dropped(Dropped::Closed, 1);
            tracing::debug!(
                chan,
                "a message for a stream closed while subscribed dropped"
            );
        }
    }
}

impl ClusterDriver {
    /// Starts the dispatcher on `conn`'s received messages and connects `conn`, which
    /// publishes and subscribes with `pubsub`'s commands.
    pub(crate) async fn new(
        conn: SubscriberClient,
        losses: Losses,
        pubsub: PubSub,
    ) -> Result<Self, fred::error::Error> {
        let handlers = Arc::new(RwLock::new(HashMap::new()));
        tokio::spawn(dispatch(conn.message_rx(), handlers.clone(), losses));
        conn.init().await?;
        Ok(Self {
            handlers,
            conn,
            pubsub,
        })
    }
}

impl ClusterDriver {
    /// [`Driver::subscribe`] with `pubsub`'s command whatever the connection's mode: on a
    /// Redis Cluster the relay's channel is subscribed plainly (see [`crate::realtime`]).
    pub async fn subscribe_with(
        &self,
        pubsub: PubSub,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, DriverError> {
        let (tx, rx) = mpsc::channel(size.max(1));
        // The stream is in place before Redis confirms: nothing published just after the
        // confirmation is missed.
        self.handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(chan.clone(), tx);
        if let Err(e) = pubsub.subscribe(&self.conn, &chan).await {
            self.handlers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&chan);
            return Err(e.into());
        }
        Ok(MessageStream::new(rx))
    }
}

impl Driver for ClusterDriver {
    type Error = DriverError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        Ok(self.pubsub.publish(&self.conn, chan, val).await?)
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        self.subscribe_with(self.pubsub, chan, size).await
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&chan);
        Ok(self.pubsub.unsubscribe(&self.conn, chan).await?)
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let counts = self.pubsub.subscribers(&self.conn, chan.to_owned()).await?;
        let num = counts.first().map_or(0, |(_, n)| *n);
        Ok(u16::try_from(num).unwrap_or(u16::MAX))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use fred::prelude::Server;
    use fred::types::{MessageKind, Value};
    use tokio::time::timeout;

    use super::*;

    const SOON: Duration = Duration::from_secs(2);

    fn message(chan: &str, value: &'static [u8]) -> Message {
        Message {
            channel: chan.into(),
            kind: MessageKind::Message,
            value: Value::from_static(value),
            server: Server::new("0.0.0.0", 0),
        }
    }

    /// A dispatcher over `handlers`, fed by the returned sender; its link and metrics.
    fn start(
        capacity: usize,
        handlers: Handlers,
    ) -> (broadcast::Sender<Message>, Link, Arc<Metrics>) {
        let (link, _) = Link::never_connected();
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = broadcast::channel(capacity);
        let losses = Losses::new(link.clone(), metrics.clone());
        tokio::spawn(dispatch(rx, Arc::new(RwLock::new(handlers)), losses));
        (tx, link, metrics)
    }

    fn dropped(metrics: &Metrics, cause: &str) -> u64 {
        let needle = format!("sockgate_cluster_messages_dropped_total{{cause=\"{cause}\"}} ");
        metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(needle.as_str())?.parse().ok())
            .unwrap_or(u64::MAX)
    }

    #[tokio::test]
    async fn a_full_stream_is_waited_on_not_dropped() {
        let (slow_tx, mut slow_rx) = mpsc::channel(1);
        let (tx, link, metrics) = start(8, HashMap::from([("slow".to_string(), slow_tx)]));
        for value in [&b"first"[..], b"second", b"third"] {
            tx.send(message("slow", value)).expect("dispatcher listens");
        }
        // The reader is slow, but well within the wait.
        let mut got = Vec::new();
        for _ in 0..3 {
            tokio::time::sleep(FULL_WAIT / 5).await;
            let (_, data) = timeout(SOON, slow_rx.recv())
                .await
                .expect("in time")
                .expect("open");
            got.push(data);
        }
        assert_eq!(got, [&b"first"[..], b"second", b"third"]);
        assert_eq!(dropped(&metrics, "full"), 0);
        assert_eq!(link.problem().as_deref(), Some(super::super::link::LOST));
    }

    #[tokio::test]
    async fn a_stream_full_past_the_wait_is_counted_and_takes_the_link_down() {
        let (slow_tx, mut slow_rx) = mpsc::channel(1);
        let (other_tx, mut other_rx) = mpsc::channel(16);
        let (tx, link, metrics) = start(
            64,
            HashMap::from([
                ("slow".to_string(), slow_tx),
                ("other".to_string(), other_tx),
            ]),
        );
        let started = Instant::now();
        for _ in 0..10 {
            tx.send(message("slow", b"x")).expect("dispatcher listens");
        }
        tx.send(message("other", b"after"))
            .expect("dispatcher listens");
        let (chan, _) = timeout(SOON, other_rx.recv())
            .await
            .expect("in time")
            .expect("open");
        assert_eq!(chan, "other");
        // Waited once for the full stream, not once per message.
        assert!(
            started.elapsed() < FULL_WAIT * 3,
            "other channel served after {:?}",
            started.elapsed()
        );
        assert_eq!(dropped(&metrics, "full"), 9);
        let problem = link.problem().unwrap_or_default();
        assert!(problem.contains("dropped on this instance"), "{problem}");
        // Once the stream takes one again, it is waited on again.
        assert!(slow_rx.recv().await.is_some());
        tx.send(message("slow", b"fits"))
            .expect("dispatcher listens");
        tx.send(message("slow", b"waits"))
            .expect("dispatcher listens");
        tokio::time::sleep(FULL_WAIT / 5).await;
        for expected in [&b"fits"[..], b"waits"] {
            let (_, data) = timeout(SOON, slow_rx.recv())
                .await
                .expect("in time")
                .expect("open");
            assert_eq!(data, expected);
        }
        assert_eq!(dropped(&metrics, "full"), 9);
    }

    #[tokio::test]
    async fn lag_is_counted_with_its_size() {
        let (h_tx, mut h_rx) = mpsc::channel(16);
        let (tx, link, metrics) = start(2, HashMap::from([("c".to_string(), h_tx)]));
        // The (current-thread) dispatcher has not run yet: 3 of 5 are overwritten.
        for _ in 0..5 {
            tx.send(message("c", b"x")).expect("dispatcher listens");
        }
        for _ in 0..2 {
            timeout(SOON, h_rx.recv())
                .await
                .expect("in time")
                .expect("open");
        }
        assert_eq!(dropped(&metrics, "lagged"), 3);
        assert!(link.problem().unwrap_or_default().contains("lagged"));
    }

    #[tokio::test]
    async fn a_closed_stream_is_counted_once_and_forgotten_without_taking_the_link_down() {
        let (closed_tx, closed_rx) = mpsc::channel(1);
        drop(closed_rx);
        let (other_tx, mut other_rx) = mpsc::channel(1);
        let (tx, link, metrics) = start(
            8,
            HashMap::from([
                ("closed".to_string(), closed_tx),
                ("other".to_string(), other_tx),
            ]),
        );
        for _ in 0..3 {
            tx.send(message("closed", b"x"))
                .expect("dispatcher listens");
        }
        tx.send(message("other", b"y")).expect("dispatcher listens");
        timeout(SOON, other_rx.recv())
            .await
            .expect("in time")
            .expect("open");
        assert_eq!(dropped(&metrics, "closed"), 1);
        assert_eq!(link.problem().as_deref(), Some(super::super::link::LOST));
    }
}
