//! `log`: the event log read back, for `sendctl log`.
//!
//! The daemon reads, not `sendctl`: it knows the path and the rotation,
//! the files may be readable only by its user and group (0640), and a
//! follower polls it with a cursor. Each request reads off the async
//! workers, at most `CONCURRENT_READS` at once together with `queue
//! inspect`'s histories (more wait their turn), and scans at most
//! `MAX_SCAN_BYTES`: a filter that matches nothing in a gigabyte answers
//! in a few steps, each with a cursor to go on from.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::protocol::{AdminError, Args};
use super::{AdminContext, blocking};
use crate::events::filter::{FilterSpec, LogFilter};
use crate::events::reader::{Cursor, Page, Query, ReadError, read_backward, read_forward};

/// Events per page when no `limit` is given.
const DEFAULT_LIMIT: u64 = 50;
/// Largest `limit`.
const MAX_LIMIT: u64 = 1000;
/// Bytes of the log one request looks at, at most (a few tenths of a
/// second from the page cache).
const MAX_SCAN_BYTES: u64 = 256 << 20;
/// Reads of the log running at once: each holds a blocking thread and
/// the disk.
const CONCURRENT_READS: usize = 2;
static READS: Semaphore = Semaphore::const_new(CONCURRENT_READS);

/// `log {limit, before | after, type, recipient, sender, tenant, campaign,
/// route, message, since}`.
pub async fn read(ctx: &Arc<AdminContext>, args: &Args<'_>) -> Result<Value, AdminError> {
    let path = ctx.events_path.clone().ok_or_else(|| {
        AdminError::new(
            "no_event_log",
            "this daemon writes no event log file: set [events] path",
        )
    })?;
    let limit = args.opt_u64("limit")?.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(AdminError::bad_args(format!(
            "limit: {limit} is not between 1 and {MAX_LIMIT}"
        )));
    }
    let before = cursor(args, "before")?;
    let after = cursor(args, "after")?;
    if before.is_some() && after.is_some() {
        return Err(AdminError::bad_args(
            "before, after: give one (before pages back, after follows)",
        ));
    }
    let filter = LogFilter::new(&filter_spec(args)?, crate::timefmt::now_ms())
        .map_err(|e| AdminError::bad_args(e.to_string()))?;
    let permit = read_permit().await?;
    blocking(move || {
        let _permit = permit;
        let query = Query {
            filter: &filter,
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            max_scan_bytes: MAX_SCAN_BYTES,
        };
        let page = match after {
            Some(after) => read_forward(&path, after, &query),
            None => read_backward(&path, before, &query),
        };
        page.map(describe).map_err(read_error)
    })
    .await
}

/// A place among the readers of the event log (`sendctl log`, and the
/// history of `queue inspect`), held while one reads.
pub(super) async fn read_permit() -> Result<tokio::sync::SemaphorePermit<'static>, AdminError> {
    READS
        .acquire()
        .await
        .map_err(|e| AdminError::internal(format!("the log readers' semaphore: {e}")))
}

fn cursor(args: &Args, field: &str) -> Result<Option<Cursor>, AdminError> {
    args.opt_str(field)?
        .map(|text| {
            text.parse()
                .map_err(|e: ReadError| AdminError::bad_args(format!("{field}: {e}")))
        })
        .transpose()
}

fn filter_spec(args: &Args) -> Result<FilterSpec, AdminError> {
    let text = |field| args.opt_str(field).map(|v| v.map(str::to_owned));
    Ok(FilterSpec {
        types: text("type")?,
        recipient: text("recipient")?,
        sender: text("sender")?,
        tenant: text("tenant")?,
        campaign: text("campaign")?,
        route: text("route")?,
        message: text("message")?,
        since: text("since")?,
    })
}

fn describe(page: Page) -> Value {
    json!({
        "events": page.events,
        "next": page.next.map(|c| c.to_string()),
        "head": page.head.map(|c| c.to_string()),
        "complete": page.complete,
        "scanned_bytes": page.scanned_bytes,
        "skipped_lines": page.skipped_lines,
    })
}

fn read_error(e: ReadError) -> AdminError {
    match e {
        ReadError::BadCursor(_) => AdminError::bad_args(e.to_string()),
        ReadError::CursorGone => AdminError::new("cursor_gone", e.to_string()),
        ReadError::Io { .. } => AdminError::internal(format!("reading the event log: {e}")),
    }
}
