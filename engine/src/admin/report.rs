//! `report`: what happened on one UTC day on this node (received,
//! delivered, deferred, bounced, expired, suppressed, complaints, bytes,
//! and the top senders, recipient domains, bounce reasons, delivery
//! servers and campaigns), from the daily counters in the spool
//! (`events::daily`). Per node, also in cluster mode.

use std::sync::Arc;

use serde_json::{Value, json};

use super::protocol::{AdminError, Args};
use super::{AdminContext, blocking};
use crate::events::daily::tally::{Counts, DayTally, MAX_KEYS, Table};
use crate::events::daily::{RETAIN_DAYS, day_of, decode};
use crate::timefmt::{iso_date, now_ms, parse_iso_date};

pub async fn day_report(ctx: &Arc<AdminContext>, args: &Args<'_>) -> Result<Value, AdminError> {
    let today = day_of(now_ms());
    let day = match args.opt_str("date")?.unwrap_or("today") {
        "today" => today,
        "yesterday" => today.saturating_sub(1),
        date => parse_iso_date(date).ok_or_else(|| {
            AdminError::bad_args(format!(
                "date: `{date}` is not a date; give today, yesterday or YYYY-MM-DD"
            ))
        })?,
    };
    let tenant = args.opt_str("tenant")?.map(str::to_owned);
    let engine = ctx.engine.clone();
    let filter = tenant.clone();
    let rows = blocking(move || {
        if day == today {
            // The last second's counts are still in memory: write them.
            engine.events.flush();
        }
        engine
            .spool
            .daily_rows(day, filter.as_deref())
            .map_err(|e| AdminError::internal(format!("reading the daily counters: {e}")))
    })
    .await?;
    let mut all = DayTally::default();
    let mut tenants = Vec::new();
    for row in &rows {
        let tally = decode(row);
        all.merge(&tally);
        tenants.push((row.tenant.clone(), tally.totals));
    }
    tenants.sort_by(|a, b| b.1.activity().cmp(&a.1.activity()).then(a.0.cmp(&b.0)));
    let tenants: Vec<Value> = tenants
        .iter()
        .map(|(name, counts)| named(name, counts))
        .collect();
    Ok(json!({
        "date": iso_date(day),
        "tenant": tenant,
        "scope": "node",
        "empty": all.is_empty(),
        "retained_days": RETAIN_DAYS,
        "totals": counts(&all.totals),
        "tenants": tenants,
        "senders": table(&all.senders),
        "recipient_domains": table(&all.recipient_domains),
        "bounce_reasons": table(&all.bounce_reasons),
        "routes": table(&all.routes),
        "campaigns": table(&all.campaigns),
    }))
}

/// Every count, zeros included, so that scripts need no defaults.
fn counts(c: &Counts) -> Value {
    json!({
        "received": c.received,
        "messages": c.messages,
        "delivered": c.delivered,
        "deferred": c.deferred,
        "bounced": c.bounced_hard + c.bounced_soft,
        "bounced_hard": c.bounced_hard,
        "bounced_soft": c.bounced_soft,
        "expired": c.expired,
        "suppressed": c.suppressed,
        "complaints": c.complaints,
        "clicks": c.clicks,
        "opens": c.opens,
        "bytes_in": c.bytes_in,
        "bytes_out": c.bytes_out,
    })
}

fn named(name: &str, c: &Counts) -> Value {
    let mut v = counts(c);
    v["name"] = json!(name);
    v
}

/// The keys, most active first, and what did not fit (`null` if nothing).
fn table(t: &Table) -> Value {
    let top: Vec<Value> = t.ranked().into_iter().map(|(k, c)| named(k, c)).collect();
    let other = (!t.other.is_empty()).then(|| counts(&t.other));
    json!({ "top": top, "other": other, "max_keys": MAX_KEYS })
}
