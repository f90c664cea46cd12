//! `status`: what the daemon is doing now, in one JSON object.
//!
//! Version, uptime, listeners, queue totals by status, per route its open
//! connections against the maximum and the ready queue length, the
//! spool's size and the process's resident memory (VmRSS).

use std::sync::Arc;

use serde_json::{Value, json};

use super::protocol::AdminError;
use super::{AdminContext, blocking};

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
    let mut routes: Vec<Value> = ctx
        .engine
        .router
        .all()
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "server": r.server.name,
                "connections": r.open_connections(),
                "max_connections": r.server.max_connections,
                "ready": r.ready.len(),
                "available": r.is_available(),
            })
        })
        .collect();
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
        },
        "routes": routes,
        "spool_bytes": stats.file_bytes,
        "memory_rss_bytes": resident_bytes(),
    }))
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
