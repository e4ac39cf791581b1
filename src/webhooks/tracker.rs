//! Who is online: one task per instance turns socket opens and closes into `user.online` /
//! `user.offline`, in the order they happened.
//!
//! Locally it counts each user's sockets. A user's first socket (none open, none closed
//! within the grace period) *arrives*; when the count falls to 0 a timer of `grace` starts,
//! and if it is still 0 when it fires the user *leaves*. On one instance arriving is online
//! and leaving is offline.
//!
//! In cluster mode [`Shared`] asks Redis, atomically (Lua): the set
//! `{sockgate:wh}:user:<id>` holds the instances where the user arrived and has not left;
//! the instance whose arrival made it non-empty sends `user.online`, the one whose leaving
//! emptied it sends `user.offline` — exactly one of them each time. Each instance refreshes
//! `{sockgate:wh}:alive:<instance>` (TTL `instance_ttl`) every third of the TTL and sweeps:
//! an instance whose key expired (it died) is removed from every user it held, and its
//! users left on no other instance go offline, sent by the one instance whose sweep removed
//! them. So after an instance dies its users go offline within `instance_ttl · 4/3`. An
//! instance that finds it was swept (it stalled past the TTL) arrives again for its users.
//! Liveness is refreshed by a task of its own, so a backlog of arrivals cannot make an
//! instance look dead. While the cluster link is down (or a command fails) the transitions
//! of that time are not recorded and their events are not sent; one log line per episode.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::clients::Client as RedisClient;
use fred::interfaces::LuaInterface;
use tokio::sync::mpsc;

use super::{OFFLINE, ONLINE};
use crate::cluster::Link;

/// What the realtime hook tells the tracker.
#[derive(Debug)]
pub enum Change {
    Up(Arc<str>),
    Down(Arc<str>),
    /// A grace timer started when the user's count fell to 0 (its epoch) fired.
    Expired(Arc<str>, u64),
    /// This instance found itself swept (taken for dead): its users arrive again.
    Resync,
}

/// Sends an event (`user.online` / `user.offline`) for a user.
pub type Emit = Box<dyn Fn(&'static str, &Arc<str>) + Send + Sync>;

/// One user on this instance.
struct Entry {
    sockets: usize,
    /// Counts the times the sockets fell to 0: only the last timer started may end it.
    epoch: u64,
}

pub struct Tracker {
    users: HashMap<Arc<str>, Entry>,
    /// Cluster mode: who decides across instances.
    shared: Option<Arc<Shared>>,
    grace: Duration,
    timers: mpsc::UnboundedSender<Change>,
    emit: Emit,
}

impl Tracker {
    pub fn new(
        shared: Option<Arc<Shared>>,
        grace: Duration,
        timers: mpsc::UnboundedSender<Change>,
        emit: Emit,
    ) -> Self {
        Self {
            users: HashMap::new(),
            shared,
            grace,
            timers,
            emit,
        }
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
                _ = ticker.tick(), if every.is_some() => self.sweep().await,
            }
        }
    }

    async fn apply(&mut self, change: Change) {
        match change {
            Change::Up(user) => match self.users.get_mut(&user) {
                Some(entry) => entry.sockets += 1,
                None => {
                    self.users.insert(
                        user.clone(),
                        Entry {
                            sockets: 1,
                            epoch: 0,
                        },
                    );
                    if self.arrive(&user).await {
                        (self.emit)(ONLINE, &user);
                    }
                }
            },
            Change::Down(user) => {
                let Some(entry) = self.users.get_mut(&user) else {
                    return;
                };
                entry.sockets = entry.sockets.saturating_sub(1);
                if entry.sockets == 0 {
                    entry.epoch += 1;
                    let (timers, epoch, grace) = (self.timers.clone(), entry.epoch, self.grace);
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        let _ = timers.send(Change::Expired(user, epoch));
                    });
                }
            }
            Change::Expired(user, epoch) => {
                let gone = self
                    .users
                    .get(&user)
                    .is_some_and(|e| e.sockets == 0 && e.epoch == epoch);
                if gone {
                    self.users.remove(&user);
                    if self.leave(&user).await {
                        (self.emit)(OFFLINE, &user);
                    }
                }
            }
            Change::Resync => {
                let users: Vec<_> = self.users.keys().cloned().collect();
                if !users.is_empty() {
                    tracing::warn!(
                        users = users.len(),
                        "this instance was taken for dead by the cluster: its users arrive again"
                    );
                }
                for user in users {
                    if self.arrive(&user).await {
                        (self.emit)(ONLINE, &user);
                    }
                }
            }
        }
    }

    /// Whether `user`'s arrival here is their first anywhere.
    async fn arrive(&self, user: &str) -> bool {
        match &self.shared {
            None => true,
            Some(shared) => shared.arrive(user).await,
        }
    }

    /// Whether `user` leaving here leaves them on no instance.
    async fn leave(&self, user: &str) -> bool {
        match &self.shared {
            None => true,
            Some(shared) => shared.leave(user).await,
        }
    }

    /// Cluster mode: dead instances' users on no other instance go offline. Run here, in
    /// order with this instance's own arrivals, so that events leave in the order Redis
    /// decided them.
    async fn sweep(&mut self) {
        let Some(shared) = &self.shared else { return };
        for user in shared.sweep().await {
            (self.emit)(OFFLINE, &user.into());
        }
    }
}

