//! The single-instance history: each room's recent messages in memory, bounded by
//! `history.max_messages`, `history.max_age_ms` and, for all rooms together, `history.max_bytes`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::offsets::{Entry, Head, Replay, Since, fresh_token};
use crate::metrics::Metrics;
use crate::realtime::payload::Payload;

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
    data: Payload,
    /// What it is counted for against `max_bytes`.
    bytes: usize,
}

/// What an allocation costs beyond what it asks for (the allocator's header and rounding).
const ALLOCATION: usize = 16;
/// An `Arc`'s counts, before its value.
const ARC_COUNTS: usize = 2 * size_of::<usize>();

impl Message {
    fn new(n: u64, at: Instant, event: &str, data: &Payload) -> Self {
        // The data's text is shared with the publish that kept it, but outlives it here.
        let bytes = size_of::<Message>()
            + ARC_COUNTS
            + ALLOCATION
            + event.len()
            + ARC_COUNTS
            + ALLOCATION
            + data.json().len();
        Self {
            n,
            at,
            event: event.into(),
            data: data.clone(),
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

impl MemoryHistory {
    pub(super) fn new(
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

    pub(super) fn append(&self, room: &str, event: &str, data: &Payload) -> String {
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
    pub(super) fn head(&self, room: &str) -> Head {
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let last = rooms.logs.get(room).map_or(rooms.issued, |log| log.last);
        Head::At(self.offset(last))
    }

    pub(super) fn replay(&self, room: &str, since: &Since) -> Replay {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(value: serde_json::Value) -> Payload {
        Payload::from_value(&value).expect("encodes")
    }

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
        let data = p(json!({"text": "x".repeat(1000)}));
        let one = Message::new(1, Instant::now(), "n", &data).bytes + room_bytes("user:0000");
        let cap = 20 * one;
        let h = memory(100, Duration::from_secs(60), cap);
        let first: Vec<String> = (0..20)
            .map(|i| h.append(&format!("user:{i:04}"), "n", &data))
            .collect();
        assert_eq!(evictions(&h), 0, "20 rooms fit");
        // Published to again: no longer the oldest.
        let again = h.append("user:0000", "n", &p(json!(1)));
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
        let data = p(json!({"text": "x".repeat(1000)}));
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
        let data = p(json!({"text": "x".repeat(1000)}));
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
        let huge = p(json!({"text": "y".repeat(10 * one)}));
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
        let o: Vec<String> = (0..5)
            .map(|i| h.append("user:a", "n", &p(json!(i))))
            .collect();
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
        let old: Vec<String> = (0..5)
            .map(|i| h.append("user:a", "n", &p(json!(i))))
            .collect();
        std::thread::sleep(Duration::from_millis(80));
        let new: Vec<String> = (0..7)
            .map(|i| h.append("user:a", "n", &p(json!(i))))
            .collect();
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
        let seen = h.append("user:b", "n", &p(json!(0)));
        std::thread::sleep(Duration::from_millis(80));
        h.append("user:c", "n", &p(json!(0)));
        h.append("user:b", "n", &p(json!(1)));
        assert_eq!(
            offsets(h.replay("user:b", &Since::Client(seen))),
            vec!["gap"]
        );
    }
}
