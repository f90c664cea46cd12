//! The configuration objects (delivery servers, groups, users, templates,
//! sender domains, DKIM keys) in PostgreSQL, the fleet's source of truth.
//!
//! Table `objects(kind, name, body, version, deleted, ...)`: `body` is the
//! object as the spool stores it (JSON, secrets sealed with the fleet's
//! master key), `version` comes from one sequence, a deletion is a
//! tombstone. Every write goes through `put_objects()`, a function that
//! takes an advisory lock, refuses a writer that has not applied the
//! latest version (its check ran against an old set), writes, and NOTIFYs
//! in one transaction. So versions commit in order, and a reader that
//! asks for "newer than mine" misses nothing.
//!
//! An admin change on a node: validated there as standalone, committed
//! here, then stored there (`Publisher`). Every other node applies it on
//! the NOTIFY (`catch_up`). At start PostgreSQL wins over the local copy;
//! an empty fleet gets the first node's objects (its seeds included).
//! While PostgreSQL is down a node serves its local copy and every admin
//! change fails: "the cluster database is unreachable; the change was not
//! applied on any node".

use std::sync::Arc;

use tokio::runtime::Handle;

use super::Cluster;
use super::postgres::{Database, DbError, timed};
use super::shared::{HEALTH, Local, Progress, SyncError, block_on};
use crate::tenancy::replica::{ObjectRow, Publish};

pub const CHANNEL: &str = "sendengine_objects";

pub const SCHEMA: &str = r#"
CREATE SEQUENCE IF NOT EXISTS objects_version;
CREATE TABLE IF NOT EXISTS objects (
    kind text NOT NULL,
    name text NOT NULL,
    body bytea,
    version bigint NOT NULL,
    deleted boolean NOT NULL DEFAULT false,
    node text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
);
CREATE INDEX IF NOT EXISTS objects_by_version ON objects (version);
CREATE OR REPLACE FUNCTION put_objects(seen bigint, kinds text[], names text[], bodies bytea[], by_node text)
RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    latest bigint;
    v bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(8026094469620462336);
    SELECT coalesce(max(version), 0) INTO latest FROM objects;
    IF latest <> seen THEN
        RETURN -1;
    END IF;
    v := nextval('objects_version');
    INSERT INTO objects AS o (kind, name, body, version, deleted, node)
        SELECT k, n, b, v, b IS NULL, by_node FROM unnest(kinds, names, bodies) AS t(k, n, b)
    ON CONFLICT (kind, name) DO UPDATE
        SET body = excluded.body, version = excluded.version, deleted = excluded.deleted,
            node = excluded.node, changed_at = now();
    PERFORM pg_notify('sendengine_objects', v::text);
    RETURN v;
END
$fn$
"#;

/// What a write came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Committed as this version.
    Committed(i64),
    /// Another node changed objects since `seen`: nothing was written.
    Stale,
}

/// Writes `rows` as one version, if the fleet is still at version `seen`.
pub async fn put(db: &Database, node: &str, seen: i64, rows: &[ObjectRow]) -> Result<Put, DbError> {
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    let bodies: Vec<Option<&[u8]>> = rows.iter().map(|r| r.body.as_deref()).collect();
    let (kinds, names, bodies) = (&kinds, &names, &bodies);
    // Repeatable: the write is conditional on `seen`, so a repeat of one
    // that did commit (its reply lost with the connection) is Stale.
    let row = db
        .repeatable(|client| async move {
            timed(client.query_one(
                "SELECT put_objects($1, $2, $3, $4, $5)",
                &[&seen, kinds, names, bodies, &node],
            ))
            .await
        })
        .await?;
    let version: i64 = row.get(0);
    Ok(if version > 0 {
        Put::Committed(version)
    } else {
        Put::Stale
    })
}

/// Rows newer than `since` (tombstones as `body: None`), oldest first,
/// with the highest version among them.
async fn read(db: &Database, since: i64) -> Result<(Vec<ObjectRow>, i64), DbError> {
    let rows = db
        .repeatable(|client| async move {
            timed(client.query(
                "SELECT kind, name, body, deleted, version FROM objects \
                 WHERE version > $1 ORDER BY version",
                &[&since],
            ))
            .await
        })
        .await?;
    let latest = rows
        .iter()
        .map(|r| r.get::<_, i64>(4))
        .max()
        .unwrap_or(since);
    let rows = rows
        .iter()
        .map(|r| ObjectRow {
            kind: r.get(0),
            name: r.get(1),
            body: if r.get::<_, bool>(3) { None } else { r.get(2) },
        })
        .collect();
    Ok((rows, latest))
}