/// Every key starts with the same hash tag: on a Redis Cluster they share one slot, where a
/// script may touch only the keys of one slot (the sweep reaches keys it builds itself).
/// The bookkeeping is small (one set per online user), so one shard holds it all.
const PREFIX: &str = "{sockgate:wh}:";
const INSTANCES: &str = "{sockgate:wh}:instances";

/// KEYS: the user's set, the instance's set. ARGV: instance, user. 1 if the user was on no
/// instance before.
const ARRIVE: &str = r#"
local first = redis.call('SCARD', KEYS[1]) == 0
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
if first then return 1 end
return 0
"#;

/// KEYS, ARGV as for ARRIVE. 1 if this instance held the user and now none does (a swept
/// instance's users were sent offline by the sweep already).
const LEAVE: &str = r#"
local held = redis.call('SREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
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
/// liveness key is gone from the users it held; returns the users now on no instance.
/// It builds key names itself: all under [`PREFIX`]'s hash tag, so in one slot.
const SWEEP: &str = r#"
local offline = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'alive:' .. id) == 0 then
    local held = ARGV[1] .. 'inst:' .. id
    for _, user in ipairs(redis.call('SMEMBERS', held)) do
      local key = ARGV[1] .. 'user:' .. user
      redis.call('SREM', key, id)
      if redis.call('SCARD', key) == 0 then table.insert(offline, user) end
    end
    redis.call('DEL', held)
    redis.call('SREM', KEYS[1], id)
  end
end
return offline
"#;

/// The cluster-wide registry in Redis.
pub struct Shared {
    client: RedisClient,
    link: Link,
    instance: String,
    ttl: Duration,
    /// Redis commands are failing, and that was logged: one line per episode.
    failing: AtomicBool,
}

impl Shared {
    pub fn new(client: RedisClient, link: Link, instance: String, ttl: Duration) -> Self {
        Self {
            client,
            link,
            instance,
            ttl,
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
        if let Some(e) = error {
            self.link.command_failed("webhooks", e);
        }
        if !self.failing.swap(true, Ordering::Relaxed) {
            let why = error.map_or_else(|| "the Redis link is down".to_owned(), |e| e.to_string());
            tracing::warn!(
                "webhooks: {what} not recorded in Redis ({why}): online/offline events decided \
                 while Redis fails are not sent"
            );
        }
    }

    fn succeeded(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("webhooks: Redis answers again; online/offline events resume");
        }
    }

