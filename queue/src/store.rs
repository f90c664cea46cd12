//! The spool's tables and every read and write made on them.
//!
//! Data model (keys are ordered, values are `codec` records):
//! - `messages`: id -> envelope (mail from, recipient addresses, meta).
//! - `bodies`: id -> wire bytes. Apart from the envelope so that recipient
//!   state changes never rewrite a body.
//! - `recipients`: (id, rcpt index) -> attempts, next attempt time, claimed.
//!   A row exists while the recipient is unfinished. A message leaves the spool
//!   (with its body) when a range lookup finds no row left for it; a counter in
//!   the envelope would instead rewrite the whole envelope on every `Done`.
//! - `schedule`: (due ms, id, rcpt) -> (): the retry index in due order.
//! - `counters`: name -> u64; holds the message id high-water mark.
//! - `suppressions`: (tenant, lowercase address) -> (time ms, reason, source);
//!   tenant "" is the global list (see `suppress.rs`).
//! - `delivered`: (id, rcpt) -> tenant, group, channel, campaign, address,
//!   Message-ID, route, time: finished recipients, for tying bounces that
//!   arrive later (see `delivered.rs`; written and pruned there).
//! - `webhook_backlog`: (sink, seq) -> event JSON; read and written only by
//!   `backlog.rs`.
//! - `quarantine`: (table, id, rcpt) -> rows that could not be decoded, moved
//!   aside by the transaction that met them (see `quarantine.rs`).
//!
//! Invariant: every recipient row is either scheduled (exactly one `schedule`
//! entry, at its `next_attempt_ms`) or claimed (no entry, held in memory by
//! the delivery side). Recovery turns every claimed row back into scheduled.
//! A row that cannot be decoded is quarantined (row and schedule entry gone)
//! by whichever write meets it first, so no request fails on it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    Table, TableDefinition, WriteTransaction,
};

use crate::codec::{DecodeError, RecipientState, decode_envelope, encode_envelope};
use crate::error::SpoolError;
use crate::id::MessageId;
use crate::message::{Claimed, NewMessage, Outcome, StoredMessage};
use crate::quarantine::{
    BODIES_TABLE, CorruptRecipient, Damaged, MESSAGES_TABLE, QuarantineTable, RECIPIENTS_TABLE,
};
use crate::quota::{Quota, QuotaExceeded, Window};
use crate::select::{
    ClaimCandidate, ClaimFilter, MAX_CLAIM_SCAN, QueueAction, QueueCounts, QueueFilter, QueuePage,
    QueuedRecipient, RecipientStatus, SUSPENDED_DUE,
};
use crate::suppress::{GLOBAL_TENANT, Suppression};

const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
const RECIPIENTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("recipients");
const SCHEDULE: TableDefinition<(u64, u64, u32), ()> = TableDefinition::new("schedule");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

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

/// A message validated and encoded on the caller's thread, so the writer
/// thread only copies bytes into the database.
#[derive(Debug)]
pub(crate) struct EncodedMessage {
    envelope: Vec<u8>,
    body: Vec<u8>,
    recipient_count: u32,
    quotas: Vec<Quota>,
}

impl EncodedMessage {
    pub(crate) fn new(msg: NewMessage) -> Result<Self, SpoolError> {
        msg.validate()?;
        let recipient_count = u32::try_from(msg.recipients.len())
            .map_err(|_| SpoolError::Invalid("too many recipients".into()))?;
        Ok(EncodedMessage {
            envelope: encode_envelope(&msg.mail_from, &msg.recipients, &msg.meta),
            body: msg.body,
            recipient_count,
            quotas: msg.quotas,
        })
    }

    /// Memory held while the message waits for the writer.
    pub(crate) fn size_bytes(&self) -> usize {
        self.envelope.len() + self.body.len()
    }
}

/// Message and recipient counts, as the tables report them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Counts {
    pub(crate) messages: u64,
    pub(crate) recipients: u64,
    pub(crate) scheduled: u64,
    pub(crate) quarantined: u64,
}

