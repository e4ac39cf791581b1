//! The publish API's messages: JSON in, validated into hub targets, with errors that name the
//! offending field.

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::realtime::{Payload, SOCKGATE_EVENTS, Target};
use crate::reserved::INTERNAL_PREFIX;

/// Events the Socket.IO client reserves for itself; publishing them would confuse clients.
const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];
const MAX_EVENT_LEN: usize = 128;
const TARGET_FIELDS: [&str; 4] = ["userId", "userIds", "room", "broadcast"];

/// One message to emit.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub target: Target,
    pub event: String,
    /// Encoded here, once: what every socket's frame and the history carry.
    pub data: Payload,
}

/// A field that is missing, of the wrong type, or out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{field}`: {reason}")]
pub struct InvalidField {
    pub field: String,
    pub reason: String,
}

fn invalid(prefix: &str, field: &str, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field: format!("{prefix}{field}"),
        reason: reason.into(),
    }
}

/// Parses one publish request; `prefix` locates it in a batch (`messages[3].`).
pub fn parse_publish(value: &Value, prefix: &str) -> Result<Publish, InvalidField> {
    let Value::Object(fields) = value else {
        let whole = prefix.trim_end_matches('.');
        let whole = if whole.is_empty() { "(body)" } else { whole };
        return Err(invalid("", whole, "must be a JSON object"));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !TARGET_FIELDS.contains(&k.as_str()) && *k != "event" && *k != "data")
    {
        return Err(invalid(
            prefix,
            unknown,
            "unknown field (expected userId, userIds, room or broadcast, plus event and data)",
        ));
    }
    let present: Vec<&str> = TARGET_FIELDS
        .iter()
        .copied()
        .filter(|f| fields.contains_key(*f))
        .collect();
    let target = match present.as_slice() {
        [] => {
            return Err(invalid(
                prefix,
                "userId",
                "missing target: give one of userId, userIds, room, broadcast",
            ));
        }
        [one] => parse_target(fields, one, prefix)?,
        [first, second, ..] => {
            return Err(invalid(
                prefix,
                second,
                format!("only one target may be given, but both `{first}` and `{second}` are"),
            ));
        }
    };
    let event = match fields.get("event") {
        None | Some(Value::Null) => "notification".to_string(),
        Some(Value::String(e)) if e.is_empty() => {
            return Err(invalid(prefix, "event", "must not be empty"));
        }
        Some(Value::String(e)) if e.len() > MAX_EVENT_LEN => {
            return Err(invalid(
                prefix,
                "event",
                format!("longer than {MAX_EVENT_LEN} bytes"),
            ));
        }
        Some(Value::String(e)) if RESERVED_EVENTS.contains(&e.as_str()) => {
            return Err(invalid(
                prefix,
                "event",
                format!("`{e}` is reserved by Socket.IO"),
            ));
        }
        Some(Value::String(e))
            if SOCKGATE_EVENTS.contains(&e.as_str()) || e.starts_with(INTERNAL_PREFIX) =>
        {
            return Err(invalid(
                prefix,
                "event",
                format!("`{e}` is an event sockgate itself sends to clients"),
            ));
        }
        Some(Value::String(e)) => e.clone(),
        Some(other) => return Err(invalid(prefix, "event", expected("a string", other))),
    };
    let data = Payload::from_value(fields.get("data").unwrap_or(&Value::Null))
        .map_err(|e| invalid(prefix, "data", e.to_string()))?;
    Ok(Publish {
        target,
        event,
        data,
    })
}

