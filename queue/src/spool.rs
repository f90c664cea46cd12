//! `Spool`, the handle the engine holds: it opens the database, runs crash
//! recovery, starts the writer thread and sends it requests. Reads run
//! directly on the caller's thread. The calls of the side tables
//! (configuration objects, suppressions, backlogs, idempotency rows, daily
//! counters) are in `spool/side_tables.rs`.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Sender};

use crate::archive::{ARCHIVE_FILE_NAME, Archive, Journal};
use crate::clients::ClientPresence;
use crate::config::SpoolConfig;
use crate::delivered::{self, Delivered, DeliveredWrite};
use crate::error::SpoolError;
use crate::free_space::FreeSpaceGuard;
use crate::id::{IdGenerator, MessageId};
use crate::message::{Claimed, NewMessage, Outcome, StoredMessage};
use crate::quarantine::{self, Damaged, QuarantinedRow};
use crate::requests::{
    ActionRequest, ClaimRequest, Completion, ForgetRequest, InsertRequest, QuarantineRequest,
    RecordRequest, Request,
};
use crate::segments::{SegmentAppender, SegmentFiles};
use crate::select::{ClaimFilter, MAX_PAGE, QueueAction, QueueCounts, QueueFilter, QueuePage};
use crate::store::{self, EncodedMessage};
use crate::tracking::{TrackedMessage, TrackingKey};
use crate::writer::{Shared, Writer, WriterSettings, now_ms, on_writer_thread};

mod side_tables;

/// Name of the database file inside `SpoolConfig::dir`.
const DB_FILE_NAME: &str = "spool.redb";

/// The writer's channel, shared by every handle and the archiver.
type Requests = Arc<RwLock<Option<Sender<Request>>>>;

/// A snapshot of the spool's size and of the writer's work.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpoolStats {
    pub messages: u64,
    /// Unfinished recipients: scheduled + claimed.
    pub recipients: u64,
    pub scheduled: u64,
    pub claimed: u64,
    /// Size of the database files (`spool.redb`, `archive.redb`) and of
    /// the bodies' segment files.
    pub file_bytes: u64,
    /// Write transactions committed since open (one per group commit).
    pub commits: u64,
    /// Requests in the latest committed batch.
    pub last_batch: u64,
    /// Batches that failed (storage error or injected fault).
    pub failed_batches: u64,
    /// Times the database was reopened after a storage error.
    pub reopens: u64,
    /// Insert bytes waiting for the writer.
    pub pending_bytes: u64,
    /// Claimed recipients scheduled again by recovery when the spool opened.
    pub recovered_claims: u64,
    /// Recipient rows that could not be decoded and were moved to the
    /// quarantine table, since the spool was created.
    pub quarantined: u64,
}

/// The durable spool. Cheap to clone; all clones share one writer thread.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    /// `None` once shut down: new requests are answered `Closed` at once.
    requests: Requests,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The archiver thread (`archive.rs`) and what stops it: dropping the
    /// sender.
    archiver: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
    max_pending_bytes: usize,
    recovered_claims: u64,
    free_space: FreeSpaceGuard,
    /// Changes on reload (`set_min_free_bytes`).
    min_free_bytes: AtomicU64,
}

