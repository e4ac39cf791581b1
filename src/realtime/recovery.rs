//! Recovery: what a client missed, replayed from the history. The offsets a handshake asks
//! for ([`AskedOffsets`]), the shape a socket gets messages in ([`Shape`]), and [`recover`],
//! which replays a room then joins it under the room's lock — for the connect path and
//! `subscribe` alike.

use std::sync::Arc;
use std::time::Duration;

use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;

use super::history::{Head, History, Journal, Replay, Since};
use super::payload::OffsetMeta;
use super::relay::{Reached, Relay};
use super::session::{self, RECOVERY_FAILED, log_id};
use crate::metrics::Metrics;

/// What a replay needs: the history and its locks, the relay, the metrics. Shared by the
/// connect path and `subscribe`.
#[derive(Clone)]
pub(super) struct Recovery {
    pub(super) journal: Arc<Journal>,
    pub(super) relay: Option<Arc<Relay>>,
    pub(super) metrics: Arc<Metrics>,
}

impl Recovery {
    /// The history, when enabled.
    pub(super) fn history(&self) -> Option<&History> {
        self.journal.history()
    }
}

/// How a socket gets its user room's messages. Socket.IO clients in other languages call a
/// handler with every argument sent (python-socketio raises on an extra one), so the offset
/// goes only to sockets that asked for recovery.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// Exactly what was published: one argument.
    Plain,
    /// `(data, {offset, room})`: the handshake's `auth` has an `offset` key (even `null`) or
    /// an `offsets` key.
    WithOffset,
}

impl Shape {
    pub(super) fn asked(auth: Option<&serde_json::Value>) -> Self {
        match auth.filter(|a| a.get("offset").is_some() || a.get("offsets").is_some()) {
            Some(_) => Shape::WithOffset,
            None => Shape::Plain,
        }
    }
}

/// Longest offset taken from a client, in bytes (sockgate's own are under 64).
pub(super) const MAX_OFFSET_BYTES: usize = 128;

/// What a handshake's `auth.offsets` (`{"<room>": "<last offset seen>"}`) asks for, bounded:
/// at most `max` entries are read (the rooms of later ones get `recovery_failed`, as do
/// offsets that are not strings or longer than [`MAX_OFFSET_BYTES`]; an empty offset is
/// never one sockgate issued, so it makes the replay a gap). Only the user's own room and
/// its session's rooms count: an entry for any other room is dropped unread, so a client
/// never gets the history of a room it is not in.
#[derive(Default, Debug, PartialEq)]
pub(super) struct AskedOffsets {
    /// The user room's entry (`auth.offset` wins over it).
    pub(super) user: Option<String>,
    /// Session rooms to replay from the offset given.
    pub(super) rooms: Vec<(Arc<str>, String)>,
}

impl AskedOffsets {
    pub(super) fn read(
        auth: Option<&serde_json::Value>,
        user_room: &str,
        session: &[Arc<str>],
        max: usize,
        socket: &str,
    ) -> Self {
        let mut asked = AskedOffsets::default();
        let Some(map) = auth.and_then(|a| a.get("offsets")) else {
            return asked;
        };
        let Some(map) = map.as_object() else {
            if !map.is_null() {
                tracing::warn!(socket, "auth.offsets is not an object: ignored");
            }
            return asked;
        };
        let (mut past, mut bad, mut strangers) = (0usize, 0usize, 0usize);
        for (i, (room, offset)) in map.iter().enumerate() {
            let member = match session.iter().find(|r| ***r == **room) {
                Some(room) => Some(room.clone()),
                None if room == user_room => None,
                None => {
                    strangers += 1;
                    continue;
                }
            };
            let offset = match offset {
                // "Seen nothing yet": live from the join, as without an entry.
                serde_json::Value::Null => continue,
                _ if i >= max => {
                    past += 1;
                    String::new()
                }
                serde_json::Value::String(o) if o.len() <= MAX_OFFSET_BYTES && !o.is_empty() => {
                    o.clone()
                }
                _ => {
                    bad += 1;
                    String::new()
                }
            };
            match member {
                Some(room) => asked.rooms.push((room, offset)),
                None => asked.user = Some(offset),
            }
        }
        if past > 0 {
            tracing::warn!(
                socket,
                entries = map.len(),
                max,
                "auth.offsets has more entries than channels.max_rooms_per_socket: rooms past it are not replayed (recovery_failed)"
            );
        }
        if bad > 0 {
            tracing::warn!(
                socket,
                bad,
                "auth.offsets has offsets that are not strings of at most {MAX_OFFSET_BYTES} bytes: those rooms are not replayed (recovery_failed)"
            );
        }
        if strangers > 0 {
            tracing::debug!(
                socket,
                strangers,
                "auth.offsets names rooms the socket is not in: ignored"
            );
        }
        asked
    }
}

