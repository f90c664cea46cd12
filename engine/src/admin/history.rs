//! `queue inspect` of a message that has left the queue: what happened to
//! it, from the event log (every attempt, with its reply) and the
//! delivered index (each finished recipient, kept for the bounce window
//! even when no event log is configured).
//!
//! The event log is read as `sendctl log --message ID` reads it: newest
//! first across the rotated files, a line parsed only when it holds the
//! id, back to the time in the message's id (no event of it is older),
//! so the files rotated before it was queued are not opened. Bounds: at
//! most `MAX_HISTORY_EVENTS` events are kept (the latest) and at most
//! `MAX_HISTORY_SCAN_BYTES` of the log are looked at; a history cut short
//! by the second says so (`history_complete: false`). An operator
//! command, run off the async workers and counted among `sendctl log`'s
//! readers (`log::read_permit`).

use std::collections::HashSet;
use std::path::Path;

use sendengine_queue::{format_id, id_timestamp_ms};
use serde_json::{Value, json};

use super::protocol::AdminError;
use crate::engine::Engine;
use crate::events::filter::{FilterSpec, LogFilter};
use crate::events::reader::{Query, read_backward};
use crate::timefmt::rfc3339;

/// Events of one message kept for its history.
const MAX_HISTORY_EVENTS: usize = 1000;
/// Bytes of the event log one history looks at, at most: four of
/// `sendctl log`'s requests, about two seconds from the page cache.
const MAX_HISTORY_SCAN_BYTES: u64 = 1 << 30;
/// How much older than its id's time a message's first event may be: an
/// id is never below the clock at acceptance, but after the clock was set
/// back ids go on from where they were, ahead of the events' times.
const ID_CLOCK_SLACK_MS: u64 = 60 * 60 * 1000;
/// Event types that end a recipient's stay in the queue.
const FINAL_EVENTS: &[&str] = &["delivery", "bounce", "expiration"];

/// The history of message `id`, which is not in the queue; not found
/// when neither the event log nor the delivered index knows it.
pub fn departed(engine: &Engine, id: u64) -> Result<Value, AdminError> {
    let shown = format_id(id);
    let (mut history, complete) = match &engine.events_path {
        Some(path) => events_of(path, id)?,
        None => (Vec::new(), true),
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
        "history_complete": complete,
        "history": history,
    }))
}

/// The latest events of message `id` in the event log and its rotated
/// files, trimmed to what the history shows, oldest first; and whether
/// they are all of them (false when a bound cut the history short).
fn events_of(path: &Path, id: u64) -> Result<(Vec<Value>, bool), AdminError> {
    let since = id_timestamp_ms(id).saturating_sub(ID_CLOCK_SLACK_MS);
    let spec = FilterSpec {
        message: Some(format_id(id)),
        since: Some(rfc3339(since)),
        ..FilterSpec::default()
    };
    let filter = LogFilter::new(&spec, crate::timefmt::now_ms())
        .map_err(|e| AdminError::internal(format!("the history's log filter: {e}")))?;
    let mut found = Vec::new();
    let mut before = None;
    let mut scanned = 0;
    loop {
        let query = Query {
            filter: &filter,
            limit: MAX_HISTORY_EVENTS - found.len(),
            max_scan_bytes: MAX_HISTORY_SCAN_BYTES - scanned,
        };
        let page = read_backward(path, before, &query)
            .map_err(|e| AdminError::internal(format!("reading the event log: {e}")))?;
        scanned += page.scanned_bytes;
        found.extend(page.events.iter().map(trimmed));
        before = page.next;
        // The oldest events are the ones left out when there are too many.
        let cut_short = found.len() == MAX_HISTORY_EVENTS || scanned >= MAX_HISTORY_SCAN_BYTES;
        let read_back = page.complete || before.is_none();
        if cut_short || read_back {
            found.reverse();
            return Ok((found, !cut_short));
        }
    }
}

/// What the history shows of one event.
fn trimmed(event: &Value) -> Value {
    json!({
        "time": event["time"],
        "type": event["type"],
        "recipient": event["recipient"],
        "route": event["route"],
        "reply": reply_text(&event["reply"]),
    })
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
