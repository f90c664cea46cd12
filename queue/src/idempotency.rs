//! Idempotency records of the HTTP injection API: what a request with an
//! idempotency key already did, kept in the spool so that a client retrying
//! after a crash (or a lost response) queues nothing twice.
//!
//! One table: key -> (expiry time ms, payload). The engine decides what the
//! keys and payloads mean (a finished request's response; a mark per
//! recipient already queued). A mark can be written in the same
//! transaction as the message it stands for ([`crate::NewMessage::idempotency`]),
//! which is what makes "queued" and "marked" one fact after a kill -9.
//! Rows past their expiry are ignored by reads and removed by
//! [`crate::Spool::idempotency_expire`].

use redb::{Database, ReadableDatabase, TableDefinition, WriteTransaction};

use crate::error::SpoolError;
use crate::requests::Completion;
use crate::store::open_if_created;

/// key -> (expires at, ms since the epoch; payload).
const IDEMPOTENCY: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("idempotency");

/// Longest key accepted (the engine's keys hold a tenant name, the
/// client's key and a recipient index).
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 2048;
/// Largest payload accepted (a response naming refused recipients).
const MAX_IDEMPOTENCY_PAYLOAD_BYTES: usize = 8 << 20;

/// One row of the idempotency table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRow {
    pub key: String,
    pub expires_ms: u64,
    pub payload: Vec<u8>,
}

impl IdempotencyRow {
    pub(crate) fn check(&self) -> Result<(), SpoolError> {
        if self.key.is_empty() || self.key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
            return Err(SpoolError::Invalid(format!(
                "an idempotency key must have 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes, not {}",
                self.key.len()
            )));
        }
        if self.payload.len() > MAX_IDEMPOTENCY_PAYLOAD_BYTES {
            return Err(SpoolError::Invalid(format!(
                "an idempotency record of {} bytes exceeds {MAX_IDEMPOTENCY_PAYLOAD_BYTES}",
                self.payload.len()
            )));
        }
        Ok(())
    }
}

/// Rows to store and/or expired rows to remove, in the writer's next
/// group commit; the completion gets how many expired rows went.
pub(crate) struct IdempotencyRequest {
    pub(crate) put: Vec<IdempotencyRow>,
    pub(crate) expire_before_ms: Option<u64>,
    pub(crate) done: Completion<u64>,
}

/// Stores rows inside the writer's transaction.
pub(crate) fn put<'a>(
    txn: &WriteTransaction,
    rows: impl IntoIterator<Item = &'a IdempotencyRow>,
) -> Result<(), SpoolError> {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut table = txn.open_table(IDEMPOTENCY)?;
    for row in rows {
        table.insert(row.key.as_str(), (row.expires_ms, row.payload.as_slice()))?;
    }
    Ok(())
}

/// Applies one request inside the writer's transaction.
pub(crate) fn apply(
    txn: &WriteTransaction,
    request: &IdempotencyRequest,
) -> Result<u64, SpoolError> {
    put(txn, &request.put)?;
    let Some(before) = request.expire_before_ms else {
        return Ok(0);
    };
    let mut table = txn.open_table(IDEMPOTENCY)?;
    let mut removed = 0;
    table.retain(|_, (expires, _)| {
        let keep = expires >= before;
        removed += u64::from(!keep);
        keep
    })?;
    Ok(removed)
}

/// Removes the rows under `keys` inside the writer's transaction: the marks
/// of messages taken back after their commit (see `writer.rs`).
pub(crate) fn remove<'a>(
    txn: &WriteTransaction,
    keys: impl IntoIterator<Item = &'a str>,
) -> Result<(), SpoolError> {
    let mut keys = keys.into_iter().peekable();
    if keys.peek().is_none() {
        return Ok(());
    }
    let mut table = txn.open_table(IDEMPOTENCY)?;
    for key in keys {
        table.remove(key)?;
    }
    Ok(())
}

/// The row stored under `key`, unless it expired before `now_ms`.
pub(crate) fn get(
    db: &Database,
    key: &str,
    now_ms: u64,
) -> Result<Option<IdempotencyRow>, SpoolError> {
    let txn = db.begin_read()?;
    let Some(table) = open_if_created(&txn, IDEMPOTENCY)? else {
        return Ok(None);
    };
    let Some(value) = table.get(key)? else {
        return Ok(None);
    };
    let (expires_ms, payload) = value.value();
    Ok((expires_ms >= now_ms).then(|| IdempotencyRow {
        key: key.to_owned(),
        expires_ms,
        payload: payload.to_vec(),
    }))
}

/// Every unexpired row whose key starts with `prefix` (at most `limit`).
pub(crate) fn with_prefix(
    db: &Database,
    prefix: &str,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<IdempotencyRow>, SpoolError> {
    let txn = db.begin_read()?;
    let Some(table) = open_if_created(&txn, IDEMPOTENCY)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in table.range(prefix..)? {
        let (key, value) = entry?;
        let key = key.value();
        if !key.starts_with(prefix) || out.len() >= limit {
            break;
        }
        let (expires_ms, payload) = value.value();
        if expires_ms >= now_ms {
            out.push(IdempotencyRow {
                key: key.to_owned(),
                expires_ms,
                payload: payload.to_vec(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::{IdempotencyRow, MessageMeta, NewMessage, Spool, SpoolConfig};

    fn row(key: &str, expires_ms: u64) -> IdempotencyRow {
        IdempotencyRow {
            key: key.into(),
            expires_ms,
            payload: key.as_bytes().to_vec(),
        }
    }

    #[test]
    fn rows_are_read_by_key_and_prefix_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(SpoolConfig::new(dir.path().to_owned())).unwrap();
        let rows = vec![
            row("t\0k\0#1", 500),
            row("t\0k\0#2", 2000),
            row("t\0kk", 2000),
        ];
        spool.idempotency_put_blocking(rows).unwrap();
        assert_eq!(
            spool.idempotency_get("t\0kk", 1000).unwrap(),
            Some(row("t\0kk", 2000))
        );
        assert_eq!(
            spool.idempotency_get("t\0k\0#1", 1000).unwrap(),
            None,
            "expired"
        );
        let marks = spool.idempotency_with_prefix("t\0k\0#", 1000, 10).unwrap();
        assert_eq!(marks, vec![row("t\0k\0#2", 2000)]);
        assert_eq!(spool.idempotency_expire_blocking(1000).unwrap(), 1);
        assert_eq!(spool.idempotency_get("t\0k\0#1", 0).unwrap(), None);
        assert!(spool.idempotency_put_blocking(vec![row("", 1)]).is_err());
    }

    #[test]
    fn a_mark_is_written_with_its_message_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(SpoolConfig::new(dir.path().to_owned())).unwrap();
        let msg = NewMessage {
            mail_from: "a@example.com".into(),
            recipients: vec!["b@example.net".into()],
            body: b"Subject: x\r\n\r\nhi\r\n".to_vec().into(),
            meta: MessageMeta::default(),
            quotas: Vec::new(),
            tracking: None,
            idempotency: Some(row("t\0k\0#0", u64::MAX)),
        };
        spool.insert_blocking(msg, false).unwrap();
        spool.shutdown();
        drop(spool);
        let spool = Spool::open(SpoolConfig::new(dir.path().to_owned())).unwrap();
        assert_eq!(
            spool.idempotency_get("t\0k\0#0", 0).unwrap(),
            Some(row("t\0k\0#0", u64::MAX))
        );
    }
}
