//! Nodes know each other: every node keeps one row of the `nodes` table
//! current (a heartbeat each second: version, up since, queue size,
//! delivery rate, connections, active campaigns) and reads how many nodes
//! are alive into [`FleetView`], which fleet-wide limits are divided by
//! when a node must enforce its share alone.
//!
//! A node is *live* while its row says `running` and was written within
//! [`LIVE_WINDOW_SECS`] (the database's clock, so hosts' clocks need not
//! agree). A graceful stop marks the row `stopped`; a killed node stops
//! writing and shows as `lost` once the window has passed.
//!
//! One name, one node: at start a node takes its row only if it is free
//! (stopped, aged out, or its own); if another instance is still writing
//! it, the node refuses to start. A row that looks live but stops moving
//! (this node's previous life, killed a moment ago) is taken over once it
//! has aged out.
//!
//! When PostgreSQL is down the heartbeat fails, which is logged once (and
//! once more when it is back), counted in
//! `sendengine_cluster_database_failures_total` and shown by the gauge
//! `sendengine_cluster_database_up`; the node keeps its last count of live
//! nodes and goes on delivering. Nothing on the mail path waits for it.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::FleetView;
use super::postgres::{Database, DbError, timed};

/// How often a node writes its row.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A running node not heard from for this long is lost.
pub const LIVE_WINDOW_SECS: i64 = 5;
/// Active campaigns a node reports at most (the busiest first).
pub const MAX_CAMPAIGNS: usize = 200;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS nodes (
    name text PRIMARY KEY,
    instance text NOT NULL,
    host text NOT NULL,
    pid bigint NOT NULL,
    version text NOT NULL,
    started_at timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    queue_size bigint NOT NULL DEFAULT 0,
    delivery_rate double precision NOT NULL DEFAULT 0,
    connections bigint NOT NULL DEFAULT 0,
    campaigns jsonb NOT NULL DEFAULT '[]',
    state text NOT NULL
)";

/// Writes this node's row unless another live instance holds the name;
/// one row when written, none when the name is taken.
const UPSERT: &str = "INSERT INTO nodes AS n (name, instance, host, pid, version, started_at,
        last_seen, queue_size, delivery_rate, connections, campaigns, state)
    VALUES ($1, $2, $3, $4, $5, to_timestamp($6::float8 / 1000), now(), $7, $8, $9,
        $10::text::jsonb, 'running')
    ON CONFLICT (name) DO UPDATE SET instance = EXCLUDED.instance, host = EXCLUDED.host,
        pid = EXCLUDED.pid, version = EXCLUDED.version, started_at = EXCLUDED.started_at,
        last_seen = now(), queue_size = EXCLUDED.queue_size,
        delivery_rate = EXCLUDED.delivery_rate, connections = EXCLUDED.connections,
        campaigns = EXCLUDED.campaigns, state = 'running'
    WHERE n.instance = EXCLUDED.instance OR n.state <> 'running'
        OR n.last_seen < now() - make_interval(secs => $11)";

/// Who this node is; `instance` tells two lives of one name apart.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub instance: String,
    pub host: String,
    pub pid: u32,
    pub started_at_ms: u64,
}

impl Identity {
    pub fn new(name: &str, started_at_ms: u64) -> Identity {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let pid = std::process::id();
        Identity {
            name: name.to_owned(),
            instance: format!("{host}:{pid}:{started_at_ms}"),
            host,
            pid,
            started_at_ms,
        }
    }
}

/// What a node reports about itself each heartbeat.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Unfinished recipients in the spool.
    pub queue_size: u64,
    /// Recipients delivered in the last minute.
    pub delivery_rate: f64,
    /// Delivery connections open.
    pub connections: u64,
    pub campaigns: Vec<CampaignCount>,
}

/// A campaign with mail in flight or ready to go on one node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CampaignCount {
    pub campaign: String,
    /// The tenant(s) whose mail it is, comma-separated.
    pub tenant: String,
    pub queued: u64,
}

/// A row of `nodes` as `fleet status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    pub name: String,
    pub host: String,
    pub pid: i64,
    pub version: String,
    pub started_at_ms: i64,
    pub last_seen_ms: i64,
    /// Seconds since the row was written, by the database's clock.
    pub last_seen_age_seconds: f64,
    pub queue_size: i64,
    pub delivery_rate: f64,
    pub connections: i64,
    /// `live`, `lost` (running, but silent past the window) or `stopped`.
    pub state: String,
    #[serde(skip)]
    pub campaigns: Vec<CampaignCount>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "node name `{name}` is in use by a running node (host {host}, pid {pid}, seen {age:.1}s ago): \
         give each node its own [cluster] node name, or stop the other one"
    )]
    NameInUse {
        name: String,
        host: String,
        pid: i64,
        age: f64,
    },
    #[error("{0}")]
    Db(#[from] DbError),
}

