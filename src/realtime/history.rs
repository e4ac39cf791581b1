//! Recent messages per room, so a client that was away gets what it missed.
//!
//! Every message published to a room (a user room or a channel; not a broadcast) gets an
//! offset, monotonically increasing within the room. The last few (`history.max_messages`, kept at most `history.max_age_ms` after the
//! room's last message) are kept: in memory on a single instance, in a Redis stream per room in
//! cluster mode, so a client that comes back through another instance recovers too. A client
//! that reports an offset older than what is kept is told, never silently skipped.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use fred::clients::Client as RedisClient;
use fred::interfaces::KeysInterface;
use fred::types::Value as RedisValue;
use fred::types::scripts::Script;
use serde_json::Value;

use crate::cluster::Link;
use crate::metrics::Metrics;

/// Where a socket's history begins.
#[derive(Debug, Clone, PartialEq)]
pub enum Since {
    /// A client that has seen nothing: replay what is published from the handshake on (this
    /// closes the window between the client seeing "connected" and the socket joining).
    Head(Head),
    /// A client that reports the last offset it saw.
    Client(String),
}

/// A room's newest offset, read at a socket's handshake.
#[derive(Debug, Clone, PartialEq)]
pub enum Head {
    /// Nothing kept: everything in the room is newer than the handshake. (The in-memory
    /// history answers the run's last offset instead, which also tells whether the room
    /// was evicted before its replay.)
    Empty,
    At(String),
    /// The history could not be read: where the client stands is unknown, so it is told to
    /// refetch rather than given old messages or none.
    Unknown,
}

/// One kept message.
#[derive(Debug, Clone)]
pub struct Entry {
    pub offset: String,
    pub event: Arc<str>,
    pub data: Arc<Value>,
}

/// Where a message was kept in a room's stream (cluster mode).
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    /// The stream's generation.
    pub epoch: String,
    /// The entry's stream id.
    pub id: String,
    /// The id of the entry before it in the generation, `""` for the generation's first.
    pub prev: String,
}

