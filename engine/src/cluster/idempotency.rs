//! The fleet's record of HTTP idempotency keys (`http_in::idempotency`).
//!
//! A node keeps a key's marks and answer in its own spool, which makes a
//! retry exact on that node, also after a kill -9. Behind a load balancer
//! a retry may reach another node, which would know nothing of the key and
//! queue every recipient again. So with `[cluster]` each key also has one
//! row in PostgreSQL (table `http_idempotency`, by tenant and key): the
//! request's fingerprint, the node answering it now, the recipients queued
//! by tries that ended without a final answer, and the final answer once
//! there is one.
//!
//! - A node takes the key for one try. Its retries on that node are exact
//!   from its spool, as on a standalone node, and the row adds what other
//!   nodes queued before.
//! - A try that ends without a final answer (429, 503) writes the
//!   recipients queued so far (all on disk by then) and lets the key go:
//!   the retry may then reach any node, which queues only the others.
//! - Another node returns the stored answer if there is one, 409 for
//!   another request under the same key, and 503 while a node holds the
//!   key: its try is still running, or was cut short by a crash, and only
//!   that node knows which recipients its spool holds. A node that starts
//!   again lets go of such keys with what its spool holds
//!   (`http_in::idempotency::release_held`); one that never comes back
//!   holds them until they expire.
//! - PostgreSQL out of reach: 503. A key is a promise that nothing is
//!   queued twice, which one node alone cannot keep for the fleet.
//!
//! Rows expire with `http_in.idempotency_ttl`; an expired row is taken over
//! as if it were not there.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::postgres::{Database, DbError, timed};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS http_idempotency (
    tenant text NOT NULL,
    key text NOT NULL,
    fingerprint text NOT NULL,
    node text,
    answer bytea,
    partial int4[] NOT NULL DEFAULT '{}',
    expires_ms bigint NOT NULL,
    PRIMARY KEY (tenant, key)
)";

/// Takes the key when it is free, expired, or let go by a try without a
/// final answer; returns a row (the recipients queued before) only then.
const TAKE: &str = "INSERT INTO http_idempotency AS t \
     (tenant, key, fingerprint, node, answer, expires_ms) VALUES ($1, $2, $3, $4, NULL, $5) \
     ON CONFLICT (tenant, key) DO UPDATE \
     SET node = EXCLUDED.node, fingerprint = EXCLUDED.fingerprint, answer = NULL, \
         partial = CASE WHEN t.expires_ms < $6 THEN '{}'::int4[] ELSE t.partial END, \
         expires_ms = greatest(t.expires_ms, EXCLUDED.expires_ms) \
     WHERE t.expires_ms < $6 \
        OR (t.node IS NULL AND t.answer IS NULL AND t.fingerprint = EXCLUDED.fingerprint) \
     RETURNING partial";

const READ: &str = "SELECT fingerprint, node, answer, partial FROM http_idempotency \
     WHERE tenant = $1 AND key = $2 AND expires_ms >= $3";

const ANSWER: &str = "UPDATE http_idempotency SET answer = $4 \
     WHERE tenant = $1 AND key = $2 AND node = $3";

/// A retry on the holding node keeps the row as long as the spool's marks
/// it writes now.
const REFRESH: &str = "UPDATE http_idempotency SET expires_ms = greatest(expires_ms, $4) \
     WHERE tenant = $1 AND key = $2 AND node = $3";

const RELEASE: &str = "UPDATE http_idempotency SET node = NULL, partial = $4 \
     WHERE tenant = $1 AND key = $2 AND node = $3";

const HELD: &str = "SELECT tenant, key, fingerprint, partial, expires_ms FROM http_idempotency \
     WHERE node = $1 AND answer IS NULL AND expires_ms >= $2";

const EXPIRE: &str = "DELETE FROM http_idempotency WHERE expires_ms < $1";

/// One request's key, as the fleet sees it.
pub struct FleetKey<'a> {
    pub tenant: &'a str,
    pub key: &'a str,
    pub fingerprint: &'a str,
    pub expires_ms: u64,
}

/// What the fleet's row says of a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Holder {
    /// This node holds the key: its spool knows what it queued for it, and
    /// these recipients (by index) were queued by tries elsewhere.
    ThisNode(HashSet<usize>),
    /// Answered, by whichever node: this body, again.
    Answered(Vec<u8>),
    /// Another node holds the key and has not answered.
    OtherNode(String),
    /// The key was used for a request with another body.
    OtherRequest,
}

/// A key this node holds unanswered.
pub struct HeldKey {
    pub tenant: String,
    pub key: String,
    pub fingerprint: String,
    /// Recipients queued by tries on other nodes.
    pub partial: HashSet<usize>,
    pub expires_ms: u64,
}

/// This node's view of the fleet's idempotency records.
pub struct FleetKeys {
    db: Arc<Database>,
    /// This node's `[cluster] node` name: the holder it writes and reads.
    node: String,
    migrated: AtomicBool,
}

impl FleetKeys {
    pub fn new(db: Arc<Database>, node: &str) -> FleetKeys {
        FleetKeys {
            db,
            node: node.to_owned(),
            migrated: AtomicBool::new(false),
        }
    }

