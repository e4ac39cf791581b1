//! Presence rooms: who (distinct users, not sockets) is in each room whose name starts with
//! one of `channels.presence_prefixes`, announced to the room and listed on request.
//!
//! A socket joining a presence room is one more holder of the key `room\nuser` in an
//! [`occupancy`] tracker; the user's first socket makes them *arrive* (`presence:join` to the
//! room, with the user info the session route gave), and when their last socket has been
//! gone for `channels.presence_grace_ms` they *leave* (`presence:leave`). So a user is
//! announced once however many tabs they have, and a reload announces nothing. In cluster
//! mode the tracker decides across instances and the one instance that decided announces
//! through the adapter; the member list is read from Redis, and a dead instance's members
//! leave within `channels.presence_instance_ttl_ms · 4/3`.
//!
//! Announcements go out in the order the tracker decided them, from one task, so a join and
//! the leave that follows it reach every member in that order.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::occupancy::{self, Change, GROUP_SEPARATOR, Transition};
use crate::webhooks::Webhooks;

/// The events members of a presence room get.
pub const JOIN_EVENT: &str = "presence:join";
pub const LEAVE_EVENT: &str = "presence:leave";

/// Where presence rooms' members are kept in Redis (cluster mode).
const NAMESPACE: occupancy::Namespace = occupancy::Namespace {
    prefix: "{sockgate:presence}:",
    label: "presence",
};

/// One member of a presence room, as listed and announced.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub id: String,
    /// The user info of their arrival (`auth.user_info_pointer`), or null.
    pub info: Option<Box<RawValue>>,
}

impl Member {
    fn new(id: &str, info: Option<&str>) -> Self {
        let info = info.and_then(|text| RawValue::from_string(text.to_owned()).ok());
        Self {
            id: id.to_owned(),
            info,
        }
    }
}

/// A decided arrival or departure, on its way to the room.
struct Announcement {
    transition: Transition,
    room: String,
    member: Member,
}

/// Single instance: the members of each presence room, kept in step with the announcements.
type Rooms = HashMap<String, BTreeMap<String, Option<Arc<str>>>>;

pub struct Roster {
    prefixes: Vec<String>,
    max_members: usize,
    changes: mpsc::UnboundedSender<Change>,
    /// Cluster mode: the member lists are in Redis.
    shared: Option<Arc<occupancy::Shared>>,
    local: Arc<Mutex<Rooms>>,
    announcements: Mutex<Option<mpsc::UnboundedReceiver<Announcement>>>,
}

impl Roster {
    /// Starts the tracker; `redis` (cluster mode: a command connection and the link's
    /// health) makes presence cluster-wide. Nothing is announced before
    /// [`Roster::announce_on`] is given the `SocketIo`. Every arrival and departure is also
    /// a `member.added`/`member.removed` for `webhooks`.
    pub fn start(
        settings: &Config,
        redis: Option<(fred::clients::Client, crate::cluster::Link)>,
        webhooks: Webhooks,
    ) -> Self {
        let config = &settings.channels;
        let shared = redis.map(|(client, link)| {
            Arc::new(occupancy::Shared::new(
                client,
                link,
                socketioxide_core::Uid::new().to_string(),
                config.presence_instance_ttl,
                NAMESPACE,
            ))
        });
        let local: Arc<Mutex<Rooms>> = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let kept = shared.is_none().then(|| local.clone());
        let report = move |transition, key: &Arc<str>, info: Option<&Arc<str>>| {
            let Some((room, user)) = key.split_once(GROUP_SEPARATOR) else {
                return;
            };
            if let Some(local) = &kept {
                let mut rooms = lock(local);
                match transition {
                    Transition::Arrived => {
                        rooms
                            .entry(room.to_owned())
                            .or_default()
                            .insert(user.to_owned(), info.cloned());
                    }
                    Transition::Left => {
                        if let Some(members) = rooms.get_mut(room) {
                            members.remove(user);
                            if members.is_empty() {
                                rooms.remove(room);
                            }
                        }
                    }
                }
            }
            webhooks.member(transition == Transition::Arrived, room, user);
            let _ = tx.send(Announcement {
                transition,
                room: room.to_owned(),
                member: Member::new(user, info.map(|i| &**i)),
            });
        };
        let changes =
            occupancy::Tracker::spawn(shared.clone(), config.presence_grace, Box::new(report));
        Self {
            prefixes: config.presence_prefixes.clone(),
            max_members: config.max_presence_members,
            changes,
            shared,
            local,
            announcements: Mutex::new(Some(rx)),
        }
    }

