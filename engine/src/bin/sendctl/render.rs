//! Human output: tables and `key: value` lines from the daemon's JSON.

use serde_json::Value;

pub fn render(cmd: &str, result: &Value) -> String {
    match cmd {
        "server.list" => servers(result),
        "group.list" => table(
            result,
            &[
                ("NAME", "/name"),
                ("MARKETING", "/marketing"),
                ("TRANSACTIONAL", "/transactional"),
                ("AUTORESPONDER", "/autoresponder"),
                ("DAILY_LIMIT", "/daily_limit"),
            ],
        ),
        "user.list" => table(
            result,
            &[
                ("NAME", "/name"),
                ("GROUP", "/group"),
                ("PASSWORD", "/password"),
                ("SENDER_EMAIL", "/sender_email"),
            ],
        ),
        "template.list" => table(result, &[("NAME", "/name"), ("RECORDS", "/records")]),
        "domain.list" => table(
            result,
            &[
                ("DOMAIN", "/domain"),
                ("OWNER", "/owner"),
                ("STATUS", "/status"),
                ("LAST_VERIFIED_MS", "/last_verified_ms"),
            ],
        ),
        "queue.list" => crate::queue::list(result),
        "queue.summary" => crate::queue::summary(result),
        "queue.inspect" => crate::queue::inspect(result),
        "suppression.list" => table(
            result,
            &[
                ("ADDRESS", "/address"),
                ("REASON", "/reason"),
                ("TIME", "/time"),
                ("SOURCE", "/source"),
            ],
        ),
        "user.api_key.list" => table(result, &[("ID", "/id"), ("CREATED", "/created")]),
        "user.usage" => table(
            &result["quotas"],
            &[
                ("QUOTA", "/quota"),
                ("LIMIT", "/limit"),
                ("USED", "/used"),
                ("LEASED", "/leased"),
                ("LEFT", "/left"),
                ("RESETS", "/resets"),
                ("FREES", "/frees"),
            ],
        ),
        "domain.records" => lines(&result["zone"]),
        "server.test" => server_test(result),
        "status" => status(result),
        "report" => crate::report::day(result),
        "fleet.status" => crate::fleet::status(result),
        cmd if cmd.starts_with("fleet.queue.") => crate::fleet::action(result),
        _ => key_values(result, ""),
    }
}

pub fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Array(items)) => items.len().to_string(),
        Some(other) => other.to_string(),
    }
}

pub fn table(rows: &Value, columns: &[(&str, &str)]) -> String {
    let rows = rows.as_array().map(Vec::as_slice).unwrap_or_default();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|(_, p)| cell(r.pointer(p))).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            cells
                .iter()
                .map(|r| r[i].len())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |values: Vec<&str>| {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(columns.iter().map(|(h, _)| *h).collect());
    for row in &cells {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn lines(value: &Value) -> String {
    value
        .as_array()
        .map(|l| l.iter().map(|v| format!("{}\n", cell(Some(v)))).collect())
        .unwrap_or_default()
}

/// Nested objects as `path: value` lines.
pub fn key_values(value: &Value, prefix: &str) -> String {
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    Value::Object(_) => key_values(v, &path),
                    Value::Array(items) if items.iter().any(Value::is_object) => items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| key_values(item, &format!("{path}[{i}]")))
                        .collect(),
                    _ => format!("{path}: {}\n", cell(Some(v))),
                }
            })
            .collect(),
        Value::Array(items) => items.iter().map(|i| key_values(i, prefix)).collect(),
        other => format!("{}\n", cell(Some(other))),
    }
}

/// Delivery servers with the groups and channels that use each (Octeth's
/// M / T / AR badges), or "not allocated".
fn servers(result: &Value) -> String {
    let rows: Vec<Value> = result
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|server| {
            let mut row = server.clone();
            row["allocation"] = Value::String(allocation(&server["allocation"]));
            row
        })
        .collect();
    table(
        &Value::Array(rows),
        &[
            ("NAME", "/name"),
            ("HOST", "/host"),
            ("PORT", "/port"),
            ("ENCRYPTION", "/encryption"),
            ("ENABLED", "/enabled"),
            ("LAST_TEST", "/last_test/ok"),
            ("USED_BY", "/allocation"),
        ],
    )
}

/// `{"g": ["marketing", "transactional"]}` as `g(M,T)`.
fn allocation(groups: &Value) -> String {
    fn badge(channel: &str) -> &str {
        match channel {
            "marketing" => "M",
            "transactional" => "T",
            "autoresponder" => "AR",
            other => other,
        }
    }
    let used: Vec<String> = groups
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(group, channels)| {
                    let badges: Vec<&str> = channels
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                        .iter()
                        .filter_map(Value::as_str)
                        .map(badge)
                        .collect();
                    format!("{group}({})", badges.join(","))
                })
                .collect()
        })
        .unwrap_or_default();
    match used.is_empty() {
        true => "not allocated".into(),
        false => used.join(" "),
    }
}

fn server_test(result: &Value) -> String {
    let mut out = table(
        &result["steps"],
        &[
            ("STEP", "/step"),
            ("OK", "/ok"),
            ("MS", "/millis"),
            ("REPLY", "/reply"),
        ],
    );
    match result["failed_step"].as_str() {
        Some(step) => out.push_str(&format!("FAILED at {step}\n")),
        None => out.push_str("OK: every step passed\n"),
    }
    out
}

fn status(result: &Value) -> String {
    let mut out = String::new();
    for key in [
        "version",
        "hostname",
        "uptime_seconds",
        "listeners",
        "spool_bytes",
        "memory_rss_bytes",
    ] {
        out.push_str(&format!("{key}: {}\n", cell(result.get(key))));
    }
    out.push_str(&key_values(&result["queue"], "queue"));
    out.push('\n');
    out.push_str(&key_values(&result["threads"], "threads"));
    out.push('\n');
    out.push_str(&table(
        &result["routes"],
        &[
            ("ROUTE", "/name"),
            ("CONNECTIONS", "/connections"),
            ("MAX", "/max_connections"),
            ("READY", "/ready"),
            ("IN_FLIGHT", "/in_flight"),
            ("DELIVERED_1M", "/delivered_last_minute"),
            ("AVAILABLE", "/available"),
        ],
    ));
    let campaigns = &result["active_campaigns"];
    if campaigns.as_array().is_some_and(|c| !c.is_empty()) {
        out.push('\n');
        out.push_str(&table(
            campaigns,
            &[
                ("CAMPAIGN", "/campaign"),
                ("IN_FLIGHT", "/in_flight"),
                ("READY", "/ready"),
            ],
        ));
    }
    out
}
