//! The suppression lists in PostgreSQL, shared by the fleet.
//!
//! Table `suppressions(tenant, address, reason, source, created_at,
//! version, deleted, node)`: one row per listed address (tenant "" is the
//! global list), a removal is a tombstone, `version` comes from one
//! sequence. Writes go through `put_suppressions()` under an advisory
//! lock, so versions commit in order and "newer than mine" misses nothing.
//!
//! Writers: an admin `suppression add/remove` is committed here before the
//! node answers (and fails, changing nothing, if PostgreSQL is down). Hard
//! bounces and bounce intake suppress locally first, as standalone, and
//! then [`share`] the entry: a bounded queue one task flushes in batches,
//! off the delivery path. While PostgreSQL is down that task keeps its
//! batch and retries; when the queue is full, new entries stay local
//! (`sendengine_cluster_suppressions_dropped_total`, logged once).
//!
//! Every node applies the rows of the others to its spool on the NOTIFY
//! (`catch_up`), so the lookup at admission stays a local read.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sendengine_queue::{Spool, SpoolError};
use tokio::sync::{mpsc, watch};

use super::Cluster;
use super::postgres::{Database, DbError, timed};
use super::shared::{HEALTH, Local, Progress, SyncError};

pub const CHANNEL: &str = "sendengine_suppressions";

/// Entries waiting to be shared; beyond this they stay local.
const FEED_CAPACITY: usize = 10_000;
/// Entries written to PostgreSQL in one statement.
const BATCH: usize = 500;
/// Rows read per query when catching up (more than a batch: see `catch_up`).
const PAGE: i64 = 1_000;
/// Pause before writing a batch again after PostgreSQL failed.
const RETRY: Duration = Duration::from_secs(1);
const _: () = assert!((BATCH as i64) < PAGE, "a page must hold a whole batch");

pub const SCHEMA: &str = r#"
CREATE SEQUENCE IF NOT EXISTS suppressions_version;
CREATE TABLE IF NOT EXISTS suppressions (
    tenant text NOT NULL,
    address text NOT NULL,
    reason text NOT NULL,
    source text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    version bigint NOT NULL,
    deleted boolean NOT NULL DEFAULT false,
    node text NOT NULL,
    PRIMARY KEY (tenant, address)
);
CREATE INDEX IF NOT EXISTS suppressions_by_version ON suppressions (version);
CREATE OR REPLACE FUNCTION put_suppressions(tenants text[], addresses text[], reasons text[],
    sources text[], removes boolean[], by_node text)
RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    v bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(8319679514894758771);
    v := nextval('suppressions_version');
    INSERT INTO suppressions AS s (tenant, address, reason, source, version, deleted, node)
        SELECT t, a, r, src, v, d, by_node
        FROM unnest(tenants, addresses, reasons, sources, removes) AS x(t, a, r, src, d)
    ON CONFLICT (tenant, address) DO UPDATE
        SET reason = excluded.reason, source = excluded.source, version = excluded.version,
            deleted = excluded.deleted, node = excluded.node, created_at = now();
    PERFORM pg_notify('sendengine_suppressions', v::text);
    RETURN v;
END
$fn$
"#;

/// One change to a suppression list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// "" for the global list.
    pub tenant: String,
    /// Normalized as the spool keys it.
    pub address: String,
    pub reason: String,
    pub source: String,
    /// A removal (a tombstone in PostgreSQL).
    pub remove: bool,
}

impl Entry {
    pub fn add(
        tenant: &str,
        address: &str,
        reason: &str,
        source: &str,
    ) -> Result<Entry, SpoolError> {
        Ok(Entry {
            tenant: tenant.to_owned(),
            address: sendengine_queue::normalize_address(address)?,
            reason: reason.to_owned(),
            source: source.to_owned(),
            remove: false,
        })
    }

    pub fn remove(tenant: &str, address: &str) -> Result<Entry, SpoolError> {
        Ok(Entry {
            remove: true,
            ..Entry::add(tenant, address, "", "")?
        })
    }
}

/// The last entry of each (tenant, address): one statement may not write
/// a row twice.
fn deduped(entries: &[Entry]) -> Vec<&Entry> {
    let last: HashMap<(&str, &str), usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| ((e.tenant.as_str(), e.address.as_str()), i))
        .collect();
    entries
        .iter()
        .enumerate()
        .filter(|(i, e)| last[&(e.tenant.as_str(), e.address.as_str())] == *i)
        .map(|(_, e)| e)
        .collect()
}

