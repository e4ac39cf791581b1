//! Room names: which names are channels ([`RoomRules`]), and sockgate's internal rooms — a
//! user's connecting and recovery rooms, a channel's offsets room, the companions of a kept
//! room. Every internal room is under `sockgate:` (`crate::reserved::INTERNAL_PREFIX`).

use std::sync::Arc;

use crate::config::Config;
use crate::reserved::INTERNAL_PREFIX;

/// Longest room name accepted, in bytes.
pub const MAX_ROOM_BYTES: usize = 128;

/// Why a room name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRoom {
    #[error("empty")]
    Empty,
    #[error("longer than {MAX_ROOM_BYTES} bytes")]
    TooLong,
    #[error("characters other than A-Z a-z 0-9 and `-_.:@`")]
    Characters,
    #[error("sockgate's own (`{INTERNAL_PREFIX}`)")]
    Internal,
    #[error("a user room (realtime.room_prefix)")]
    UserRoom,
}

/// Which room names are channels, and how many a socket may be in.
#[derive(Debug, Clone)]
pub struct RoomRules {
    user_prefix: Arc<str>,
    pub(super) max_rooms: usize,
}

impl RoomRules {
    pub fn new(config: &Config) -> Self {
        Self {
            user_prefix: config.realtime.room_prefix.as_str().into(),
            max_rooms: config.channels.max_rooms_per_socket,
        }
    }

    /// Whether `room` may be a channel: 1 to [`MAX_ROOM_BYTES`] bytes of a conservative
    /// character set, neither internal nor a user room.
    pub fn check(&self, room: &str) -> Result<(), BadRoom> {
        if room.is_empty() {
            return Err(BadRoom::Empty);
        }
        if room.len() > MAX_ROOM_BYTES {
            return Err(BadRoom::TooLong);
        }
        if !room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b))
        {
            return Err(BadRoom::Characters);
        }
        if room.starts_with(INTERNAL_PREFIX) {
            return Err(BadRoom::Internal);
        }
        if room.starts_with(&*self.user_prefix) {
            return Err(BadRoom::UserRoom);
        }
        Ok(())
    }

    /// The rooms in a session route's answer (`value`, found at `auth.rooms_pointer`): valid
    /// names only, each once, at most `channels.max_rooms_per_socket`. Anything else is logged
    /// here — once per answer from the app, which is cached — and skipped.
    pub(super) fn of_session(
        &self,
        user_id: &str,
        value: Option<&serde_json::Value>,
    ) -> Arc<[Arc<str>]> {
        let items = match value {
            None | Some(serde_json::Value::Null) => return Arc::new([]),
            Some(serde_json::Value::Array(items)) => items,
            Some(_) => {
                tracing::warn!(user = %user_id, "session route's rooms are not an array: ignored");
                return Arc::new([]);
            }
        };
        let mut rooms: Vec<Arc<str>> = Vec::new();
        for item in items {
            let Some(room) = item.as_str() else {
                tracing::warn!(user = %user_id, "session route listed a room that is not a string: skipped");
                continue;
            };
            if let Err(why) = self.check(room) {
                let shown: String = room.chars().take(MAX_ROOM_BYTES).collect();
                tracing::warn!(user = %user_id, room = %shown.escape_debug(), "session route listed an invalid room ({why}): skipped");
                continue;
            }
            if rooms.iter().any(|r| &**r == room) {
                continue;
            }
            if rooms.len() == self.max_rooms {
                tracing::warn!(user = %user_id, max = self.max_rooms, "session route listed more rooms than channels.max_rooms_per_socket: the rest skipped");
                break;
            }
            rooms.push(room.into());
        }
        rooms.into()
    }
}

/// The room a user's socket waits in between its handshake and the end of its replay.
/// Outside `realtime.room_prefix` on purpose: it is not a user room and never published to.
pub(crate) fn connecting_room(user_id: &str) -> String {
    format!("{CONNECTING_ROOM_PREFIX}{user_id}")
}
pub(crate) const CONNECTING_ROOM_PREFIX: &str = "sockgate:connecting:";

