//! The fleet's delivered index: what ties a bounce that reaches any node to
//! the message another node sent (issue #17).
//!
//! Each node keeps its own delivered index in its spool (the rows written
//! with each final outcome, `sendengine_queue::delivered`). With
//! `[cluster]`, every row that goes there is also offered to a bounded queue
//! here, once the spool has committed it; one task writes the queue to the
//! PostgreSQL table `delivered` in batches (one `INSERT ... unnest` per
//! batch), keyed by (node number, message id, recipient index), and deletes
//! this node's rows older than `[bounce_in] retain_days`. Nothing of this is
//! on the delivery path: offering a row is a `try_send`.
//!
//! A node's number (table `node_numbers`, one `serial` per node name) goes
//! into its VERP tags (`sendengine_bounces::verp::encode_for_node`): message
//! ids are unique per node only. The number is fetched at start (the daemon
//! waits up to [`NUMBER_WAIT`] for it before it opens its listeners) and
//! cached; until it is known (PostgreSQL down at start) the node signs standalone
//! tags, which the bounce intake still ties by (message id, recipient) when
//! one fleet row has them.
//!
//! PostgreSQL down: rows wait in the queue and the writer retries every
//! [`RETRY`]; a full queue drops rows (`sendengine_cluster_delivered_rows_total
//! {outcome="dropped"}`): a bounce for them reaching another node has no
//! tenant, as for a pruned message. Delivery never waits. A bounce intake
//! lookup that fails is a 451 for the reporting MTA, which tries again. Each
//! outage is logged once, when it starts, and once when it ends.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use sendengine_bounces::verp::Tagged;
use sendengine_queue::{Delivered, MessageId};
use tokio::sync::mpsc;

use super::Cluster;
use super::postgres::{Database, DbError, timed};

/// Rows waiting for PostgreSQL at most (~200 bytes each: ~20 MB).
pub const QUEUE_ROWS: usize = 100_000;
/// How long the daemon's start waits for this node's number.
pub const NUMBER_WAIT: Duration = Duration::from_secs(5);
/// Rows per INSERT.
const BATCH_ROWS: usize = 1_000;
/// How long the writer waits for more rows after the first of a batch.
const LINGER: Duration = Duration::from_millis(100);
/// Pause after a failed write (or node-number fetch) before the next try.
const RETRY: Duration = Duration::from_secs(1);
/// Times the server may refuse one batch (not a lost connection) before it
/// is dropped.
const MAX_REFUSALS: u32 = 3;
/// How often this node's expired rows are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Waits between lookups of a row that is not there yet (the sending node
/// writes its rows a moment after the outcome): ~3.5 s in all.
const LOOKUP_WAITS: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_millis(1000),
    Duration::from_millis(2000),
];

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS node_numbers (
    name text PRIMARY KEY,
    number serial UNIQUE NOT NULL
);
CREATE TABLE IF NOT EXISTS delivered (
    node integer NOT NULL,
    message_id bigint NOT NULL,
    rcpt bigint NOT NULL,
    tenant text NOT NULL,
    "group" text NOT NULL,
    channel text NOT NULL,
    campaign text NOT NULL,
    recipient text NOT NULL,
    header_message_id text NOT NULL,
    route text NOT NULL,
    time_ms bigint NOT NULL,
    PRIMARY KEY (node, message_id, rcpt)
);
CREATE INDEX IF NOT EXISTS delivered_by_message ON delivered (message_id, rcpt)
"#;

const INSERT: &str = r#"INSERT INTO delivered
    (node, message_id, rcpt, tenant, "group", channel, campaign, recipient,
     header_message_id, route, time_ms)
SELECT $1::integer, * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[],
    $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[])
ON CONFLICT (node, message_id, rcpt) DO NOTHING"#;

const COLUMNS: &str = r#"message_id, rcpt, tenant, "group", channel, campaign, recipient, header_message_id, route, time_ms"#;

/// What a fleet lookup of a bounce's tag found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Row(Delivered),
    /// Not in the fleet's index (pruned, never written, or dropped).
    Missing,
    /// The tag names a node number no node of this fleet has.
    UnknownNode(u32),
}