impl Spool {
    /// Creates the directory and the database file if needed, runs crash
    /// recovery (claimed recipients are scheduled again) and starts the writer.
    pub fn open(cfg: SpoolConfig) -> Result<Spool, SpoolError> {
        let path = cfg.dir.join(DB_FILE_NAME);
        let open_error = |reason: String| SpoolError::Open {
            path: path.clone(),
            reason,
        };
        // Like Postfix's queue directories: the daemon's user only.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cfg.dir)
            .map_err(|err| open_error(format!("cannot create the spool directory: {err}")))?;
        let db = store::open_database(&path, cfg.cache_bytes)
            .map_err(|err| open_error(err.to_string()))?;
        let segments = SegmentFiles::open(&cfg.dir)
            .map_err(|err| open_error(format!("cannot open the segment folder: {err}")))?;
        let segments = Arc::new(segments);
        let recovered = store::recover(&db, &segments, now_ms())?;
        quarantine::report(&recovered.quarantined);
        let appender = SegmentAppender::open(Arc::clone(&segments), store::live_segments(&db)?)
            .map_err(|err| open_error(format!("cannot open the segment files: {err}")))?;

        let archive_path = cfg.dir.join(ARCHIVE_FILE_NAME);
        let archive = Arc::new(Archive::open(&archive_path)?);
        let shared = Arc::new(Shared::new(path.clone(), db, segments, archive));
        let (sender, receiver) = channel::unbounded();
        let settings = WriterSettings {
            max_batch: cfg.max_batch.max(1),
            durable: cfg.durable,
            cache_bytes: cfg.cache_bytes,
            reopen_delay: cfg.reopen_delay,
            fail_commits: cfg.fail_commits.clone(),
            fail_segment_syncs: cfg.fail_segment_syncs.clone(),
            segment_bodies_from: cfg.segment_bodies_from,
            outcome_linger: cfg.outcome_linger,
            commit_delay: cfg.commit_delay,
        };
        let writer = Writer::new(
            Arc::clone(&shared),
            receiver,
            settings,
            IdGenerator::new(recovered.id_floor),
            appender,
            recovered.messages,
        );
        let handle = thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run())
            .map_err(|err| open_error(format!("cannot start the writer thread: {err}")))?;
        let requests: Requests = Arc::new(RwLock::new(Some(sender)));
        let archiver = start_archiver(&shared, &requests, cfg.archive_every)
            .map_err(|err| open_error(format!("cannot start the archiver thread: {err}")))?;