impl Appended {
    /// The offset clients get for it.
    pub fn offset(&self) -> String {
        format!("{}:{}", self.epoch, self.id)
    }
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
        History::Redis(RedisHistory {
            client,
            link,
            max_messages,
            max_age,
            unkept: Arc::default(),
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

struct RoomLog {
    name: Arc<str>,
    /// Offsets up to this one were issued before this log was created: whatever this room had
    /// among them is gone.
    born_after: u64,
    /// Highest offset no longer kept.
    dropped_through: u64,
    /// `0` until the first message.
    last: u64,
    last_at: Instant,
    entries: VecDeque<Message>,
    /// What its entries are counted for against `max_bytes` (the room's own cost aside).
    bytes: usize,
}

impl RoomLog {
    /// Drops the oldest entry; returns what it was counted for.
    fn drop_oldest(&mut self) -> usize {
        let Some(dropped) = self.entries.pop_front() else {
            return 0;
        };
        self.dropped_through = dropped.n;
        self.bytes -= dropped.bytes;
        dropped.bytes
    }
}

/// One kept message of the single-instance history.
struct Message {
    n: u64,
    at: Instant,
    event: Arc<str>,
    data: Arc<Value>,
    /// What it is counted for against `max_bytes`.
    bytes: usize,
}

/// What an allocation costs beyond what it asks for (the allocator's header and rounding).
const ALLOCATION: usize = 16;
/// An `Arc`'s counts, before its value.
const ARC_COUNTS: usize = 2 * size_of::<usize>();

impl Message {
    fn new(n: u64, at: Instant, event: &str, data: &Value) -> Self {
        let bytes = size_of::<Message>()
            + ARC_COUNTS
            + ALLOCATION
            + event.len()
            + ARC_COUNTS
            + ALLOCATION
            + size_of::<Value>()
            + json_heap_bytes(data);
        Self {
            n,
            at,
            event: event.into(),
            data: Arc::new(data.clone()),
            bytes,
        }
    }
}

/// What a room's log costs besides its entries: its slot in both maps (twice: maps keep room
/// to grow), its name, and its queue's first allocation (4 slots).
fn room_bytes(name: &str) -> usize {
    2 * (size_of::<(Arc<str>, RoomLog)>() + size_of::<(u64, Arc<str>)>())
        + ARC_COUNTS
        + ALLOCATION
        + name.len()
        + 4 * size_of::<Message>()
        + ALLOCATION
}

/// The heap memory a JSON value holds (an estimate: map and allocator overheads are rounded).
fn json_heap_bytes(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(s) => s.len() + ALLOCATION,
        Value::Array(items) => {
            ALLOCATION
                + items
                    .iter()
                    .map(|item| size_of::<Value>() + json_heap_bytes(item))
                    .sum::<usize>()
        }
        // An ordered map: a vector of (hash, key, value) and an index table.
        Value::Object(map) => {
            2 * ALLOCATION
                + map
                    .iter()
                    .map(|(key, item)| {
                        2 * size_of::<usize>()
                            + size_of::<String>()
                            + key.len()
                            + ALLOCATION
                            + size_of::<Value>()
                            + json_heap_bytes(item)
                    })
                    .sum::<usize>()
        }
    }
}

/// Single-instance history. Offsets are `<run id>-<n>`, `n` counting across all rooms of the
/// run: an offset from before a restart is recognised as such (its messages are gone), and a
/// room that expired and starts again never hands out an offset it handed out before.
///
/// Its memory is bounded twice: a room is dropped `max_age` after its last message, and all
/// rooms together hold at most `max_bytes` (estimated), the rooms least recently published to
/// dropped first. A dropped room's offsets are gaps, as an expired room's.
pub struct MemoryHistory {
    run: String,
    rooms: Mutex<Rooms>,
    max_messages: usize,
    max_age: Duration,
    max_bytes: usize,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Rooms {
    logs: HashMap<Arc<str>, RoomLog>,
    /// Rooms by their last offset: the least recently published to first, which is also the
    /// order in which they expire.
    by_last: BTreeMap<u64, Arc<str>>,
    /// The last offset issued in this run, in any room.
    issued: u64,
    /// What all logs are counted for against `max_bytes`.
    bytes: usize,
    /// The newest last offset of a room dropped whole (expired or evicted).
    dropped_rooms_through: u64,
}

impl Rooms {
    /// Drops the whole log of the room whose last offset is `last`.
    fn drop_room(&mut self, last: u64) {
        if let Some(name) = self.by_last.remove(&last)
            && let Some(log) = self.logs.remove(&name)
        {
            self.bytes -= log.bytes + room_bytes(&name);
            self.dropped_rooms_through = self.dropped_rooms_through.max(last);
        }
    }
}

/// A token that differs between runs and between calls: names a run or a stream generation.
fn fresh_token() -> String {
    use std::sync::atomic::AtomicU64;
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let token = RandomState::new().hash_one((Instant::now(), std::process::id(), call));
    format!("{token:016x}")
}

impl MemoryHistory {
    fn new(
        max_messages: usize,
        max_age: Duration,
        max_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            run: fresh_token()[..8].to_owned(),
            rooms: Mutex::default(),
            max_messages: max_messages.max(1),
            max_age,
            max_bytes,
            metrics,
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
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let rooms = &mut *rooms;
        // Read under the lock, so that rooms' last times grow with their last offsets: the
        // expired rooms are the first ones by last offset.
        let now = Instant::now();
        while let Some((&last, oldest)) = rooms.by_last.first_key_value()
            && rooms
                .logs
                .get(oldest)
                .is_some_and(|log| now.duration_since(log.last_at) > self.max_age)
        {
            rooms.drop_room(last);
        }
        let born_after = rooms.issued;
        rooms.issued += 1;
        let n = rooms.issued;
        let name: Arc<str> = room.into();
        let log = rooms.logs.entry(name.clone()).or_insert_with(|| RoomLog {
            name,
            born_after,
            dropped_through: 0,
            last: 0,
            last_at: now,
            entries: VecDeque::new(),
            bytes: 0,
        });
        if log.last == 0 {
            rooms.bytes += room_bytes(room);
        } else {
            rooms.by_last.remove(&log.last);
        }
        rooms.by_last.insert(n, log.name.clone());
        log.last = n;
        log.last_at = now;
        let message = Message::new(n, now, event, data);
        log.bytes += message.bytes;
        rooms.bytes += message.bytes;
        log.entries.push_back(message);
        while log.entries.len() > self.max_messages
            || log
                .entries
                .front()
                .is_some_and(|oldest| now.duration_since(oldest.at) > self.max_age)
        {
            rooms.bytes -= log.drop_oldest();
        }
        let mut evicted = 0;
        while rooms.bytes > self.max_bytes
            && let Some((&last, _)) = rooms.by_last.first_key_value()
        {
            if last == n {
                // This room alone is over the budget: its own oldest messages go, the new one
                // stays.
                if let Some(log) = rooms.logs.get_mut(room) {
                    while rooms.bytes > self.max_bytes && log.entries.len() > 1 {
                        rooms.bytes -= log.drop_oldest();
                    }
                }
                break;
            }
            rooms.drop_room(last);
            evicted += 1;
        }
        self.metrics.history(rooms.bytes, evicted);
        self.offset(n)
    }

    /// A room without a log answers the last offset issued: whatever it gets later is newer.
    fn head(&self, room: &str) -> Head {
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let last = rooms.logs.get(room).map_or(rooms.issued, |log| log.last);
        Head::At(self.offset(last))
    }

    fn replay(&self, room: &str, since: &Since) -> Replay {
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let log = rooms
            .logs
            .get(room)
            .filter(|log| log.last_at.elapsed() <= self.max_age);
        let after = match since {
            Since::Head(Head::Unknown) => return Replay::Gap,
            Since::Head(Head::Empty) => 0,
            Since::Head(Head::At(head)) => match self.parse(head) {
                // The room was dropped whole since its head was read (evicted, between a
                // handshake and its replay): what it got meanwhile went with it.
                Some(n)
                    if log.is_none_or(|log| log.born_after > n)
                        && rooms.dropped_rooms_through > n =>
                {
                    return Replay::Gap;
                }
                Some(n) if log.is_some_and(|log| log.dropped_through > n) => return Replay::Gap,
                Some(n) => n,
                None => 0,
            },
            Since::Client(offset) => match (self.parse(offset), log) {
                (Some(n), Some(log))
                    if n >= log.born_after && n >= log.dropped_through && n <= rooms.issued =>
                {
                    n
                }
                // From another run, older than what is kept, expired, evicted, or never issued.
                _ => return Replay::Gap,
            },
        };
        let entries = log
            .map(|log| {
                log.entries
                    .iter()
                    .filter(|kept| kept.n > after)
                    .map(|kept| Entry {
                        offset: self.offset(kept.n),
                        event: kept.event.clone(),
                        data: kept.data.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Replay::Entries(entries)
    }
}

/// Cluster history: one Redis stream per room (`sockgate:history:{<room>}`), trimmed to about
/// `max_messages` entries, expiring `max_age` after its last message, and beside it the
/// stream's generation (`…:epoch`, same lifetime), created together with the stream by one
/// script. Offsets are `<generation>:<stream id>`: a stream that expired, was lost with
/// Redis's data, or was retired because a message could not be kept starts a new generation,
/// and an offset of an older one is a gap, not a position in the new stream.
#[derive(Clone)]
pub struct RedisHistory {
    client: RedisClient,
    /// While Redis is away nothing is kept or read (each command would wait for its timeout
    /// with the room locked): messages go out live only, and a reconnecting client is told
    /// to refetch.
    link: Link,
    max_messages: usize,
    max_age: Duration,
    /// Rooms with a message that could not be kept: their stream's generation is retired as
    /// soon as Redis answers, so no instance replays across the hole.
    unkept: Arc<Unkept>,
}

#[derive(Default)]
struct Unkept {
    rooms: Mutex<HashSet<String>>,
    retiring: AtomicBool,
}

/// Keeps a message, starting a new generation when there is none (new, expired or lost
/// stream) or when asked to (a message of this room could not be kept). Each entry names the
/// entry before it (`p`, empty for a generation's first): trimming leaves no trace a reader
/// can check (`max-deleted-entry-id` only follows `XDEL`), so a replay checks that the first
/// entry it reads follows the offset it starts from.
/// When ARGV[7] names a channel, the entry is also published there, in the same step (so the
/// channel carries a room's entries in stream order): ARGV[8], the start of a JSON header the
/// script completes with the entry's place, then a newline and the data ([`super::relay`]).
/// KEYS: stream, generation. ARGV: new generation, max len, ttl ms, event, data, "1" = retire,
/// relay channel or "", relay header start. Returns generation, id, predecessor's id.
const APPEND_SCRIPT: &str = r#"
local epoch = redis.call('GET', KEYS[2])
if (not epoch) or ARGV[6] == '1' or redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1])
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch)
end
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local prev = ''
if #newest > 0 then prev = newest[1][1] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'p', prev, 'e', ARGV[4], 'd', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if ARGV[7] ~= '' then
  redis.call('SPUBLISH', ARGV[7], ARGV[8] .. ',"g":"' .. epoch .. '","i":"' .. id .. '","p":"' .. prev .. '"}\n' .. ARGV[5])
end
return {epoch, id, prev}
"#;

/// Reads, in one step, the generation and the entries after ARGV[1] (at most ARGV[2]).
/// KEYS: stream, generation.
const REPLAY_SCRIPT: &str = r"
local epoch = redis.call('GET', KEYS[2])
if not epoch then return {'', {}} end
return {epoch, redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])}
";

/// The generation and the newest id, in one step. KEYS: stream, generation.
const HEAD_SCRIPT: &str = r"
local epoch = redis.call('GET', KEYS[2])
if not epoch then return {} end
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest == 0 then return {} end
return {epoch, newest[1][1]}
";

/// The scripts above, sent by their hash (`EVALSHA`, loaded again when Redis does not know
/// them: after a restart or a failover). `EVAL` would ship a script's whole text with every
/// call, and Redis would hash it every time: the append runs once per message kept.
static APPEND: LazyLock<Script> = LazyLock::new(|| Script::from_lua(APPEND_SCRIPT));
static REPLAY: LazyLock<Script> = LazyLock::new(|| Script::from_lua(REPLAY_SCRIPT));
static HEAD: LazyLock<Script> = LazyLock::new(|| Script::from_lua(HEAD_SCRIPT));

/// How many entries a replay reads at most beyond `max_messages`: `MAXLEN ~` trims whole
/// nodes (100 entries by default), so a stream holds up to that many more. A replay that
/// would need more is a gap, never a partial replay.
const TRIM_SLACK: usize = 1_000;

impl RedisHistory {
    /// The stream and its generation.
    fn keys(room: &str) -> Vec<String> {
        let stream = Self::stream_key(room);
        let epoch = Self::epoch_key(&stream);
        vec![stream, epoch]
    }

    /// `sockgate:history:{<room>}`: the room is the key's hash tag, so the stream and its
    /// generation (`…:epoch`) share a slot on a Redis Cluster, where a script may only touch
    /// the keys of one slot. A room the tag would come out empty for (empty, or starting with
    /// `}`) gets `_` as its tag.
    fn stream_key(room: &str) -> String {
        if room.is_empty() || room.starts_with('}') {
            format!("sockgate:history:{{_{room}}}")
        } else {
            format!("sockgate:history:{{{room}}}")
        }
    }

    fn epoch_key(stream: &str) -> String {
        format!("{stream}:epoch")
    }

    fn is_unkept(&self, room: &str) -> bool {
        let rooms = self.unkept.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms.contains(room)
    }

    /// Remembers that `room` lost a message, and retires its generation once Redis answers.
    fn mark_unkept(&self, room: &str) {
        let mut rooms = self.unkept.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms.insert(room.to_owned());
        drop(rooms);
        if !self.unkept.retiring.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().retire_unkept());
        }
    }

