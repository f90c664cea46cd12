//! `sendctl report`: the daily report as sections a person reads (the
//! day's totals, then the busiest tenants, senders, recipient domains,
//! bounce reasons, delivery servers and campaigns). `--json` prints the
//! daemon's answer instead, every key included.

use serde_json::{Value, json};

use crate::render::table;

/// Rows shown per section; `--json` has them all.
const SHOWN: usize = 10;

pub fn day(result: &Value) -> String {
    let date = result["date"].as_str().unwrap_or("?");
    let whose = match result["tenant"].as_str() {
        Some(t) => format!("tenant {t}"),
        None => "all tenants".to_owned(),
    };
    if result["empty"] == Value::Bool(true) {
        return format!(
            "No activity recorded on {date} (UTC) for {whose} on this node.\n\
             (Counters are kept {} days; a report covers this node only.)\n",
            result["retained_days"]
        );
    }
    let mut out = format!("Report for {date} (UTC), {whose}, this node\n\n");
    out.push_str(&totals(&result["totals"]));
    if result["tenant"].is_null() {
        out.push_str(&section("Tenants", &list(&result["tenants"]), "TENANT"));
    }
    for (title, key, first) in [
        ("Top senders", "senders", "SENDER"),
        ("Top recipient domains", "recipient_domains", "DOMAIN"),
        ("Top bounce reasons", "bounce_reasons", "REASON"),
        ("Delivery servers", "routes", "SERVER"),
        ("Campaigns", "campaigns", "CAMPAIGN"),
    ] {
        out.push_str(&section(title, &with_other(&result[key]), first));
    }
    out
}

fn totals(c: &Value) -> String {
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    let lines = [
        (
            "Received",
            format!(
                "{} recipients in {} messages ({} in)",
                n("received"),
                n("messages"),
                bytes(n("bytes_in"))
            ),
        ),
        (
            "Delivered",
            format!("{} ({} out)", n("delivered"), bytes(n("bytes_out"))),
        ),
        ("Deferred", format!("{} deferrals", n("deferred"))),
        (
            "Bounced",
            format!(
                "{} (hard {}, soft {})",
                n("bounced"),
                n("bounced_hard"),
                n("bounced_soft")
            ),
        ),
        ("Expired", n("expired").to_string()),
        (
            "Suppressed",
            format!("{} (dropped at admission)", n("suppressed")),
        ),
        ("Complaints", n("complaints").to_string()),
        ("Clicks", n("clicks").to_string()),
        ("Opens", n("opens").to_string()),
    ];
    lines
        .iter()
        .map(|(label, value)| format!("{label:<12}{value}\n"))
        .collect()
}

fn list(rows: &Value) -> Vec<Value> {
    rows.as_array().cloned().unwrap_or_default()
}

/// A table's top rows and, when some keys did not fit, its "other" row.
fn with_other(t: &Value) -> Vec<Value> {
    let mut rows = list(&t["top"]);
    if let Value::Object(other) = &t["other"] {
        let mut row = Value::Object(other.clone());
        row["name"] = json!(format!("(other: beyond {} keys)", t["max_keys"]));
        rows.push(row);
    }
    rows
}

fn section(title: &str, rows: &[Value], first: &str) -> String {
    if rows.is_empty() {
        return format!("\n{title}: none\n");
    }
    let shown: Vec<Value> = rows.iter().take(SHOWN).cloned().collect();
    let mut out = format!("\n{title}\n");
    out.push_str(&table(
        &Value::Array(shown),
        &[
            (first, "/name"),
            ("RECEIVED", "/received"),
            ("DELIVERED", "/delivered"),
            ("DEFERRED", "/deferred"),
            ("HARD", "/bounced_hard"),
            ("SOFT", "/bounced_soft"),
            ("EXPIRED", "/expired"),
            ("SUPPRESSED", "/suppressed"),
            ("COMPLAINTS", "/complaints"),
        ],
    ));
    if rows.len() > SHOWN {
        out.push_str(&format!(
            "({} more; --json shows all)\n",
            rows.len() - SHOWN
        ));
    }
    out
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {} ({n} bytes)", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_have_names_and_counts() {
        let result = json!({
            "date": "2026-12-06", "tenant": null, "empty": false, "retained_days": 90,
            "totals": {"received": 3, "messages": 2, "delivered": 2, "bounced": 1,
                       "bounced_hard": 1, "bytes_in": 2048, "bytes_out": 100},
            "tenants": [{"name": "alice", "received": 3}],
            "senders": {"top": [{"name": "app@example.com", "received": 3}], "other": null, "max_keys": 50},
            "recipient_domains": {"top": [], "other": {"received": 7}, "max_keys": 50},
            "bounce_reasons": {"top": [], "other": null, "max_keys": 50},
            "routes": {"top": [], "other": null, "max_keys": 50},
            "campaigns": {"top": [], "other": null, "max_keys": 50},
        });
        let text = day(&result);
        assert!(
            text.starts_with("Report for 2026-12-06 (UTC), all tenants, this node"),
            "{text}"
        );
        assert!(
            text.contains("Received    3 recipients in 2 messages (2.0 KiB (2048 bytes) in)"),
            "{text}"
        );
        assert!(text.contains("Bounced     1 (hard 1, soft 0)"), "{text}");
        assert!(text.contains("\nTop senders\nSENDER"), "{text}");
        assert!(text.contains("app@example.com  3"), "{text}");
        assert!(text.contains("(other: beyond 50 keys)  7"), "{text}");
        assert!(text.contains("\nCampaigns: none\n"), "{text}");
    }

    #[test]
    fn an_empty_day_says_so() {
        let result =
            json!({"date": "2026-12-05", "tenant": "bob", "empty": true, "retained_days": 90});
        let text = day(&result);
        assert!(
            text.starts_with(
                "No activity recorded on 2026-12-05 (UTC) for tenant bob on this node."
            ),
            "{text}"
        );
    }
}
