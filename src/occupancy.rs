//! Occupancy: who holds a key (a user online, a user in a presence room), counted per
//! instance and decided cluster-wide. One task per use turns socket opens and closes into
//! arrivals and departures, in the order they happened. Webhooks use it for
//! `user.online`/`user.offline`; presence rooms for members joining and leaving.
//!
//! Locally it counts each key's holders (sockets). A key's first holder (none open, none
//! closed within the grace period) *arrives*; when the count falls to 0 a timer of `grace`
//! starts, and if it is still 0 when it fires the key *leaves*. On one instance that is all.
//!
//! In cluster mode [`Shared`] asks Redis, atomically (Lua): the set `<tag>key:<key>` holds
//! the instances where the key arrived and has not left; the instance whose arrival made it
//! non-empty reports the arrival, the one whose leaving emptied it the departure — exactly
//! one of them each time. A key of the form `<group>\n<member>` (a presence room and a user)
//! is also listed, with the info given at its arrival, in the hash `<tag>group:<group>`, so a
//! group's members can be read in one command. Each instance refreshes `<tag>alive:<instance>`
//! (TTL `instance_ttl`) every third of the TTL and sweeps: an instance whose key expired (it
//! died) is removed from every key it held, and its keys held by no other instance leave,
//! reported by the one instance whose sweep removed them. So after an instance dies its keys
//! leave within `instance_ttl · 4/3`. An instance that finds it was swept (it stalled past the
//! TTL) arrives again for its keys. Liveness is refreshed by a task of its own, so a backlog
//! of arrivals cannot make an instance look dead. While the cluster link is down (or a
//! command fails) a transition cannot be recorded: the key is remembered, and at every beat
//! until Redis answers, what this instance holds of it is recorded again (an arrival if it
//! still holds the key, a departure if not) and reported if it decides the key. One log line
//! per episode. Without that, a user who connected during an outage would never be online
//! cluster-wide, one who left would stay online, and a stalled instance that resumed while
//! its link was still counted down would lose its users' second arrival.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use fred::clients::Client as RedisClient;
use fred::types::scripts::Script;
use tokio::sync::mpsc;

use crate::cluster::Link;

/// Separates a group from its member in a key (neither a room name nor a key prefix has it).
pub const GROUP_SEPARATOR: char = '\n';

/// What the tracker is told.
#[derive(Debug)]
pub enum Change {
    /// One more holder of the key; the info is what the key's arrival reports (first holder).
    Up(Arc<str>, Option<Arc<str>>),
    Down(Arc<str>),
    /// A grace timer started when the key's count fell to 0 (its epoch) fired.
    Expired(Arc<str>, u64),
    /// This instance found itself swept (taken for dead): its keys arrive again.
    Resync,
}

/// What happened to a key, cluster-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Arrived,
    Left,
}

/// Reports a transition of a key, with the info of its arrival (none for a sweep's).
pub type Report = Box<dyn Fn(Transition, &Arc<str>, Option<&Arc<str>>) + Send + Sync>;

/// One key on this instance.
struct Entry {
    holders: usize,
    info: Option<Arc<str>>,
    /// Counts the times the holders fell to 0: only the last timer started may end it.
    epoch: u64,
}

pub struct Tracker {
    keys: HashMap<Arc<str>, Entry>,
    /// Cluster mode: who decides across instances.
    shared: Option<Arc<Shared>>,
    grace: Duration,
    timers: mpsc::UnboundedSender<Change>,
    report: Report,
    /// Keys whose last transition here Redis has not recorded (cluster mode), with the info
    /// a departure reports.
    unrecorded: HashMap<Arc<str>, Option<Arc<str>>>,
}

impl Tracker {
    pub fn new(
        shared: Option<Arc<Shared>>,
        grace: Duration,
        timers: mpsc::UnboundedSender<Change>,
        report: Report,
    ) -> Self {
        Self {
            keys: HashMap::new(),
            shared,
            grace,
            timers,
            report,
            unrecorded: HashMap::new(),
        }
    }

