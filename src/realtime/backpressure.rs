//! Backpressure on the relay: publishes are refused (`503` + `Retry-After`) while the slowest
//! live instance is more than `cluster.max_lag` relayed entries behind, instead of Redis
//! buffering ever more for it until it drops its connection (`client-output-buffer-limit
//! pubsub`: 32 MB at once, or 8 MB for 60 s), which costs every socket there a refetch.
//!
//! Why this shape:
//! - Each instance numbers the entries it relays (`s` in the header, [`super::relayed`]; an
//!   older sockgate ignores it), so a reader's position per publishing instance is the highest
//!   number it read — exact, and a reader that starts late or misses one is not off for ever.
//! - Every [`EVERY`] each instance writes one field of the hash [`READERS_KEY`]: how many it
//!   relayed, and how far it read each other instance's (handed to its room workers: past
//!   them, the driver's bounded buffers wait on the workers, so this is what Redis and the
//!   kernel hold for it plus those buffers). Then it reads the whole hash and works out each
//!   reader's lag: what the others relayed that it has not read, summed. Publishes read one
//!   flag: nothing per message but the number in the header.
//! - Live means Redis buffers for it: it still holds its subscription to its own
//!   [`reader_channel`] (`PUBSUB SHARDNUMSUB`, or `NUMSUB` on plain pub/sub; asked only about
//!   instances whose report did not change since the last round: one that reports is alive). A killed instance's connection closes at once,
//!   so it never holds publishes back; its field is removed. A stopped or frozen one
//!   (`SIGSTOP`, a paused VM) stays subscribed and stops reporting: it is waited for, up to
//!   [`GIVE_UP_AFTER`] without a new report, then left to Redis's limit (its sockets are told
//!   `recovery_failed` if Redis drops it), so one frozen instance cannot stop every publish.
//! - An instance not yet in a reader's report (it appeared after the reader's last report) is
//!   counted as not read at all: conservative, and a running reader adopts it within [`EVERY`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fred::clients::Client as RedisClient;
use fred::interfaces::LuaInterface;

use crate::cluster::Link;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// The hash of every instance's report (field: its relay origin).
pub const READERS_KEY: &str = "sockgate:relay:readers";

/// How often each instance reports and reads the others' reports.
const EVERY: Duration = Duration::from_millis(200);

/// A live instance whose report has not changed for this long is no longer waited for.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// The hash expires once no instance has written it for this long.
const KEY_TTL: Duration = Duration::from_secs(60);

/// One round trip per round (`EVAL`, not `EVALSHA`: five calls a second need no cache, and
/// `INFO commandstats` keeps them apart from the history's scripts): removes the fields of instances found gone (ARGV[4…]), writes
/// this instance's report (ARGV[1] field, ARGV[2] report; none when ARGV[2] is ""), keeps the
/// hash ARGV[3] ms, and returns every report (`HGETALL`). KEYS: the hash.
const ROUND_SCRIPT: &str = r"
for i = 4, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return redis.call('HGETALL', KEYS[1])
";

/// The sharded channel an instance holds a subscription to while it reads the relay: how the
/// others tell it is alive (nothing is published there).
pub fn reader_channel(origin: &str) -> String {
    format!("sockgate:relay:reader:{origin}")
}

/// Why a publish is refused: how far behind the slowest instance is, and the bound.
#[derive(Debug, Clone, Copy)]
pub struct Refusal {
    pub lag: u64,
    pub max_lag: u64,
}

/// One instance's report: how many entries it relayed, and how far it read the others'.
#[derive(Debug, Default, PartialEq)]
struct Report {
    relayed: u64,
    read: HashMap<String, u64>,
}

impl Report {
    /// `<relayed> <origin>=<n> …` (words without `=`, such as the round's `r<n>`, skipped).
    fn parse(text: &str) -> Option<Self> {
        let mut words = text.split_ascii_whitespace();
        let relayed = words.next()?.parse().ok()?;
        let read = words
            .filter_map(|w| {
                let (origin, n) = w.rsplit_once('=')?;
                Some((origin.to_owned(), n.parse().ok()?))
            })
            .collect();
        Some(Report { relayed, read })
    }

