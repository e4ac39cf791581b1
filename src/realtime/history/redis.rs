//! The cluster history: each room's recent messages in a Redis stream, shared by every
//! instance, read and written by Lua scripts so that an append and its relay, or a replay, is
//! one step.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use fred::clients::Client as RedisClient;
use fred::interfaces::KeysInterface;
use fred::types::Value as RedisValue;
use fred::types::scripts::Script;

use super::appends::{self, Appender, Failure, Group, Message, payload_bytes};
use super::offsets::{
    Appended, Entry, Head, Replay, Since, sequence_id, sequence_of, write_fresh_token,
};
use crate::cluster::Link;
use crate::realtime::payload::Payload;

/// Cluster history: one Redis stream per room (`sockgate:history:{<room>}`), trimmed to about
/// `max_messages` entries, expiring `max_age` after its last message, and beside it the
/// stream's meta hash (`…:epoch`, same lifetime): its generation (`g`) and the number of its
/// last message (`s`). The stream ids are the messages' numbers (`<n>-0`, from 1 in each
/// generation), so offsets are `<generation>:<n>-0`: a stream that expired, was lost with
/// Redis's data, or was retired because a message could not be kept starts a new generation,
/// and an offset of an older one is a gap, not a position in the new stream.
#[derive(Clone)]
pub struct RedisHistory {
    client: RedisClient,
    /// Sends the appends waiting at the same moment together.
    appender: Appender,
    /// While Redis is away nothing is kept or read (each command would wait for its timeout
    /// with the room locked): messages go out live only, and a reconnecting client is told
    /// to refetch.
    link: Link,
    max_messages: usize,
    /// Rooms with a message that could not be kept: their stream's generation is retired as
    /// soon as Redis answers, so no instance replays across the hole.
    unkept: Arc<Unkept>,
}

#[derive(Default)]
struct Unkept {
    rooms: Mutex<HashSet<String>>,
    retiring: AtomicBool,
}

/// How a group's entries are relayed.
#[derive(Clone, Copy)]
pub struct RelayAs<'a> {
    pub channel: &'static str,
    /// Every instance reads several entries in one message on `channel`.
    pub one_message: bool,
    /// Writes the start of an entry's header, from its event.
    pub header: &'a (dyn Fn(&str, &mut BytesMut) + Sync),
}

/// Reads, in one step, the generation, the number of its last message and the entries after
/// ARGV[1] (at most ARGV[2]). No generation (or a meta key that is not sockgate's hash, e.g.
/// an older sockgate's string): `''`. KEYS: stream, meta.
const REPLAY_SCRIPT: &str = r"
local meta = redis.pcall('HMGET', KEYS[2], 'g', 's')
if meta.err or not meta[1] then return {'', '0', {}} end
return {meta[1], meta[2] or '0', redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])}
";

/// The generation and the number of its last message, in one step (from the meta hash: the
/// stream is not read); none for no generation, or a meta key that is not sockgate's hash.
/// KEYS: meta. (`tests/js/recovery-races.test.mjs` tells this script apart from the others by
/// its text `#newest == 0`.)
const HEAD_SCRIPT: &str = r"
local newest = redis.pcall('HMGET', KEYS[1], 'g', 's')
if newest.err or #newest == 0 or not newest[1] or not newest[2] then return {} end
return newest
";

/// The scripts above, sent by their hash (`EVALSHA`, loaded again when Redis does not know
/// them: after a restart or a failover); the append's is in [`super::appends`].
static REPLAY: LazyLock<Script> = LazyLock::new(|| Script::from_lua(REPLAY_SCRIPT));
static HEAD: LazyLock<Script> = LazyLock::new(|| Script::from_lua(HEAD_SCRIPT));

/// What a stream's key is followed by in its meta hash's key.
const META_SUFFIX: &str = ":epoch";

/// How many entries a replay reads at most beyond `max_messages`: `MAXLEN ~` trims whole
/// nodes (100 entries by default), so a stream holds up to that many more. A replay that
/// would need more is a gap, never a partial replay.
const TRIM_SLACK: usize = 1_000;

impl RedisHistory {
    /// Needs a runtime: it starts the task that sends appends to Redis.
    pub(super) fn new(
        client: RedisClient,
        link: Link,
        max_messages: usize,
        max_age: Duration,
    ) -> Self {
        let ttl_ms = max_age.as_millis().max(1) as u64;
        RedisHistory {
            appender: Appender::start(client.clone(), max_messages, ttl_ms, link.pubsub()),
            client,
            link,
            max_messages,
            unkept: Arc::default(),
        }
    }

