//! The delivered index: what a bounce arriving days later needs to know
//! about a recipient that left the spool (tenant, campaign, address...).
//!
//! One table, (message id, recipient index) -> a compact record, written
//! by the same group commit that records the recipient's final outcome
//! (delivered, bounced or expired), so it costs no fsync of its own. That
//! table in `spool.redb` is a journal: the archiver moves its rows to the
//! same table in `archive.redb` about once a second (`archive.rs`), and
//! lookups read both. Message ids start with their reception time, so the
//! oldest rows are the first keys: each write, here and in the archive,
//! also deletes up to [`PRUNE_PER_ROW`] rows per row it adds whose message
//! is older than the retention. Pruning so keeps pace with twice the
//! delivery rate without a timer; when nothing is delivered nothing grows
//! either.
//!
//! Beside it, the `reported` table remembers which bounce reports were
//! already turned into events, so that the same DSN sent again (a
//! receiving MTA that retries, a replay) makes no second event: (message
//! id, recipient index, report key) -> when. At most
//! [`MAX_REPORTS_PER_RECIPIENT`] keys per recipient, and a mark lives as
//! long as delivered rows of the same age do (the oldest delivered row
//! sets the cutoff), so the table stays a small multiple of the index.

use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::error::SpoolError;
use crate::id::{MessageId, id_timestamp_ms};
use crate::store::open_if_created;

/// (message id, recipient index) -> [`Delivered`] encoded (see `encode`).
pub(crate) const DELIVERED: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("delivered");
/// (message id, recipient index, report key) -> time ms of the first report.
const REPORTED: TableDefinition<(u64, u32, &str), u64> = TableDefinition::new("reported");

/// Distinct reports remembered per recipient; beyond, a report is still
/// acted on but no longer remembered (one recipient gets few distinct
/// bounces; more are a sender making up statuses).
pub(crate) const MAX_REPORTS_PER_RECIPIENT: usize = 8;
/// A report key is cut to this many bytes (on a character boundary).
pub(crate) const MAX_REPORT_KEY_BYTES: usize = 512;

/// Expired rows deleted per row written (see the module comment).
pub(crate) const PRUNE_PER_ROW: usize = 2;
/// Each text field is cut to this many bytes (on a character boundary):
/// enough for any address or Message-ID, small enough to keep rows small.
pub(crate) const MAX_DELIVERED_FIELD_BYTES: usize = 1024;

const VERSION: u8 = 1;

/// What the index keeps about one finished recipient.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    pub id: MessageId,
    pub rcpt: u32,
    pub tenant: String,
    pub group: String,
    pub channel: String,
    pub campaign: String,
    /// The address the message went to.
    pub recipient: String,
    /// The message's `Message-ID:` header.
    pub header_message_id: String,
    pub route: String,
    /// When the final outcome was recorded, in ms since the Unix epoch.
    pub time_ms: u64,
}

/// Rows for the index, encoded on the caller's thread, with the retention
/// that decides which old rows the same write prunes.
#[derive(Debug, Default)]
pub(crate) struct DeliveredWrite {
    rows: Vec<(MessageId, u32, Vec<u8>)>,
    retain_ms: u64,
    /// Bounce reports to remember: (message id, recipient index, key).
    reports: Vec<(MessageId, u32, String)>,
}

/// One encoded row on its way from the journal to the archive.
pub(crate) struct JournalRow {
    pub(crate) id: MessageId,
    pub(crate) rcpt: u32,
    pub(crate) value: Vec<u8>,
}

impl DeliveredWrite {
    /// The retention this write prunes by, if it writes rows.
    pub(crate) fn retain_ms(&self) -> Option<u64> {
        (!self.rows.is_empty()).then_some(self.retain_ms)
    }

    /// Whether this write marks bounce reports.
    pub(crate) fn has_reports(&self) -> bool {
        !self.reports.is_empty()
    }

    pub(crate) fn new(rows: &[Delivered], retain: Duration) -> DeliveredWrite {
        DeliveredWrite {
            rows: rows.iter().map(|d| (d.id, d.rcpt, encode(d))).collect(),
            retain_ms: u64::try_from(retain.as_millis()).unwrap_or(u64::MAX),
            reports: Vec::new(),
        }
    }

