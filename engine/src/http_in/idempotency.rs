//! Idempotency keys (`"sendengine": {"idempotency_key": ...}` or the
//! `Idempotency-Key` header): a request retried with the same key, by the
//! same tenant, returns the first answer and queues nothing twice.
//!
//! Two kinds of spool rows (`sendengine_queue`'s idempotency table), keyed
//! by tenant and key:
//! - a *mark* per recipient, written in the same transaction as that
//!   recipient's message: after a kill -9 a mark exists exactly for the
//!   messages that are on disk, so a retry skips those and admits the rest;
//! - the *answer*, written once every recipient has an outcome and before
//!   the 200 is sent: a later retry gets it back as it was.
//!
//! Both hold a fingerprint of the request body: the same key with another
//! request is a client bug and gets 409, never a silent mix. Two requests
//! with the same key at once: the second gets 409 (retry after the first).
//! Rows expire after `http_in.idempotency_ttl`.
//!
//! With `[cluster]` the key is also taken in the fleet's record first
//! (`cluster::idempotency`), so that a retry reaching another node neither
//! queues the message again nor loses the answer.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sendengine_queue::{IdempotencyRow, Spool};

use super::error::ApiError;
use crate::cluster::Cluster;
use crate::cluster::idempotency::{FleetKey, FleetKeys};
use crate::timefmt::now_ms;

/// How often expired rows are removed.
pub const EXPIRY_INTERVAL: Duration = Duration::from_secs(600);
/// Pause between tries to read the keys held here after a start.
const RELEASE_RETRY: Duration = Duration::from_secs(5);

/// The keys of requests being answered now, across connections.
#[derive(Default)]
pub struct InFlight(Mutex<HashSet<String>>);

/// One request's key, held while it is answered.
pub struct Claim {
    tenant: String,
    key: String,
    prefix: String,
    fingerprint: String,
    expires_ms: u64,
    in_flight: Arc<InFlight>,
}

/// What the spool already knows of a key.
pub enum Known {
    /// The request was answered: this body, again.
    Answered(Vec<u8>),
    /// Recipients (by index) already queued by an earlier try.
    Partial(HashSet<usize>),
}

impl Claim {
    /// Takes `key` for `tenant` while this request runs; 409 if another
    /// request holds it.
    pub fn take(
        in_flight: &Arc<InFlight>,
        tenant: &str,
        key: &str,
        body: &[u8],
        ttl: Duration,
    ) -> Result<Claim, ApiError> {
        let expires_ms = now_ms().saturating_add(ttl.as_millis() as u64);
        Claim::of_fingerprint(in_flight, tenant, key, fingerprint(body), expires_ms)
    }

    /// `take` for a request known by its fingerprint only.
    fn of_fingerprint(
        in_flight: &Arc<InFlight>,
        tenant: &str,
        key: &str,
        fingerprint: String,
        expires_ms: u64,
    ) -> Result<Claim, ApiError> {
        let prefix = format!("http\0{tenant}\0{key}\0");
        let mut held = in_flight.0.lock().unwrap_or_else(|p| p.into_inner());
        if !held.insert(prefix.clone()) {
            return Err(ApiError::conflict(
                "sendengine.idempotency_key",
                "a request with this key is being answered now: retry once it is",
            ));
        }
        Ok(Claim {
            tenant: tenant.to_owned(),
            key: key.to_owned(),
            prefix,
            fingerprint,
            expires_ms,
            in_flight: in_flight.clone(),
        })
    }