/// The room of a user's sockets that get `(data, {offset})`; they are in the user room too,
/// which the hub's plain delivery excepts this room from. Internal, never published to by name.
pub(crate) fn recovery_room(user_id: &str) -> String {
    format!("{RECOVERY_ROOM_PREFIX}{user_id}")
}
pub(crate) const RECOVERY_ROOM_PREFIX: &str = "sockgate:recovery:";

/// The room of a channel's sockets that get `(data, {offset, room})`, beside the channel itself
/// (as [`recovery_room`] is for a user room). Internal, never published to by name.
pub(crate) fn offsets_room(room: &str) -> String {
    format!("{OFFSETS_ROOM_PREFIX}{room}")
}
pub(crate) const OFFSETS_ROOM_PREFIX: &str = "sockgate:offsets:";

/// The internal rooms that go with a room whose messages are kept.
pub(crate) struct Companions {
    /// Where its sockets that get offsets are (they are in the room too).
    pub with_offset: String,
    /// Where its sockets wait while their replay runs, for a user room (a channel's wait in
    /// no room: they enter it once replayed).
    pub waiting: Option<String>,
}

/// The companions of `room`: a user room's (under `room_prefix`) or a channel's.
pub(crate) fn companions(room_prefix: &str, room: &str) -> Companions {
    match room.strip_prefix(room_prefix) {
        Some(user) => Companions {
            with_offset: recovery_room(user),
            waiting: Some(connecting_room(user)),
        },
        None => Companions {
            with_offset: offsets_room(room),
            waiting: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(max_rooms: usize) -> RoomRules {
        let mut config = Config::default();
        config.channels.max_rooms_per_socket = max_rooms;
        RoomRules::new(&config)
    }

    #[test]
    fn room_names_are_checked() {
        let rules = rules(100);
        for good in [
            "team:42",
            "doc-7",
            "a",
            "org.acme@eu_1",
            &"x".repeat(MAX_ROOM_BYTES),
        ] {
            assert_eq!(rules.check(good), Ok(()), "{good}");
        }
        assert_eq!(rules.check(""), Err(BadRoom::Empty));
        assert_eq!(
            rules.check(&"x".repeat(MAX_ROOM_BYTES + 1)),
            Err(BadRoom::TooLong)
        );
        for bad in ["team 42", "team/42", "é", "a\nb", "a\0", "<script>", "a*"] {
            assert_eq!(rules.check(bad), Err(BadRoom::Characters), "{bad:?}");
        }
        assert_eq!(rules.check("sockgate:recovery:bob"), Err(BadRoom::Internal));
        assert_eq!(rules.check("sockgate:"), Err(BadRoom::Internal));
        assert_eq!(rules.check("user:alice"), Err(BadRoom::UserRoom));
        assert_eq!(rules.check("users"), Ok(()));
    }

    #[test]
    fn session_rooms_are_valid_unique_and_capped() {
        let rules = rules(2);
        let rooms = |v: serde_json::Value| {
            rules
                .of_session("alice", Some(&v))
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            rooms(json!([
                "team:1", 7, "bad room", "user:bob", "team:1", "team:2", "team:3"
            ])),
            ["team:1", "team:2"]
        );
        assert!(rooms(json!("team:1")).is_empty());
        assert!(rooms(json!(null)).is_empty());
        assert!(rules.of_session("alice", None).is_empty());
    }

    #[test]
    fn internal_rooms_carry_the_internal_prefix() {
        assert!(connecting_room("alice").starts_with(INTERNAL_PREFIX));
        assert!(recovery_room("alice").starts_with(INTERNAL_PREFIX));
        assert!(offsets_room("team:7").starts_with(INTERNAL_PREFIX));
        // A user id cannot make its recovery room a channel's offsets room.
        assert!(!offsets_room("x").starts_with(RECOVERY_ROOM_PREFIX));
        assert!(!recovery_room("x").starts_with(OFFSETS_ROOM_PREFIX));
    }
}
