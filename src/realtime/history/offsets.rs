//! What a history answers in: where a replay starts ([`Since`], [`Head`]), what it finds
//! ([`Entry`], [`Replay`]), where a message was kept ([`Appended`]), the tokens that keep
//! offsets of different runs and stream generations apart, and the cluster's sequence ids.
//! Shared by both histories.

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
    /// The `n`th message of generation `epoch` (n ≥ 1).
    pub fn numbered(epoch: &str, n: u64) -> Self {
        Appended {
            epoch: epoch.to_owned(),
            id: sequence_id(n),
            prev: n.checked_sub(1).map_or_else(String::new, sequence_id),
        }
    }

    /// The offset clients get for it.
    pub fn offset(&self) -> String {
        format!("{}:{}", self.epoch, self.id)
    }
}

/// The stream id of a generation's `n`th message (`<n>-0`; 0 is none: `""`). Cluster offsets
/// are `<generation>:<n>-0`: the ids count the generation's messages, so the entry before one is
/// known without reading the stream, and a hole shows in the numbers.
pub(super) fn sequence_id(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!("{n}-0")
    }
}

/// The `n` of a stream id written as [`sequence_id`]; `""` is 0 (before a generation's first).
pub(super) fn sequence_of(id: &str) -> Option<u64> {
    if id.is_empty() {
        return Some(0);
    }
    id.strip_suffix("-0")?.parse().ok()
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
    let mut token = String::with_capacity(16);
    write_fresh_token(&mut token);
    token
}

/// Writes a [`fresh_token`] into `out` (16 hex digits), without a `String` of its own.
pub(super) fn write_fresh_token(out: &mut impl std::fmt::Write) {
    use std::sync::atomic::AtomicU64;
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let token = RandomState::new().hash_one((Instant::now(), std::process::id(), call));
    // Infallible on a String or a BytesMut.
    let _ = write!(out, "{token:016x}");
}
