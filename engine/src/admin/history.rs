//! `queue inspect` of a message that has left the queue: what happened to
//! it, from the event log (every attempt, with its reply) and the
//! delivered index (each finished recipient, kept for the bounce window
//! even when no event log is configured).
//!
//! The event log is read as it is on disk: the current file only (rotated
//! files are not searched), line by line, a line parsed only when it
//! names the message; at most `MAX_HISTORY_EVENTS` events are kept (the
//! latest). An operator command, not a hot path: it costs one pass over
//! the file.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use sendengine_queue::format_id;
use serde_json::{Value, json};

use super::protocol::AdminError;
use crate::engine::Engine;
use crate::timefmt::rfc3339;

/// Events of one message kept for its history.
const MAX_HISTORY_EVENTS: usize = 1000;
/// Longer event lines are skipped (the writer's lines are far shorter).
const MAX_EVENT_LINE_BYTES: u64 = 64 * 1024;
/// Event types that end a recipient's stay in the queue.
const FINAL_EVENTS: &[&str] = &["delivery", "bounce", "expiration"];

/// The history of message `id`, which is not in the queue; not found
/// when neither the event log nor the delivered index knows it.
pub fn departed(engine: &Engine, id: u64) -> Result<Value, AdminError> {
    let shown = format_id(id);
    let mut history = match &engine.events_path {
        Some(path) => events_of(path, &shown)?,
        None => Vec::new(),
    };
    let finished: HashSet<String> = history
        .iter()
        .filter(|e| FINAL_EVENTS.iter().any(|f| e["type"] == *f))
        .filter_map(|e| e["recipient"].as_str().map(str::to_owned))
        .collect();
    let indexed = engine
        .spool
        .delivered_rows(id)
        .map_err(|e| AdminError::internal(format!("reading the delivered index: {e}")))?;
    // The index says only "finished": shown where the log has no final event.
    history.extend(
        indexed
            .iter()
            .filter(|row| !finished.contains(&row.recipient))
            .map(|row| {
                json!({
                    "time": rfc3339(row.time_ms),
                    "type": "finished (delivered index)",
                    "recipient": row.recipient,
                    "route": row.route,
                    "reply": null,
                })
            }),
    );
    if history.is_empty() {
        return Err(AdminError::not_found(format!(
            "no message {shown} is queued, and neither the event log nor the delivered \
             index knows it"
        )));
    }
    history.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
    let first = indexed.first();
    Ok(json!({
        "id": shown,
        "in_queue": false,
        "tenant": first.map(|r| r.tenant.clone()),
        "campaign": first.map(|r| r.campaign.clone()),
        "header_message_id": first.map(|r| r.header_message_id.clone()),
        "history": history,
    }))
}

/// The events of message `shown` in the current event file, trimmed to
/// what the history shows.
fn events_of(path: &Path, shown: &str) -> Result<Vec<Value>, AdminError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(AdminError::internal(format!(
                "reading the event log {}: {e}",
                path.display()
            )));
        }
    };
    let needle = format!("\"message_id\":\"{shown}\"");
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut found = std::collections::VecDeque::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_EVENT_LINE_BYTES)
            .read_until(b'\n', &mut line)
            .map_err(|e| AdminError::internal(format!("reading the event log: {e}")))?;
        if read == 0 {
            break;
        }
        if line.last() != Some(&b'\n') && read as u64 == MAX_EVENT_LINE_BYTES {
            // Too long to be ours: skip the rest of it.
            let _ = reader.read_until(b'\n', &mut Vec::new());
            continue;
        }
        if memchr::memmem::find(&line, needle.as_bytes()).is_none() {
            continue;
        }
        let Ok(event) = serde_json::from_slice::<Value>(&line) else {
            continue;
        };
        if found.len() == MAX_HISTORY_EVENTS {
            found.pop_front();
        }
        found.push_back(json!({
            "time": event["time"],
            "type": event["type"],
            "recipient": event["recipient"],
            "route": event["route"],
            "reply": reply_text(&event["reply"]),
        }));
    }
    Ok(found.into())
}

/// `451 4.7.1 text` from an event's reply object.
fn reply_text(reply: &Value) -> Value {
    let Some(code) = reply["code"].as_u64() else {
        return Value::Null;
    };
    let text = reply["text"].as_str().unwrap_or_default();
    Value::String(match reply["enhanced"].as_str() {
        Some(enhanced) => format!("{code} {enhanced} {text}"),
        None => format!("{code} {text}"),
    })
}