    /// Starts the tracker (and in cluster mode the liveness beat) on a task; returns where
    /// to send changes.
    pub fn spawn(
        shared: Option<Arc<Shared>>,
        grace: Duration,
        report: Report,
    ) -> mpsc::UnboundedSender<Change> {
        let (tx, rx) = mpsc::unbounded_channel();
        let tracker = Self::new(shared.clone(), grace, tx.clone(), report);
        let changes = tx.clone();
        tokio::spawn(async move {
            if let Some(shared) = shared {
                // Listed before its first arrival, so the first beat is not taken for a sweep.
                shared.heartbeat().await;
                tokio::spawn(shared.keep_alive(changes));
            }
            tracker.run(rx).await;
        });
        tx
    }

    pub async fn run(mut self, mut changes: mpsc::UnboundedReceiver<Change>) {
        let every = self.shared.as_ref().map(|s| s.beat());
        let mut ticker = tokio::time::interval(every.unwrap_or(Duration::from_secs(3600)));
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Some(change) => self.apply(change).await,
                    None => return,
                },
                _ = ticker.tick(), if every.is_some() => {
                    self.sweep().await;
                    self.record_again().await;
                }
            }
        }
    }

    async fn apply(&mut self, change: Change) {
        match change {
            Change::Up(key, info) => match self.keys.get_mut(&key) {
                Some(entry) => entry.holders += 1,
                None => {
                    if self.arrive(&key, &info).await {
                        (self.report)(Transition::Arrived, &key, info.as_ref());
                    }
                    let entry = Entry {
                        holders: 1,
                        info,
                        epoch: 0,
                    };
                    self.keys.insert(key, entry);
                }
            },
            Change::Down(key) => {
                let Some(entry) = self.keys.get_mut(&key) else {
                    return;
                };
                entry.holders = entry.holders.saturating_sub(1);
                if entry.holders == 0 {
                    entry.epoch += 1;
                    let (timers, epoch, grace) = (self.timers.clone(), entry.epoch, self.grace);
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        let _ = timers.send(Change::Expired(key, epoch));
                    });
                }
            }
            Change::Expired(key, epoch) => {
                let gone = self
                    .keys
                    .get(&key)
                    .is_some_and(|e| e.holders == 0 && e.epoch == epoch);
                if gone {
                    let info = self.keys.remove(&key).and_then(|e| e.info);
                    if self.leave(&key, &info).await {
                        (self.report)(Transition::Left, &key, info.as_ref());
                    }
                }
            }
            Change::Resync => {
                let keys: Vec<_> = self
                    .keys
                    .iter()
                    .map(|(k, e)| (k.clone(), e.info.clone()))
                    .collect();
                if !keys.is_empty() {
                    tracing::warn!(
                        keys = keys.len(),
                        "this instance was taken for dead by the cluster: what it holds arrives again"
                    );
                }
                for (key, info) in keys {
                    if self.arrive(&key, &info).await {
                        (self.report)(Transition::Arrived, &key, info.as_ref());
                    }
                }
            }
        }
    }

    /// Whether `key`'s arrival here is its first anywhere.
    async fn arrive(&mut self, key: &Arc<str>, info: &Option<Arc<str>>) -> bool {
        let Some(shared) = &self.shared else {
            return true;
        };
        let recorded = shared.arrive(key, info.as_deref()).await;
        self.recorded(key, info, recorded)
    }

    /// Whether `key` leaving here leaves it on no instance.
    async fn leave(&mut self, key: &Arc<str>, info: &Option<Arc<str>>) -> bool {
        let Some(shared) = &self.shared else {
            return true;
        };
        let recorded = shared.leave(key).await;
        self.recorded(key, info, recorded)
    }

    /// Notes whether Redis recorded `key`'s transition; true if this instance decides it.
    fn recorded(&mut self, key: &Arc<str>, info: &Option<Arc<str>>, decided: Option<bool>) -> bool {
        match decided {
            Some(decided) => {
                self.unrecorded.remove(key);
                decided
            }
            None => {
                self.unrecorded.insert(key.clone(), info.clone());
                false
            }
        }
    }

    /// Records in Redis what this instance holds of each key whose transition could not be
    /// recorded: an arrival (idempotent) if it still holds the key, a departure if not.
    async fn record_again(&mut self) {
        if self.unrecorded.is_empty() {
            return;
        }
        for (key, left_info) in std::mem::take(&mut self.unrecorded) {
            match self.keys.get(&key).map(|entry| entry.info.clone()) {
                Some(info) => {
                    if self.arrive(&key, &info).await {
                        (self.report)(Transition::Arrived, &key, info.as_ref());
                    }
                }
                None => {
                    if self.leave(&key, &left_info).await {
                        (self.report)(Transition::Left, &key, left_info.as_ref());
                    }
                }
            }
        }
    }

    /// Cluster mode: dead instances' keys on no other instance leave. Run here, in order
    /// with this instance's own arrivals, so that reports leave in the order Redis decided.
    async fn sweep(&mut self) {
        let Some(shared) = &self.shared else { return };
        for key in shared.sweep().await {
            (self.report)(Transition::Left, &key.into(), None);
        }
    }
}