/// Writes `entries` as one version; returns it.
pub async fn put(db: &Database, node: &str, entries: &[Entry]) -> Result<i64, DbError> {
    let entries = deduped(entries);
    let column = |f: fn(&Entry) -> &str| entries.iter().map(|e| f(e)).collect::<Vec<&str>>();
    let tenants = column(|e| &e.tenant);
    let addresses = column(|e| &e.address);
    let reasons = column(|e| &e.reason);
    let sources = column(|e| &e.source);
    let removes: Vec<bool> = entries.iter().map(|e| e.remove).collect();
    let (tenants, addresses, reasons, sources, removes) =
        (&tenants, &addresses, &reasons, &sources, &removes);
    // Repeatable: writing the same entries again leaves the same list.
    let row = db
        .repeatable(|client| async move {
            timed(client.query_one(
                "SELECT put_suppressions($1, $2, $3, $4, $5, $6)",
                &[tenants, addresses, reasons, sources, removes, &node],
            ))
            .await
        })
        .await?;
    Ok(row.get(0))
}

/// An admin change, committed fleet-wide before the node applies it; the
/// error is the sentence the operator sees.
pub async fn commit(cluster: &Cluster, entry: Entry) -> Result<(), String> {
    match put(&cluster.db, &cluster.settings.node, &[entry]).await {
        Ok(_) => {
            HEALTH.up();
            Ok(())
        }
        Err(e) => {
            HEALTH.down("committing a suppression", &e);
            Err(format!(
                "the cluster database is unreachable ({e}); the suppression list was not changed on any node"
            ))
        }
    }
}

static FEED: OnceLock<mpsc::Sender<Entry>> = OnceLock::new();
static FEED_FULL_LOGGED: AtomicBool = AtomicBool::new(false);

/// The queue [`share`] fills; one per process (as the metrics recorder).
pub fn open_feed() -> mpsc::Receiver<Entry> {
    let (tx, rx) = mpsc::channel(FEED_CAPACITY);
    if FEED.set(tx).is_err() {
        log::warn!(
            "cluster: a second cluster handle in one process; its suppressions are not shared"
        );
    }
    rx
}

/// Shares a suppression this node has just committed locally (a hard
/// bounce, an async bounce, a complaint) with the fleet, in the
/// background. Standalone, or with an address the spool refused, nothing
/// happens. Never waits: it runs on the spool's writer thread.
pub fn share(tenant: &str, address: &str, reason: &str, source: &str) {
    let Some(feed) = FEED.get() else { return };
    let Ok(entry) = Entry::add(tenant, address, reason, source) else {
        return;
    };
    if feed.try_send(entry).is_err() {
        ::metrics::counter!("sendengine_cluster_suppressions_dropped_total").increment(1);
        if !FEED_FULL_LOGGED.swap(true, Ordering::Relaxed) {
            log::warn!(
                "cluster: {FEED_CAPACITY} suppressions wait for the cluster database; newer ones \
                 stay on this node only (add them again with sendctl once it is back)"
            );
        }
    }
}

