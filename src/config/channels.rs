//! `[channels]`: rooms beyond the user's own, and presence in them.

use std::time::Duration;

use http::uri::PathAndQuery;
use serde::{Deserialize, Serialize};

use super::error::{Invalid, at_least_one};
use super::value::{app_path, millis, shown};

/// Rooms beyond the user's own: from the session route, or subscribed at runtime with the
/// app's authorization.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelsConfig {
    /// Path of the app's route that authorizes a `subscribe`, called with `POST`.
    #[serde(deserialize_with = "app_path", serialize_with = "shown")]
    pub authorize_path: PathAndQuery,
    /// Room prefixes any socket may subscribe to without asking the app.
    pub public_prefixes: Vec<String>,
    /// Most rooms a socket is in besides its user room (session rooms and subscriptions).
    pub max_rooms_per_socket: usize,
    /// Most `subscribe` and `presence` requests a socket may send per second (a burst of as
    /// many is fine).
    pub max_subscribes_per_sec: u32,
    /// Room prefixes whose members sockgate tracks: distinct users, announced with
    /// `presence:join`/`presence:leave` and listed on request.
    pub presence_prefixes: Vec<String>,
    /// How long a user's last socket may be gone from a presence room before they leave it
    /// (a reload within it produces neither a leave nor a join).
    #[serde(rename = "presence_grace_ms", with = "millis")]
    pub presence_grace: Duration,
    /// Cluster mode: an instance that has not refreshed its presence liveness key for this
    /// long is taken for dead, and its members leave their rooms.
    #[serde(rename = "presence_instance_ttl_ms", with = "millis")]
    pub presence_instance_ttl: Duration,
    /// Most distinct users a `subscribe` lets into a presence room: every arrival is
    /// announced to every member and a member list carries up to 1 KiB per member, so an
    /// unbounded room costs the square of its size. Rooms the session route lists are the
    /// app's word and not held to it.
    pub max_presence_members: usize,
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        Self {
            authorize_path: PathAndQuery::from_static("/api/socket/authorize"),
            public_prefixes: Vec::new(),
            max_rooms_per_socket: 100,
            max_subscribes_per_sec: 10,
            presence_prefixes: vec!["presence:".into()],
            presence_grace: Duration::from_millis(5_000),
            presence_instance_ttl: Duration::from_millis(15_000),
            max_presence_members: 100,
        }
    }
}

impl ChannelsConfig {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        at_least_one(&[
            (
                "channels.max_subscribes_per_sec",
                self.max_subscribes_per_sec == 0,
            ),
            (
                "channels.presence_instance_ttl_ms",
                self.presence_instance_ttl.is_zero(),
            ),
            (
                "channels.max_presence_members",
                self.max_presence_members == 0,
            ),
        ])
    }

    /// Public and presence prefixes must not reach into sockgate's own rooms, nor into the
    /// user rooms (`realtime.room_prefix`): a cross-section rule, called with them.
    pub(super) fn check_prefixes(&self, room_prefix: &str) -> Result<(), Invalid> {
        let reserved = [crate::reserved::INTERNAL_PREFIX, room_prefix];
        for (key, prefix) in self
            .public_prefixes
            .iter()
            .map(|p| ("channels.public_prefixes", p))
            .chain(
                self.presence_prefixes
                    .iter()
                    .map(|p| ("channels.presence_prefixes", p)),
            )
        {
            if prefix.is_empty()
                || reserved
                    .iter()
                    .any(|r| prefix.starts_with(r) || r.starts_with(prefix.as_str()))
            {
                return Err(Invalid::new(
                    key,
                    format!(
                        "`{prefix}` must be non-empty and must not overlap `{}` or realtime.room_prefix (`{room_prefix}`)",
                        crate::reserved::INTERNAL_PREFIX,
                    ),
                ));
            }
        }
        Ok(())
    }
}
