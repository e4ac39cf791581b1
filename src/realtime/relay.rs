//! Cross-instance delivery of kept messages (cluster mode with history): exactly once and in
//! order on every instance, even for a socket that joins while the messages are in flight.
//!
//! socketioxide-redis hands a broadcast straight to the receiving instance's sockets, past its
//! room locks: a socket joining there while it replays what it missed could get a message
//! twice (replayed, then live), or neither, and out of order. So a message kept in a user
//! room's stream travels on a channel of sockgate's own instead ([`CHANNEL`]), published by the
//! script that appends it (one round trip; the channel carries a room's entries in stream
//! order), and each instance delivers it to its own sockets under the room's lock, as it
//! delivers its own publishes. For each room with sockets here, this instance keeps the last
//! entry delivered (its [`Position`]):
//! - each entry names the one before it, so a broken chain (a message lost or late on the
//!   channel) is mended from the stream before the entry is delivered, and where the stream
//!   no longer has the missing entries the room's sockets are told `recovery_failed`;
//! - an entry at or before the position was delivered already (by a mend) and is dropped;
//! - a socket whose replay reached past the position skips the entries it already got.
//!
//! Instances of an older sockgate do not listen on [`CHANNEL`]. While any is connected (fewer
//! listeners than adapter servers), publishes go through the adapter as before and the channel
//! carries the entries' places only ([`Relay::everyone_listens`]).
//!
//! The entries of one append call (a batch's, or publishes made at the same moment) travel in
//! one message, one after the other, each header giving its data's length; while an instance
//! that reads one entry per message is connected, each entry is a message of its own
//! ([`BATCHES_CHANNEL`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::StreamExt;
use socketioxide::socket::Sid;
use socketioxide::{SendError, SocketError, SocketIo};
use socketioxide_redis::drivers::{ChanItem, MessageStream};
use tokio::sync::mpsc;

use super::backpressure::{Backpressure, Refusal};
use super::history::{
    Appended, Entry, Head, Journal, RedisHistory, RelayAs, Replay, STRIPES, Since,
};
use super::payload::{OffsetMeta, Payload};
use super::relayed::Relayed;
use super::relayed::{echo_prefix, header_maker};
use super::rooms::{Companions, companions};
use super::session::RECOVERY_FAILED;
use crate::cluster::{ClusterAdapter, Link};
use crate::shutdown::Shutdown;

/// The channel kept messages travel on (sharded, unless Redis has no sharded pub/sub).
pub const CHANNEL: &str = "sockgate:relay";

/// A channel nothing is published on: an instance that listens here delivers relayed
/// entries of channels (rooms other than user rooms), not only of user rooms. An older
/// sockgate listens on [`CHANNEL`] only and drops a channel's entries: while one is connected,
/// channels' messages go through the adapter ([`Relay::everyone_listens_for`]).
pub const ROOMS_CHANNEL: &str = "sockgate:relay:rooms";

/// A channel nothing is published on: an instance that listens here reads several
/// entries in one message of [`CHANNEL`]. An older sockgate reads the first alone: while one is
/// connected, each entry is published in a message of its own.
pub const BATCHES_CHANNEL: &str = "sockgate:relay:batches";

/// On a Redis Cluster, a sharded channel nothing is published on: [`CHANNEL`] is subscribed
/// plainly there (the append script may `SPUBLISH` only within its keys' slot, so it
/// `PUBLISH`es, which the cluster bus carries to every node), and a node counts only the plain
/// subscribers connected to it: an instance that relays is counted by listening here instead.
pub const CLUSTER_CHANNEL: &str = "sockgate:relay:cluster";

/// Messages buffered between the channel and the room workers, per worker.
const WORKER_BUFFER: usize = 1024;

/// How long a socket's skip is kept at most: the channel delivers in milliseconds, and a
/// message that never comes is mended from the stream when the next one does.
const SKIP_FOR: Duration = Duration::from_secs(30);

/// How often rooms that lost their last socket here are forgotten, and the listeners counted.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A stream id (`<ms>-<seq>`; sockgate numbers its entries `<n>-0`), ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct StreamId(u64, u64);

impl StreamId {
    fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(StreamId(ms.parse().ok()?, seq.parse().ok()?))
    }
}

/// An entry's place: its generation and id.
#[derive(Debug, Clone, PartialEq)]
struct Place {
    epoch: String,
    id: StreamId,
}

impl Place {
    fn of(kept: &Appended) -> Option<Self> {
        Some(Place {
            epoch: kept.epoch.clone(),
            id: StreamId::parse(&kept.id)?,
        })
    }