/// This node's part of the fleet's delivered index.
pub struct SharedDelivered {
    db: Arc<Database>,
    name: String,
    /// 0 until fetched (`serial` numbers start at 1).
    number: AtomicU32,
    queue: mpsc::Sender<Delivered>,
    /// Rows offered and not yet written (or dropped): what `drain` waits for.
    pending: AtomicUsize,
    /// Set while PostgreSQL fails, so an outage is logged once.
    down: AtomicBool,
    runtime: tokio::runtime::Handle,
}

impl SharedDelivered {
    /// For the daemon's start: with `[cluster]`, starts this node's part
    /// and waits (at most [`NUMBER_WAIT`]) for its number.
    pub async fn join(cluster: Option<&Cluster>, retain: Duration) -> Option<Arc<SharedDelivered>> {
        let shared = SharedDelivered::start(cluster?, retain);
        shared.wait_for_number(NUMBER_WAIT).await;
        Some(shared)
    }

    /// Starts fetching this node's number and the writer task (on the
    /// current runtime).
    pub fn start(cluster: &Cluster, retain: Duration) -> Arc<SharedDelivered> {
        let (queue, rows) = mpsc::channel(QUEUE_ROWS);
        let shared = Arc::new(SharedDelivered {
            db: cluster.db.clone(),
            name: cluster.settings.node.clone(),
            number: AtomicU32::new(0),
            pending: AtomicUsize::new(0),
            queue,
            down: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
        });
        tokio::spawn(shared.clone().run(rows, retain));
        shared
    }

