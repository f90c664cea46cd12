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
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{Receiver, RecvTimeoutError};
use redb::Database;

use crate::backlog::{self, BacklogRequest, BacklogWritten};
use crate::daily::{self, DailyRequest};
use crate::delivered::{self, DeliveredWrite};
use crate::error::SpoolError;
use crate::id::{IdGenerator, MessageId};
use crate::idempotency::{self, IdempotencyRequest};
use crate::message::{Claimed, Outcome};
use crate::quarantine::{self, CorruptRecipient, Damaged};
use crate::select::{ClaimCursor, ClaimFilter, QueueAction};
use crate::store::{self, EncodedMessage, WriteTables};
pub(crate) use ObjectRequest as ObjectWrite;

/// Called once with the result of a request.
pub(crate) type Completion<T> = Box<dyn FnOnce(Result<T, SpoolError>) + Send>;

pub(crate) struct InsertRequest {
    pub(crate) msg: EncodedMessage,
    pub(crate) claimed: bool,
    pub(crate) done: Completion<MessageId>,
}

pub(crate) struct RecordRequest {
    pub(crate) outcomes: Vec<Outcome>,
    /// Delivered-index rows written in the same transaction.
    pub(crate) index: DeliveredWrite,
    pub(crate) done: Completion<()>,
}

/// Stores (`Some`) or deletes (`None`) a configuration object; the
/// completion says whether one existed before.
pub(crate) struct ObjectRequest {
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) done: Completion<bool>,
}

/// Adds (`entry` is `Some((reason, source))`) or removes a suppression;
/// the completion says whether the address was listed before.
pub(crate) struct SuppressRequest {
    pub(crate) tenant: String,
    pub(crate) address: String,
    pub(crate) entry: Option<(String, String)>,
    pub(crate) done: Completion<bool>,
}

/// An operator's action on chosen recipients; the completion gets, per
/// key, whether it changed anything.
pub(crate) struct ActionRequest {
    pub(crate) action: QueueAction,
    pub(crate) keys: Vec<(MessageId, u32)>,
    /// The keys are claimed recipients the caller took back from memory.
    pub(crate) returned: bool,
    pub(crate) done: Completion<Vec<bool>>,
}

/// Quarantines what a read found damaged: a message that cannot be
/// delivered (envelope or body unreadable) with every recipient row it
/// still has, or one recipient row that still does not decode.
pub(crate) struct QuarantineRequest {
    pub(crate) damaged: Damaged,
    pub(crate) done: Completion<()>,
}

pub(crate) struct ClaimRequest {
    pub(crate) now_ms: u64,
    pub(crate) limit: usize,
    pub(crate) accept: Option<ClaimFilter>,
    pub(crate) done: Completion<Vec<Claimed>>,
}

/// One message on the writer's channel.
pub(crate) enum Request {
    Insert(InsertRequest),
    Record(RecordRequest),
    Claim(ClaimRequest),
    Object(ObjectRequest),
    Suppress(SuppressRequest),
    Action(ActionRequest),
    Backlog(BacklogRequest),
    Daily(DailyRequest),
    Idempotency(IdempotencyRequest),
    Quarantine(QuarantineRequest),
    Compact(Completion<bool>),
}

impl Request {
    /// Bytes counted against `max_pending_bytes` while this request waits.
    pub(crate) fn pending_bytes(&self) -> usize {
        match self {
            Request::Insert(insert) => insert.msg.size_bytes(),
            _ => 0,
        }
    }

    pub(crate) fn fail(self, err: SpoolError) {
        match self {
            Request::Insert(r) => complete(r.done, Err(err)),
            Request::Record(r) => complete(r.done, Err(err)),
            Request::Claim(r) => complete(r.done, Err(err)),
            Request::Object(r) => complete(r.done, Err(err)),
            Request::Suppress(r) => complete(r.done, Err(err)),
            Request::Action(r) => complete(r.done, Err(err)),
            Request::Backlog(r) => complete(r.done, Err(err)),
            Request::Daily(r) => complete(r.done, Err(err)),
            Request::Idempotency(r) => complete(r.done, Err(err)),
            Request::Quarantine(r) => complete(r.done, Err(err)),
            Request::Compact(done) => complete(done, Err(err)),
        }
    }
}

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
    /// Readers hold the read lock for one read transaction; the writer holds
    /// it for one batch, and takes the write lock only to compact or reopen
    /// (both need the database to itself).
    pub(crate) db: RwLock<DbState>,
    pub(crate) commits: AtomicU64,
    pub(crate) last_batch: AtomicU64,
    pub(crate) failed_batches: AtomicU64,
    pub(crate) reopens: AtomicU64,
    pub(crate) pending_bytes: AtomicUsize,
}

