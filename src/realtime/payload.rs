//! A published message's `data` as JSON text: written once when the message comes in, then the
//! same bytes go into every frame, the history and the relay — never a tree again, never
//! encoded again per socket or per replay.

use std::sync::Arc;

use serde::ser::Error as _;
use serde_json::value::RawValue;

/// The `data` of a publish. Cloning shares the text.
#[derive(Debug, Clone)]
pub struct Payload(Arc<RawValue>);

impl Payload {
    /// The value as serde_json writes it: compact, keys in the app's order. What clients got
    /// when the value was encoded for each frame, so frames stay byte for byte the same.
    pub fn from_value(value: &serde_json::Value) -> serde_json::Result<Self> {
        serde_json::value::to_raw_value(value).map(|raw| Self(Arc::from(raw)))
    }

    /// The value as the app sent it, with the whitespace between its tokens removed (what
    /// serde_json writes has none), without building it as a tree. Strings and numbers keep
    /// the app's spelling (`"\u00e9"` stays escaped, `1e3` stays `1e3`), which any JSON reader
    /// reads as the same values. `None` only if the compacted text were not JSON.
    pub fn from_raw(raw: &RawValue) -> Option<Self> {
        let raw = match without_whitespace(raw.get()) {
            None => raw.to_owned(),
            Some(compact) => RawValue::from_string(compact).ok()?,
        };
        Some(Self(Arc::from(raw)))
    }

    /// Text kept earlier (the history in Redis, a relayed entry); `None` if it is not JSON.
    pub fn from_json(text: String) -> Option<Self> {
        RawValue::from_string(text)
            .ok()
            .map(|raw| Self(Arc::from(raw)))
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

/// `json` without the whitespace outside its strings; `None` if it has none there.
fn without_whitespace(json: &str) -> Option<String> {
    let bytes = json.as_bytes();
    let (mut in_string, mut escaped) = (false, false);
    let mut out: Option<Vec<u8>> = None;
    for (i, &b) in bytes.iter().enumerate() {
        let skip = if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            false
        } else {
            in_string = b == b'"';
            matches!(b, b' ' | b'\n' | b'\r' | b'\t')
        };
        match (&mut out, skip) {
            (None, true) => out = Some(bytes[..i].to_vec()),
            (Some(kept), false) => kept.push(b),
            _ => {}
        }
    }
    // Only ASCII bytes were left out, so the rest is still UTF-8.
    out.and_then(|kept| String::from_utf8(kept).ok())
}

/// JSON (Socket.IO's default parser) takes the text as it is. A binary format (the msgpack
/// parser; serde tells it apart as not human-readable) cannot embed JSON text: for it the text
/// is read back into a value, once per encode, which is once per broadcast.
impl serde::Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            self.0.serialize(serializer)
        } else {
            serde_json::from_str::<serde_json::Value>(self.json())
                .map_err(S::Error::custom)?
                .serialize(serializer)
        }
    }
}

/// What follows a kept message's data for the sockets that track offsets,
/// `{"offset":…,"room":…}`: encodes as the `json!` map it replaces did (keys in this order, in
/// JSON and in msgpack), without building a map of owned strings per message.
#[derive(Debug, serde::Serialize)]
pub struct OffsetMeta<'a> {
    pub offset: &'a str,
    pub room: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// In both encodings a payload is what its value was: the same JSON text, the same msgpack
    /// bytes, alone or beside the offset metadata.
    #[test]
    fn encodes_as_its_value_did() {
        let value = json!({"z": 1, "a": [1.5, "é\n", null, {"k": true}], "big": u64::MAX});
        let payload = Payload::from_value(&value).unwrap();
        let meta = json!({"offset": "o-1", "room": "r"});
        assert_eq!(
            serde_json::to_string(&(&payload,)).unwrap(),
            serde_json::to_string(&(&value,)).unwrap()
        );
        assert_eq!(
            serde_json::to_string(&(&payload, &meta)).unwrap(),
            serde_json::to_string(&(&value, &meta)).unwrap()
        );
        assert_eq!(
            rmp_serde::to_vec_named(&(&payload, &meta)).unwrap(),
            rmp_serde::to_vec_named(&(&value, &meta)).unwrap()
        );
        assert_eq!(
            payload.json(),
            r#"{"z":1,"a":[1.5,"é\n",null,{"k":true}],"big":18446744073709551615}"#
        );
        let borrowed = OffsetMeta {
            offset: "o-1",
            room: "r",
        };
        assert_eq!(
            serde_json::to_string(&(&payload, &borrowed)).unwrap(),
            serde_json::to_string(&(&value, &meta)).unwrap()
        );
        assert_eq!(
            rmp_serde::to_vec_named(&(&payload, &borrowed)).unwrap(),
            rmp_serde::to_vec_named(&(&value, &meta)).unwrap()
        );
        assert_eq!(Payload::from_json(payload.json().to_owned()), Some(payload));
        assert_eq!(Payload::from_json("{".into()), None);
    }

    /// From the app's text, compact or not, a payload is what its value gives.
    #[test]
    fn from_raw_is_the_compact_value() {
        let value = json!({"z": 1, "a": [1.5, "é \" \\ x\n\t", null, {"k ": true}], "s": "a  b", "big": u64::MAX});
        for text in [
            serde_json::to_string(&value).unwrap(),
            serde_json::to_string_pretty(&value).unwrap(),
            format!(" \r\n\t{}\n", serde_json::to_string_pretty(&value).unwrap()),
        ] {
            let raw = RawValue::from_string(text.clone()).unwrap();
            let payload = Payload::from_raw(&raw).unwrap();
            assert_eq!(
                payload,
                Payload::from_value(&value).unwrap(),
                "from {text:?}"
            );
        }
        assert_eq!(without_whitespace(r#"{"a":"b c"}"#), None);
    }

    proptest::proptest! {
        /// Any value, pretty-printed by serde_json, comes out as its compact text.
        #[test]
        fn from_raw_of_pretty_text(value in json_value()) {
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            let payload = Payload::from_raw(&RawValue::from_string(pretty).unwrap()).unwrap();
            proptest::prop_assert_eq!(payload.json(), serde_json::to_string(&value).unwrap());
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            ".*".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::vec((".*", inner), 0..6)
                    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }
}