    /// From an offset as clients get it (`<generation>:<id>`).
    fn from_offset(offset: &str) -> Option<Self> {
        let (epoch, id) = offset.split_once(':')?;
        Some(Place {
            epoch: epoch.to_owned(),
            id: StreamId::parse(id)?,
        })
    }

    /// Whether `self` is this entry or a later one of the same generation.
    fn covers(&self, entry: &Place) -> bool {
        self.epoch == entry.epoch && self.id >= entry.id
    }
}

/// How far a room's sockets here got.
#[derive(Debug, Default)]
struct Position {
    /// The last entry delivered; `None`: the stream was empty when the first socket here
    /// joined, nothing delivered since.
    last: Option<Place>,
    /// Sockets whose replay reached further than `last`.
    skips: Vec<Skip>,
}

#[derive(Debug)]
struct Skip {
    socket: Sid,
    through: Place,
    since: Instant,
}

/// How far a joining socket's replay got.
pub enum Reached<'a> {
    /// The stream was empty.
    Empty,
    /// Through this offset.
    At(&'a str),
    /// Not known (the replay failed and the client was told to refetch).
    Unknown,
}

/// The relay of one instance.
pub struct Relay {
    history: RedisHistory,
    /// This instance's server id: its own messages coming back on the channel are dropped.
    origin: String,
    /// How every message this instance publishes on [`CHANNEL`] starts (`{"o":<origin>,`): its
    /// own messages coming back are dropped by this prefix, before they are parsed.
    echo_prefix: String,
    positions: Mutex<HashMap<String, Position>>,
    everyone_listens: AtomicBool,
    /// Every instance listens on [`ROOMS_CHANNEL`] too.
    everyone_relays_rooms: AtomicBool,
    /// Every instance listens on [`BATCHES_CHANNEL`] too.
    everyone_reads_batches: AtomicBool,
    /// `realtime.room_prefix`: tells user rooms from channels.
    room_prefix: Arc<str>,
    /// How far every instance read the relay; publishes refused while one is too far behind.
    backpressure: Arc<Backpressure>,
    /// The channel whose (sharded) subscribers are the instances that relay: [`CHANNEL`], or
    /// [`CLUSTER_CHANNEL`] on a Redis Cluster.
    listening: &'static str,
}

impl Relay {
    /// The relay of this instance (`origin`); `redis_cluster`: on a Redis Cluster (see
    /// [`CLUSTER_CHANNEL`]).
    pub fn new(
        history: RedisHistory,
        origin: String,
        room_prefix: Arc<str>,
        redis_cluster: bool,
        backpressure: Arc<Backpressure>,
    ) -> Self {
        Self {
            backpressure,
            listening: if redis_cluster {
                CLUSTER_CHANNEL
            } else {
                CHANNEL
            },
            history,
            echo_prefix: echo_prefix(&origin),
            origin,
            positions: Mutex::default(),
            everyone_listens: AtomicBool::new(false),
            everyone_relays_rooms: AtomicBool::new(false),
            everyone_reads_batches: AtomicBool::new(false),
            room_prefix,
        }
    }

    /// `Some` while publishes are refused: an instance is too far behind the relay.
    pub fn refusal(&self) -> Option<Refusal> {
        self.backpressure.refusal()
    }

    fn companions(&self, room: &str) -> Companions {
        companions(&self.room_prefix, room)
    }