    /// The stream and its meta hash.
    fn keys(room: &str) -> [String; 2] {
        let stream = Self::stream_key(room);
        let meta = Self::meta_key(&stream);
        [stream, meta]
    }

    /// `sockgate:history:{<room>}`: the room is the key's hash tag, so the stream and its
    /// meta hash (`…:epoch`) share a slot on a Redis Cluster, where a script may only touch
    /// the keys of one slot. A room the tag would come out empty for (empty, or starting with
    /// `}`) gets `_` as its tag.
    fn stream_key(room: &str) -> String {
        if room.is_empty() || room.starts_with('}') {
            format!("sockgate:history:{{_{room}}}")
        } else {
            format!("sockgate:history:{{{room}}}")
        }
    }

    /// Named `…:epoch` since it held the generation alone (as a string): an older sockgate's
    /// is replaced by the next append, and read as no generation.
    fn meta_key(stream: &str) -> String {
        format!("{stream}{META_SUFFIX}")
    }

    /// Writes `room`'s meta key, whose start is its stream key (as [`Self::keys`] names them),
    /// and returns the stream key's length: both keys are slices of one text.
    fn write_keys(out: &mut BytesMut, room: &str) -> usize {
        let start = out.len();
        out.extend_from_slice(b"sockgate:history:{");
        if room.is_empty() || room.starts_with('}') {
            out.extend_from_slice(b"_");
        }
        out.extend_from_slice(room.as_bytes());
        out.extend_from_slice(b"}");
        let stream = out.len() - start;
        out.extend_from_slice(META_SUFFIX.as_bytes());
        stream
    }

