//! How a value written in the file or the environment becomes its type, once, at load: what
//! users write stays as documented (`foo_ms = 5000`, `listen = ""` for off), what the program
//! reads is a `Duration`, an `Option<SocketAddr>`… A value that does not parse fails the
//! extraction itself, so figment names its key and source as for any other bad value, and the
//! reason is the section's own words.

use std::fmt::Display;

use http::uri::PathAndQuery;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};

/// `*_ms` keys: milliseconds in the file, a `Duration` in the program.
pub(super) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        // Every duration came from a u64 of milliseconds, so it fits back into one.
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

/// A text value turned into `T` by `parse`, whose error is the reason the user reads.
pub(super) fn parsed<'de, D, T>(
    deserializer: D,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(D::Error::custom)
}

/// A text value where empty means off; anything else is turned into `T` by `parse`.
pub(super) fn optional<'de, D, T>(
    deserializer: D,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
{
    parsed(deserializer, |text| {
        if text.is_empty() {
            Ok(None)
        } else {
            parse(text).map(Some)
        }
    })
}

/// Any text, empty = off.
pub(super) fn text_or_off<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    optional(deserializer, |text| Ok(text.to_string()))
}

/// A path (and optional query) on the app, e.g. `/api/session`; `None` if `text` is not one.
pub(super) fn path_on_app(text: &str) -> Option<PathAndQuery> {
    text.starts_with('/').then(|| text.parse().ok()).flatten()
}

/// A key that must be a path on the app (`upstream.ready_path`, `channels.authorize_path`).
pub(super) fn app_path<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<PathAndQuery, D::Error> {
    parsed(deserializer, |text| {
        path_on_app(text).ok_or_else(|| format!("`{text}` must be a path starting with `/`"))
    })
}

/// Shows a parsed value as the text it was read from (`--print-config`, the defaults layer).
pub(super) fn shown<S: Serializer, T: Display>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// Shows an optional value as its text, or `""` when off.
pub(super) fn shown_or_empty<S: Serializer, T: Display>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.collect_str(value),
        None => serializer.serialize_str(""),
    }
}