impl Shared {
    pub(crate) fn new(path: PathBuf, db: Database) -> Self {
        Shared {
            path,
            db: RwLock::new(DbState::Open(db)),
            commits: AtomicU64::new(0),
            last_batch: AtomicU64::new(0),
            failed_batches: AtomicU64::new(0),
            reopens: AtomicU64::new(0),
            pending_bytes: AtomicUsize::new(0),
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
    /// When to try reopening the database again while it is unavailable.
    retry_reopen_at: Instant,
    /// Where filtered claims go on walking the schedule past its head.
    claim_cursor: ClaimCursor,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        requests: Receiver<Request>,
        settings: WriterSettings,
        ids: IdGenerator,
    ) -> Self {
        Writer {
            shared,
            requests,
            settings,
            ids,
            retry_reopen_at: Instant::now(),
            claim_cursor: None,
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

    /// Takes what is already waiting, up to `max_batch` requests in all.
    fn gather(&self, first: Request) -> Batch {
        let mut batch = Batch::default();
        batch.push(first);
        while batch.len() < self.settings.max_batch {
            match self.requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        batch
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
        let result = write_batch(db, durable, &mut self.ids, &mut self.claim_cursor, writes);
        drop(state);
        if let Err(err) = &result
            && err.is_storage()
        {
            self.reopen(err);
        }
        result
    }

    fn compact(&mut self) -> Result<bool, SpoolError> {
        let shared = Arc::clone(&self.shared);
        let mut state = shared.db.write().unwrap_or_else(PoisonError::into_inner);
        let result = match &mut *state {
            DbState::Open(db) => compact_database(db),
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

/// Applies a whole batch in one write transaction and commits it.
fn write_batch(
    db: &Database,
    durable: bool,
    ids: &mut IdGenerator,
    claim_cursor: &mut ClaimCursor,
    writes: &mut Writes,
) -> Result<Results, SpoolError> {
    let txn = store::begin_write(db, durable)?;
    let results = {
        let mut tables = WriteTables::open(&txn)?;
        let now = now_ms();
        let mut inserted = Vec::with_capacity(writes.inserts.len());
        for insert in &writes.inserts {
            if let Some(tracking) = &insert.msg.tracking
                && tracking.collides(&txn)?
            {
                inserted.push(Err(SpoolError::TrackingKeyTaken));
                continue;
            }
            if let Err(refusal) = tables.count_quotas(&insert.msg, now)? {
                inserted.push(Err(SpoolError::QuotaExceeded(refusal)));
                continue;
            }
            let id = ids.next_id(now);
            tables.insert_message(id, &insert.msg, insert.claimed, now)?;
            if let Some(tracking) = &insert.msg.tracking {
                tracking.write(&txn, id, now)?;
            }
            inserted.push(Ok(id));
        }
        let marks = writes.inserts.iter().zip(&inserted);
        let marks = marks.filter(|(_, result)| result.is_ok());
        idempotency::put(&txn, marks.filter_map(|(i, _)| i.msg.idempotency.as_ref()))?;
        if inserted.iter().any(Result::is_ok) {
            tables.store_id_floor(ids.high_water())?;
        }
        for outcome in writes.records.iter().flat_map(|record| &record.outcomes) {
            tables.apply(outcome, now)?;
        }
        for record in &writes.records {
            delivered::apply(&txn, &record.index, now)?;
        }
        let mut objects = Vec::with_capacity(writes.objects.len());
        for o in &writes.objects {
            objects.push(tables.put_object(&o.kind, &o.name, o.value.as_deref())?);
        }
        let mut suppressed = Vec::with_capacity(writes.suppressions.len());
        for s in &writes.suppressions {
            let entry = s
                .entry
                .as_ref()
                .map(|(reason, source)| (now, reason.as_str(), source.as_str()));
            suppressed.push(tables.put_suppression(&s.tenant, &s.address, entry)?);
        }
        let mut acted = Vec::with_capacity(writes.actions.len());
        for request in &writes.actions {
            let mut changed = Vec::with_capacity(request.keys.len());
            for &(id, rcpt) in &request.keys {
                let returned = request.returned;
                changed.push(tables.apply_action(request.action, id, rcpt, now, returned)?);
            }
            acted.push(changed);
        }
        let mut backlogged = Vec::with_capacity(writes.backlogs.len());
        for request in &writes.backlogs {
            backlogged.push(backlog::apply(&txn, request)?);
        }
        for request in &writes.dailies {
            daily::apply(&txn, request)?;
        }
        let mut idempotent = Vec::with_capacity(writes.idempotency.len());
        for request in &writes.idempotency {
            idempotent.push(idempotency::apply(&txn, request)?);
        }
        for q in &writes.quarantines {
            let Damaged { id, rcpt, reason } = &q.damaged;
            match rcpt {
                None => tables.quarantine_undeliverable(*id, reason, now)?,
                Some(rcpt) => tables.recheck_recipient(*id, *rcpt)?,
            }
        }
        let mut claimed = Vec::with_capacity(writes.claims.len());
        for claim in &mut writes.claims {
            let accept = claim.accept.as_mut();
            claimed.push(tables.claim_due(claim.now_ms, claim.limit, accept, claim_cursor)?);
        }
        Results {
            inserted,
            objects,
            suppressed,
            acted,
            backlogged,
            idempotent,
            claimed,
            quarantined: tables.take_quarantined(),
        }
    };
    txn.commit()?;
    Ok(results)
}

fn compact_database(db: &mut Database) -> Result<bool, SpoolError> {
    let compacted = db.compact()?;
    // Compaction's own commits do not record the allocator state; one empty
    // quick-repair commit does, so a crash after it still reopens quickly.
    store::begin_write(db, true)?.commit()?;
    Ok(compacted)
}

fn unavailable(reason: &str) -> SpoolError {
    SpoolError::Storage(format!(
        "the spool database is unavailable ({reason}); the writer keeps retrying to reopen it"
    ))
}

/// Calls a completion. A panicking callback must not take the writer thread,
/// and with it every later request, down.
fn complete<T>(done: Completion<T>, result: Result<T, SpoolError>) {
    let _ = panic::catch_unwind(AssertUnwindSafe(move || done(result)));
}

/// The requests taken from the channel in one go.
#[derive(Default)]
struct Batch {
    writes: Writes,
    compactions: Vec<Completion<bool>>,
}

impl Batch {
    fn push(&mut self, request: Request) {
        match request {
            Request::Insert(insert) => self.writes.inserts.push(insert),
            Request::Record(record) => self.writes.records.push(record),
            Request::Claim(claim) => self.writes.claims.push(claim),
            Request::Object(object) => self.writes.objects.push(object),
            Request::Suppress(s) => self.writes.suppressions.push(s),
            Request::Action(action) => self.writes.actions.push(action),
            Request::Backlog(b) => self.writes.backlogs.push(b),
            Request::Daily(d) => self.writes.dailies.push(d),
            Request::Idempotency(i) => self.writes.idempotency.push(i),
            Request::Quarantine(q) => self.writes.quarantines.push(q),
            Request::Compact(done) => self.compactions.push(done),
        }
    }

    fn len(&self) -> usize {
        self.writes.len() + self.compactions.len()
    }
}

/// The requests of one write transaction, grouped by kind. Inserts are
/// applied first, then outcomes, then claims, so a claim in the same batch
/// can already see what the others scheduled.
#[derive(Default)]
struct Writes {
    inserts: Vec<InsertRequest>,
    records: Vec<RecordRequest>,
    objects: Vec<ObjectRequest>,
    suppressions: Vec<SuppressRequest>,
    actions: Vec<ActionRequest>,
    backlogs: Vec<BacklogRequest>,
    dailies: Vec<DailyRequest>,
    idempotency: Vec<IdempotencyRequest>,
    quarantines: Vec<QuarantineRequest>,
    claims: Vec<ClaimRequest>,
}

/// What a committed batch hands back, in the order of `Writes`. An insert
/// refused by a quota fails alone; the rest of the batch commits. A
/// recipient row that cannot be decoded fails nothing: it is quarantined
/// and the request that met it sees the recipient as gone.
struct Results {
    inserted: Vec<Result<MessageId, SpoolError>>,
    objects: Vec<bool>,
    suppressed: Vec<bool>,
    acted: Vec<Vec<bool>>,
    backlogged: Vec<BacklogWritten>,
    /// Expired idempotency rows removed, per request.
    idempotent: Vec<u64>,
    claimed: Vec<Vec<Claimed>>,
    /// Rows the batch met that could not be decoded and moved aside.
    quarantined: Vec<CorruptRecipient>,
}

impl Writes {
    fn len(&self) -> usize {
        self.inserts.len()
            + self.records.len()
            + self.objects.len()
            + self.suppressions.len()
            + self.actions.len()
            + self.backlogs.len()
            + self.dailies.len()
            + self.idempotency.len()
            + self.quarantines.len()
            + self.claims.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pending_bytes(&self) -> usize {
        self.inserts
            .iter()
            .map(|insert| insert.msg.size_bytes())
            .sum()
    }

    /// Claims alone need no fdatasync: if they are lost in a crash, recovery
    /// would have scheduled those recipients again anyway.
    fn needs_durability(&self) -> bool {
        !self.inserts.is_empty()
            || !self.records.is_empty()
            || !self.objects.is_empty()
            || !self.suppressions.is_empty()
            || !self.actions.is_empty()
            || !self.backlogs.is_empty()
            || !self.dailies.is_empty()
            || !self.idempotency.is_empty()
            || !self.quarantines.is_empty()
    }

    fn complete(self, results: Results) {
        for (insert, id) in self.inserts.into_iter().zip(results.inserted) {
            complete(insert.done, id);
        }
        for record in self.records {
            complete(record.done, Ok(()));
        }
        for (object, existed) in self.objects.into_iter().zip(results.objects) {
            complete(object.done, Ok(existed));
        }
        for (s, existed) in self.suppressions.into_iter().zip(results.suppressed) {
            complete(s.done, Ok(existed));
        }
        for (action, changed) in self.actions.into_iter().zip(results.acted) {
            complete(action.done, Ok(changed));
        }
        for (b, written) in self.backlogs.into_iter().zip(results.backlogged) {
            complete(b.done, Ok(written));
        }
        for d in self.dailies {
            complete(d.done, Ok(()));
        }
        for (i, removed) in self.idempotency.into_iter().zip(results.idempotent) {
            complete(i.done, Ok(removed));
        }
        for q in self.quarantines {
            complete(q.done, Ok(()));
        }
        for (claim, claimed) in self.claims.into_iter().zip(results.claimed) {
            complete(claim.done, Ok(claimed));
        }
    }

    fn fail(self, err: SpoolError) {
        for insert in self.inserts {
            complete(insert.done, Err(err.clone()));
        }
        for record in self.records {
            complete(record.done, Err(err.clone()));
        }
        for object in self.objects {
            complete(object.done, Err(err.clone()));
        }
        for s in self.suppressions {
            complete(s.done, Err(err.clone()));
        }
        for action in self.actions {
            complete(action.done, Err(err.clone()));
        }
        for b in self.backlogs {
            complete(b.done, Err(err.clone()));
        }
        for d in self.dailies {
            complete(d.done, Err(err.clone()));
        }
        for i in self.idempotency {
            complete(i.done, Err(err.clone()));
        }
        for q in self.quarantines {
            complete(q.done, Err(err.clone()));
        }
        for claim in self.claims {
            complete(claim.done, Err(err.clone()));
        }
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
