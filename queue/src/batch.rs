//! One group commit's work: the requests taken from the writer's channel
//! grouped by kind, applied in one write transaction (`write_batch`), and
//! answered from what it returned. Split from `writer.rs`, which owns the
//! thread, the database's state and the segment appender.

use std::sync::Arc;

use redb::Database;

use crate::backlog::{self, BacklogRequest, BacklogWritten};
use crate::daily::{self, DailyRequest};
use crate::delivered;
use crate::error::SpoolError;
use crate::id::MessageId;
use crate::idempotency::{self, IdempotencyRequest};
use crate::message::Claimed;
use crate::quarantine::{CorruptRecipient, Damaged};
use crate::requests::{
    ActionRequest, ClaimRequest, Completion, ForgetRequest, InsertRequest, ObjectRequest,
    QuarantineRequest, RecordRequest, Request, SuppressRequest, complete,
};
use crate::segments::{Appended, SegmentFiles};
use crate::select::ClaimCursor;
use crate::store::{self, WriteTables};
use crate::writer::now_ms;

/// What the writer prepared before the transaction: the time, the id of
/// each insert and where its body was appended.
pub(crate) struct Prepared<'a> {
    pub(crate) now: u64,
    pub(crate) ids: &'a [MessageId],
    pub(crate) bodies: &'a Appended,
    /// Every id handed out so far is below this.
    pub(crate) id_high_water: MessageId,
    /// Commit with fdatasync.
    pub(crate) durable: bool,
    /// A durable commit also records redb's allocator state.
    pub(crate) quick_repair: bool,
    /// The reception time of the archive's oldest delivered row, when a
    /// request marks bounce reports (`delivered::apply`).
    pub(crate) archived_oldest_ms: Option<u64>,
    /// The spool syncs at all (`SpoolConfig::durable`).
    pub(crate) sync_enabled: bool,
}

