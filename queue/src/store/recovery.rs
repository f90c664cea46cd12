//! What runs once when the spool opens: recipients claimed by the previous
//! process are scheduled again, undecodable rows quarantined, the bodies of
//! the last commit checked (see `bodies.rs`), and the next message id found.

use std::sync::Arc;

use redb::{Database, ReadableTable};

use super::{NEXT_ID_COUNTER, WriteTables, begin_write};
use crate::codec::{DecodeError, RecipientState};
use crate::error::SpoolError;
use crate::id::MessageId;
use crate::quarantine::CorruptRecipient;
use crate::segments::SegmentFiles;

/// What [`recover`] found.
#[derive(Clone, Debug)]
pub(crate) struct Recovered {
    /// Every id handed out from now on is at least this.
    pub(crate) id_floor: MessageId,
    /// Claimed recipients scheduled again.
    pub(crate) unclaimed: u64,
    /// Rows that could not be decoded, moved to the quarantine.
    pub(crate) quarantined: Vec<CorruptRecipient>,
    /// Messages in the spool.
    pub(crate) messages: u64,
}

/// Runs once when the spool opens, before any other write: creates missing
/// tables and schedules again the recipients the previous process held in
/// memory. Committed durably, so a second crash starts from the same state.
pub(crate) fn recover(
    db: &Database,
    segments: &Arc<SegmentFiles>,
    now_ms: u64,
) -> Result<Recovered, SpoolError> {
    let txn = begin_write(db, true, true)?;
    let recovered = {
        let mut tables = WriteTables::open(&txn, segments)?;
        // Each one is logged there; they are counted with the quarantined.
        tables.check_unsynced_bodies(now_ms)?;
        let unclaimed = tables.unclaim_all(now_ms)?;
        // Applied in this commit; the appender reads the live counts after it.
        tables.flush_usage()?;
        Recovered {
            unclaimed,
            id_floor: tables.id_floor()?,
            quarantined: tables.take_quarantined(),
            messages: tables.message_count()?,
        }
    };
    txn.commit()?;
    Ok(recovered)
}

impl WriteTables<'_> {
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
