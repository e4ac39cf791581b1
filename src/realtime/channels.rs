//! Channels: the rooms a socket is in besides its user room, and who decides them.
//!
//! Two ways in, both decided by the app: the session route's answer lists rooms
//! (`auth.rooms_pointer`), joined at the handshake and kept in step by session revalidation;
//! and a client's `subscribe` (`{room}`, with an ack), which sockgate lets through only when
//! the app's authorize route (`channels.authorize_path`) answers 2xx, or when the room is under
//! a public prefix. `unsubscribe` leaves; `presence` lists a presence room's members (kept by
//! [`super::roster`], which every join and leave of a presence room is told). This module
//! decides each socket's channel membership (kept in [`super::membership`]) and its bounds
//! (rooms per socket, subscribes per second), and makes the authorize call, which runs under
//! the session check's concurrency cap and timeout.
//!
//! The user room and sockgate's internal rooms are never channels: a name under
//! `realtime.room_prefix` or `sockgate:` is refused wherever it comes from ([`RoomRules`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use serde::{Deserialize, Serialize};
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, SocketRef, TryData};

use super::auth::SessionAuth;
use super::history::{History, Since};
use super::membership::Membership;
use super::recovery::{MAX_OFFSET_BYTES, Recovery, Shape, recover};
use super::rooms::{RoomRules, offsets_room};
use super::roster::{Member, Roster};
use super::service::handshake_headers;
use super::session::{Identity, log_id};
use crate::config::Config;
use crate::webhooks::Webhooks;

/// Largest authorize-route answer read (and thrown away: only the status counts).
const MAX_AUTHORIZE_BODY: usize = 4 * 1024;

/// The client events handled here.
pub(super) const SUBSCRIBE: &str = "subscribe";
pub(super) const UNSUBSCRIBE: &str = "unsubscribe";
pub(super) const PRESENCE: &str = "presence";

/// A `subscribe`, `unsubscribe` or `presence` payload. A `subscribe` may carry `offset`: the
/// last offset the client saw in the room (replayed from there), or `null` (live, with
/// offsets).
#[derive(Deserialize)]
struct RoomRequest {
    room: String,
    /// `None` when the key is absent; `Some(Null)` for `null`.
    #[serde(default, deserialize_with = "present")]
    offset: Option<serde_json::Value>,
}

/// A field that is there, whatever its value (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// What a `subscribe` asks of the room's history.
enum Wants {
    /// Live messages in the socket's shape (no `offset` key).
    Live,
    /// Live messages as `(data, {offset, room})` (`offset: null`).
    Offsets,
    /// The messages after this offset, then live ones, all with offsets.
    After(String),
}

impl Wants {
    /// A `subscribe`'s `offset` key, or `None` when it is not one sockgate may have issued.
    fn read(offset: Option<serde_json::Value>) -> Option<Self> {
        match offset {
            None => Some(Wants::Live),
            Some(serde_json::Value::Null) => Some(Wants::Offsets),
            Some(serde_json::Value::String(o)) if !o.is_empty() && o.len() <= MAX_OFFSET_BYTES => {
                Some(Wants::After(o))
            }
            Some(_) => None,
        }
    }
}

/// A socket joining a room by `subscribe`: who it is, its channels, the room.
#[derive(Clone, Copy)]
struct Joining<'a> {
    identity: &'a Identity,
    membership: &'a Membership,
    room: &'a Arc<str>,
}

/// Every ack: `{ok:true}`, `{ok:true,members}` or `{ok:false,error}`.
#[derive(Serialize, Debug)]
struct Reply {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    members: Option<Vec<Member>>,
}

const OK: Reply = Reply {
    ok: true,
    error: None,
    members: None,
};

fn refused(error: &'static str) -> Reply {
    Reply {
        ok: false,
        error: Some(error),
        members: None,
    }
}

/// What `subscribe`/`unsubscribe`/`presence` need, shared by every socket.
pub(super) struct Channels {
    rules: RoomRules,
    auth: Arc<SessionAuth>,
    roster: Arc<Roster>,
    webhooks: Webhooks,
    authorize_path: PathAndQuery,
    public_prefixes: Vec<String>,
    per_sec: f64,
    recovery: Recovery,
}

