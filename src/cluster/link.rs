//! The [`Link`]: whether cross-instance delivery works right now, and what takes it down
//! (the subscriber connection lost, a self-check failing, a command timing out, messages
//! dropped) and brings it back (a self-check passing on a connected, subscribed connection).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::{ClientLike, EventInterface};
use tokio::sync::{Notify, watch};

use super::pubsub::PubSub;

/// Why the link is down while its connection is lost or being re-established.
pub(super) const LOST: &str = "the Redis link is down: delivering to local sockets only";
/// How a failed self-check starts the reason it gives.
const CANARY_FAILED: &str = "cluster self-check failed";

/// How long a connection to Redis (at startup, or rebuilt) may take before giving up.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The live connection to Redis, and whether cross-instance delivery works right now.
///
/// An outage starts at the first sign of trouble — the connection lost or re-established, a
/// self-check late ([`super::canary`]), a Redis command timing out on any path
/// ([`Link::suspect`]) — and ends only when a self-check passes on a connected, subscribed
/// link. Each end of an outage is counted in [`Link::restorations`]: whoever delivered only
/// locally meanwhile learns that the others can be told now.
#[derive(Clone)]
pub struct Link {
    client: SubscriberClient,
    /// The pub/sub commands cross-instance messages travel with.
    pubsub: PubSub,
    /// False from a reconnect until the adapter's channels are subscribed again.
    subscribed: Arc<AtomicBool>,
    /// Whether the current connection loss was logged already (one line per loss, not per
    /// retry).
    outage_logged: Arc<AtomicBool>,
    /// Why the link is down, while it is; `None` while cross-instance delivery works.
    down: Arc<Mutex<Down>>,
    /// Outages ended so far.
    restored: Arc<watch::Sender<u64>>,
    /// Asks for a self-check now (after a reconnect, or when a command timed out).
    recheck: Arc<Notify>,
}

/// The state of the current outage, if any.
#[derive(Default)]
struct Down {
    reason: Option<Reason>,
    /// Outages begun so far: a self-check ends the current outage only if no new sign of
    /// trouble came while it ran.
    begun: u64,
}

/// Why the link is down. Its text is what [`Link::problem`] reports; a failed self-check is
/// told apart from the other signs of trouble because a streak of them is logged once.
enum Reason {
    /// A self-check failed, with its error.
    SelfCheck(String),
    /// Any other sign of trouble, said in full.
    Trouble(String),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SelfCheck(e) => write!(f, "{CANARY_FAILED}: {e}"),
            Self::Trouble(text) => f.write_str(text),
        }
    }
}

impl Link {
    /// The link of a connection that is up and subscribed (as at startup, once it is), with
    /// `pubsub`'s commands.
    pub(super) fn new(client: SubscriberClient, pubsub: PubSub) -> Self {
        Self {
            client,
            pubsub,
            subscribed: Arc::new(AtomicBool::new(true)),
            outage_logged: Arc::new(AtomicBool::new(false)),
            down: Arc::new(Mutex::new(Down::default())),
            restored: Arc::new(watch::channel(0).0),
            recheck: Arc::new(Notify::new()),
        }
    }

    /// Whether cross-instance delivery can work right now. While it cannot, callers act
    /// locally at once instead of waiting on Redis commands that would time out.
    pub fn is_up(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
            && self.client.is_connected()
            && self.state().reason.is_none()
    }

    /// Why cross-instance delivery is off, if it is.
    pub fn problem(&self) -> Option<String> {
        if let Some(reason) = &self.state().reason {
            return Some(reason.to_string());
        }
        (!self.is_up()).then(|| LOST.into())
    }

    /// The pub/sub commands cross-instance messages travel with (and the append script
    /// publishes with).
    pub fn pubsub(&self) -> PubSub {
        self.pubsub
    }

    /// How many instances subscribe each of the `channels`, asked on the subscription
    /// connection (RESP3 takes commands there): a stalled command connection does not hold it.
    /// One command per channel: on a Redis Cluster fred sends each to the node owning the
    /// channel's slot, where its sharded subscribers are (another node counts none).
    pub async fn subscribers(
        &self,
        channels: Vec<String>,
    ) -> Result<Vec<(String, u64)>, fred::error::Error> {
        let mut counts = Vec::with_capacity(channels.len());
        for channel in channels {
            counts.extend(self.pubsub.subscribers(&self.client, channel).await?);
        }
        Ok(counts)
    }

