//! The writer thread: the only code that changes the spool.
//!
//! It takes every request waiting in its channel (up to `max_batch`), applies
//! them in one write transaction with one durable commit, then calls each
//! request's completion. This group commit is what lets many SMTP sessions
//! wait for fdatasync at the cost of one.
//!
//! After a storage error redb may refuse all further use of the open database
//! ("previous I/O error, close and re-open"), so the writer drops it and opens
//! the file again, retrying every `reopen_delay` until that works. Requests
//! fail with `SpoolError::Storage` meanwhile; committed data is untouched.

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{Receiver, RecvTimeoutError};
use redb::Database;

use crate::archive::Archive;
use crate::batch::{Batch, Prepared, Results, Writes, take_back_unsynced, write_batch};
use crate::clients::{self, InsertArrivals};
use crate::error::SpoolError;
use crate::id::{IdGenerator, MessageId};
use crate::quarantine;
use crate::requests::{Request, complete};
use crate::segments::{SegmentAppender, SegmentFiles};
use crate::select::ClaimCursor;
use crate::store;

/// The database as readers and the writer see it.
pub(crate) enum DbState {
    Open(Database),
    /// A storage error closed it and reopening has not worked yet.
    Unavailable(String),
    Closed,
}

/// What the writer thread and the `Spool` handles share.
pub(crate) struct Shared {
    pub(crate) path: PathBuf,
    /// Where the delivered index's rows go after their commit here.
    pub(crate) archive: Arc<Archive>,
    /// The message bodies' files (read by `load`, written by the writer).
    pub(crate) segments: Arc<SegmentFiles>,
    /// Readers hold the read lock for one read transaction; the writer holds
    /// it for one batch, and takes the write lock only to compact or reopen
    /// (both need the database to itself).
    pub(crate) db: RwLock<DbState>,
    pub(crate) commits: AtomicU64,
    pub(crate) last_batch: AtomicU64,
    pub(crate) failed_batches: AtomicU64,
    pub(crate) reopens: AtomicU64,
    pub(crate) pending_bytes: AtomicUsize,
    /// Injecting clients connected now (`clients.rs`).
    pub(crate) connected_clients: AtomicUsize,
    /// Inserts sent to the writer, for its wait for them (`clients.rs`).
    pub(crate) arrivals: InsertArrivals,
}

impl Shared {
    pub(crate) fn new(
        path: PathBuf,
        db: Database,
        segments: Arc<SegmentFiles>,
        archive: Arc<Archive>,
    ) -> Self {
        Shared {
            path,
            archive,
            segments,
            db: RwLock::new(DbState::Open(db)),
            commits: AtomicU64::new(0),
            last_batch: AtomicU64::new(0),
            failed_batches: AtomicU64::new(0),
            reopens: AtomicU64::new(0),
            pending_bytes: AtomicUsize::new(0),
            connected_clients: AtomicUsize::new(0),
            arrivals: InsertArrivals::default(),
        }
    }

    /// Runs `read` against the open database.
    pub(crate) fn read<T>(
        &self,
        read: impl FnOnce(&Database) -> Result<T, SpoolError>,
    ) -> Result<T, SpoolError> {
        match &*self.db.read().unwrap_or_else(PoisonError::into_inner) {
            DbState::Open(db) => read(db),
            DbState::Unavailable(reason) => Err(unavailable(reason)),
            DbState::Closed => Err(SpoolError::Closed),
        }
    }