    /// Marks bounce reports as acted on (see the module comment).
    pub(crate) fn reports(reports: &[(MessageId, u32, &str)]) -> DeliveredWrite {
        DeliveredWrite {
            reports: reports
                .iter()
                .map(|(id, rcpt, key)| (*id, *rcpt, clip_to(key, MAX_REPORT_KEY_BYTES).to_owned()))
                .collect(),
            ..DeliveredWrite::default()
        }
    }
}

/// Writes the rows and prunes expired ones, inside the writer's
/// transaction. `archived_oldest_ms`: the reception time of the oldest
/// row in the archive, if it has any.
pub(crate) fn apply(
    txn: &WriteTransaction,
    write: &DeliveredWrite,
    now_ms: u64,
    archived_oldest_ms: Option<u64>,
) -> Result<(), SpoolError> {
    apply_rows(txn, write, now_ms)?;
    apply_reports(txn, &write.reports, now_ms, archived_oldest_ms)
}

/// The first `max` rows of the journal, oldest messages first.
pub(crate) fn journal_head(db: &Database, max: usize) -> Result<Vec<JournalRow>, SpoolError> {
    let txn = db.begin_read()?;
    let Some(table) = open_if_created(&txn, DELIVERED)? else {
        return Ok(Vec::new());
    };
    let mut rows = Vec::new();
    for entry in table.iter()?.take(max) {
        let (key, value) = entry?;
        let (id, rcpt) = key.value();
        rows.push(JournalRow {
            id,
            rcpt,
            value: value.value().to_vec(),
        });
    }
    Ok(rows)
}

/// Rows in a `delivered` table: the journal's, or the archive's.
pub(crate) fn journal_len(db: &Database) -> Result<u64, SpoolError> {
    use redb::ReadableTableMetadata;
    let txn = db.begin_read()?;
    let Some(table) = open_if_created(&txn, DELIVERED)? else {
        return Ok(0);
    };
    Ok(table.len()?)
}

/// The reception time of the oldest row's message, if there is a row.
pub(crate) fn oldest_ms(db: &Database) -> Result<Option<u64>, SpoolError> {
    let txn = db.begin_read()?;
    let Some(table) = open_if_created(&txn, DELIVERED)? else {
        return Ok(None);
    };
    Ok(table
        .first()?
        .map(|(key, _)| id_timestamp_ms(key.value().0)))
}

/// Writes moved rows into the archive's table and prunes as many expired
/// ones per row as a journal write does.
pub(crate) fn archive_rows(
    txn: &WriteTransaction,
    rows: &[JournalRow],
    cutoff_ms: u64,
) -> Result<(), SpoolError> {
    let mut table = txn.open_table(DELIVERED)?;
    for row in rows {
        table.insert((row.id, row.rcpt), row.value.as_slice())?;
    }
    pop_older(
        &mut table,
        rows.len().saturating_mul(PRUNE_PER_ROW),
        cutoff_ms,
        |key| key.0,
    )
}

/// Deletes rows the archive holds from the journal.
pub(crate) fn forget(txn: &WriteTransaction, keys: &[(MessageId, u32)]) -> Result<(), SpoolError> {
    let mut table = txn.open_table(DELIVERED)?;
    for key in keys {
        table.remove(key)?;
    }
    Ok(())
}

fn apply_rows(
    txn: &WriteTransaction,
    write: &DeliveredWrite,
    now_ms: u64,
) -> Result<(), SpoolError> {
    if write.rows.is_empty() {
        return Ok(());
    }
    let mut table = txn.open_table(DELIVERED)?;
    for (id, rcpt, value) in &write.rows {
        table.insert((*id, *rcpt), value.as_slice())?;
    }
    let cutoff_ms = now_ms.saturating_sub(write.retain_ms);
    pop_older(
        &mut table,
        write.rows.len().saturating_mul(PRUNE_PER_ROW),
        cutoff_ms,
        |key| key.0,
    )
}

/// Deletes up to `max` first rows whose message was received before
/// `cutoff_ms` (ids start with their reception time: the oldest come first).
fn pop_older<K: redb::Key + 'static, V: redb::Value + 'static>(
    table: &mut redb::Table<'_, K, V>,
    max: usize,
    cutoff_ms: u64,
    id_of: impl for<'a> Fn(&K::SelfType<'a>) -> MessageId,
) -> Result<(), SpoolError> {
    for _ in 0..max {
        let expired = match table.first()? {
            Some((key, _)) => id_timestamp_ms(id_of(&key.value())) < cutoff_ms,
            None => false,
        };
        if !expired {
            break;
        }
        table.pop_first()?;
    }
    Ok(())
}