fn parse_target(
    fields: &Map<String, Value>,
    name: &str,
    prefix: &str,
) -> Result<Target, InvalidField> {
    let value = &fields[name];
    match name {
        "userId" => user_id(value)
            .map(Target::User)
            .map_err(|r| invalid(prefix, name, r)),
        "userIds" => {
            let Value::Array(ids) = value else {
                return Err(invalid(
                    prefix,
                    name,
                    expected("an array of user ids", value),
                ));
            };
            if ids.is_empty() {
                return Err(invalid(prefix, name, "must not be empty"));
            }
            ids.iter()
                .enumerate()
                .map(|(i, id)| {
                    user_id(id).map_err(|r| invalid(prefix, &format!("userIds[{i}]"), r))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Target::Users)
        }
        "room" => match value {
            Value::String(room) if room.starts_with(INTERNAL_PREFIX) => Err(invalid(
                prefix,
                name,
                format!("rooms starting with `{INTERNAL_PREFIX}` are sockgate's own"),
            )),
            Value::String(room) if !room.is_empty() => Ok(Target::Room(room.clone())),
            Value::String(_) => Err(invalid(prefix, name, "must not be empty")),
            other => Err(invalid(prefix, name, expected("a string", other))),
        },
        _ => match value {
            Value::Bool(true) => Ok(Target::Broadcast),
            Value::Bool(false) => Err(invalid(
                prefix,
                name,
                "must be true (omit it to publish to a user or room)",
            )),
            other => Err(invalid(prefix, name, expected("true", other))),
        },
    }
}

/// A user id: a non-empty string, or an integer (apps often use numeric ids).
fn user_id(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) if s.is_empty() => Err("must not be empty".into()),
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        other => Err(expected("a string or an integer", other)),
    }
}

fn expected(what: &str, got: &Value) -> String {
    let kind = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    format!("must be {what}, not {kind}")
}

/// A message's fields as the request has them: each value's JSON text, borrowed from the body.
type RawFields<'a> = BTreeMap<&'a str, &'a RawValue>;

#[derive(serde::Deserialize)]
struct RawBatch<'a> {
    #[serde(borrow)]
    messages: Vec<RawFields<'a>>,
}

/// A valid `POST /publish` body read the short way: its `data` kept as the app's JSON text
/// ([`Payload::from_raw`]), never built as a tree and written again; the other fields, a few
/// bytes, read as values and checked by [`parse_publish`]. `None` for anything else (invalid,
/// or a key written with escapes): [`parse_publish`] on the whole body then says what is
/// wrong, with the same words as ever.
pub fn publish_from_json(body: &[u8]) -> Option<Publish> {
    let fields: RawFields = serde_json::from_slice(body).ok()?;
    from_raw_fields(&fields)
}

/// [`publish_from_json`] for `POST /publish/batch`; `None` unless every message is valid.
pub fn batch_from_json(body: &[u8], max: usize) -> Option<Vec<Publish>> {
    let batch: RawBatch = serde_json::from_slice(body).ok()?;
    if batch.messages.is_empty() || batch.messages.len() > max {
        return None;
    }
    batch.messages.iter().map(from_raw_fields).collect()
}

fn from_raw_fields(fields: &RawFields) -> Option<Publish> {
    let mut others = Map::new();
    for (&name, raw) in fields.iter().filter(|(name, _)| **name != "data") {
        others.insert(name.to_owned(), serde_json::from_str(raw.get()).ok()?);
    }
    let mut publish = parse_publish(&Value::Object(others), "").ok()?;
    if let Some(data) = fields.get("data") {
        publish.data = Payload::from_raw(data)?;
    }
    Some(publish)
}