/// Replays to `socket` what `room` has after `since` (or tells it `recovery_failed`), then
/// `join`s it, under the room's lock: a publish to the room through this instance, and a
/// message relayed from another one, waits, so each message is either replayed or delivered
/// live — once, in order. Nothing is sent unless `member` holds under the lock (a socket that
/// left the room meanwhile gets none of its history). The lock is held until the returned
/// guard is dropped (a `subscribe` answers its ack first); the flag says whether it joined.
#[allow(clippy::too_many_arguments)]
pub(super) async fn recover<'a, A: Adapter>(
    socket: &SocketRef<A>,
    recovery: &'a Recovery,
    history: &History,
    room: &str,
    since: Since,
    shape: Shape,
    member: impl FnOnce() -> bool,
    join: impl FnOnce() -> bool,
) -> (tokio::sync::MutexGuard<'a, ()>, bool) {
    let publishing = recovery.journal.lock(room).await;
    if !member() {
        return (publishing, false);
    }
    let metrics = &recovery.metrics;
    let mut replayed = replay(socket, metrics, history, room, &since, shape).await;
    if !join() {
        return (publishing, false);
    }
    let relayed = recovery
        .relay
        .as_ref()
        .filter(|r| r.everyone_listens_for(room));
    let again = (relayed.is_none() && history.is_shared() && shape == Shape::WithOffset)
        .then_some(())
        .and(replayed.clone());
    if let Some(reached) = again {
        // An older instance publishes through the adapter, past this lock: a message it
        // appended after the read above may have reached this instance live before the
        // join, and so this socket neither way. Read again from where the replay ended;
        // what also came live is sent twice, and clients drop an offset that is not newer
        // than the last they saw. A socket without offsets cannot tell a repeat, so it is
        // not read again: like on a plain Socket.IO server, a message published while it
        // was joining may miss it, but none comes twice.
        let since = match reached.or(since_offset(since.clone())) {
            Some(offset) => Since::Client(offset),
            None => Since::Head(Head::Empty),
        };
        replayed = replay(socket, metrics, history, room, &since, shape)
            .await
            .map(|again| again.or(since_offset(since.clone())));
    }
    if let Some(relay) = &recovery.relay {
        let start = since_offset(since.clone());
        let reached = match &replayed {
            None => Reached::Unknown,
            Some(Some(last)) => Reached::At(last),
            Some(None) => match (&start, &since) {
                (Some(offset), _) => Reached::At(offset),
                (None, Since::Head(Head::Empty)) => Reached::Empty,
                (None, _) => Reached::Unknown,
            },
        };
        relay.joined(room, socket.id, reached);
    }
    (publishing, true)
}

/// The offset a replay starts after, if any.
fn since_offset(since: Since) -> Option<String> {
    match since {
        Since::Client(offset) | Since::Head(Head::At(offset)) => Some(offset),
        Since::Head(_) => None,
    }
}