    fn positions(&self) -> MutexGuard<'_, HashMap<String, Position>> {
        self.positions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether every instance listens on [`CHANNEL`]: until then (an older sockgate is still
    /// connected, or the count is not in yet), messages go through the adapter.
    pub fn everyone_listens(&self) -> bool {
        self.everyone_listens.load(Ordering::Acquire)
    }

    /// Whether `room`'s entries are delivered by every instance's relay: a user room's when
    /// [`Relay::everyone_listens`], a channel's when every instance relays channels too.
    pub fn everyone_listens_for(&self, room: &str) -> bool {
        self.everyone_listens()
            && (room.starts_with(&*self.room_prefix)
                || self.everyone_relays_rooms.load(Ordering::Acquire))
    }

    /// Keeps a message in `room`'s stream and, in the same step, relays it to the other
    /// instances — to deliver if `deliver`, else only to tell them its place. `None` if it
    /// could not be kept.
    pub async fn append(
        &self,
        room: &str,
        event: &str,
        data: &Payload,
        deliver: bool,
    ) -> Option<Appended> {
        self.append_group(room, &[(event, data)], deliver)
            .await
            .pop()?
    }

    /// [`Relay::append`] for a room's messages in order, in one call to Redis with whatever
    /// else is being kept at that moment. Per message, where it was kept; `None` for one that
    /// could not be, and for every one after it.
    pub async fn append_group(
        &self,
        room: &str,
        messages: &[(&str, &Payload)],
        deliver: bool,
    ) -> Vec<Option<Appended>> {
        let make = header_maker(&self.echo_prefix, room, deliver);
        // The group's numbers, in its order: the ones kept are its first.
        let first = self.backpressure.number(messages.len());
        let next = AtomicU64::new(first);
        let header = |event: &str, out: &mut BytesMut| {
            make(event, next.fetch_add(1, Ordering::Relaxed) + 1, out);
        };
        let one_message = self.everyone_reads_batches.load(Ordering::Acquire);
        let kept = self
            .history
            .append_group(
                room,
                messages,
                Some(RelayAs {
                    channel: CHANNEL,
                    one_message,
                    header: &header,
                }),
            )
            .await;
        let relayed = kept.iter().take_while(|k| k.is_some()).count() as u64;
        if relayed > 0 {
            self.backpressure.relayed_through(first + relayed);
        }
        kept
    }

    /// Delivers an entry to this instance's sockets of its room in chain order (mending the
    /// chain first if needed); the room's lock is held. Returns (targeted, dropped) of this
    /// entry alone: what a mend delivers before it are other messages, not more recipients.
    pub async fn deliver_here(
        &self,
        io: &SocketIo<ClusterAdapter>,
        entry: Relayed,
    ) -> (usize, usize) {
        let companions = self.companions(&entry.room);
        let Some(place) = Place::of(&entry.kept) else {
            tracing::warn!(
                room = entry.room,
                id = entry.kept.id,
                "relayed entry with an unreadable id dropped"
            );
            return (0, 0);
        };
        if !entry.deliver {
            self.passed(&entry.room, &entry.kept);
            return (0, 0);
        }
        let known = self.positions().get(&entry.room).map(|p| p.last.clone());
        let (last, follows) = match known {
            Some(Some(last)) if last.covers(&place) => return (0, 0), // delivered by a mend
            Some(Some(last)) if last.epoch == place.epoch => {
                let prev = StreamId::parse(&entry.kept.prev);
                let follows = prev.is_some_and(|prev| prev == last.id);
                (Some(last), follows)
            }
            // A new generation (the last one expired or was retired) or nothing yet: the
            // entry must be the generation's first, else the ones before it come first.
            Some(last) => (last, entry.kept.prev.is_empty()),
            // Sockets that joined without a known position (their replay failed and they
            // were told to refetch): they take the chain from here.
            None if has_sockets(io, &entry.room, &companions) => (None, true),
            None => return (0, 0),
        };
        if !follows {
            let since = match &last {
                Some(last) if last.epoch == place.epoch => {
                    Since::Client(format!("{}:{}", last.epoch, entry_id(last.id)))
                }
                _ => Since::Head(Head::Empty),
            };
            match self.history.replay(&entry.room, &since).await {
                Replay::Entries(missing) => {
                    for kept in missing {
                        let Some(at) = Place::from_offset(&kept.offset) else {
                            continue;
                        };
                        if at.epoch != place.epoch || at.id >= place.id {
                            break;
                        }
                        // A socket that misses one because its queue is full is closed
                        // (and counted) as a slow consumer by the engine.
                        self.emit_here(io, &entry.room, &companions, &at, &kept);
                    }
                }
                Replay::Gap => {
                    tracing::warn!(
                        room = entry.room,
                        "messages relayed between instances were lost and are no longer kept: the room's sockets here are told to refetch (recovery_failed)"
                    );
                    let payload = serde_json::json!({ "reason": "messages were lost between instances and are no longer kept", "room": entry.room });
                    // Sockets still replaying find the gap in their replay.
                    let _ = io
                        .local()
                        .to(entry.room.clone())
                        .emit(RECOVERY_FAILED, &payload)
                        .await;
                }
            }
        }
        let kept = Entry {
            offset: entry.kept.offset(),
            event: entry.event,
            data: entry.data,
        };
        self.emit_here(io, &entry.room, &companions, &place, &kept)
    }

    /// An entry of `room` was delivered through the adapter: only the position moves on.
    pub fn passed(&self, room: &str, kept: &Appended) {
        if let (Some(position), Some(place)) = (self.positions().get_mut(room), Place::of(kept)) {
            position.last = Some(place);
        }
    }

    /// Emits one entry to the room's sockets here, each in its shape, but not to a socket
    /// that got it already; the position moves to it.
    fn emit_here(
        &self,
        io: &SocketIo<ClusterAdapter>,
        room: &str,
        companions: &Companions,
        at: &Place,
        entry: &Entry,
    ) -> (usize, usize) {
        let skipped: Vec<Sid> = {
            let mut positions = self.positions();
            // Looked up first: a room's name is copied only the first time.
            if !positions.contains_key(room) {
                positions.insert(room.to_owned(), Position::default());
            }
            let Some(position) = positions.get_mut(room) else {
                return (0, 0); // just inserted
            };
            position.last = Some(at.clone());
            let skipped = position
                .skips
                .iter()
                .filter(|s| s.through.covers(at))
                .map(|s| s.socket)
                .collect();
            // A skip ends once the chain reaches what its socket got.
            position.skips.retain(|s| {
                s.through.epoch == at.epoch && s.through.id > at.id && s.since.elapsed() < SKIP_FOR
            });
            skipped
        };
        let recovering = companions.with_offset.clone();
        let with_offset: Vec<_> = io.local().to(recovering.clone()).sockets();
        let plain: Vec<_> = io.local().to(room.to_owned()).except(recovering).sockets();
        let meta = OffsetMeta {
            offset: &entry.offset,
            room,
        };
        let payload = (&entry.data, meta);
        let mut targeted = 0;
        let mut dropped = 0;
        let mut count = |sent: Result<(), SendError>| {
            targeted += 1;
            if matches!(
                sent,
                Err(SendError::Socket(SocketError::InternalChannelFull))
            ) {
                dropped += 1;
            }
        };
        for socket in plain.iter().filter(|s| !skipped.contains(&s.id)) {
            count(socket.emit(&*entry.event, &entry.data));
        }
        for socket in with_offset.iter().filter(|s| !skipped.contains(&s.id)) {
            count(socket.emit(&*entry.event, &payload));
        }
        (targeted, dropped)
    }

    /// A socket joined `room` here, having got everything through `reached`. The room's
    /// lock is held.
    pub fn joined(&self, room: &str, socket: Sid, reached: Reached<'_>) {
        let reached = match reached {
            Reached::Unknown => return, // told to refetch: it takes the chain as it comes
            Reached::Empty => None,
            Reached::At(offset) => match Place::from_offset(offset) {
                Some(place) => Some(place),
                None => return,
            },
        };
        let mut positions = self.positions();
        let Some(position) = positions.get_mut(room) else {
            positions.insert(
                room.to_owned(),
                Position {
                    last: reached,
                    skips: Vec::new(),
                },
            );
            return;
        };
        let Some(through) = reached else { return };
        if !position
            .last
            .as_ref()
            .is_some_and(|last| last.covers(&through))
        {
            position.skips.push(Skip {
                socket,
                through,
                since: Instant::now(),
            });
        }
    }

    /// Until the drain starts: reads [`CHANNEL`] and hands each entry of another instance to
    /// the worker of its room's lock, which delivers it here; forgets rooms with no socket
    /// left here, and counts the listeners.
    pub async fn run(
        self: Arc<Self>,
        io: SocketIo<ClusterAdapter>,
        journal: Arc<Journal>,
        mut channel: MessageStream<ChanItem>,
        markers: Vec<MessageStream<ChanItem>>,
        link: Link,
        shutdown: Shutdown,
    ) {
        // Held, never read: their subscriptions are what the other instances count.
        let _markers = markers;
        tokio::spawn(
            self.backpressure
                .clone()
                .run(link.clone(), shutdown.clone()),
        );
        let workers: Vec<mpsc::Sender<Relayed>> = (0..STRIPES)
            .map(|_| {
                let (tx, rx) = mpsc::channel(WORKER_BUFFER);
                tokio::spawn(self.clone().work(io.clone(), journal.clone(), rx));
                tx
            })
            .collect();
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        let mut unreadable_logged = false;
        loop {
            tokio::select! {
                item = channel.next() => {
                    let Some((_, bytes)) = item else { return };
                    // Its own (the entries of one message are one instance's): not parsed.
                    if bytes.starts_with(self.echo_prefix.as_bytes()) {
                        continue;
                    }
                    match Relayed::parse(&bytes) {
                        Some(entries) => {
                            // One instance's entries, numbered in order.
                            let read = entries.last().and_then(|(o, e)| Some((o.clone(), e.seq?)));
                            // In order: a room's entries go to one worker.
                            for (origin, entry) in entries {
                                if origin == self.origin {
                                    continue;
                                }
                                let worker = &workers[journal.stripe(&entry.room)];
                                if worker.send(entry).await.is_err() {
                                    return;
                                }
                            }
                            if let Some((origin, seq)) = read.filter(|(o, _)| *o != self.origin) {
                                self.backpressure.read(&origin, seq);
                            }
                        }
                        None if !unreadable_logged => {
                            unreadable_logged = true;
                            tracing::warn!("unreadable message on the Redis channel `{CHANNEL}` dropped (written by something other than sockgate?)");
                        }
                        None => {}
                    }
                }
                _ = sweep.tick() => {
                    self.sweep(&io);
                    self.count_listeners(&link).await;
                }
                _ = shutdown.draining() => return,
            }
        }
    }

    async fn work(
        self: Arc<Self>,
        io: SocketIo<ClusterAdapter>,
        journal: Arc<Journal>,
        mut entries: mpsc::Receiver<Relayed>,
    ) {
        while let Some(entry) = entries.recv().await {
            let _delivering = journal.lock(&entry.room).await;
            self.deliver_here(&io, entry).await;
        }
    }

    /// Forgets the rooms that have no socket here any more.
    fn sweep(&self, io: &SocketIo<ClusterAdapter>) {
        let rooms: Vec<String> = self.positions().keys().cloned().collect();
        for room in rooms {
            if !has_sockets(io, &room, &self.companions(&room)) {
                self.positions().remove(&room);
            }
        }
    }

    /// Compares the listeners on [`CHANNEL`] (or [`CLUSTER_CHANNEL`]) and [`ROOMS_CHANNEL`]
    /// with the adapter's servers.
    async fn count_listeners(&self, link: &Link) {
        if !link.is_up() {
            return;
        }
        let counted = link
            .subscribers(vec![
                self.listening.to_owned(),
                ROOMS_CHANNEL.to_owned(),
                BATCHES_CHANNEL.to_owned(),
                crate::cluster::canary::request_channel(),
            ])
            .await;
        let Ok(counts) = counted else { return };
        let count = |name: &str| counts.iter().find(|(c, _)| c == name).map(|(_, n)| *n);
        let (Some(listeners), Some(servers)) = (
            count(self.listening),
            count(&crate::cluster::canary::request_channel()),
        ) else {
            return;
        };
        let batches = count(BATCHES_CHANNEL).unwrap_or(0);
        self.everyone_reads_batches
            .store(batches > 0 && batches >= servers, Ordering::Release);
        let rooms = count(ROOMS_CHANNEL).unwrap_or(0);
        let relays_rooms = rooms > 0 && rooms >= servers;
        if self
            .everyone_relays_rooms
            .swap(relays_rooms, Ordering::AcqRel)
            != relays_rooms
            && !relays_rooms
        {
            tracing::warn!(
                listeners = rooms,
                instances = servers,
                "an instance of a sockgate that does not relay channels is connected: channels' messages go through the adapter (at least once across instances) until it is gone"
            );
        }
        let everyone = listeners > 0 && listeners >= servers;
        if self.everyone_listens.swap(everyone, Ordering::AcqRel) != everyone {
            if everyone {
                tracing::info!(
                    instances = servers,
                    "every instance relays kept messages: delivered in order, exactly once, across instances"
                );
            } else {
                tracing::warn!(
                    listeners,
                    instances = servers,
                    "an instance of an older sockgate is connected: messages go through the adapter (at least once across instances) until it is gone"
                );
            }
        }
    }
}

/// Whether `room` has a socket here, joined or (a user room) still replaying.
fn has_sockets(io: &SocketIo<ClusterAdapter>, room: &str, companions: &Companions) -> bool {
    let rooms: Vec<String> = std::iter::once(room.to_owned())
        .chain(companions.waiting.clone())
        .collect();
    io.local().to(rooms).count() > 0
}

fn entry_id(id: StreamId) -> String {
    format!("{}-{}", id.0, id.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_numerically() {
        let a = StreamId::parse("999-5").expect("id");
        let b = StreamId::parse("1000-0").expect("id");
        assert!(a < b);
        let at = |id: &str| Place::from_offset(&format!("g:{id}")).expect("offset");
        assert!(at("1000-0").covers(&at("999-5")));
        assert!(!at("999-5").covers(&at("1000-0")));
        let other = Place::from_offset("h:2000-0").expect("offset");
        assert!(
            !other.covers(&at("999-5")),
            "another generation covers nothing"
        );
    }
}
