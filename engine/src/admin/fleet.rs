//! `fleet.*`: this node's part in a cluster, seen from the admin socket.
//!
//! `fleet.status` lists the nodes (live ones, or all with `all`) from the
//! shared `nodes` table and the campaigns active across the live ones;
//! `fleet.queue.suspend|resume|bounce|delete` issues a queue action every
//! node applies to its own spool (`cluster::fleet_actions`) and waits, at
//! most [`ACTION_WAIT`], for every live node's result.
//!
//! [`start`] is the daemon's hook: it takes this node's row in `nodes`
//! (refusing to start under a name another running node uses), then runs
//! the heartbeat, fed from the spool and the routes as `status` reads
//! them, and the applier of fleet actions, which reuses `queue`'s action.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use sendengine_queue::QueueFilter;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::protocol::{AdminError, Args};
use super::{AdminContext, blocking};
use crate::cluster::fleet_actions::{self, ACTIONS, FleetAction, Selector};
use crate::cluster::nodes::{self, CampaignCount, ClaimError, Identity, MAX_CAMPAIGNS, Sample};
use crate::cluster::{Cluster, postgres::DbError};
use crate::engine::Engine;
use crate::timefmt::{now_ms, rfc3339};

/// How long `fleet.queue.*` waits for the live nodes' results.
pub const ACTION_WAIT: Duration = Duration::from_secs(10);

pub async fn handle(
    ctx: &Arc<AdminContext>,
    verb: &str,
    args: &Args<'_>,
) -> Result<Value, AdminError> {
    let cluster = ctx.engine.cluster.clone().ok_or_else(|| {
        AdminError::new(
            "not_clustered",
            "this node is not in a cluster: fleet commands need a [cluster] section in config.toml",
        )
    })?;
    match verb.split_once('.') {
        None if verb == "status" => status(&cluster, args).await,
        None if verb == "forget" => forget(&cluster, args).await,
        Some(("queue", action)) if ACTIONS.contains(&action) => {
            queue_action(&cluster, action, args).await
        }
        _ => Err(AdminError::new(
            "unknown_command",
            format!(
                "`fleet.{verb}` is not a command; fleet takes status, forget, \
                 queue.suspend, queue.resume, queue.bounce, queue.delete"
            ),
        )),
    }
}

fn unavailable(e: DbError) -> AdminError {
    AdminError::new(
        "cluster_unavailable",
        format!("{e}; try again when the cluster database answers"),
    )
}

/// Removes a node that is not live from the `nodes` table. Its number
/// (`node_numbers`) stays: its VERP tags must still tie bounces.
async fn forget(cluster: &Cluster, args: &Args<'_>) -> Result<Value, AdminError> {
    let name = args.str("name")?;
    match nodes::forget(&cluster.db, name)
        .await
        .map_err(unavailable)?
    {
        nodes::Forgotten::Removed(state) => Ok(json!({ "name": name, "was": state })),
        nodes::Forgotten::Live => Err(AdminError::new(
            "node_live",
            format!(
                "node `{name}` is live (it wrote its row within the last {}s): stop it first; \
                 a running node writes its row again every second",
                nodes::LIVE_WINDOW_SECS
            ),
        )),
        nodes::Forgotten::Unknown => Err(AdminError::not_found(format!(
            "no node is named `{name}`: `sendctl fleet status --all` lists them"
        ))),
    }
}

async fn status(cluster: &Cluster, args: &Args<'_>) -> Result<Value, AdminError> {
    let all = matches!(args.0.get("all"), Some(Value::Bool(true)));
    let rows = nodes::read(&cluster.db, all).await.map_err(unavailable)?;
    let campaigns = fleet_campaigns(rows.iter().filter(|r| r.state == "live"));
    let nodes: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "state": r.state,
                "version": r.version,
                "host": r.host,
                "pid": r.pid,
                "up_since": rfc3339(r.started_at_ms.max(0) as u64),
                "last_seen": rfc3339(r.last_seen_ms.max(0) as u64),
                "last_seen_age_seconds": (r.last_seen_age_seconds * 10.0).round() / 10.0,
                "queue_size": r.queue_size,
                "delivery_rate_per_minute": r.delivery_rate,
                "connections": r.connections,
            })
        })
        .collect();
    Ok(json!({
        "node": cluster.settings.node,
        "nodes": nodes,
        "campaigns": campaigns,
    }))
}