/// KEYS: the key's set, the instance's set, the key's group hash (or the key's set again
/// when it has no group). ARGV: instance, key, group member, info. 1 if the key was on no
/// instance before.
const ARRIVE: &str = r#"
local first = redis.call('SCARD', KEYS[1]) == 0
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
if first and KEYS[3] ~= KEYS[1] then redis.call('HSET', KEYS[3], ARGV[3], ARGV[4]) end
if first then return 1 end
return 0
"#;

/// KEYS, ARGV[1..3] as for ARRIVE. 1 if this instance held the key and now none does (a
/// swept instance's keys were reported by the sweep already).
const LEAVE: &str = r#"
local held = redis.call('SREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('SCARD', KEYS[1]) == 0 and KEYS[3] ~= KEYS[1] then
  redis.call('HDEL', KEYS[3], ARGV[3])
end
if held == 1 and redis.call('SCARD', KEYS[1]) == 0 then return 1 end
return 0
"#;

/// KEYS: the liveness key, the instance list. ARGV: instance, TTL in ms. 1 if this instance
/// was not listed (its first beat, or it was swept).
const HEARTBEAT: &str = r#"
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
return redis.call('SADD', KEYS[2], ARGV[1])
"#;

/// KEYS: the instance list. ARGV: the key prefix. Removes every listed instance whose
/// liveness key is gone from the keys it held; returns the keys now on no instance.
/// It builds key names itself: all under the prefix's hash tag, so in one slot.
const SWEEP: &str = r#"
local left = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'alive:' .. id) == 0 then
    local held = ARGV[1] .. 'inst:' .. id
    for _, key in ipairs(redis.call('SMEMBERS', held)) do
      local set = ARGV[1] .. 'key:' .. key
      redis.call('SREM', set, id)
      if redis.call('SCARD', set) == 0 then
        table.insert(left, key)
        local nl = string.find(key, '\n', 1, true)
        if nl then
          redis.call('HDEL', ARGV[1] .. 'group:' .. string.sub(key, 1, nl - 1), string.sub(key, nl + 1))
        end
      end
    end
    redis.call('DEL', held)
    redis.call('SREM', KEYS[1], id)
  end
end
return left
"#;

/// KEYS: a group's hash. Its members and their info, flat (the hash commands are not
/// compiled into the Redis client).
const MEMBERS: &str = "return redis.call('HGETALL', KEYS[1])";

/// The scripts above, sent by their hash (`EVALSHA`, loaded again when Redis does not know
/// them), not with their text on every call.
static ARRIVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::from_lua(ARRIVE));
static LEAVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::from_lua(LEAVE));
static HEARTBEAT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::from_lua(HEARTBEAT));
static SWEEP_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::from_lua(SWEEP));
static MEMBERS_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::from_lua(MEMBERS));

