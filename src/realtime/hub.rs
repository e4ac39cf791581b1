//! The hub: how the rest of sockgate reaches sockets. Publishing, kicking a user, presence and
//! counts all go through here, so delivery has one path — in-memory on a single instance, or
//! through the Redis adapter across instances (falling back to local delivery while Redis is
//! away).

use std::collections::HashSet;
use std::sync::Arc;

use socketioxide::adapter::LocalAdapter;
use socketioxide::{BroadcastError, SocketIo, TransportType};

use super::delivery::{HubError, emit_locally, full_count};
use super::figures::{Coverage, HubStats, Presence, RoomInfo};
use super::history::Journal;
use super::outage::Outages;
use super::payload::{OffsetMeta, Payload};
use super::relay::Relay;
use super::relayed::Relayed;
use super::rooms::{
    CONNECTING_ROOM_PREFIX, Companions, OFFSETS_ROOM_PREFIX, RECOVERY_ROOM_PREFIX, companions,
    connecting_room,
};
use super::roster::Roster;
use super::session::disconnect;
use crate::cluster::{ClusterAdapter, Link, Queries};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Who a message is for.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    User(String),
    Users(Vec<String>),
    Room(String),
    Broadcast,
}

enum Io {
    Local(SocketIo<LocalAdapter>),
    // Boxed: the Redis clients it holds are large, and a hub has one `Io` for its life.
    Cluster(SocketIo<ClusterAdapter>, Outages, Box<Queries>),
}

/// How many rooms of one batch are published to at once.
const BATCH_ROOMS_AT_ONCE: usize = 64;

pub struct Hub {
    io: Io,
    room_prefix: String,
    metrics: Arc<Metrics>,
    journal: Arc<Journal>,
    /// Cross-instance delivery of kept messages (cluster mode with history).
    relay: Option<Arc<Relay>>,
    roster: Arc<Roster>,
    /// Set by [`Hub::close_all`]: socketioxide has dropped its namespaces then, and asking it
    /// for sockets panics.
    closed: std::sync::atomic::AtomicBool,
}

/// Runs `$body` with `$io` bound to the `SocketIo` whatever its adapter.
macro_rules! with_io {
    ($hub:expr, $io:ident => $body:expr) => {
        match &$hub.io {
            Io::Local($io) => $body,
            Io::Cluster($io, ..) => $body,
        }
    };
}

impl Hub {
    pub fn local(
        io: SocketIo<LocalAdapter>,
        room_prefix: String,
        metrics: Arc<Metrics>,
        journal: Arc<Journal>,
        roster: Arc<Roster>,
    ) -> Self {
        Self {
            io: Io::Local(io),
            room_prefix,
            metrics,
            journal,
            relay: None,
            roster,
            closed: Default::default(),
        }
    }

    #[allow(clippy::too_many_arguments)] // what a cluster hub is built from, each once
    pub fn cluster(
        io: SocketIo<ClusterAdapter>,
        link: Link,
        queries: Queries,
        room_prefix: String,
        metrics: Arc<Metrics>,
        journal: Arc<Journal>,
        relay: Option<Arc<Relay>>,
        roster: Arc<Roster>,
    ) -> Self {
        Self {
            io: Io::Cluster(io, Outages::new(link), Box::new(queries)),
            room_prefix,
            metrics,
            journal,
            relay,
            roster,
            closed: Default::default(),
        }
    }

    fn user_room(&self, user_id: &str) -> String {
        format!("{}{user_id}", self.room_prefix)
    }

    /// Every room a socket of `user_id` can be in: its user room, and the room it waits in
    /// while its missed messages are replayed. A kick or a presence check must see both.
    fn user_rooms(&self, user_id: &str) -> Vec<String> {
        vec![self.user_room(user_id), connecting_room(user_id)]
    }

    /// The cluster's `SocketIo` while Redis is reachable; `None` means "act locally".
    fn cluster_io(&self) -> Option<&SocketIo<ClusterAdapter>> {
        match &self.io {
            Io::Cluster(io, outages, _) if outages.link().is_up() => Some(io),
            _ => None,
        }
    }

    /// In cluster mode, until the drain starts: once the link is back after an outage, tells
    /// the sockets that may have missed messages meanwhile (see [`super::outage`]).
    pub async fn tell_after_outages(self: Arc<Self>, shutdown: Shutdown) {
        if let Io::Cluster(io, outages, _) = &self.io {
            outages.tell_after_outages(io, shutdown).await;
        }
    }

