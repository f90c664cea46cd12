//! Queue commands: summary, list, inspect, and the actions flush, delete,
//! suspend, resume and bounce over recipients chosen by filters.
//!
//! Everything walks the spool page by page (`Spool::queue_page`), so a
//! million queued recipients cost time, not memory, and an action commits
//! one page at a time while delivery of everything else goes on.
//!
//! Suspend, delete and bounce first take the matching recipients out of
//! the routes' ready queues (claimed, but not yet attempted) and apply to
//! them there; only recipients a worker is attempting right now are
//! beyond reach: suspend skips them (counted as `in_flight_skipped`), and
//! delete/bounce remove their spool row so they are never tried again,
//! but the attempt under way may still deliver. Flush and resume leave
//! ready queues alone (what is there is due already). Suspended
//! recipients do not expire while suspended.
//!
//! Each removed recipient gets an event: `bounce` with bounce_class
//! `admin` for `queue bounce`, `admin_action` for `queue delete`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sendengine_queue::{
    MAX_PAGE, QueueAction, QueueFilter, QueuedRecipient, RecipientStatus, format_id, parse_id,
};
use serde_json::{Value, json};

use super::protocol::{AdminError, Args};
use super::{AdminContext, blocking};
use crate::engine::Engine;
use crate::events::{BounceType, Event, EventKind, EventReply};
use crate::timefmt::{now_ms, rfc3339};

/// Rows `queue list` returns when no `limit` is given, and at most.
const DEFAULT_LIST_LIMIT: u64 = 100;
const MAX_LIST_LIMIT: u64 = 10_000;
/// Entries per dimension in `queue summary`; the rest add up in "(other)".
const MAX_SUMMARY_KEYS: usize = 100;
/// Header bytes `queue inspect` shows.
const MAX_INSPECT_HEADER_BYTES: usize = 16 * 1024;

pub async fn handle(
    ctx: &Arc<AdminContext>,
    verb: &str,
    args: &Args<'_>,
) -> Result<Value, AdminError> {
    let engine = ctx.engine.clone();
    match verb {
        "summary" => {
            let filter = filter_from(args)?;
            blocking(move || summary(&engine, &filter)).await
        }
        "list" => {
            let filter = filter_from(args)?;
            let limit = args
                .opt_u64("limit")?
                .unwrap_or(DEFAULT_LIST_LIMIT)
                .min(MAX_LIST_LIMIT) as usize;
            blocking(move || list(&engine, &filter, limit)).await
        }
        "inspect" => {
            let text = args.str("id")?;
            let id = parse_id(text).ok_or_else(|| {
                AdminError::bad_args(format!("id: `{text}` is not a queue id (16 hex digits)"))
            })?;
            // A departed message's history reads the event log.
            let permit = super::log::read_permit().await?;
            blocking(move || {
                let _permit = permit;
                inspect(&engine, id)
            })
            .await
        }
        "flush" | "suspend" | "resume" | "delete" | "bounce" => {
            let filter = filter_from(args)?;
            let everything = filter == QueueFilter::default();
            let destructive = matches!(verb, "delete" | "bounce");
            if everything && destructive && !matches!(args.0.get("all"), Some(Value::Bool(true))) {
                return Err(AdminError::bad_args(format!(
                    "all: `queue {verb}` without a filter acts on the whole queue; \
                     give a filter, or `all: true` to mean it"
                )));
            }
            let verb = verb.to_owned();
            blocking(move || act(&engine, &verb, &filter)).await
        }
        _ => Err(AdminError::new(
            "unknown_command",
            format!(
                "`queue.{verb}` is not a command; queue takes summary, list, inspect, \
                 flush, delete, suspend, resume, bounce"
            ),
        )),
    }
}

