//! A kept message's entry as it travels between instances on the relay channel
//! ([`super::relay`]): a header (one JSON object: the publishing instance first, the room, the
//! event, whether to deliver it, and the entry's place the append script adds), a newline, the
//! data; several entries of one append call in one message, each header giving its data's
//! length. An instance tells its own messages coming back by their first bytes
//! ([`echo_prefix`]), before parsing them: every entry of a message is one instance's.

use std::borrow::Cow;
use std::fmt::Write;
use std::sync::Arc;

use bytes::BytesMut;

use super::history::Appended;
use super::payload::Payload;

/// What an instance tells the others about an entry (the header before the data). Its texts
/// borrow from the message where they need no unescaping: each is copied once, into the entry.
#[derive(serde::Deserialize)]
struct Header<'a> {
    /// The publishing instance.
    #[serde(borrow)]
    o: Cow<'a, str>,
    /// The room.
    #[serde(borrow)]
    r: Cow<'a, str>,
    /// The event.
    #[serde(borrow)]
    e: Cow<'a, str>,
    /// Deliver it (else: it went through the adapter, only its place is news).
    l: bool,
    #[serde(borrow)]
    g: Cow<'a, str>,
    #[serde(borrow)]
    i: Cow<'a, str>,
    #[serde(borrow)]
    p: Cow<'a, str>,
    /// The data's length in bytes, when more entries may follow it in the message.
    n: Option<usize>,
    /// The entry's number among the entries its instance relayed (from 1): how far another
    /// instance has read them ([`super::backpressure`]). None from an older sockgate.
    s: Option<u64>,
}

/// An entry as relayed: where it was kept, and what it carries.
pub struct Relayed {
    pub room: String,
    pub kept: Appended,
    pub event: Arc<str>,
    pub data: Payload,
    pub deliver: bool,
    /// Its number among its instance's relayed entries (none from an older sockgate).
    pub seq: Option<u64>,
}

impl Relayed {
    pub fn new(room: String, kept: Appended, event: &str, data: &Payload) -> Self {
        Relayed {
            room,
            kept,
            event: event.into(),
            data: data.clone(),
            deliver: true,
            seq: None,
        }
    }

    /// Reads a message from [`super::relay::CHANNEL`]: its entries, in order, each with the instance that
    /// published it; `None` if it is not one sockgate wrote (then none of it is delivered).
    pub fn parse(bytes: &[u8]) -> Option<Vec<(Cow<'_, str>, Relayed)>> {
        let mut rest = std::str::from_utf8(bytes).ok()?;
        let mut entries = Vec::new();
        while !rest.is_empty() {
            let (header, after) = rest.split_once('\n')?;
            let h: Header<'_> = serde_json::from_str(header).ok()?;
            // Without a length (an older sockgate's), the data is the rest of the message.
            let (data, next) = match h.n {
                Some(n) => (after.get(..n)?, after.get(n..)?),
                None => (after, ""),
            };
            rest = next;
            let data = Payload::from_json(data.to_owned())?;
            entries.push((
                h.o,
                Relayed {
                    room: h.r.into_owned(),
                    kept: Appended {
                        epoch: h.g.into_owned(),
                        id: h.i.into_owned(),
                        prev: h.p.into_owned(),
                    },
                    event: Arc::from(&*h.e),
                    data,
                    deliver: h.l,
                    seq: h.s,
                },
            ));
        }
        Some(entries)
    }
}

/// Writes the start of an entry's relay header from its event and number,
/// `{"o":…,"r":…,"e":…,"l":…,"s":…`, the origin first ([`echo_prefix`]), straight into the
/// append call's text (no JSON tree, no `String` per message); the append script completes the
/// object with the entry's place. An older sockgate ignores `s`.
pub fn header_maker(
    echo_prefix: &str,
    room: &str,
    deliver: bool,
) -> impl Fn(&str, u64, &mut BytesMut) + Sync {
    let mut start = echo_prefix.to_owned();
    start.push_str("\"r\":");
    push_json_str(&mut start, room);
    start.push_str(",\"e\":");
    let end = if deliver {
        ",\"l\":true,\"s\":"
    } else {
        ",\"l\":false,\"s\":"
    };
    move |event: &str, seq: u64, out: &mut BytesMut| {
        out.reserve(start.len() + event.len() + 2 + end.len() + 20);
        out.extend_from_slice(start.as_bytes());
        push_json_str(out, event);
        out.extend_from_slice(end.as_bytes());
        // Infallible on a BytesMut.
        let _ = write!(out, "{seq}");
    }
}