/// Writes what [`share`] queued, in batches, until shutdown; a batch that
/// failed is kept and written again.
pub async fn run_feed(
    cluster: Arc<Cluster>,
    mut feed: mpsc::Receiver<Entry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if batch.is_empty() {
            tokio::select! {
                n = feed.recv_many(&mut batch, BATCH) => if n == 0 { return },
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
        while batch.len() < BATCH {
            match feed.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        ::metrics::gauge!("sendengine_cluster_suppressions_pending")
            .set((batch.len() + feed.len()) as f64);
        match put(&cluster.db, &cluster.settings.node, &batch).await {
            Ok(_) => {
                HEALTH.up();
                batch.clear();
                FEED_FULL_LOGGED.store(false, Ordering::Relaxed);
                ::metrics::gauge!("sendengine_cluster_suppressions_pending").set(feed.len() as f64);
            }
            Err(e) => {
                HEALTH.down("sharing suppressions", &e);
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = shutdown.wait_for(|stop| *stop) => {
                        log::warn!(
                            "cluster: {} suppression(s) were not shared with the fleet before the stop",
                            batch.len() + feed.len()
                        );
                        return;
                    }
                }
            }
        }
    }
}

/// One row read back.
struct Row {
    entry: Entry,
    version: i64,
    node: String,
}

async fn read(db: &Database, since: i64) -> Result<Vec<Row>, DbError> {
    let rows = db
        .repeatable(|client| async move {
            timed(client.query(
                "SELECT tenant, address, reason, source, deleted, version, node FROM suppressions \
                 WHERE version > $1 ORDER BY version LIMIT $2",
                &[&since, &PAGE],
            ))
            .await
        })
        .await?;
    Ok(rows
        .iter()
        .map(|r| Row {
            entry: Entry {
                tenant: r.get(0),
                address: r.get(1),
                reason: r.get(2),
                source: r.get(3),
                remove: r.get(4),
            },
            version: r.get(5),
            node: r.get(6),
        })
        .collect())
}

/// Applies what the fleet wrote since this node's version. Once in sync,
/// this node's own rows are skipped: it applied them before sharing them.
pub async fn catch_up(
    local: &Local,
    cluster: &Cluster,
    progress: &Progress,
) -> Result<(), SyncError> {
    loop {
        let mut rows = read(&cluster.db, progress.version()).await?;
        let Some(last) = rows.last().map(|r| r.version) else {
            break;
        };
        // A full page may end inside a version (a batch): read that
        // version whole next time. A page holds more than a batch.
        let full = rows.len() as i64 == PAGE;
        let upto = if full { last - 1 } else { last };
        rows.retain(|r| r.version <= upto);
        let own = progress.synced().then_some(cluster.settings.node.as_str());
        let entries: Vec<Entry> = rows
            .into_iter()
            .filter(|r| Some(r.node.as_str()) != own)
            .map(|r| r.entry)
            .collect();
        let spool = local.spool.clone();
        let count = entries.len();
        tokio::task::spawn_blocking(move || apply(&spool, &entries))
            .await
            .map_err(|e| SyncError::Apply(e.to_string()))?
            .map_err(|e| SyncError::Apply(e.to_string()))?;
        if count > 0 {
            log::debug!("cluster: applied {count} suppression change(s) up to version {upto}");
        }
        progress.advance(upto);
        ::metrics::gauge!("sendengine_cluster_suppressions_version").set(upto as f64);
        if !full {
            break;
        }
    }
    progress.set_synced();
    Ok(())
}

/// Writes `entries` to the local lists: additions all submitted at once
/// (the spool commits them together), removals one by one.
fn apply(spool: &Spool, entries: &[Entry]) -> Result<(), SpoolError> {
    let (done_tx, done) = std::sync::mpsc::channel();
    let mut waiting = 0;
    for e in entries {
        if e.remove {
            spool.unsuppress(&e.tenant, &e.address)?;
            continue;
        }
        let done_tx = done_tx.clone();
        let report = Box::new(move |r: Result<bool, SpoolError>| {
            let _ = done_tx.send(r);
        });
        spool.suppress_then(&e.tenant, &e.address, &e.reason, &e.source, report);
        waiting += 1;
    }
    drop(done_tx);
    for _ in 0..waiting {
        match done.recv() {
            Ok(result) => {
                result?;
            }
            Err(_) => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_keyed_as_the_spool_keys_them() {
        let e = Entry::add("acme", "  Bob@Example.NET ", "manual", "operator").unwrap();
        assert_eq!(e.address, "bob@example.net");
        assert!(Entry::remove("", "bob@example.net").unwrap().remove);
        assert!(Entry::add("", "  ", "", "").is_err());
    }

    #[test]
    fn the_last_change_of_an_address_wins_within_a_batch() {
        let a = Entry::add("", "a@x.test", "bad-mailbox", "bounce").unwrap();
        let b = Entry::add("", "b@x.test", "manual", "operator").unwrap();
        let a_removed = Entry::remove("", "a@x.test").unwrap();
        let other_tenant = Entry::add("t", "a@x.test", "manual", "operator").unwrap();
        let all = [a, b.clone(), a_removed.clone(), other_tenant.clone()];
        assert_eq!(deduped(&all), vec![&b, &a_removed, &other_tenant]);
    }

    #[test]
    fn replicated_rows_reach_the_local_lists() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(sendengine_queue::SpoolConfig::new(dir.path())).unwrap();
        spool
            .suppress("", "old@x.test", "manual", "operator")
            .unwrap();
        let rows = [
            Entry::add("acme", "new@x.test", "bad-mailbox", "node b").unwrap(),
            Entry::remove("", "old@x.test").unwrap(),
        ];
        apply(&spool, &rows).unwrap();
        assert!(spool.suppression("acme", "new@x.test").unwrap().is_some());
        assert!(spool.suppression("", "old@x.test").unwrap().is_none());
    }
}