/// Applies a whole batch in one write transaction and commits it.
pub(crate) fn write_batch(
    db: &Database,
    segments: &Arc<SegmentFiles>,
    prepared: &Prepared<'_>,
    claim_cursor: &mut ClaimCursor,
    writes: &mut Writes,
) -> Result<Results, SpoolError> {
    let mut txn = store::begin_write(db, prepared.durable, prepared.quick_repair)?;
    let (results, frees_space) = {
        let mut tables = WriteTables::open(&txn, segments)?;
        let now = prepared.now;
        let mut inserted = Vec::with_capacity(writes.inserts.len());
        for (i, (insert, &id)) in writes.inserts.iter().zip(prepared.ids).enumerate() {
            // No segment place: the body goes into the database.
            let body = prepared.bodies.refs.get(i).copied();
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
            tables.insert_message(id, &insert.msg, body, insert.claimed, now)?;
            if let Some(tracking) = &insert.msg.tracking {
                tracking.write(&txn, id, now)?;
            }
            inserted.push(Ok(id));
        }
        let marks = writes.inserts.iter().zip(&inserted);
        let marks = marks.filter(|(_, result)| result.is_ok());
        idempotency::put(&txn, marks.filter_map(|(i, _)| i.msg.idempotency.as_ref()))?;
        if inserted.iter().any(Result::is_ok) {
            tables.store_id_floor(prepared.id_high_water)?;
        }
        if let Some(start) = prepared.bodies.start {
            tables.store_synced_before(start)?;
        }
        for outcome in writes.records.iter().flat_map(|record| &record.outcomes) {
            tables.apply(outcome, now)?;
        }
        for record in &writes.records {
            delivered::apply(&txn, &record.index, now, prepared.archived_oldest_ms)?;
        }
        for forget in &writes.forgets {
            delivered::forget(&txn, &forget.keys)?;
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
        let frees_space = tables.frees_segment_space();
        let results = Results {
            usage: tables.flush_usage()?,
            messages: tables.message_count()?,
            inserted,
            objects,
            suppressed,
            acted,
            backlogged,
            idempotent,
            claimed,
            quarantined: tables.take_quarantined(),
        };
        (results, frees_space)
    };
    if frees_space && !prepared.durable && prepared.sync_enabled {
        // Segment files are deleted after this commit: it must survive a crash.
        store::make_durable(&mut txn, prepared.quick_repair)?;
    }
    txn.commit()?;
    Ok(results)
}

/// After a commit whose bodies' fdatasync failed: the messages it inserted
/// are taken back (quarantined, with their idempotency marks removed) in a
/// durable commit of their own, and their inserts fail, so a client sends
/// again and no copy whose body may be lost is ever delivered. Quota
/// counts stay as they were.
pub(crate) fn take_back_unsynced(
    db: &Database,
    segments: &Arc<SegmentFiles>,
    writes: &Writes,
    results: &mut Results,
    cause: &std::io::Error,
) {
    let reason = format!("the fdatasync of its body failed: {cause}");
    let inserted: Vec<(MessageId, Option<&str>)> = writes
        .inserts
        .iter()
        .zip(&results.inserted)
        .filter_map(|(insert, result)| {
            let mark = insert.msg.idempotency.as_ref().map(|row| row.key.as_str());
            result.as_ref().ok().map(|&id| (id, mark))
        })
        .collect();
    let taken_back = (|| -> Result<Vec<(u32, i64)>, SpoolError> {
        let txn = store::begin_write(db, true, true)?;
        let usage = {
            let mut tables = WriteTables::open(&txn, segments)?;
            for &(id, _) in &inserted {
                tables.quarantine_undeliverable(id, &reason, now_ms())?;
            }
            idempotency::remove(&txn, inserted.iter().filter_map(|&(_, mark)| mark))?;
            tables.flush_usage()?
        };
        txn.commit()?;
        Ok(usage)
    })();
    match taken_back {
        Ok(usage) => results.usage.extend(usage),
        Err(err) => log::error!(
            "spool: {} messages were committed but {reason}, and taking them back failed \
             ({err}); their bodies are checked when they are loaded",
            inserted.len()
        ),
    }
    let failed = SpoolError::Storage(format!("the spool's {reason}"));
    for result in &mut results.inserted {
        if result.is_ok() {
            *result = Err(failed.clone());
        }
    }
}

/// The requests taken from the channel in one go.
#[derive(Default)]
pub(crate) struct Batch {
    pub(crate) writes: Writes,
    pub(crate) compactions: Vec<Completion<bool>>,
}

impl Batch {
    pub(crate) fn push(&mut self, request: Request) {
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
            Request::Forget(f) => self.writes.forgets.push(f),
            Request::Compact(done) => self.compactions.push(done),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.writes.len() + self.compactions.len()
    }
}

/// The requests of one write transaction, grouped by kind. Inserts are
/// applied first, then outcomes, then claims, so a claim in the same batch
/// can already see what the others scheduled.
#[derive(Default)]
pub(crate) struct Writes {
    pub(crate) inserts: Vec<InsertRequest>,
    pub(crate) records: Vec<RecordRequest>,
    pub(crate) objects: Vec<ObjectRequest>,
    pub(crate) suppressions: Vec<SuppressRequest>,
    pub(crate) actions: Vec<ActionRequest>,
    pub(crate) backlogs: Vec<BacklogRequest>,
    pub(crate) dailies: Vec<DailyRequest>,
    pub(crate) idempotency: Vec<IdempotencyRequest>,
    pub(crate) quarantines: Vec<QuarantineRequest>,
    pub(crate) claims: Vec<ClaimRequest>,
    pub(crate) forgets: Vec<ForgetRequest>,
}

/// What a committed batch hands back, in the order of `Writes`. An insert
/// refused by a quota fails alone; the rest of the batch commits. A
/// recipient row that cannot be decoded fails nothing: it is quarantined
/// and the request that met it sees the recipient as gone.
pub(crate) struct Results {
    pub(crate) inserted: Vec<Result<MessageId, SpoolError>>,
    pub(crate) objects: Vec<bool>,
    pub(crate) suppressed: Vec<bool>,
    pub(crate) acted: Vec<Vec<bool>>,
    pub(crate) backlogged: Vec<BacklogWritten>,
    /// Expired idempotency rows removed, per request.
    pub(crate) idempotent: Vec<u64>,
    pub(crate) claimed: Vec<Vec<Claimed>>,
    /// Rows the batch met that could not be decoded and moved aside.
    pub(crate) quarantined: Vec<CorruptRecipient>,
    /// Change of live bodies per segment, for the appender.
    pub(crate) usage: Vec<(u32, i64)>,
    /// Messages in the spool after the batch.
    pub(crate) messages: u64,
}

impl Writes {
    pub(crate) fn len(&self) -> usize {
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
            + self.forgets.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn pending_bytes(&self) -> usize {
        self.inserts
            .iter()
            .map(|insert| insert.msg.size_bytes())
            .sum()
    }

    /// When the batch's oldest insert was handed to the writer.
    pub(crate) fn oldest_insert(&self) -> Option<std::time::Instant> {
        self.inserts.iter().map(|insert| insert.submitted).min()
    }

    /// Delivery outcomes and nothing else (see `SpoolConfig::outcome_linger`).
    /// Bounce reports marked as acted on (records without outcomes) are
    /// waited for by the bounce intake, so they do not wait.
    pub(crate) fn only_outcomes(&self) -> bool {
        !self.records.is_empty()
            && self.len() == self.records.len()
            && self.records.iter().all(|r| !r.outcomes.is_empty())
    }

    /// Claims alone need no fdatasync: if they are lost in a crash, recovery
    /// would have scheduled those recipients again anyway.
    pub(crate) fn needs_durability(&self) -> bool {
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

    pub(crate) fn complete(self, results: Results) {
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
        for f in self.forgets {
            complete(f.done, Ok(()));
        }
    }

    pub(crate) fn fail(self, err: SpoolError) {
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
        for f in self.forgets {
            complete(f.done, Err(err.clone()));
        }
    }
}