    pub(crate) fn release_pending(&self, bytes: usize) {
        if bytes > 0 {
            self.pending_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
    }
}

/// The writer's fixed settings, taken from `SpoolConfig`.
pub(crate) struct WriterSettings {
    pub(crate) max_batch: usize,
    pub(crate) durable: bool,
    pub(crate) cache_bytes: usize,
    pub(crate) reopen_delay: Duration,
    pub(crate) fail_commits: Option<Arc<AtomicBool>>,
    pub(crate) fail_segment_syncs: Option<Arc<AtomicBool>>,
    pub(crate) segment_bodies_from: u64,
    pub(crate) outcome_linger: Duration,
    pub(crate) commit_delay: Duration,
}

thread_local! {
    static ON_WRITER_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// True inside completion callbacks, where a blocking spool call would wait
/// for the very thread that runs it.
pub(crate) fn on_writer_thread() -> bool {
    ON_WRITER_THREAD.with(Cell::get)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    requests: Receiver<Request>,
    settings: WriterSettings,
    ids: IdGenerator,
    /// Appends the bodies of new messages to segment files.
    appender: SegmentAppender,
    /// When to try reopening the database again while it is unavailable.
    retry_reopen_at: Instant,
    /// Where filtered claims go on walking the schedule past its head.
    claim_cursor: ClaimCursor,
    /// Messages in the spool after the last commit: whether new bodies go
    /// to segment files (`WriterSettings::segment_bodies_from`).
    queued: u64,
    /// Inserts taken from the channel so far (`InsertArrivals` counts the
    /// ones sent).
    inserts_taken: u64,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        requests: Receiver<Request>,
        settings: WriterSettings,
        ids: IdGenerator,
        appender: SegmentAppender,
        queued: u64,
    ) -> Self {
        Writer {
            shared,
            requests,
            settings,
            ids,
            appender,
            retry_reopen_at: Instant::now(),
            claim_cursor: None,
            queued,
            inserts_taken: 0,
        }
    }

    /// The thread body: runs until every `Spool` handle is shut down or
    /// dropped and the requests already queued are answered.
    pub(crate) fn run(mut self) {
        ON_WRITER_THREAD.with(|flag| flag.set(true));
        while let Some(first) = self.next_request() {
            let batch = self.gather(first);
            self.process(batch);
        }
        self.shared.archive.close();
        *self
            .shared
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner) = DbState::Closed;
    }

