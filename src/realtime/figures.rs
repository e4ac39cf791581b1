//! What the hub reports about sockets — a user's presence, who is in a room, the counts of
//! connections, users and rooms — and how much of the cluster each figure covers
//! ([`Coverage`]).

use super::roster::Member;

/// Whether figures cover every instance, only some of them, or only this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Local,
    /// Some instances did not answer within the request timeout: what they hold is missing.
    Partial,
    Cluster,
}

/// What figures cover: flattened into the answers as `scope`, and `unanswered` (how many
/// instances did not answer in time) when partial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Coverage {
    pub scope: Scope,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unanswered: Option<usize>,
}

impl Coverage {
    pub(super) const LOCAL: Self = Self {
        scope: Scope::Local,
        unanswered: None,
    };

    /// A cluster-wide read that `unanswered` instances did not answer.
    pub(super) fn cluster(unanswered: usize) -> Self {
        match unanswered {
            0 => Self {
                scope: Scope::Cluster,
                unanswered: None,
            },
            n => Self {
                scope: Scope::Partial,
                unanswered: Some(n),
            },
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HubStats {
    pub connections: usize,
    pub users: usize,
    pub rooms: usize,
    pub publishes: u64,
    pub deliveries: u64,
    #[serde(flatten)]
    pub coverage: Coverage,
}

/// A user's presence.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Presence {
    pub sockets: usize,
    /// The channels their sockets are in (not the user room nor sockgate's own), sorted.
    pub rooms: Vec<String>,
    #[serde(flatten)]
    pub coverage: Coverage,
}

/// Who is in a room.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomInfo {
    pub room: String,
    pub sockets: usize,
    /// Distinct users among the sockets.
    pub users: usize,
    /// A presence room's members, with their info.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<Member>>,
    #[serde(flatten)]
    pub coverage: Coverage,
}
