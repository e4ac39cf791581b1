//! Group commit of the Redis history appends: the appends waiting at the same moment go to
//! Redis in one script call (one per hash slot on a Redis Cluster), and a room's messages of
//! one batch publish are one group of that call.
//!
//! Redis spends more on running a script than on the commands inside it (setting up the call,
//! the `KEYS`/`ARGV` tables), and a kept message used to be one script call of its own, with
//! its own `PEXPIRE`s and its own relay message. Now whatever is queued when the appender
//! wakes is sent together: nothing waits for a call to fill (a lone message goes at once),
//! and calls are pipelined on the connection. A room never has two appends in flight from one
//! instance (its lock is held until its messages are delivered), so calls need no order
//! between them; within a call, a room's messages are kept and relayed in their order.

use std::sync::LazyLock;

use bytes::Bytes;
use fred::clients::Client as RedisClient;
use fred::interfaces::ClientLike;
use fred::types::scripts::Script;
use fred::types::{Key, Value};
use tokio::sync::{mpsc, oneshot};

use super::offsets::Appended;
use crate::cluster::PubSub;
use crate::realtime::payload::Payload;

/// Messages in one call at most (a room's group is never split: the caller sends bigger
/// groups in pieces): bounds how long one script holds Redis, a few µs per message.
pub const MAX_PER_CALL: usize = 256;

/// Groups waiting for the appender at most; more wait for room (each caller waits anyway).
const QUEUE: usize = 1024;

/// Keeps groups of messages, each group a room's, in order. A room's stream ids are its
/// sequence, `<n>-0` with n counting the generation's messages from 1, kept beside the stream in
/// its meta hash (`g`: the generation, `s`: the last n given): the script reads the generation
/// (`HGET`), takes the group's numbers in one `HINCRBY` and adds each message with its explicit
/// id, so the entry before a message is known without reading the stream (its id is n - 1, none
/// for n = 1), and the ids are contiguous: a replay tells a trimmed or lost entry by
/// arithmetic. A new generation starts when the room has none (new, expired or lost meta key)
/// or when asked to (a message of the room could not be kept); the stream is emptied then. A
/// meta key an older sockgate wrote (its generation as a string) is replaced the same way; one
/// of another type, or a hash without a generation (not sockgate's), is refused.
/// One `PEXPIRE` per key per call.
/// A message with a header start is also published on the relay channel (`SPUBLISH`;
/// `PUBLISH` in [`APPEND_PLAIN`]), in the same step (so
/// the channel carries a room's entries in stream order): the header completed with the
/// entry's place and the data's length in bytes (`n`), a newline, the data
/// ([`super::super::relay`]). With ARGV[4] = "1", every entry of the call travels in one
/// message, one after the other; else each in a message of its own (what older instances read).
/// KEYS: (stream, meta) per group. ARGV: max len, ttl ms, relay channel or "", "1" = one
/// relay message; then per group: new generation, "1" = retire, message count; then per
/// message: event, data, header start or "".
/// Returns per group: how many were kept, the error that stopped the rest ("" if none), the
/// generation and the first kept message's n ("", "0" if none kept). A group Redis refuses part
/// way keeps what it kept; the other groups go on.
const APPEND_SCRIPT: &str = r#"
local out, relayed = {}, {}
local a = 5
for g = 1, #KEYS, 2 do
  local stream, meta = KEYS[g], KEYS[g + 1]
  local n = tonumber(ARGV[a + 2])
  local epoch, first, kept = nil, 0, 0
  local ok, err = pcall(function()
    epoch = redis.pcall('HGET', meta, 'g')
    if type(epoch) == 'table' then
      if redis.call('TYPE', meta)['ok'] ~= 'string' then error(epoch) end
      epoch = false
    elseif (not epoch) and ARGV[a + 1] ~= '1' and redis.call('EXISTS', meta) == 1 then
      error({err = 'ERR the history meta key ' .. meta .. ' holds a hash sockgate did not write'})
    end
    if (not epoch) or ARGV[a + 1] == '1' then
      redis.call('DEL', stream, meta)
      epoch = ARGV[a]
      redis.call('HSET', meta, 'g', epoch)
    end
    first = redis.call('HINCRBY', meta, 's', n) - n + 1
    for m = 0, n - 1 do
      local at = a + 3 + 3 * m
      local data = ARGV[at + 1]
      local id = string.format('%d-0', first + m)
      redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], id, 'e', ARGV[at], 'd', data)
      kept = m + 1
      if ARGV[at + 2] ~= '' then
        local prev = ''
        if first + m > 1 then prev = string.format('%d-0', first + m - 1) end
        local entry = ARGV[at + 2] .. ',"g":"' .. epoch .. '","i":"' .. id .. '","p":"' .. prev .. '","n":' .. #data .. '}\n' .. data
        if ARGV[4] == '1' then
          table.insert(relayed, entry)
        else
          redis.call('SPUBLISH', ARGV[3], entry)
        end
      end
    end
  end)
  pcall(redis.call, 'PEXPIRE', stream, ARGV[2])
  pcall(redis.call, 'PEXPIRE', meta, ARGV[2])
  table.insert(out, tostring(kept))
  if ok then
    table.insert(out, '')
  else
    -- A refused command raises its error reply: a table with the text in `err`.
    if type(err) == 'table' then err = err.err end
    table.insert(out, tostring(err))
  end
  if kept > 0 then
    table.insert(out, epoch); table.insert(out, string.format('%d', first))
  else
    table.insert(out, ''); table.insert(out, '0')
  end
  a = a + 3 + 3 * n