    /// Takes `key` for this node, or says who holds it.
    pub async fn take(&self, key: &FleetKey<'_>, now_ms: u64) -> Result<Holder, DbError> {
        self.migrate().await?;
        let (db, node) = (&*self.db, self.node.as_str());
        let expires = key.expires_ms as i64;
        let now = now_ms as i64;
        // A row deleted by the expiry between the two statements makes the
        // read find nothing: the next round takes the key.
        for _ in 0..3 {
            let taken = db
                .repeatable(|client| async move {
                    timed(client.query_opt(
                        TAKE,
                        &[
                            &key.tenant,
                            &key.key,
                            &key.fingerprint,
                            &node,
                            &expires,
                            &now,
                        ],
                    ))
                    .await
                })
                .await?;
            if let Some(row) = taken {
                return Ok(Holder::ThisNode(indices(row.get(0))));
            }
            let row = db
                .repeatable(|client| async move {
                    timed(client.query_opt(READ, &[&key.tenant, &key.key, &now])).await
                })
                .await?;
            let Some(row) = row else { continue };
            let fingerprint: String = row.get(0);
            let holder: Option<String> = row.get(1);
            let answer: Option<Vec<u8>> = row.get(2);
            let partial = indices(row.get(3));
            let Some(holder) = decide(key, node, &fingerprint, holder, answer, partial) else {
                // Let go between the two statements: the next round takes it.
                continue;
            };
            if matches!(holder, Holder::ThisNode(_)) {
                db.repeatable(|client| async move {
                    timed(client.execute(REFRESH, &[&key.tenant, &key.key, &node, &expires])).await
                })
                .await?;
            }
            return Ok(holder);
        }
        Err(DbError::Unsettled(
            "the idempotency key's row kept changing under three reads",
        ))
    }

    /// Stores the final answer of a key this node holds.
    pub async fn answered(&self, key: &FleetKey<'_>, answer: &[u8]) -> Result<(), DbError> {
        let node = self.node.as_str();
        self.db
            .repeatable(|client| async move {
                timed(client.execute(ANSWER, &[&key.tenant, &key.key, &node, &answer])).await
            })
            .await
            .map(|_| ())
    }

    /// Lets go of a key this node holds after a try without a final answer,
    /// with every recipient queued for it so far (`queued`, on disk).
    pub async fn release(&self, key: &FleetKey<'_>, queued: &[usize]) -> Result<(), DbError> {
        let partial: Vec<i32> = queued.iter().map(|&i| i as i32).collect();
        let (partial, node) = (&partial, self.node.as_str());
        self.db
            .repeatable(|client| async move {
                timed(client.execute(RELEASE, &[&key.tenant, &key.key, &node, partial])).await
            })
            .await
            .map(|_| ())
    }

    /// The keys this node holds unanswered at `now_ms`.
    pub async fn held(&self, now_ms: u64) -> Result<Vec<HeldKey>, DbError> {
        self.migrate().await?;
        let (now, node) = (now_ms as i64, self.node.as_str());
        let rows = self
            .db
            .repeatable(|client| async move { timed(client.query(HELD, &[&node, &now])).await })
            .await?;
        Ok(rows
            .iter()
            .map(|row| HeldKey {
                tenant: row.get(0),
                key: row.get(1),
                fingerprint: row.get(2),
                partial: indices(row.get(3)),
                expires_ms: row.get::<_, i64>(4).max(0) as u64,
            })
            .collect())
    }

    /// Deletes the rows expired at `now_ms`; how many went.
    pub async fn expire(&self, now_ms: u64) -> Result<u64, DbError> {
        self.migrate().await?;
        let now = now_ms as i64;
        self.db
            .repeatable(|client| async move { timed(client.execute(EXPIRE, &[&now])).await })
            .await
    }

    async fn migrate(&self) -> Result<(), DbError> {
        if !self.migrated.load(Ordering::Acquire) {
            self.db.migrate(SCHEMA).await?;
            self.migrated.store(true, Ordering::Release);
        }
        Ok(())
    }
}

/// What a row someone else wrote means for this try; None when nobody
/// holds it (it was let go after `TAKE` ran).
fn decide(
    key: &FleetKey<'_>,
    node: &str,
    fingerprint: &str,
    holder: Option<String>,
    answer: Option<Vec<u8>>,
    partial: HashSet<usize>,
) -> Option<Holder> {
    if fingerprint != key.fingerprint {
        return Some(Holder::OtherRequest);
    }
    if let Some(answer) = answer {
        return Some(Holder::Answered(answer));
    }
    Some(match holder? {
        holder if holder == node => Holder::ThisNode(partial),
        holder => Holder::OtherNode(holder),
    })
}

fn indices(partial: Vec<i32>) -> HashSet<usize> {
    partial
        .into_iter()
        .filter_map(|i| usize::try_from(i).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(fingerprint: &str) -> FleetKey<'_> {
        FleetKey {
            tenant: "acme",
            key: "k",
            fingerprint,
            expires_ms: 0,
        }
    }

    #[test]
    fn another_body_is_refused_before_an_answer_is_given_back() {
        let k = key("f1");
        let none = HashSet::new;
        let answered = Some(b"{}".to_vec());
        let a = || Some("a".to_owned());
        assert_eq!(
            decide(&k, "a", "f2", a(), answered.clone(), none()),
            Some(Holder::OtherRequest)
        );
        assert_eq!(
            decide(&k, "b", "f1", a(), answered, none()),
            Some(Holder::Answered(b"{}".to_vec()))
        );
        assert_eq!(
            decide(&k, "a", "f1", a(), None, HashSet::from([1])),
            Some(Holder::ThisNode(HashSet::from([1])))
        );
        assert_eq!(
            decide(&k, "b", "f1", a(), None, none()),
            Some(Holder::OtherNode("a".into()))
        );
        assert_eq!(decide(&k, "b", "f1", None, None, none()), None);
    }
}
