//! The spool's tables: their layout, opening the database file and starting
//! write transactions. The work on the tables is split by job: `write.rs`
//! (changes inside a write transaction), `repair.rs` (quarantining rows that
//! cannot be decoded), `recovery.rs` (what runs once at open) and `query.rs`
//! (reads).
//!
//! Data model (keys are ordered, values are `codec` records):
//! - `messages`: id -> envelope (mail from, recipient addresses, meta).
//! - `body_refs`: id -> (segment, offset, length): where the body is in the
//!   segment files (see `segments/mod.rs` and `bodies.rs`).
//! - `segment_usage`: segment -> (live bodies, live bytes): a segment file
//!   is deleted once the commit that removes its last body is durable.
//! - `bodies`: id -> wire bytes: the bodies written while the queue was
//!   short (`SpoolConfig::segment_bodies_from`), and those of spools
//!   written before segment files; a message has a row here or in
//!   `body_refs`, never both.
//! - `recipients`: (id, rcpt index) -> attempts, next attempt time, claimed.
//!   A row exists while the recipient is unfinished. A message leaves the spool
//!   (with its body) when a range lookup finds no row left for it; a counter in
//!   the envelope would instead rewrite the whole envelope on every `Done`.
//! - `schedule`: (due ms, id, rcpt) -> (): the retry index in due order.
//! - `last_replies`: (id, rcpt) -> the reply of the recipient's last
//!   deferred attempt, for `queue list`; gone with the recipient row.
//! - `counters`: name -> u64; holds the message id high-water mark.
//! - `suppressions`: (tenant, lowercase address) -> (time ms, reason, source);
//!   tenant "" is the global list (see `suppress.rs`).
//! - `delivered`: (id, rcpt) -> tenant, group, channel, campaign, address,
//!   Message-ID, route, time: finished recipients, for tying bounces that
//!   arrive later (see `delivered.rs`; written and pruned there). A
//!   journal: the archiver moves its rows to `archive.redb` (`archive.rs`).
//! - `webhook_backlog`: (sink, seq) -> event JSON; read and written only by
//!   `backlog.rs`.
//! - `daily_counters`: (UTC day, tenant) -> the engine's tally bytes for
//!   `sendctl report`; read and written only by `daily.rs`.
//! - `quarantine`: (table, id, rcpt) -> rows that could not be decoded, moved
//!   aside by the transaction that met them (see `quarantine.rs`).
//!
//! Invariant: every recipient row is either scheduled (exactly one `schedule`
//! entry, at its `next_attempt_ms`) or claimed (no entry, held in memory by
//! the delivery side). Recovery turns every claimed row back into scheduled.
//! A row that cannot be decoded is quarantined (row and schedule entry gone)
//! by whichever write meets it first, so no request fails on it.

mod bodies;
mod query;
mod recovery;
mod repair;
mod write;

use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, DatabaseError, Durability, Key, ReadOnlyTable, ReadTransaction, Table,
    TableDefinition, Value, WriteTransaction,
};

use crate::error::SpoolError;
use crate::quarantine::{CorruptRecipient, QuarantineTable};
use crate::segments::SegmentFiles;

pub(crate) use bodies::{bodies_in, live_segments, segment_usage};
pub(crate) use query::{
    counts, load, next_due_ms, objects, queue_counts, queue_page, suppressed, suppression,
    suppressions, usage, usage_in,
};
pub(crate) use recovery::recover;
pub(crate) use write::EncodedMessage;

const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
const RECIPIENTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("recipients");
const SCHEDULE: TableDefinition<(u64, u64, u32), ()> = TableDefinition::new("schedule");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const LAST_REPLIES: TableDefinition<(u64, u32), &str> = TableDefinition::new("last_replies");

/// Longest last reply kept per recipient (an SMTP reply can be long).
pub const MAX_LAST_REPLY_BYTES: usize = 512;

/// (quota name, window kind, bucket) -> count; see `quota.rs`.
const USAGE: TableDefinition<(&str, u8, u32), u64> = TableDefinition::new("usage");
/// (kind, name) -> JSON: configuration objects (servers, groups, users...).
const OBJECTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("objects");

/// (tenant, lowercase address) -> (time ms, reason, source).
const SUPPRESSIONS: TableDefinition<(&str, &str), (u64, &str, &str)> =
    TableDefinition::new("suppressions");

const NEXT_ID_COUNTER: &str = "next_message_id";
/// Recipient rows moved to the quarantine since the spool was created.
const QUARANTINED_COUNTER: &str = "quarantined_recipients";

