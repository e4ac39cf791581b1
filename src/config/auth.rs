//! `[auth]`: how sockets are authenticated through the app's own session route.

use std::time::Duration;

use http::header::{self, HeaderName};
use http::uri::PathAndQuery;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::{Invalid, at_least_one};
use super::value::{millis, optional, parsed, path_on_app, shown, shown_or_empty};

/// How sockets are authenticated through the app's own session route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Path (and optional query) of the app's session route, called with `GET`.
    #[serde(deserialize_with = "session_path", serialize_with = "shown")]
    pub session_path: PathAndQuery,
    /// Handshake request headers forwarded to the session route.
    #[serde(deserialize_with = "header_names", serialize_with = "shown_names")]
    pub forward_headers: Vec<HeaderName>,
    /// JSON pointer (RFC 6901) to the user id in the session route's response.
    pub user_id_pointer: String,
    /// JSON pointer to the rooms (an array of strings) the user's sockets join besides their
    /// user room; empty, or nothing at the pointer, = none.
    #[serde(deserialize_with = "rooms_pointer", serialize_with = "shown_or_empty")]
    pub rooms_pointer: Option<String>,
    /// JSON pointer to what presence shows of a user (any JSON, at most 1 KiB serialized);
    /// empty, or nothing at the pointer, = null.
    #[serde(
        deserialize_with = "user_info_pointer",
        serialize_with = "shown_or_empty"
    )]
    pub user_info_pointer: Option<String>,
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: Duration,
    #[serde(rename = "cache_ttl_ms", with = "millis")]
    pub cache_ttl: Duration,
    #[serde(rename = "negative_ttl_ms", with = "millis")]
    pub negative_ttl: Duration,
    pub cache_max_entries: u64,
    /// Most session-route calls in flight at once (a deploy reconnects every browser at once).
    pub max_concurrent: usize,
    /// How often connected sockets are re-checked; `0` turns revalidation off.
    #[serde(rename = "revalidate_interval_ms", with = "millis")]
    pub revalidate_interval: Duration,
    /// Most session checks waiting for one of the `max_concurrent` places; further ones are
    /// refused at once ("session unavailable").
    pub max_waiting: usize,
    /// Largest credentials (the handshake headers the session check reads, together) a
    /// handshake may carry; larger ones get 431 before a session is made.
    pub max_credential_bytes: usize,
}

/// Refused when it does not start with `/`, as before it was typed; and now also when it is
/// no path at all (the session route used to fall back to `/api/session` silently).
fn session_path<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PathAndQuery, D::Error> {
    parsed(deserializer, |text| {
        if !text.starts_with('/') {
            return Err(format!("`{text}` must start with `/`"));
        }
        path_on_app(text).ok_or_else(|| format!("`{text}` is not a path"))
    })
}

/// A JSON pointer, or empty for none; `example` is shown when it is neither.
fn pointer_or_none<'de, D: Deserializer<'de>>(
    deserializer: D,
    example: &str,
) -> Result<Option<String>, D::Error> {
    optional(deserializer, |pointer| {
        if pointer.starts_with('/') {
            Ok(pointer.to_string())
        } else {
            Err(format!(
                "`{pointer}` is not a JSON pointer (it starts with `/`, e.g. {example}), or empty for none"
            ))
        }
    })
}

fn rooms_pointer<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    pointer_or_none(deserializer, "/rooms")
}

fn user_info_pointer<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    pointer_or_none(deserializer, "/user")
}

fn header_names<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<HeaderName>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|name| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| D::Error::custom(format!("`{name}` is not a header name")))
        })
        .collect()
}

fn shown_names<S: Serializer>(names: &[HeaderName], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(names.iter().map(HeaderName::as_str))
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            session_path: PathAndQuery::from_static("/api/session"),
            forward_headers: vec![
                header::COOKIE,
                header::USER_AGENT,
                HeaderName::from_static("x-forwarded-for"),
            ],
            user_id_pointer: "/userId".into(),
            rooms_pointer: Some("/rooms".into()),
            user_info_pointer: Some("/user".into()),
            timeout: Duration::from_millis(5_000),
            cache_ttl: Duration::from_millis(30_000),
            negative_ttl: Duration::from_millis(5_000),
            cache_max_entries: 100_000,
            max_concurrent: 32,
            revalidate_interval: Duration::from_millis(300_000),
            max_waiting: 512,
            max_credential_bytes: 16 * 1024,
        }
    }
}

impl AuthConfig {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if !self.user_id_pointer.is_empty() && !self.user_id_pointer.starts_with('/') {
            return Err(Invalid::new(
                "auth.user_id_pointer",
                format!(
                    "`{}` is not a JSON pointer (it starts with `/`, e.g. /userId or /user/id)",
                    self.user_id_pointer
                ),
            ));
        }
        at_least_one(&[("auth.max_concurrent", self.max_concurrent == 0)])?;
        if self.max_credential_bytes < 256 {
            return Err(Invalid::new(
                "auth.max_credential_bytes",
                "must be at least 256 (a session cookie has to fit)",
            ));
        }
        Ok(())
    }
}
