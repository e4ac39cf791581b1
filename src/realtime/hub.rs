//! The hub: how the rest of sockgate reaches sockets. Publishing, kicking a user, presence and
//! counts all go through here, so delivery has one path (and one place to add history or a
//! cluster adapter).

use std::sync::atomic::{AtomicU64, Ordering};

use socketioxide::SocketIo;

/// Who a message is for.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    User(String),
    Users(Vec<String>),
    Room(String),
    Broadcast,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HubStats {
    pub connections: usize,
    pub users: usize,
    pub rooms: usize,
    pub publishes: u64,
    pub deliveries: u64,
}

pub struct Hub {
    io: SocketIo,
    room_prefix: String,
    publishes: AtomicU64,
    deliveries: AtomicU64,
}

impl Hub {
    pub fn new(io: SocketIo, room_prefix: String) -> Self {
        Self {
            io,
            room_prefix,
            publishes: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
        }
    }

    fn user_room(&self, user_id: &str) -> String {
        format!("{}{user_id}", self.room_prefix)
    }

    fn rooms(&self, target: &Target) -> Option<Vec<String>> {
        match target {
            Target::User(id) => Some(vec![self.user_room(id)]),
            Target::Users(ids) => Some(ids.iter().map(|id| self.user_room(id)).collect()),
            Target::Room(room) => Some(vec![room.clone()]),
            Target::Broadcast => None,
        }
    }

    /// Emits `event` with `data` to the target's sockets; returns how many were targeted.
    pub async fn publish(
        &self,
        target: &Target,
        event: &str,
        data: &serde_json::Value,
    ) -> Result<usize, String> {
        let (recipients, result) = match self.rooms(target) {
            Some(rooms) => {
                let recipients = self.io.to(rooms.clone()).sockets().len();
                (recipients, self.io.to(rooms).emit(event, data).await)
            }
            None => (self.io.sockets().len(), self.io.emit(event, data).await),
        };
        self.publishes.fetch_add(1, Ordering::Relaxed);
        self.deliveries
            .fetch_add(recipients as u64, Ordering::Relaxed);
        result.map_err(|e| e.to_string())?;
        Ok(recipients)
    }

    /// Closes every socket of `user_id`; returns how many.
    pub async fn disconnect_user(&self, user_id: &str) -> Result<usize, String> {
        let room = self.user_room(user_id);
        let count = self.io.to(room.clone()).sockets().len();
        self.io
            .to(room)
            .disconnect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(count)
    }

    /// Sockets `user_id` has open on this instance.
    pub fn user_sockets(&self, user_id: &str) -> usize {
        self.io.to(self.user_room(user_id)).sockets().len()
    }

    pub async fn stats(&self) -> HubStats {
        let rooms = self.io.rooms().await.unwrap_or_default();
        let users = rooms
            .iter()
            .filter(|r| r.starts_with(&self.room_prefix))
            .count();
        HubStats {
            connections: self.io.sockets().len(),
            users,
            rooms: rooms.len(),
            publishes: self.publishes.load(Ordering::Relaxed),
            deliveries: self.deliveries.load(Ordering::Relaxed),
        }
    }

    /// Closes every socket's transport: clients see a transport close and reconnect (to
    /// another instance, or to this one once it is back).
    pub async fn close_all(&self) {
        self.io.close().await;
    }
}
