//! What a history answers in: where a replay starts ([`Since`], [`Head`]), what it finds
//! ([`Entry`], [`Replay`]), where a message was kept ([`Appended`]), and the tokens that keep
//! offsets of different runs and stream generations apart. Shared by both histories.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::realtime::payload::Payload;

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
    pub data: Payload,
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

/// A token that differs between runs and between calls: names a run or a stream generation.
pub(super) fn fresh_token() -> String {
    use std::sync::atomic::AtomicU64;
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let token = RandomState::new().hash_one((Instant::now(), std::process::id(), call));
    format!("{token:016x}")
}