/// Campaigns over the given nodes: tenant, total, and per node.
fn fleet_campaigns<'a>(rows: impl Iterator<Item = &'a nodes::NodeRow>) -> Vec<Value> {
    let mut by: BTreeMap<String, (String, BTreeMap<String, u64>)> = BTreeMap::new();
    for row in rows {
        for c in &row.campaigns {
            let entry = by.entry(c.campaign.clone()).or_default();
            if entry.0.is_empty() {
                entry.0 = c.tenant.clone();
            }
            *entry.1.entry(row.name.clone()).or_default() += c.queued;
        }
    }
    by.into_iter()
        .map(|(campaign, (tenant, per_node))| {
            let total: u64 = per_node.values().sum();
            json!({"campaign": campaign, "tenant": tenant, "total": total, "nodes": per_node})
        })
        .collect()
}

async fn queue_action(
    cluster: &Cluster,
    action: &str,
    args: &Args<'_>,
) -> Result<Value, AdminError> {
    let selector = Selector {
        campaign: args.opt_str("campaign")?.map(str::to_owned),
        tenant: args.opt_str("tenant")?.map(str::to_owned),
    };
    if selector.campaign.is_none() && selector.tenant.is_none() {
        return Err(AdminError::bad_args(format!(
            "campaign: `fleet queue {action}` acts on a campaign or a tenant across the fleet; \
             give --campaign, --tenant or both"
        )));
    }
    let db = &cluster.db;
    let live = nodes::live_names(db).await.map_err(unavailable)?;
    let issued = fleet_actions::issue(db, action, &selector, &cluster.settings.node)
        .await
        .map_err(unavailable)?;
    let results = fleet_actions::results(db, issued.id, &live, ACTION_WAIT)
        .await
        .map_err(unavailable)?;
    let complete = results.iter().all(|r| r.result.is_some());
    let nodes: Vec<Value> = results
        .into_iter()
        .map(|r| {
            let mut entry = json!({"node": r.node, "done": r.result.is_some()});
            if let (Some(Value::Object(fields)), Value::Object(out)) = (r.result, &mut entry) {
                out.extend(fields.into_iter().filter(|(k, _)| k != "action"));
            }
            entry
        })
        .collect();
    Ok(json!({
        "id": issued.id,
        "action": action,
        "selector": selector,
        "issued_by": issued.issued_by,
        "issued_at": rfc3339(issued.issued_at_ms),
        "complete": complete,
        "wait_seconds": ACTION_WAIT.as_secs(),
        "nodes": nodes,
    }))
}

/// Applies a fleet action to this node's spool.
fn apply(engine: &Engine, action: &FleetAction) -> Value {
    let filter = match filter_for(action) {
        Ok(filter) => filter,
        Err(reason) => return json!({ "error": reason }),
    };
    match super::queue::act(engine, &action.action, &filter) {
        Ok(result) => result,
        Err(e) => json!({"error": e.message}),
    }
}

/// The mail a fleet action is for: what its selector matches among the
/// mail received before it was issued. Never the whole queue.
fn filter_for(action: &FleetAction) -> Result<QueueFilter, String> {
    let Selector { campaign, tenant } = action.selector.clone();
    if campaign.is_none() && tenant.is_none() {
        return Err("the action names no campaign or tenant; nothing done".into());
    }
    if !ACTIONS.contains(&action.action.as_str()) {
        return Err(format!("unknown action `{}`; nothing done", action.action));
    }
    Ok(QueueFilter {
        campaign,
        tenant,
        received_before_ms: Some(action.issued_at_ms + 1),
        ..QueueFilter::default()
    })
}

