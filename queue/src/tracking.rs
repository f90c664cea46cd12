//! The tracked-links table: what a click or open token needs to be
//! answered days later (the original URLs, and the message, tenant,
//! campaign and recipient for the event).
//!
//! One row per tracked message, keyed by its [`TrackingKey`] (admission
//! time, random nonce). The key is chosen at admission, before the spool
//! assigns the message id, because the token that carries it goes into
//! the body before DKIM signs it. The row is written by the same commit
//! as the message, so no token ever points at nothing, and it outlives
//! the message: it stays until the retention passes. Like the delivered
//! index (`delivered.rs`), keys start with their time, so each insert
//! also deletes up to [`PRUNE_PER_ROW`] expired rows from the front of
//! the table: pruning keeps pace with admission without a timer.

use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::codec::{DecodeError, Envelope, Reader, decode_envelope, put_str, put_u32, put_u64};
use crate::error::SpoolError;
use crate::id::MessageId;
use crate::message::MessageMeta;
use crate::store::open_if_created;

/// (admission ms, nonce) -> record (see `encode`).
const TRACKED: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("tracked_links");

/// Expired rows deleted per row written (see the module comment).
pub(crate) const PRUNE_PER_ROW: usize = 2;
/// Most links one message may have tracked.
pub const MAX_TRACKED_LINKS: usize = 10_000;

const VERSION: u8 = 1;

/// What a tracking token carries to find its row: when the message was
/// admitted (unix ms) and a random nonce that makes the key unique.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TrackingKey {
    pub time_ms: u64,
    pub nonce: u64,
}

/// The links of a new message, written with it (`NewMessage::tracking`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrackedLinks {
    pub key: TrackingKey,
    /// The message's `Message-ID:` header, for the events.
    pub header_message_id: String,
    /// The original URLs, by link number.
    pub urls: Vec<String>,
    /// How long the row is kept after `key.time_ms`.
    pub retain: Duration,
}

/// A tracked message as a token finds it.
#[derive(Clone, Debug, PartialEq)]
pub struct TrackedMessage {
    pub id: MessageId,
    pub header_message_id: String,
    pub sender: String,
    /// The recipient when the message had exactly one (personalised mail).
    pub recipient: Option<String>,
    pub meta: MessageMeta,
    pub urls: Vec<String>,
}

/// A row ready for the writer: the record without its message id, which
/// the writer fills in (bytes 1 to 8).
#[derive(Debug)]
pub(crate) struct EncodedTracking {
    key: TrackingKey,
    record: Vec<u8>,
    retain_ms: u64,
}

impl EncodedTracking {
    pub(crate) fn new(
        links: &TrackedLinks,
        mail_from: &str,
        recipients: &[String],
        meta: &MessageMeta,
    ) -> Result<EncodedTracking, SpoolError> {
        if links.urls.len() > MAX_TRACKED_LINKS {
            return Err(SpoolError::Invalid(format!(
                "{} tracked links exceed the spool limit of {MAX_TRACKED_LINKS}",
                links.urls.len()
            )));
        }
        let recipient: &[String] = match recipients {
            [one] => std::slice::from_ref(one),
            _ => &[],
        };
        let envelope = crate::codec::encode_envelope(mail_from, recipient, meta);
        let url_bytes: usize = links.urls.iter().map(|u| u.len() + 4).sum();
        let mut record = Vec::with_capacity(32 + url_bytes + envelope.len());
        record.push(VERSION);
        put_u64(&mut record, 0);
        put_str(&mut record, &links.header_message_id);
        put_u32(
            &mut record,
            u32::try_from(links.urls.len()).unwrap_or(u32::MAX),
        );
        for url in &links.urls {
            put_str(&mut record, url);
        }
        record.extend_from_slice(&envelope);
        Ok(EncodedTracking {
            key: links.key,
            record,
            retain_ms: u64::try_from(links.retain.as_millis()).unwrap_or(u64::MAX),
        })
    }

    pub(crate) fn size_bytes(&self) -> usize {
        self.record.len()
    }

    /// Whether a row with this key exists already (a nonce drawn twice in
    /// the same millisecond: about one in 2^48).
    pub(crate) fn collides(&self, txn: &WriteTransaction) -> Result<bool, SpoolError> {
        let table = txn.open_table(TRACKED)?;
        Ok(table.get((self.key.time_ms, self.key.nonce))?.is_some())
    }

    /// Writes the row of message `id` and prunes a few expired ones.
    pub(crate) fn write(
        &self,
        txn: &WriteTransaction,
        id: MessageId,
        now_ms: u64,
    ) -> Result<(), SpoolError> {
        let mut table = txn.open_table(TRACKED)?;
        let mut record = self.record.clone();
        record[1..9].copy_from_slice(&id.to_le_bytes());
        table.insert((self.key.time_ms, self.key.nonce), record.as_slice())?;
        let cutoff_ms = now_ms.saturating_sub(self.retain_ms);
        for _ in 0..PRUNE_PER_ROW {
            let expired = match table.first()? {
                Some((key, _)) => key.value().0 < cutoff_ms,
                None => false,
            };
            if !expired {
                break;
            }
            table.pop_first()?;
        }
        Ok(())
    }
}

/// The row of a tracking key, unless never written or pruned.
pub(crate) fn get(db: &Database, key: TrackingKey) -> Result<Option<TrackedMessage>, SpoolError> {
    let txn = db.begin_read()?;
    let Some(table) = open_if_created(&txn, TRACKED)? else {
        return Ok(None);
    };
    let Some(value) = table.get((key.time_ms, key.nonce))? else {
        return Ok(None);
    };
    decode(value.value()).map(Some).map_err(|e| {
        SpoolError::Corrupt(format!(
            "tracked-links row {}/{}: {}",
            key.time_ms, key.nonce, e.0
        ))
    })
}