    /// Whether sockgate tracks the members of `room`.
    pub fn is_presence(&self, room: &str) -> bool {
        self.prefixes.iter().any(|p| room.starts_with(p.as_str()))
    }

    /// A socket of `user` joined presence room `room`.
    pub fn joined(&self, room: &str, user: &str, info: Option<&Arc<str>>) {
        let _ = self
            .changes
            .send(Change::Up(key(room, user), info.cloned()));
    }

    /// A socket of `user` left presence room `room` (or closed).
    pub fn left(&self, room: &str, user: &str) {
        let _ = self.changes.send(Change::Down(key(room, user)));
    }

    /// Whether `user` may join presence room `room` under `channels.max_presence_members`:
    /// a member already, or the room has a free place (every instance in cluster mode;
    /// `None` when Redis cannot say). Sockets that join at once may all see the last place.
    pub async fn has_place_for(&self, room: &str, user: &str) -> Option<bool> {
        let fits = |members: usize, member: bool| member || members < self.max_members;
        match &self.shared {
            Some(shared) => {
                let members = shared.members(room).await?;
                Some(fits(
                    members.len(),
                    members.iter().any(|(id, _)| id == user),
                ))
            }
            None => Some(
                lock(&self.local)
                    .get(room)
                    .is_none_or(|m| fits(m.len(), m.contains_key(user))),
            ),
        }
    }

    /// The members of `room` (every instance in cluster mode), sorted by id; `None` when
    /// Redis cannot say.
    pub async fn members(&self, room: &str) -> Option<Vec<Member>> {
        let mut members: Vec<Member> = match &self.shared {
            Some(shared) => shared
                .members(room)
                .await?
                .iter()
                .map(|(id, info)| Member::new(id, Some(info)))
                .collect(),
            None => lock(&self.local)
                .get(room)
                .map(|m| {
                    m.iter()
                        .map(|(id, info)| Member::new(id, info.as_deref()))
                        .collect()
                })
                .unwrap_or_default(),
        };
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Some(members)
    }

    /// Announces arrivals and departures to their rooms through `io`, in order, until the
    /// tracker stops. Called once (later calls do nothing).
    pub fn announce_on<A: Adapter>(&self, io: SocketIo<A>) {
        let Some(mut announcements) = lock(&self.announcements).take() else {
            return;
        };
        tokio::spawn(async move {
            while let Some(Announcement {
                transition,
                room,
                member,
            }) = announcements.recv().await
            {
                let sent = match transition {
                    Transition::Arrived => {
                        let data = serde_json::json!({ "room": room, "user": member });
                        io.to(room.clone()).emit(JOIN_EVENT, &data).await
                    }
                    Transition::Left => {
                        let data = serde_json::json!({ "room": room, "userId": member.id });
                        io.to(room.clone()).emit(LEAVE_EVENT, &data).await
                    }
                };
                if let Err(e) = sent {
                    tracing::debug!(room = %room, "presence announcement not delivered to every member: {e}");
                }
            }
        });
    }
}

fn key(room: &str, user: &str) -> Arc<str> {
    format!("{room}{GROUP_SEPARATOR}{user}").into()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain maps behind it: still consistent after a panic elsewhere.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
