//! `suppression.*`: the suppression lists over the admin socket.
//!
//! `tenant` absent or "" means the global list, which applies to every
//! tenant. `check` answers for sending as a tenant: suppressed if either
//! the tenant's list or the global one holds the address, and says which.

use std::sync::Arc;

use sendengine_queue::{GLOBAL_TENANT, SpoolError, Suppression};
use serde_json::{Value, json};

use super::protocol::{AdminError, Args};
use super::{AdminContext, blocking};
use crate::cluster::suppressions::Entry;
use crate::timefmt::rfc3339;
use crate::values::mailbox::is_mailbox;

/// Entries listed when no `limit` is given.
const DEFAULT_LIST_LIMIT: usize = 100;

pub async fn handle(
    ctx: &Arc<AdminContext>,
    verb: &str,
    args: &Args<'_>,
) -> Result<Value, AdminError> {
    let tenant = args.opt_str("tenant")?.unwrap_or(GLOBAL_TENANT).to_owned();
    let spool = ctx.engine.spool.clone();
    match verb {
        "list" => {
            let limit = args.opt_u64("limit")?.map_or(DEFAULT_LIST_LIMIT, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            });
            blocking(move || {
                let entries = spool.suppressions(&tenant, limit).map_err(storage)?;
                Ok(Value::Array(entries.iter().map(describe).collect()))
            })
            .await
        }
        "add" => {
            let address = args.str("address")?.trim().to_owned();
            if !is_mailbox(&address) {
                return Err(AdminError::bad_args(format!(
                    "address: `{address}` is not a mailbox: write local-part@domain"
                )));
            }
            let reason = args.opt_str("reason")?.unwrap_or("manual").to_owned();
            fleet_first(ctx, Entry::add(&tenant, &address, &reason, "operator")).await?;
            blocking(move || {
                let added = spool
                    .suppress(&tenant, &address, &reason, "operator")
                    .map_err(storage)?;
                Ok(json!({"address": address.to_lowercase(), "tenant": tenant, "added": added}))
            })
            .await
        }
        "remove" => {
            let address = args.str("address")?.to_owned();
            fleet_first(ctx, Entry::remove(&tenant, &address)).await?;
            blocking(move || {
                let removed = spool.unsuppress(&tenant, &address).map_err(storage)?;
                if !removed {
                    return Err(AdminError::not_found(format!(
                        "{address} is not on {}",
                        list_name(&tenant)
                    )));
                }
                Ok(json!({"address": address.to_lowercase(), "tenant": tenant, "removed": true}))
            })
            .await
        }
        "check" => {
            let address = args.str("address")?.to_owned();
            blocking(move || check(&spool, &tenant, &address)).await
        }
        _ => Err(AdminError::new(
            "unknown_command",
            format!("`suppression.{verb}` is not a command; try suppression.list|add|remove|check"),
        )),
    }
}

/// Cluster mode: the change is committed fleet-wide before this node
/// makes it, so that "done" means done on every node; if the cluster
/// database is down nothing changes anywhere.
async fn fleet_first(
    ctx: &AdminContext,
    entry: Result<Entry, SpoolError>,
) -> Result<(), AdminError> {
    let Some(cluster) = &ctx.engine.cluster else {
        return Ok(());
    };
    let entry = entry.map_err(storage)?;
    crate::cluster::suppressions::commit(cluster, entry)
        .await
        .map_err(|e| AdminError::new("cluster_unavailable", e))
}

fn check(
    spool: &sendengine_queue::Spool,
    tenant: &str,
    address: &str,
) -> Result<Value, AdminError> {
    let mut entries = Vec::new();
    if tenant != GLOBAL_TENANT {
        entries.extend(spool.suppression(tenant, address).map_err(storage)?);
    }
    entries.extend(spool.suppression(GLOBAL_TENANT, address).map_err(storage)?);
    Ok(json!({
        "address": address.to_lowercase(),
        "tenant": tenant,
        "suppressed": !entries.is_empty(),
        "entries": entries.iter().map(describe).collect::<Vec<_>>(),
    }))
}

fn describe(s: &Suppression) -> Value {
    json!({
        "tenant": s.tenant,
        "address": s.address,
        "reason": s.reason,
        "time": rfc3339(s.time_ms),
        "source": s.source,
    })
}

fn list_name(tenant: &str) -> String {
    if tenant == GLOBAL_TENANT {
        "the global suppression list".into()
    } else {
        format!("the suppression list of tenant `{tenant}`")
    }
}

/// An invalid address is the caller's to fix; anything else is ours.
fn storage(e: SpoolError) -> AdminError {
    match e {
        SpoolError::Invalid(why) => AdminError::bad_args(format!("address: {why}")),
        other => AdminError::internal(format!("the suppression list: {other}")),
    }
}