/// The filter arguments; `older_than` is a duration such as "2h".
fn filter_from(args: &Args<'_>) -> Result<QueueFilter, AdminError> {
    let text = |field: &str| args.opt_str(field).map(|v| v.map(str::to_owned));
    let received_before_ms = match args.opt_str("older_than")? {
        Some(d) => {
            let age = crate::values::parse_duration(d)
                .map_err(|e| AdminError::bad_args(format!("older_than: {e}")))?;
            Some(now_ms().saturating_sub(age.as_millis() as u64))
        }
        None => None,
    };
    let id = match args.opt_str("id")? {
        Some(t) => Some(parse_id(t).ok_or_else(|| {
            AdminError::bad_args(format!("id: `{t}` is not a queue id (16 hex digits)"))
        })?),
        None => None,
    };
    Ok(QueueFilter {
        id,
        route: text("route")?,
        domain: text("domain")?,
        tenant: text("tenant")?,
        campaign: text("campaign")?,
        channel: text("channel")?,
        received_before_ms,
    })
}

/// Calls `each` with every page of matching recipients.
fn walk(
    engine: &Engine,
    filter: &QueueFilter,
    mut each: impl FnMut(Vec<QueuedRecipient>) -> Result<bool, AdminError>,
) -> Result<(), AdminError> {
    let mut from = None;
    loop {
        let page = engine
            .spool
            .queue_page(filter, from, MAX_PAGE)
            .map_err(|e| AdminError::internal(format!("reading the queue: {e}")))?;
        let go_on = each(page.recipients)?;
        match page.next {
            Some(next) if go_on => from = Some(next),
            _ => return Ok(()),
        }
    }
}

fn summary(engine: &Engine, filter: &QueueFilter) -> Result<Value, AdminError> {
    let mut by: [HashMap<String, u64>; 4] = Default::default();
    let mut statuses: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut total = 0u64;
    let mut oldest: Option<u64> = None;
    walk(engine, filter, |page| {
        for r in page {
            total += 1;
            *statuses.entry(r.status.name()).or_default() += 1;
            let domain = r.address.rsplit_once('@').map_or("", |(_, d)| d);
            let keys = [
                &r.meta.route,
                &domain.to_ascii_lowercase(),
                &r.meta.tenant,
                &r.meta.campaign,
            ];
            for (map, key) in by.iter_mut().zip(keys) {
                *map.entry(key.clone()).or_default() += 1;
            }
            oldest = Some(oldest.map_or(r.meta.received_at_ms, |o| o.min(r.meta.received_at_ms)));
        }
        Ok(true)
    })?;
    let [route, domain, tenant, campaign] = by.map(top_counts);
    Ok(json!({
        "recipients": total,
        "by_status": statuses,
        "by_route": route,
        "by_domain": domain,
        "by_tenant": tenant,
        "by_campaign": campaign,
        "oldest_age_seconds": oldest.map(|t| now_ms().saturating_sub(t) / 1000),
    }))
}

/// The largest counts, as [[key, count]...]; the rest summed as "(other)".
fn top_counts(map: HashMap<String, u64>) -> Value {
    let mut entries: Vec<(String, u64)> = map.into_iter().collect();
    entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let other: u64 = entries.iter().skip(MAX_SUMMARY_KEYS).map(|e| e.1).sum();
    entries.truncate(MAX_SUMMARY_KEYS);
    if other > 0 {
        entries.push(("(other)".into(), other));
    }
    Value::Array(entries.into_iter().map(|(k, n)| json!([k, n])).collect())
}

fn list(engine: &Engine, filter: &QueueFilter, limit: usize) -> Result<Value, AdminError> {
    let mut rows = Vec::new();
    let now = now_ms();
    walk(engine, filter, |page| {
        rows.extend(page.iter().take(limit - rows.len()).map(|r| row(r, now)));
        Ok(rows.len() < limit)
    })?;
    Ok(Value::Array(rows))
}

