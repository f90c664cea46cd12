//! `user.usage NAME`: how much of each sending limit a user has used, and
//! when each resets. Standalone, from this node's spool; in cluster mode,
//! the fleet's numbers from PostgreSQL (`cluster::quota`), with what nodes
//! hold leased and not yet spent shown apart.

use std::sync::Arc;

use sendengine_queue::{Quota, Window};
use serde_json::{Value, json};

use super::protocol::{AdminError, Args};
use super::{AdminContext, blocking};
use crate::admit::limits;
use crate::timefmt::{now_ms, rfc3339};

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
        let (used, leased) = used_of(ctx, &q).await?;
        let what = if q.window == Window::Rolling30Days {
            "default domain (rolling 30-day)"
        } else {
            q.window.name()
        };
        rows.push(json!({
            "quota": what,
            "limit": q.limit,
            "used": used,
            "leased": leased,
            "resets_at": q.window.resets_at_ms(now_ms()).map(rfc3339),
        }));
    }
    let scope = if ctx.engine.cluster.is_some() {
        "fleet"
    } else {
        "node"
    };
    Ok(json!({ "user": name, "scope": scope, "quotas": rows }))
}

/// (used, leased and unspent) of `q`: the fleet's or this spool's.
async fn used_of(ctx: &Arc<AdminContext>, q: &Quota) -> Result<(u64, u64), AdminError> {
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
            .usage(&name, window)
            .map(|used| (used, 0))
            .map_err(|e| AdminError::internal(format!("reading the spool: {e}")))
    })
    .await
}