end
if #relayed > 0 then redis.call('SPUBLISH', ARGV[3], table.concat(relayed)) end
return out
"#;

/// Sent by its hash (`EVALSHA`, loaded again when Redis does not know it: after a restart or
/// a failover): `EVAL` would ship the whole text with every call, and Redis would hash it.
static APPEND: LazyLock<Script> = LazyLock::new(|| Script::from_lua(APPEND_SCRIPT));

/// [`APPEND`] for a Redis without sharded pub/sub: the relay's entries are `PUBLISH`ed.
static APPEND_PLAIN: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(APPEND_SCRIPT.replace("'SPUBLISH'", "'PUBLISH'")));

/// One room's messages to keep, in order. Its short texts (keys, generation, count, events,
/// relay headers) are slices of one buffer: one allocation per group, and
/// the argument vector's clones (fred clones it for the `NOSCRIPT` retry) share it.
pub struct Group {
    /// The room's stream and meta keys (one hash slot).
    pub keys: [Bytes; 2],
    /// The generation to start if the stream needs a new one.
    pub new_epoch: Bytes,
    /// Start a new generation whatever the stream holds.
    pub retire: bool,
    /// The number of messages, as text.
    pub count: Bytes,
    /// The channel the messages' entries are published on, and whether every instance reads
    /// several entries in one message there.
    pub relay: Option<(&'static str, bool)>,
    pub messages: Vec<Message>,
}

pub struct Message {
    pub event: Bytes,
    /// The data's JSON text, shared with the published payload (not copied).
    pub data: Bytes,
    /// The start of the entry's relay header, empty when not relayed.
    pub header: Bytes,
}

/// A payload's JSON text as a `Bytes` argument, without copying it.
pub fn payload_bytes(payload: &Payload) -> Bytes {
    struct Text(Payload);
    impl AsRef<[u8]> for Text {
        fn as_ref(&self) -> &[u8] {
            self.0.json().as_bytes()
        }
    }
    Bytes::from_owner(Text(payload.clone()))
}

/// What became of a group: the places of the messages kept (the first ones, in order), and
/// why the others were not.
#[derive(Debug)]
pub struct Kept {
    pub places: Vec<Appended>,
    pub failed: Option<Failure>,
}

#[derive(Debug)]
pub enum Failure {
    /// Redis did not run the call (link, timeout, …).
    Redis(fred::error::Error),
    /// Redis refused a message (e.g. out of memory), or answered something unexpected.
    Refused(String),
}

impl Kept {
    fn failed(failure: Failure) -> Self {
        Kept {
            places: Vec::new(),
            failed: Some(failure),
        }
    }
}

type Pending = (Group, oneshot::Sender<Kept>);

/// The queue to the appender task.
#[derive(Clone)]
pub struct Appender {
    queue: mpsc::Sender<Pending>,
}

impl Appender {
    /// Starts the appender task (so needs a runtime); it ends when the last `Appender` is
    /// dropped. `max_messages` is the streams' length, `ttl_ms` their lifetime; relayed entries
    /// are published with `pubsub`'s command, and with `PUBLISH` on a Redis Cluster (a
    /// script may `SPUBLISH` only to a channel of its keys' slot; a plain message crosses the
    /// whole cluster).
    pub fn start(client: RedisClient, max_messages: usize, ttl_ms: u64, pubsub: PubSub) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        let script = match (pubsub, client.is_clustered()) {
            (PubSub::Sharded, false) => &*APPEND,
            _ => &*APPEND_PLAIN,
        };
        let bounds = [max_messages.to_string(), ttl_ms.to_string()].map(Bytes::from);
        tokio::spawn(run(client, script, bounds, waiting));
        Self { queue }
    }