    fn keys(&self, user: &str) -> Vec<String> {
        vec![
            format!("{PREFIX}user:{user}"),
            format!("{PREFIX}inst:{}", self.instance),
        ]
    }

    async fn flag(&self, what: &str, script: &str, keys: Vec<String>, args: Vec<String>) -> bool {
        if !self.link.is_up() {
            self.failed(what, None);
            return false;
        }
        let reply: Result<i64, _> = self.client.eval(script, keys, args).await;
        match reply {
            Ok(n) => {
                self.succeeded();
                n == 1
            }
            Err(e) => {
                self.failed(what, Some(&e));
                false
            }
        }
    }

    async fn arrive(&self, user: &str) -> bool {
        let args = vec![self.instance.clone(), user.to_owned()];
        self.flag("an arrival", ARRIVE, self.keys(user), args).await
    }

    async fn leave(&self, user: &str) -> bool {
        let args = vec![self.instance.clone(), user.to_owned()];
        self.flag("a leaving", LEAVE, self.keys(user), args).await
    }

    /// Refreshes this instance's liveness key; true if it was not listed (swept, or Redis
    /// lost its data).
    pub async fn heartbeat(&self) -> bool {
        let keys = vec![
            format!("{PREFIX}alive:{}", self.instance),
            INSTANCES.to_owned(),
        ];
        let args = vec![self.instance.clone(), self.ttl.as_millis().to_string()];
        self.flag("the liveness beat", HEARTBEAT, keys, args).await
    }

    async fn sweep(&self) -> Vec<String> {
        if !self.link.is_up() {
            return Vec::new();
        }
        let reply: Result<Vec<String>, _> = self
            .client
            .eval(SWEEP, vec![INSTANCES.to_owned()], vec![PREFIX.to_owned()])
            .await;
        reply.unwrap_or_else(|e| {
            self.failed("the sweep of dead instances", Some(&e));
            Vec::new()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type Seen = Arc<Mutex<Vec<(&'static str, String)>>>;

    fn tracker(grace: Duration) -> (Tracker, mpsc::UnboundedReceiver<Change>, Seen) {
        let (tx, rx) = mpsc::unbounded_channel();
        let seen: Seen = Arc::default();
        let log = seen.clone();
        let emit: Emit = Box::new(move |name, user| {
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((name, user.to_string()));
        });
        (Tracker::new(None, grace, tx, emit), rx, seen)
    }

    fn seen(seen: &Seen) -> Vec<(&'static str, String)> {
        seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    #[tokio::test(start_paused = true)]
    async fn first_tab_online_last_tab_offline_after_the_grace() {
        let (mut t, mut timers, log) = tracker(Duration::from_secs(5));
        t.apply(Change::Up("a".into())).await;
        t.apply(Change::Up("a".into())).await;
        assert_eq!(seen(&log), [(ONLINE, "a".to_owned())]);
        t.apply(Change::Down("a".into())).await;
        t.apply(Change::Down("a".into())).await;
        assert_eq!(seen(&log).len(), 1, "offline waits for the grace");
        let fired = timers.recv().await;
        assert!(matches!(fired, Some(Change::Expired(_, _))));
        if let Some(change) = fired {
            t.apply(change).await;
        }
        assert_eq!(seen(&log)[1], (OFFLINE, "a".to_owned()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_within_the_grace_produces_neither() {
        let (mut t, mut timers, log) = tracker(Duration::from_secs(5));
        t.apply(Change::Up("a".into())).await;
        t.apply(Change::Down("a".into())).await;
        t.apply(Change::Up("a".into())).await;
        if let Some(change) = timers.recv().await {
            t.apply(change).await;
        }
        assert_eq!(seen(&log), [(ONLINE, "a".to_owned())]);
        // The reload's tab closes too: its own timer ends the user, the stale one did not.
        t.apply(Change::Down("a".into())).await;
        if let Some(change) = timers.recv().await {
            t.apply(change).await;
        }
        assert_eq!(seen(&log)[1], (OFFLINE, "a".to_owned()));
    }
}
