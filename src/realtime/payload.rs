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
}