    /// Outages ended so far; changes each time the link comes back after one.
    pub fn restorations(&self) -> watch::Receiver<u64> {
        self.restored.subscribe()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Down> {
        self.down.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts an outage (or prolongs the current one) for `reason`. Returns whether the link
    /// was up until now.
    fn take_down(&self, reason: String) -> bool {
        let mut down = self.state();
        down.begun += 1;
        let was_up = down.reason.is_none();
        if was_up {
            down.reason = Some(Reason::Trouble(reason));
        }
        was_up
    }

    /// Outages begun so far, for [`Link::canary`].
    pub(crate) fn outages_begun(&self) -> u64 {
        self.state().begun
    }

    /// A Redis command on some path did not complete in time (a stalled server, or one stalled
    /// connection): the link is taken down at once, without waiting for the next self-check,
    /// and a self-check is asked for to bring it back as soon as the path works.
    pub fn suspect(&self, reason: String) {
        if self.take_down(format!(
            "Redis did not answer in time ({reason}): delivering to local sockets only"
        )) {
            tracing::warn!("{reason}: Redis link marked down, delivering to local sockets only");
        }
        self.recheck.notify_one();
    }

    /// Cross-instance messages were received but dropped on this instance ([`driver`]; it
    /// logs once per episode, so this does not log): the link is taken down at once, and a
    /// self-check asked for to bring it back, so that this instance's sockets are told
    /// `recovery_failed` as after any outage (see [`crate::realtime`]'s outage handling).
    pub fn messages_lost(&self, reason: String) {
        self.take_down(format!(
            "{reason}: delivering to local sockets only until a self-check passes"
        ));
        self.recheck.notify_one();
    }

    /// A Redis command for `what` failed with `error`: when it timed out or its connection
    /// broke, the link is suspect (see [`Link::suspect`]); other errors (a refused command)
    /// say nothing about the link.
    pub fn command_failed(&self, what: &str, error: &fred::error::Error) {
        use fred::error::ErrorKind;
        if matches!(
            error.kind(),
            ErrorKind::Timeout | ErrorKind::IO | ErrorKind::Canceled
        ) {
            self.suspect(format!("{what}: {error}"));
        }
    }

    /// Records a self-check that started when [`Link::outages_begun`] was `begun`: a failure
    /// takes the link down (logged once per streak); a pass ends the outage if none began
    /// meanwhile and the connection is up and subscribed.
    pub(crate) fn canary(&self, begun: u64, outcome: Result<(), String>) {
        let mut down = self.state();
        match outcome {
            Ok(()) => {
                let connected =
                    self.subscribed.load(Ordering::Acquire) && self.client.is_connected();
                if down.reason.is_some() && down.begun == begun && connected {
                    tracing::info!(
                        "cluster self-check passes again; cross-instance delivery resumes"
                    );
                    down.reason = None;
                    drop(down);
                    self.restored.send_modify(|n| *n += 1);
                }
            }
            Err(e) => {
                let failing = matches!(down.reason, Some(Reason::SelfCheck(_)));
                if !failing {
                    tracing::warn!("{CANARY_FAILED}, delivering to local sockets only: {e}");
                }
                down.begun += 1;
                down.reason = Some(Reason::SelfCheck(e));
            }
        }
    }

    /// Replaces the subscriber connection (its channels are subscribed again once it is back,
    /// see [`Link::watch`]): for a path that stays broken while Redis answers, whatever broke
    /// it. Logged once per rebuild, with `reason`.
    pub(crate) fn rebuild(&self, reason: String) {
        tracing::warn!("rebuilding the Redis subscription connection: {reason}");
        let client = self.client.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, client.force_reconnection()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("reconnecting to Redis failed: {e}"),
                Err(_) => tracing::warn!("reconnecting to Redis took over {CONNECT_TIMEOUT:?}"),
            }
        });
    }

    /// Resolves when a self-check is wanted before the next tick.
    pub(crate) async fn recheck_requested(&self) {
        self.recheck.notified().await;
    }

    /// Watches the connection: logs an outage once, and after every reconnect subscribes the
    /// adapter's channels again before reporting the link up. fred's own
    /// `manage_subscriptions` replays plain channels first and stops at the first error, which
    /// left socketioxide-redis's sharded channels unsubscribed.
    pub(super) fn watch(&self, shown: String) {
        let link = self.clone();
        let url = shown.clone();
        self.client.on_error(move |(error, _)| {
            if !link.client.is_connected() {
                link.take_down(LOST.into());
                if !link.outage_logged.swap(true, Ordering::AcqRel) {
                    tracing::warn!(redis = %url, "Redis connection lost; delivering to local sockets only until it is back: {error}");
                }
            }
            async { Ok(()) }
        });
        let link = self.clone();
        let url = shown.clone();
        self.client.on_reconnect(move |_| {
            // Whatever was published to this connection's channels since it broke is lost.
            link.take_down(LOST.into());
            // A connection closed and re-established at once (Redis closed it, e.g. past
            // `client-output-buffer-limit pubsub`) was never seen as lost by `on_error`.
            if !link.outage_logged.swap(true, Ordering::AcqRel) {
                tracing::warn!(redis = %url, "Redis subscriber connection re-established after it closed; what was published meanwhile is lost: this instance's sockets are told recovery_failed once a self-check passes");
            }
            link.subscribed.store(false, Ordering::Release);
            tokio::spawn(link.clone().resubscribe(shown.clone()));
            async { Ok(()) }
        });
    }

    async fn resubscribe(self, shown: String) {
        // Both kinds: on a Redis Cluster the relay's channel is plain, the others sharded.
        let channels = [PubSub::Sharded, PubSub::Plain].map(|m| (m, m.tracked(&self.client)));
        let count: usize = channels.iter().map(|(_, c)| c.len()).sum();
        for attempt in 1..=20u32 {
            if !self.client.is_connected() {
                return; // the next reconnect starts over
            }
            let mut subscribed = Ok(());
            for (mode, some) in &channels {
                subscribed = subscribed.and(subscribe_all(*mode, &self.client, some).await);
            }
            match subscribed {
                Ok(()) => {
                    self.subscribed.store(true, Ordering::Release);
                    // A fresh connection with its subscriptions back: check it now rather than
                    // at the next tick, so delivery resumes as soon as it works.
                    self.recheck.notify_one();
                    self.outage_logged.store(false, Ordering::Release);
                    tracing::info!(redis = %shown, channels = count, "Redis connection restored; cross-instance delivery resumes once a self-check passes");
                    return;
                }
                Err(e) => {
                    tracing::warn!(redis = %shown, attempt, "re-subscribing after a Redis outage failed: {e}");
                    tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt.min(8))))
                        .await;
                }
            }
        }
    }
}