    fn write(&self) -> String {
        let mut text = self.relayed.to_string();
        for (origin, n) in &self.read {
            text.push_str(&format!(" {origin}={n}"));
        }
        text
    }
}

/// This instance's side of the backpressure (see the module doc).
pub struct Backpressure {
    origin: String,
    max_lag: u64,
    /// Numbers given to this instance's entries so far.
    numbered: AtomicU64,
    /// The highest number of an entry kept, so relayed.
    relayed: AtomicU64,
    /// Per other instance, the highest number of its entries read here.
    read: Mutex<HashMap<String, u64>>,
    slowest: AtomicU64,
    refusing: AtomicBool,
    commands: RedisClient,
    metrics: Arc<Metrics>,
}

impl Backpressure {
    pub fn new(origin: String, max_lag: u64, commands: RedisClient, metrics: Arc<Metrics>) -> Self {
        Self {
            origin,
            max_lag,
            numbered: AtomicU64::new(0),
            relayed: AtomicU64::new(0),
            read: Mutex::default(),
            slowest: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            commands,
            metrics,
        }
    }

    /// Numbers for `count` entries about to be relayed: the first is the returned value + 1.
    pub fn number(&self, count: usize) -> u64 {
        self.numbered.fetch_add(count as u64, Ordering::Relaxed)
    }

    /// The entries numbered through `last` were kept, so relayed.
    pub fn relayed_through(&self, last: u64) {
        self.relayed.fetch_max(last, Ordering::Relaxed);
    }

    /// Entries of `origin` through number `seq` were read here.
    pub fn read(&self, origin: &str, seq: u64) {
        let mut read = self.positions();
        match read.get_mut(origin) {
            Some(n) => *n = (*n).max(seq),
            None => {
                read.insert(origin.to_owned(), seq);
            }
        }
    }