/// Creates the table (once per fleet, idempotent).
pub async fn migrate(db: &Database) -> Result<(), DbError> {
    db.migrate(SCHEMA).await
}

/// Takes this node's row at start. A row held by another instance that
/// still moves is a refusal; one that stops moving is waited out.
pub async fn claim(db: &Database, me: &Identity) -> Result<(), ClaimError> {
    migrate(db).await?;
    let mut first_seen: Option<i64> = None;
    loop {
        if write(db, me, &Sample::default()).await? {
            return Ok(());
        }
        let Some(other) = read_row(db, &me.name).await? else {
            continue;
        };
        match first_seen {
            Some(before) if other.last_seen_ms > before => {
                return Err(ClaimError::NameInUse {
                    name: me.name.clone(),
                    host: other.host,
                    pid: other.pid,
                    age: other.last_seen_age_seconds,
                });
            }
            Some(_) => {}
            None => {
                log::warn!(
                    "cluster: node name `{}` was last written {:.1}s ago by host {} pid {}; \
                     waiting to see whether it is still alive",
                    me.name,
                    other.last_seen_age_seconds,
                    other.host,
                    other.pid
                );
                first_seen = Some(other.last_seen_ms);
            }
        }
        tokio::time::sleep(HEARTBEAT + HEARTBEAT / 2).await;
    }
}

/// Writes this node's row; false when another live instance holds the name.
async fn write(db: &Database, me: &Identity, sample: &Sample) -> Result<bool, DbError> {
    let client = db.client().await?;
    let campaigns = serde_json::to_string(&sample.campaigns).unwrap_or_else(|_| "[]".into());
    let written = timed(client.execute(
        UPSERT,
        &[
            &me.name,
            &me.instance,
            &me.host,
            &i64::from(me.pid),
            &env!("CARGO_PKG_VERSION"),
            &(me.started_at_ms as f64),
            &(sample.queue_size as i64),
            &sample.delivery_rate,
            &(sample.connections as i64),
            &campaigns,
            &(LIVE_WINDOW_SECS as f64),
        ],
    ))
    .await?;
    Ok(written == 1)
}

/// Nodes seen alive, this one included.
async fn count_live(db: &Database) -> Result<usize, DbError> {
    let row = db
        .repeatable(|client| async move {
            timed(client.query_one(
                "SELECT count(*) FROM nodes WHERE state = 'running' \
                 AND last_seen >= now() - make_interval(secs => $1)",
                &[&(LIVE_WINDOW_SECS as f64)],
            ))
            .await
        })
        .await?;
    Ok(row.get::<_, i64>(0).max(0) as usize)
}

/// The names of the live nodes, in order.
pub async fn live_names(db: &Database) -> Result<Vec<String>, DbError> {
    Ok(read(db, false)
        .await?
        .into_iter()
        .map(|row| row.name)
        .collect())
}

const SELECT_ROWS: &str = "SELECT name, host, pid, version,
        (extract(epoch FROM started_at) * 1000)::int8,
        (extract(epoch FROM last_seen) * 1000)::int8,
        extract(epoch FROM now() - last_seen)::float8,
        queue_size, delivery_rate, connections, campaigns::text,
        CASE WHEN state <> 'running' THEN state
             WHEN last_seen >= now() - make_interval(secs => $1) THEN 'live'
             ELSE 'lost' END AS shown_state
    FROM nodes";

/// Every node (`all`) or the live ones, by name.
pub async fn read(db: &Database, all: bool) -> Result<Vec<NodeRow>, DbError> {
    let sql = format!(
        "SELECT * FROM ({SELECT_ROWS}) r WHERE $2::bool OR r.shown_state = 'live' ORDER BY r.name"
    );
    let sql = sql.as_str();
    let rows = db
        .repeatable(|client| async move {
            timed(client.query(sql, &[&(LIVE_WINDOW_SECS as f64), &all])).await
        })
        .await?;
    Ok(rows.iter().map(node_row).collect())
}

async fn read_row(db: &Database, name: &str) -> Result<Option<NodeRow>, DbError> {
    let sql = format!("{SELECT_ROWS} WHERE name = $2");
    let sql = sql.as_str();
    let row = db
        .repeatable(|client| async move {
            timed(client.query_opt(sql, &[&(LIVE_WINDOW_SECS as f64), &name])).await
        })
        .await?;
    Ok(row.as_ref().map(node_row))
}