/// Rows in the table.
pub(crate) fn len(db: &Database) -> Result<u64, SpoolError> {
    use redb::ReadableTableMetadata;
    let txn = db.begin_read()?;
    let Some(table) = open_if_created(&txn, TRACKED)? else {
        return Ok(0);
    };
    Ok(table.len()?)
}

fn decode(bytes: &[u8]) -> Result<TrackedMessage, DecodeError> {
    let mut input = Reader::new(bytes);
    input.version(VERSION)?;
    let id = input.u64()?;
    let header_message_id = input.string()?;
    let count = input.u32()? as usize;
    if count > input.remaining() / 4 {
        return Err(DecodeError(format!(
            "link count {count} exceeds the record"
        )));
    }
    let urls = (0..count)
        .map(|_| input.string())
        .collect::<Result<Vec<_>, _>>()?;
    let Envelope {
        mail_from,
        recipients,
        meta,
    } = decode_envelope(input.rest())?;
    Ok(TrackedMessage {
        id,
        header_message_id,
        sender: mail_from,
        recipient: recipients.into_iter().next(),
        meta,
        urls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewMessage, Spool, SpoolConfig};

    fn message(recipients: &[&str], key: TrackingKey, retain: Duration) -> NewMessage {
        NewMessage {
            mail_from: "app@example.com".into(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            body: b"Subject: x\r\n\r\nhi\r\n".to_vec().into(),
            meta: MessageMeta {
                tenant: "acme".into(),
                campaign: "spring".into(),
                channel: "marketing".into(),
                ..MessageMeta::default()
            },
            quotas: Vec::new(),
            idempotency: None,
            tracking: Some(TrackedLinks {
                key,
                header_message_id: "<m@example.com>".into(),
                urls: vec![
                    "https://example.com/a?x=1&y=2".into(),
                    "http://b.example/".into(),
                ],
                retain,
            }),
        }
    }

    fn open(dir: &std::path::Path) -> Spool {
        Spool::open(SpoolConfig::new(dir)).unwrap()
    }

    #[test]
    fn rows_are_written_with_the_message_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path());
        let key = TrackingKey {
            time_ms: crate::writer::now_ms(),
            nonce: 42,
        };
        let day = Duration::from_secs(86_400);
        let id = spool
            .insert_blocking(message(&["bob@example.net"], key, day), false)
            .unwrap();
        spool.shutdown();
        let spool = open(dir.path());
        let found = spool.tracked(key).unwrap().unwrap();
        assert_eq!(found.id, id);
        assert_eq!(found.recipient.as_deref(), Some("bob@example.net"));
        assert_eq!(found.meta.tenant, "acme");
        assert_eq!(found.meta.campaign, "spring");
        assert_eq!(found.header_message_id, "<m@example.com>");
        assert_eq!(found.urls[0], "https://example.com/a?x=1&y=2");
        let other = TrackingKey { nonce: 43, ..key };
        assert_eq!(spool.tracked(other).unwrap(), None);
    }

    #[test]
    fn several_recipients_leave_the_recipient_out_and_a_taken_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path());
        let key = TrackingKey {
            time_ms: crate::writer::now_ms(),
            nonce: 7,
        };
        let day = Duration::from_secs(86_400);
        let two = message(&["a@example.net", "b@example.net"], key, day);
        spool.insert_blocking(two.clone(), false).unwrap();
        assert_eq!(spool.tracked(key).unwrap().unwrap().recipient, None);
        let again = spool.insert_blocking(two, false);
        assert!(
            matches!(again, Err(SpoolError::TrackingKeyTaken)),
            "{again:?}"
        );
    }

    #[test]
    fn expired_rows_are_pruned_by_later_inserts() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path());
        let now = crate::writer::now_ms();
        let day_ms = 86_400_000;
        let retain = Duration::from_secs(30 * 86_400);
        for nonce in 0..3 {
            let old = TrackingKey {
                time_ms: now - 40 * day_ms,
                nonce,
            };
            spool
                .insert_blocking(message(&["a@example.net"], old, retain), false)
                .unwrap();
        }
        // Each insert pruned what was older than 30 days before it: the
        // first rows were written "40 days ago" but keyed so, so each
        // write removed up to PRUNE_PER_ROW of the earlier ones.
        let fresh = TrackingKey {
            time_ms: now,
            nonce: 9,
        };
        spool
            .insert_blocking(message(&["a@example.net"], fresh, retain), false)
            .unwrap();
        let left = spool.inner_tracked_len();
        assert_eq!(left, 1, "only the fresh row is left");
        assert!(spool.tracked(fresh).unwrap().is_some());
    }

    #[test]
    fn damaged_rows_are_errors_not_panics() {
        let links = TrackedLinks {
            urls: vec!["https://x.example/".into()],
            ..TrackedLinks::default()
        };
        let encoded =
            EncodedTracking::new(&links, "a@b", &["c@d".into()], &MessageMeta::default()).unwrap();
        assert!(decode(&encoded.record).is_ok());
        // The envelope's last field (an empty return-path domain, 4 bytes)
        // is optional for records of older versions: cut before it.
        for cut in 0..encoded.record.len() - 4 {
            assert!(decode(&encoded.record[..cut]).is_err(), "cut at {cut}");
        }
    }
}