    /// Waits for a request; while the database is unavailable, wakes up to
    /// retry reopening it even if no request comes.
    fn next_request(&mut self) -> Option<Request> {
        loop {
            self.reopen_if_due();
            if self.db_is_open() {
                return self.requests.recv().ok();
            }
            let wait = self
                .retry_reopen_at
                .saturating_duration_since(Instant::now());
            match self.requests.recv_timeout(wait) {
                Ok(request) => return Some(request),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Takes what is already waiting, up to `max_batch` requests in all,
    /// then waits for more while the batch may: delivery outcomes alone
    /// wait `outcome_linger` for anything else (`DEFAULT_OUTCOME_LINGER`
    /// says why); inserts wait for other connected clients' up to
    /// `commit_delay` after the oldest of them came (`clients.rs` says why).
    fn gather(&mut self, first: Request) -> Batch {
        let gathered_at = Instant::now();
        let mut batch = Batch::default();
        self.push(&mut batch, first);
        self.take_waiting(&mut batch);
        while batch.len() < self.settings.max_batch {
            if batch.writes.only_outcomes() {
                let until = gathered_at + self.settings.outcome_linger;
                let wait = until.saturating_duration_since(Instant::now());
                match self.requests.recv_timeout(wait) {
                    Ok(request) => self.push(&mut batch, request),
                    Err(_) => break,
                }
            } else {
                // Past `until` the next round finds nothing to wait for.
                let Some((more, until)) = self.inserts_to_wait_for(&batch) else {
                    break;
                };
                let slept_from = Instant::now();
                let arrivals = &self.shared.arrivals;
                arrivals.sleep_until_sent(self.inserts_taken + more, until);
                crate::metrics::commit_waited(slept_from.elapsed());
            }
            self.take_waiting(&mut batch);
        }
        batch
    }

    /// How many more inserts the batch waits for, and until when; None to
    /// commit now.
    fn inserts_to_wait_for(&self, batch: &Batch) -> Option<(u64, Instant)> {
        let oldest = batch.writes.oldest_insert()?;
        let until = oldest + self.settings.commit_delay;
        let clients = self.shared.connected_clients.load(Ordering::Acquire);
        let wanted = clients::inserts_wanted(clients);
        let have = batch.writes.inserts.len();
        (have < wanted && Instant::now() < until).then(|| ((wanted - have) as u64, until))
    }

    fn push(&mut self, batch: &mut Batch, request: Request) {
        if matches!(request, Request::Insert(_)) {
            self.inserts_taken += 1;
        }
        batch.push(request);
    }

    fn take_waiting(&mut self, batch: &mut Batch) {
        while batch.len() < self.settings.max_batch {
            match self.requests.try_recv() {
                Ok(request) => self.push(batch, request),
                Err(_) => break,
            }
        }
    }

    fn process(&mut self, batch: Batch) {
        let Batch {
            writes,
            compactions,
        } = batch;
        if !writes.is_empty() {
            self.commit(writes);
        }
        for done in compactions {
            // Compaction stalls every writer; it runs only when nobody waits.
            let result = if self.requests.is_empty() {
                self.compact()
            } else {
                Ok(false)
            };
            complete(done, result);
        }
    }

    fn commit(&mut self, mut writes: Writes) {
        let batch_len = writes.len() as u64;
        let started = Instant::now();
        let result = self.apply_and_commit(&mut writes);
        // Released before the completions run, so a caller that saw its
        // insert complete also sees its bytes gone from the queue.
        self.shared.release_pending(writes.pending_bytes());
        match result {
            Ok(results) => {
                self.shared.commits.fetch_add(1, Ordering::Relaxed);
                self.shared.last_batch.store(batch_len, Ordering::Relaxed);
                crate::metrics::committed(started.elapsed(), batch_len);
                quarantine::report(&results.quarantined);
                writes.complete(results);
            }
            Err(err) => {
                self.shared.failed_batches.fetch_add(1, Ordering::Relaxed);
                writes.fail(err);
            }
        }
    }

    fn apply_and_commit(&mut self, writes: &mut Writes) -> Result<Results, SpoolError> {
        if self.fault_injected() {
            return Err(SpoolError::Storage("injected fault".into()));
        }
        self.reopen_if_due();
        let durable = self.settings.durable && writes.needs_durability();
        let shared = Arc::clone(&self.shared);
        let state = shared.db.read().unwrap_or_else(PoisonError::into_inner);
        let db = match &*state {
            DbState::Open(db) => db,
            DbState::Unavailable(reason) => return Err(unavailable(reason)),
            DbState::Closed => return Err(SpoolError::Closed),
        };
        let now = now_ms();
        let ids: Vec<MessageId> = writes
            .inserts
            .iter()
            .map(|_| self.ids.next_id(now))
            .collect();
        // A short queue keeps its bodies in the database: no segment file to
        // fdatasync beside redb's, which is ~6% of the CPU per message at
        // full load. A long one keeps the database small.
        let queued = self.queued + writes.inserts.len() as u64;
        let in_segments = queued >= self.settings.segment_bodies_from;
        let bodies = (writes.inserts.iter().zip(&ids))
            .filter(|_| in_segments)
            .map(|(insert, &id)| (id, insert.msg.body.as_slice(), insert.msg.body_crc));
        let appended = match self.appender.append(bodies, durable) {
            Ok(appended) => appended,
            Err(err) => {
                let err = SpoolError::Storage(format!("cannot write a segment file: {err}"));
                drop(state);
                self.reopen(&err);
                return Err(err);
            }
        };
        self.note_delivered_retention(writes);
        let archived_oldest_ms = self.archived_oldest_ms(writes);
        let prepared = Prepared {
            now,
            ids: &ids,
            bodies: &appended,
            id_high_water: self.ids.high_water(),
            durable,
            quick_repair: self.quick_repair(queued),
            sync_enabled: self.settings.durable,
            archived_oldest_ms,
        };
        let segments = &shared.segments;
        let result = write_batch(db, segments, &prepared, &mut self.claim_cursor, writes);
        // Always collected, even when the commit failed: one sync at a time.
        let synced = self.appender.wait_synced();
        let synced = match synced {
            Ok(()) if durable && !appended.refs.is_empty() && self.sync_fault_injected() => {
                Err(std::io::Error::other("injected fdatasync fault"))
            }
            synced => synced,
        };
        let result = result.map(|mut results| {
            if let Err(err) = synced {
                take_back_unsynced(db, segments, writes, &mut results, &err);
            }
            self.appender.committed(&results.usage);
            self.queued = results.messages;
            results
        });
        drop(state);
        if let Err(err) = &result
            && err.is_storage()
        {
            self.reopen(err);
        }
        result
    }

    /// Whether a durable commit records redb's allocator state, so that the
    /// open after a crash need not walk the whole file. It costs ~10% of
    /// the CPU per message at full load (a second fdatasync and the
    /// snapshot), so only a long queue pays it, or journals not yet moved
    /// to the archive: otherwise the file holds little more than a short
    /// queue, and its repair is quick anyway.
    fn quick_repair(&self, queued: u64) -> bool {
        queued >= self.settings.segment_bodies_from || !self.shared.archive.journals_short()
    }

    /// The archive prunes by the retention the rows are written with.
    fn note_delivered_retention(&self, writes: &Writes) {
        let mut retained = writes.records.iter().filter_map(|r| r.index.retain_ms());
        if let Some(retain_ms) = retained.next_back() {
            self.shared.archive.set_delivered_retain_ms(retain_ms);
        }
    }

    /// For the pruning of bounce-report marks (`delivered::apply`), only
    /// when a request marks some.
    fn archived_oldest_ms(&self, writes: &Writes) -> Option<u64> {
        let archive = &self.shared.archive;
        if !writes.records.iter().any(|r| r.index.has_reports()) {
            return None;
        }
        archive.read(crate::delivered::oldest_ms).unwrap_or_else(|err| {
            log::warn!("spool: cannot read the archive's oldest row ({err}); bounce-report marks are not pruned in this commit");
            Some(0)
        })
    }

    fn compact(&mut self) -> Result<bool, SpoolError> {
        let shared = Arc::clone(&self.shared);
        let mut state = shared.db.write().unwrap_or_else(PoisonError::into_inner);
        let result = match &mut *state {
            DbState::Open(db) => crate::compact::compact(db, &shared.segments, &mut self.appender),
            DbState::Unavailable(reason) => return Err(unavailable(reason)),
            DbState::Closed => return Err(SpoolError::Closed),
        };
        drop(state);
        if let Err(err) = &result
            && err.is_storage()
        {
            self.reopen(err);
        }
        result
    }

    fn fault_injected(&self) -> bool {
        let flag = self.settings.fail_commits.as_ref();
        flag.is_some_and(|flag| flag.load(Ordering::SeqCst))
    }

    fn sync_fault_injected(&self) -> bool {
        let flag = self.settings.fail_segment_syncs.as_ref();
        flag.is_some_and(|flag| flag.load(Ordering::SeqCst))
    }

    fn db_is_open(&self) -> bool {
        let state = self
            .shared
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        matches!(*state, DbState::Open(_))
    }

    fn reopen_if_due(&mut self) {
        let unavailable = {
            let state = self
                .shared
                .db
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            matches!(*state, DbState::Unavailable(_))
        };
        if unavailable && Instant::now() >= self.retry_reopen_at {
            self.reopen_database();
        }
    }

    /// After a storage error: close the database (redb may have latched the
    /// error) and open the file again.
    fn reopen(&mut self, cause: &SpoolError) {
        {
            let mut state = self
                .shared
                .db
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            // Replacing the state drops the Database, which closes the file.
            *state = DbState::Unavailable(format!("closed after an error: {cause}"));
        }
        self.reopen_database();
    }

    fn reopen_database(&mut self) {
        let mut state = self
            .shared
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let DbState::Open(_) | DbState::Closed = *state {
            return;
        }
        match store::open_database(&self.shared.path, self.settings.cache_bytes) {
            Ok(db) => {
                *state = DbState::Open(db);
                self.shared.reopens.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                *state = DbState::Unavailable(format!("reopening the database failed: {err}"));
                self.retry_reopen_at = Instant::now() + self.settings.reopen_delay;
            }
        }
    }
}

fn unavailable(reason: &str) -> SpoolError {
    SpoolError::Storage(format!(
        "the spool database is unavailable ({reason}); the writer keeps retrying to reopen it"
    ))
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