        Ok(Spool {
            inner: Arc::new(Inner {
                shared,
                requests,
                writer: Mutex::new(Some(handle)),
                archiver: Mutex::new(Some(archiver)),
                max_pending_bytes: cfg.max_pending_bytes,
                recovered_claims: recovered.unclaimed,
                free_space: FreeSpaceGuard::new(cfg.dir.clone()),
                min_free_bytes: AtomicU64::new(cfg.min_free_bytes),
            }),
        })
    }

    /// Counts an injecting client (an SMTP session that may send) as
    /// connected until the returned presence is dropped: a commit holding
    /// inserts from fewer than half of the connected clients waits up to
    /// `SpoolConfig::commit_delay` for more (`clients.rs`).
    pub fn client_connected(&self) -> ClientPresence {
        ClientPresence::new(Arc::clone(&self.inner.shared))
    }

    /// Spools a message. `done` runs on the writer thread after the durable
    /// commit, with the new id; keep it cheap (send on a channel). Errors found
    /// before queueing (invalid message, `Busy`, `Closed`) call `done` on this
    /// thread before `insert` returns.
    ///
    /// `claimed`: the caller delivers the recipients itself right after the
    /// commit; otherwise they are scheduled as due now.
    pub fn insert(
        &self,
        msg: NewMessage,
        claimed: bool,
        done: Box<dyn FnOnce(Result<MessageId, SpoolError>) + Send>,
    ) {
        let msg = match EncodedMessage::new(msg) {
            Ok(msg) => msg,
            Err(err) => return done(Err(err)),
        };
        if let Err(err) = self.check_free_space(msg.size_bytes()) {
            return done(Err(err));
        }
        if let Err(err) = self.reserve_pending(msg.size_bytes()) {
            return done(Err(err));
        }
        self.submit(Request::Insert(InsertRequest {
            msg,
            claimed,
            done,
            submitted: Instant::now(),
        }));
    }

    /// Records delivery outcomes; `done` runs on the writer thread after the
    /// durable commit. Outcomes for recipients no longer in the spool are ignored.
    pub fn record(
        &self,
        outcomes: Vec<Outcome>,
        done: Box<dyn FnOnce(Result<(), SpoolError>) + Send>,
    ) {
        self.record_with_index(outcomes, &[], Duration::ZERO, done);
    }

    /// [`Spool::record`] that also writes the delivered-index rows of the
    /// recipients whose outcome is final, in the same commit. The write
    /// prunes a few rows of messages received more than `retain` ago.
    pub fn record_with_index(
        &self,
        outcomes: Vec<Outcome>,
        delivered: &[Delivered],
        retain: Duration,
        done: Box<dyn FnOnce(Result<(), SpoolError>) + Send>,
    ) {
        let index = DeliveredWrite::new(delivered, retain);
        self.submit(Request::Record(RecordRequest {
            outcomes,
            index,
            done,
        }));
    }

    /// The tracked-links row of a tracking key, unless never written or
    /// pruned (see `tracking.rs`).
    pub fn tracked(&self, key: TrackingKey) -> Result<Option<TrackedMessage>, SpoolError> {
        self.inner.shared.read(|db| crate::tracking::get(db, key))
    }

    /// The delivered-index row of a recipient, unless never written or
    /// pruned: in the journal, else in the archive (`archive.rs`).
    pub fn delivered(&self, id: MessageId, rcpt: u32) -> Result<Option<Delivered>, SpoolError> {
        let shared = &self.inner.shared;
        match shared.read(|db| delivered::get(db, id, rcpt))? {
            Some(row) => Ok(Some(row)),
            None => shared.archive.read(|db| delivered::get(db, id, rcpt)),
        }
    }

    /// The delivered-index rows of every finished recipient of a message
    /// (those not pruned yet), for the history of a message that left.
    pub fn delivered_rows(&self, id: MessageId) -> Result<Vec<Delivered>, SpoolError> {
        let shared = &self.inner.shared;
        let mut rows = shared.archive.read(|db| delivered::of_message(db, id))?;
        // A row moved but not yet forgotten is in both: the same row.
        for row in shared.read(|db| delivered::of_message(db, id))? {
            if !rows.iter().any(|known| known.rcpt == row.rcpt) {
                rows.push(row);
            }
        }
        rows.sort_by_key(|row| row.rcpt);
        Ok(rows)
    }

    /// Whether a bounce report (`key`: what makes two reports the same,
    /// chosen by the caller) about this recipient was already marked.
    pub fn reported(&self, id: MessageId, rcpt: u32, key: &str) -> Result<bool, SpoolError> {
        self.inner
            .shared
            .read(|db| delivered::reported(db, id, rcpt, key))
    }

    /// Marks bounce reports as acted on, durably (see `delivered.rs`).
    pub fn mark_reported(&self, reports: &[(MessageId, u32, &str)]) -> Result<(), SpoolError> {
        let index = DeliveredWrite::reports(reports);
        self.wait_for(|done| {
            self.submit(Request::Record(RecordRequest {
                outcomes: Vec::new(),
                index,
                done,
            }))
        })
    }

    /// Rows in the tracked-links table.
    #[cfg(test)]
    pub(crate) fn inner_tracked_len(&self) -> u64 {
        self.inner.shared.read(crate::tracking::len).unwrap()
    }

    /// Rows in the delivered index: (journal, archive).
    #[cfg(test)]
    pub(crate) fn delivered_len(&self) -> Result<(u64, u64), SpoolError> {
        let shared = &self.inner.shared;
        let journal = shared.read(delivered::journal_len)?;
        Ok((journal, shared.archive.read(delivered::journal_len)?))
    }

    /// Whether the journals were short at the archiver's last move.
    #[cfg(test)]
    pub(crate) fn journals_short(&self) -> bool {
        self.inner.shared.archive.journals_short()
    }

    /// Moves the journal to the archive now, as the archiver does.
    #[cfg(test)]
    pub(crate) fn archive_now(&self) -> Result<(), SpoolError> {
        let journal = SpoolJournal {
            shared: Arc::clone(&self.inner.shared),
            requests: Arc::clone(&self.inner.requests),
        };
        crate::archive::move_journal(&self.inner.shared.archive, &journal)
    }

    /// Claims up to `limit` recipients due at `now_ms`, earliest first. They
    /// stay claimed until an outcome is recorded (`Outcome::Release` gives
    /// one back untried) or the process restarts.
    ///
    /// Claims are committed without fdatasync: a crash, or the reopen after
    /// a storage error, may roll the latest ones back, so a recipient held
    /// in memory can be due (and claimed) again; the caller must not start
    /// a second attempt for a recipient it already holds.
    pub fn claim_due(&self, now_ms: u64, limit: usize) -> Result<Vec<Claimed>, SpoolError> {
        self.claim(now_ms, limit, None)
    }

    /// [`Spool::claim_due`] that claims only the recipients `accept` takes
    /// (those whose route has room), looking at a bounded window of due
    /// entries (the head, then a part further on that moves from claim to
    /// claim); the others stay scheduled, due as before.
    pub fn claim_due_where(
        &self,
        now_ms: u64,
        limit: usize,
        accept: ClaimFilter,
    ) -> Result<Vec<Claimed>, SpoolError> {
        self.claim(now_ms, limit, Some(accept))
    }

    fn claim(
        &self,
        now_ms: u64,
        limit: usize,
        accept: Option<ClaimFilter>,
    ) -> Result<Vec<Claimed>, SpoolError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.wait_for(|done| {
            self.submit(Request::Claim(ClaimRequest {
                now_ms,
                limit,
                accept,
                done,
            }))
        })
    }

    /// Up to `limit` (at most `MAX_PAGE`) unfinished recipients matching
    /// `filter`, in id order from `from`; continue with the page's `next`.
    /// One page reads at most `MAX_PAGE` rows, so it may come back short
    /// (even empty) with a `next` when the filter matches little.
    pub fn queue_page(
        &self,
        filter: &QueueFilter,
        from: Option<(MessageId, u32)>,
        limit: usize,
    ) -> Result<QueuePage, SpoolError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let now = now_ms();
        let (page, damaged) = self
            .inner
            .shared
            .read(|db| store::queue_page(db, filter, from, limit, MAX_PAGE, now))?;
        damaged.into_iter().for_each(|d| self.quarantine_later(d));
        Ok(page)
    }

    /// Has the next commit quarantine a row a read found damaged.
    fn quarantine_later(&self, damaged: Damaged) {
        let done = Box::new(|_| ());
        self.submit(Request::Quarantine(QuarantineRequest { damaged, done }));
    }

    /// Applies an operator's action to the given recipients (at most
    /// `MAX_PAGE` per call, durably); returns per key whether it changed
    /// anything. Recipients already gone are skipped, not errors.
    pub fn queue_action(
        &self,
        action: QueueAction,
        keys: Vec<(MessageId, u32)>,
    ) -> Result<Vec<bool>, SpoolError> {
        self.act(action, keys, false)
    }

    /// [`Spool::queue_action`] on claimed recipients the caller took back
    /// from memory before any attempt (jobs pulled out of a ready queue):
    /// the action applies as if they were not claimed, and one it leaves
    /// unchanged is due again now, so none stays claimed with no holder.
    pub fn queue_action_returned(
        &self,
        action: QueueAction,
        keys: Vec<(MessageId, u32)>,
    ) -> Result<Vec<bool>, SpoolError> {
        self.act(action, keys, true)
    }

    fn act(
        &self,
        action: QueueAction,
        keys: Vec<(MessageId, u32)>,
        returned: bool,
    ) -> Result<Vec<bool>, SpoolError> {
        if keys.len() > MAX_PAGE {
            return Err(SpoolError::Invalid(format!(
                "{} recipients in one queue action; the limit is {MAX_PAGE} per call",
                keys.len()
            )));
        }
        self.wait_for(|done| {
            self.submit(Request::Action(ActionRequest {
                action,
                keys,
                returned,
                done,
            }))
        })
    }

    /// Unfinished recipients by status (queued, deferred, suspended, in flight).
    pub fn queue_counts(&self) -> Result<QueueCounts, SpoolError> {
        let now = now_ms();
        self.inner.shared.read(|db| store::queue_counts(db, now))
    }

    /// How much of quota `name` is used in `window` now.
    pub fn usage(&self, name: &str, window: crate::quota::Window) -> Result<u64, SpoolError> {
        Ok(self.usage_standing(name, window)?.used)
    }

    /// How much of quota `name` is used in `window` now, and when some of
    /// it frees.
    pub fn usage_standing(
        &self,
        name: &str,
        window: crate::quota::Window,
    ) -> Result<crate::quota::Standing, SpoolError> {
        let now = crate::writer::now_ms();
        self.inner
            .shared
            .read(|db| store::usage(db, name, window, now))
    }

    /// What was counted of quota `name` in one bucket of `window` (see
    /// [`crate::quota::Window::bucket`]): every message this spool committed.
    pub fn usage_in(
        &self,
        name: &str,
        window: crate::quota::Window,
        bucket: u32,
    ) -> Result<u64, SpoolError> {
        self.inner
            .shared
            .read(|db| store::usage_in(db, name, window, bucket))
    }

    /// Due time of the earliest scheduled recipient, if any.
    pub fn next_due_ms(&self) -> Result<Option<u64>, SpoolError> {
        self.inner.shared.read(store::next_due_ms)
    }

    /// A message that cannot be read back (envelope undecodable, body
    /// missing) is `Corrupt`, and is moved to the quarantine in the next
    /// commit, so no claim meets it again.
    pub fn load(&self, id: MessageId) -> Result<Option<StoredMessage>, SpoolError> {
        let segments = &self.inner.shared.segments;
        let loaded = self.inner.shared.read(|db| store::load(db, segments, id));
        if let Err(SpoolError::Corrupt(reason)) = &loaded {
            let reason = reason.clone();
            self.quarantine_later(Damaged {
                id,
                rcpt: None,
                reason,
            });
        }
        loaded
    }

    pub fn stats(&self) -> Result<SpoolStats, SpoolError> {
        let shared = &self.inner.shared;
        let counts = shared.read(store::counts)?;
        let file_bytes = fs::metadata(&shared.path)
            .map_err(|err| {
                SpoolError::Storage(format!("cannot stat {}: {err}", shared.path.display()))
            })?
            .len()
            + shared.archive.file_bytes()?
            + shared.segments.bytes();
        Ok(SpoolStats {
            messages: counts.messages,
            recipients: counts.recipients,
            scheduled: counts.scheduled,
            claimed: counts.recipients.saturating_sub(counts.scheduled),
            file_bytes,
            commits: shared.commits.load(Ordering::Relaxed),
            last_batch: shared.last_batch.load(Ordering::Relaxed),
            failed_batches: shared.failed_batches.load(Ordering::Relaxed),
            reopens: shared.reopens.load(Ordering::Relaxed),
            pending_bytes: shared.pending_bytes.load(Ordering::Relaxed) as u64,
            recovered_claims: self.inner.recovered_claims,
            quarantined: counts.quarantined,
        })
    }

    /// Up to `limit` (at most `MAX_PAGE`) rows of the quarantine: rows that
    /// could not be decoded, moved aside with their bytes.
    pub fn quarantined(&self, limit: usize) -> Result<Vec<QuarantinedRow>, SpoolError> {
        let limit = limit.min(MAX_PAGE);
        self.inner.shared.read(|db| quarantine::list(db, limit))
    }

    /// Gives free space back to the filesystem: copies the live bodies of
    /// mostly-empty segment files to a new one (then deletes them), and
    /// compacts the database file. Runs on the
    /// writer thread between batches and blocks every write while it runs, so
    /// call it when idle. `Ok(false)`: nothing to do, or skipped because
    /// requests were waiting.
    pub fn compact(&self) -> Result<bool, SpoolError> {
        self.wait_for(|done| self.submit(Request::Compact(done)))
    }

    /// Stops accepting requests, answers the ones already queued, and waits
    /// for the writer to close the database. Idempotent; also run when the
    /// last handle is dropped.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    /// [`Spool::insert`], waiting for the commit.
    pub fn insert_blocking(&self, msg: NewMessage, claimed: bool) -> Result<MessageId, SpoolError> {
        self.wait_for(|done| self.insert(msg, claimed, done))
    }

    /// [`Spool::record`], waiting for the commit.
    pub fn record_blocking(&self, outcomes: Vec<Outcome>) -> Result<(), SpoolError> {
        self.wait_for(|done| self.record(outcomes, done))
    }

    /// Starts a request with a completion that hands the result back here.
    fn wait_for<T: Send + 'static>(
        &self,
        start: impl FnOnce(Completion<T>),
    ) -> Result<T, SpoolError> {
        if on_writer_thread() {
            return Err(SpoolError::WouldDeadlock);
        }
        let (reply, result) = channel::bounded(1);
        start(Box::new(move |outcome| {
            let _ = reply.send(outcome);
        }));
        // A writer that died drops the completion unsent: report that as closed.
        result.recv().unwrap_or(Err(SpoolError::Closed))
    }

    /// Sets the free space inserts leave alone (see `SpoolConfig::min_free_bytes`).
    pub fn set_min_free_bytes(&self, bytes: u64) {
        self.inner.min_free_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Refuses an insert that would eat into the reserve.
    fn check_free_space(&self, bytes: usize) -> Result<(), SpoolError> {
        let reserve = self.inner.min_free_bytes.load(Ordering::Relaxed);
        if reserve == 0 {
            return Ok(());
        }
        self.inner
            .free_space
            .admit(bytes as u64, reserve)
            .map_err(|available| SpoolError::LowSpace {
                available_bytes: available,
                reserve_bytes: reserve,
            })
    }

    fn reserve_pending(&self, bytes: usize) -> Result<(), SpoolError> {
        let pending = &self.inner.shared.pending_bytes;
        let limit = self.inner.max_pending_bytes;
        let before = pending.fetch_add(bytes, Ordering::AcqRel);
        // An empty queue takes any message, so one larger than the limit still gets in.
        if before > 0 && before.saturating_add(bytes) > limit {
            pending.fetch_sub(bytes, Ordering::AcqRel);
            return Err(SpoolError::Busy {
                pending_bytes: before,
                limit_bytes: limit,
            });
        }
        Ok(())
    }

    fn submit(&self, request: Request) {
        let insert = matches!(request, Request::Insert(_));
        let unsent = {
            let sender = self
                .inner
                .requests
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            match sender.as_ref() {
                Some(sender) => sender.send(request).err().map(|failed| failed.into_inner()),
                None => Some(request),
            }
        };
        match unsent {
            Some(request) => {
                self.inner.shared.release_pending(request.pending_bytes());
                request.fail(SpoolError::Closed);
            }
            None if insert => self.inner.shared.arrivals.sent(),
            None => {}
        }
    }
}

