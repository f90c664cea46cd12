//! Rows that could not be decoded, moved aside.
//!
//! A damaged recipient row (a bug, a bad disk block, or a row written by a
//! newer build) used to fail every group commit that reached it, and with it
//! every insert in that commit, on every scheduler tick. Like Postfix, which
//! moves a queue file it cannot read to its `corrupt` queue, the spool moves
//! such a row into the `quarantine` table the moment it meets it, inside the
//! same transaction: the request that met it goes on as if the recipient had
//! left the spool, and nothing reaches the row again. Its bytes are kept
//! there for inspection; nothing is deleted.
//!
//! One table: (table name, message id, recipient index) -> (time ms, reason,
//! the row's bytes). A message whose last recipient is quarantined moves
//! there too (`messages` and `bodies` rows, recipient index 0), so it does
//! not linger in the spool with nothing left to deliver.
//!
//! Reads cannot write: `load` and `queue_page` answer without the damaged
//! row (`load` with `Corrupt`) and send it to the writer as a [`Damaged`],
//! which quarantines it in the next commit: a message whose envelope or
//! body cannot be read goes whole, a recipient row only if it still does
//! not decode when the writer reads it again.

use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::error::SpoolError;
use crate::id::MessageId;
use crate::store::open_if_created;

/// (table name, message id, recipient index).
type Key = (&'static str, u64, u32);
/// (time moved in ms, reason, the row's value).
type Kept = (u64, &'static str, &'static [u8]);

const QUARANTINE: TableDefinition<Key, Kept> = TableDefinition::new("quarantine");

/// Table names used in quarantine keys.
pub(crate) const RECIPIENTS_TABLE: &str = "recipients";
pub(crate) const MESSAGES_TABLE: &str = "messages";
pub(crate) const BODIES_TABLE: &str = "bodies";

/// One row moved to the quarantine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuarantinedRow {
    /// The table it came from (`recipients`, `messages`, `bodies`).
    pub table: String,
    pub id: MessageId,
    /// The recipient index; 0 for a message's envelope or body.
    pub rcpt: u32,
    /// When it was moved, in ms since the Unix epoch.
    pub time_ms: u64,
    /// Why it could not be used.
    pub reason: String,
    /// The row's value, unchanged.
    pub value: Vec<u8>,
}

/// A recipient row that could not be decoded, met inside a write transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CorruptRecipient {
    pub(crate) id: MessageId,
    pub(crate) rcpt: u32,
    pub(crate) reason: String,
    pub(crate) value: Vec<u8>,
}

/// A row a read could not decode: the reader asks the writer to quarantine
/// it, so that one row does not fail every later read that meets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Damaged {
    pub(crate) id: MessageId,
    /// `None`: the message itself (envelope or body) cannot be read.
    pub(crate) rcpt: Option<u32>,
    pub(crate) reason: String,
}

/// The quarantine table inside the writer's transaction.
pub(crate) struct QuarantineTable<'txn> {
    table: Table<'txn, Key, Kept>,
}

impl<'txn> QuarantineTable<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> Result<Self, SpoolError> {
        Ok(QuarantineTable {
            table: txn.open_table(QUARANTINE)?,
        })
    }

    /// Keeps `value`, the row `(id, rcpt)` of `table`, with why it was moved.
    pub(crate) fn put(
        &mut self,
        table: &str,
        (id, rcpt): (MessageId, u32),
        now_ms: u64,
        reason: &str,
        value: &[u8],
    ) -> Result<(), SpoolError> {
        self.table
            .insert((table, id, rcpt), (now_ms, reason, value))?;
        Ok(())
    }
}

/// Up to `limit` quarantined rows, in key order (by table, then id).
pub(crate) fn list(db: &Database, limit: usize) -> Result<Vec<QuarantinedRow>, SpoolError> {
    let txn = db.begin_read()?;
    let Some(table) = open_if_created(&txn, QUARANTINE)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in table.iter()?.take(limit) {
        let (key, value) = entry?;
        let (table, id, rcpt) = key.value();
        let (time_ms, reason, bytes) = value.value();
        out.push(QuarantinedRow {
            table: table.to_owned(),
            id,
            rcpt,
            time_ms,
            reason: reason.to_owned(),
            value: bytes.to_vec(),
        });
    }
    Ok(out)
}

/// One log line per commit that quarantined rows (a damaged file can hold
/// many), and the metric.
pub(crate) fn report(rows: &[CorruptRecipient]) {
    let Some(first) = rows.first() else {
        return;
    };
    crate::metrics::quarantined(rows.len() as u64);
    let more = match rows.len() {
        1 => String::new(),
        n => format!(" and {} more", n - 1),
    };
    log::warn!(
        "spool: recipient {} of message {:016x} cannot be read ({}){more}: moved to the \
         spool's quarantine table with its bytes; it will not be delivered",
        first.rcpt,
        first.id,
        first.reason,
    );
}