    /// Deletes the generation of every room that lost a message (a reconnect on any instance
    /// then gets a gap, and the next message starts a new generation), retrying until Redis
    /// answers.
    async fn retire_unkept(self) {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if !self.link.is_up() {
                continue;
            }
            let rooms: Vec<String> = {
                let rooms = self.unkept.rooms.lock().unwrap_or_else(|e| e.into_inner());
                rooms.iter().cloned().collect()
            };
            for room in rooms {
                let epoch = Self::epoch_key(&Self::stream_key(&room));
                let retired: Result<i64, _> = self.client.del(epoch).await;
                if retired.is_ok() {
                    let mut rooms = self.unkept.rooms.lock().unwrap_or_else(|e| e.into_inner());
                    rooms.remove(&room);
                }
            }
            let rooms = self.unkept.rooms.lock().unwrap_or_else(|e| e.into_inner());
            if rooms.is_empty() {
                self.unkept.retiring.store(false, Ordering::Release);
                return;
            }
        }
    }

    async fn append(&self, room: &str, event: &str, data: &Value) -> Option<String> {
        let kept = self.append_relayed(room, event, data, None).await?;
        Some(kept.offset())
    }

    /// Keeps a message and, with `relay` (a channel and the start of a header), publishes it
    /// there in the same step. `None` if it could not be kept (nothing was published then).
    pub async fn append_relayed(
        &self,
        room: &str,
        event: &str,
        data: &Value,
        relay: Option<(&str, String)>,
    ) -> Option<Appended> {
        if !self.link.is_up() {
            self.mark_unkept(room);
            return None;
        }
        let retire = if self.is_unkept(room) { "1" } else { "0" };
        let ttl_ms = self.max_age.as_millis().max(1) as u64;
        let (channel, header) = relay.unwrap_or_default();
        let args: Vec<String> = vec![
            fresh_token(),
            self.max_messages.to_string(),
            ttl_ms.to_string(),
            event.to_owned(),
            data.to_string(),
            retire.to_owned(),
            channel.to_owned(),
            header,
        ];
        let added: Result<Vec<String>, _> = APPEND
            .evalsha_with_reload(&self.client, Self::keys(room), args)
            .await;
        match added.map(<[String; 3]>::try_from) {
            Ok(Ok([epoch, id, prev])) => {
                if retire == "1" {
                    let mut rooms = self.unkept.rooms.lock().unwrap_or_else(|e| e.into_inner());
                    rooms.remove(room);
                }
                Some(Appended { epoch, id, prev })
            }
            Ok(Err(reply)) => {
                tracing::warn!(room, "history not kept (unexpected Redis reply {reply:?})");
                self.mark_unkept(room);
                None
            }
            Err(e) => {
                tracing::warn!(room, "history not kept (Redis): {e}");
                self.link.command_failed("history append", &e);
                self.mark_unkept(room);
                None
            }
        }
    }

    async fn head(&self, room: &str) -> Head {
        if !self.link.is_up() {
            // Not `Empty`: that would make everything the stream holds "newer than the
            // handshake", and once the link is back the replay would send old messages.
            return Head::Unknown;
        }
        let newest: Result<Vec<String>, _> = HEAD
            .evalsha_with_reload(&self.client, Self::keys(room), Vec::<String>::new())
            .await;
        match newest.map(<[String; 2]>::try_from) {
            Ok(Ok([epoch, id])) => Head::At(format!("{epoch}:{id}")),
            Ok(Err(_)) => Head::Empty,
            Err(e) => {
                tracing::warn!(room, "history head unknown (Redis): {e}");
                Head::Unknown
            }
        }
    }

    pub async fn replay(&self, room: &str, since: &Since) -> Replay {
        if !self.link.is_up() {
            return match since {
                Since::Client(_) | Since::Head(Head::Unknown) => Replay::Gap,
                Since::Head(_) => Replay::Entries(Vec::new()),
            };
        }
        if self.is_unkept(room) && !matches!(since, Since::Head(_)) {
            return Replay::Gap;
        }
        let (epoch, after) = match since {
            Since::Head(Head::Unknown) => return Replay::Gap,
            Since::Head(Head::Empty) => (None, None),
            Since::Head(Head::At(offset)) | Since::Client(offset) => match offset.split_once(':') {
                Some((epoch, id)) => (Some(epoch), Some(id)),
                None => return Replay::Gap,
            },
        };
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let limit = self.max_messages + TRIM_SLACK;
        let read: Result<RedisValue, _> = REPLAY
            .evalsha_with_reload(
                &self.client,
                Self::keys(room),
                vec![start, (limit + 1).to_string()],
            )
            .await;
        let Some((current, entries)) = read.ok().and_then(parse_replay) else {
            return Replay::Gap;
        };
        let client = matches!(since, Since::Client(_));
        if epoch.is_some_and(|e| e != current) {
            // Another generation: the stream this offset points into is gone.
            return if client {
                Replay::Gap
            } else {
                // A head read at the handshake, then the stream was recreated: everything
                // in the new one came later.
                self.whole(room).await
            };
        }
        // The first entry read must be the one right after the offset (or the generation's
        // first): else what came between was trimmed (a client far behind, or a head read at
        // the handshake followed by more messages than trimming keeps).
        let follows = after.unwrap_or_default();
        if entries
            .first()
            .is_some_and(|first| first.prev.as_deref() != Some(follows))
        {
            return Replay::Gap;
        }
        if entries.len() > limit {
            return Replay::Gap;
        }
        Replay::Entries(
            entries
                .into_iter()
                .map(|kept| Entry {
                    offset: format!("{current}:{}", kept.id),
                    event: kept.event,
                    data: kept.data,
                })
                .collect(),
        )
    }

    /// The whole current stream (a head from a retired generation).
    async fn whole(&self, room: &str) -> Replay {
        Box::pin(self.replay(room, &Since::Head(Head::Empty))).await
    }
}