    pub async fn append(&self, group: Group) -> Kept {
        let (reply, kept) = oneshot::channel();
        let gone = || Kept::failed(Failure::Refused("the history appender stopped".into()));
        if self.queue.send((group, reply)).await.is_err() {
            return gone();
        }
        kept.await.unwrap_or_else(|_| gone())
    }
}

/// The stream's length and lifetime, the script's first arguments.
type Bounds = [Bytes; 2];

async fn run(
    client: RedisClient,
    script: &'static Script,
    bounds: Bounds,
    mut waiting: mpsc::Receiver<Pending>,
) {
    let mut queued = Vec::new();
    while waiting.recv_many(&mut queued, QUEUE).await > 0 {
        for call in calls(client.is_clustered(), queued.drain(..)) {
            tokio::spawn(send(client.clone(), script, bounds.clone(), call));
        }
    }
}

/// What calls must agree on: the slot (a script may only touch the keys of one slot on a
/// Redis Cluster; 0 on a single Redis) and how entries are relayed.
type CallKey = (u16, Option<(&'static str, bool)>);

/// Groups bound for one call.
struct Call<T> {
    key: CallKey,
    size: usize,
    groups: Vec<(Group, T)>,
}

/// Splits groups into calls Redis can run, each within [`MAX_PER_CALL`] messages (unless a
/// group alone is over), groups in their order.
fn calls<T>(clustered: bool, groups: impl Iterator<Item = (Group, T)>) -> Vec<Vec<(Group, T)>> {
    let mut calls: Vec<Call<T>> = Vec::new();
    for pending in groups {
        let group = &pending.0;
        let slot = match clustered {
            true => fred::util::redis_keyslot(&group.keys[0]),
            false => 0,
        };
        let key = (slot, group.relay);
        let size = group.messages.len();
        let open = calls
            .iter_mut()
            .rev()
            .find(|call| call.key == key && call.size + size <= MAX_PER_CALL);
        match open {
            Some(call) => {
                call.size += size;
                call.groups.push(pending);
            }
            None => calls.push(Call {
                key,
                size,
                groups: vec![pending],
            }),
        }
    }
    calls.into_iter().map(|call| call.groups).collect()
}

async fn send(client: RedisClient, script: &Script, bounds: Bounds, call: Vec<Pending>) {
    let (channel, one_message) = call[0].0.relay.unwrap_or(("", false));
    let mut keys: Vec<Key> = Vec::with_capacity(2 * call.len());
    let [max_len, ttl_ms] = bounds;
    let size: usize = call.iter().map(|(g, _)| 3 + 3 * g.messages.len()).sum();
    let mut args: Vec<Value> = Vec::with_capacity(4 + size);
    args.extend(
        [
            max_len,
            ttl_ms,
            Bytes::from_static(channel.as_bytes()),
            flag(one_message),
        ]
        .map(Value::Bytes),
    );
    let mut replies = Vec::with_capacity(call.len());
    for (group, reply) in call {
        let sent = group.messages.len() as u64;
        let [stream, meta] = group.keys;
        keys.push(stream.into());
        keys.push(meta.into());
        args.extend([group.new_epoch, flag(group.retire), group.count].map(Value::Bytes));
        for message in group.messages {
            args.extend([message.event, message.data, message.header].map(Value::Bytes));
        }
        replies.push((reply, sent));
    }
    let answer: Result<Vec<String>, _> = script.evalsha_with_reload(&client, keys, args).await;
    match answer {
        Ok(flat) => {
            let mut flat = flat.into_iter();
            for (reply, sent) in replies {
                let kept = read_group(&mut flat, sent).unwrap_or_else(|| {
                    Kept::failed(Failure::Refused("unexpected reply from Redis".into()))
                });
                let _ = reply.send(kept);
            }
        }
        Err(e) => {
            for (reply, _) in replies {
                let _ = reply.send(Kept::failed(Failure::Redis(e.clone())));
            }
        }
    }
}

fn flag(on: bool) -> Bytes {
    Bytes::from_static(if on { b"1" } else { b"0" })
}

/// One group's part of the script's answer, for a group of `sent` messages.
fn read_group(flat: &mut impl Iterator<Item = String>, sent: u64) -> Option<Kept> {
    let count: u64 = flat.next()?.parse().ok()?;
    let error = flat.next()?;
    let epoch = flat.next()?;
    let first: u64 = flat.next()?.parse().ok()?;
    if count > sent || (count > 0 && first == 0) {
        return None;
    }
    let places = (first..first.checked_add(count)?)
        .map(|n| Appended::numbered(&epoch, n))
        .collect();
    let failed = (!error.is_empty()).then_some(Failure::Refused(error));
    Some(Kept { places, failed })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group of `size` messages for `room`, tagged with its place in the input.
    fn group((at, (room, size)): (usize, (&str, usize))) -> (Group, usize) {
        let stream = format!("sockgate:history:{{{room}}}");
        let message = || Message {
            event: Bytes::new(),
            data: Bytes::new(),
            header: Bytes::new(),
        };
        let group = Group {
            keys: [stream.clone().into(), format!("{stream}:epoch").into()],
            new_epoch: Bytes::new(),
            retire: false,
            count: size.to_string().into(),
            relay: Some(("sockgate:relay", true)),
            messages: (0..size).map(|_| message()).collect(),
        };
        (group, at)
    }

    fn order(call: &[(Group, usize)]) -> Vec<usize> {
        call.iter().map(|(_, at)| *at).collect()
    }

    #[test]
    fn a_single_redis_takes_the_groups_in_one_call_within_the_bound() {
        let rooms = [("user:a", 10), ("user:b", 1), ("user:c", 30)];
        let one = calls(false, rooms.into_iter().enumerate().map(group));
        assert_eq!(one.len(), 1);
        assert_eq!(order(&one[0]), [0, 1, 2]);
        // Over the bound: a new call; a group alone over it still goes, whole.
        let rooms = [
            ("user:a", 200),
            ("user:b", 100),
            ("user:c", 300),
            ("user:d", 56),
        ];
        let split = calls(false, rooms.into_iter().enumerate().map(group));
        let orders: Vec<Vec<usize>> = split.iter().map(|c| order(c)).collect();
        assert_eq!(orders, [vec![0], vec![1, 3], vec![2]]);
    }

    #[test]
    fn a_redis_cluster_gets_one_call_per_slot_each_in_order() {
        let slot = |key: &str| fred::util::redis_keyslot(key.as_bytes());
        let rooms = [("user:a", 1), ("user:b", 1), ("user:a", 2), ("user:c", 1)];
        assert_ne!(
            slot("sockgate:history:{user:a}"),
            slot("sockgate:history:{user:b}")
        );
        let split = calls(true, rooms.into_iter().enumerate().map(group));
        assert_eq!(
            split.len(),
            3,
            "user:a, user:b and user:c are in other slots"
        );
        for call in &split {
            let slot = |key: &Bytes| fred::util::redis_keyslot(key);
            let first = slot(&call[0].0.keys[0]);
            assert!(call.iter().all(|(g, _)| slot(&g.keys[0]) == first));
            assert!(call.iter().all(|(g, _)| slot(&g.keys[1]) == first));
            assert!(order(call).is_sorted());
        }
    }

    #[test]
    fn the_plain_script_publishes_where_the_sharded_one_does() {
        let count = |text: &str, what: &str| text.matches(what).count();
        let plain = APPEND_SCRIPT.replace("'SPUBLISH'", "'PUBLISH'");
        assert_eq!(count(APPEND_SCRIPT, "redis.call('SPUBLISH'"), 2);
        assert_eq!(count(&plain, "redis.call('PUBLISH'"), 2);
        assert_eq!(count(&plain, "SPUBLISH"), 0);
    }

    #[test]
    fn reads_each_groups_places_and_failure() {
        let reply = [
            "2", "", "g", "1", "0", "OOM", "", "0", "3", "", "h", "7", "1", "x",
        ];
        let mut flat = reply.into_iter().map(str::to_owned);
        let first = read_group(&mut flat, 2).expect("first group");
        let ids: Vec<_> = first
            .places
            .iter()
            .map(|p| (p.id.as_str(), p.prev.as_str()))
            .collect();
        assert_eq!(
            ids,
            [("1-0", ""), ("2-0", "1-0")],
            "a generation's first has no predecessor"
        );
        assert!(first.places.iter().all(|p| p.epoch == "g"));
        assert!(first.failed.is_none());
        let second = read_group(&mut flat, 1).expect("second group");
        assert!(second.places.is_empty());
        assert!(matches!(second.failed, Some(Failure::Refused(e)) if e == "OOM"));
        let third = read_group(&mut flat, 3).expect("third group");
        let offsets: Vec<_> = third.places.iter().map(Appended::offset).collect();
        assert_eq!(offsets, ["h:7-0", "h:8-0", "h:9-0"]);
        assert_eq!(third.places[0].prev, "6-0");
        assert!(
            read_group(&mut flat, 1).is_none(),
            "a short answer is no group"
        );
        let more = ["2", "", "g", "1"].into_iter().map(str::to_owned);
        assert!(
            read_group(&mut more.clone(), 1).is_none(),
            "more kept than sent is no answer"
        );
        assert!(read_group(&mut more.clone(), 2).is_some());
    }
}