    /// Emits `event` with `data` to the target's sockets; returns how many sockets on this
    /// instance were targeted. A room's messages (a user room's or a channel's; not a
    /// broadcast) get an offset and are kept in the history (when enabled); they travel as
    /// `(data, {"offset","room"})` to the sockets that asked for offsets (in the room's
    /// recovery or offsets room too) and as `data` alone to the others.
    pub async fn publish(
        &self,
        target: &Target,
        event: &str,
        data: &Payload,
    ) -> Result<usize, HubError> {
        if self.is_draining() {
            return Err(HubError::Draining);
        }
        let started = std::time::Instant::now();
        let (recipients, dropped) = match target {
            Target::Broadcast => self.deliver(None, None, event, data).await?,
            Target::User(id) => {
                self.publish_to_room(self.user_room(id), event, data)
                    .await?
            }
            Target::Users(ids) => {
                let mut total = (0, 0);
                for id in ids {
                    let (r, d) = self
                        .publish_to_room(self.user_room(id), event, data)
                        .await?;
                    total = (total.0 + r, total.1 + d);
                }
                total
            }
            Target::Room(room) => self.publish_to_room(room.clone(), event, data).await?,
        };
        self.metrics
            .published(recipients - dropped, dropped, started.elapsed());
        Ok(recipients)
    }

    /// Publishes a batch; returns the recipients on this instance. Messages to user rooms
    /// run concurrently across rooms (in cluster mode their Redis commands share round
    /// trips) and in batch order within each room; a message to any other room or a broadcast
    /// waits for the ones before it and holds back the ones after it, so every socket still
    /// receives the batch in its order.
    pub async fn publish_batch(
        &self,
        messages: &[(&Target, &str, &Payload)],
    ) -> Result<usize, HubError> {
        if self.is_draining() {
            return Err(HubError::Draining);
        }
        let mut recipients = 0;
        let mut run: Vec<usize> = Vec::new();
        for (i, (target, event, data)) in messages.iter().enumerate() {
            let alone = match target {
                Target::User(_) | Target::Users(_) => false,
                Target::Room(room) => !room.starts_with(self.room_prefix.as_str()),
                Target::Broadcast => true,
            };
            if !alone {
                run.push(i);
                continue;
            }
            recipients += self
                .publish_run(messages, &std::mem::take(&mut run))
                .await?;
            recipients += self.publish(target, event, data).await?;
        }
        recipients += self.publish_run(messages, &run).await?;
        Ok(recipients)
    }

