//! The values that go in and out of the spool: a new message, a stored one,
//! a claimed recipient, and the outcome of a delivery attempt.
//!
//! The limits here are sanity bounds of the spool itself; the SMTP server
//! enforces its own, smaller policy limits before a message gets this far.

use std::sync::Arc;

use crate::error::SpoolError;
use crate::id::MessageId;

/// Most recipients one message may have in the spool.
pub(crate) const MAX_RECIPIENTS: usize = 100_000;
/// Largest message body the spool stores (redb's own ceiling is 3 GiB).
pub(crate) const MAX_BODY_BYTES: usize = 1 << 30;
/// Largest single text field (an address, a meta field).
pub(crate) const MAX_FIELD_BYTES: usize = 64 * 1024;

/// Where a message came from and how it is accounted; copied into events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MessageMeta {
    pub tenant: String,
    pub group: String,
    pub channel: String,
    pub campaign: String,
    pub route: String,
    pub received_at_ms: u64,
    /// Peer address and HELO name, for events.
    pub client: String,
    /// Where bounces go: MAIL FROM becomes a VERP address at this domain.
    /// Empty: the sender's own return path is kept.
    pub return_path_domain: String,
    /// The application's metadata for the message's recipient, as JSON
    /// text (HTTP injection's `recipients[].metadata`), carried into every
    /// event of it. Empty: none.
    pub metadata: String,
}

/// A message's wire bytes (CRLF, not dot-stuffed), shared: admission hands
/// the same bytes to the spool and to the message's first delivery, and a
/// `Vec` becomes one without a copy (an `Arc<[u8]>` would copy 10 KB per
/// message).
pub(crate) type Body = Arc<Vec<u8>>;

/// A message to spool: envelope plus the final wire bytes (CRLF, not dot-stuffed).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewMessage {
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub body: Body,
    pub meta: MessageMeta,
    /// Limits checked and counted in the insert's own transaction.
    pub quotas: Vec<crate::quota::Quota>,
    /// Links rewritten for click and open tracking, written in the same
    /// commit (see `tracking.rs`).
    pub tracking: Option<crate::tracking::TrackedLinks>,
    /// An idempotency record written in the insert's own transaction, so
    /// that it exists exactly when the message does (see `idempotency`).
    pub idempotency: Option<crate::idempotency::IdempotencyRow>,
}

/// A message read back from the spool. The body is shared, so clones are cheap.
#[derive(Clone, Debug)]
pub struct StoredMessage {
    pub id: MessageId,
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub meta: MessageMeta,
    pub body: Body,
}

/// A recipient handed to the delivery side by [`crate::Spool::claim_due`].
/// Its address is `load(id).recipients[rcpt]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Claimed {
    pub id: MessageId,
    pub rcpt: u32,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// What happened to a claimed recipient.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Delivered, bounced or expired: the recipient leaves the spool, and the
    /// message (with its body) leaves with its last recipient.
    Done { id: MessageId, rcpt: u32 },
    /// Try again at `next_attempt_ms`; counts as an attempt. `reply` is
    /// what the attempt got (kept for `queue list`, as `mailq` shows it;
    /// cut to `MAX_LAST_REPLY_BYTES`; empty keeps none).
    Deferred {
        id: MessageId,
        rcpt: u32,
        next_attempt_ms: u64,
        reply: String,
    },
    /// Not attempted (e.g. shutdown): due again now, attempts unchanged.
    Release { id: MessageId, rcpt: u32 },
    /// Not attempted, and not to be before `until_ms` (its server is
    /// down, its back-off runs): attempts unchanged.
    Postponed {
        id: MessageId,
        rcpt: u32,
        until_ms: u64,
    },
}

impl NewMessage {
    /// Checks the message fits the spool's limits and can be delivered at all.
    pub(crate) fn validate(&self) -> Result<(), SpoolError> {
        if self.recipients.is_empty() {
            return Err(invalid("the message has no recipients".into()));
        }
        if self.recipients.len() > MAX_RECIPIENTS {
            return Err(invalid(format!(
                "{} recipients exceed the spool limit of {MAX_RECIPIENTS}",
                self.recipients.len()
            )));
        }
        if self.body.len() > MAX_BODY_BYTES {
            return Err(invalid(format!(
                "a body of {} bytes exceeds the spool limit of {MAX_BODY_BYTES}",
                self.body.len()
            )));
        }
        if let Some(row) = &self.idempotency {
            row.check()?;
        }
        self.validate_fields()
    }

    fn validate_fields(&self) -> Result<(), SpoolError> {
        let meta = &self.meta;
        let named = [
            ("mail_from", &self.mail_from),
            ("tenant", &meta.tenant),
            ("group", &meta.group),
            ("channel", &meta.channel),
            ("campaign", &meta.campaign),
            ("route", &meta.route),
            ("client", &meta.client),
            ("metadata", &meta.metadata),
        ];
        let recipients = self.recipients.iter().map(|rcpt| ("recipient", rcpt));
        for (name, value) in named.into_iter().chain(recipients) {
            if value.len() > MAX_FIELD_BYTES {
                return Err(invalid(format!(
                    "field {name} has {} bytes, more than the spool limit of {MAX_FIELD_BYTES}",
                    value.len()
                )));
            }
        }
        Ok(())
    }
}

fn invalid(reason: String) -> SpoolError {
    SpoolError::Invalid(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> NewMessage {
        NewMessage {
            mail_from: "a@example.com".into(),
            recipients: vec!["b@example.net".into()],
            body: b"Subject: x\r\n\r\nhi\r\n".to_vec().into(),
            meta: MessageMeta::default(),
            quotas: Vec::new(),
            tracking: None,
            idempotency: None,
        }
    }

    #[test]
    fn a_normal_message_is_valid() {
        assert!(message().validate().is_ok());
    }

    #[test]
    fn limits_are_enforced() {
        let mut no_rcpt = message();
        no_rcpt.recipients.clear();
        assert!(matches!(no_rcpt.validate(), Err(SpoolError::Invalid(_))));

        let mut too_many = message();
        too_many.recipients = vec!["x@y".into(); MAX_RECIPIENTS + 1];
        assert!(matches!(too_many.validate(), Err(SpoolError::Invalid(_))));

        let mut long_field = message();
        long_field.meta.campaign = "c".repeat(MAX_FIELD_BYTES + 1);
        let err = long_field.validate().unwrap_err().to_string();
        assert!(err.contains("campaign"), "{err}");
    }
}
