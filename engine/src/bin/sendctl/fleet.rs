//! Human output of `sendctl fleet ...`: the nodes and campaigns of
//! `fleet status`, and each node's answer to a fleet queue action.

use serde_json::Value;

use crate::render::{cell, table};

pub fn status(result: &Value) -> String {
    let mut out = table(
        &result["nodes"],
        &[
            ("NODE", "/name"),
            ("STATE", "/state"),
            ("VERSION", "/version"),
            ("UP_SINCE", "/up_since"),
            ("LAST_SEEN_S", "/last_seen_age_seconds"),
            ("QUEUE", "/queue_size"),
            ("DELIVERED_1M", "/delivery_rate_per_minute"),
            ("CONNECTIONS", "/connections"),
            ("HOST", "/host"),
        ],
    );
    let campaigns: Vec<Value> = result["campaigns"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let per_node = c["nodes"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(node, n)| format!("{node}={}", cell(Some(n))))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let mut row = c.clone();
            row["per_node"] = Value::String(per_node);
            row
        })
        .collect();
    out.push('\n');
    if campaigns.is_empty() {
        out.push_str("no campaign has mail in flight or ready on a live node\n");
    } else {
        out.push_str(&table(
            &Value::Array(campaigns),
            &[
                ("CAMPAIGN", "/campaign"),
                ("TENANT", "/tenant"),
                ("TOTAL", "/total"),
                ("PER_NODE", "/per_node"),
            ],
        ));
    }
    out
}

pub fn action(result: &Value) -> String {
    let mut out = table(
        &result["nodes"],
        &[
            ("NODE", "/node"),
            ("DONE", "/done"),
            ("MATCHED", "/matched"),
            ("CHANGED", "/changed"),
            ("IN_FLIGHT_SKIPPED", "/in_flight_skipped"),
            ("ERROR", "/error"),
        ],
    );
    let nodes = result["nodes"].as_array().map_or(0, Vec::len);
    let done = result["nodes"]
        .as_array()
        .map_or(0, |n| n.iter().filter(|r| r["done"] == true).count());
    out.push_str(&format!(
        "fleet action {} ({} {}): ",
        cell(result.get("id")),
        cell(result.get("action")),
        result["selector"]
    ));
    if result["complete"] == true {
        out.push_str(&format!("applied by all {nodes} nodes\n"));
    } else {
        out.push_str(&format!(
            "{done} of {nodes} nodes answered within {}s; the others apply it when they can\n",
            cell(result.get("wait_seconds"))
        ));
    }
    out
}
