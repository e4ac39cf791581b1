//! Places under `realtime.max_connections`: [`OpenSockets`] counts the realtime connections
//! open or opening on this instance, each holding a [`Slot`] for its life.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Realtime connections open or opening on this instance: each holds a [`Slot`] from its
/// handshake until the connection is gone, so the cap holds even for handshakes that arrive
/// together and costs nothing per request.
#[derive(Clone, Default, Debug)]
pub struct OpenSockets(Arc<AtomicUsize>);

impl OpenSockets {
    /// A slot if fewer than `max` are taken.
    pub fn reserve(&self, max: usize) -> Option<Slot> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::new(SlotGuard(self.clone()))))
    }
}

/// One connection's place under `realtime.max_connections`. It rides in the handshake
/// request's extensions, which the Engine.IO session keeps for its whole life; the place is
/// given back when the last copy is dropped (handshake refused, or session closed).
#[derive(Clone, Debug)]
pub struct Slot(
    #[allow(dead_code)] // held for its Drop
    Arc<SlotGuard>,
);

#[derive(Debug)]
struct SlotGuard(OpenSockets);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}