/// Remembers the reports (within the per-recipient bound) and forgets a
/// few marks older than the oldest delivered row.
fn apply_reports(
    txn: &WriteTransaction,
    reports: &[(MessageId, u32, String)],
    now_ms: u64,
    archived_oldest_ms: Option<u64>,
) -> Result<(), SpoolError> {
    if reports.is_empty() {
        return Ok(());
    }
    let journal_oldest_ms = txn
        .open_table(DELIVERED)?
        .first()?
        .map(|(key, _)| id_timestamp_ms(key.value().0));
    let oldest_row_ms = match (archived_oldest_ms, journal_oldest_ms) {
        (Some(a), Some(j)) => Some(a.min(j)),
        (a, j) => a.or(j),
    };
    let mut table = txn.open_table(REPORTED)?;
    for (id, rcpt, key) in reports {
        let known = table
            .range((*id, *rcpt, "")..)?
            .take(MAX_REPORTS_PER_RECIPIENT)
            .map_while(|entry| entry.ok())
            .take_while(|(k, _)| (k.value().0, k.value().1) == (*id, *rcpt))
            .count();
        if known < MAX_REPORTS_PER_RECIPIENT {
            table.insert((*id, *rcpt, key.as_str()), now_ms)?;
        }
    }
    let Some(cutoff_ms) = oldest_row_ms else {
        return Ok(());
    };
    pop_older(
        &mut table,
        reports.len().saturating_mul(PRUNE_PER_ROW),
        cutoff_ms,
        |key| key.0,
    )
}

/// Whether this report of this recipient was already acted on.
pub(crate) fn reported(
    db: &Database,
    id: MessageId,
    rcpt: u32,
    key: &str,
) -> Result<bool, SpoolError> {
    let txn = db.begin_read()?;
    let Some(table) = open_if_created(&txn, REPORTED)? else {
        return Ok(false);
    };
    let key = clip_to(key, MAX_REPORT_KEY_BYTES);
    Ok(table.get((id, rcpt, key))?.is_some())
}

/// The row of one recipient, if it was indexed and not pruned yet.
pub(crate) fn get(
    db: &Database,
    id: MessageId,
    rcpt: u32,
) -> Result<Option<Delivered>, SpoolError> {
    let txn = db.begin_read()?;
    let Some(table) = open_if_created(&txn, DELIVERED)? else {
        return Ok(None);
    };
    let Some(value) = table.get((id, rcpt))? else {
        return Ok(None);
    };
    decode(id, rcpt, value.value()).map(Some).ok_or_else(|| {
        SpoolError::Corrupt(format!(
            "delivered index row for recipient {rcpt} of message {id:016x}"
        ))
    })
}

/// The rows of every indexed recipient of a message, by recipient.
pub(crate) fn of_message(db: &Database, id: MessageId) -> Result<Vec<Delivered>, SpoolError> {
    let txn = db.begin_read()?;
    let Some(table) = open_if_created(&txn, DELIVERED)? else {
        return Ok(Vec::new());
    };
    let mut rows = Vec::new();
    for entry in table.range((id, 0)..=(id, u32::MAX))? {
        let (key, value) = entry?;
        let rcpt = key.value().1;
        rows.push(decode(id, rcpt, value.value()).ok_or_else(|| {
            SpoolError::Corrupt(format!(
                "delivered index row for recipient {rcpt} of message {id:016x}"
            ))
        })?);
    }
    Ok(rows)
}

