//! Recent messages per user, so a client that was away gets what it missed.
//!
//! Every message published to a user room gets an offset, monotonically increasing within the
//! room. The last few (`history.max_messages`, kept at most `history.max_age_ms` after the
//! room's last message) are kept: in memory on a single instance, in a Redis stream per room in
//! cluster mode, so a client that comes back through another instance recovers too. A client
//! that reports an offset older than what is kept is told, never silently skipped.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::clients::Client as RedisClient;
use fred::interfaces::{KeysInterface, StreamsInterface};
use fred::types::Value as RedisValue;
use serde_json::Value;

use crate::cluster::Link;

/// Where a socket's history begins.
#[derive(Debug, Clone, PartialEq)]
pub enum Since {
    /// A client that has seen nothing: replay what is published from the handshake on (this
    /// closes the window between the client seeing "connected" and the socket joining).
    Head(Option<String>),
    /// A client that reports the last offset it saw.
    Client(String),
}

/// One kept message.
#[derive(Debug, Clone)]
pub struct Entry {
    pub offset: String,
    pub event: Arc<str>,
    pub data: Arc<Value>,
}

/// What a reconnecting socket gets.
#[derive(Debug)]
pub enum Replay {
    Entries(Vec<Entry>),
    /// The offset is older than what is kept (or from a previous run): the client must refetch.
    Gap,
}

#[derive(Clone)]
pub enum History {
    Memory(Arc<MemoryHistory>),
    Redis(RedisHistory),
}

impl History {
    pub fn memory(max_messages: usize, max_age: Duration) -> Self {
        History::Memory(Arc::new(MemoryHistory::new(max_messages, max_age)))
    }

    pub fn redis(client: RedisClient, link: Link, max_messages: usize, max_age: Duration) -> Self {
        History::Redis(RedisHistory {
            client,
            link,
            max_messages,
            max_age,
        })
    }

    /// Keeps a message for `room`; returns its offset (`None` if it could not be kept, e.g.
    /// Redis is away: the message is still delivered live).
    pub async fn append(&self, room: &str, event: &str, data: &Value) -> Option<String> {
        match self {
            History::Memory(h) => Some(h.append(room, event, data)),
            History::Redis(h) => h.append(room, event, data).await,
        }
    }