/// Joins the fleet: takes this node's row, then runs the heartbeat and
/// the applier of fleet actions until `shutdown`. An error means another
/// running node has this node's name. With the database down the node
/// starts anyway and joins when it answers.
pub async fn start(
    engine: &Arc<Engine>,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, String> {
    let Some(cluster) = engine.cluster.clone() else {
        return Ok(Vec::new());
    };
    let me = Identity::new(&cluster.settings.node, now_ms());
    match nodes::claim(&cluster.db, &me).await {
        Ok(()) => log::info!("cluster: node `{}` joined the fleet", me.name),
        Err(e @ ClaimError::NameInUse { .. }) => return Err(e.to_string()),
        Err(ClaimError::Db(e)) => log::warn!(
            "cluster: cannot register node `{}` ({e}); starting anyway, it joins the fleet \
             when the database answers",
            me.name
        ),
    }
    let sampled = engine.clone();
    let heartbeat = nodes::heartbeat(
        cluster.db.clone(),
        cluster.fleet.clone(),
        me,
        move || sample(sampled.clone()),
        shutdown.clone(),
    );
    let applying = engine.clone();
    let applier = fleet_actions::run(
        cluster.db.clone(),
        cluster.settings.node.clone(),
        move |action| apply(&applying, action),
        shutdown,
    );
    Ok(vec![tokio::spawn(heartbeat), tokio::spawn(applier)])
}

/// What the heartbeat reports: the spool's unfinished recipients, and
/// from the routes (as `status` reads them) the deliveries of the last
/// minute, the open connections and the campaigns in flight or ready.
async fn sample(engine: Arc<Engine>) -> Sample {
    let spool = engine.spool.clone();
    let queue_size = blocking(move || {
        spool
            .stats()
            .map_err(|e| AdminError::internal(e.to_string()))
    })
    .await
    .map(|s| s.recipients)
    .unwrap_or(0);
    let routes = engine.router.all();
    let mut campaigns: BTreeMap<String, (BTreeSet<String>, u64)> = BTreeMap::new();
    for route in &routes {
        route.ready.for_each_job(|job| {
            let meta = &job.message.meta;
            if !meta.campaign.is_empty() {
                let entry = campaigns.entry(meta.campaign.clone()).or_default();
                entry.0.insert(meta.tenant.clone());
                entry.1 += job.rcpts.len() as u64;
            }
        });
        for (campaign, n) in route.stats.campaigns_in_flight() {
            if !campaign.is_empty() {
                campaigns.entry(campaign).or_default().1 += n as u64;
            }
        }
    }
    let mut campaigns: Vec<CampaignCount> = campaigns
        .into_iter()
        .filter(|(_, (_, queued))| *queued > 0)
        .map(|(campaign, (tenants, queued))| CampaignCount {
            campaign,
            tenant: tenants.into_iter().collect::<Vec<_>>().join(","),
            queued,
        })
        .collect();
    campaigns.sort_by_key(|c| std::cmp::Reverse(c.queued));
    campaigns.truncate(MAX_CAMPAIGNS);
    Sample {
        queue_size,
        delivery_rate: routes
            .iter()
            .map(|r| r.stats.delivered_last_minute())
            .sum::<u64>() as f64,
        connections: routes.iter().map(|r| r.open_connections() as u64).sum(),
        campaigns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::nodes::NodeRow;

    fn row(name: &str, campaigns: &[(&str, &str, u64)]) -> NodeRow {
        NodeRow {
            name: name.into(),
            host: "h".into(),
            pid: 1,
            version: "0".into(),
            started_at_ms: 0,
            last_seen_ms: 0,
            last_seen_age_seconds: 0.0,
            queue_size: 0,
            delivery_rate: 0.0,
            connections: 0,
            state: "live".into(),
            campaigns: campaigns
                .iter()
                .map(|(c, t, n)| CampaignCount {
                    campaign: (*c).into(),
                    tenant: (*t).into(),
                    queued: *n,
                })
                .collect(),
        }
    }

    #[test]
    fn campaigns_add_up_across_nodes_with_each_nodes_share() {
        let rows = [
            row("a", &[("spring", "acme", 3), ("autumn", "zeta", 1)]),
            row("b", &[("spring", "acme", 2)]),
            row("c", &[]),
        ];
        let all = fleet_campaigns(rows.iter());
        assert_eq!(
            all,
            [
                json!({"campaign": "autumn", "tenant": "zeta", "total": 1, "nodes": {"a": 1}}),
                json!({"campaign": "spring", "tenant": "acme", "total": 5, "nodes": {"a": 3, "b": 2}}),
            ]
        );
    }

    #[test]
    fn an_action_is_for_older_mail_of_its_selector_and_never_the_whole_queue() {
        let mut action = FleetAction {
            id: 1,
            action: "delete".into(),
            selector: Selector::default(),
            issued_by: "a".into(),
            issued_at_ms: 1_000,
        };
        assert!(
            filter_for(&action)
                .unwrap_err()
                .contains("no campaign or tenant")
        );
        action.selector.tenant = Some("acme".into());
        let filter = filter_for(&action).unwrap();
        assert_eq!(filter.tenant.as_deref(), Some("acme"));
        assert_eq!(filter.campaign, None);
        assert_eq!(filter.received_before_ms, Some(1_001));
        action.action = "purge".into();
        assert!(filter_for(&action).unwrap_err().contains("unknown action"));
    }
}
