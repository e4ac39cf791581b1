//! Who was kicked (`POST /users/{id}/disconnect`), and since when.
//!
//! Every session-route call is stamped when it is sent; an answer about a user kicked after
//! its stamp is stale, whether it sits in the session cache or was still on its way when the
//! kick came. In cluster mode a kick is also written to Redis (`sockgate:kick:{user}`, the
//! Unix time in ms, expiring when no answer from before it can be cached anywhere any more),
//! and every instance reads it before letting a user in, so a kick on one instance holds on
//! all of them — while Redis is reachable. While the cluster link is down (an outage the
//! instance already knows about) the Redis read is skipped: refusing every new socket of
//! every user for the length of an outage would be worse than letting a user kicked on
//! another instance back in on its cached session, which is what happens meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fred::clients::Client as RedisClient;
use fred::interfaces::KeysInterface;
use fred::types::Expiration;

use crate::cluster::Link;

/// When a session-route call was sent: a local generation, and the wall clock for comparing
/// with kicks made on other instances.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stamp {
    generation: u64,
    unix_ms: u64,
}

pub(super) struct Kicks {
    state: Mutex<Local>,
    /// Past this, no answer from before a kick can still be cached or in flight.
    remember: Duration,
    shared: OnceLock<Shared>,
}

#[derive(Default)]
struct Local {
    generation: u64,
    users: HashMap<Arc<str>, (u64, Instant)>,
}

struct Shared {
    client: RedisClient,
    link: Link,
    timeout: Duration,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn redis_key(user: &str) -> String {
    format!("sockgate:kick:{user}")
}

impl Kicks {
    pub(super) fn new(remember: Duration) -> Self {
        Self {
            state: Mutex::default(),
            remember,
            shared: OnceLock::new(),
        }
    }

    /// Shares kicks with the other instances through Redis while `link` is up; `timeout`
    /// bounds each command.
    pub(super) fn share_through(&self, client: RedisClient, link: Link, timeout: Duration) {
        let _ = self.shared.set(Shared {
            client,
            link,
            timeout,
        });
    }

    pub(super) fn stamp(&self) -> Stamp {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Stamp {
            generation: state.generation,
            unix_ms: unix_ms(),
        }
    }

    /// Records a kick of `user` here, and in Redis in cluster mode. A failure to share it is
    /// returned (the kick holds on this instance regardless).
    pub(super) async fn kick(&self, user: &str) -> Result<(), String> {
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            state
                .users
                .retain(|_, (_, at)| now.duration_since(*at) < self.remember);
            state.generation += 1;
            let generation = state.generation;
            state.users.insert(user.into(), (generation, now));
        }
        let Some(shared) = self.shared.get() else {
            return Ok(());
        };
        if !shared.link.is_up() {
            return Err("Redis is away".into());
        }
        let expire = Expiration::PX(i64::try_from(self.remember.as_millis()).unwrap_or(i64::MAX));
        let set = shared.client.set::<(), _, _>(
            redis_key(user),
            unix_ms().to_string(),
            Some(expire),
            None,
            false,
        );
        match tokio::time::timeout(shared.timeout, set).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("Redis: {e}")),
            Err(_) => Err(format!("Redis did not answer within {:?}", shared.timeout)),
        }
    }

    /// Whether `user` was kicked after `stamp`. In cluster mode this asks Redis while the link
    /// is up, and an answer that cannot be had then is an error: the caller fails closed.
    pub(super) async fn kicked_since(&self, user: &str, stamp: Stamp) -> Result<bool, String> {
        let here = {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.users.get(user).is_some_and(|(kicked, at)| {
                *kicked > stamp.generation && at.elapsed() < self.remember
            })
        };
        let Some(shared) = self
            .shared
            .get()
            .filter(|shared| !here && shared.link.is_up())
        else {
            return Ok(here);
        };
        let get = shared.client.get::<Option<String>, _>(redis_key(user));
        let kicked_at = match tokio::time::timeout(shared.timeout, get).await {
            Ok(Ok(value)) => value.and_then(|ms| ms.parse::<u64>().ok()),
            Ok(Err(e)) => return Err(format!("cannot read kicks from Redis: {e}")),
            Err(_) => {
                return Err(format!(
                    "cannot read kicks from Redis within {:?}",
                    shared.timeout
                ));
            }
        };
        // Same millisecond counts as after: asking again costs one call, trusting might not.
        Ok(kicked_at.is_some_and(|at| at >= stamp.unix_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_kick_outdates_answers_given_before_it_only() {
        let kicks = Kicks::new(Duration::from_secs(60));
        let before = kicks.stamp();
        kicks.kick("alice").await.unwrap();
        assert!(kicks.kicked_since("alice", before).await.unwrap());
        assert!(!kicks.kicked_since("bob", before).await.unwrap());
        let after = kicks.stamp();
        assert!(!kicks.kicked_since("alice", after).await.unwrap());
    }
}