impl Channels {
    /// Joins and leaves are told to `roster` (presence rooms) and `webhooks` (occupancy).
    pub(super) fn new(
        config: &Config,
        auth: Arc<SessionAuth>,
        roster: Arc<Roster>,
        webhooks: Webhooks,
        recovery: Recovery,
    ) -> Self {
        Self {
            rules: RoomRules::new(config),
            auth,
            roster,
            webhooks,
            authorize_path: config.channels.authorize_path.clone(),
            public_prefixes: config.channels.public_prefixes.clone(),
            per_sec: f64::from(config.channels.max_subscribes_per_sec.max(1)),
            recovery,
        }
    }

    /// `channels.max_rooms_per_socket`.
    pub(super) fn max_rooms(&self) -> usize {
        self.rules.max_rooms
    }

    /// At the handshake and on every revalidation: joins the session's rooms that are new
    /// since its last answer and leaves those it no longer lists (also when they were
    /// subscribed too: the app's latest word wins). A session room the client unsubscribed
    /// from stays left until the app lists it anew; one that does not fit under
    /// `channels.max_rooms_per_socket` (subscriptions took the places) is skipped. Rooms in
    /// `deferred` count as joined, but the socket enters them later ([`Channels::enter`], once
    /// their replay is sent).
    pub(super) fn follow_session<A: Adapter>(
        &self,
        socket: &SocketRef<A>,
        rooms: &[Arc<str>],
        deferred: &[Arc<str>],
    ) {
        // A socket with no channels has no membership: nothing to keep per idle socket.
        if rooms.is_empty() && socket.extensions.get::<Membership>().is_none() {
            return;
        }
        let Some(identity) = socket.extensions.get::<Identity>() else {
            return;
        };
        let membership = Membership::of(socket);
        let mut joined = membership.lock();
        if joined.closed {
            return;
        }
        let now: BTreeSet<Arc<str>> = rooms.iter().cloned().collect();
        let gone: Vec<Arc<str>> = joined.session.difference(&now).cloned().collect();
        let gone: Vec<Arc<str>> = gone
            .into_iter()
            .filter(|room| joined.rooms.remove(room))
            .collect();
        self.leave(socket, &identity, &gone);
        let mut new = Vec::new();
        let fresh: Vec<Arc<str>> = now.difference(&joined.session).cloned().collect();
        for (i, room) in fresh.iter().enumerate() {
            if joined.rooms.len() + joined.pending >= self.rules.max_rooms {
                tracing::warn!(socket = %log_id(socket.id), "a session room does not fit under channels.max_rooms_per_socket: skipped");
                // Entered early (`enter_early`) before subscribes took the places: left.
                let skipped: Vec<String> = fresh[i..]
                    .iter()
                    .filter(|r| !joined.rooms.contains(*r))
                    .flat_map(|r| [r.to_string(), offsets_room(r)])
                    .collect();
                socket.leave(skipped);
                break;
            }
            if joined.rooms.insert(room.clone()) {
                new.push(room.clone());
            }
        }
        if !new.is_empty() {
            tracing::debug!(socket = %log_id(socket.id), joined = new.len(), "joined the session's rooms");
            self.join(socket, &identity, &new, identity.offsets, deferred);
        }
        joined.session = now;
    }

    /// The socket closed: it leaves its presence rooms (after the grace, when it was the
    /// user's last socket there). Called from its disconnect handler.
    pub(super) fn closed<A: Adapter>(&self, socket: &SocketRef<A>) {
        let Some(identity) = socket.extensions.get::<Identity>() else {
            return;
        };
        // Made if need be, so that a `follow_session` racing with this close finds it closed.
        let membership = Membership::of(socket);
        let mut joined = membership.lock();
        joined.closed = true;
        let rooms = std::mem::take(&mut joined.rooms);
        for room in &rooms {
            self.webhooks.room_left(room);
            if self.roster.is_presence(room) {
                self.roster.left(room, &identity.user_id);
            }
        }
    }

    /// Joins `rooms` (under the membership's lock, so a presence arrival and its departure
    /// are told in the order they happen), with their offsets rooms when the socket gets
    /// offsets there; those in `deferred` are entered later ([`Channels::enter`]).
    fn join<A: Adapter>(
        &self,
        socket: &SocketRef<A>,
        identity: &Identity,
        rooms: &[Arc<str>],
        with_offsets: bool,
        deferred: &[Arc<str>],
    ) {
        if rooms.is_empty() {
            return;
        }
        let now: Vec<String> = rooms
            .iter()
            .filter(|r| !deferred.contains(r))
            .flat_map(|r| self.socket_rooms(r, with_offsets))
            .collect();
        if !now.is_empty() {
            socket.join(now);
        }
        for room in rooms {
            self.webhooks.room_joined(room);
            if self.roster.is_presence(room) {
                self.roster
                    .joined(room, &identity.user_id, identity.info.as_ref());
            }
        }
    }

