//! The archive: `archive.redb` beside `spool.redb`, the long-term home of
//! the delivered index (`delivered.rs`), whose rows outlive their message
//! by `retain_days`.
//!
//! Why a second file: after a crash redb either repairs its whole file
//! (walks every page) or, with quick repair, needs an allocator snapshot
//! and a second fdatasync in every commit (10% of the CPU per message at
//! full load, BENCHMARKS.md). Keeping the index in `spool.redb` meant
//! paying that on every commit, or a repair that grows with 30 days of
//! history. Here the group commit still writes each row to the spool's
//! `delivered` table, so a row is as durable as the outcome it belongs to;
//! that table is now a journal, which the archiver thread empties into this
//! file about once a second (one durable commit per move, quick repair
//! on), then asks the writer to forget what it moved. So `spool.redb`
//! holds the queue and about a second of rows, and its commits skip quick
//! repair while the queue is short (`Writer::quick_repair`).
//!
//! A crash between the archive's commit and the forgetting leaves rows in
//! both files: the next move writes them again, the same keys and values.
//! Lookups read the journal first, then the archive.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use crossbeam::channel::{Receiver, RecvTimeoutError};
use redb::{Database, Durability};

use crate::delivered::{self, JournalRow};
use crate::error::SpoolError;
use crate::id::MessageId;
use crate::store;

pub(crate) const ARCHIVE_FILE_NAME: &str = "archive.redb";
/// Rows moved per archive commit.
const MOVE_CHUNK: usize = 10_000;
/// redb's page cache for the archive: its writes append at the end of the
/// index and prune its front, and a lookup (a bounce) is rare, so a small
/// cache does; it keeps the daemon's memory within goal 4's bound.
const CACHE_BYTES: usize = 4 * 1024 * 1024;
/// While the journals hold fewer rows than this, a crash's full repair of
/// `spool.redb` reads little beyond the queue (~200 bytes a row).
const SHORT_JOURNAL_ROWS: u64 = 50_000;

pub(crate) struct Archive {
    path: std::path::PathBuf,
    /// `None` once the spool is shut down (the file is closed with it).
    db: RwLock<Option<Database>>,
    /// Retention of the delivered index in ms, as last written with a row
    /// (`DeliveredWrite`); `u64::MAX` until then: nothing is pruned.
    delivered_retain_ms: AtomicU64,
    /// Set by the archiver: the journals are short enough for commits
    /// without quick repair (see `SHORT_JOURNAL_ROWS`).
    journals_short: AtomicBool,
}

impl Archive {
    pub(crate) fn open(path: &std::path::Path) -> Result<Archive, SpoolError> {
        let db = store::open_database(path, CACHE_BYTES).map_err(|err| SpoolError::Open {
            path: path.to_path_buf(),
            reason: err.to_string(),
        })?;
        Ok(Archive {
            path: path.to_path_buf(),
            db: RwLock::new(Some(db)),
            delivered_retain_ms: AtomicU64::new(u64::MAX),
            journals_short: AtomicBool::new(false),
        })
    }

    pub(crate) fn set_delivered_retain_ms(&self, retain_ms: u64) {
        self.delivered_retain_ms.store(retain_ms, Ordering::Relaxed);
    }

    pub(crate) fn journals_short(&self) -> bool {
        self.journals_short.load(Ordering::Relaxed)
    }

    /// The file's size.
    pub(crate) fn file_bytes(&self) -> Result<u64, SpoolError> {
        let metadata = std::fs::metadata(&self.path).map_err(|err| {
            SpoolError::Storage(format!("cannot stat {}: {err}", self.path.display()))
        })?;
        Ok(metadata.len())
    }

    /// Runs `read` against the open archive.
    pub(crate) fn read<T>(
        &self,
        read: impl FnOnce(&Database) -> Result<T, SpoolError>,
    ) -> Result<T, SpoolError> {
        match &*self.db.read().unwrap_or_else(PoisonError::into_inner) {
            Some(db) => read(db),
            None => Err(SpoolError::Closed),
        }
    }

    /// Closes the file (the spool's writer, when it stops).
    pub(crate) fn close(&self) {
        self.db
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Writes journal rows here and prunes expired ones, durably.
    fn store(&self, rows: &[JournalRow], now_ms: u64) -> Result<(), SpoolError> {
        self.read(|db| Self::store_in(db, rows, now_ms, &self.delivered_retain_ms))
    }

    fn store_in(
        db: &Database,
        rows: &[JournalRow],
        now_ms: u64,
        retain: &AtomicU64,
    ) -> Result<(), SpoolError> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(true);
        let retain_ms = retain.load(Ordering::Relaxed);
        delivered::archive_rows(&txn, rows, now_ms.saturating_sub(retain_ms))?;
        txn.commit()?;
        Ok(())
    }
}

/// What the archiver needs of the spool: reading the journal and asking
/// the writer to forget rows (`None` once the spool is shut down).
pub(crate) trait Journal: Send + Sync {
    fn read<T>(
        &self,
        read: impl FnOnce(&Database) -> Result<T, SpoolError>,
    ) -> Result<T, SpoolError>;
    fn forget(&self, keys: Vec<(MessageId, u32)>) -> Option<Result<(), SpoolError>>;
    fn tracked_rows(&self) -> Result<u64, SpoolError>;
}

/// The archiver thread's body: every `every`, moves the journal to the
/// archive, until `stop` is dropped.
pub(crate) fn run(
    archive: Arc<Archive>,
    journal: impl Journal,
    every: Duration,
    stop: Receiver<()>,
) {
    let mut failing = false;
    loop {
        match stop.recv_timeout(every) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        match move_journal(&archive, &journal) {
            Ok(()) if failing => {
                failing = false;
                log::info!("spool: the archive takes delivered-index rows again");
            }
            Ok(()) => {}
            Err(err) if !failing => {
                failing = true;
                log::error!(
                    "spool: cannot move delivered-index rows to {ARCHIVE_FILE_NAME}: {err}; they stay in spool.redb (bounce lookups still find them) and the move is tried again every {every:?}"
                );
            }
            Err(_) => {}
        }
    }
}

/// Moves the whole journal, a chunk per archive commit, then records
/// whether the journals are short. A failed move counts them long: the
/// journal may grow until the archive takes rows again, and commits
/// record the snapshot meanwhile.
pub(crate) fn move_journal(archive: &Archive, journal: &impl Journal) -> Result<(), SpoolError> {
    let moved = move_all(archive, journal);
    if moved.is_err() {
        archive.journals_short.store(false, Ordering::Relaxed);
    }
    moved
}

fn move_all(archive: &Archive, journal: &impl Journal) -> Result<(), SpoolError> {
    loop {
        let rows = journal.read(|db| delivered::journal_head(db, MOVE_CHUNK))?;
        if rows.is_empty() {
            break;
        }
        archive.store(&rows, crate::writer::now_ms())?;
        let moved = rows.len();
        let keys = rows.into_iter().map(|row| (row.id, row.rcpt)).collect();
        match journal.forget(keys) {
            Some(result) => result?,
            None => return Err(SpoolError::Closed),
        }
        if moved < MOVE_CHUNK {
            break;
        }
    }
    let journal_rows = journal.read(delivered::journal_len)? + journal.tracked_rows()?;
    archive
        .journals_short
        .store(journal_rows < SHORT_JOURNAL_ROWS, Ordering::Relaxed);
    Ok(())
}
