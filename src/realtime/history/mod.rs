//! Recent messages per room, so a client that was away gets what it missed.
//!
//! Every message published to a room (a user room or a channel; not a broadcast) gets an
//! offset, monotonically increasing within the room. The last few (`history.max_messages`, kept at most `history.max_age_ms` after the
//! room's last message) are kept: in memory on a single instance, in a Redis stream per room in
//! cluster mode, so a client that comes back through another instance recovers too. A client
//! that reports an offset older than what is kept is told, never silently skipped.

mod appends;
mod memory;
mod offsets;
mod redis;

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use super::payload::Payload;
use crate::cluster::Link;
use crate::metrics::Metrics;
use fred::clients::Client as RedisClient;

use memory::MemoryHistory;
pub use offsets::{Appended, Entry, Head, Replay, Since};
pub use redis::{RedisHistory, RelayAs};

#[derive(Clone)]
pub enum History {
    Memory(Arc<MemoryHistory>),
    Redis(RedisHistory),
}

impl History {
    pub fn memory(
        max_messages: usize,
        max_age: Duration,
        max_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        History::Memory(Arc::new(MemoryHistory::new(
            max_messages,
            max_age,
            max_bytes,
            metrics,
        )))
    }

    pub fn redis(client: RedisClient, link: Link, max_messages: usize, max_age: Duration) -> Self {
        History::Redis(RedisHistory::new(client, link, max_messages, max_age))
    }

    /// Keeps a message for `room`; returns its offset (`None` if it could not be kept, e.g.
    /// Redis is away: the message is still delivered live).
    pub async fn append(&self, room: &str, event: &str, data: &Payload) -> Option<String> {
        match self {
            History::Memory(h) => Some(h.append(room, event, data)),
            History::Redis(h) => h.append(room, event, data).await,
        }
    }

    /// The newest offset of `room`.
    pub async fn head(&self, room: &str) -> Head {
        match self {
            History::Memory(h) => h.head(room),
            History::Redis(h) => h.head(room).await,
        }
    }

    /// Whether other instances write this history too (their publishes do not take this
    /// process's room locks).
    pub fn is_shared(&self) -> bool {
        matches!(self, History::Redis(_))
    }

    /// The Redis history, when other instances share it.
    pub fn shared(&self) -> Option<&RedisHistory> {
        match self {
            History::Redis(h) => Some(h),
            History::Memory(_) => None,
        }
    }

    /// Messages of `room` after `since`.
    pub async fn replay(&self, room: &str, since: &Since) -> Replay {
        match self {
            History::Memory(h) => h.replay(room, since),
            History::Redis(h) => h.replay(room, since).await,
        }
    }
}

/// The history (when enabled) with the locks that order it against joins: what the hub and
/// the connect path share.
pub struct Journal {
    history: Option<History>,
    locks: RoomLocks,
}

impl Journal {
    pub fn new(history: Option<History>) -> Self {
        Self {
            history,
            locks: RoomLocks::default(),
        }
    }

    pub fn history(&self) -> Option<&History> {
        self.history.as_ref()
    }

    pub async fn lock(&self, room: &str) -> tokio::sync::MutexGuard<'_, ()> {
        self.locks.lock(room).await
    }

    /// Which of the locks `room` takes: rooms of one stripe are ordered against each other.
    pub fn stripe(&self, room: &str) -> usize {
        self.locks.stripe(room)
    }
}

/// Serializes publishing to a room with a socket joining it, so that a message is either in
/// the socket's replay or delivered to it live, never both and never neither. Striped: a
/// fixed set of locks, a room hashes to one.
pub struct RoomLocks {
    stripes: Vec<tokio::sync::Mutex<()>>,
    hasher: RandomState,
}

impl Default for RoomLocks {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: RandomState::new(),
        }
    }
}

/// How many locks rooms share.
pub const STRIPES: usize = 256;

impl RoomLocks {
    pub async fn lock(&self, room: &str) -> tokio::sync::MutexGuard<'_, ()> {
        self.stripes[self.stripe(room)].lock().await
    }

    fn stripe(&self, room: &str) -> usize {
        self.hasher.hash_one(room) as usize % self.stripes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_head_read_while_the_link_is_down_is_unknown() {
        let (link, client) = crate::cluster::Link::never_connected();
        let history = History::redis(client, link, 5, Duration::from_secs(60));
        // Not `Empty`, which would replay the whole stream once the link is back.
        assert_eq!(history.head("user:a").await, Head::Unknown);
        assert!(matches!(
            history.replay("user:a", &Since::Head(Head::Unknown)).await,
            Replay::Gap
        ));
    }
}