fn row(r: &QueuedRecipient, now: u64) -> Value {
    let next = match r.status {
        RecipientStatus::Suspended | RecipientStatus::InFlight => None,
        _ => Some(rfc3339(r.next_attempt_ms)),
    };
    json!({
        "id": format_id(r.id),
        "rcpt": r.rcpt,
        "recipient": r.address,
        "from": r.mail_from,
        "tenant": r.meta.tenant,
        "campaign": r.meta.campaign,
        "channel": r.meta.channel,
        "route": r.meta.route,
        "status": r.status.name(),
        "attempts": r.attempts,
        "next_attempt": next,
        "last_reply": r.last_reply,
        "age_seconds": now.saturating_sub(r.meta.received_at_ms) / 1000,
    })
}

fn inspect(engine: &Engine, id: u64) -> Result<Value, AdminError> {
    let message = engine
        .spool
        .load(id)
        .map_err(|e| AdminError::internal(format!("reading the queue: {e}")))?;
    let Some(message) = message else {
        return super::history::departed(engine, id);
    };
    let filter = QueueFilter {
        id: Some(id),
        ..QueueFilter::default()
    };
    let now = now_ms();
    let mut recipients = Vec::new();
    walk(engine, &filter, |page| {
        recipients.extend(page.iter().map(|r| row(r, now)));
        Ok(true)
    })?;
    let header_end =
        memchr::memmem::find(&message.body, b"\r\n\r\n").map_or(message.body.len(), |i| i + 2);
    let headers = &message.body[..header_end.min(MAX_INSPECT_HEADER_BYTES)];
    let meta = &message.meta;
    Ok(json!({
        "id": format_id(id),
        "from": message.mail_from,
        "size": message.body.len(),
        "received": rfc3339(meta.received_at_ms),
        "tenant": meta.tenant,
        "group": meta.group,
        "channel": meta.channel,
        "campaign": meta.campaign,
        "route": meta.route,
        "client": meta.client,
        "in_queue": true,
        "headers": String::from_utf8_lossy(headers),
        "recipients": recipients,
    }))
}

/// Applies the action page by page; counts what changed. Fleet actions
/// (`fleet`) run through here too.
pub(crate) fn act(engine: &Engine, verb: &str, filter: &QueueFilter) -> Result<Value, AdminError> {
    let action = match verb {
        "flush" => QueueAction::Flush,
        "suspend" => QueueAction::Suspend,
        "resume" => QueueAction::Resume,
        _ => QueueAction::Remove,
    };
    let (mut matched, mut changed, mut in_flight_skipped) = (0u64, 0u64, 0u64);
    let reaches_ready = matches!(action, QueueAction::Suspend | QueueAction::Remove);
    let wakes_scheduler = matches!(action, QueueAction::Flush | QueueAction::Resume);
    if reaches_ready {
        let pulled = act_on_ready(engine, action, verb, filter)?;
        changed += pulled;
        if action == QueueAction::Remove {
            // Gone from the spool: the walk below does not see them.
            matched += pulled;
        }
    }
    walk(engine, filter, |page| {
        matched += page.len() as u64;
        let keys = page.iter().map(|r| (r.id, r.rcpt)).collect();
        let results = engine
            .spool
            .queue_action(action, keys)
            .map_err(|e| AdminError::internal(format!("changing the queue: {e}")))?;
        if wakes_scheduler && results.iter().any(|&did| did) {
            // Due now: delivery starts with this page, not after the
            // scheduler's sleep or the whole walk.
            engine.router.schedule_wake().notify_one();
        }
        for (r, did) in page.iter().zip(results) {
            if did {
                changed += 1;
                if action == QueueAction::Remove {
                    let event = admin_event(r, verb);
                    crate::metrics::outcomes(std::slice::from_ref(&event));
                    engine.events.emit(event);
                }
            } else if r.status == RecipientStatus::InFlight {
                in_flight_skipped += 1;
            }
        }
        Ok(true)
    })?;
    if reaches_ready {
        // What the scheduler claimed between a page's read and its action
        // went to a ready queue meanwhile: reach it there too.
        let pulled = act_on_ready(engine, action, verb, filter)?;
        changed += pulled;
        if action == QueueAction::Remove {
            matched += pulled;
        }
    }
    Ok(json!({
        "action": verb,
        "matched": matched,
        "changed": changed,
        "in_flight_skipped": in_flight_skipped,
    }))
}