    /// The newest offset of `room`, if any.
    pub async fn head(&self, room: &str) -> Option<String> {
        match self {
            History::Memory(h) => h.head(room),
            History::Redis(h) => h.head(room).await,
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
            stripes: (0..256).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl RoomLocks {
    pub async fn lock(&self, room: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let stripe = self.hasher.hash_one(room) as usize % self.stripes.len();
        self.stripes[stripe].lock().await
    }
}

struct RoomLog {
    next: u64,
    /// Highest offset no longer kept.
    dropped_through: u64,
    last_at: Instant,
    entries: VecDeque<(u64, Instant, Arc<str>, Arc<Value>)>,
}

/// Single-instance history. Offsets are `<run id>-<n>`: an offset from before a restart is
/// recognised as such (its messages are gone) instead of being confused with a new one.
pub struct MemoryHistory {
    run: String,
    rooms: Mutex<Rooms>,
    max_messages: usize,
    max_age: Duration,
}

#[derive(Default)]
struct Rooms {
    logs: HashMap<String, RoomLog>,
    /// Expired rooms are dropped at most this often, so memory stays bounded by the users
    /// active within `max_age` without a scan on every publish.
    last_sweep: Option<Instant>,
}

impl MemoryHistory {
    fn new(max_messages: usize, max_age: Duration) -> Self {
        let run = format!("{:08x}", RandomState::new().hash_one(Instant::now()) as u32);
        Self {
            run,
            rooms: Mutex::default(),
            max_messages: max_messages.max(1),
            max_age,
        }
    }

    fn offset(&self, n: u64) -> String {
        format!("{}-{n}", self.run)
    }

    fn parse(&self, offset: &str) -> Option<u64> {
        let (run, n) = offset.split_once('-')?;
        (run == self.run).then(|| n.parse().ok()).flatten()
    }

    fn append(&self, room: &str, event: &str, data: &Value) -> String {
        let now = Instant::now();
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if rooms
            .last_sweep
            .is_none_or(|at| now.duration_since(at) >= self.max_age)
        {
            let max_age = self.max_age;
            rooms
                .logs
                .retain(|_, log| now.duration_since(log.last_at) < max_age);
            rooms.last_sweep = Some(now);
        }
        let log = rooms
            .logs
            .entry(room.to_owned())
            .or_insert_with(|| RoomLog {
                next: 1,
                dropped_through: 0,
                last_at: now,
                entries: VecDeque::new(),
            });
        let n = log.next;
        log.next += 1;
        log.last_at = now;
        log.entries
            .push_back((n, now, event.into(), Arc::new(data.clone())));
        while log.entries.len() > self.max_messages
            || log
                .entries
                .front()
                .is_some_and(|(_, at, _, _)| now.duration_since(*at) > self.max_age)
        {
            if let Some((dropped, ..)) = log.entries.pop_front() {
                log.dropped_through = dropped;
            }
        }
        self.offset(n)
    }

    fn head(&self, room: &str) -> Option<String> {
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms
            .logs
            .get(room)
            .map(|log| log.next - 1)
            .filter(|n| *n > 0)
            .map(|n| self.offset(n))
    }

    fn replay(&self, room: &str, since: &Since) -> Replay {
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let log = rooms
            .logs
            .get(room)
            .filter(|log| log.last_at.elapsed() <= self.max_age);
        let after = match since {
            Since::Head(None) => 0,
            Since::Head(Some(head)) => self.parse(head).unwrap_or(0),
            Since::Client(offset) => match (self.parse(offset), log) {
                (Some(n), Some(log)) if n >= log.dropped_through && n < log.next => n,
                // From another run, older than what is kept, expired, or never issued.
                _ => return Replay::Gap,
            },
        };
        let entries = log
            .map(|log| {
                log.entries
                    .iter()
                    .filter(|(n, ..)| *n > after)
                    .map(|(n, _, event, data)| Entry {
                        offset: self.offset(*n),
                        event: event.clone(),
                        data: data.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Replay::Entries(entries)
    }
}

/// Cluster history: one Redis stream per room (`sockgate:history:<room>`), trimmed to about
/// `max_messages` entries, expiring `max_age` after its last message. Offsets are stream ids.
#[derive(Clone)]
pub struct RedisHistory {
    client: RedisClient,
    /// While Redis is away nothing is kept or read (each command would wait for its timeout
    /// with the room locked): messages go out live only, and a reconnecting client is told
    /// to refetch.
    link: Link,
    max_messages: usize,
    max_age: Duration,
}

impl RedisHistory {
    fn key(room: &str) -> String {
        format!("sockgate:history:{room}")
    }

    async fn append(&self, room: &str, event: &str, data: &Value) -> Option<String> {
        if !self.link.is_up() {
            return None;
        }
        let key = Self::key(room);
        let fields = vec![("e", event.to_owned()), ("d", data.to_string())];
        let added: Result<String, _> = self
            .client
            .xadd(
                &key,
                false,
                ("MAXLEN", "~", self.max_messages as i64),
                "*",
                fields,
            )
            .await;
        let id = match added {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(room, "history not kept (Redis): {e}");
                return None;
            }
        };
        let seconds = self.max_age.as_secs().max(1) as i64;
        let _: Result<RedisValue, _> = self.client.expire(&key, seconds, None).await;
        Some(id)
    }

    async fn head(&self, room: &str) -> Option<String> {
        if !self.link.is_up() {
            return None;
        }
        let newest: Result<Vec<(String, HashMap<String, String>)>, _> = self
            .client
            .xrevrange_values(Self::key(room), "+", "-", Some(1))
            .await;
        newest.ok()?.into_iter().next().map(|(id, _)| id)
    }

    async fn replay(&self, room: &str, since: &Since) -> Replay {
        if !self.link.is_up() {
            return match since {
                Since::Client(_) => Replay::Gap,
                Since::Head(_) => Replay::Entries(Vec::new()),
            };
        }
        let key = Self::key(room);
        let start = match since {
            Since::Head(None) => "-".to_string(),
            Since::Head(Some(id)) | Since::Client(id) => format!("({id}"),
        };
        if let Since::Client(offset) = since
            && self.lost_after(&key, offset).await
        {
            return Replay::Gap;
        }
        let read: Result<Vec<(String, HashMap<String, String>)>, _> = self
            .client
            .xrange_values(&key, start, "+", Some(self.max_messages as u64 * 2))
            .await;
        let Ok(read) = read else {
            return Replay::Gap;
        };
        let entries = read
            .into_iter()
            .filter_map(|(offset, fields)| {
                let event = fields.get("e")?.as_str().into();
                let data = serde_json::from_str(fields.get("d")?).ok()?;
                Some(Entry {
                    offset,
                    event,
                    data: Arc::new(data),
                })
            })
            .collect();
        Replay::Entries(entries)
    }

    /// Whether entries after `offset` may have been trimmed or expired.
    async fn lost_after(&self, key: &str, offset: &str) -> bool {
        let info: Result<HashMap<String, RedisValue>, _> =
            self.client.xinfo_stream(key, false, None).await;
        let Ok(info) = info else {
            // No stream: it expired (or never existed), so whatever followed `offset` is gone.
            return true;
        };
        let deleted = info
            .get("max-deleted-entry-id")
            .and_then(|v| v.as_string())
            .unwrap_or_default();
        stream_id_after(&deleted, offset)
    }
}

/// Whether stream id `a` comes after `b` ("ms-seq" ids compare numerically, part by part).
fn stream_id_after(a: &str, b: &str) -> bool {
    let parse = |id: &str| -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    };
    parse(a) > parse(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn offsets(replay: Replay) -> Vec<String> {
        match replay {
            Replay::Entries(e) => e.into_iter().map(|e| e.offset).collect(),
            Replay::Gap => vec!["gap".into()],
        }
    }

    #[test]
    fn replays_after_an_offset_and_reports_gaps() {
        let h = MemoryHistory::new(3, Duration::from_secs(60));
        let o: Vec<String> = (0..5).map(|i| h.append("user:a", "n", &json!(i))).collect();
        // Kept: 3, 4, 5 (1 and 2 were dropped).
        assert_eq!(
            offsets(h.replay("user:a", &Since::Client(o[2].clone()))),
            vec![o[3].clone(), o[4].clone()]
        );
        assert_eq!(
            offsets(h.replay("user:a", &Since::Client(o[1].clone()))),
            vec![o[2].clone(), o[3].clone(), o[4].clone()]
        );
        assert_eq!(
            offsets(h.replay("user:a", &Since::Client(o[0].clone()))),
            vec!["gap"]
        );
        assert_eq!(
            offsets(h.replay("user:a", &Since::Client("deadbeef-3".into()))),
            vec!["gap"]
        );
        assert!(offsets(h.replay("user:a", &Since::Client(o[4].clone()))).is_empty());
        assert_eq!(
            offsets(h.replay("user:a", &Since::Head(Some(o[3].clone())))),
            vec![o[4].clone()]
        );
        assert!(offsets(h.replay("user:b", &Since::Head(None))).is_empty());
        assert_eq!(h.head("user:a"), Some(o[4].clone()));
    }

    #[test]
    fn stream_ids_compare_numerically() {
        assert!(stream_id_after("1700000000001-0", "1700000000000-9"));
        assert!(stream_id_after("5-10", "5-9"));
        assert!(!stream_id_after("0-0", "5-9"));
    }
}
