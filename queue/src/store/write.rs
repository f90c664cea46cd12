//! Changes made inside one write transaction: new messages and their
//! quotas, stored objects and suppressions, delivery outcomes, claims and
//! operators' queue actions. Each keeps the invariant described in
//! `mod.rs`: a recipient row is either scheduled once or claimed.

use std::ops::{Bound, RangeBounds};

use redb::ReadableTable;

use super::{NEXT_ID_COUNTER, WriteTables};
use crate::codec::{DecodeError, Envelope, RecipientState, decode_envelope, encode_envelope};
use crate::error::SpoolError;
use crate::id::MessageId;
use crate::message::{Claimed, NewMessage, Outcome};
use crate::quarantine::CorruptRecipient;
use crate::quota::{Quota, QuotaExceeded, Window};
use crate::segments::BodyRef;
use crate::select::{
    ClaimCandidate, ClaimCursor, ClaimFilter, HEAD_CLAIM_SCAN, QueueAction, ROTATING_CLAIM_SCAN,
    SUSPENDED_DUE, ScheduleKey,
};
use crate::tracking::EncodedTracking;

/// A message validated and encoded on the caller's thread, so the writer
/// thread only copies bytes into the database.
#[derive(Debug)]
pub(crate) struct EncodedMessage {
    envelope: Vec<u8>,
    pub(crate) body: crate::message::Body,
    /// CRC-32 of `body`, for its segment record.
    pub(crate) body_crc: u32,
    recipient_count: u32,
    quotas: Vec<Quota>,
    /// The tracked-links row written with the message, if any.
    pub(crate) tracking: Option<EncodedTracking>,
    pub(crate) idempotency: Option<crate::idempotency::IdempotencyRow>,
}

impl EncodedMessage {
    pub(crate) fn new(msg: NewMessage) -> Result<Self, SpoolError> {
        msg.validate()?;
        let recipient_count = u32::try_from(msg.recipients.len())
            .map_err(|_| SpoolError::Invalid("too many recipients".into()))?;
        let tracking = match &msg.tracking {
            Some(links) => Some(EncodedTracking::new(
                links,
                &msg.mail_from,
                &msg.recipients,
                &msg.meta,
            )?),
            None => None,
        };
        Ok(EncodedMessage {
            tracking,
            envelope: encode_envelope(&msg.mail_from, &msg.recipients, &msg.meta),
            body_crc: crate::segments::checksum(&msg.body),
            body: msg.body,
            recipient_count,
            quotas: msg.quotas,
            idempotency: msg.idempotency,
        })
    }

    /// Memory held while the message waits for the writer.
    pub(crate) fn size_bytes(&self) -> usize {
        self.envelope.len()
            + self.body.len()
            + self
                .tracking
                .as_ref()
                .map_or(0, EncodedTracking::size_bytes)
    }
}