/// Sends `socket` what `room` has after `since` in the socket's shape, or `recovery_failed`.
/// Returns `None` after a gap, else the last offset sent (`None` inside when nothing was).
async fn replay<A: Adapter>(
    socket: &SocketRef<A>,
    metrics: &Metrics,
    history: &History,
    room: &str,
    since: &Since,
    shape: Shape,
) -> Option<Option<String>> {
    match history.replay(room, since).await {
        Replay::Entries(entries) => {
            if !entries.is_empty() {
                tracing::debug!(socket = %log_id(socket.id), replayed = entries.len(), "replaying missed messages");
            }
            let last = entries.last().map(|e| e.offset.clone());
            let deadline = tokio::time::Instant::now() + REPLAY_DEADLINE;
            for entry in entries {
                let sent = match shape {
                    Shape::Plain => emit_waiting(socket, &entry.event, &entry.data, deadline).await,
                    Shape::WithOffset => {
                        let meta = OffsetMeta {
                            offset: &entry.offset,
                            room,
                        };
                        emit_waiting(socket, &entry.event, &(&entry.data, meta), deadline).await
                    }
                };
                if !sent {
                    // Closed (by the client, or below for not reading): it reconnects with
                    // the last offset it got, so nothing is skipped.
                    if session::close_now(socket) {
                        metrics.slow_consumer();
                        tracing::warn!(socket = %log_id(socket.id), "replay not read within {REPLAY_DEADLINE:?}: slow consumer disconnected");
                    }
                    return None;
                }
            }
            Some(last)
        }
        // A client that asked for no offsets and has seen nothing: there is nothing it could
        // refetch on this word, so it starts with live messages.
        Replay::Gap if shape == Shape::Plain && *since == Since::Head(Head::Unknown) => Some(None),
        Replay::Gap => {
            tracing::debug!(socket = %log_id(socket.id), "history gap: client told to refetch");
            let _ = socket.emit(
                RECOVERY_FAILED,
                &serde_json::json!({ "reason": "messages since the last offset are no longer kept", "room": room }),
            );
            None
        }
    }
}

/// How long a replay may wait for room in a socket's queue (a client that reads slower than
/// its missed messages are sent): the room lock is held meanwhile, so publishes to the user
/// through this instance wait too. Past it the socket is closed as a slow consumer.
const REPLAY_DEADLINE: Duration = Duration::from_secs(5);

/// Emits one replayed message, waiting (until `deadline`) while the socket's queue is full
/// rather than dropping it: a replay is written as fast as it can be queued, and may be longer
/// than the queue (`history.max_messages` above `realtime.max_buffer_size`). False if the
/// socket is closed or the deadline passed.
async fn emit_waiting<A: Adapter, T: serde::Serialize + ?Sized>(
    socket: &SocketRef<A>,
    event: &str,
    payload: &T,
    deadline: tokio::time::Instant,
) -> bool {
    /// The queue tells whether it is full, not when it has room again: polled.
    const RECHECK: Duration = Duration::from_millis(5);
    // An emit into a full queue closes the socket as a slow consumer: wait for room first.
    while session::queue_full(socket) {
        if tokio::time::Instant::now() >= deadline || !socket.connected() {
            return false;
        }
        tokio::time::sleep(RECHECK).await;
    }
    socket.emit(event, payload).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asked_offsets_are_bounded_and_only_for_the_sockets_rooms() {
        let session: Vec<Arc<str>> = vec!["team:1".into(), "team:2".into(), "team:3".into()];
        let read = |auth: serde_json::Value, max| {
            AskedOffsets::read(Some(&auth), "user:a", &session, max, "test")
        };
        let asked = read(
            serde_json::json!({ "offsets": {
                "team:9": "r-1",            // not a member: dropped unread
                "user:b": "r-1",            // another user's room: dropped unread
                "sockgate:recovery:b": "r-1",
                "user:a": "r-2",
                "team:1": "r-3",
                "team:2": null,             // seen nothing: live
                "team:3": "x".repeat(MAX_OFFSET_BYTES + 1),
            }}),
            100,
        );
        assert_eq!(asked.user.as_deref(), Some("r-2"));
        let rooms: Vec<(&str, &str)> = asked
            .rooms
            .iter()
            .map(|(r, o)| (&**r, o.as_str()))
            .collect();
        // An overlong offset is kept as one that names nothing: its replay is a gap.
        assert_eq!(rooms, [("team:1", "r-3"), ("team:3", "")]);
        // Entries past the bound are not replayed: their rooms get a gap.
        let mut many = serde_json::Map::new();
        for i in 0..1000 {
            many.insert(format!("junk:{i}"), "r-1".into());
        }
        many.insert("team:1".into(), "r-3".into());
        let asked = read(serde_json::json!({ "offsets": many }), 3);
        assert_eq!(asked.rooms.len(), 1);
        assert_eq!(asked.rooms[0].1, "");
        assert_eq!(
            read(serde_json::json!({ "offsets": ["team:1"] }), 3),
            AskedOffsets::default()
        );
        assert_eq!(
            read(serde_json::json!({ "offset": "r-1" }), 3),
            AskedOffsets::default()
        );
    }
}
