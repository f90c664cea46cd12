//! Fleet-wide queue actions: `suspend`, `resume`, `bounce` and `delete`
//! by campaign and/or tenant, issued on any node and applied by every node
//! to its own spool.
//!
//! An action is a row of `fleet_actions` plus a NOTIFY; each node applies,
//! in id order, every action it has no row for in `fleet_action_results`,
//! and writes its result there. It looks when notified, after every
//! (re)connect of its LISTEN connection, and every [`POLL`] in case a
//! notice was lost. So a node that was down (or cut off from PostgreSQL)
//! applies what it missed when it is back.
//!
//! An action applies to the mail a node received *before the action was
//! issued* (the database's clock), whenever the node applies it: a node
//! that was down bounces or deletes the old mail of the campaign when it
//! returns, as the operator asked, but never touches mail that arrived
//! after the order; replaying an action is harmless. Like `queue suspend`,
//! a suspend holds the mail queued then, not mail injected later.
//!
//! When PostgreSQL is down, issuing fails with a clear error and nodes
//! apply nothing until it is back; mail keeps flowing meanwhile.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::nodes::Health;
use super::postgres::{Database, DbError, Notice, listen, timed};

/// The NOTIFY channel of new actions.
pub const CHANNEL: &str = "sendengine_fleet_actions";
/// How often a node looks for actions it missed, notice or not.
pub const POLL: Duration = Duration::from_secs(5);
/// The actions that exist.
pub const ACTIONS: &[&str] = &["suspend", "resume", "bounce", "delete"];
/// Actions fetched per query while catching up.
const BATCH: i64 = 100;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS fleet_actions (
    id bigserial PRIMARY KEY,
    action text NOT NULL,
    selector jsonb NOT NULL,
    issued_by text NOT NULL,
    issued_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS fleet_action_results (
    id bigint NOT NULL REFERENCES fleet_actions (id),
    node text NOT NULL,
    result jsonb NOT NULL,
    done_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, node)
)";

/// Which mail an action is for; at least one field is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// An issued action, as a node applies it.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetAction {
    pub id: i64,
    pub action: String,
    pub selector: Selector,
    pub issued_by: String,
    /// The action is for mail received before this (unix ms).
    pub issued_at_ms: u64,
}

/// One node's answer to an action; `None` while it has not applied it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeResult {
    pub node: String,
    pub result: Option<Value>,
}

/// Creates the tables (once per fleet, idempotent).
pub async fn migrate(db: &Database) -> Result<(), DbError> {
    db.migrate(SCHEMA).await
}

/// Records an action and notifies every node; returns it.
pub async fn issue(
    db: &Database,
    action: &str,
    selector: &Selector,
    issued_by: &str,
) -> Result<FleetAction, DbError> {
    migrate(db).await?;
    let client = db.client().await?;
    let selector_text = serde_json::to_string(selector).unwrap_or_else(|_| "{}".into());
    let row = timed(client.query_one(
        "INSERT INTO fleet_actions (action, selector, issued_by) VALUES ($1, $2::text::jsonb, $3) \
         RETURNING id, (extract(epoch FROM issued_at) * 1000)::int8",
        &[&action, &selector_text, &issued_by],
    ))
    .await?;
    let id: i64 = row.get(0);
    // A lost notice only delays the action until the nodes' next poll.
    let payload = id.to_string();
    let notify = "SELECT pg_notify($1, $2)";
    if let Err(e) = timed(client.execute(notify, &[&CHANNEL, &payload])).await {
        log::warn!("cluster: fleet action {id} recorded but not notified ({e}); nodes poll for it");
    }
    Ok(FleetAction {
        id,
        action: action.to_owned(),
        selector: selector.clone(),
        issued_by: issued_by.to_owned(),
        issued_at_ms: row.get::<_, i64>(1).max(0) as u64,
    })
}

