//! The fields of the objects `put` takes, with the kind of value each
//! holds, so that `sendctl server put --tls-verify false --port 2525`
//! sends `false` and `2525`, not strings the daemon would refuse.
//!
//! The tests below check the lists against the serde types: a field added
//! to `DeliveryServerSpec`, `UserGroup` or `User` without a line here
//! fails them, so the CLI cannot fall behind the objects.

/// What a flag's text becomes in the JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    /// A whole number (`--port 2525`).
    Integer,
    /// A decimal number (`--rate-per-second 2.5`).
    Number,
    /// `true` / `false` (also yes/no, on/off, 1/0).
    Bool,
    /// Comma-separated (`--marketing a,b`).
    List,
    /// A JSON value (`--timeouts '{"data": "2m"}'`).
    Json,
}

use FieldKind::{Bool, Integer, Json, List, Number, Text};

/// Server fields; `username` and `password` go into `auth`.
const SERVER: &[(&str, FieldKind)] = &[
    ("name", Text),
    ("host", Text),
    ("port", Integer),
    ("encryption", Text),
    ("timeout", Text),
    ("timeouts", Json),
    ("max_connections", Integer),
    ("max_messages_per_connection", Integer),
    ("username", Text),
    ("password", Text),
    ("tls_verify", Bool),
    ("rate_per_second", Number),
    ("rate_per_hour", Integer),
    ("rate_per_day", Integer),
    ("link_tracking_domain", Text),
    ("open_tracking_domain", Text),
    ("mail_from_domain", Text),
    ("enforced_from", Text),
    ("sender_info_as_mfrom", Bool),
    ("sender_info_as_from", Bool),
    ("enabled", Bool),
];

/// Group fields; `servers` sets the three channels at once.
const GROUP: &[(&str, FieldKind)] = &[
    ("name", Text),
    ("servers", List),
    ("marketing", List),
    ("transactional", List),
    ("autoresponder", List),
    ("daily_limit", Integer),
    ("monthly_limit", Integer),
    ("lifetime_limit", Integer),
    ("sender_domain_management", Bool),
    ("sender_domains_limit", Integer),
    ("default_sender_domain", Text),
    ("default_domain_limit", Integer),
    ("dns_template", Text),
    ("domain_settings", Json),
    ("text_header", Text),
    ("text_footer", Text),
    ("html_header", Text),
    ("html_footer", Text),
    ("x_mailer", Text),
    ("link_tracking", Bool),
    ("open_tracking", Bool),
];

const USER: &[(&str, FieldKind)] = &[
    ("name", Text),
    ("group", Text),
    ("password", Text),
    ("sender_name", Text),
    ("sender_email", Text),
];

/// The fields `cmd` (`server.put`, ...) takes as flags.
pub fn put_fields(cmd: &str) -> &'static [(&'static str, FieldKind)] {
    match cmd {
        "server.put" => SERVER,
        "group.put" => GROUP,
        "user.put" => USER,
        _ => &[],
    }
}

/// A flag's text as the JSON value of a field of `kind`; the error says
/// what was expected.
pub fn field_value(kind: FieldKind, text: &str) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    let expected = |what: &str| format!("`{text}` is not {what}");
    Ok(match kind {
        Text => Value::String(text.to_owned()),
        Integer => text
            .parse::<u64>()
            .map(Value::from)
            .map_err(|_| expected("a whole number"))?,
        Number => text
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .map(Value::from)
            .ok_or_else(|| expected("a number"))?,
        Bool => match text.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Value::Bool(true),
            "false" | "no" | "off" | "0" => Value::Bool(false),
            _ => return Err(expected("true or false")),
        },
        List => Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ),
        Json => serde_json::from_str(text).map_err(|e| format!("`{text}` is not JSON: {e}"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::{DeliveryServerSpec, User, UserGroup};
    use serde_json::{Map, Value, json};

    fn sample(kind: FieldKind) -> Value {
        match kind {
            Text => json!("x@example.com"),
            Integer => json!(3),
            Number => json!(2.5),
            Bool => json!(true),
            List => json!(["a"]),
            Json => json!({}),
        }
    }

    /// Every listed field with a sample of its kind, as `put` would send it.
    fn object(fields: &[(&str, FieldKind)], nested: &[&str]) -> Map<String, Value> {
        let mut object = Map::new();
        for (name, kind) in fields {
            if !nested.contains(name) {
                object.insert(name.to_string(), sample(*kind));
            }
        }
        object
    }

    /// The keys the type serializes (every field, `skip_serializing_if`
    /// ones too since the sample sets them).
    fn keys(value: Value) -> Vec<String> {
        value
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn assert_covers(fields: &[(&str, FieldKind)], serialized: Value, internal: &[&str]) {
        for key in keys(serialized) {
            let listed = fields.iter().any(|(f, _)| *f == key);
            assert!(
                listed || internal.contains(&key.as_str()),
                "field `{key}` has no flag"
            );
        }
    }

    #[test]
    fn server_fields_match_the_server_type() {
        let mut server = object(SERVER, &["username", "password"]);
        server.insert("auth".into(), json!({"username": "u", "password": "p"}));
        server.insert("timeouts".into(), json!({"data": "2m"}));
        server.insert("timeout".into(), json!("5s"));
        let spec: DeliveryServerSpec =
            serde_json::from_value(Value::Object(server)).expect("every kind fits");
        let serialized = serde_json::to_value(&spec).unwrap();
        assert_covers(SERVER, serialized, &["auth", "last_test"]);
    }

    #[test]
    fn group_fields_match_the_group_type() {
        let group = object(GROUP, &["servers"]);
        let group: UserGroup =
            serde_json::from_value(Value::Object(group)).expect("every kind fits");
        assert_covers(GROUP, serde_json::to_value(&group).unwrap(), &[]);
    }

    #[test]
    fn user_fields_match_the_user_type() {
        let user: User =
            serde_json::from_value(Value::Object(object(USER, &[]))).expect("every kind fits");
        assert_covers(
            USER,
            serde_json::to_value(&user).unwrap(),
            &["password_hash"],
        );
    }

    #[test]
    fn flag_text_becomes_typed_values() {
        assert_eq!(field_value(Bool, "false"), Ok(json!(false)));
        assert_eq!(field_value(Integer, "2525"), Ok(json!(2525)));
        assert_eq!(field_value(List, "a, b"), Ok(json!(["a", "b"])));
        assert!(
            field_value(Bool, "maybe")
                .unwrap_err()
                .contains("true or false")
        );
        assert!(field_value(Integer, "x").is_err());
    }
}