    /// The key as the fleet's record knows it (`cluster::idempotency`).
    pub fn fleet_key(&self) -> FleetKey<'_> {
        FleetKey {
            tenant: &self.tenant,
            key: &self.key,
            fingerprint: &self.fingerprint,
            expires_ms: self.expires_ms,
        }
    }

    /// What earlier tries of this key did (a read of the spool: blocking).
    pub fn known(&self, spool: &Spool) -> Result<Known, ApiError> {
        let now = now_ms();
        let read = |e| ApiError::internal(format!("reading the idempotency records failed: {e}"));
        if let Some(answer) = spool
            .idempotency_get(&self.answer_key(), now)
            .map_err(read)?
        {
            let (fingerprint, body) = split(&answer.payload);
            self.same_request(fingerprint)?;
            return Ok(Known::Answered(body.to_vec()));
        }
        let marks = spool
            .idempotency_with_prefix(&self.mark_prefix(), now, usize::MAX)
            .map_err(read)?;
        let mut queued = HashSet::new();
        for mark in marks {
            self.same_request(&mark.payload)?;
            if let Some(i) = mark.key.rsplit('#').next().and_then(|i| i.parse().ok()) {
                queued.insert(i);
            }
        }
        Ok(Known::Partial(queued))
    }

    /// The row written with recipient `index`'s message.
    pub fn mark(&self, index: usize) -> IdempotencyRow {
        IdempotencyRow {
            key: format!("{}#{index:07}", self.mark_prefix()),
            expires_ms: self.expires_ms,
            payload: self.fingerprint.as_bytes().to_vec(),
        }
    }

    /// The row that holds the answer.
    pub fn answer(&self, body: &[u8]) -> IdempotencyRow {
        let mut payload = Vec::with_capacity(self.fingerprint.len() + 1 + body.len());
        payload.extend_from_slice(self.fingerprint.as_bytes());
        payload.push(b'\n');
        payload.extend_from_slice(body);
        IdempotencyRow {
            key: self.answer_key(),
            expires_ms: self.expires_ms,
            payload,
        }
    }

    fn answer_key(&self) -> String {
        format!("{}answer", self.prefix)
    }

    fn mark_prefix(&self) -> String {
        format!("{}rcpt", self.prefix)
    }

    fn same_request(&self, fingerprint: &[u8]) -> Result<(), ApiError> {
        if fingerprint == self.fingerprint.as_bytes() {
            return Ok(());
        }
        Err(other_request())
    }
}

/// 409 for a key used with another request body.
pub fn other_request() -> ApiError {
    ApiError::conflict(
        "sendengine.idempotency_key",
        "this key was used for a different request: use a new key for a new request",
    )
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut held = self.in_flight.0.lock().unwrap_or_else(|p| p.into_inner());
        held.remove(&self.prefix);
    }
}

/// (fingerprint, answer body) of a stored answer.
fn split(payload: &[u8]) -> (&[u8], &[u8]) {
    match payload.iter().position(|&b| b == b'\n') {
        Some(i) => (&payload[..i], &payload[i + 1..]),
        None => (payload, &[]),
    }
}

/// SHA-256 of the request body, hex.
fn fingerprint(body: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Removes expired rows every `EXPIRY_INTERVAL` until shutdown: this
/// node's, and with `[cluster]` the fleet's (every node may; the delete is
/// the same from any of them).
pub async fn expire(
    spool: Spool,
    cluster: Option<Arc<Cluster>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EXPIRY_INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let spool = spool.clone();
        match tokio::task::spawn_blocking(move || spool.idempotency_expire_blocking(now_ms())).await
        {
            Ok(Ok(n)) if n > 0 => log::debug!("http_in: {n} expired idempotency records removed"),
            Ok(Err(e)) => log::warn!("http_in: removing expired idempotency records failed: {e}"),
            _ => {}
        }
        if let Some(cluster) = &cluster {
            match cluster.idempotency_keys.expire(now_ms()).await {
                Ok(n) if n > 0 => {
                    log::debug!("http_in: {n} expired fleet idempotency rows removed")
                }
                Ok(_) => {}
                Err(e) => {
                    log::warn!("http_in: removing expired fleet idempotency rows failed: {e}")
                }
            }
        }
    }
}