/// Layout: version (1), time ms (8, LE), then tenant, group, channel,
/// campaign, recipient, header Message-ID and route, each a u16 LE length
/// and UTF-8 bytes. 23 bytes of framing plus the texts.
fn encode(d: &Delivered) -> Vec<u8> {
    let fields = text_fields(d);
    let text_len: usize = fields.iter().map(|f| clip(f).len()).sum();
    let mut out = Vec::with_capacity(1 + 8 + 2 * fields.len() + text_len);
    out.push(VERSION);
    out.extend_from_slice(&d.time_ms.to_le_bytes());
    for field in fields {
        let field = clip(field);
        // clip() keeps every field under u16::MAX bytes.
        out.extend_from_slice(&(field.len() as u16).to_le_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out
}

fn text_fields(d: &Delivered) -> [&str; 7] {
    [
        &d.tenant,
        &d.group,
        &d.channel,
        &d.campaign,
        &d.recipient,
        &d.header_message_id,
        &d.route,
    ]
}

/// `None` for anything that is not a whole, valid row.
fn decode(id: MessageId, rcpt: u32, bytes: &[u8]) -> Option<Delivered> {
    let (&version, rest) = bytes.split_first()?;
    if version != VERSION {
        return None;
    }
    let (time, mut rest) = rest.split_at_checked(8)?;
    let mut texts: [String; 7] = Default::default();
    for text in &mut texts {
        let (len, after) = rest.split_at_checked(2)?;
        let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
        let (value, after) = after.split_at_checked(len)?;
        *text = String::from_utf8(value.to_vec()).ok()?;
        rest = after;
    }
    if !rest.is_empty() {
        return None;
    }
    let [
        tenant,
        group,
        channel,
        campaign,
        recipient,
        header_message_id,
        route,
    ] = texts;
    Some(Delivered {
        id,
        rcpt,
        tenant,
        group,
        channel,
        campaign,
        recipient,
        header_message_id,
        route,
        time_ms: u64::from_le_bytes(time.try_into().ok()?),
    })
}

fn clip(text: &str) -> &str {
    clip_to(text, MAX_DELIVERED_FIELD_BYTES)
}

fn clip_to(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Delivered {
        Delivered {
            id: 42 << 20,
            rcpt: 3,
            tenant: "acme".into(),
            group: "g".into(),
            channel: "marketing".into(),
            campaign: "spring-ü".into(),
            recipient: "bob@example.net".into(),
            header_message_id: "<abc@example.com>".into(),
            route: "relay-1".into(),
            time_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn rows_round_trip() {
        let d = row();
        assert_eq!(decode(d.id, d.rcpt, &encode(&d)), Some(d));
        let empty = Delivered::default();
        assert_eq!(encode(&empty).len(), 1 + 8 + 7 * 2);
        assert_eq!(decode(0, 0, &encode(&empty)), Some(empty));
    }

    #[test]
    fn damaged_rows_are_refused_not_panics() {
        let bytes = encode(&row());
        for cut in 0..bytes.len() {
            assert_eq!(decode(1, 1, &bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(1, 1, &longer), None);
        let mut other_version = bytes;
        other_version[0] = 9;
        assert_eq!(decode(1, 1, &other_version), None);
    }

    fn record(spool: &crate::Spool, rows: &[Delivered], retain: Duration) {
        let (tx, rx) = crossbeam::channel::bounded(1);
        spool.record_with_index(
            Vec::new(),
            rows,
            retain,
            Box::new(move |r| tx.send(r).unwrap()),
        );
        rx.recv().unwrap().unwrap();
    }

    /// Writes rows `make(0..count)`, a thousand per commit, kept a day.
    fn record_in_thousands(spool: &crate::Spool, count: u64, make: impl Fn(u64) -> Delivered) {
        for batch in 0..count / 1000 {
            let chunk: Vec<Delivered> = (0..1000).map(|i| make(batch * 1000 + i)).collect();
            record(spool, &chunk, Duration::from_secs(86_400));
        }
    }

    /// A spool whose archiver waits an hour: the test moves the journal.
    fn open_unmoved(dir: &std::path::Path) -> crate::Spool {
        let mut cfg = crate::SpoolConfig::new(dir);
        cfg.archive_every = Duration::from_secs(3600);
        crate::Spool::open(cfg).unwrap()
    }

    #[test]
    fn rows_are_found_survive_a_reopen_and_expired_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open_unmoved(dir.path());
        assert!(!spool.journals_short(), "unknown until the first move");
        let now = crate::writer::now_ms();
        let day_ms = 86_400_000;
        // Three rows of messages received 40 days ago, one of today.
        let old: Vec<Delivered> = (0..3)
            .map(|i| Delivered {
                id: ((now - 40 * day_ms) << 20) + i,
                ..row()
            })
            .collect();
        record(&spool, &old, Duration::from_secs(60 * 86_400));
        assert_eq!(
            spool.delivered_len().unwrap(),
            (3, 0),
            "within 60 days: kept"
        );
        assert_eq!(spool.delivered(old[0].id, 3).unwrap(), Some(old[0].clone()));
        spool.archive_now().unwrap();
        assert_eq!(
            spool.delivered_len().unwrap(),
            (0, 3),
            "moved to the archive"
        );
        assert_eq!(spool.delivered(old[0].id, 3).unwrap(), Some(old[0].clone()));
        let fresh = Delivered {
            id: now << 20,
            ..row()
        };
        record(
            &spool,
            std::slice::from_ref(&fresh),
            Duration::from_secs(30 * 86_400),
        );
        assert_eq!(spool.delivered_len().unwrap(), (1, 3));
        // One row moved: at most PRUNE_PER_ROW expired rows go with it.
        spool.archive_now().unwrap();
        assert_eq!(
            spool.delivered_len().unwrap(),
            (0, 4 - PRUNE_PER_ROW as u64)
        );
        assert_eq!(spool.delivered(old[0].id, 3).unwrap(), None);
        assert_eq!(spool.delivered(fresh.id, 3).unwrap(), Some(fresh.clone()));
        assert_eq!(spool.delivered(fresh.id, 4).unwrap(), None);
        spool.shutdown();
        drop(spool);

        let spool = open_unmoved(dir.path());
        assert_eq!(spool.delivered(fresh.id, 3).unwrap(), Some(fresh));
        spool.shutdown();
    }

    #[test]
    fn a_message_s_rows_are_read_from_the_journal_and_the_archive_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open_unmoved(dir.path());
        let id = crate::writer::now_ms() << 20;
        let rows: Vec<Delivered> = (0..3).map(|rcpt| Delivered { id, rcpt, ..row() }).collect();
        let retain = Duration::from_secs(86_400);
        record(&spool, &rows[..2], retain);
        spool.archive_now().unwrap();
        // Recipient 1 again, as after a crash between the archive's commit
        // and the journal's forgetting; recipient 2 only in the journal.
        record(&spool, &rows[1..], retain);
        assert_eq!(spool.delivered_len().unwrap(), (2, 2));
        assert_eq!(spool.delivered_rows(id).unwrap(), rows);
        spool.archive_now().unwrap();
        assert_eq!(spool.delivered_len().unwrap(), (0, 3));
        assert_eq!(spool.delivered_rows(id).unwrap(), rows);
        spool.shutdown();
    }

    /// A journal longer than one move's chunk (a spool written before the
    /// archive) goes over in several archive commits at one move.
    #[test]
    fn a_long_journal_moves_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open_unmoved(dir.path());
        let now = crate::writer::now_ms();
        let rows = 25_000u64;
        record_in_thousands(&spool, rows, |n| Delivered {
            id: (now << 20) + n,
            ..row()
        });
        assert_eq!(spool.delivered_len().unwrap(), (rows, 0));
        spool.archive_now().unwrap();
        assert_eq!(spool.delivered_len().unwrap(), (0, rows));
        assert!(spool.journals_short());
        let last = (now << 20) + rows - 1;
        assert_eq!(spool.delivered(last, 3).unwrap().map(|d| d.id), Some(last));
        spool.shutdown();
    }

    #[test]
    fn a_failed_move_counts_the_journals_long() {
        let dir = tempfile::tempdir().unwrap();
        let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut cfg = crate::SpoolConfig::new(dir.path());
        cfg.archive_every = Duration::from_secs(3600);
        cfg.fail_commits = Some(fail.clone());
        let spool = crate::Spool::open(cfg).unwrap();
        let fresh = Delivered {
            id: crate::writer::now_ms() << 20,
            ..row()
        };
        record(
            &spool,
            std::slice::from_ref(&fresh),
            Duration::from_secs(86_400),
        );
        spool.archive_now().unwrap();
        assert!(spool.journals_short());
        record(
            &spool,
            &[Delivered { rcpt: 4, ..fresh }],
            Duration::from_secs(86_400),
        );
        fail.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(spool.archive_now().is_err(), "the journal's forget fails");
        assert!(!spool.journals_short());
        fail.store(false, std::sync::atomic::Ordering::SeqCst);
        spool.archive_now().unwrap();
        assert!(spool.journals_short());
        assert_eq!(spool.delivered_len().unwrap(), (0, 2));
        spool.shutdown();
    }

    #[test]
    fn the_archiver_moves_the_journal_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = crate::SpoolConfig::new(dir.path());
        cfg.archive_every = Duration::from_millis(20);
        let spool = crate::Spool::open(cfg).unwrap();
        let fresh = Delivered {
            id: crate::writer::now_ms() << 20,
            ..row()
        };
        record(
            &spool,
            std::slice::from_ref(&fresh),
            Duration::from_secs(86_400),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        // The flag is set once the move has also counted the journals.
        while spool.delivered_len().unwrap() != (0, 1) || !spool.journals_short() {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                spool.delivered_len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(spool.delivered(fresh.id, fresh.rcpt).unwrap(), Some(fresh));
        spool.shutdown();
        assert!(dir.path().join(crate::archive::ARCHIVE_FILE_NAME).exists());
    }

    /// Prints the file growth per row (the figure in the README); no
    /// assertion on it beyond a sanity bound.
    #[test]
    fn cost_per_row_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open_unmoved(dir.path());
        let rows = 20_000u64;
        let before = spool.stats().unwrap().file_bytes;
        let now = crate::writer::now_ms();
        record_in_thousands(&spool, rows, |n| Delivered {
            id: (now << 20) + n,
            rcpt: 0,
            recipient: format!("user{}@example.net", n % 1000),
            header_message_id: format!("<{}.{}.1700000000@mail.example.com>", n / 1000, n % 1000),
            ..row()
        });
        spool.compact().unwrap();
        let after = spool.stats().unwrap().file_bytes;
        let per_row = after.saturating_sub(before) / rows;
        let encoded = encode(&Delivered {
            recipient: "user123@example.net".into(),
            header_message_id: "<1.123.1700000000@mail.example.com>".into(),
            ..row()
        })
        .len();
        eprintln!(
            "delivered index: {encoded} bytes encoded + 12 key, {per_row} bytes of file per row"
        );
        assert!(per_row < 1024, "{per_row} bytes per row");
        spool.shutdown();
    }

    #[test]
    fn reports_are_remembered_across_a_reopen_within_a_bound() {
        let dir = tempfile::tempdir().unwrap();
        let spool = crate::Spool::open(crate::SpoolConfig::new(dir.path())).unwrap();
        let id = crate::writer::now_ms() << 20;
        assert!(!spool.reported(id, 1, "bounce|5.1.1|a@example.net").unwrap());
        spool
            .mark_reported(&[(id, 1, "bounce|5.1.1|a@example.net")])
            .unwrap();
        assert!(spool.reported(id, 1, "bounce|5.1.1|a@example.net").unwrap());
        assert!(!spool.reported(id, 1, "bounce|4.2.2|a@example.net").unwrap());
        assert!(!spool.reported(id, 2, "bounce|5.1.1|a@example.net").unwrap());
        // Made-up statuses beyond the bound are not remembered.
        let keys: Vec<String> = (0..2 * MAX_REPORTS_PER_RECIPIENT)
            .map(|i| format!("bounce|5.9.{i}|a@example.net"))
            .collect();
        for key in &keys {
            spool.mark_reported(&[(id, 1, key.as_str())]).unwrap();
        }
        let remembered = keys
            .iter()
            .filter(|k| spool.reported(id, 1, k).unwrap())
            .count();
        assert_eq!(remembered, MAX_REPORTS_PER_RECIPIENT - 1);
        spool.shutdown();
        drop(spool);

        let spool = crate::Spool::open(crate::SpoolConfig::new(dir.path())).unwrap();
        assert!(spool.reported(id, 1, "bounce|5.1.1|a@example.net").unwrap());
        spool.shutdown();
    }

    #[test]
    fn report_marks_older_than_the_oldest_delivered_row_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open_unmoved(dir.path());
        let now = crate::writer::now_ms();
        let old = (now - 40 * 86_400_000) << 20;
        spool
            .mark_reported(&[(old, 0, "bounce|5.1.1|a@x")])
            .unwrap();
        let fresh = Delivered {
            id: now << 20,
            ..row()
        };
        record(&spool, &[fresh], Duration::from_secs(30 * 86_400));
        // The oldest row is in the archive, none in the journal.
        spool.archive_now().unwrap();
        spool
            .mark_reported(&[(now << 20, 3, "bounce|5.1.1|b@x")])
            .unwrap();
        assert!(!spool.reported(old, 0, "bounce|5.1.1|a@x").unwrap());
        assert!(spool.reported(now << 20, 3, "bounce|5.1.1|b@x").unwrap());
        spool.shutdown();
    }

    #[test]
    fn long_fields_are_cut_on_a_character_boundary() {
        let mut d = row();
        d.header_message_id = "é".repeat(MAX_DELIVERED_FIELD_BYTES);
        let back = decode(d.id, d.rcpt, &encode(&d)).unwrap();
        assert!(back.header_message_id.len() <= MAX_DELIVERED_FIELD_BYTES);
        assert!(back.header_message_id.chars().all(|c| c == 'é'));
    }
}
