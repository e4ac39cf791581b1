//! The hub: how the rest of sockgate reaches sockets. Publishing, kicking a user, presence and
//! counts all go through here, so delivery has one path (and one place to add history or a
//! cluster adapter).

use std::sync::Arc;

use socketioxide::{BroadcastError, SendError, SocketError, SocketIo, TransportType};

use crate::metrics::Metrics;

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
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(io: SocketIo, room_prefix: String, metrics: Arc<Metrics>) -> Self {
        Self {
            io,
            room_prefix,
            metrics,
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
    ///
    /// Room targets are emitted socket by socket, so a socket whose buffer is full (a client
    /// that stopped reading) is known by name and disconnected: it reconnects and catches up
    /// instead of holding memory. A broadcast is encoded once for all sockets; its drops are
    /// counted.
    pub async fn publish(
        &self,
        target: &Target,
        event: &str,
        data: &serde_json::Value,
    ) -> Result<usize, String> {
        let (recipients, dropped) = match self.rooms(target) {
            Some(rooms) => {
                let sockets = self.io.to(rooms).sockets();
                let mut dropped = 0;
                for socket in &sockets {
                    match socket.emit(event, data) {
                        Ok(()) | Err(SendError::Socket(SocketError::Closed)) => {}
                        Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                            dropped += 1;
                            self.metrics.slow_consumer();
                            tracing::warn!(sid = %socket.id, "socket buffer full: slow consumer disconnected");
                            let _ = socket.clone().disconnect();
                        }
                        Err(SendError::Serialize(e)) => return Err(e.to_string()),
                    }
                }
                (sockets.len(), dropped)
            }
            None => {
                let recipients = self.io.sockets().len();
                let dropped = match self.io.emit(event, data).await {
                    Ok(()) => 0,
                    Err(BroadcastError::Socket(errors)) => errors
                        .iter()
                        .filter(|e| matches!(e, SocketError::InternalChannelFull))
                        .count(),
                    Err(e) => return Err(e.to_string()),
                };
                if dropped > 0 {
                    tracing::warn!(
                        dropped,
                        "broadcast not delivered to sockets whose buffer is full"
                    );
                }
                (recipients, dropped)
            }
        };
        self.metrics.published(recipients - dropped, dropped);
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
            publishes: self.metrics.publishes_total(),
            deliveries: self.metrics.deliveries_total(),
        }
    }

    /// Open sockets by transport: (polling, websocket).
    pub fn sockets_by_transport(&self) -> (usize, usize) {
        let sockets = self.io.sockets();
        let ws = sockets
            .iter()
            .filter(|s| s.transport_type() == TransportType::Websocket)
            .count();
        (sockets.len() - ws, ws)
    }

    /// Closes every socket's transport: clients see a transport close and reconnect (to
    /// another instance, or to this one once it is back).
    pub async fn close_all(&self) {
        self.io.close().await;
    }
}