/// Commits each admin change to PostgreSQL before the node stores it.
pub struct Publisher {
    db: Arc<Database>,
    node: String,
    progress: Arc<Progress>,
    handle: Handle,
}

impl Publisher {
    pub fn new(cluster: &Cluster, progress: Arc<Progress>, handle: Handle) -> Publisher {
        Publisher {
            db: cluster.db.clone(),
            node: cluster.settings.node.clone(),
            progress,
            handle,
        }
    }
}

impl Publish for Publisher {
    fn publish(&self, kind: &str, name: &str, body: Option<&[u8]>) -> Result<(), String> {
        if !self.progress.synced() {
            return Err(not_applied(if HEALTH.is_up() {
                "this node has not read the fleet's configuration from the cluster database yet"
            } else {
                "the cluster database is unreachable and this node has not read the fleet's \
                 configuration since it started"
            }));
        }
        let row = ObjectRow {
            kind: kind.to_owned(),
            name: name.to_owned(),
            body: body.map(<[u8]>::to_vec),
        };
        let seen = self.progress.version();
        match block_on(&self.handle, put(&self.db, &self.node, seen, &[row])) {
            Ok(Put::Committed(version)) => {
                self.progress.advance(version);
                Ok(())
            }
            Ok(Put::Stale) => Err(not_applied(
                "another node changed the configuration at the same moment and this node is \
                 catching up; try again",
            )),
            Err(e) => {
                HEALTH.down("publishing a configuration change", &e);
                Err(not_applied(&format!(
                    "the cluster database is unreachable ({e})"
                )))
            }
        }
    }
}

fn not_applied(why: &str) -> String {
    format!("{why}; the change was not applied on any node")
}

/// Applies what other nodes committed since this node's version; the
/// first time, takes the whole set (or gives it, to an empty fleet).
pub async fn catch_up(
    local: &Local,
    cluster: &Cluster,
    progress: &Progress,
) -> Result<(), SyncError> {
    if !progress.synced() {
        return first_sync(local, cluster, progress).await;
    }
    let (rows, latest) = read(&cluster.db, progress.version()).await?;
    if !rows.is_empty() {
        apply(local, rows, false, latest).await?;
        progress.advance(latest);
    }
    Ok(())
}

/// PostgreSQL wins over the local copy; an empty fleet takes this node's.
async fn first_sync(
    local: &Local,
    cluster: &Cluster,
    progress: &Progress,
) -> Result<(), SyncError> {
    let (rows, latest) = read(&cluster.db, 0).await?;
    if rows.is_empty() {
        let tenancy = local.tenancy.clone();
        let local = tokio::task::spawn_blocking(move || tenancy.stored_rows())
            .await
            .map_err(|e| SyncError::Apply(e.to_string()))?
            .map_err(|e| SyncError::Apply(e.to_string()))?;
        let count = local.len();
        if count == 0 {
            // Nothing to give: the first change made anywhere starts the set.
            progress.set_synced();
            return Ok(());
        }
        match put(&cluster.db, &cluster.settings.node, 0, &local).await? {
            Put::Committed(version) => {
                log::info!(
                    "cluster: the fleet had no configuration; published this node's {count} object(s)"
                );
                progress.advance(version);
                progress.set_synced();
                return Ok(());
            }
            // Another node published first: take its set next time.
            Put::Stale => return Ok(()),
        }
    }
    apply(local, rows, true, latest).await?;
    progress.advance(latest);
    progress.set_synced();
    log::info!("cluster: configuration objects in sync with the fleet at version {latest}");
    Ok(())
}

async fn apply(
    local: &Local,
    rows: Vec<ObjectRow>,
    replace_all: bool,
    version: i64,
) -> Result<(), SyncError> {
    let tenancy = local.tenancy.clone();
    let changed = tokio::task::spawn_blocking(move || tenancy.apply_replicated(&rows, replace_all))
        .await
        .map_err(|e| SyncError::Apply(e.to_string()))?
        .map_err(|e| SyncError::Apply(format!("version {version}: {e}")))?;
    if changed > 0 {
        (local.routes_changed)();
        log::info!("cluster: applied {changed} configuration change(s) up to version {version}");
    }
    ::metrics::gauge!("sendengine_cluster_objects_version").set(version as f64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The advisory lock writers of `objects` take ("objects\0" in ASCII).
    const LOCK: i64 = 0x6f62_6a65_6374_7300;

    #[test]
    fn the_lock_key_in_the_schema_is_the_one_named_here() {
        assert!(SCHEMA.contains(&format!("pg_advisory_xact_lock({LOCK})")));
    }

    #[test]
    fn a_refusal_says_nothing_changed_anywhere() {
        let text = not_applied("the cluster database is unreachable (timeout)");
        assert!(text.ends_with("the change was not applied on any node"));
    }
}
