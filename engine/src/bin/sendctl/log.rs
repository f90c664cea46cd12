//! `sendctl log`: the daemon's event log, newest first a page at a time,
//! or followed like `tail -f`.
//!
//! The daemon answers each request with a bounded piece of work: when its
//! scan budget runs out before the page is full (a rare filter over a big
//! log) it says so (`complete: false`) and gives the cursor to go on
//! from; this asks again until the page is full or the log has no older
//! line. `--follow` prints the last few events oldest first, then polls
//! with the `head` cursor for what is appended, across rotations.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Map, Value, json};

/// Events per page when `--limit` is not given (the daemon's default).
const DEFAULT_LIMIT: u64 = 50;
/// Events shown before following when `--limit` is not given.
const FOLLOW_BACKLOG: u64 = 10;
/// Events asked for per poll while following (the daemon's most).
const FOLLOW_BATCH: u64 = 1000;
/// Pause between polls when the last one found nothing more.
const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// Characters of the SMTP reply shown in a row.
const REPLY_CHARS: usize = 60;
/// Column widths of a row; the reply takes the rest.
const WIDTHS: [usize; 5] = [24, 17, 30, 30, 14];

pub fn run(socket: &Path, args: Map<String, Value>, json: bool, follow: bool) -> ExitCode {
    let done = if follow {
        follow_log(socket, args, json)
    } else {
        page(socket, args, json)
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("sendctl: {message}");
            ExitCode::from(1)
        }
    }
}

/// One request; the daemon's error as `code: message`.
fn ask(socket: &Path, args: &Map<String, Value>) -> Result<Value, String> {
    crate::result_of(crate::call(socket, "log", args)?)
}

fn events_of(result: &mut Value) -> Vec<Value> {
    match result["events"].take() {
        Value::Array(events) => events,
        _ => Vec::new(),
    }
}

fn cursor_of(result: &Value, field: &str) -> Option<String> {
    result[field].as_str().map(str::to_owned)
}

/// A page: requests from the cursor until `limit` events or the end.
fn page(socket: &Path, mut args: Map<String, Value>, json: bool) -> Result<(), String> {
    let given_limit = args.get("limit").cloned();
    let limit = given_limit
        .as_ref()
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_LIMIT);
    let following = args.contains_key("after");
    let mut events = Vec::new();
    let mut skipped = 0;
    let (next, head) = loop {
        args.insert("limit".into(), json!(limit - events.len() as u64));
        let mut result = ask(socket, &args)?;
        events.extend(events_of(&mut result));
        skipped += result["skipped_lines"].as_u64().unwrap_or(0);
        let (next, head) = (cursor_of(&result, "next"), cursor_of(&result, "head"));
        let complete = result["complete"] != Value::Bool(false);
        match (&next, &head) {
            (Some(next), _) if !complete && !following => {
                args.insert("before".into(), json!(next));
            }
            (_, Some(head)) if !complete && following => {
                args.insert("after".into(), json!(head));
            }
            _ => break (next, head),
        }
        if events.len() as u64 >= limit {
            break (next, head);
        }
    };
    // The footer repeats the command as given.
    match given_limit {
        Some(given) => args.insert("limit".into(), given),
        None => args.remove("limit"),
    };
    let mut out = std::io::stdout().lock();
    let written = if json {
        let page = json!({"events": events, "next": next, "head": head, "skipped_lines": skipped});
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&page).unwrap_or_default()
        )
    } else {
        write_table(&mut out, &events).and_then(|()| {
            let footer = footer(&args, next.as_deref(), head.as_deref(), following, skipped);
            write!(out, "{footer}")
        })
    };
    quiet_pipe(written)
}

/// Follows the log: the last events, then each new one as it is written.
fn follow_log(socket: &Path, mut args: Map<String, Value>, json: bool) -> Result<(), String> {
    args.remove("before");
    let mut head = args
        .remove("after")
        .and_then(|v| v.as_str().map(str::to_owned));
    let backlog = args.remove("limit").and_then(|v| v.as_u64());
    let mut out = std::io::stdout().lock();
    if !json {
        quiet_pipe(writeln!(out, "{}", header()))?;
    }
    // After the log was replaced under the cursor: catch up to its head
    // without printing its newest events again.
    let mut resync = false;
    loop {
        let mut request = args.clone();
        let newest_first = head.is_none();
        match &head {
            None => {
                let first = backlog.unwrap_or(FOLLOW_BACKLOG);
                request.insert("limit".into(), json!(first));
            }
            Some(cursor) => {
                request.insert("limit".into(), json!(FOLLOW_BATCH));
                request.insert("after".into(), json!(cursor));
            }
        }
        let mut result = match ask(socket, &request) {
            Err(e) if e.starts_with("cursor_gone:") => {
                eprintln!(
                    "sendctl: the event log was replaced under the cursor; events may be missing"
                );
                head = None;
                resync = true;
                continue;
            }
            other => other?,
        };
        let mut events = events_of(&mut result);
        if newest_first {
            events.reverse();
        }
        if std::mem::take(&mut resync) {
            events.clear();
        }
        for event in &events {
            let line = if json {
                event.to_string()
            } else {
                row(&cells(event))
            };
            quiet_pipe(writeln!(out, "{line}"))?;
        }
        quiet_pipe(out.flush())?;
        // `None` while there is no log file yet: asked again as the newest.
        head = cursor_of(&result, "head").or(head);
        if result["complete"] != Value::Bool(false) && (events.is_empty() || newest_first) {
            std::thread::sleep(FOLLOW_POLL);
        }
    }
}

