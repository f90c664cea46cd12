//! The fleet's record of HTTP idempotency keys (`http_in::idempotency`).
//!
//! A node keeps a key's marks and answer in its own spool, which makes a
//! retry exact on that node, also after a kill -9. Behind a load balancer
//! a retry may reach another node, which would know nothing of the key and
//! queue every recipient again. So with `[cluster]` each key also has one
//! row in PostgreSQL (table `http_idempotency`, by tenant and key): which
//! node took it first, the request's fingerprint, and the final answer once
//! there is one.
//!
//! - The node that took the key answers its retries from its spool, as a
//!   standalone node does.
//! - Another node returns the stored answer if there is one, 409 for
//!   another request under the same key, and otherwise 503: the first try
//!   is still being answered, or was cut short (a crash, a 429 or 503 for
//!   part of the recipients), and only the node that holds its queued
//!   messages can finish it without sending any of them twice.
//! - PostgreSQL out of reach: 503. A key is a promise that nothing is
//!   queued twice, which one node alone cannot keep for the fleet.
//!
//! Rows expire with `http_in.idempotency_ttl`; an expired row is taken over
//! as if it were not there.

use std::sync::atomic::{AtomicBool, Ordering};

use super::postgres::{Database, DbError, timed};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS http_idempotency (
    tenant text NOT NULL,
    key text NOT NULL,
    fingerprint text NOT NULL,
    node text NOT NULL,
    answer bytea,
    expires_ms bigint NOT NULL,
    PRIMARY KEY (tenant, key)
)";

/// Takes the key when it is free or expired; returns a row only then.
const TAKE: &str = "INSERT INTO http_idempotency AS t \
     (tenant, key, fingerprint, node, answer, expires_ms) VALUES ($1, $2, $3, $4, NULL, $5) \
     ON CONFLICT (tenant, key) DO UPDATE \
     SET fingerprint = EXCLUDED.fingerprint, node = EXCLUDED.node, answer = NULL, \
         expires_ms = EXCLUDED.expires_ms \
     WHERE t.expires_ms < $6 \
     RETURNING node";

const READ: &str = "SELECT fingerprint, node, answer FROM http_idempotency \
     WHERE tenant = $1 AND key = $2 AND expires_ms >= $3";

const ANSWER: &str = "UPDATE http_idempotency SET answer = $4 \
     WHERE tenant = $1 AND key = $2 AND node = $3";

/// A retry on the holding node keeps the row as long as the spool's marks
/// it writes now.
const REFRESH: &str = "UPDATE http_idempotency SET expires_ms = greatest(expires_ms, $4) \
     WHERE tenant = $1 AND key = $2 AND node = $3";

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
    /// This node took the key (now or on an earlier try): its spool knows
    /// the rest.
    ThisNode,
    /// Answered, by whichever node: this body, again.
    Answered(Vec<u8>),
    /// Taken by another node and not answered.
    OtherNode(String),
    /// The key was used for a request with another body.
    OtherRequest,
}

/// The fleet's idempotency records, through the cluster's database.
#[derive(Default)]
pub struct FleetKeys {
    migrated: AtomicBool,
}

impl FleetKeys {
    /// Takes `key` for `node`, or says who holds it.
    pub async fn take(
        &self,
        db: &Database,
        node: &str,
        key: &FleetKey<'_>,
        now_ms: u64,
    ) -> Result<Holder, DbError> {
        self.migrate(db).await?;
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
            if taken.is_some() {
                return Ok(Holder::ThisNode);
            }
            let row = db
                .repeatable(|client| async move {
                    timed(client.query_opt(READ, &[&key.tenant, &key.key, &now])).await
                })
                .await?;
            if let Some(row) = row {
                let fingerprint: String = row.get(0);
                let holder: String = row.get(1);
                let answer: Option<Vec<u8>> = row.get(2);
                let holder = decide(key, node, &fingerprint, holder, answer);
                if holder == Holder::ThisNode {
                    db.repeatable(|client| async move {
                        timed(client.execute(REFRESH, &[&key.tenant, &key.key, &node, &expires]))
                            .await
                    })
                    .await?;
                }
                return Ok(holder);
            }
        }
        Err(DbError::Unsettled(
            "the idempotency key's row kept changing under three reads",
        ))
    }

    /// Stores the final answer of a key this node holds.
    pub async fn answered(
        &self,
        db: &Database,
        node: &str,
        key: &FleetKey<'_>,
        answer: &[u8],
    ) -> Result<(), DbError> {
        db.repeatable(|client| async move {
            timed(client.execute(ANSWER, &[&key.tenant, &key.key, &node, &answer])).await
        })
        .await
        .map(|_| ())
    }

    /// Deletes the rows expired at `now_ms`; how many went.
    pub async fn expire(&self, db: &Database, now_ms: u64) -> Result<u64, DbError> {
        self.migrate(db).await?;
        let now = now_ms as i64;
        db.repeatable(|client| async move { timed(client.execute(EXPIRE, &[&now])).await })
            .await
    }

    async fn migrate(&self, db: &Database) -> Result<(), DbError> {
        if !self.migrated.load(Ordering::Acquire) {
            db.migrate(SCHEMA).await?;
            self.migrated.store(true, Ordering::Release);
        }
        Ok(())
    }
}

fn decide(
    key: &FleetKey<'_>,
    node: &str,
    fingerprint: &str,
    holder: String,
    answer: Option<Vec<u8>>,
) -> Holder {
    if fingerprint != key.fingerprint {
        Holder::OtherRequest
    } else if let Some(answer) = answer {
        Holder::Answered(answer)
    } else if holder == node {
        Holder::ThisNode
    } else {
        Holder::OtherNode(holder)
    }
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
        assert_eq!(
            decide(&k, "a", "f2", "a".into(), Some(b"{}".to_vec())),
            Holder::OtherRequest
        );
        assert_eq!(
            decide(&k, "b", "f1", "a".into(), Some(b"{}".to_vec())),
            Holder::Answered(b"{}".to_vec())
        );
        assert_eq!(decide(&k, "a", "f1", "a".into(), None), Holder::ThisNode);
        assert_eq!(
            decide(&k, "b", "f1", "a".into(), None),
            Holder::OtherNode("a".into())
        );
    }
}