/// Starts the thread that moves the delivered index's journal to the
/// archive every `every`.
fn start_archiver(
    shared: &Arc<Shared>,
    requests: &Requests,
    every: Duration,
) -> std::io::Result<(Sender<()>, JoinHandle<()>)> {
    let (stop, stopped) = channel::bounded(0);
    let journal = SpoolJournal {
        shared: Arc::clone(shared),
        requests: Arc::clone(requests),
    };
    let archive = Arc::clone(&shared.archive);
    let handle = thread::Builder::new()
        .name("spool-archiver".into())
        .spawn(move || crate::archive::run(archive, journal, every, stopped))?;
    Ok((stop, handle))
}

/// The archiver's view of the spool.
struct SpoolJournal {
    shared: Arc<Shared>,
    requests: Requests,
}

impl Journal for SpoolJournal {
    fn read<T>(
        &self,
        read: impl FnOnce(&redb::Database) -> Result<T, SpoolError>,
    ) -> Result<T, SpoolError> {
        self.shared.read(read)
    }

    fn forget(&self, keys: Vec<(MessageId, u32)>) -> Option<Result<(), SpoolError>> {
        let (reply, result) = channel::bounded(1);
        let done: Completion<()> = Box::new(move |outcome| {
            let _ = reply.send(outcome);
        });
        let request = Request::Forget(ForgetRequest { keys, done });
        {
            let sender = self.requests.read().unwrap_or_else(PoisonError::into_inner);
            sender.as_ref()?.send(request).ok()?;
        }
        result.recv().ok()
    }

    fn tracked_rows(&self) -> Result<u64, SpoolError> {
        self.shared.read(crate::tracking::len)
    }
}

impl Inner {
    fn shutdown(&self) {
        // The archiver first: its last move may still ask the writer to
        // forget rows.
        let archiver = self
            .archiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((stop, handle)) = archiver {
            drop(stop);
            if !on_writer_thread() {
                let _ = handle.join();
            }
        }
        // Dropping the only sender ends the writer once the queue is drained.
        drop(
            self.requests
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        if on_writer_thread() {
            // Called from a completion: the writer cannot wait for itself; it
            // stops on its own after the current batch.
            return;
        }
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("path", &self.inner.shared.path)
            .finish()
    }
}