    /// Runs messages (indexes into `messages`, all to user rooms) grouped by room: the groups
    /// at once, each group in order. Metrics count each message once, when its last room got it.
    async fn publish_run(
        &self,
        messages: &[(&Target, &str, &Payload)],
        run: &[usize],
    ) -> Result<usize, HubError> {
        use futures_util::StreamExt;
        if run.is_empty() {
            return Ok(0);
        }
        let started = std::time::Instant::now();
        let mut rooms: Vec<(String, Vec<usize>)> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = Default::default();
        for &i in run {
            let users: Vec<String> = match messages[i].0 {
                Target::User(id) => vec![self.user_room(id)],
                Target::Users(ids) => ids.iter().map(|id| self.user_room(id)).collect(),
                Target::Room(room) => vec![room.clone()],
                Target::Broadcast => Vec::new(),
            };
            for room in users {
                let at = *index.entry(room.clone()).or_insert_with(|| {
                    rooms.push((room, Vec::new()));
                    rooms.len() - 1
                });
                rooms[at].1.push(i);
            }
        }
        let mut reached = vec![(0usize, 0usize, std::time::Duration::ZERO); messages.len()];
        let mut groups =
            futures_util::stream::iter(rooms.into_iter().map(|(room, list)| async move {
                let group: Vec<_> = list
                    .iter()
                    .map(|&i| (messages[i].1, messages[i].2))
                    .collect();
                // Boxed: the group's future is several KB, and this block is moved into
                // `buffer_unordered` by value (three copies of it per room, measured).
                let got = Box::pin(self.publish_group(room, &group)).await?;
                let took = started.elapsed();
                Ok::<_, HubError>(
                    list.into_iter()
                        .zip(got)
                        .map(move |(i, got)| (i, got, took)),
                )
            }))
            .buffer_unordered(BATCH_ROOMS_AT_ONCE);
        let mut failed = None;
        while let Some(group) = groups.next().await {
            match group {
                Ok(out) => {
                    for (i, (r, d), took) in out {
                        let entry = &mut reached[i];
                        *entry = (entry.0 + r, entry.1 + d, entry.2.max(took));
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        let mut recipients = 0;
        for &i in run {
            let (r, d, took) = reached[i];
            self.metrics.published(r - d, d, took);
            recipients += r;
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(recipients),
        }
    }

    async fn publish_to_room(
        &self,
        room: String,
        event: &str,
        data: &Payload,
    ) -> Result<(usize, usize), HubError> {
        let got = self.publish_group(room, &[(event, data)]).await?;
        Ok(got.first().copied().unwrap_or_default())
    }

    /// Publishes a room's messages in order; per message, (targeted, dropped). With the relay,
    /// they are kept and relayed in one call to Redis (shared with whatever else is being kept
    /// at that moment).
    async fn publish_group(
        &self,
        room: String,
        messages: &[(&str, &Payload)],
    ) -> Result<Vec<(usize, usize)>, HubError> {
        let mut got = Vec::with_capacity(messages.len());
        let Some(history) = self.journal.history() else {
            for &(event, data) in messages {
                got.push(self.deliver(Some(room.clone()), None, event, data).await?);
            }
            return Ok(got);
        };
        // Held until delivered: a socket joining this room meanwhile replays them instead.
        let _joining = self.journal.lock(&room).await;
        let companions = companions(&self.room_prefix, &room);
        match (&self.relay, self.cluster_io()) {
            (Some(relay), Some(io)) => {
                let relayed = relay.everyone_listens_for(&room);
                let places = relay.append_group(&room, messages, relayed).await;
                for (&(event, data), kept) in messages.iter().zip(places) {
                    got.push(match kept {
                        Some(kept) if relayed => {
                            let entry = Relayed::new(room.clone(), kept, event, data);
                            let (targeted, dropped) = relay.deliver_here(io, entry).await;
                            (targeted + self.replaying(&companions), dropped)
                        }
                        Some(kept) => {
                            relay.passed(&room, &kept);
                            let offset = Some(kept.offset());
                            self.deliver_kept(&room, &companions, offset, event, data)
                                .await?
                        }
                        None => {
                            self.deliver_kept(&room, &companions, None, event, data)
                                .await?
                        }
                    });
                }
            }
            _ => {
                for &(event, data) in messages {
                    let offset = history.append(&room, event, data).await;
                    got.push(
                        self.deliver_kept(&room, &companions, offset, event, data)
                            .await?,
                    );
                }
            }
        }
        Ok(got)
    }

    /// A user's sockets still waiting for their replay (it waits for the room's lock, held
    /// by the publish): they get the message from it, so they are recipients too.
    fn replaying(&self, companions: &Companions) -> usize {
        match &companions.waiting {
            Some(waiting) => with_io!(self, io => io.local().to(waiting.clone()).count()),
            None => 0,
        }
    }

    /// Delivers a room's message through socketioxide (not the relay), with its offset when it
    /// was kept. The room's lock is held.
    async fn deliver_kept(
        &self,
        room: &str,
        companions: &Companions,
        offset: Option<String>,
        event: &str,
        data: &Payload,
    ) -> Result<(usize, usize), HubError> {
        match offset {
            Some(offset) => {
                let replaying = self.replaying(companions);
                // Two broadcasts, each encoded once: the plain one skips the sockets that get
                // offsets (in the room's offsets room too).
                let recovering = companions.with_offset.clone();
                let meta = OffsetMeta {
                    offset: &offset,
                    room,
                };
                let plain = self
                    .deliver(Some(room.to_owned()), Some(recovering.clone()), event, data)
                    .await?;
                let with_offset = self
                    .deliver(Some(recovering), None, event, &(data, meta))
                    .await?;
                Ok((plain.0 + with_offset.0 + replaying, plain.1 + with_offset.1))
            }
            None => {
                // Not kept, so no replay will carry it: sockets still waiting for their
                // replay get it live too (their replay reports the hole as a gap).
                let (delivered, dropped) = self
                    .deliver(Some(room.to_owned()), None, event, data)
                    .await?;
                let waiting = match &companions.waiting {
                    Some(waiting) => {
                        self.deliver(Some(waiting.clone()), None, event, data)
                            .await?
                    }
                    None => (0, 0),
                };
                Ok((delivered + waiting.0, dropped + waiting.1))
            }
        }
    }

    /// Hands one message to a room's sockets (all sockets when `room` is `None`) except those
    /// also in `except`: across instances through Redis while it is reachable, else to this
    /// instance's sockets.
    async fn deliver<P: serde::Serialize + ?Sized>(
        &self,
        room: Option<String>,
        except: Option<String>,
        event: &str,
        payload: &P,
    ) -> Result<(usize, usize), HubError> {
        let except: Vec<String> = except.into_iter().collect();
        if let Some(io) = self.cluster_io() {
            let local = match &room {
                Some(room) => io.local().to(room.clone()).except(except.clone()).count(),
                None => io.local().count(),
            };
            let sent = match &room {
                Some(room) => {
                    io.to(room.clone())
                        .except(except.clone())
                        .emit(event, payload)
                        .await
                }
                None => io.emit(event, payload).await,
            };
            match sent {
                Ok(()) => return Ok((local, 0)),
                // Sent to the other instances; some local sockets were full (and are closed).
                Err(BroadcastError::Socket(errors)) => return Ok((local, full_count(&errors))),
                Err(BroadcastError::Adapter(e)) => {
                    tracing::warn!("Redis publish failed, delivering locally only: {e}");
                    if let Io::Cluster(_, outages, _) = &self.io {
                        outages
                            .link()
                            .suspect(format!("a publish through Redis: {e}"));
                    }
                }
                Err(e @ BroadcastError::Serialize(_)) => {
                    return Err(HubError::Serialize(Box::new(e)));
                }
            }
        }
        if let Io::Cluster(_, outages, _) = &self.io {
            outages.delivered_locally(room.as_deref());
        }
        with_io!(self, io => match room {
            Some(room) => emit_locally(io.local().to(room).except(except), event, payload).await,
            None => emit_locally(io.local(), event, payload).await,
        })
    }

    /// Closes every socket of `user_id` (on every instance in cluster mode); returns how many
    /// were open on this one. A socket whose queue is full cannot be sent the Socket.IO
    /// disconnect packet: its transport is closed at once instead, and what was queued for it
    /// is dropped (the client reconnects, and its session is checked again).
    pub async fn disconnect_user(&self, user_id: &str) -> Result<usize, HubError> {
        if self.is_draining() {
            return Err(HubError::Draining);
        }
        let room = self.user_rooms(user_id);
        let sockets = with_io!(self, io => {
            let sockets = io.local().to(room.clone()).sockets();
            sockets.iter().for_each(disconnect);
            sockets.len()
        });
        if let Some(io) = self.cluster_io() {
            // The local sockets are closed already; this tells the other instances.
            match io.to(room).disconnect().await {
                Ok(()) => {}
                Err(BroadcastError::Socket(errors)) => {
                    tracing::debug!(?errors, "kick: sockets closing already");
                }
                Err(e) => tracing::warn!(
                    "Redis disconnect failed, sockets on other instances stay connected: {e}"
                ),
            }
        }
        Ok(sockets)
    }

    /// How many sockets `user_id` has open and the channels they are in (on every instance
    /// in cluster mode).
    pub async fn presence(&self, user_id: &str) -> Presence {
        let (sockets, rooms, coverage) = self.sockets_and_rooms(self.user_rooms(user_id)).await;
        let mut rooms: Vec<String> = rooms.into_iter().filter(|r| self.is_channel(r)).collect();
        rooms.sort();
        Presence {
            sockets,
            rooms,
            coverage,
        }
    }

    /// Who is in `room` (on every instance in cluster mode): sockets, distinct users (told by
    /// the user rooms those sockets are in), and a presence room's members.
    pub async fn room(&self, room: &str) -> RoomInfo {
        // The members are in Redis too: read at the same time, not after the sockets.
        let members = async {
            match self.roster.is_presence(room) {
                true => Some(self.roster.members(room).await),
                false => None,
            }
        };
        let ((sockets, rooms, mut coverage), members) =
            tokio::join!(self.sockets_and_rooms(vec![room.to_owned()]), members);
        // A socket still replaying its missed messages waits in its connecting room.
        let users = rooms
            .iter()
            .filter_map(|r| {
                r.strip_prefix(self.room_prefix.as_str())
                    .or_else(|| r.strip_prefix(CONNECTING_ROOM_PREFIX))
            })
            .collect::<HashSet<_>>()
            .len();
        if members.as_ref().is_some_and(Option::is_none) {
            coverage = Coverage::LOCAL;
        }
        RoomInfo {
            room: room.to_owned(),
            sockets,
            users,
            members: members.map(Option::unwrap_or_default),
            coverage,
        }
    }

    /// How many sockets are in `rooms` (every socket when empty), every room those sockets
    /// are in, and which instances that covers: in cluster mode the others are asked within
    /// one request timeout in all ([`Queries`]); the ones that did not answer are counted.
    async fn sockets_and_rooms(&self, rooms: Vec<String>) -> (usize, HashSet<String>, Coverage) {
        if self.is_draining() {
            return (0, HashSet::new(), Coverage::LOCAL);
        }
        let others = match &self.io {
            Io::Cluster(io, outages, queries) if outages.link().is_up() => {
                match queries
                    .sockets_and_rooms(rooms.clone(), io.config().server_id)
                    .await
                {
                    Ok(others) => Some(others),
                    Err(e) => {
                        tracing::warn!("cluster presence unavailable, answering locally: {e}");
                        None
                    }
                }
            }
            _ => None,
        };
        let (mut sockets, mut theirs): (usize, HashSet<String>) = with_io!(self, io => (
            io.local().to(rooms.clone()).count(),
            io.local()
                .to(rooms)
                .rooms()
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.into_owned())
                .collect(),
        ));
        let Some(others) = others else {
            return (sockets, theirs, Coverage::LOCAL);
        };
        sockets += others.sockets;
        theirs.extend(others.rooms);
        (sockets, theirs, Coverage::cluster(others.unanswered))
    }

    /// Whether `room` is a channel: neither a user room nor sockgate's own.
    fn is_channel(&self, room: &str) -> bool {
        !room.starts_with(self.room_prefix.as_str())
            && !room.starts_with(crate::reserved::INTERNAL_PREFIX)
    }

    pub async fn stats(&self) -> HubStats {
        if self.is_draining() {
            return HubStats {
                connections: 0,
                users: 0,
                rooms: 0,
                publishes: self.metrics.publishes_total(),
                deliveries: self.metrics.deliveries_total(),
                coverage: Coverage::LOCAL,
            };
        }
        let (connections, rooms, coverage) = self.sockets_and_rooms(Vec::new()).await;
        // A user counts from the handshake on, like in presence: a socket still replaying
        // missed messages waits in its connecting room, not yet in the user room.
        let mut users = HashSet::new();
        let mut public_rooms = 0;
        for room in &rooms {
            if let Some(user) = room.strip_prefix(CONNECTING_ROOM_PREFIX) {
                users.insert(user);
                continue;
            }
            // Its sockets are in their user room (or channel) too.
            if room.starts_with(RECOVERY_ROOM_PREFIX) || room.starts_with(OFFSETS_ROOM_PREFIX) {
                continue;
            }
            public_rooms += 1;
            if let Some(user) = room.strip_prefix(self.room_prefix.as_str()) {
                users.insert(user);
            }
        }
        HubStats {
            connections,
            users: users.len(),
            rooms: public_rooms,
            publishes: self.metrics.publishes_total(),
            deliveries: self.metrics.deliveries_total(),
            coverage,
        }
    }

    /// What keeps this instance from delivering across the cluster, if anything (`None` on
    /// a single instance).
    pub fn cluster_problem(&self) -> Option<String> {
        match &self.io {
            Io::Cluster(_, outages, _) => outages.link().problem(),
            Io::Local(_) => None,
        }
    }

    /// `Some` while publishes are refused: an instance is more than `cluster.max_lag` relayed
    /// messages behind (see [`super::backpressure`]).
    pub fn refusal(&self) -> Option<super::backpressure::Refusal> {
        self.relay.as_ref()?.refusal()
    }

    /// Whether the cluster link is up (`None` on a single instance).
    pub fn cluster_link_up(&self) -> Option<bool> {
        match &self.io {
            Io::Cluster(_, outages, _) => Some(outages.link().is_up()),
            Io::Local(_) => None,
        }
    }

    /// Open sockets on this instance by transport: (polling, websocket).
    pub fn sockets_by_transport(&self) -> (usize, usize) {
        if self.is_draining() {
            return (0, 0);
        }
        with_io!(self, io => {
            let sockets = io.sockets();
            let ws = sockets
                .iter()
                .filter(|s| s.transport_type() == TransportType::Websocket)
                .count();
            (sockets.len() - ws, ws)
        })
    }

    /// Whether [`Self::close_all`] has begun: this instance has no sockets any more, and
    /// publishes and kicks are refused with [`HubError::Draining`].
    pub fn is_draining(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Closes every local socket's transport: clients see a transport close and reconnect (to
    /// another instance, or to this one once it is back).
    pub async fn close_all(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        with_io!(self, io => io.close().await);
    }
}
