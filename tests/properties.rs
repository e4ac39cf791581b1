//! Property tests of the two parsers that read untrusted or hand-written input: the publish
//! API's messages and the configuration. Whatever they are given, they answer — a value or
//! an error that names a field — and never panic.

use proptest::prelude::*;
use serde_json::{Value, json};
use sockgate::config::{Config, Overrides};
use sockgate::publish::{parse_batch, parse_publish};
use sockgate::realtime::Target;

/// Arbitrary JSON, biased towards the shapes the parser cares about.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        Just(json!("notification")),
        Just(json!("connect")),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        let keys = prop_oneof![
            Just("userId".to_string()),
            Just("userIds".to_string()),
            Just("room".to_string()),
            Just("broadcast".to_string()),
            Just("event".to_string()),
            Just("data".to_string()),
            Just("messages".to_string()),
            "[a-z]{1,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn publish_parsing_never_panics_and_names_a_field(value in json_value()) {
        match parse_publish(&value, "") {
            Ok(msg) => {
                prop_assert!(!msg.event.is_empty());
                let target_fields = ["userId", "userIds", "room", "broadcast"];
                let given = target_fields.iter().filter(|f| value.get(**f).is_some()).count();
                prop_assert_eq!(given, 1, "exactly one target was given");
            }
            Err(e) => prop_assert!(!e.field.is_empty() && !e.reason.is_empty()),
        }
        if let Err(e) = parse_batch(&value, 10) {
            prop_assert!(e.field.starts_with("messages"), "{}", e.field);
        }
    }

    #[test]
    fn a_valid_message_keeps_its_target_event_and_data(
        id in "[a-zA-Z0-9_-]{1,20}",
        event in "[a-z:_]{1,20}",
        data in json_value(),
    ) {
        prop_assume!(!["connect", "disconnect", "disconnecting", "connect_error"].contains(&event.as_str()));
        let msg = json!({"userId": id, "event": event, "data": data});
        let parsed = parse_publish(&msg, "").expect("valid");
        prop_assert_eq!(parsed.target, Target::User(id));
        prop_assert_eq!(parsed.event, event);
        // Kept as the text serde_json writes for it: what every frame carried when the value
        // was encoded for each socket.
        prop_assert_eq!(parsed.data.json(), data.to_string());
    }

    #[test]
    fn a_batch_error_points_at_the_first_bad_message(good in 0usize..8, bad in json_value()) {
        prop_assume!(parse_publish(&bad, "").is_err());
        let mut messages: Vec<Value> = (0..good).map(|i| json!({"userId": i})).collect();
        messages.push(bad);
        let err = parse_batch(&json!({"messages": messages}), 100).expect_err("rejected");
        let expected = format!("messages[{good}]");
        prop_assert!(err.field.starts_with(&expected), "{} vs {}", err.field, expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any file content: a configuration, or an error naming a key and the file.
    #[test]
    fn config_files_load_or_explain(text in config_text()) {
        let dir = std::env::temp_dir().join(format!("sockgate-prop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("sidecar.toml");
        std::fs::write(&file, &text).expect("write");
        let loaded = Config::load(Some(&file), &Overrides::default());
        // Each case cleans up after itself: nothing is left in the temp dir after the run.
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
        match loaded {
            Ok(config) => prop_assert!(config.upstream.url.starts_with("http://")),
            Err(e) => {
                prop_assert!(!e.key.is_empty());
                prop_assert!(!e.reason.is_empty());
                let line = e.to_string();
                prop_assert!(line.contains(&e.key) && !line.contains('\n'), "{line}");
            }
        }
    }
}

/// TOML-ish text: real sections and keys with values of any type, plus noise.
fn config_text() -> impl Strategy<Value = String> {
    let section = prop_oneof![
        Just("server"),
        Just("upstream"),
        Just("realtime"),
        Just("auth"),
        Just("publish"),
        Just("cluster"),
        Just("history"),
        Just("log"),
        Just("nope"),
    ];
    let key = prop_oneof![
        Just("port"),
        Just("url"),
        Just("path"),
        Just("transports"),
        Just("socket_mode"),
        Just("redis_url"),
        Just("max_messages"),
        Just("format"),
        Just("filter"),
        Just("session_path"),
        Just("max_concurrent"),
        Just("typo"),
    ];
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        "\"[ -~]{0,16}\"".prop_map(|s| s.replace('\\', "")),
        Just("[\"polling\"]".to_string()),
        Just("[]".to_string()),
        Just("true".to_string()),
        Just("\"http://127.0.0.1:1\"".to_string()),
        "[ -~]{0,8}",
    ];
    prop::collection::vec((section, key, value), 0..6).prop_map(|entries| {
        entries
            .into_iter()
            .map(|(s, k, v)| format!("[{s}]\n{k} = {v}\n"))
            .collect()
    })
}