/// Takes the matching recipients out of the ready queues and applies the
/// action to them in the spool; returns how many changed.
fn act_on_ready(
    engine: &Engine,
    action: QueueAction,
    verb: &str,
    filter: &QueueFilter,
) -> Result<u64, AdminError> {
    let pulled = engine.router.take_queued(|job, rcpt| {
        let message = &job.message;
        let address = message.recipients.get(rcpt as usize);
        address.is_some_and(|a| filter.matches(message.id, a, &message.meta))
    });
    let recipients: Vec<QueuedRecipient> = pulled.iter().flat_map(queued_recipients).collect();
    let mut changed = 0;
    for chunk in recipients.chunks(MAX_PAGE) {
        let keys: Vec<(u64, u32)> = chunk.iter().map(|r| (r.id, r.rcpt)).collect();
        let results = engine
            .spool
            .queue_action_returned(action, keys)
            .map_err(|e| AdminError::internal(format!("changing the queue: {e}")))?;
        for (r, did) in chunk.iter().zip(results) {
            changed += u64::from(did);
            if did && action == QueueAction::Remove {
                let event = admin_event(r, verb);
                crate::metrics::outcomes(std::slice::from_ref(&event));
                engine.events.emit(event);
            }
        }
    }
    // Out of memory and written down: their leases end here.
    for job in &pulled {
        let keys = job.rcpts.iter().map(|&(r, _)| (job.message.id, r));
        engine.router.leases().finish(&job.hold, keys);
    }
    Ok(changed)
}

/// A queued job's recipients as `queue list` would show them.
fn queued_recipients(job: &crate::deliver::Job) -> Vec<QueuedRecipient> {
    let message = &job.message;
    job.rcpts
        .iter()
        .map(|&(rcpt, attempts)| QueuedRecipient {
            id: message.id,
            rcpt,
            address: message
                .recipients
                .get(rcpt as usize)
                .cloned()
                .unwrap_or_default(),
            mail_from: message.mail_from.clone(),
            meta: message.meta.clone(),
            attempts,
            next_attempt_ms: 0,
            status: RecipientStatus::InFlight,
            last_reply: None,
        })
        .collect()
}

/// The event of a recipient an operator removed: a bounce (class `admin`,
/// with a local reply saying why) for `bounce`, an `admin_action` with no
/// reply for `delete`.
fn admin_event(r: &QueuedRecipient, verb: &str) -> Event {
    let now = now_ms();
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let (kind, reply, bounce_class) = if verb == "bounce" {
        let reply = EventReply {
            code: 550,
            enhanced: Some("5.0.0".into()),
            text: "Bounced by an operator".into(),
        };
        (EventKind::Bounce, Some(reply), Some("admin".to_owned()))
    } else {
        (EventKind::AdminAction, None, None)
    };
    Event {
        time: rfc3339(now),
        kind,
        message_id: format_id(r.id),
        header_message_id: String::new(),
        sender: r.mail_from.clone(),
        recipient: r.address.clone(),
        tenant: opt(&r.meta.tenant),
        group: opt(&r.meta.group),
        channel: r.meta.channel.clone(),
        campaign: opt(&r.meta.campaign),
        route: opt(&r.meta.route),
        remote_host: None,
        reply,
        // An operator's bounce says nothing about the address: it may work.
        bounce_type: bounce_class.is_some().then_some(BounceType::Soft),
        bounce_class,
        tls: None,
        dkim: None,
        attempt: r.attempts,
        queue_time_ms: now.saturating_sub(r.meta.received_at_ms),
        size: 0,
        url: None,
        user_agent: None,
        metadata: crate::events::metadata_of(&r.meta),
    }
}
