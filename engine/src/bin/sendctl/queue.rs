//! Human output of `sendctl queue summary|list|inspect`: what `mailq`
//! shows (each recipient's last reply and next attempt), the summary's
//! counts by name, and a departed message's history.

use serde_json::Value;

use crate::render::{cell, key_values, table};

const RECIPIENT_COLUMNS: &[(&str, &str)] = &[
    ("RCPT", "/rcpt"),
    ("RECIPIENT", "/recipient"),
    ("STATUS", "/status"),
    ("ATTEMPTS", "/attempts"),
    ("NEXT_ATTEMPT", "/next_attempt"),
    ("LAST_REPLY", "/last_reply"),
];

pub fn list(result: &Value) -> String {
    table(
        result,
        &[
            ("ID", "/id"),
            ("RCPT", "/rcpt"),
            ("RECIPIENT", "/recipient"),
            ("STATUS", "/status"),
            ("ATTEMPTS", "/attempts"),
            ("NEXT_ATTEMPT", "/next_attempt"),
            ("TENANT", "/tenant"),
            ("CAMPAIGN", "/campaign"),
            ("ROUTE", "/route"),
            ("AGE_S", "/age_seconds"),
            ("LAST_REPLY", "/last_reply"),
        ],
    )
}

/// Totals, then one table of names and counts per dimension.
pub fn summary(result: &Value) -> String {
    let mut out = format!(
        "recipients: {}\noldest_age_seconds: {}\n",
        cell(result.get("recipients")),
        cell(result.get("oldest_age_seconds"))
    );
    let by_status: Vec<Value> = result["by_status"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| Value::Array(vec![Value::String(k.clone()), v.clone()]))
                .collect()
        })
        .unwrap_or_default();
    let dimensions = [
        ("STATUS", Value::Array(by_status)),
        ("ROUTE", result["by_route"].clone()),
        ("DOMAIN", result["by_domain"].clone()),
        ("TENANT", result["by_tenant"].clone()),
        ("CAMPAIGN", result["by_campaign"].clone()),
    ];
    for (name, pairs) in dimensions {
        if pairs.as_array().is_none_or(Vec::is_empty) {
            continue;
        }
        out.push('\n');
        // A pair [name, count]; an empty name (no campaign) shows as "-".
        let rows: Vec<Value> = pairs
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|pair| match pair[0].as_str() {
                Some("") => serde_json::json!(["-", pair[1]]),
                _ => pair.clone(),
            })
            .collect();
        out.push_str(&table(
            &Value::Array(rows),
            &[(name, "/0"), ("RECIPIENTS", "/1")],
        ));
    }
    out
}

/// The message's fields, its recipients, its headers; or, once it has
/// left the queue, what happened to it.
pub fn inspect(result: &Value) -> String {
    let mut fields = result.clone();
    let mut out = String::new();
    if let Some(map) = fields.as_object_mut() {
        for key in ["headers", "recipients", "history"] {
            map.remove(key);
        }
    }
    out.push_str(&key_values(&fields, ""));
    if let Some(recipients) = result["recipients"].as_array().filter(|r| !r.is_empty()) {
        out.push('\n');
        out.push_str(&table(&Value::Array(recipients.clone()), RECIPIENT_COLUMNS));
    }
    if let Some(history) = result["history"].as_array() {
        out.push('\n');
        if history.is_empty() {
            out.push_str("no event of this message is in the delivered index or the event log\n");
        } else {
            out.push_str(&table(
                &Value::Array(history.clone()),
                &[
                    ("TIME", "/time"),
                    ("EVENT", "/type"),
                    ("RECIPIENT", "/recipient"),
                    ("ROUTE", "/route"),
                    ("REPLY", "/reply"),
                ],
            ));
        }
    }
    if let Some(headers) = result["headers"].as_str() {
        out.push('\n');
        out.push_str(headers.trim_end());
        out.push('\n');
    }
    out
}
