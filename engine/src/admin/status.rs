//! `status`: what the daemon is doing now, in one JSON object.
//!
//! Version, uptime, listeners, queue totals by status, per route its open
//! connections against the maximum, the ready queue length, the jobs in
//! flight and the recipients delivered in the last minute; the active
//! campaigns (with mail in flight or in a ready queue), the spool's size
//! and the process's resident memory (VmRSS), and its threads.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::protocol::AdminError;
use super::{AdminContext, blocking};
use crate::deliver::Route;

pub async fn status(ctx: &Arc<AdminContext>) -> Result<Value, AdminError> {
    let engine = ctx.engine.clone();
    let (stats, counts) = blocking(move || {
        let read_error = |e: sendengine_queue::SpoolError| {
            AdminError::internal(format!("reading the spool: {e}"))
        };
        let stats = engine.spool.stats().map_err(read_error)?;
        let counts = engine.spool.queue_counts().map_err(read_error)?;
        Ok((stats, counts))
    })
    .await?;
    let all = ctx.engine.router.all();
    let mut routes: Vec<Value> = all.iter().map(|r| route_status(r)).collect();
    routes.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let listeners: Vec<String> = ctx.listeners.iter().map(|a| a.to_string()).collect();
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "hostname": ctx.engine.hostname,
        "uptime_seconds": ctx.started.elapsed().as_secs(),
        "listeners": listeners,
        "queue": {
            "messages": stats.messages,
            "recipients": stats.recipients,
            "queued": counts.queued,
            "deferred": counts.deferred,
            "suspended": counts.suspended,
            "in_flight": counts.in_flight,
            "quarantined": stats.quarantined,
        },
        "routes": routes,
        "active_campaigns": active_campaigns(&all),
        "spool_bytes": stats.file_bytes,
        "memory_rss_bytes": resident_bytes(),
        "threads": {
            "async_workers": tokio::runtime::Handle::current().metrics().num_workers(),
            "dkim_signers": ctx.engine.signing.threads(),
        },
    }))
}

fn route_status(r: &Route) -> Value {
    json!({
        "name": r.name,
        "server": r.server.name,
        "connections": r.open_connections(),
        "max_connections": r.server.max_connections,
        "ready": r.ready.len(),
        "in_flight": r.stats.in_flight(),
        "delivered_last_minute": r.stats.delivered_last_minute(),
        "available": r.is_available(),
    })
}

/// Campaigns with jobs in flight or waiting in a ready queue, over all
/// routes, by name. Mail waiting in the spool for a retry is not counted:
/// `queue summary` has that.
fn active_campaigns(routes: &[Arc<Route>]) -> Vec<Value> {
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for route in routes {
        for (campaign, n) in route.stats.campaigns_in_flight() {
            counts.entry(campaign).or_default().0 += n;
        }
        for (campaign, n) in route.ready.campaign_counts() {
            counts.entry(campaign).or_default().1 += n;
        }
    }
    counts
        .into_iter()
        .map(|(campaign, (in_flight, ready))| {
            json!({"campaign": campaign, "in_flight": in_flight, "ready": ready})
        })
        .collect()
}

/// VmRSS from /proc/self/status; `None` where there is no procfs.
fn resident_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}