/// `{"o":<origin>,`: how a relay header written by `origin` starts.
pub fn echo_prefix(origin: &str) -> String {
    let mut prefix = String::from("{\"o\":");
    push_json_str(&mut prefix, origin);
    prefix.push(',');
    prefix
}

/// Appends `text` as a JSON string, as serde_json writes it.
fn push_json_str(out: &mut impl Write, text: &str) {
    let plain = text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    // Infallible on a String or a BytesMut.
    let _ = if plain {
        write!(out, "\"{text}\"")
    } else {
        out.write_str(&serde_json::Value::from(text).to_string())
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_append_script_writes() {
        let header = |room: &str| {
            let header =
                serde_json::json!({ "o": "me", "r": room, "e": "note", "l": true }).to_string();
            header.strip_suffix('}').unwrap_or(&header).to_owned()
        };
        // As the script completes it, one entry per message (an older sockgate's, no length).
        let data = r#"{"text":"a\nb"}"#;
        let room = "user:a\n\"b";
        let message = format!(
            "{},\"g\":\"0f\",\"i\":\"5-1\",\"p\":\"4-0\"}}\n{data}",
            header(room)
        );
        let entries = Relayed::parse(message.as_bytes()).expect("parses");
        let [(origin, entry)] = &entries[..] else {
            panic!("one entry")
        };
        assert_eq!(origin, "me");
        assert_eq!(entry.room, room);
        assert_eq!(entry.kept.offset(), "0f:5-1");
        assert_eq!(entry.kept.prev, "4-0");
        assert_eq!(entry.data.json(), r#"{"text":"a\nb"}"#);
        assert!(Relayed::parse(b"garbage").is_none());
        // Several in one message, each with its data's length; the data may hold newlines.
        let raw = "{\n\"é\": 1}";
        let entry = |id: &str, prev: &str, data: &str| {
            format!(
                "{},\"g\":\"0f\",\"i\":\"{id}\",\"p\":\"{prev}\",\"n\":{}}}\n{data}",
                header("user:b"),
                data.len()
            )
        };
        let message = entry("5-1", "4-0", raw) + &entry("5-2", "5-1", "2");
        let entries = Relayed::parse(message.as_bytes()).expect("parses");
        let ids: Vec<_> = entries.iter().map(|(_, e)| e.kept.id.as_str()).collect();
        assert_eq!(ids, ["5-1", "5-2"]);
        assert_eq!(entries[0].1.data.json(), raw);
        assert_eq!(entries[1].1.data.json(), "2");
        // A message cut short is not read at all: none of its entries is delivered.
        assert!(Relayed::parse(&message.as_bytes()[..message.len() - 1]).is_none());
    }

    /// A header as [`header_maker`] writes it (number 7), after other text.
    fn header(origin: &str, room: &str, deliver: bool, event: &str) -> String {
        let mut out = BytesMut::from(&b"before"[..]);
        header_maker(&echo_prefix(origin), room, deliver)(event, 7, &mut out);
        String::from_utf8(out[6..].to_vec()).expect("utf-8")
    }

    /// The header is what the `json!` tree it replaces wrote (keys in this order), and an
    /// instance's own messages, and only those, start with its echo prefix.
    #[test]
    fn headers_are_written_as_json_and_own_echoes_are_told_by_their_start() {
        let cases = [
            ("me", "user:a", "note", true),
            ("me\"\\", "user:a\n\"b\u{1}é", "ev\t\u{7f}", false),
            ("", "", "", true),
        ];
        for (origin, room, event, deliver) in cases {
            let tree =
                serde_json::json!({ "o": origin, "r": room, "e": event, "l": deliver, "s": 7 });
            let tree = tree.to_string();
            let made = header(origin, room, deliver, event);
            assert_eq!(made, tree.strip_suffix('}').unwrap_or(&tree));
            let message = format!("{made},\"g\":\"0f\",\"i\":\"1-0\",\"p\":\"\",\"n\":1}}\n1");
            let entries = Relayed::parse(message.as_bytes()).expect("parses");
            assert_eq!(entries[0].0, origin);
            assert_eq!(entries[0].1.seq, Some(7));
            assert!(message.starts_with(&echo_prefix(origin)));
        }
        let mine = header("a", "user:a", true, "e");
        assert!(!mine.starts_with(&echo_prefix("ab")));
        assert!(!header("ab", "r", true, "e").starts_with(&echo_prefix("a")));
    }
}