/// All tables of the spool, opened in one write transaction.
pub(crate) struct WriteTables<'txn> {
    messages: Table<'txn, u64, &'static [u8]>,
    bodies: Table<'txn, u64, &'static [u8]>,
    recipients: Table<'txn, (u64, u32), &'static [u8]>,
    schedule: Table<'txn, (u64, u64, u32), ()>,
    last_replies: Table<'txn, (u64, u32), &'static str>,
    counters: Table<'txn, &'static str, u64>,
    usage: Table<'txn, (&'static str, u8, u32), u64>,
    objects: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    suppressions: Table<'txn, (&'static str, &'static str), (u64, &'static str, &'static str)>,
    quarantine: QuarantineTable<'txn>,
    body_refs: Table<'txn, u64, (u32, u64, u32)>,
    segment_usage: Table<'txn, u32, (u64, u64)>,
    /// Rows this transaction quarantined, reported once it commits.
    quarantined: Vec<CorruptRecipient>,
    /// Live bodies and bytes per segment this transaction added or removed.
    usage_changes: bodies::UsageChanges,
    /// To read a body the transaction quarantines or checks.
    segments: Arc<SegmentFiles>,
}

impl<'txn> WriteTables<'txn> {
    /// Opens (and on first use creates) every table.
    pub(crate) fn open(
        txn: &'txn WriteTransaction,
        segments: &Arc<SegmentFiles>,
    ) -> Result<Self, SpoolError> {
        Ok(WriteTables {
            messages: txn.open_table(MESSAGES)?,
            bodies: txn.open_table(BODIES)?,
            recipients: txn.open_table(RECIPIENTS)?,
            schedule: txn.open_table(SCHEDULE)?,
            last_replies: txn.open_table(LAST_REPLIES)?,
            counters: txn.open_table(COUNTERS)?,
            usage: txn.open_table(USAGE)?,
            objects: txn.open_table(OBJECTS)?,
            suppressions: txn.open_table(SUPPRESSIONS)?,
            quarantine: QuarantineTable::open(txn)?,
            body_refs: txn.open_table(bodies::BODY_REFS)?,
            segment_usage: txn.open_table(bodies::SEGMENT_USAGE)?,
            quarantined: Vec::new(),
            usage_changes: Default::default(),
            segments: Arc::clone(segments),
        })
    }

    /// The rows quarantined so far in this transaction.
    pub(crate) fn take_quarantined(&mut self) -> Vec<CorruptRecipient> {
        std::mem::take(&mut self.quarantined)
    }
}

/// Opens the database file, creating it if missing. After a crash redb
/// repairs the file here; quick-repair commits keep that short.
pub(crate) fn open_database(path: &Path, cache_bytes: usize) -> Result<Database, DatabaseError> {
    create_private_file(path).map_err(redb::StorageError::from)?;
    Database::builder().set_cache_size(cache_bytes).create(path)
}

/// The spool holds every queued message and the stored configuration
/// (encrypted secrets included): only the daemon's user may read it.
const DATABASE_FILE_MODE: u32 = 0o600;

/// Creates `path` with mode 0600 whatever the umask (outside systemd it is
/// often 022, which gave 0644), and takes group and other permissions off a
/// file an earlier version created. Never loosens a stricter mode.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(DATABASE_FILE_MODE)
        .open(path)?;
    let mode = file.metadata()?.permissions().mode() & 0o7777;
    let private = (mode & 0o700) | DATABASE_FILE_MODE;
    if mode != private {
        file.set_permissions(std::fs::Permissions::from_mode(private))?;
    }
    Ok(())
}

/// Opens `table` for reading; `None` while no write has created it yet, so
/// a read of a table nothing was ever written to finds it empty.
pub(crate) fn open_if_created<K: Key + 'static, V: Value + 'static>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<ReadOnlyTable<K, V>>, SpoolError> {
    match txn.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Starts a write transaction. Durable ones fdatasync on commit, and with
/// `quick_repair` record redb's allocator state, so reopening after a crash
/// does not walk the whole file (`Writer::quick_repair` says when).
/// Non-durable ones skip both: a crash rolls them back.
pub(crate) fn begin_write(
    db: &Database,
    durable: bool,
    quick_repair: bool,
) -> Result<WriteTransaction, SpoolError> {
    let mut txn = db.begin_write()?;
    let durability = if durable {
        Durability::Immediate
    } else {
        Durability::None
    };
    txn.set_durability(durability)?;
    txn.set_quick_repair(durable && quick_repair);
    Ok(txn)
}

/// Makes a transaction begun without durability durable after all (it
/// turned out to free segment files, which are deleted after it).
pub(crate) fn make_durable(
    txn: &mut WriteTransaction,
    quick_repair: bool,
) -> Result<(), SpoolError> {
    txn.set_durability(Durability::Immediate)?;
    txn.set_quick_repair(quick_repair);
    Ok(())
}

/// Test hook: replaces the stored value of a recipient row with `value`,
/// as a damaged disk block or a buggy build would.
#[cfg(test)]
pub(crate) fn overwrite_recipient_row(
    db: &Database,
    (id, rcpt): (crate::id::MessageId, u32),
    value: &[u8],
) -> Result<(), SpoolError> {
    let txn = begin_write(db, true, true)?;
    txn.open_table(RECIPIENTS)?.insert((id, rcpt), value)?;
    txn.commit()?;
    Ok(())
}