    /// Leaves `rooms`, under the membership's lock like [`Channels::join`].
    fn leave<A: Adapter>(&self, socket: &SocketRef<A>, identity: &Identity, rooms: &[Arc<str>]) {
        if rooms.is_empty() {
            return;
        }
        socket.leave(
            rooms
                .iter()
                .flat_map(|r| [r.to_string(), offsets_room(r)])
                .collect::<Vec<_>>(),
        );
        for room in rooms {
            self.webhooks.room_left(room);
            if self.roster.is_presence(room) {
                self.roster.left(room, &identity.user_id);
            }
        }
    }

    /// Registers `subscribe`, `unsubscribe` and `presence` on a socket that was let in;
    /// every other client event stays unhandled (dropped unread).
    pub(super) fn register<A: Adapter>(self: &Arc<Self>, socket: &SocketRef<A>) {
        let channels = self.clone();
        socket.on(
            SUBSCRIBE,
            move |socket: SocketRef<A>,
                  ack: AckSender<A>,
                  TryData(request): TryData<RoomRequest>| {
                let channels = channels.clone();
                async move {
                    let (reply, _replayed) = match request {
                        Ok(RoomRequest { room, offset }) => {
                            channels.subscribe(&socket, room, offset).await
                        }
                        Err(_) => (refused("invalid room"), None),
                    };
                    // Answered before the room's lock (held after a replay) is let go: the
                    // ack comes after the replayed messages and before live ones.
                    let _ = ack.send(&reply);
                }
            },
        );
        self.answer(socket, UNSUBSCRIBE, |channels, socket, room| async move {
            channels.unsubscribe(&socket, &room)
        });
        self.answer(socket, PRESENCE, |channels, socket, room| async move {
            channels.presence(&socket, &room).await
        });
    }

    /// Answers `event` on `socket` with `handle`'s reply as the ack; a payload that is not
    /// `{room: string}` is acked `invalid room`.
    fn answer<A, F, Fut>(self: &Arc<Self>, socket: &SocketRef<A>, event: &'static str, handle: F)
    where
        A: Adapter,
        F: Fn(Arc<Self>, SocketRef<A>, String) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let channels = self.clone();
        socket.on(
            event,
            move |socket: SocketRef<A>,
                  ack: AckSender<A>,
                  TryData(request): TryData<RoomRequest>| {
                let reply = request.map(|RoomRequest { room, .. }| handle(channels, socket, room));
                async move {
                    let reply = match reply {
                        Ok(reply) => reply.await,
                        Err(_) => refused("invalid room"),
                    };
                    let _ = ack.send(&reply);
                }
            },
        );
    }

    /// Answers a `subscribe`; with an offset, the room's messages after it are sent first,
    /// and the room's lock comes back with the answer (held until it is sent).
    async fn subscribe<A: Adapter>(
        &self,
        socket: &SocketRef<A>,
        room: String,
        offset: Option<serde_json::Value>,
    ) -> (Reply, Option<tokio::sync::MutexGuard<'_, ()>>) {
        if self.rules.check(&room).is_err() {
            return (refused("invalid room"), None);
        }
        let Some(wants) = Wants::read(offset) else {
            return (refused("invalid offset"), None);
        };
        let Some(identity) = socket.extensions.get::<Identity>() else {
            return (refused("unavailable"), None);
        };
        let membership = Membership::of(socket);
        if let Err(reply) = self.take_place(&membership, &room, &identity.user_id).await {
            return (reply, None);
        }
        let verdict = if self.public_prefixes.iter().any(|p| room.starts_with(p)) {
            Ok(true)
        } else {
            self.authorize(socket, &room, &identity.user_id).await
        };
        settle(socket).await;
        let room: Arc<str> = room.into();
        let joined = Joining {
            identity: &identity,
            membership: &membership,
            room: &room,
        };
        let (history, offset) = match self.admit(socket, joined, verdict, wants) {
            Ok(replay) => replay,
            Err(reply) => return (reply, None),
        };
        let (held, entered) = recover(
            socket,
            &self.recovery,
            history,
            &room,
            Since::Client(offset),
            Shape::WithOffset,
            || self.is_member(socket, &room),
            || self.enter(socket, &room, true),
        )
        .await;
        match entered || socket.connected() {
            true => (OK, Some(held)),
            false => (refused("unavailable"), None),
        }
    }