fn node_row(row: &tokio_postgres::Row) -> NodeRow {
    let campaigns: String = row.get(10);
    NodeRow {
        name: row.get(0),
        host: row.get(1),
        pid: row.get(2),
        version: row.get(3),
        started_at_ms: row.get(4),
        last_seen_ms: row.get(5),
        last_seen_age_seconds: row.get(6),
        queue_size: row.get(7),
        delivery_rate: row.get(8),
        connections: row.get(9),
        campaigns: serde_json::from_str(&campaigns).unwrap_or_default(),
        state: row.get(11),
    }
}

/// What `forget` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Forgotten {
    /// The row is gone; it was `stopped` or `lost`.
    Removed(String),
    /// The node is live: its row stays.
    Live,
    /// No row has that name.
    Unknown,
}

/// Deletes node `name`'s row unless the node is live. A node that runs
/// again writes a new row with its next heartbeat.
pub async fn forget(db: &Database, name: &str) -> Result<Forgotten, DbError> {
    let sql = format!(
        "DELETE FROM nodes n USING ({SELECT_ROWS}) r \
         WHERE n.name = $2 AND r.name = n.name AND r.shown_state <> 'live' \
         RETURNING r.shown_state"
    );
    let sql = sql.as_str();
    let removed = db
        .repeatable(|client| async move {
            timed(client.query_opt(sql, &[&(LIVE_WINDOW_SECS as f64), &name])).await
        })
        .await?;
    if let Some(row) = removed {
        return Ok(Forgotten::Removed(row.get(0)));
    }
    Ok(match read_row(db, name).await? {
        Some(_) => Forgotten::Live,
        None => Forgotten::Unknown,
    })
}

/// Marks the row stopped (graceful shutdown), if it is still this node's.
async fn mark_stopped(db: &Database, me: &Identity) -> Result<(), DbError> {
    let client = db.client().await?;
    timed(client.execute(
        "UPDATE nodes SET state = 'stopped', last_seen = now() \
         WHERE name = $1 AND instance = $2",
        &[&me.name, &me.instance],
    ))
    .await?;
    Ok(())
}

/// Writes the row every [`HEARTBEAT`] with what `sample` reports, keeps
/// `fleet` current, and marks the row stopped when `shutdown` is set.
pub async fn heartbeat<F, Fut>(
    db: Arc<Database>,
    fleet: Arc<FleetView>,
    me: Identity,
    mut sample: F,
    mut shutdown: watch::Receiver<bool>,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Sample>,
{
    let mut health = Health::new("heartbeat");
    let mut name_taken = false;
    let mut migrated = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        let now = sample().await;
        let beat = async {
            if !migrated {
                migrate(&db).await?;
                migrated = true;
            }
            let written = write(&db, &me, &now).await?;
            Ok::<_, DbError>((written, count_live(&db).await?))
        };
        match beat.await {
            Ok((written, live)) => {
                health.ok();
                fleet.set_live_nodes(live);
                if !written && !name_taken {
                    log::error!(
                        "cluster: another running node writes under the name `{}`: this node's \
                         heartbeat is not recorded, so fleet status and fleet actions miss it; \
                         give each node its own [cluster] node name",
                        me.name
                    );
                }
                name_taken = !written;
                ::metrics::gauge!("sendengine_cluster_node_name_conflict")
                    .set(f64::from(u8::from(name_taken)));
            }
            Err(e) => health.failed(&e),
        }
    }
    if let Err(e) = mark_stopped(&db, &me).await {
        log::warn!("cluster: could not mark node `{}` stopped: {e}", me.name);
    }
}

/// Logs a failing database link once, and once when it is back; keeps
/// the `sendengine_cluster_database_up` gauge and a failure counter.
pub(crate) struct Health {
    what: &'static str,
    down: bool,
}

impl Health {
    pub(crate) fn new(what: &'static str) -> Health {
        Health { what, down: false }
    }

    pub(crate) fn ok(&mut self) {
        if self.down {
            log::warn!("cluster: {} works again", self.what);
            self.down = false;
        }
        ::metrics::gauge!("sendengine_cluster_database_up", "task" => self.what).set(1.0);
    }

    pub(crate) fn failed(&mut self, e: &DbError) {
        if !self.down {
            log::warn!(
                "cluster: {} failed ({e}); retrying, mail keeps flowing",
                self.what
            );
            self.down = true;
        }
        ::metrics::gauge!("sendengine_cluster_database_up", "task" => self.what).set(0.0);
        ::metrics::counter!("sendengine_cluster_database_failures_total", "task" => self.what)
            .increment(1);
    }
}
