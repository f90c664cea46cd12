//! Quarantine inside a write transaction: a row that cannot be decoded is
//! moved aside (see `quarantine.rs` for the table) by whichever write meets
//! it first, so no request fails on it and the schedule keeps no entry for it.

use std::collections::HashSet;

use redb::ReadableTable;

use super::{QUARANTINED_COUNTER, WriteTables};
use crate::error::SpoolError;
use crate::id::MessageId;
use crate::quarantine::{BODIES_TABLE, CorruptRecipient, MESSAGES_TABLE, RECIPIENTS_TABLE};

impl WriteTables<'_> {
    /// Moves undecodable recipient rows to the quarantine, drops their
    /// schedule entries (their due time is unreadable: one pass over the
    /// schedule finds them), and quarantines the envelope and body of a
    /// message left with no recipient.
    pub(super) fn quarantine_recipients(
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
            self.last_replies.remove(key)?;
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
        if let Some(body) = self.remove_body_for_quarantine(id)? {
            self.quarantine
                .put(BODIES_TABLE, (id, 0), now_ms, reason, &body)?;
        }
        Ok(())
    }
}