    /// Takes a place for a `subscribe` to `room` among the socket's rooms (and in the room,
    /// when it is a presence room), or the answer to give at once: refused, or `OK` when the
    /// socket is in the room already (getting its messages live: nothing to replay).
    async fn take_place(
        &self,
        membership: &Membership,
        room: &str,
        user_id: &str,
    ) -> Result<(), Reply> {
        {
            let mut joined = membership.lock();
            if !joined.take_token(self.per_sec) {
                return Err(refused("rate limited"));
            }
            if joined.rooms.contains(room) {
                return Err(OK);
            }
            if joined.rooms.len() + joined.pending >= self.rules.max_rooms {
                return Err(refused("too many rooms"));
            }
            joined.pending += 1;
        }
        if self.roster.is_presence(room) {
            let place = self.roster.has_place_for(room, user_id).await;
            if place != Some(true) {
                membership.lock().pending -= 1;
                let error = if place.is_some() {
                    "room full"
                } else {
                    "unavailable"
                };
                return Err(refused(error));
            }
        }
        Ok(())
    }

    /// Gives back the place `take_place` took and, when the app said yes and the socket is
    /// still there, makes it a member of the room: at once, or (with an offset to replay
    /// from, for a room it was not in) a member now but in the room only once the replay
    /// returned here is sent. Else the answer to give.
    fn admit<'h, A: Adapter>(
        &'h self,
        socket: &SocketRef<A>,
        joining: Joining<'_>,
        verdict: Result<bool, String>,
        wants: Wants,
    ) -> Result<(&'h History, String), Reply> {
        let Joining {
            identity,
            membership,
            room,
        } = joining;
        let history = self.recovery.history();
        let with_offsets = history.is_some() && (identity.offsets || !matches!(wants, Wants::Live));
        let replay = match (history, wants) {
            (Some(history), Wants::After(offset)) => Some((history, offset)),
            _ => None,
        };
        // Decided under the membership's lock, let go before any replay waits.
        let mut joined = membership.lock();
        joined.pending -= 1;
        match verdict {
            Ok(true) if !joined.closed && socket.connected() => {
                let fresh = joined.rooms.insert(room.clone());
                match replay {
                    Some(replay) if fresh => {
                        // A member from now on (bounds, presence, occupancy, unsubscribe),
                        // but in the room only once the replay is sent, under the room's
                        // lock.
                        let deferred = std::slice::from_ref(room);
                        self.join(socket, identity, deferred, true, deferred);
                        Ok(replay)
                    }
                    _ => {
                        if fresh {
                            self.join(
                                socket,
                                identity,
                                std::slice::from_ref(room),
                                with_offsets,
                                &[],
                            );
                        }
                        Err(OK)
                    }
                }
            }
            Ok(true) => Err(refused("unavailable")),
            Ok(false) => Err(refused("forbidden")),
            Err(reason) => {
                tracing::warn!(socket = %log_id(socket.id), user = %identity.user_id, "subscribe not authorized, the app could not say: {reason}");
                Err(refused("unavailable"))
            }
        }
    }

    /// Puts a socket that was just let in into its session's rooms (but those in `replays`),
    /// in the adapter only, before its CONNECT is sent: [`Channels::follow_session`] then
    /// records them (presence, occupancy, bounds) from the connect handler.
    pub(super) fn enter_early<A: Adapter>(
        &self,
        socket: &SocketRef<A>,
        rooms: &[Arc<str>],
        replays: &[(Arc<str>, String)],
        with_offsets: bool,
    ) {
        let now: Vec<String> = rooms
            .iter()
            .filter(|r| !replays.iter().any(|(replayed, _)| replayed == *r))
            .flat_map(|r| self.socket_rooms(r, with_offsets))
            .collect();
        if !now.is_empty() {
            socket.join(now);
        }
    }

    /// The socket's own rooms for channel `room`: the room, and its offsets room when the
    /// socket gets offsets there.
    fn socket_rooms(&self, room: &str, with_offsets: bool) -> Vec<String> {
        match with_offsets && self.recovery.history().is_some() {
            true => vec![room.to_owned(), offsets_room(room)],
            false => vec![room.to_owned()],
        }
    }

    /// Whether the socket (open) counts `room` among its channels.
    pub(super) fn is_member<A: Adapter>(&self, socket: &SocketRef<A>, room: &str) -> bool {
        let Some(membership) = socket.extensions.get::<Membership>() else {
            return false;
        };
        let joined = membership.lock();
        !joined.closed && socket.connected() && joined.rooms.contains(room)
    }

    /// Puts the socket in a channel it counts as joined but was kept out of while its replay
    /// ran; false if it left the channel (or closed) meanwhile.
    pub(super) fn enter<A: Adapter>(
        &self,
        socket: &SocketRef<A>,
        room: &str,
        with_offsets: bool,
    ) -> bool {
        let Some(membership) = socket.extensions.get::<Membership>() else {
            return false;
        };
        let joined = membership.lock();
        if joined.closed || !socket.connected() || !joined.rooms.contains(room) {
            return false;
        }
        socket.join(self.socket_rooms(room, with_offsets));
        // Closed between the check and the join: the join would keep it in the room map.
        if !socket.connected() {
            socket.leave_all();
        }
        true
    }

    fn unsubscribe<A: Adapter>(&self, socket: &SocketRef<A>, room: &str) -> Reply {
        if self.rules.check(room).is_err() {
            return refused("invalid room");
        }
        let (Some(membership), Some(identity)) = (
            socket.extensions.get::<Membership>(),
            socket.extensions.get::<Identity>(),
        ) else {
            return OK;
        };
        let mut joined = membership.lock();
        if let Some(room) = joined.rooms.take(room) {
            self.leave(socket, &identity, &[room]);
        }
        OK
    }

    /// The members of a presence room the socket is in.
    async fn presence<A: Adapter>(&self, socket: &SocketRef<A>, room: &str) -> Reply {
        let Some(membership) = socket.extensions.get::<Membership>() else {
            return refused("not subscribed");
        };
        {
            // Each list is a Redis read in cluster mode: asked no faster than subscribes.
            let mut joined = membership.lock();
            if !joined.take_token(self.per_sec) {
                return refused("rate limited");
            }
            if !joined.rooms.contains(room) || !self.roster.is_presence(room) {
                return refused("not subscribed");
            }
        }
        match self.roster.members(room).await {
            Some(members) => Reply {
                members: Some(members),
                ..OK
            },
            None => refused("unavailable"),
        }
    }

    /// Asks the app whether this socket's user may join `room`: `POST authorize_path` with
    /// the socket's forwarded credentials and `{"room","userId"}`. 2xx yes; 401, 403 or 404
    /// no; anything else (or no answer within `auth.timeout_ms`) is an error.
    async fn authorize<A: Adapter>(
        &self,
        socket: &SocketRef<A>,
        room: &str,
        user_id: &str,
    ) -> Result<bool, String> {
        let credentials = self
            .auth
            .credentials(&handshake_headers(socket.req_parts()))
            .map_err(|e| e.to_string())?;
        let body = serde_json::to_vec(&serde_json::json!({ "room": room, "userId": user_id }))
            .map_err(|e| e.to_string())?;
        let mut req = Request::new(Either::Right(Full::new(Bytes::from(body))));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.auth.upstream().uri(Some(&self.authorize_path));
        *req.headers_mut() = credentials.forwarded().clone();
        let headers = req.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let upstream = self.auth.upstream();
        let (result, _) = self
            .auth
            .bounded("authorize route", |remaining| async move {
                let resp = upstream
                    .send(req, Some(remaining))
                    .await
                    .map_err(|e| e.to_string())?;
                let status = resp.status();
                // Read (and dropped) so the connection goes back to the pool.
                let _ = Limited::new(resp.into_body(), MAX_AUTHORIZE_BODY)
                    .collect()
                    .await;
                match status {
                    s if s.is_success() => Ok(true),
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
                        Ok(false)
                    }
                    s => Err(format!("authorize route answered {s}")),
                }
            })
            .await;
        result
    }
}

/// Waits (briefly) for a socket whose CONNECT is being sent to be marked connected: socketioxide
/// sends the packet, then marks the socket, and a client that emitted a `subscribe` before
/// "connect" sends it the moment the packet arrives, so its handler can run in between (and
/// took the socket for a closed one: "unavailable"). A socket that is really closed stays
/// unconnected, and is refused as before once this gives up.
async fn settle<A: Adapter>(socket: &SocketRef<A>) {
    for _ in 0..50 {
        if socket.connected() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}