    /// A piece of a room's messages as one group of an append call. Its keys, generation,
    /// count, events and relay headers are written into one buffer (one allocation, where each
    /// was a `String` of its own); the data is shared with the payloads, not copied.
    fn group(
        room: &str,
        piece: &[(&str, &Payload)],
        relay: Option<RelayAs<'_>>,
        retire: bool,
    ) -> Group {
        let per_message = if relay.is_some() { room.len() + 96 } else { 0 };
        let size = 2 * room.len()
            + 64
            + piece
                .iter()
                .map(|(event, _)| 2 * event.len() + per_message)
                .sum::<usize>();
        let mut text = BytesMut::with_capacity(size);
        let stream = Self::write_keys(&mut text, room);
        let meta = text.len();
        write_fresh_token(&mut text);
        let epoch = text.len();
        // Infallible on a BytesMut.
        let _ = write!(text, "{}", piece.len());
        let count = text.len();
        let mut ends = Vec::with_capacity(piece.len());
        for (event, _) in piece {
            text.extend_from_slice(event.as_bytes());
            let event_end = text.len();
            if let Some(relay) = relay {
                (relay.header)(event, &mut text);
            }
            ends.push((event_end, text.len()));
        }
        let text = text.freeze();
        let mut at = count;
        let messages = piece
            .iter()
            .zip(ends)
            .map(|((_, data), (event_end, header_end))| {
                let message = Message {
                    event: text.slice(at..event_end),
                    data: payload_bytes(data),
                    header: text.slice(event_end..header_end),
                };
                at = header_end;
                message
            })
            .collect();
        Group {
            keys: [text.slice(..stream), text.slice(..meta)],
            new_epoch: text.slice(meta..epoch),
            retire,
            count: text.slice(epoch..count),
            relay: relay.map(|r| (r.channel, r.one_message)),
            messages,
        }
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
                let meta = Self::meta_key(&Self::stream_key(&room));
                let retired: Result<i64, _> = self.client.del(meta).await;
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

    pub(super) async fn append(&self, room: &str, event: &str, data: &Payload) -> Option<String> {
        let mut kept = self.append_group(room, &[(event, data)], None).await;
        Some(kept.pop()??.offset())
    }

    /// Keeps a room's messages, in order, and with `relay` publishes each on its channel in
    /// the same step. Per message, where it was kept; `None` for one
    /// that could not be (nothing was published for it then), and for every one after it: the
    /// room's generation is retired, so no replay crosses the hole.
    pub async fn append_group(
        &self,
        room: &str,
        messages: &[(&str, &Payload)],
        relay: Option<RelayAs<'_>>,
    ) -> Vec<Option<Appended>> {
        let mut kept = Vec::with_capacity(messages.len());
        if !self.link.is_up() {
            self.mark_unkept(room);
            kept.resize(messages.len(), None);
            return kept;
        }
        for piece in messages.chunks(appends::MAX_PER_CALL) {
            let retire = self.is_unkept(room);
            let group = Self::group(room, piece, relay, retire);
            let outcome = self.appender.append(group).await;
            if retire && !outcome.places.is_empty() {
                let mut rooms = self.unkept.rooms.lock().unwrap_or_else(|e| e.into_inner());
                rooms.remove(room);
            }
            let all = outcome.places.len() == piece.len();
            kept.extend(outcome.places.into_iter().map(Some));
            match outcome.failed {
                None if all => continue,
                None => tracing::warn!(room, "history not kept (unexpected Redis reply)"),
                Some(Failure::Refused(why)) => {
                    tracing::warn!(room, "history not kept (Redis refused it: {why})");
                }
                Some(Failure::Redis(e)) => {
                    tracing::warn!(room, "history not kept (Redis): {e}");
                    self.link.command_failed("history append", &e);
                }
            }
            self.mark_unkept(room);
            break;
        }
        kept.resize(messages.len(), None);
        kept
    }

    pub(super) async fn head(&self, room: &str) -> Head {
        if !self.link.is_up() {
            // Not `Empty`: that would make everything the stream holds "newer than the
            // handshake", and once the link is back the replay would send old messages.
            return Head::Unknown;
        }
        let [_, meta] = Self::keys(room);
        let newest: Result<Vec<String>, _> = HEAD
            .evalsha_with_reload(&self.client, vec![meta], Vec::<String>::new())
            .await;
        match newest.map(<[String; 2]>::try_from) {
            Ok(Ok([epoch, last])) => match last.parse::<u64>() {
                Ok(0) => Head::Empty,
                Ok(n) => Head::At(format!("{epoch}:{}", sequence_id(n))),
                Err(_) => Head::Unknown,
            },
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
                Self::keys(room).to_vec(),
                vec![start, (limit + 1).to_string()],
            )
            .await;
        let Some((current, last, entries)) = read.ok().and_then(parse_replay) else {
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
        if entries.len() > limit || !continuous(after, &entries, last) {
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

/// Whether `entries`, read after the offset's id `after` (`None`: from the generation's start),
/// are every message since it: the ids count the generation's messages, so the first must be
/// the one right after `after` (else what came between was trimmed: a client far behind, or a
/// head read at the handshake followed by more messages than trimming keeps) and the last the
/// generation's last, `last` (else the newest were lost with the stream, or not kept).
fn continuous(after: Option<&str>, entries: &[Kept], last: u64) -> bool {
    let Some(mut expected) = sequence_of(after.unwrap_or_default()) else {
        return false; // not an id of this history's
    };
    for kept in entries {
        expected += 1;
        if sequence_of(&kept.id) != Some(expected) {
            return false;
        }
    }
    expected == last
}

/// One stream entry as read.
struct Kept {
    id: String,
    event: Arc<str>,
    data: Payload,
}

/// (generation, the number of its last message, entries) from the replay script's answer.
fn parse_replay(reply: RedisValue) -> Option<(String, u64, Vec<Kept>)> {
    let RedisValue::Array(parts) = reply else {
        return None;
    };
    let mut parts = parts.into_iter();
    let epoch = parts.next()?.into_string()?;
    let last = parts.next()?.into_string()?.parse().ok()?;
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
        let data = Payload::from_json(field("d")?.to_owned())?;
        let event = field("e")?;
        entries.push(Kept {
            id,
            event: event.as_str().into(),
            data,
        });
    }
    Some((epoch, last, entries))
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
            let [stream, epoch] = RedisHistory::keys(room);
            let mut text = BytesMut::from(&b"before"[..]);
            let len = RedisHistory::write_keys(&mut text, room);
            assert_eq!(&text[6..], epoch.as_bytes(), "room {room:?}");
            assert_eq!(&text[6..6 + len], stream.as_bytes(), "room {room:?}");
            assert_eq!(hash_tag(&stream), hash_tag(&epoch), "room {room:?}");
            assert_ne!(hash_tag(&stream), stream, "room {room:?} has a tag");
        }
    }

    /// A group's texts are the arguments the script reads, each in its place.
    #[test]
    fn a_group_is_written_as_its_arguments() {
        let data = [
            Payload::from_json("{\"a\":1}".to_owned()).expect("json"),
            Payload::from_json("2".to_owned()).expect("json"),
        ];
        let messages = [("ev", &data[0]), ("", &data[1])];
        let header = |event: &str, out: &mut BytesMut| {
            out.extend_from_slice(b"<");
            out.extend_from_slice(event.as_bytes());
        };
        let relay = RelayAs {
            channel: "c",
            one_message: true,
            header: &header,
        };
        let text = |b: &bytes::Bytes| String::from_utf8(b.to_vec()).expect("utf-8");
        for relay in [Some(relay), None] {
            let group = RedisHistory::group("user:1", &messages, relay, true);
            assert_eq!(
                group.keys.each_ref().map(text),
                RedisHistory::keys("user:1")
            );
            assert_eq!(group.new_epoch.len(), 16);
            assert_eq!(text(&group.count), "2");
            assert!(group.retire);
            assert_eq!(group.relay, relay.map(|r| (r.channel, true)));
            let got: Vec<_> = group
                .messages
                .iter()
                .map(|m| (text(&m.event), text(&m.data), text(&m.header)))
                .collect();
            let headers = match relay {
                Some(_) => ["<ev", "<"],
                None => ["", ""],
            };
            let want = [
                (
                    "ev".to_owned(),
                    "{\"a\":1}".to_owned(),
                    headers[0].to_owned(),
                ),
                (String::new(), "2".to_owned(), headers[1].to_owned()),
            ];
            assert_eq!(got, want);
        }
        let other = RedisHistory::group("user:1", &messages, None, false);
        assert_ne!(
            other.new_epoch,
            RedisHistory::group("user:1", &messages, None, false).new_epoch
        );
    }

    #[test]
    fn a_replay_read_is_whole_or_nothing() {
        let s = |t: &str| RedisValue::String(t.into());
        let entry = |id: &str, data: &str| {
            RedisValue::Array(vec![
                s(id),
                RedisValue::Array(vec![s("e"), s("n"), s("d"), s(data)]),
            ])
        };
        let reply = |entries| RedisValue::Array(vec![s("g1"), s("7"), RedisValue::Array(entries)]);
        let (epoch, last, entries) =
            parse_replay(reply(vec![entry("6-0", "1"), entry("7-0", "{\"a\":2}")])).unwrap();
        assert_eq!((epoch.as_str(), last), ("g1", 7));
        let ids: Vec<_> = entries.iter().map(|kept| kept.id.as_str()).collect();
        assert_eq!(ids, ["6-0", "7-0"]);
        // One unreadable entry fails the read (a gap), instead of being skipped.
        assert!(parse_replay(reply(vec![entry("6-0", "1"), entry("7-0", "{")])).is_none());
    }

    #[test]
    fn a_replay_is_continuous_only_from_the_offset_through_the_generations_last() {
        let kept = |n: u64| Kept {
            id: sequence_id(n),
            event: "e".into(),
            data: Payload::from_json("1".to_owned()).expect("json"),
        };
        let read = |ns: &[u64]| ns.iter().map(|&n| kept(n)).collect::<Vec<_>>();
        assert!(continuous(Some("5-0"), &read(&[6, 7]), 7));
        assert!(
            continuous(None, &read(&[1, 2]), 2),
            "from the generation's first"
        );
        assert!(continuous(Some("7-0"), &[], 7), "nothing missed");
        assert!(continuous(None, &[], 0), "no message yet");
        // Trimmed: the first read is not the one after the offset.
        assert!(!continuous(Some("4-0"), &read(&[6, 7]), 7));
        assert!(!continuous(None, &read(&[3, 4]), 4));
        // A hole inside, the newest lost, or an id of another scheme (an older sockgate's).
        assert!(!continuous(Some("5-0"), &read(&[6, 8]), 8));
        assert!(!continuous(Some("5-0"), &read(&[6]), 7));
        assert!(!continuous(Some("5-0"), &[], 7));
        assert!(!continuous(Some("1733560000000-3"), &read(&[1]), 1));
    }
}