/// Parses `{"messages": [...]}`; every message is checked before any is sent.
pub fn parse_batch(value: &Value, max: usize) -> Result<Vec<Publish>, InvalidField> {
    let Some(messages) = value.get("messages") else {
        return Err(invalid(
            "",
            "messages",
            "missing: expected {\"messages\": [...]}",
        ));
    };
    let Value::Array(messages) = messages else {
        return Err(invalid("", "messages", expected("an array", messages)));
    };
    if messages.is_empty() {
        return Err(invalid("", "messages", "must not be empty"));
    }
    if messages.len() > max {
        return Err(invalid(
            "",
            "messages",
            format!(
                "{} messages is over the limit of {max} (publish.max_batch)",
                messages.len()
            ),
        ));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| parse_publish(m, &format!("messages[{i}].")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The short way gives what the long way gives, for valid bodies, and nothing otherwise.
    #[test]
    fn raw_bodies_read_as_values_do() {
        let valid = [
            r#"{"userId": 42, "data": {"a": [1, "x y"], "b": null}}"#,
            r#"{"userIds": ["a", 7], "event": "x", "data": "text"}"#,
            r#"{ "room" : "r" }"#,
            r#"{"broadcast": true, "data": 1.5e3, "event": "e"}"#,
            r#"{"userId": "u", "data": null}"#,
        ];
        for body in valid {
            let value: Value = serde_json::from_str(body).unwrap();
            let long = parse_publish(&value, "").unwrap();
            let short = publish_from_json(body.as_bytes()).unwrap();
            assert_eq!(short.target, long.target, "{body}");
            assert_eq!(short.event, long.event, "{body}");
            let (s, l): (Value, Value) = (
                serde_json::from_str(short.data.json()).unwrap(),
                serde_json::from_str(long.data.json()).unwrap(),
            );
            assert_eq!(s, l, "{body}");
        }
        let invalid = [
            r#"{}"#,
            r#"{"userId": true}"#,
            r#"{"userId": "a", "room": "b"}"#,
            r#"{"userId": "a", "extra": 1}"#,
            r#"{"userId": "a", "event": "connect"}"#,
            r#"{"userId": "a", "data": {"unclosed": 1}"#,
            r#"[1]"#,
            r#"{"userId": "a"} trailing"#,
        ];
        for body in invalid {
            assert!(publish_from_json(body.as_bytes()).is_none(), "{body}");
        }
        let batch = r#"{"messages": [{"userId": 1, "data": {"k": [ 1 ]}}, {"room": "r"}]}"#;
        let short = batch_from_json(batch.as_bytes(), 2).unwrap();
        let long = parse_batch(&serde_json::from_str(batch).unwrap(), 2).unwrap();
        assert_eq!(short, long);
        assert!(batch_from_json(batch.as_bytes(), 1).is_none());
        assert!(batch_from_json(br#"{"messages": []}"#, 5).is_none());
        assert!(batch_from_json(br#"{"messages": [{"userId": 1}, {}]}"#, 5).is_none());
    }

    #[test]
    fn targets() {
        let p = parse_publish(&json!({"userId": 42, "data": {"a": 1}}), "").unwrap();
        assert_eq!(p.target, Target::User("42".into()));
        assert_eq!(p.event, "notification");
        assert_eq!(p.data.json(), r#"{"a":1}"#);
        let p = parse_publish(&json!({"userIds": ["a", 7], "event": "x"}), "").unwrap();
        assert_eq!(p.target, Target::Users(vec!["a".into(), "7".into()]));
        assert_eq!(
            parse_publish(&json!({"room": "r"}), "").unwrap().target,
            Target::Room("r".into())
        );
        assert_eq!(
            parse_publish(&json!({"broadcast": true}), "")
                .unwrap()
                .target,
            Target::Broadcast
        );
    }

    #[test]
    fn errors_name_the_field() {
        let field = |v: Value| parse_publish(&v, "").unwrap_err().field;
        assert_eq!(field(json!({})), "userId");
        assert_eq!(field(json!({"userId": true})), "userId");
        assert_eq!(field(json!({"userId": 1.5})), "userId");
        assert_eq!(field(json!({"userId": "a", "room": "b"})), "room");
        assert_eq!(field(json!({"userIds": ["a", null]})), "userIds[1]");
        assert_eq!(field(json!({"userId": "a", "event": 3})), "event");
        assert_eq!(field(json!({"userId": "a", "event": "connect"})), "event");
        assert_eq!(
            field(json!({"userId": "a", "event": "recovery_failed"})),
            "event"
        );
        assert_eq!(
            field(json!({"userId": "a", "event": "sockgate:x"})),
            "event"
        );
        assert_eq!(field(json!({"room": "sockgate:connecting:a"})), "room");
        assert_eq!(field(json!({"room": "sockgate:"})), "room");
        assert_eq!(field(json!({"userId": "a", "dat": 1})), "dat");
        assert_eq!(field(json!({"broadcast": false})), "broadcast");
        assert_eq!(field(json!([1])), "(body)");
    }

    #[test]
    fn batch_rejects_with_index_and_limit() {
        let batch = json!({"messages": [{"userId": "a"}, {"userId": {}}]});
        assert_eq!(
            parse_batch(&batch, 10).unwrap_err().field,
            "messages[1].userId"
        );
        let batch = json!({"messages": [{"userId": "a"}, {"userId": "b"}]});
        assert_eq!(parse_batch(&batch, 1).unwrap_err().field, "messages");
        assert_eq!(parse_batch(&batch, 2).unwrap().len(), 2);
        assert_eq!(
            parse_batch(&json!({"messages": [3]}), 2).unwrap_err().field,
            "messages[0]"
        );
    }
}
