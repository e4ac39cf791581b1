//! Messages missed during a cluster outage are signalled, never a silent gap.
//!
//! While the Redis link is down ([`Link::is_up`]) the hub delivers to this instance's sockets
//! only: the other instances' sockets in those rooms miss the message, and this instance's
//! sockets miss whatever the other instances publish meanwhile. So the rooms delivered locally
//! only are remembered here and, each time the link comes back after an outage
//! ([`Link::restorations`]), `recovery_failed` goes to those rooms on every instance and to
//! this instance's other sockets: each client that may have missed a message refetches.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use socketioxide::{BroadcastError, SocketIo};
use tokio::sync::Notify;

use super::session::RECOVERY_FAILED;
use crate::cluster::{ClusterAdapter, Link};
use crate::shutdown::Shutdown;

/// What the clients are told.
const REASON: &str = "messages may have been missed while the link between instances was down";

/// Past this many rooms, an outage is told to every socket of the cluster instead: the set
/// stays small however long the outage and however many users were published to.
const MAX_ROOMS: usize = 10_000;

/// The cluster link, and what to tell once it is back.
pub struct Outages {
    link: Link,
    missed: Mutex<Missed>,
    /// A room was remembered while the link was up: its delivery was decided just before the
    /// link came back, after the restoration was told.
    late: Notify,
}

/// Who may have missed messages.
#[derive(Default)]
struct Missed {
    /// Rooms whose messages reached this instance's sockets only.
    rooms: HashSet<String>,
    /// Every socket of the cluster (a broadcast reached this instance's only, or too many
    /// rooms did).
    everyone: bool,
    /// This instance's sockets: the link came back after an outage, during which what the
    /// other instances published did not reach them.
    here: bool,
}

impl Missed {
    fn merge(&mut self, other: Missed) {
        self.rooms.extend(other.rooms);
        self.everyone |= other.everyone;
        self.here |= other.here;
        if self.rooms.len() > MAX_ROOMS {
            self.rooms.clear();
            self.everyone = true;
        }
    }
}

impl Outages {
    pub fn new(link: Link) -> Self {
        Self {
            link,
            missed: Mutex::default(),
            late: Notify::new(),
        }
    }

    pub fn link(&self) -> &Link {
        &self.link
    }

    fn missed(&self) -> MutexGuard<'_, Missed> {
        self.missed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A message for `room` (for every socket when `None`) went to this instance's sockets
    /// only.
    pub fn delivered_locally(&self, room: Option<&str>) {
        let mut missed = Missed::default();
        match room {
            Some(room) => {
                missed.rooms.insert(room.to_owned());
            }
            None => missed.everyone = true,
        }
        self.missed().merge(missed);
        if self.link.is_up() {
            self.late.notify_one();
        }
    }

    /// Until the drain starts: each time the link comes back after an outage, tells every
    /// socket that may have missed messages during it (see the module doc).
    pub async fn tell_after_outages(&self, io: &SocketIo<ClusterAdapter>, shutdown: Shutdown) {
        let mut restored = self.link.restorations();
        loop {
            tokio::select! {
                changed = restored.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.missed().here = true;
                }
                () = self.late.notified() => {}
                _ = shutdown.draining() => return,
            }
            // Down again already: told after the next restoration.
            if self.link.is_up() {
                self.tell(io).await;
            }
        }
    }

    /// Sends `recovery_failed` to whoever may have missed messages. What could not be sent
    /// through Redis is kept for the next restoration.
    async fn tell(&self, io: &SocketIo<ClusterAdapter>) {
        let missed = std::mem::take(&mut *self.missed());
        let payload = serde_json::json!({ "reason": REASON });
        let rooms: Vec<String> = missed.rooms.iter().cloned().collect();
        let sent = if missed.everyone {
            io.emit(RECOVERY_FAILED, &payload).await
        } else {
            if missed.here {
                // The sockets in `rooms` are told below, on every instance.
                let _ = io
                    .local()
                    .except(rooms.clone())
                    .emit(RECOVERY_FAILED, &payload)
                    .await;
            }
            if rooms.is_empty() {
                Ok(())
            } else {
                io.to(rooms).emit(RECOVERY_FAILED, &payload).await
            }
        };
        let told = match &missed {
            Missed { everyone: true, .. } => "every socket of the cluster".to_owned(),
            Missed { rooms, here, .. } => format!(
                "{} room(s) on every instance{}",
                rooms.len(),
                if *here {
                    " and this instance's sockets"
                } else {
                    ""
                }
            ),
        };
        match sent {
            // Sockets whose queue is full are closed as slow consumers; they refetch anyway.
            Ok(()) | Err(BroadcastError::Socket(_)) => {
                tracing::info!("after a Redis outage, told {told} to refetch (recovery_failed)");
            }
            Err(e) => {
                self.link
                    .suspect(format!("telling {told} about missed messages: {e}"));
                let here = missed.everyone && missed.here;
                self.missed().merge(Missed { here, ..missed });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_rooms_tell_everyone_instead() {
        let mut missed = Missed::default();
        for n in 0..=MAX_ROOMS {
            missed.merge(Missed {
                rooms: HashSet::from([format!("room-{n}")]),
                ..Missed::default()
            });
        }
        assert!(
            missed.everyone,
            "more than MAX_ROOMS rooms: everyone is told"
        );
        assert!(
            missed.rooms.is_empty(),
            "the set does not grow past the bound"
        );
    }
}