/// With `[cluster]`, at start: lets go of the keys the fleet's record says
/// this node holds, which only a try cut short by a crash leaves held. Each
/// goes with what this node's spool says it queued for it (or its answer,
/// where the answer reached the spool but not the fleet), so that a retry
/// reaching any node finishes the request. A key a request here took
/// meanwhile is left to that request. PostgreSQL out of reach: tried again
/// every `RELEASE_RETRY` until it answers.
pub async fn release_held(
    spool: Spool,
    cluster: Arc<Cluster>,
    in_flight: Arc<InFlight>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let keys = &cluster.idempotency_keys;
    let held = loop {
        match keys.held(now_ms()).await {
            Ok(held) => break held,
            Err(e) => log::warn!("http_in: reading the idempotency keys held here failed: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RELEASE_RETRY) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    };
    for row in held {
        // A request here that took the key meanwhile keeps it.
        let Ok(claim) = Claim::of_fingerprint(
            &in_flight,
            &row.tenant,
            &row.key,
            row.fingerprint.clone(),
            row.expires_ms,
        ) else {
            continue;
        };
        match release_one(&spool, keys, Arc::new(claim), &row.partial).await {
            Ok(()) => log::info!(
                "http_in: idempotency key `{}` of `{}`, cut short here by a stop, is settled \
                 for the fleet: a retry on any node finishes it",
                row.key,
                row.tenant
            ),
            Err(why) => log::warn!(
                "http_in: idempotency key `{}` of `{}` stays held here ({why}): only a retry \
                 on this node finishes it",
                row.key,
                row.tenant
            ),
        }
    }
}

/// Stores the answer the spool holds for `claim`, or lets the key go with
/// the recipients the spool marked and those queued elsewhere before.
async fn release_one(
    spool: &Spool,
    keys: &FleetKeys,
    claim: Arc<Claim>,
    elsewhere: &HashSet<usize>,
) -> Result<(), String> {
    let (spool, reading) = (spool.clone(), claim.clone());
    let known = tokio::task::spawn_blocking(move || reading.known(&spool))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.message)?;
    let key = claim.fleet_key();
    let done = match known {
        Known::Answered(answer) => keys.answered(&key, &answer).await,
        Known::Partial(queued) => {
            let mut all: Vec<usize> = queued.union(elsewhere).copied().collect();
            all.sort_unstable();
            keys.release(&key, &all).await
        }
    };
    done.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_at_a_time_and_rows_carry_the_fingerprint() {
        let in_flight = Arc::new(InFlight::default());
        let ttl = Duration::from_secs(60);
        let claim = Claim::take(&in_flight, "acme", "k1", b"body", ttl).unwrap();
        let again = Claim::take(&in_flight, "acme", "k1", b"body", ttl);
        assert_eq!(
            again.err().unwrap().status,
            axum::http::StatusCode::CONFLICT
        );
        assert!(Claim::take(&in_flight, "other", "k1", b"body", ttl).is_ok());
        let mark = claim.mark(3);
        assert!(mark.key.ends_with("rcpt#0000003"));
        let answer = claim.answer(b"{}");
        assert_eq!(split(&answer.payload).1, b"{}");
        drop(claim);
        assert!(Claim::take(&in_flight, "acme", "k1", b"body", ttl).is_ok());
    }

    #[test]
    fn a_crash_leaves_marks_a_retry_skips_and_another_body_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(sendengine_queue::SpoolConfig::new(dir.path().to_owned())).unwrap();
        let in_flight = Arc::new(InFlight::default());
        let ttl = Duration::from_secs(60);
        let claim = Claim::take(&in_flight, "acme", "k", b"body", ttl).unwrap();
        spool
            .idempotency_put_blocking(vec![claim.mark(0), claim.mark(2)])
            .unwrap();
        let Known::Partial(queued) = claim.known(&spool).unwrap() else {
            panic!("no answer was stored");
        };
        assert_eq!(queued, HashSet::from([0, 2]));
        drop(claim);
        let other = Claim::take(&in_flight, "acme", "k", b"another", ttl).unwrap();
        assert!(other.known(&spool).is_err());
        drop(other);
        let claim = Claim::take(&in_flight, "acme", "k", b"body", ttl).unwrap();
        spool
            .idempotency_put_blocking(vec![claim.answer(b"{\"ok\":1}")])
            .unwrap();
        let Known::Answered(body) = claim.known(&spool).unwrap() else {
            panic!("the answer was stored");
        };
        assert_eq!(body, b"{\"ok\":1}");
    }
}