/// All tables of the spool, opened in one write transaction.
pub(crate) struct WriteTables<'txn> {
    messages: Table<'txn, u64, &'static [u8]>,
    bodies: Table<'txn, u64, &'static [u8]>,
    recipients: Table<'txn, (u64, u32), &'static [u8]>,
    schedule: Table<'txn, (u64, u64, u32), ()>,
    counters: Table<'txn, &'static str, u64>,
    usage: Table<'txn, (&'static str, u8, u32), u64>,
    objects: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    suppressions: Table<'txn, (&'static str, &'static str), (u64, &'static str, &'static str)>,
    quarantine: QuarantineTable<'txn>,
    /// Rows this transaction quarantined, reported once it commits.
    quarantined: Vec<CorruptRecipient>,
}

impl<'txn> WriteTables<'txn> {
    /// Opens (and on first use creates) every table.
    pub(crate) fn open(txn: &'txn WriteTransaction) -> Result<Self, SpoolError> {
        Ok(WriteTables {
            messages: txn.open_table(MESSAGES)?,
            bodies: txn.open_table(BODIES)?,
            recipients: txn.open_table(RECIPIENTS)?,
            schedule: txn.open_table(SCHEDULE)?,
            counters: txn.open_table(COUNTERS)?,
            usage: txn.open_table(USAGE)?,
            objects: txn.open_table(OBJECTS)?,
            suppressions: txn.open_table(SUPPRESSIONS)?,
            quarantine: QuarantineTable::open(txn)?,
            quarantined: Vec::new(),
        })
    }

    /// The rows quarantined so far in this transaction.
    pub(crate) fn take_quarantined(&mut self) -> Vec<CorruptRecipient> {
        std::mem::take(&mut self.quarantined)
    }

    /// Stores a new message; its recipients are claimed by the caller or due now.
    pub(crate) fn insert_message(
        &mut self,
        id: MessageId,
        msg: &EncodedMessage,
        claimed: bool,
        now_ms: u64,
    ) -> Result<(), SpoolError> {
        self.messages.insert(id, msg.envelope.as_slice())?;
        self.bodies.insert(id, msg.body.as_slice())?;
        let state = RecipientState {
            attempts: 0,
            next_attempt_ms: now_ms,
            claimed,
        };
        for rcpt in 0..msg.recipient_count {
            self.put_recipient(id, rcpt, &state)?;
            if !claimed {
                self.schedule.insert((now_ms, id, rcpt), ())?;
            }
        }
        Ok(())
    }

    /// Checks every quota of the message and, if all hold, counts it.
    /// The outer error is storage; the inner one a refusal.
    pub(crate) fn count_quotas(
        &mut self,
        msg: &EncodedMessage,
        now_ms: u64,
    ) -> Result<Result<(), QuotaExceeded>, SpoolError> {
        for q in &msg.quotas {
            let used = self.used(&q.name, q.window, now_ms)?;
            if q.limit > 0 && used + q.amount > q.limit {
                return Ok(Err(QuotaExceeded {
                    name: q.name.clone(),
                    window: q.window,
                    limit: q.limit,
                    used,
                    resets_at_ms: q.window.resets_at_ms(now_ms),
                }));
            }
        }
        for q in &msg.quotas {
            let key = (q.name.as_str(), q.window.kind(), q.window.bucket(now_ms));
            let current = self.usage.get(key)?.map(|v| v.value()).unwrap_or(0);
            self.usage.insert(key, current + q.amount)?;
        }
        Ok(Ok(()))
    }

    fn used(&self, name: &str, window: Window, now_ms: u64) -> Result<u64, SpoolError> {
        let mut total = 0;
        for bucket in window.buckets(now_ms) {
            if let Some(v) = self.usage.get((name, window.kind(), bucket))? {
                total += v.value();
            }
        }
        Ok(total)
    }

    pub(crate) fn put_object(
        &mut self,
        kind: &str,
        name: &str,
        value: Option<&[u8]>,
    ) -> Result<bool, SpoolError> {
        Ok(match value {
            Some(v) => self.objects.insert((kind, name), v)?.is_some(),
            None => self.objects.remove((kind, name))?.is_some(),
        })
    }

