//! One socket's channel membership: the rooms it is in, those its session listed, its
//! subscribes waiting for the app, and its budget of subscribes per second. Kept in the
//! socket's extensions; [`super::channels`] decides what goes in.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;

/// One socket's channels, kept in its extensions from the handshake on.
#[derive(Clone, Default)]
pub(super) struct Membership(Arc<Mutex<Joined>>);

#[derive(Default)]
pub(super) struct Joined {
    /// The rooms of the last session answer seen, whether or not still joined.
    pub(super) session: BTreeSet<Arc<str>>,
    /// Every channel the socket is in (from the session and subscribed).
    pub(super) rooms: BTreeSet<Arc<str>>,
    /// Subscribes that took a place and wait for the app.
    pub(super) pending: usize,
    /// The socket closed: nothing is joined any more.
    pub(super) closed: bool,
    /// Tokens for `subscribe`, refilled at `channels.max_subscribes_per_sec`.
    pub(super) tokens: f64,
    pub(super) refilled: Option<Instant>,
}

impl Membership {
    /// The socket's membership, made on first use. Handlers of one socket may run at once;
    /// the lock keeps two of them from each making one.
    pub(super) fn of<A: Adapter>(socket: &SocketRef<A>) -> Membership {
        static MAKING: Mutex<()> = Mutex::new(());
        if let Some(membership) = socket.extensions.get::<Membership>() {
            return membership;
        }
        let _making = MAKING.lock().unwrap_or_else(|e| e.into_inner());
        socket.extensions.get::<Membership>().unwrap_or_else(|| {
            let membership = Membership::default();
            socket.extensions.insert(membership.clone());
            membership
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Joined> {
        // A panic while holding it leaves plain sets behind: still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Joined {
    /// One `subscribe` worth of the per-second budget (a full second's worth to start with).
    pub(super) fn take_token(&mut self, per_sec: f64) -> bool {
        let now = Instant::now();
        self.tokens = match self.refilled {
            None => per_sec,
            Some(then) => {
                (self.tokens + now.duration_since(then).as_secs_f64() * per_sec).min(per_sec)
            }
        };
        self.refilled = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribes_are_rate_limited() {
        let mut joined = Joined::default();
        assert!((0..3).all(|_| joined.take_token(3.0)));
        assert!(!joined.take_token(3.0));
        joined.refilled = joined
            .refilled
            .map(|t| t - std::time::Duration::from_millis(400));
        assert!(joined.take_token(3.0));
        assert!(!joined.take_token(3.0));
    }
}