    fn positions(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.read.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Some` while publishes are refused: one atomic read.
    pub fn refusal(&self) -> Option<Refusal> {
        if !self.refusing.load(Ordering::Relaxed) {
            return None;
        }
        self.metrics.publish_refused();
        Some(Refusal {
            lag: self.slowest.load(Ordering::Relaxed),
            max_lag: self.max_lag,
        })
    }

    /// Until the drain starts: reports, reads the others' reports, and sets the refusal.
    pub async fn run(self: Arc<Self>, link: Link, shutdown: Shutdown) {
        let mut ticks = tokio::time::interval(EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut peers = Peers::default();
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.draining() => return self.leave().await,
            }
            let slowest = if link.is_up() {
                match self.tick(&link, &mut peers).await {
                    Ok(slowest) => slowest,
                    Err(e) => {
                        tracing::debug!("relay backpressure: Redis did not answer: {e}");
                        continue;
                    }
                }
            } else {
                // Nothing is relayed while the link is down.
                0
            };
            self.set(slowest);
        }
    }

    /// At the drain: the relay is no longer read here, so this instance is no longer waited
    /// for (its report removed) while it finishes.
    async fn leave(&self) {
        let args = vec![
            self.origin.clone(),
            String::new(),
            String::new(),
            self.origin.clone(),
        ];
        let removed: Result<Vec<String>, _> = self
            .commands
            .eval(ROUND_SCRIPT, vec![READERS_KEY], args)
            .await;
        if let Err(e) = removed {
            tracing::debug!("relay backpressure: report not removed at the drain: {e}");
        }
    }

    fn set(&self, slowest: u64) {
        self.slowest.store(slowest, Ordering::Relaxed);
        self.metrics.cluster_relay_lag(slowest);
        let refusing = self.max_lag > 0 && slowest > self.max_lag;
        if self.refusing.swap(refusing, Ordering::Relaxed) != refusing {
            if refusing {
                tracing::warn!(
                    lag = slowest,
                    max_lag = self.max_lag,
                    "an instance is more than cluster.max_lag relayed messages behind: publishes are refused (503, Retry-After: 1) until it catches up"
                );
            } else {
                tracing::info!(
                    lag = slowest,
                    "every instance is within cluster.max_lag again: publishes accepted"
                );
            }
        }
    }

    /// One round: this instance's report written (from the second round on: by then it has
    /// adopted the others' positions), the others' read, the ones gone since the last round
    /// removed; the slowest live instance's lag.
    async fn tick(&self, link: &Link, peers: &mut Peers) -> Result<u64, fred::error::Error> {
        let mine = {
            let read = self.positions();
            Report {
                relayed: self.relayed.load(Ordering::Relaxed),
                read: read.clone(),
            }
        };
        let mut args = vec![
            self.origin.clone(),
            if peers.rounds > 0 {
                // The round's number too: the report changes every round, even idle, so the
                // others tell a running instance from a stopped one.
                format!("{} r{}", mine.write(), peers.rounds)
            } else {
                String::new()
            },
            KEY_TTL.as_millis().to_string(),
        ];
        args.append(&mut peers.gone);
        peers.rounds += 1;
        let flat: Vec<String> = self
            .commands
            .eval(ROUND_SCRIPT, vec![READERS_KEY], args)
            .await?;
        let mut all: HashMap<String, String> = HashMap::new();
        let mut flat = flat.into_iter();
        while let (Some(origin), Some(text)) = (flat.next(), flat.next()) {
            if origin != self.origin {
                all.insert(origin, text);
            }
        }
        let mut reports: HashMap<String, Report> = all
            .iter()
            .filter_map(|(origin, text)| Some((origin.clone(), Report::parse(text)?)))
            .collect();
        // One that wrote a new report since the last round is alive: only the others are
        // asked about (a killed instance's report stops changing at once).
        let origins: Vec<String> = reports
            .keys()
            .filter(|o| !peers.reported_anew(o, &all))
            .cloned()
            .collect();
        let counts = if origins.is_empty() {
            Vec::new()
        } else {
            link.subscribers(origins.iter().map(|o| reader_channel(o)).collect())
                .await?
        };
        for origin in origins {
            let channel = reader_channel(&origin);
            if !counts.iter().any(|(c, n)| *c == channel && *n > 0) {
                reports.remove(&origin);
                peers.gone.push(origin);
            }
        }
        let now = {
            let mut read = self.positions();
            read.retain(|origin, _| reports.contains_key(origin));
            for (origin, report) in &reports {
                read.entry(origin.clone()).or_insert(report.relayed);
            }
            Report {
                relayed: self.relayed.load(Ordering::Relaxed),
                read: read.clone(),
            }
        };
        peers.seen(&all, &reports);
        Ok(slowest(&self.origin, &now, &reports, peers))
    }
}

/// The lag of the slowest instance waited for: this one, and the others that report.
fn slowest(me: &str, mine: &Report, reports: &HashMap<String, Report>, peers: &mut Peers) -> u64 {
    let mut relayed: HashMap<&str, u64> = reports
        .iter()
        .map(|(o, r)| (o.as_str(), r.relayed))
        .collect();
    relayed.insert(me, mine.relayed);
    let own = lag(me, mine, &relayed);
    reports
        .iter()
        .filter(|(origin, _)| peers.waited_for(origin))
        .map(|(origin, report)| lag(origin, report, &relayed))
        .fold(own, u64::max)
}

/// What `reader` has not read of what the others relayed.
fn lag(reader: &str, report: &Report, relayed: &HashMap<&str, u64>) -> u64 {
    relayed
        .iter()
        .filter(|(origin, _)| **origin != reader)
        .map(|(origin, n)| n.saturating_sub(report.read.get(*origin).copied().unwrap_or(0)))
        .sum()
}

/// When each other instance's report last changed (this instance's clock: no skew).
#[derive(Default)]
struct Peers {
    changed: HashMap<String, (String, Instant)>,
    given_up: Vec<String>,
    /// Instances found gone (no longer subscribed): their fields are removed next round.
    gone: Vec<String>,
    rounds: u64,
}

impl Peers {
    fn seen(&mut self, all: &HashMap<String, String>, live: &HashMap<String, Report>) {
        self.changed.retain(|origin, _| live.contains_key(origin));
        self.given_up.retain(|origin| live.contains_key(origin));
        for origin in live.keys() {
            let Some(text) = all.get(origin) else {
                continue;
            };
            match self.changed.get_mut(origin) {
                Some((last, _)) if last == text => {}
                _ => {
                    self.changed
                        .insert(origin.clone(), (text.clone(), Instant::now()));
                    self.given_up.retain(|o| o != origin);
                }
            }
        }
    }

    /// Whether `origin`'s report in `all` differs from the one seen last round (a first one
    /// does).
    fn reported_anew(&self, origin: &str, all: &HashMap<String, String>) -> bool {
        match (self.changed.get(origin), all.get(origin)) {
            (Some((last, _)), Some(text)) => last != text,
            _ => true,
        }
    }

    /// Whether `origin` is still waited for: it reported within [`GIVE_UP_AFTER`].
    fn waited_for(&mut self, origin: &str) -> bool {
        let Some((_, changed)) = self.changed.get(origin) else {
            return false;
        };
        if changed.elapsed() < GIVE_UP_AFTER {
            return true;
        }
        if !self.given_up.iter().any(|o| o == origin) {
            self.given_up.push(origin.to_owned());
            tracing::warn!(
                "an instance still connected to Redis has not reported how far it read the relay for {GIVE_UP_AFTER:?} (stopped or frozen?): publishes no longer wait for it; if Redis drops its connection, its sockets are told recovery_failed"
            );
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_read_back_as_written() {
        let report = Report {
            relayed: 42,
            read: HashMap::from([("a".to_owned(), 7), ("b".to_owned(), 9)]),
        };
        assert_eq!(Report::parse(&report.write()).as_ref(), Some(&report));
        assert_eq!(Report::parse("5").map(|r| r.relayed), Some(5));
        let with_round = format!("{} r12", report.write());
        assert_eq!(Report::parse(&with_round), Some(report));
        assert!(Report::parse("").is_none());
        assert!(Report::parse("x a=1").is_none());
    }

    #[test]
    fn the_slowest_counts_only_instances_still_reporting() {
        let report = |relayed, read: &[(&str, u64)]| Report {
            relayed,
            read: read.iter().map(|(o, n)| ((*o).to_owned(), *n)).collect(),
        };
        let me = report(1000, &[("b", 10), ("c", 10)]);
        let reports = HashMap::from([
            ("b".to_owned(), report(10, &[("me", 990), ("c", 10)])),
            ("c".to_owned(), report(10, &[("me", 100), ("b", 10)])),
        ]);
        let mut peers = Peers::default();
        let texts: HashMap<String, String> = reports
            .iter()
            .map(|(o, r)| (o.clone(), r.write()))
            .collect();
        peers.seen(&texts, &reports);
        // c is 900 of mine behind: the slowest.
        assert_eq!(slowest("me", &me, &reports, &mut peers), 900);
        // c has not reported anything new for longer than the wait: b is the slowest then.
        let long_ago = Instant::now().checked_sub(GIVE_UP_AFTER + Duration::from_secs(1));
        if let (Some(at), Some(c)) = (long_ago, peers.changed.get_mut("c")) {
            c.1 = at;
            assert_eq!(slowest("me", &me, &reports, &mut peers), 10);
            // A new report: waited for again.
            let mut texts = texts.clone();
            texts.insert(
                "c".to_owned(),
                report(10, &[("me", 101), ("b", 10)]).write(),
            );
            peers.seen(&texts, &reports);
            assert_eq!(slowest("me", &me, &reports, &mut peers), 900);
        }
    }

    #[test]
    fn a_readers_lag_is_what_the_others_relayed_that_it_did_not_read() {
        let relayed = HashMap::from([("a", 100), ("b", 50), ("c", 10)]);
        let b = Report {
            relayed: 50,
            read: HashMap::from([("a".to_owned(), 60)]),
        };
        // 40 of a's, none of c's (not in its report yet: counted whole), its own not at all.
        assert_eq!(lag("b", &b, &relayed), 40 + 10);
        let ahead = Report {
            relayed: 0,
            read: HashMap::from([
                ("a".to_owned(), 120),
                ("b".to_owned(), 50),
                ("c".to_owned(), 10),
            ]),
        };
        assert_eq!(lag("d", &ahead, &relayed), 0);
    }
}