/// Subscribes `client` to the sharded `channels` again, one `SSUBSCRIBE` per channel. Redis
/// confirms each channel of an `SSUBSCRIBE` with a reply of its own, and fred takes exactly one
/// reply for it: with several channels in one command, the other confirmations were read as
/// the replies of the next commands on the connection, and from then on every command got an
/// earlier command's reply (a publish failing with "Cannot convert array to number", a
/// subscriber count belonging to another request, the last commands waiting on replies that
/// never came) until the connection was replaced.
pub async fn subscribe_each(
    client: &SubscriberClient,
    channels: &[String],
) -> Result<(), fred::error::Error> {
    subscribe_all(PubSub::Sharded, client, channels).await
}

/// [`subscribe_each`] with `pubsub`'s commands (one `SUBSCRIBE` per channel too).
async fn subscribe_all(
    pubsub: PubSub,
    client: &SubscriberClient,
    channels: &[String],
) -> Result<(), fred::error::Error> {
    for channel in channels {
        pubsub.subscribe(client, channel).await?;
    }
    Ok(())
}

#[cfg(test)]
impl Link {
    /// A link whose connection was never made (down, as while Redis is away), with a
    /// commands client on the same unconnected configuration.
    pub(crate) fn never_connected() -> (Link, fred::clients::Client) {
        let builder = fred::prelude::Builder::default_centralized();
        let link = Link {
            client: builder
                .build_subscriber_client()
                .expect("default Redis configuration"),
            pubsub: PubSub::Sharded,
            subscribed: Arc::new(AtomicBool::new(false)),
            outage_logged: Arc::new(AtomicBool::new(false)),
            down: Arc::new(Mutex::new(Down::default())),
            restored: Arc::new(watch::channel(0).0),
            recheck: Arc::new(Notify::new()),
        };
        (link, builder.build().expect("default Redis configuration"))
    }
}