    /// Adds (`Some((time, reason, source))`) or removes (`None`) a
    /// suppression; returns whether the address was listed before.
    pub(crate) fn put_suppression(
        &mut self,
        tenant: &str,
        address: &str,
        entry: Option<(u64, &str, &str)>,
    ) -> Result<bool, SpoolError> {
        Ok(match entry {
            Some(value) => self
                .suppressions
                .insert((tenant, address), value)?
                .is_some(),
            None => self.suppressions.remove((tenant, address))?.is_some(),
        })
    }

    /// Applies one delivery outcome. An outcome for a recipient that is no
    /// longer in the spool (a duplicate report) changes nothing.
    pub(crate) fn apply(&mut self, outcome: &Outcome, now_ms: u64) -> Result<(), SpoolError> {
        match *outcome {
            Outcome::Done { id, rcpt } => self.finish_recipient(id, rcpt),
            Outcome::Deferred {
                id,
                rcpt,
                next_attempt_ms,
            } => self.reschedule(id, rcpt, next_attempt_ms, true),
            Outcome::Release { id, rcpt } => self.release(id, rcpt, now_ms),
        }
    }

    /// Moves up to `limit` due recipients, earliest first, from the schedule
    /// to the claimed state. With `accept`, only those it accepts; the walk
    /// then stops after `MAX_CLAIM_SCAN` due entries.
    pub(crate) fn claim_due(
        &mut self,
        now_ms: u64,
        limit: usize,
        mut accept: Option<&mut ClaimFilter>,
    ) -> Result<Vec<Claimed>, SpoolError> {
        let scan = if accept.is_some() {
            MAX_CLAIM_SCAN
        } else {
            limit
        };
        let due_keys = self
            .schedule
            .range(..=(now_ms, u64::MAX, u32::MAX))?
            .take(scan)
            .map(|entry| entry.map(|(key, _)| key.value()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut claimed = Vec::with_capacity(due_keys.len().min(limit));
        let mut envelope: Option<(MessageId, Option<crate::codec::Envelope>)> = None;
        for (due_ms, id, rcpt) in due_keys {
            if claimed.len() == limit {
                break;
            }
            if let Some(accept) = accept.as_mut() {
                if envelope.as_ref().is_none_or(|(cached, _)| *cached != id) {
                    // A damaged envelope is claimed unfiltered: the load that
                    // follows quarantines it. Failing here would fail every
                    // claim, and every commit sharing it, until a restart.
                    let read = match self.envelope(id) {
                        Err(SpoolError::Corrupt(_)) => None,
                        read => read?,
                    };
                    envelope = Some((id, read));
                }
                // A message without an envelope is a leftover: claiming repairs it.
                if let Some((_, Some(env))) = &envelope {
                    let candidate = ClaimCandidate {
                        id,
                        rcpt,
                        address: env.recipients.get(rcpt as usize).map_or("", String::as_str),
                        meta: &env.meta,
                    };
                    if !accept(&candidate) {
                        continue;
                    }
                }
            }
            self.schedule.remove((due_ms, id, rcpt))?;
            // A schedule entry without a row would be a leftover; removing it is the repair.
            if let Some(mut state) = self.recipient(id, rcpt)? {
                state.claimed = true;
                self.put_recipient(id, rcpt, &state)?;
                claimed.push(Claimed {
                    id,
                    rcpt,
                    attempts: state.attempts,
                });
            }
        }
        Ok(claimed)
    }

    fn envelope(&self, id: MessageId) -> Result<Option<crate::codec::Envelope>, SpoolError> {
        let Some(stored) = self.messages.get(id)? else {
            return Ok(None);
        };
        decode_envelope(stored.value())
            .map(Some)
            .map_err(|DecodeError(reason)| {
                SpoolError::Corrupt(format!("message {id:016x}: {reason}"))
            })
    }

    /// Crash recovery: recipients that were claimed (in memory) when the
    /// previous process stopped are scheduled again at `now_ms`.
    /// Rows that cannot be decoded are quarantined on the way.
    pub(crate) fn unclaim_all(&mut self, now_ms: u64) -> Result<u64, SpoolError> {
        let (claimed, corrupt) = self.claimed_recipients()?;
        self.quarantine_recipients(corrupt, now_ms)?;
        for &(id, rcpt, attempts) in &claimed {
            let state = RecipientState {
                attempts,
                next_attempt_ms: now_ms,
                claimed: false,
            };
            self.put_recipient(id, rcpt, &state)?;
            self.schedule.insert((now_ms, id, rcpt), ())?;
        }
        Ok(claimed.len() as u64)
    }

    /// The smallest id that was never handed out: above the stored high-water
    /// mark and above every message still in the spool.
    pub(crate) fn id_floor(&self) -> Result<MessageId, SpoolError> {
        let stored = self.counters.get(NEXT_ID_COUNTER)?.map_or(0, |v| v.value());
        let above_last = match self.messages.last()? {
            Some((id, _)) => id.value().saturating_add(1),
            None => 0,
        };
        Ok(stored.max(above_last))
    }

    pub(crate) fn store_id_floor(&mut self, floor: MessageId) -> Result<(), SpoolError> {
        self.counters.insert(NEXT_ID_COUNTER, floor)?;
        Ok(())
    }

    /// Applies an operator's action to one recipient; returns whether it
    /// changed anything (see `select.rs` for what each action skips).
    pub(crate) fn apply_action(
        &mut self,
        action: QueueAction,
        id: MessageId,
        rcpt: u32,
        now_ms: u64,
        returned: bool,
    ) -> Result<bool, SpoolError> {
        let Some(mut state) = self.recipient(id, rcpt)? else {
            return Ok(false);
        };
        if returned {
            // Taken back from memory by the caller: no longer in flight.
            state.claimed = false;
        }
        let suspended = !state.claimed && state.next_attempt_ms == SUSPENDED_DUE;
        let new_due = match action {
            QueueAction::Remove => {
                self.finish_recipient(id, rcpt)?;
                return Ok(true);
            }
            _ if state.claimed => None,
            QueueAction::Flush if !suspended && state.next_attempt_ms > now_ms => Some(now_ms),
            QueueAction::Suspend if !suspended => Some(SUSPENDED_DUE),
            QueueAction::Resume if suspended => Some(now_ms),
            _ => None,
        };
        match new_due {
            Some(due) => {
                // Unclaimed first, so `reschedule` looks for no entry to drop.
                self.put_recipient(id, rcpt, &state)?;
                self.reschedule(id, rcpt, due, false)?;
                Ok(true)
            }
            None if returned => {
                // Given back but left as it was: due again, never stranded.
                self.release(id, rcpt, now_ms)?;
                Ok(false)
            }
            None => Ok(false),
        }
    }

    /// Due again now, if still claimed: a release that comes late (a
    /// lease that ran out) must not undo a suspend or a recorded retry.
    fn release(&mut self, id: MessageId, rcpt: u32, now_ms: u64) -> Result<(), SpoolError> {
        match self.recipient(id, rcpt)? {
            Some(state) if state.claimed => self.reschedule(id, rcpt, now_ms, false),
            _ => Ok(()),
        }
    }

    fn finish_recipient(&mut self, id: MessageId, rcpt: u32) -> Result<(), SpoolError> {
        let Some(state) = self.recipient(id, rcpt)? else {
            return Ok(());
        };
        self.unschedule(id, rcpt, &state)?;
        self.recipients.remove((id, rcpt))?;
        if !self.has_recipients(id)? {
            self.messages.remove(id)?;
            self.bodies.remove(id)?;
        }
        Ok(())
    }

    fn reschedule(
        &mut self,
        id: MessageId,
        rcpt: u32,
        due_ms: u64,
        count_attempt: bool,
    ) -> Result<(), SpoolError> {
        let Some(mut state) = self.recipient(id, rcpt)? else {
            return Ok(());
        };
        self.unschedule(id, rcpt, &state)?;
        if count_attempt {
            state.attempts = state.attempts.saturating_add(1);
        }
        state.claimed = false;
        state.next_attempt_ms = due_ms;
        self.put_recipient(id, rcpt, &state)?;
        self.schedule.insert((due_ms, id, rcpt), ())?;
        Ok(())
    }

    /// Drops the schedule entry of a recipient that has one (is not claimed),
    /// so an outcome for a scheduled recipient keeps the one-entry invariant.
    fn unschedule(
        &mut self,
        id: MessageId,
        rcpt: u32,
        state: &RecipientState,
    ) -> Result<(), SpoolError> {
        if !state.claimed {
            self.schedule.remove((state.next_attempt_ms, id, rcpt))?;
        }
        Ok(())
    }

    /// The state of a recipient still in the spool. A row that cannot be
    /// decoded is quarantined here and reported as gone, so the request that
    /// met it (and every other one in the commit) goes on.
    fn recipient(
        &mut self,
        id: MessageId,
        rcpt: u32,
    ) -> Result<Option<RecipientState>, SpoolError> {
        let corrupt = match self.recipients.get((id, rcpt))? {
            None => return Ok(None),
            Some(value) => match RecipientState::decode(value.value()) {
                Ok(state) => return Ok(Some(state)),
                Err(DecodeError(reason)) => CorruptRecipient {
                    id,
                    rcpt,
                    reason,
                    value: value.value().to_vec(),
                },
            },
        };
        self.quarantine_recipients(vec![corrupt], crate::writer::now_ms())?;
        Ok(None)
    }

    /// Moves undecodable recipient rows to the quarantine, drops their
    /// schedule entries (their due time is unreadable: one pass over the
    /// schedule finds them), and quarantines the envelope and body of a
    /// message left with no recipient.
    fn quarantine_recipients(
        &mut self,
        rows: Vec<CorruptRecipient>,
        now_ms: u64,
    ) -> Result<(), SpoolError> {
        if rows.is_empty() {
            return Ok(());
        }
        let keys: HashSet<(MessageId, u32)> = rows.iter().map(|r| (r.id, r.rcpt)).collect();
        for row in &rows {
            let key = (row.id, row.rcpt);
            self.quarantine
                .put(RECIPIENTS_TABLE, key, now_ms, &row.reason, &row.value)?;
            self.recipients.remove(key)?;
        }
        self.schedule
            .retain(|(_, id, rcpt), ()| !keys.contains(&(id, rcpt)))?;
        let ids: HashSet<MessageId> = keys.iter().map(|&(id, _)| id).collect();
        for id in ids {
            if !self.has_recipients(id)? {
                self.quarantine_message(id, "every recipient row was quarantined", now_ms)?;
            }
        }
        let total = self
            .counters
            .get(QUARANTINED_COUNTER)?
            .map_or(0, |v| v.value());
        self.counters
            .insert(QUARANTINED_COUNTER, total.saturating_add(rows.len() as u64))?;
        self.quarantined.extend(rows);
        Ok(())
    }

    /// Reads a recipient row again: one that still cannot be decoded is
    /// quarantined (see `recipient`).
    pub(crate) fn recheck_recipient(&mut self, id: MessageId, rcpt: u32) -> Result<(), SpoolError> {
        self.recipient(id, rcpt).map(drop)
    }

    /// Moves a message that cannot be delivered (its envelope or body is
    /// unreadable) to the quarantine: envelope, body and recipient rows.
    pub(crate) fn quarantine_undeliverable(
        &mut self,
        id: MessageId,
        reason: &str,
        now_ms: u64,
    ) -> Result<(), SpoolError> {
        self.quarantine_message(id, reason, now_ms)?;
        let mut rows = Vec::new();
        for entry in self.recipients.range((id, 0)..=(id, u32::MAX))? {
            let (key, value) = entry?;
            rows.push(CorruptRecipient {
                id,
                rcpt: key.value().1,
                reason: reason.to_owned(),
                value: value.value().to_vec(),
            });
        }
        self.quarantine_recipients(rows, now_ms)
    }

    /// Moves a message's envelope and body (those present) to the quarantine.
    fn quarantine_message(
        &mut self,
        id: MessageId,
        reason: &str,
        now_ms: u64,
    ) -> Result<(), SpoolError> {
        if let Some(envelope) = self.messages.remove(id)? {
            self.quarantine
                .put(MESSAGES_TABLE, (id, 0), now_ms, reason, envelope.value())?;
        }
        if let Some(body) = self.bodies.remove(id)? {
            self.quarantine
                .put(BODIES_TABLE, (id, 0), now_ms, reason, body.value())?;
        }
        Ok(())
    }

    fn put_recipient(
        &mut self,
        id: MessageId,
        rcpt: u32,
        state: &RecipientState,
    ) -> Result<(), SpoolError> {
        self.recipients
            .insert((id, rcpt), state.encode().as_slice())?;
        Ok(())
    }

    fn has_recipients(&self, id: MessageId) -> Result<bool, SpoolError> {
        Ok(self
            .recipients
            .range((id, 0)..=(id, u32::MAX))?
            .next()
            .is_some())
    }

    /// Claimed recipients as (id, rcpt, attempts), and the rows that could
    /// not be decoded.
    #[allow(clippy::type_complexity)]
    fn claimed_recipients(
        &self,
    ) -> Result<(Vec<(MessageId, u32, u32)>, Vec<CorruptRecipient>), SpoolError> {
        let mut claimed = Vec::new();
        let mut corrupt = Vec::new();
        for entry in self.recipients.iter()? {
            let (key, value) = entry?;
            let (id, rcpt) = key.value();
            match RecipientState::decode(value.value()) {
                Ok(state) if state.claimed => claimed.push((id, rcpt, state.attempts)),
                Ok(_) => {}
                Err(DecodeError(reason)) => corrupt.push(CorruptRecipient {
                    id,
                    rcpt,
                    reason,
                    value: value.value().to_vec(),
                }),
            }
        }
        Ok((claimed, corrupt))
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

/// Starts a write transaction. Durable ones fdatasync on commit and record
/// redb's allocator state (quick repair), so reopening after a crash does not
/// walk the whole file. Non-durable ones skip both: a crash rolls them back.
pub(crate) fn begin_write(db: &Database, durable: bool) -> Result<WriteTransaction, SpoolError> {
    let mut txn = db.begin_write()?;
    let durability = if durable {
        Durability::Immediate
    } else {
        Durability::None
    };
    txn.set_durability(durability)?;
    txn.set_quick_repair(durable);
    Ok(txn)
}

/// What [`recover`] found.
#[derive(Clone, Debug)]
pub(crate) struct Recovered {
    /// Every id handed out from now on is at least this.
    pub(crate) id_floor: MessageId,
    /// Claimed recipients scheduled again.
    pub(crate) unclaimed: u64,
    /// Rows that could not be decoded, moved to the quarantine.
    pub(crate) quarantined: Vec<CorruptRecipient>,
}

/// Runs once when the spool opens, before any other write: creates missing
/// tables and schedules again the recipients the previous process held in
/// memory. Committed durably, so a second crash starts from the same state.
pub(crate) fn recover(db: &Database, now_ms: u64) -> Result<Recovered, SpoolError> {
    let txn = begin_write(db, true)?;
    let recovered = {
        let mut tables = WriteTables::open(&txn)?;
        Recovered {
            unclaimed: tables.unclaim_all(now_ms)?,
            id_floor: tables.id_floor()?,
            quarantined: tables.take_quarantined(),
        }
    };
    txn.commit()?;
    Ok(recovered)
}

/// Reads one message with its body.
pub(crate) fn load(db: &Database, id: MessageId) -> Result<Option<StoredMessage>, SpoolError> {
    let txn = db.begin_read()?;
    let messages = txn.open_table(MESSAGES)?;
    let Some(envelope) = messages.get(id)? else {
        return Ok(None);
    };
    let envelope = decode_envelope(envelope.value()).map_err(|DecodeError(reason)| {
        SpoolError::Corrupt(format!("message {id:016x}: {reason}"))
    })?;
    let bodies = txn.open_table(BODIES)?;
    let Some(body) = bodies.get(id)? else {
        return Err(SpoolError::Corrupt(format!(
            "message {id:016x} has no body"
        )));
    };
    Ok(Some(StoredMessage {
        id,
        mail_from: envelope.mail_from,
        recipients: envelope.recipients,
        meta: envelope.meta,
        body: Arc::from(body.value()),
    }))
}

/// Due time of the earliest scheduled recipient.
pub(crate) fn next_due_ms(db: &Database) -> Result<Option<u64>, SpoolError> {
    let txn = db.begin_read()?;
    let schedule = txn.open_table(SCHEDULE)?;
    // Suspended recipients sit at the far end and are never due.
    let first = schedule
        .range(..(SUSPENDED_DUE, 0, 0))?
        .next()
        .transpose()?;
    Ok(first.map(|(key, _)| key.value().0))
}

pub(crate) fn counts(db: &Database) -> Result<Counts, SpoolError> {
    let txn = db.begin_read()?;
    let quarantined = txn
        .open_table(COUNTERS)?
        .get(QUARANTINED_COUNTER)?
        .map_or(0, |v| v.value());
    Ok(Counts {
        messages: txn.open_table(MESSAGES)?.len()?,
        recipients: txn.open_table(RECIPIENTS)?.len()?,
        scheduled: txn.open_table(SCHEDULE)?.len()?,
        quarantined,
    })
}

/// Usage of quota `name` in `window` as of `now_ms`.
pub(crate) fn usage(
    db: &Database,
    name: &str,
    window: Window,
    now_ms: u64,
) -> Result<u64, SpoolError> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(USAGE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut total = 0;
    for bucket in window.buckets(now_ms) {
        if let Some(v) = table.get((name, window.kind(), bucket))? {
            total += v.value();
        }
    }
    Ok(total)
}

/// Every object of `kind`, by name order.
pub(crate) fn objects(db: &Database, kind: &str) -> Result<Vec<(String, Vec<u8>)>, SpoolError> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(OBJECTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for entry in table.range((kind, "")..)? {
        let (key, value) = entry?;
        let (k, name) = key.value();
        if k != kind {
            break;
        }
        out.push((name.to_owned(), value.value().to_vec()));
    }
    Ok(out)
}

/// Per address (already lowercased): whether the tenant's or the global
/// list holds it.
pub(crate) fn suppressed(
    db: &Database,
    tenant: &str,
    addresses: &[String],
) -> Result<Vec<bool>, SpoolError> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(SUPPRESSIONS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![false; addresses.len()]),
        Err(e) => return Err(e.into()),
    };
    let mut found = Vec::with_capacity(addresses.len());
    for address in addresses {
        let listed = table.get((tenant, address.as_str()))?.is_some()
            || (tenant != GLOBAL_TENANT && table.get((GLOBAL_TENANT, address.as_str()))?.is_some());
        found.push(listed);
    }
    Ok(found)
}

/// The entry of `address` (lowercased) on `tenant`'s own list.
pub(crate) fn suppression(
    db: &Database,
    tenant: &str,
    address: &str,
) -> Result<Option<Suppression>, SpoolError> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(SUPPRESSIONS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(table.get((tenant, address))?.map(|value| {
        let (time_ms, reason, source) = value.value();
        Suppression {
            tenant: tenant.to_owned(),
            address: address.to_owned(),
            reason: reason.to_owned(),
            time_ms,
            source: source.to_owned(),
        }
    }))
}

/// Up to `limit` entries of one tenant's list, by address.
pub(crate) fn suppressions(
    db: &Database,
    tenant: &str,
    limit: usize,
) -> Result<Vec<Suppression>, SpoolError> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(SUPPRESSIONS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for entry in table.range((tenant, "")..)? {
        let (key, value) = entry?;
        let (t, address) = key.value();
        if t != tenant || out.len() == limit {
            break;
        }
        let (time_ms, reason, source) = value.value();
        out.push(Suppression {
            tenant: t.to_owned(),
            address: address.to_owned(),
            reason: reason.to_owned(),
            time_ms,
            source: source.to_owned(),
        });
    }
    Ok(out)
}

/// One page of unfinished recipients matching `filter`, in key order,
/// starting at `from`. At most `scan_limit` rows are read, so a filter
/// that matches little still answers in bounded time; `next` says where
/// to go on. Rows that cannot be decoded are left out of the page and
/// returned apart, for the writer to quarantine.
pub(crate) fn queue_page(
    db: &Database,
    filter: &QueueFilter,
    from: Option<(MessageId, u32)>,
    limit: usize,
    scan_limit: usize,
    now_ms: u64,
) -> Result<(QueuePage, Vec<Damaged>), SpoolError> {
    let txn = db.begin_read()?;
    let recipients = txn.open_table(RECIPIENTS)?;
    let messages = txn.open_table(MESSAGES)?;
    let rows = match from {
        Some((id, rcpt)) => recipients.range((id, rcpt)..)?,
        None => recipients.range::<(u64, u32)>(..)?,
    };
    let mut page = QueuePage::default();
    let mut damaged = Vec::new();
    // The last message read; `None` inside when its envelope is damaged.
    let mut envelope: Option<(MessageId, Option<crate::codec::Envelope>)> = None;
    for (scanned, row) in rows.enumerate() {
        let (key, value) = row?;
        let (id, rcpt) = key.value();
        if scanned == scan_limit || page.recipients.len() == limit {
            page.next = Some((id, rcpt));
            break;
        }
        if envelope.as_ref().is_none_or(|(cached, _)| *cached != id) {
            let Some(stored) = messages.get(id)? else {
                continue;
            };
            let decoded = match decode_envelope(stored.value()) {
                Ok(decoded) => Some(decoded),
                Err(DecodeError(reason)) => {
                    let reason = format!("message {id:016x}: {reason}");
                    damaged.push(Damaged {
                        id,
                        rcpt: None,
                        reason,
                    });
                    None
                }
            };
            envelope = Some((id, decoded));
        }
        let Some((_, Some(env))) = envelope.as_ref() else {
            continue;
        };
        let address = env.recipients.get(rcpt as usize).map_or("", String::as_str);
        if !filter.matches(id, address, &env.meta) {
            continue;
        }
        let state = match RecipientState::decode(value.value()) {
            Ok(state) => state,
            Err(DecodeError(reason)) => {
                damaged.push(Damaged {
                    id,
                    rcpt: Some(rcpt),
                    reason,
                });
                continue;
            }
        };
        page.recipients.push(QueuedRecipient {
            id,
            rcpt,
            address: address.to_owned(),
            mail_from: env.mail_from.clone(),
            meta: env.meta.clone(),
            attempts: state.attempts,
            next_attempt_ms: state.next_attempt_ms,
            status: status_of(&state, now_ms),
        });
    }
    Ok((page, damaged))
}

fn status_of(state: &RecipientState, now_ms: u64) -> RecipientStatus {
    if state.claimed {
        RecipientStatus::InFlight
    } else if state.next_attempt_ms == SUSPENDED_DUE {
        RecipientStatus::Suspended
    } else if state.next_attempt_ms > now_ms {
        RecipientStatus::Deferred
    } else {
        RecipientStatus::Queued
    }
}

/// Recipient counts by status, from the schedule index alone.
pub(crate) fn queue_counts(db: &Database, now_ms: u64) -> Result<QueueCounts, SpoolError> {
    let txn = db.begin_read()?;
    let schedule = txn.open_table(SCHEDULE)?;
    let count = |range: redb::Range<'_, (u64, u64, u32), ()>| -> Result<u64, SpoolError> {
        let mut n = 0;
        for entry in range {
            entry?;
            n += 1;
        }
        Ok(n)
    };
    let due_end = (now_ms.saturating_add(1), 0, 0);
    let queued = count(schedule.range(..due_end)?)?;
    let deferred = count(schedule.range(due_end..(SUSPENDED_DUE, 0, 0))?)?;
    let suspended = count(schedule.range((SUSPENDED_DUE, 0, 0)..)?)?;
    let total = txn.open_table(RECIPIENTS)?.len()?;
    Ok(QueueCounts {
        queued,
        deferred,
        suspended,
        in_flight: total.saturating_sub(queued + deferred + suspended),
    })
}

/// Test hook: replaces the stored value of a recipient row with `value`,
/// as a damaged disk block or a buggy build would.
#[cfg(test)]
pub(crate) fn overwrite_recipient_row(
    db: &Database,
    (id, rcpt): (MessageId, u32),
    value: &[u8],
) -> Result<(), SpoolError> {
    let txn = begin_write(db, true)?;
    txn.open_table(RECIPIENTS)?.insert((id, rcpt), value)?;
    txn.commit()?;
    Ok(())
}
