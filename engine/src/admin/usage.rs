//! `user.usage NAME`: each sending limit of a user (daily, monthly,
//! lifetime, and the shared default domain's rolling 30 days): the limit,
//! how much is used and left, and when how much of it frees (UTC, as the
//! limits count: the next midnight, the first of next month, never, or
//! when the oldest counted day leaves the rolling window). Standalone, from this node's spool; in cluster mode,
//! the fleet's numbers from PostgreSQL (`cluster::quota`), with what nodes
//! hold leased and not yet spent shown apart.

use std::sync::Arc;

use sendengine_queue::{Quota, Release, Standing, Window};
use serde_json::{Value, json};

use super::protocol::{AdminError, Args};
use super::{AdminContext, blocking};
use crate::admit::limits;
use crate::timefmt::rfc3339;

pub async fn user_usage(ctx: &Arc<AdminContext>, args: &Args<'_>) -> Result<Value, AdminError> {
    let name = args.str("name")?.to_owned();
    let snapshot = ctx.engine.tenancy.snapshot();
    let user = snapshot
        .users
        .get(&name)
        .ok_or_else(|| AdminError::not_found(format!("no user `{name}`")))?;
    let group = snapshot.group_of(Some(user)).ok_or_else(|| {
        AdminError::not_found(format!("user `{name}` is in no existing user group"))
    })?;
    let mut quotas = limits::user_quotas(&name, group, 0);
    if group.default_sender_domain.is_some() {
        quotas.push(Quota {
            name: limits::default_domain_quota_name(&name),
            window: Window::Rolling30Days,
            limit: group.default_domain_limit,
            amount: 0,
        });
    }
    let mut rows = Vec::new();
    for q in quotas {
        let (standing, leased) = used_of(ctx, &q).await?;
        rows.push(row(&q, &standing, leased));
    }
    let scope = if ctx.engine.cluster.is_some() {
        "fleet"
    } else {
        "node"
    };
    Ok(json!({ "user": name, "scope": scope, "quotas": rows }))
}

/// One quota's line: limit, used, left, and when how much of it frees.
fn row(q: &Quota, standing: &Standing, leased: u64) -> Value {
    let what = match q.window {
        Window::Rolling30Days => "default domain (rolling 30-day)",
        window => window.name(),
    };
    // A limit of 0 only counts.
    let (limit, left) = match q.limit {
        0 => (Value::Null, Value::Null),
        n => (json!(n), json!(n.saturating_sub(standing.used + leased))),
    };
    let release = standing.next_release;
    json!({
        "quota": what,
        "window": q.window.name(),
        "limit": limit,
        "used": standing.used,
        "leased": leased,
        "left": left,
        "resets": resets(q.window, release),
        "resets_at": release.map(|r| rfc3339(r.at_ms)),
        "frees": release.map(|r| r.amount),
    })
}

/// When usage next goes down, for people.
fn resets(window: Window, release: Option<Release>) -> String {
    match (window, release) {
        (Window::Lifetime, _) => "never".to_owned(),
        (_, Some(r)) => rfc3339(r.at_ms),
        (_, None) => "nothing counted yet".to_owned(),
    }
}

/// (used and when some frees, leased and unspent) of `q`: the fleet's or
/// this spool's.
async fn used_of(ctx: &Arc<AdminContext>, q: &Quota) -> Result<(Standing, u64), AdminError> {
    if let Some(cluster) = &ctx.engine.cluster {
        return cluster.quota.fleet_usage(q).await.map_err(|e| {
            AdminError::internal(format!("the fleet's quota counters cannot be read: {e}"))
        });
    }
    let engine = ctx.engine.clone();
    let (name, window) = (q.name.clone(), q.window);
    blocking(move || {
        engine
            .spool
            .usage_standing(&name, window)
            .map(|standing| (standing, 0))
            .map_err(|e| AdminError::internal(format!("reading the spool: {e}")))
    })
    .await
}