/// Where in Redis a use of the tracker keeps its bookkeeping, and its name in logs.
#[derive(Debug, Clone, Copy)]
pub struct Namespace {
    /// Starts every key, and is a hash tag: on a Redis Cluster the keys share one slot, where
    /// a script may touch only the keys of one slot (the sweep reaches keys it builds
    /// itself). The bookkeeping is small (a set per key held), so one shard holds it all.
    pub prefix: &'static str,
    /// Names the use in log lines ("webhooks", "presence").
    pub label: &'static str,
}

/// The cluster-wide registry in Redis.
pub struct Shared {
    client: RedisClient,
    link: Link,
    instance: String,
    ttl: Duration,
    namespace: Namespace,
    /// Redis commands are failing, and that was logged: one line per episode.
    failing: AtomicBool,
}

impl Shared {
    pub fn new(
        client: RedisClient,
        link: Link,
        instance: String,
        ttl: Duration,
        namespace: Namespace,
    ) -> Self {
        Self {
            client,
            link,
            instance,
            ttl,
            namespace,
            failing: AtomicBool::new(false),
        }
    }

    /// How often liveness is refreshed and dead instances are swept: a third of the TTL.
    fn beat(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(10))
    }

    /// Refreshes this instance's liveness every [`Shared::beat`], apart from the tracker so
    /// that a backlog of arrivals cannot make it look dead; tells it when it was swept.
    pub async fn keep_alive(self: Arc<Self>, changes: mpsc::UnboundedSender<Change>) {
        let mut ticker = tokio::time::interval(self.beat());
        ticker.tick().await;
        loop {
            ticker.tick().await;
            if self.heartbeat().await && changes.send(Change::Resync).is_err() {
                return;
            }
        }
    }

    /// A command for `what` failed (or was not tried: the link is down).
    fn failed(&self, what: &str, error: Option<&fred::error::Error>) {
        let label = self.namespace.label;
        if let Some(e) = error {
            self.link.command_failed(label, e);
        }
        if !self.failing.swap(true, Ordering::Relaxed) {
            let why = error.map_or_else(|| "the Redis link is down".to_owned(), |e| e.to_string());
            tracing::warn!(
                "{label}: {what} not recorded in Redis ({why}): arrivals and departures \
                 of this time are recorded and reported when Redis answers again"
            );
        }
    }

    fn succeeded(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(
                "{}: Redis answers again; arrivals and departures are reported again",
                self.namespace.label
            );
        }
    }

    /// The keys and the first arguments of ARRIVE/LEAVE for `key`.
    fn script_input(&self, key: &str) -> (Vec<String>, Vec<String>) {
        let prefix = self.namespace.prefix;
        let set = format!("{prefix}key:{key}");
        let (group, member) = match key.split_once(GROUP_SEPARATOR) {
            Some((group, member)) => (format!("{prefix}group:{group}"), member.to_owned()),
            None => (set.clone(), String::new()),
        };
        let keys = vec![set, format!("{prefix}inst:{}", self.instance), group];
        (keys, vec![self.instance.clone(), key.to_owned(), member])
    }

    async fn flag(
        &self,
        what: &str,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Option<bool> {
        if !self.link.is_up() {
            self.failed(what, None);
            return None;
        }
        let reply: Result<i64, _> = script.evalsha_with_reload(&self.client, keys, args).await;
        match reply {
            Ok(n) => {
                self.succeeded();
                Some(n == 1)
            }
            Err(e) => {
                self.failed(what, Some(&e));
                None
            }
        }
    }

    /// Whether the arrival made `key` held anywhere; `None` if Redis did not record it.
    async fn arrive(&self, key: &str, info: Option<&str>) -> Option<bool> {
        let (keys, mut args) = self.script_input(key);
        args.push(info.unwrap_or("null").to_owned());
        self.flag("an arrival", &ARRIVE_SCRIPT, keys, args).await
    }

    /// Whether the departure left `key` held nowhere; `None` if Redis did not record it.
    async fn leave(&self, key: &str) -> Option<bool> {
        let (keys, args) = self.script_input(key);
        self.flag("a departure", &LEAVE_SCRIPT, keys, args).await
    }

    /// Refreshes this instance's liveness key; true if it was not listed (swept, or Redis
    /// lost its data).
    pub async fn heartbeat(&self) -> bool {
        let prefix = self.namespace.prefix;
        let keys = vec![
            format!("{prefix}alive:{}", self.instance),
            format!("{prefix}instances"),
        ];
        let args = vec![self.instance.clone(), self.ttl.as_millis().to_string()];
        self.flag("the liveness beat", &HEARTBEAT_SCRIPT, keys, args)
            .await
            == Some(true)
    }

    async fn sweep(&self) -> Vec<String> {
        if !self.link.is_up() {
            return Vec::new();
        }
        let prefix = self.namespace.prefix;
        let reply: Result<Vec<String>, _> = SWEEP_SCRIPT
            .evalsha_with_reload(
                &self.client,
                vec![format!("{prefix}instances")],
                vec![prefix.to_owned()],
            )
            .await;
        reply.unwrap_or_else(|e| {
            self.failed("the sweep of dead instances", Some(&e));
            Vec::new()
        })
    }

    /// The members of `group` on every instance, with the info of their arrival (JSON
    /// text); `None` if Redis could not say.
    pub async fn members(&self, group: &str) -> Option<Vec<(String, String)>> {
        if !self.link.is_up() {
            return None;
        }
        let key = format!("{}group:{group}", self.namespace.prefix);
        let reply: Result<Vec<String>, _> = MEMBERS_SCRIPT
            .evalsha_with_reload(&self.client, vec![key], ())
            .await;
        match reply {
            Ok(flat) => Some(
                flat.chunks_exact(2)
                    .map(|pair| (pair[0].clone(), pair[1].clone()))
                    .collect(),
            ),
            Err(e) => {
                self.link.command_failed(self.namespace.label, &e);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type Seen = Arc<Mutex<Vec<(Transition, String)>>>;

    fn tracker(grace: Duration) -> (Tracker, mpsc::UnboundedReceiver<Change>, Seen) {
        let (tx, rx) = mpsc::unbounded_channel();
        let seen: Seen = Arc::default();
        let log = seen.clone();
        let report: Report = Box::new(move |transition, key, _| {
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((transition, key.to_string()));
        });
        (Tracker::new(None, grace, tx, report), rx, seen)
    }

    fn seen(seen: &Seen) -> Vec<(Transition, String)> {
        seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    #[tokio::test(start_paused = true)]
    async fn first_holder_arrives_last_leaves_after_the_grace() {
        let (mut t, mut timers, log) = tracker(Duration::from_secs(5));
        t.apply(Change::Up("a".into(), None)).await;
        t.apply(Change::Up("a".into(), None)).await;
        assert_eq!(seen(&log), [(Transition::Arrived, "a".to_owned())]);
        t.apply(Change::Down("a".into())).await;
        t.apply(Change::Down("a".into())).await;
        assert_eq!(seen(&log).len(), 1, "offline waits for the grace");
        let fired = timers.recv().await;
        assert!(matches!(fired, Some(Change::Expired(_, _))));
        if let Some(change) = fired {
            t.apply(change).await;
        }
        assert_eq!(seen(&log)[1], (Transition::Left, "a".to_owned()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_within_the_grace_produces_neither() {
        let (mut t, mut timers, log) = tracker(Duration::from_secs(5));
        t.apply(Change::Up("a".into(), None)).await;
        t.apply(Change::Down("a".into())).await;
        t.apply(Change::Up("a".into(), None)).await;
        if let Some(change) = timers.recv().await {
            t.apply(change).await;
        }
        assert_eq!(seen(&log), [(Transition::Arrived, "a".to_owned())]);
        // The reload's tab closes too: its own timer ends the user, the stale one did not.
        t.apply(Change::Down("a".into())).await;
        if let Some(change) = timers.recv().await {
            t.apply(change).await;
        }
        assert_eq!(seen(&log)[1], (Transition::Left, "a".to_owned()));
    }
}