/// A closed stdout (`sendctl log --follow | head`) ends quietly.
fn quiet_pipe(written: std::io::Result<()>) -> Result<(), String> {
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => other.map_err(|e| format!("writing the output: {e}")),
    }
}

fn write_table(out: &mut impl Write, events: &[Value]) -> std::io::Result<()> {
    writeln!(out, "{}", header())?;
    for event in events {
        writeln!(out, "{}", row(&cells(event)))?;
    }
    Ok(())
}

fn header() -> String {
    row(&[
        "TIME",
        "TYPE",
        "RECIPIENT",
        "FROM (TENANT)",
        "ROUTE",
        "REPLY",
    ]
    .map(str::to_owned))
}

/// The columns of one event: time, type, recipient, sender and tenant,
/// route, the SMTP reply shortened.
fn cells(event: &Value) -> [String; 6] {
    let text = |field: &str| event[field].as_str().unwrap_or("-").to_owned();
    let from = match event["tenant"].as_str() {
        Some(tenant) => format!("{} ({tenant})", text("sender")),
        None => text("sender"),
    };
    [
        text("time"),
        text("type"),
        text("recipient"),
        from,
        text("route"),
        reply(&event["reply"]),
    ]
}

/// `550 5.1.1 user unknown`, on one line, at most `REPLY_CHARS` long.
fn reply(reply: &Value) -> String {
    if reply.is_null() {
        return "-".into();
    }
    let parts = [
        reply["code"].as_u64().map(|c| c.to_string()),
        reply["enhanced"].as_str().map(str::to_owned),
        reply["text"].as_str().map(str::to_owned),
    ];
    let joined = parts.into_iter().flatten().collect::<Vec<_>>().join(" ");
    let one_line = joined.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= REPLY_CHARS {
        return one_line;
    }
    let mut short: String = one_line.chars().take(REPLY_CHARS - 1).collect();
    short.push('…');
    short
}

fn row(cells: &[String; 6]) -> String {
    let mut line = String::new();
    for (cell, width) in cells.iter().zip(WIDTHS) {
        line.push_str(&format!("{cell:<width$}  "));
    }
    line.push_str(&cells[5]);
    line.trim_end().to_owned()
}

/// How to get the next page (the same filters, from the cursor).
fn footer(
    args: &Map<String, Value>,
    next: Option<&str>,
    head: Option<&str>,
    following: bool,
    skipped: u64,
) -> String {
    let mut text = String::new();
    if skipped > 0 {
        text.push_str(&format!(
            "({skipped} lines skipped: not events, torn by a crash, or too long)\n"
        ));
    }
    let (flag, cursor) = match (following, next, head) {
        (true, _, Some(head)) => ("--after", head),
        (false, Some(next), _) => ("--before", next),
        _ => {
            text.push_str("(no older events)\n");
            return text;
        }
    };
    let mut command = String::from("sendctl log");
    for (field, value) in args {
        if matches!(field.as_str(), "before" | "after") {
            continue;
        }
        let value = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        command.push_str(&format!(
            " --{} {}",
            field.replace('_', "-"),
            shell_word(&value)
        ));
    }
    text.push_str(&format!("next page: {command} {flag} {cursor}\n"));
    text
}

/// `value`, quoted for a POSIX shell when it needs to be.
fn shell_word(value: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    if !value.is_empty() && value.chars().all(plain) {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_shortens_the_reply_and_names_the_tenant() {
        let event = json!({
            "time": "2026-11-21T10:30:00.123Z", "type": "bounce",
            "recipient": "bob@example.net", "sender": "app@shop.example", "tenant": "acme",
            "route": "relay-1",
            "reply": {"code": 550, "enhanced": "5.1.1", "text": "user unknown\r\n and a very long explanation that goes on and on"},
        });
        let cells = cells(&event);
        assert_eq!(cells[3], "app@shop.example (acme)");
        assert!(
            cells[5].starts_with("550 5.1.1 user unknown and a very"),
            "{}",
            cells[5]
        );
        assert_eq!(cells[5].chars().count(), REPLY_CHARS);
        assert!(cells[5].ends_with('…'));
        let line = row(&cells);
        assert!(
            line.starts_with("2026-11-21T10:30:00.123Z  bounce "),
            "{line}"
        );
        assert_eq!(reply(&Value::Null), "-");
    }

    #[test]
    fn the_footer_repeats_the_filters_with_the_cursor() {
        let mut args = Map::new();
        args.insert("campaign".into(), json!("spring sale"));
        args.insert("limit".into(), json!(20));
        args.insert("before".into(), json!("old"));
        let text = footer(&args, Some("1a-2b"), None, false, 2);
        assert!(text.contains("2 lines skipped"), "{text}");
        assert!(
            text.ends_with(
                "next page: sendctl log --campaign 'spring sale' --limit 20 --before 1a-2b\n"
            ),
            "{text}"
        );
        assert_eq!(footer(&args, None, None, false, 0), "(no older events)\n");
    }
}