    /// Waits (at most `within`) for this node's number, so that a node
    /// starting with PostgreSQL up signs fleet tags from its first message.
    pub async fn wait_for_number(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.node().is_none() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// This node's number, once known: what its VERP tags carry.
    pub fn node(&self) -> Option<u32> {
        Some(self.number.load(Ordering::Relaxed)).filter(|&n| n != 0)
    }

    /// Queues rows the spool has committed; never waits (a full queue
    /// drops them and counts them).
    pub fn offer(&self, rows: Vec<Delivered>) {
        for row in rows {
            match self.queue.try_send(row) {
                Ok(()) => {
                    self.pending.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => rows_counter("dropped").increment(1),
            }
        }
    }

    /// At shutdown: waits until every row offered so far is written, or
    /// `deadline`; returns how many were not (they stay in the local
    /// delivered index only, so bounces for them at other nodes are not tied).
    pub async fn drain(&self, deadline: tokio::time::Instant) -> usize {
        loop {
            let pending = self.pending.load(Ordering::Relaxed);
            if pending == 0 || tokio::time::Instant::now() >= deadline {
                return pending;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The row a bounce's tag names, from the fleet's index; waits a few
    /// seconds for a row that is not there yet. Blocking: for the bounce
    /// intake, which runs on the blocking pool.
    pub fn lookup_blocking(&self, tagged: Tagged) -> Result<Found, DbError> {
        self.runtime.block_on(self.lookup(tagged))
    }

    async fn lookup(&self, tagged: Tagged) -> Result<Found, DbError> {
        let mut waits = LOOKUP_WAITS.iter();
        let found = loop {
            let found = self.note(self.lookup_once(tagged).await)?;
            match (found, waits.next()) {
                (Found::Missing, Some(wait)) => tokio::time::sleep(*wait).await,
                (found, _) => break found,
            }
        };
        let result = match found {
            Found::Row(_) => "found",
            Found::Missing => "missing",
            Found::UnknownNode(_) => "unknown-node",
        };
        ::metrics::counter!("sendengine_cluster_bounce_lookups_total", "result" => result)
            .increment(1);
        Ok(found)
    }

    /// One lookup: by node when the tag names one, else by (message id,
    /// recipient) when exactly one node has that pair.
    async fn lookup_once(&self, tagged: Tagged) -> Result<Found, DbError> {
        let client = self.db.client().await?;
        let (id, rcpt) = (tagged.id as i64, i64::from(tagged.rcpt));
        let rows = match tagged.node {
            Some(node) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM delivered WHERE node = $1 AND message_id = $2 AND rcpt = $3"
                );
                timed(client.query(&sql, &[&(node as i32), &id, &rcpt])).await?
            }
            None => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM delivered WHERE message_id = $1 AND rcpt = $2 LIMIT 2"
                );
                timed(client.query(&sql, &[&id, &rcpt])).await?
            }
        };
        if let [row] = rows.as_slice() {
            return Ok(Found::Row(delivered_of(row)?));
        }
        let Some(node) = tagged.node.filter(|_| rows.is_empty()) else {
            return Ok(Found::Missing);
        };
        let known = timed(client.query_opt(
            "SELECT 1 FROM node_numbers WHERE number = $1",
            &[&(node as i32)],
        ))
        .await?;
        Ok(match known {
            Some(_) => Found::Missing,
            None => Found::UnknownNode(node),
        })
    }

    /// Logs the start and the end of an outage, once each.
    fn note<T>(&self, result: Result<T, DbError>) -> Result<T, DbError> {
        match &result {
            Ok(_) if self.down.swap(false, Ordering::Relaxed) => {
                log::info!("cluster: the delivered index in PostgreSQL is reachable again");
            }
            Err(e) if !self.down.swap(true, Ordering::Relaxed) => {
                log::warn!(
                    "cluster: the delivered index in PostgreSQL failed ({e}); rows wait (up to {QUEUE_ROWS}) and bounces for other nodes' mail are answered 451 until it is back"
                );
            }
            _ => {}
        }
        if result.is_err() {
            ::metrics::counter!("sendengine_cluster_database_errors_total", "part" => "delivered")
                .increment(1);
        }
        result
    }

    /// The writer: this node's number first, then batches, forever.
    async fn run(self: Arc<Self>, mut rows: mpsc::Receiver<Delivered>, retain: Duration) {
        let number = self.fetch_number().await;
        // What expired while this node was down goes first.
        self.prune(number, retain).await;
        let mut pruned_at = tokio::time::Instant::now();
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        loop {
            let Ok(wait) = tokio::time::timeout(PRUNE_EVERY, rows.recv_many(&mut batch, 1)).await
            else {
                self.prune(number, retain).await;
                pruned_at = tokio::time::Instant::now();
                continue;
            };
            if wait == 0 {
                return;
            }
            tokio::time::sleep(LINGER).await;
            while batch.len() < BATCH_ROWS
                && let Ok(row) = rows.try_recv()
            {
                batch.push(row);
            }
            self.write(number, &batch).await;
            self.pending.fetch_sub(batch.len(), Ordering::Relaxed);
            ::metrics::gauge!("sendengine_cluster_delivered_backlog").set(rows.len() as f64);
            batch.clear();
            if pruned_at.elapsed() >= PRUNE_EVERY {
                self.prune(number, retain).await;
                pruned_at = tokio::time::Instant::now();
            }
        }
    }

    /// Registers this node's name (first start) and caches its number;
    /// retried until PostgreSQL answers.
    async fn fetch_number(&self) -> u32 {
        loop {
            match self.note(self.number_once().await) {
                Ok(number) => {
                    self.number.store(number, Ordering::Relaxed);
                    log::info!(
                        "cluster: node {:?} is number {number} in VERP tags",
                        self.name
                    );
                    return number;
                }
                Err(_) => tokio::time::sleep(RETRY).await,
            }
        }
    }

    async fn number_once(&self) -> Result<u32, DbError> {
        self.db.migrate(SCHEMA).await?;
        let client = self.db.client().await?;
        let insert = "INSERT INTO node_numbers (name) VALUES ($1) ON CONFLICT (name) DO NOTHING";
        if timed(client.query_opt(
            "SELECT number FROM node_numbers WHERE name = $1",
            &[&self.name],
        ))
        .await?
        .is_none()
        {
            timed(client.execute(insert, &[&self.name])).await?;
        }
        let row = timed(client.query_one(
            "SELECT number FROM node_numbers WHERE name = $1",
            &[&self.name],
        ))
        .await?;
        Ok(row.try_get::<_, i32>(0)? as u32)
    }

    /// Writes one batch, retrying while PostgreSQL is unreachable (new rows
    /// wait in the bounded queue meanwhile). A batch the server itself
    /// refuses [`MAX_REFUSALS`] times is dropped and counted, so that it
    /// cannot stop the index for good.
    async fn write(&self, number: u32, batch: &[Delivered]) {
        let mut refusals = 0;
        loop {
            match self.note(self.insert(number, batch).await) {
                Ok(_) => return rows_counter("written").increment(batch.len() as u64),
                Err(DbError::Postgres(e)) if e.as_db_error().is_some() => {
                    refusals += 1;
                    if refusals == MAX_REFUSALS {
                        log::error!(
                            "cluster: PostgreSQL refused {} delivered-index rows: {e}; dropped",
                            batch.len()
                        );
                        return rows_counter("dropped").increment(batch.len() as u64);
                    }
                }
                Err(_) => {}
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    async fn insert(&self, number: u32, batch: &[Delivered]) -> Result<u64, DbError> {
        let client = self.db.client().await?;
        let ids: Vec<i64> = batch.iter().map(|d| d.id as i64).collect();
        let rcpts: Vec<i64> = batch.iter().map(|d| i64::from(d.rcpt)).collect();
        let text = |f: fn(&Delivered) -> &String| -> Vec<Cow<'_, str>> {
            batch.iter().map(|d| pg_text(f(d))).collect()
        };
        let times: Vec<i64> = batch.iter().map(|d| d.time_ms as i64).collect();
        let (tenants, groups, channels) = (
            text(|d| &d.tenant),
            text(|d| &d.group),
            text(|d| &d.channel),
        );
        let (campaigns, recipients) = (text(|d| &d.campaign), text(|d| &d.recipient));
        let (header_ids, routes) = (text(|d| &d.header_message_id), text(|d| &d.route));
        let node = number as i32;
        timed(client.execute(
            INSERT,
            &[
                &node,
                &ids,
                &rcpts,
                &tenants,
                &groups,
                &channels,
                &campaigns,
                &recipients,
                &header_ids,
                &routes,
                &times,
            ],
        ))
        .await
    }

    /// Deletes this node's rows of messages received before the retention
    /// (message ids start with their reception time, so the primary key
    /// serves the range). A failure waits for the next round.
    async fn prune(&self, number: u32, retain: Duration) {
        let retain_ms = u64::try_from(retain.as_millis()).unwrap_or(u64::MAX);
        let cutoff_ms = crate::timefmt::now_ms().saturating_sub(retain_ms);
        let cutoff: MessageId = sendengine_queue::first_id_at(cutoff_ms);
        let deleting = async {
            let client = self.db.client().await?;
            timed(client.execute(
                "DELETE FROM delivered WHERE node = $1 AND message_id < $2",
                &[&(number as i32), &(cutoff as i64)],
            ))
            .await
        };
        if let Ok(deleted) = self.note(deleting.await) {
            rows_counter("pruned").increment(deleted);
        }
    }
}

/// PostgreSQL's text cannot hold NUL (a header could): dropped, so one
/// odd row cannot make its whole batch fail forever.
fn pg_text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', ""))
    } else {
        Cow::Borrowed(s)
    }
}

fn rows_counter(outcome: &'static str) -> ::metrics::Counter {
    ::metrics::counter!("sendengine_cluster_delivered_rows_total", "outcome" => outcome)
}

fn delivered_of(row: &tokio_postgres::Row) -> Result<Delivered, DbError> {
    Ok(Delivered {
        id: row.try_get::<_, i64>(0)? as u64,
        rcpt: u32::try_from(row.try_get::<_, i64>(1)?).unwrap_or(u32::MAX),
        tenant: row.try_get(2)?,
        group: row.try_get(3)?,
        channel: row.try_get(4)?,
        campaign: row.try_get(5)?,
        recipient: row.try_get(6)?,
        header_message_id: row.try_get(7)?,
        route: row.try_get(8)?,
        time_ms: row.try_get::<_, i64>(9)? as u64,
    })
}