/// Waits until every node of `nodes` has answered action `id`, or until
/// `wait` has passed; each node's result, or `None` for one that has not.
pub async fn results(
    db: &Database,
    id: i64,
    nodes: &[String],
    wait: Duration,
) -> Result<Vec<NodeResult>, DbError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let rows = db
            .repeatable(|client| async move {
                timed(client.query(
                    "SELECT node, result::text FROM fleet_action_results WHERE id = $1",
                    &[&id],
                ))
                .await
            })
            .await?;
        let answered: Vec<(String, Value)> = rows
            .iter()
            .map(|r| {
                let text: String = r.get(1);
                (r.get(0), serde_json::from_str(&text).unwrap_or(Value::Null))
            })
            .collect();
        let mut names: Vec<String> = nodes.to_vec();
        names.extend(answered.iter().map(|(n, _)| n.clone()));
        names.sort();
        names.dedup();
        let all: Vec<NodeResult> = names
            .into_iter()
            .map(|node| NodeResult {
                result: answered
                    .iter()
                    .find(|(n, _)| *n == node)
                    .map(|(_, r)| r.clone()),
                node,
            })
            .collect();
        if all.iter().all(|r| r.result.is_some()) || tokio::time::Instant::now() >= deadline {
            return Ok(all);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Applies, on node `node`, every action it has not applied yet, calling
/// `apply` for each (off the async workers: it walks the spool), until
/// `shutdown` is set.
pub async fn run<F>(db: Arc<Database>, node: String, apply: F, mut shutdown: watch::Receiver<bool>)
where
    F: Fn(&FleetAction) -> Value + Send + Sync + 'static,
{
    let apply = Arc::new(apply);
    let (tx, mut notices) = mpsc::channel(16);
    listen(db.url().to_owned(), vec![CHANNEL.to_owned()], tx);
    let mut health = Health::new("fleet_actions");
    let mut poll = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            notice = notices.recv() => {
                if notice.is_none() {
                    break;
                }
                // Several notices at once need one look.
                while let Ok(Notice::Notify { .. } | Notice::Resync) = notices.try_recv() {}
            }
            _ = poll.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        match catch_up(&db, &node, &apply).await {
            Ok(()) => health.ok(),
            Err(e) => health.failed(&e),
        }
    }
}

/// Applies the actions `node` has no result for, oldest first.
async fn catch_up<F>(db: &Database, node: &str, apply: &Arc<F>) -> Result<(), DbError>
where
    F: Fn(&FleetAction) -> Value + Send + Sync + 'static,
{
    migrate(db).await?;
    loop {
        let pending = pending(db, node).await?;
        if pending.is_empty() {
            return Ok(());
        }
        for action in pending {
            let result = {
                let apply = apply.clone();
                let action = action.clone();
                tokio::task::spawn_blocking(move || apply(&action))
                    .await
                    .unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}))
            };
            log::info!(
                "cluster: applied fleet action {} ({} {}) from {}: {result}",
                action.id,
                action.action,
                serde_json::to_string(&action.selector).unwrap_or_default(),
                action.issued_by
            );
            record(db, action.id, node, &result).await?;
        }
    }
}

async fn pending(db: &Database, node: &str) -> Result<Vec<FleetAction>, DbError> {
    let rows = db
        .repeatable(|client| async move {
            timed(client.query(
                "SELECT a.id, a.action, a.selector::text, a.issued_by,
                        (extract(epoch FROM a.issued_at) * 1000)::int8
                 FROM fleet_actions a
                 WHERE NOT EXISTS (SELECT 1 FROM fleet_action_results r \
                                   WHERE r.id = a.id AND r.node = $1)
                 ORDER BY a.id LIMIT $2",
                &[&node, &BATCH],
            ))
            .await
        })
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let selector: String = r.get(2);
            FleetAction {
                id: r.get(0),
                action: r.get(1),
                selector: serde_json::from_str(&selector).unwrap_or_default(),
                issued_by: r.get(3),
                issued_at_ms: r.get::<_, i64>(4).max(0) as u64,
            }
        })
        .collect())
}

async fn record(db: &Database, id: i64, node: &str, result: &Value) -> Result<(), DbError> {
    let client = db.client().await?;
    timed(client.execute(
        "INSERT INTO fleet_action_results (id, node, result) VALUES ($1, $2, $3::text::jsonb) \
         ON CONFLICT (id, node) DO NOTHING",
        &[&id, &node, &result.to_string()],
    ))
    .await?;
    Ok(())
}
