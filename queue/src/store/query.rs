//! Reads, each in its own read transaction on the caller's thread: messages,
//! counts, quota usage, stored objects, suppressions and queue pages. They
//! never write: damaged rows they meet are returned for the writer to
//! quarantine.

use redb::{Database, ReadableDatabase, ReadableTableMetadata};

use super::bodies::{BODY_REFS, to_ref};
use super::{
    BODIES, COUNTERS, LAST_REPLIES, MESSAGES, OBJECTS, QUARANTINED_COUNTER, RECIPIENTS, SCHEDULE,
    SUPPRESSIONS, USAGE, open_if_created,
};
use crate::codec::{DecodeError, Envelope, RecipientState, decode_envelope};
use crate::error::SpoolError;
use crate::id::MessageId;
use crate::message::StoredMessage;
use crate::quarantine::Damaged;
use crate::quota::{Standing, Window};
use crate::segments::{ReadError, SegmentFiles};
use crate::select::{
    QueueCounts, QueueFilter, QueuePage, QueuedRecipient, RecipientStatus, SUSPENDED_DUE,
};
use crate::suppress::{GLOBAL_TENANT, Suppression};

/// Message and recipient counts, as the tables report them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Counts {
    pub(crate) messages: u64,
    pub(crate) recipients: u64,
    pub(crate) scheduled: u64,
    pub(crate) quarantined: u64,
}

/// Reads one message with its body: from its segment file, or from the
/// `bodies` table of a spool written before segments.
pub(crate) fn load(
    db: &Database,
    segments: &SegmentFiles,
    id: MessageId,
) -> Result<Option<StoredMessage>, SpoolError> {
    let txn = db.begin_read()?;
    let messages = txn.open_table(MESSAGES)?;
    let Some(envelope) = messages.get(id)? else {
        return Ok(None);
    };
    let envelope = decode_envelope(envelope.value()).map_err(|DecodeError(reason)| {
        SpoolError::Corrupt(format!("message {id:016x}: {reason}"))
    })?;
    let body_ref = match open_if_created(&txn, BODY_REFS)? {
        Some(refs) => refs.get(id)?.map(|v| to_ref(v.value())),
        None => None,
    };
    let body: Vec<u8> = match body_ref {
        Some(at) => match segments.read(id, at) {
            Ok(body) => body,
            // The message left meanwhile and its segment was emptied or deleted.
            Err(ReadError::Missing | ReadError::Damaged(_)) if !still_there(db, id)? => {
                return Ok(None);
            }
            Err(ReadError::Damaged(reason)) => {
                return Err(SpoolError::Corrupt(format!("message {id:016x}: {reason}")));
            }
            Err(ReadError::Missing) => {
                return Err(SpoolError::Corrupt(format!(
                    "message {id:016x}: its segment file {} is missing",
                    at.segment
                )));
            }
            Err(ReadError::Io(err)) => {
                return Err(SpoolError::Storage(format!(
                    "cannot read the body of message {id:016x} from segment {}: {err}",
                    at.segment
                )));
            }
        },
        None => {
            let old = open_if_created(&txn, BODIES)?;
            let Some(body) = old.as_ref().map(|t| t.get(id)).transpose()?.flatten() else {
                return Err(SpoolError::Corrupt(format!(
                    "message {id:016x} has no body"
                )));
            };
            body.value().to_vec()
        }
    };
    Ok(Some(StoredMessage {
        id,
        mail_from: envelope.mail_from,
        recipients: envelope.recipients,
        meta: envelope.meta,
        body: body.into(),
    }))
}

/// Whether message `id` is still in the spool, in a transaction begun now.
fn still_there(db: &Database, id: MessageId) -> Result<bool, SpoolError> {
    let txn = db.begin_read()?;
    Ok(txn.open_table(MESSAGES)?.get(id)?.is_some())
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

/// Usage of quota `name` in `window` as of `now_ms`, and when it frees.
pub(crate) fn usage(
    db: &Database,
    name: &str,
    window: Window,
    now_ms: u64,
) -> Result<Standing, SpoolError> {
    let txn = db.begin_read()?;
    let Some(table) = open_if_created(&txn, USAGE)? else {
        return Ok(window.standing(&[], now_ms));
    };
    let mut counts = Vec::new();
    for bucket in window.buckets(now_ms) {
        if let Some(v) = table.get((name, window.kind(), bucket))? {
            counts.push((bucket, v.value()));
        }
    }
    Ok(window.standing(&counts, now_ms))
}

/// The count of quota `name` in one bucket of `window` (a day, a month,
/// 0 for lifetime).
pub(crate) fn usage_in(
    db: &Database,
    name: &str,
    window: Window,
    bucket: u32,
) -> Result<u64, SpoolError> {
    let txn = db.begin_read()?;
    let Some(table) = open_if_created(&txn, USAGE)? else {
        return Ok(0);
    };
    Ok(table
        .get((name, window.kind(), bucket))?
        .map_or(0, |v| v.value()))
}

/// Every object of `kind`, by name order.
pub(crate) fn objects(db: &Database, kind: &str) -> Result<Vec<(String, Vec<u8>)>, SpoolError> {
    let txn = db.begin_read()?;
    let Some(table) = open_if_created(&txn, OBJECTS)? else {
        return Ok(Vec::new());
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
    let Some(table) = open_if_created(&txn, SUPPRESSIONS)? else {
        return Ok(vec![false; addresses.len()]);
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
    let Some(table) = open_if_created(&txn, SUPPRESSIONS)? else {
        return Ok(None);
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
    let Some(table) = open_if_created(&txn, SUPPRESSIONS)? else {
        return Ok(Vec::new());
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
    let last_replies = open_if_created(&txn, LAST_REPLIES)?;
    let rows = match from {
        Some((id, rcpt)) => recipients.range((id, rcpt)..)?,
        None => recipients.range::<(u64, u32)>(..)?,
    };
    let mut page = QueuePage::default();
    let mut damaged = Vec::new();
    // The last message read; `None` inside when its envelope is damaged.
    let mut envelope: Option<(MessageId, Option<Envelope>)> = None;
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
        let last_reply = match &last_replies {
            Some(table) => table.get((id, rcpt))?.map(|r| r.value().to_owned()),
            None => None,
        };
        page.recipients.push(QueuedRecipient {
            id,
            rcpt,
            last_reply,
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