impl WriteTables<'_> {
    /// Stores a new message whose body was appended at `body` (or, with
    /// none, goes into the database here); its recipients are claimed by
    /// the caller or due now.
    pub(crate) fn insert_message(
        &mut self,
        id: MessageId,
        msg: &EncodedMessage,
        body: Option<BodyRef>,
        claimed: bool,
        now_ms: u64,
    ) -> Result<(), SpoolError> {
        self.messages.insert(id, msg.envelope.as_slice())?;
        match body {
            Some(at) => self.put_body_ref(id, at)?,
            None => {
                self.bodies.insert(id, msg.body.as_slice())?;
            }
        }
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
            let counts = self.usage_counts(&q.name, q.window, now_ms)?;
            let standing = q.window.standing(&counts, now_ms);
            let used = standing.used;
            if q.limit > 0 && used + q.amount > q.limit {
                return Ok(Err(QuotaExceeded {
                    name: q.name.clone(),
                    window: q.window,
                    limit: q.limit,
                    used,
                    resets_at_ms: standing.next_release.map(|r| r.at_ms),
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

    /// (bucket, count) of the window's counted buckets now.
    fn usage_counts(
        &self,
        name: &str,
        window: Window,
        now_ms: u64,
    ) -> Result<Vec<(u32, u64)>, SpoolError> {
        let mut counts = Vec::new();
        for bucket in window.buckets(now_ms) {
            if let Some(v) = self.usage.get((name, window.kind(), bucket))? {
                counts.push((bucket, v.value()));
            }
        }
        Ok(counts)
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
                ref reply,
            } => {
                if self.reschedule(id, rcpt, next_attempt_ms, true)? && !reply.is_empty() {
                    let kept = cut_at_char(reply, super::MAX_LAST_REPLY_BYTES);
                    self.last_replies.insert((id, rcpt), kept)?;
                }
                Ok(())
            }
            Outcome::Release { id, rcpt } => self.release(id, rcpt, now_ms),
            Outcome::Postponed { id, rcpt, until_ms } => {
                self.release(id, rcpt, until_ms.max(now_ms))
            }
        }
    }

    /// Moves up to `limit` due recipients, earliest first, from the schedule
    /// to the claimed state. With `accept`, only those it accepts, among
    /// the due entries [`Self::due_window`] offers.
    pub(crate) fn claim_due(
        &mut self,
        now_ms: u64,
        limit: usize,
        mut accept: Option<&mut ClaimFilter>,
        cursor: &mut ClaimCursor,
    ) -> Result<Vec<Claimed>, SpoolError> {
        let due_keys = if accept.is_some() {
            self.due_window(now_ms, cursor)?
        } else {
            self.due_keys(..=(now_ms, u64::MAX, u32::MAX), limit)?
        };
        let mut claimed = Vec::with_capacity(due_keys.len().min(limit));
        let mut envelope: Option<(MessageId, Option<Envelope>)> = None;
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

    /// What a filtered claim looks at: the first [`HEAD_CLAIM_SCAN`] due
    /// entries, then [`ROTATING_CLAIM_SCAN`] more after `cursor`, which moves
    /// on and wraps back to the head at the end, so every due entry is
    /// offered within a few claims however long the run of refused ones.
    fn due_window(
        &self,
        now_ms: u64,
        cursor: &mut ClaimCursor,
    ) -> Result<Vec<ScheduleKey>, SpoolError> {
        let last_due = (now_ms, u64::MAX, u32::MAX);
        let mut keys = self.due_keys(..=last_due, HEAD_CLAIM_SCAN)?;
        let head_end = match keys.last() {
            Some(&last) if keys.len() == HEAD_CLAIM_SCAN => last,
            _ => {
                *cursor = None;
                return Ok(keys);
            }
        };
        let from = cursor.filter(|c| *c > head_end).unwrap_or(head_end);
        let more = self.due_keys(
            (Bound::Excluded(from), Bound::Included(last_due)),
            ROTATING_CLAIM_SCAN,
        )?;
        *cursor = match more.last() {
            Some(&last) if more.len() == ROTATING_CLAIM_SCAN => Some(last),
            _ => None,
        };
        keys.extend(more);
        Ok(keys)
    }

    /// At most `count` schedule keys in `range`, in due order.
    fn due_keys(
        &self,
        range: impl RangeBounds<ScheduleKey>,
        count: usize,
    ) -> Result<Vec<ScheduleKey>, SpoolError> {
        Ok(self
            .schedule
            .range(range)?
            .take(count)
            .map(|entry| entry.map(|(key, _)| key.value()))
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn envelope(&self, id: MessageId) -> Result<Option<Envelope>, SpoolError> {
        let Some(stored) = self.messages.get(id)? else {
            return Ok(None);
        };
        decode_envelope(stored.value())
            .map(Some)
            .map_err(|DecodeError(reason)| {
                SpoolError::Corrupt(format!("message {id:016x}: {reason}"))
            })
    }

    /// Messages in the spool (redb keeps a table's length: no walk).
    pub(crate) fn message_count(&self) -> Result<u64, SpoolError> {
        Ok(redb::ReadableTableMetadata::len(&self.messages)?)
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
            Some(state) if state.claimed => self.reschedule(id, rcpt, now_ms, false).map(drop),
            _ => Ok(()),
        }
    }

    fn finish_recipient(&mut self, id: MessageId, rcpt: u32) -> Result<(), SpoolError> {
        let Some(state) = self.recipient(id, rcpt)? else {
            return Ok(());
        };
        self.unschedule(id, rcpt, &state)?;
        self.recipients.remove((id, rcpt))?;
        self.last_replies.remove((id, rcpt))?;
        if !self.has_recipients(id)? {
            self.messages.remove(id)?;
            self.remove_body(id)?;
        }
        Ok(())
    }

    /// Schedules the recipient at `due_ms`; false when it is no longer
    /// in the spool.
    fn reschedule(
        &mut self,
        id: MessageId,
        rcpt: u32,
        due_ms: u64,
        count_attempt: bool,
    ) -> Result<bool, SpoolError> {
        let Some(mut state) = self.recipient(id, rcpt)? else {
            return Ok(false);
        };
        self.unschedule(id, rcpt, &state)?;
        if count_attempt {
            state.attempts = state.attempts.saturating_add(1);
        }
        state.claimed = false;
        state.next_attempt_ms = due_ms;
        self.put_recipient(id, rcpt, &state)?;
        self.schedule.insert((due_ms, id, rcpt), ())?;
        Ok(true)
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
    pub(super) fn recipient(
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

    pub(super) fn put_recipient(
        &mut self,
        id: MessageId,
        rcpt: u32,
        state: &RecipientState,
    ) -> Result<(), SpoolError> {
        self.recipients
            .insert((id, rcpt), state.encode().as_slice())?;
        Ok(())
    }

    pub(super) fn has_recipients(&self, id: MessageId) -> Result<bool, SpoolError> {
        Ok(self
            .recipients
            .range((id, 0)..=(id, u32::MAX))?
            .next()
            .is_some())
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
fn cut_at_char(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