/// One stream entry as read.
struct Kept {
    id: String,
    /// The entry before it in its generation (`""` for the first); `None` when the entry does
    /// not say (written by an older sockgate): then it cannot be shown to follow anything.
    prev: Option<String>,
    event: Arc<str>,
    data: Arc<Value>,
}

/// (generation, entries) from the replay script's answer.
fn parse_replay(reply: RedisValue) -> Option<(String, Vec<Kept>)> {
    let RedisValue::Array(parts) = reply else {
        return None;
    };
    let mut parts = parts.into_iter();
    let epoch = parts.next()?.into_string()?;
    let RedisValue::Array(raw) = parts.next()? else {
        return None;
    };
    let mut entries = Vec::with_capacity(raw.len());
    for entry in raw {
        let RedisValue::Array(entry) = entry else {
            return None;
        };
        let mut entry = entry.into_iter();
        let id = entry.next()?.into_string()?;
        let RedisValue::Array(fields) = entry.next()? else {
            return None;
        };
        let fields: Vec<String> = fields
            .into_iter()
            .map(|f| f.into_string())
            .collect::<Option<_>>()?;
        let field = |name: &str| {
            fields
                .chunks(2)
                .find(|kv| kv[0] == name)
                .and_then(|kv| kv.get(1))
        };
        // An entry that cannot be read makes the whole read fail: a gap, never a skip.
        let data = serde_json::from_str(field("d")?).ok()?;
        let event = field("e")?;
        entries.push(Kept {
            id,
            prev: field("p").cloned(),
            event: event.as_str().into(),
            data: Arc::new(data),
        });
    }
    Some((epoch, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash tag Redis Cluster hashes for `key`: what is between the first `{` and the
    /// next `}`, when not empty; else the whole key.
    fn hash_tag(key: &str) -> &str {
        key.find('{')
            .and_then(|open| {
                let rest = &key[open + 1..];
                rest.find('}')
                    .filter(|&close| close > 0)
                    .map(|close| &rest[..close])
            })
            .unwrap_or(key)
    }

    #[test]
    fn a_rooms_keys_share_one_slot() {
        assert_eq!(
            RedisHistory::keys("user:42"),
            [
                "sockgate:history:{user:42}",
                "sockgate:history:{user:42}:epoch"
            ]
        );
        for room in ["user:42", "", "}x", "user:{a}", "user:a}b", "{", "user:{}"] {
            let [stream, epoch]: [String; 2] =
                RedisHistory::keys(room).try_into().expect("two keys");
            assert_eq!(hash_tag(&stream), hash_tag(&epoch), "room {room:?}");
            assert_ne!(hash_tag(&stream), stream, "room {room:?} has a tag");
        }
    }
    use serde_json::json;

    fn offsets(replay: Replay) -> Vec<String> {
        match replay {
            Replay::Entries(e) => e.into_iter().map(|e| e.offset).collect(),
            Replay::Gap => vec!["gap".into()],
        }
    }

    fn memory(max_messages: usize, max_age: Duration, max_bytes: usize) -> MemoryHistory {
        MemoryHistory::new(max_messages, max_age, max_bytes, Arc::new(Metrics::new()))
    }

    /// What the history counts now, checked against its rooms.
    fn counted(h: &MemoryHistory) -> usize {
        let rooms = h.rooms.lock().unwrap();
        let sum: usize = rooms
            .logs
            .values()
            .map(|log| log.bytes + room_bytes(&log.name))
            .sum();
        assert_eq!(rooms.bytes, sum, "the total is its rooms' sum");
        assert_eq!(rooms.by_last.len(), rooms.logs.len());
        rooms.bytes
    }

    fn evictions(h: &MemoryHistory) -> u64 {
        let text = h.metrics.render();
        let line = text
            .lines()
            .find(|l| l.starts_with("sockgate_history_rooms_evicted_total "))
            .expect("the eviction counter is rendered");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn the_byte_cap_holds_and_evicts_the_least_recently_published_rooms() {
        let data = json!({"text": "x".repeat(1000)});
        let one = Message::new(1, Instant::now(), "n", &data).bytes + room_bytes("user:0000");
        let cap = 20 * one;
        let h = memory(100, Duration::from_secs(60), cap);
        let first: Vec<String> = (0..20)
            .map(|i| h.append(&format!("user:{i:04}"), "n", &data))
            .collect();
        assert_eq!(evictions(&h), 0, "20 rooms fit");
        // Published to again: no longer the oldest.
        let again = h.append("user:0000", "n", &json!(1));
        for i in 20..1000 {
            h.append(&format!("user:{i:04}"), "n", &data);
            assert!(counted(&h) <= cap, "over the cap after room {i}");
        }
        assert!(evictions(&h) >= 980, "{}", evictions(&h));
        // An evicted room's offset is a gap; so is a head read before it went.
        assert_eq!(
            offsets(h.replay("user:0001", &Since::Client(first[1].clone()))),
            vec!["gap"]
        );
        assert_eq!(
            offsets(h.replay("user:0001", &Since::Head(Head::At(first[1].clone())))),
            vec!["gap"]
        );
        // The newest rooms are kept whole.
        let kept = h.head("user:0999");
        let Head::At(newest) = kept else {
            panic!("{kept:?}")
        };
        assert!(offsets(h.replay("user:0999", &Since::Client(newest.clone()))).is_empty());
        // The room published to last among the first ones went later than the others, but
        // went: nothing but a gap is ever answered for it.
        assert_eq!(
            offsets(h.replay("user:0000", &Since::Client(again))),
            vec!["gap"]
        );
        let rooms = h.rooms.lock().unwrap();
        assert!(rooms.logs.len() <= 20 && !rooms.logs.is_empty());
        assert!(rooms.logs.contains_key("user:0999"));
    }

    #[test]
    fn a_room_evicted_between_its_head_and_its_replay_is_a_gap() {
        let data = json!({"text": "x".repeat(1000)});
        let one = Message::new(1, Instant::now(), "n", &data).bytes + room_bytes("user:0000");
        let h = memory(100, Duration::from_secs(60), 10 * one);
        h.append("user:other", "n", &data);
        // Read at the handshake: the room has nothing yet.
        let head = h.head("user:a");
        h.append("user:a", "n", &data);
        for i in 0..30 {
            h.append(&format!("user:{i:04}"), "n", &data);
        }
        assert_eq!(
            offsets(h.replay("user:a", &Since::Head(head.clone()))),
            vec!["gap"]
        );
        // Without an eviction since the head, a room that got nothing replays nothing.
        let head = h.head("user:b");
        assert!(offsets(h.replay("user:b", &Since::Head(head))).is_empty());
        // And one that got messages replays them.
        let head = h.head("user:c");
        let o = h.append("user:c", "n", &data);
        assert_eq!(offsets(h.replay("user:c", &Since::Head(head))), vec![o]);
    }

    #[test]
    fn one_room_over_the_cap_keeps_its_newest_message() {
        let data = json!({"text": "x".repeat(1000)});
        let one = Message::new(1, Instant::now(), "n", &data).bytes + room_bytes("user:a");
        let h = memory(100, Duration::from_secs(60), 3 * one);
        let o: Vec<String> = (0..10).map(|_| h.append("user:a", "n", &data)).collect();
        assert!(counted(&h) <= 3 * one);
        let kept = offsets(h.replay("user:a", &Since::Client(o[7].clone())));
        assert_eq!(kept, vec![o[8].clone(), o[9].clone()]);
        assert_eq!(
            offsets(h.replay("user:a", &Since::Client(o[0].clone()))),
            vec!["gap"]
        );
        let huge = json!({"text": "y".repeat(10 * one)});
        let last = h.append("user:a", "n", &huge);
        assert_eq!(
            offsets(h.replay("user:a", &Since::Client(o[9].clone()))),
            vec![last],
            "a message larger than the cap is still kept, alone"
        );
        assert_eq!(evictions(&h), 0, "no other room to evict");
    }

    #[test]
    fn replays_after_an_offset_and_reports_gaps() {
        let h = memory(3, Duration::from_secs(60), usize::MAX);
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
            offsets(h.replay("user:a", &Since::Head(Head::At(o[3].clone())))),
            vec![o[4].clone()]
        );
        assert!(offsets(h.replay("user:b", &Since::Head(Head::Empty))).is_empty());
        assert_eq!(h.head("user:a"), Head::At(o[4].clone()));
    }

    #[test]
    fn a_room_that_expired_never_reissues_an_offset() {
        let h = memory(100, Duration::from_millis(50), usize::MAX);
        let old: Vec<String> = (0..5).map(|i| h.append("user:a", "n", &json!(i))).collect();
        std::thread::sleep(Duration::from_millis(80));
        let new: Vec<String> = (0..7).map(|i| h.append("user:a", "n", &json!(i))).collect();
        assert!(new.iter().all(|o| !old.contains(o)), "{old:?} {new:?}");
        // Nothing of this room was issued between the old last offset and the new log.
        assert_eq!(
            offsets(h.replay("user:a", &Since::Client(old[4].clone()))),
            new
        );
        // An older offset: its successors expired with the old log.
        assert_eq!(
            offsets(h.replay("user:a", &Since::Client(old[3].clone()))),
            vec!["gap"]
        );
        // Other rooms published meanwhile: what this room had then cannot be told apart.
        let seen = h.append("user:b", "n", &json!(0));
        std::thread::sleep(Duration::from_millis(80));
        h.append("user:c", "n", &json!(0));
        h.append("user:b", "n", &json!(1));
        assert_eq!(
            offsets(h.replay("user:b", &Since::Client(seen))),
            vec!["gap"]
        );
    }

    #[test]
    fn a_replay_read_is_whole_or_nothing() {
        let s = |t: &str| RedisValue::String(t.into());
        let entry = |id: &str, data: &str| {
            RedisValue::Array(vec![
                s(id),
                RedisValue::Array(vec![s("p"), s("5-0"), s("e"), s("n"), s("d"), s(data)]),
            ])
        };
        let reply = |entries| RedisValue::Array(vec![s("g1"), RedisValue::Array(entries)]);
        let (epoch, entries) =
            parse_replay(reply(vec![entry("6-0", "1"), entry("7-0", "{\"a\":2}")])).unwrap();
        assert_eq!(epoch, "g1");
        let ids: Vec<_> = entries.iter().map(|kept| kept.id.as_str()).collect();
        assert_eq!(ids, ["6-0", "7-0"]);
        assert_eq!(entries[0].prev.as_deref(), Some("5-0"));
        // One unreadable entry fails the read (a gap), instead of being skipped.
        assert!(parse_replay(reply(vec![entry("6-0", "1"), entry("7-0", "{")])).is_none());
    }

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
