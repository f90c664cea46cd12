//! What one email received by the bounce listener becomes: events tied to
//! the message, tenant, campaign and recipient it is about, and, for hard
//! bounces and complaints, suppressions. Which of its records act, and on
//! which recipient of ours, is `choose.rs`.
//!
//! The VERP tag ties a report to (message id, recipient index), and in a
//! fleet to the node that sent it: the one in the RCPT address (HMAC checked
//! by the listener), else one the parser found in the report itself (checked
//! here). The delivered index (this node's, or the fleet's: `lookup.rs`)
//! then gives the rest; a message pruned from it still yields an event with
//! the message id and what the report says, and a null tenant.
//! Auto-replies, success notices and other mail are accepted and only counted
//! (`sendengine_bounce_in_total{kind}`): answering them with an error would
//! make the sender bounce our bounce address, and they carry nothing to act on.
//!
//! The same report sent again (an MTA that retries after a lost 250, a
//! replay) makes no second event or suppression: each report acted on is
//! marked in the spool by (VERP tag, recipient, status), see
//! [`report_key`] (another node's mail: the key starts with its number, so
//! its ids cannot meet this node's), and a marked one is only counted
//! (`sendengine_bounce_in_total{kind="duplicate"}`).
//!
//! Everything here is blocking (parsing, spool reads, the suppression
//! commits): the listener runs it on the blocking pool.

use std::sync::{Arc, Mutex};

use sendengine_bounces::{Kind, Record};
use sendengine_queue::{Delivered, MessageId, Spool, format_id, id_timestamp_ms};

use crate::events::{BounceType, Event, EventKind, EventReply};
use crate::timefmt::{now_ms, rfc3339};

/// Reports about different recipients in one email: more is abuse, not mail.
pub const MAX_REPORTS_PER_MESSAGE: usize = 100;

/// Held from the duplicate check to the mark, so that two sessions
/// delivering the same report at once do not both act on it.
static REPORTS_IN_PROGRESS: Mutex<()> = Mutex::new(());

/// What the intake needs from the daemon.
#[derive(Clone)]
pub struct Intake {
    pub spool: Spool,
    /// Key of the HMAC in VERP tags (the same the delivery side signs with).
    pub verp_secret: [u8; 32],
    /// `[suppression] auto_suppress`.
    pub auto_suppress: bool,
    /// `[cluster]`: the fleet's delivered index, for other nodes' mail.
    pub fleet: Option<Arc<crate::cluster::delivered::SharedDelivered>>,
}

/// A recipient of ours that a received email is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The fleet node number the tag names; none for a standalone tag.
    pub node: Option<u32>,
    pub id: MessageId,
    pub rcpt: u32,
    /// The VERP address it arrived at: our envelope sender of that message.
    pub return_path: String,
}

/// Why an email could not be taken: answered 451, so the sender retries.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct IntakeError {
    pub message: String,
    /// Logged where it arose (a fleet database outage is logged once, not
    /// per bounce): the listener answers 451 without logging it again.
    pub logged: bool,
}

impl IntakeError {
    pub fn new(message: String) -> IntakeError {
        IntakeError {
            message,
            logged: false,
        }
    }
}

impl Intake {
    /// Parses one received email and returns the events to emit, every
    /// suppression already committed (a failed commit is an error, and
    /// nothing is emitted, so a retry by the sender does not double events).
    pub fn process(&self, targets: &[Target], body: &[u8]) -> Result<Vec<Event>, IntakeError> {
        let records = sendengine_bounces::parse_message(body);
        let chosen = self.choose(records, targets)?;
        // Looked up before the lock: a fleet lookup may wait seconds.
        let mut resolved = Vec::new();
        for report in chosen.into_iter().take(MAX_REPORTS_PER_MESSAGE) {
            let (target, record) = (report.target, report.record);
            let key = self.report_key(&target, &record);
            if self.already_reported(&target, &key)? {
                count("duplicate");
                continue;
            }
            let known = match report.known {
                Some(known) => known,
                None => self.delivered(&target)?,
            };
            resolved.push((target, record, key, known));
        }
        let _one_at_a_time = REPORTS_IN_PROGRESS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut events = Vec::new();
        let mut acted_on = Vec::new();
        for (target, record, key, known) in resolved {
            if self.already_reported(&target, &key)? {
                count("duplicate");
                continue;
            }
            events.extend(self.act_on(&target, known.as_ref(), &record, body.len())?);
            acted_on.push((target.id, target.rcpt, key));
        }
        self.mark_reported(&acted_on)?;
        Ok(events)
    }

    /// The event of one report, and for a hard bounce or a complaint the
    /// suppression (committed) and its event.
    fn act_on(
        &self,
        target: &Target,
        known: Option<&Delivered>,
        record: &Record,
        size: usize,
    ) -> Result<Vec<Event>, IntakeError> {
        let event = report_event(target, known, record, size);
        count(if record.kind == Kind::Complaint {
            "complaint"
        } else {
            "bounce"
        });
        let suppress = self.auto_suppress
            && (refuses_mail(record) || record.hard)
            && !event.recipient.is_empty();
        if !suppress {
            return Ok(vec![event]);
        }
        self.suppress(&event, record)?;
        let suppression = Event {
            kind: EventKind::Suppression,
            ..event.clone()
        };
        Ok(vec![event, suppression])
    }

    /// [`report_key`], scoped to the sending node for another node's mail.
    fn report_key(&self, target: &Target, record: &Record) -> String {
        match self.foreign_node(target) {
            Some(node) => format!("node{node}|{}", report_key(record)),
            None => report_key(record),
        }
    }

    fn already_reported(&self, target: &Target, key: &str) -> Result<bool, IntakeError> {
        self.spool
            .reported(target.id, target.rcpt, key)
            .map_err(|e| IntakeError::new(format!("reading the reported bounces failed: {e}")))
    }

    /// Written after the suppressions and before the events go out. A
    /// failed mark is a 451 with no event, so the sender's retry acts
    /// once; a crash between the mark and the event log loses the events
    /// only (the suppressions are committed).
    fn mark_reported(&self, acted_on: &[(MessageId, u32, String)]) -> Result<(), IntakeError> {
        if acted_on.is_empty() {
            return Ok(());
        }
        let marks: Vec<(MessageId, u32, &str)> = acted_on
            .iter()
            .map(|(id, rcpt, key)| (*id, *rcpt, key.as_str()))
            .collect();
        self.spool
            .mark_reported(&marks)
            .map_err(|e| IntakeError::new(format!("recording the reported bounces failed: {e}")))
    }

    /// Puts the event's recipient on its tenant's list (no tenant known:
    /// the global one, as for synchronous bounces), waiting for the commit.
    fn suppress(&self, event: &Event, record: &Record) -> Result<(), IntakeError> {
        let tenant = event.tenant.as_deref().unwrap_or_default();
        let (reason, source) = match record.kind {
            Kind::Complaint => (
                "complaint".to_owned(),
                format!(
                    "complaint ({}) reported by {}",
                    record.action.as_deref().unwrap_or("abuse"),
                    record
                        .remote_mta
                        .as_deref()
                        .unwrap_or("an unnamed feedback loop"),
                ),
            ),
            _ => (
                event.bounce_class.clone().unwrap_or_default(),
                format!(
                    "async bounce: {} {}",
                    record.status.as_deref().unwrap_or(""),
                    record.diagnostic.as_deref().unwrap_or("")
                )
                .trim()
                .to_owned(),
            ),
        };
        self.spool
            .suppress(tenant, &event.recipient, &reason, &source)
            .map_err(|e| {
                IntakeError::new(format!("suppressing {} failed: {e}", event.recipient))
            })?;
        crate::cluster::suppressions::share(tenant, &event.recipient, &reason, &source);
        Ok(())
    }
}

/// What makes two reports about one recipient of ours the same: the kind,
/// the status (for a complaint, the feedback type) and the address the
/// report names. A later report that says something else (a 4.x.x delay,
/// then the 5.x.x failure) is acted on.
fn report_key(record: &Record) -> String {
    let kind = if record.kind == Kind::Complaint {
        "complaint"
    } else {
        "bounce"
    };
    let status = record
        .status
        .as_deref()
        .or(record.action.as_deref())
        .unwrap_or_default();
    let recipient = record.recipient.as_deref().unwrap_or_default();
    format!("{kind}|{status}|{}", recipient.to_ascii_lowercase())
}

/// Whether a complaint says its recipient wants no more mail (not a
/// not-spam or an authentication failure report).
fn refuses_mail(record: &Record) -> bool {
    record.kind == Kind::Complaint
        && sendengine_bounces::is_complaint_type(record.action.as_deref().unwrap_or("abuse"))
}

pub(super) fn count(kind: &'static str) {
    ::metrics::counter!("sendengine_bounce_in_total", "kind" => kind).increment(1);
}

/// The `async_bounce` or `complaint` event of one report.
fn report_event(target: &Target, known: Option<&Delivered>, record: &Record, size: usize) -> Event {
    let now = now_ms();
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let field = |f: fn(&Delivered) -> &String| known.map(f).and_then(|s| opt(s));
    let complaint = record.kind == Kind::Complaint;
    Event {
        time: rfc3339(now),
        kind: if complaint {
            EventKind::Complaint
        } else {
            EventKind::AsyncBounce
        },
        message_id: format_id(target.id),
        header_message_id: field(|d| &d.header_message_id)
            .or_else(|| record.original_message_id.clone())
            .unwrap_or_default(),
        sender: target.return_path.clone(),
        recipient: field(|d| &d.recipient)
            .or_else(|| record.recipient.as_ref().map(|r| r.to_ascii_lowercase()))
            .unwrap_or_default(),
        tenant: field(|d| &d.tenant),
        group: field(|d| &d.group),
        channel: field(|d| &d.channel).unwrap_or_default(),
        campaign: field(|d| &d.campaign),
        route: field(|d| &d.route),
        remote_host: record.remote_mta.clone(),
        reply: (!complaint).then(|| bounce_reply(record)),
        // For a complaint: the feedback type (abuse, fraud, opt-out...).
        bounce_class: if complaint {
            Some(record.action.clone().unwrap_or_else(|| "abuse".into()))
        } else {
            record.category.map(|c| c.as_str().to_owned())
        },
        bounce_type: (!complaint).then(|| BounceType::of(record.hard)),
        tls: None,
        dkim: None,
        attempt: 0,
        queue_time_ms: now.saturating_sub(id_timestamp_ms(target.id)),
        size,
        url: None,
        user_agent: None,
        // The delivered index does not keep the metadata.
        metadata: None,
    }
}

/// The remote server's reply as the report gives it: the code at the
/// start of the diagnostic if there is one, else one implied by the status.
fn bounce_reply(record: &Record) -> EventReply {
    let text = record.diagnostic.clone().unwrap_or_default();
    let stated = text
        .get(..3)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (200..600).contains(c));
    let implied = match record.status.as_deref().and_then(|s| s.chars().next()) {
        Some('2') => 250,
        Some('4') => 450,
        Some('5') => 550,
        _ if record.permanent => 550,
        _ => 450,
    };
    EventReply {
        code: stated.unwrap_or(implied),
        enhanced: record.status.clone(),
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::super::choose::tests::record;
    use super::*;
    use sendengine_bounces::verp;

    const SECRET: [u8; 32] = [7; 32];

    fn dsn_for(recipient: &str) -> Vec<u8> {
        format!(
            "From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nFailed.\r\n\
--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n\
Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n\
Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n--b--\r\n"
        )
        .into_bytes()
    }

    fn intake(dir: &std::path::Path) -> Intake {
        Intake {
            spool: Spool::open(sendengine_queue::SpoolConfig::new(dir)).unwrap(),
            verp_secret: SECRET,
            auto_suppress: true,
            fleet: None,
        }
    }

    fn tagged(id: MessageId) -> Target {
        let tag = verp::encode(id, 0, &SECRET);
        Target {
            node: None,
            id,
            rcpt: 0,
            return_path: verp::return_path("bounces", &tag, "b.example"),
        }
    }

    /// Puts recipient 0 of message `id` in the delivered index, as sent
    /// to `recipient` for tenant acme's campaign spring.
    fn index(intake: &Intake, id: MessageId, recipient: &str) {
        let row = Delivered {
            id,
            rcpt: 0,
            tenant: "acme".into(),
            campaign: "spring".into(),
            recipient: recipient.into(),
            ..Delivered::default()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        intake.spool.record_with_index(
            Vec::new(),
            &[row],
            std::time::Duration::from_secs(86_400),
            Box::new(move |r| tx.send(r).unwrap()),
        );
        rx.recv().unwrap().unwrap();
    }

    /// A DSN with one block per `(original, final, action, status)`.
    fn dsn_of_blocks(blocks: &[Block]) -> Vec<u8> {
        let mut report = String::from("Reporting-MTA: dns; mx.example.net\r\n");
        for (original, last, action, status) in blocks {
            report.push_str("\r\n");
            if let Some(original) = original {
                report.push_str(&format!("Original-Recipient: rfc822; {original}\r\n"));
            }
            let code = if status.starts_with('5') { 550 } else { 450 };
            report.push_str(&format!(
                "Final-Recipient: rfc822; {last}\r\nAction: {action}\r\nStatus: {status}\r\n\
Diagnostic-Code: smtp; {code} {status} user unknown\r\n"
            ));
        }
        format!(
            "From: MAILER-DAEMON@mx.example.net\r\nSubject: Delivery Status Notification\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nA report on your message.\r\n\
--b\r\nContent-Type: message/delivery-status\r\n\r\n{report}\r\n--b--\r\n"
        )
        .into_bytes()
    }

    fn suppressed(intake: &Intake, address: &str) -> bool {
        ["acme", ""]
            .iter()
            .any(|t| intake.spool.suppression(t, address).unwrap().is_some())
    }

    type Block<'a> = (Option<&'a str>, &'a str, &'a str, &'a str);

    /// The events of a DSN of `blocks` about recipient 0 of message `id`,
    /// indexed as sent to `sent_to` unless that is none (pruned).
    fn report_on(
        intake: &Intake,
        id: MessageId,
        sent_to: Option<&str>,
        blocks: &[Block],
    ) -> Vec<Event> {
        if let Some(address) = sent_to {
            index(intake, id, address);
        }
        intake
            .process(&[tagged(id)], &dsn_of_blocks(blocks))
            .unwrap()
    }

    #[test]
    fn blocks_about_other_addresses_do_not_act_on_our_recipient() {
        let dir = tempfile::tempdir().unwrap();
        let intake = intake(dir.path());
        let first = crate::timefmt::now_ms() << 20;
        let alias = Some("alias@example.net");
        // Our recipient's own block says delayed; a list member's failed.
        let events = report_on(
            &intake,
            first,
            Some("bob@example.net"),
            &[
                (None, "member@list.example", "failed", "5.1.1"),
                (None, "Bob@Example.net", "delayed", "4.4.1"),
            ],
        );
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].bounce_type, Some(BounceType::Soft));
        assert_eq!(events[0].recipient, "bob@example.net");
        let nothing_for_us: [(Option<&str>, Vec<Block>); 3] = [
            // Our recipient expanded to members, one of which failed.
            (
                Some("team@example.net"),
                vec![
                    (None, "team@example.net", "expanded", "2.0.0"),
                    (None, "gone@example.org", "failed", "5.1.1"),
                ],
            ),
            // Forwarded to two addresses, one failed: the alias still works.
            (
                alias,
                vec![
                    (alias, "one@example.org", "failed", "5.1.1"),
                    (alias, "two@example.org", "delivered", "2.0.0"),
                ],
            ),
            // Several addresses and ours no longer known: nothing to tie.
            (
                None,
                vec![
                    (None, "a@example.org", "failed", "5.1.1"),
                    (None, "b@example.org", "failed", "5.1.1"),
                ],
            ),
        ];
        for (n, (sent_to, blocks)) in nothing_for_us.iter().enumerate() {
            let events = report_on(&intake, first + 1 + n as u64, *sent_to, blocks);
            assert!(events.is_empty(), "{sent_to:?}: {events:?}");
        }
        for address in [
            "bob@example.net",
            "member@list.example",
            "team@example.net",
            "gone@example.org",
            "alias@example.net",
            "one@example.org",
            "a@example.org",
        ] {
            assert!(!suppressed(&intake, address), "{address} was suppressed");
        }
        intake.spool.shutdown();
    }

    #[test]
    fn our_recipients_failure_acts_beside_other_blocks_and_through_one_forward() {
        let dir = tempfile::tempdir().unwrap();
        let intake = intake(dir.path());
        let first = crate::timefmt::now_ms() << 20;
        let events = report_on(
            &intake,
            first,
            Some("bob@example.net"),
            &[
                (None, "other@example.org", "delivered", "2.0.0"),
                (None, "bob@example.net", "failed", "5.1.1"),
            ],
        );
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].bounce_type, Some(BounceType::Hard));
        assert!(suppressed(&intake, "bob@example.net"));
        assert!(!suppressed(&intake, "other@example.org"));
        // Forwarded once (Original-Recipient ours), beside a stray block.
        let carol = Some("carol@example.net");
        let events = report_on(
            &intake,
            first + 1,
            carol,
            &[
                (None, "stray@example.org", "delayed", "4.4.1"),
                (carol, "carol@forward.example", "failed", "5.1.1"),
            ],
        );
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].recipient, "carol@example.net");
        assert!(suppressed(&intake, "carol@example.net"));
        intake.spool.shutdown();
    }

    #[test]
    fn a_bounce_for_an_unknown_message_keeps_its_id_and_has_no_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let intake = intake(dir.path());
        let id = 12_345 << 20;
        let events = intake
            .process(&[tagged(id)], &dsn_for("Gone@Example.net"))
            .unwrap();
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].kind, EventKind::AsyncBounce);
        assert_eq!(events[0].message_id, format_id(id));
        assert_eq!(events[0].tenant, None);
        assert_eq!(events[0].recipient, "gone@example.net");
        assert_eq!(events[1].kind, EventKind::Suppression);
        let global = intake.spool.suppression("", "gone@example.net").unwrap();
        assert_eq!(global.map(|s| s.reason).as_deref(), Some("bad-mailbox"));
        intake.spool.shutdown();
    }

    #[test]
    fn an_indexed_recipient_gets_its_tenant_and_address() {
        let dir = tempfile::tempdir().unwrap();
        let intake = intake(dir.path());
        let id = crate::timefmt::now_ms() << 20;
        index(&intake, id, "bob@example.net");
        // The report names a forwarding address; the event and the
        // suppression are about the address we sent to.
        let events = intake
            .process(&[tagged(id)], &dsn_for("bob@forward.example"))
            .unwrap();
        assert_eq!(events[0].tenant.as_deref(), Some("acme"));
        assert_eq!(events[0].campaign.as_deref(), Some("spring"));
        assert_eq!(events[0].recipient, "bob@example.net");
        let listed = intake.spool.suppression("acme", "bob@example.net").unwrap();
        assert!(listed.is_some());
        intake.spool.shutdown();
    }

    #[test]
    fn auto_replies_and_plain_mail_make_no_events() {
        let dir = tempfile::tempdir().unwrap();
        let intake = intake(dir.path());
        let vacation = b"From: bob@example.net\r\nSubject: Out of office\r\nAuto-Submitted: auto-replied\r\n\r\nI am away until Monday.\r\n";
        let plain = b"From: bob@example.net\r\nSubject: hello\r\n\r\nJust saying hi.\r\n";
        for body in [&vacation[..], &plain[..]] {
            let events = intake.process(&[tagged(1 << 20)], body).unwrap();
            assert!(events.is_empty(), "{events:?}");
        }
        intake.spool.shutdown();
    }

    fn dsn_with_status(recipient: &str, status: &str) -> Vec<u8> {
        String::from_utf8(dsn_for(recipient))
            .unwrap()
            .replace("Status: 5.1.1", &format!("Status: {status}"))
            .replace("550 5.1.1", &format!("{}50 {status}", &status[..1]))
            .into_bytes()
    }

    #[test]
    fn the_same_report_again_makes_no_events_even_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = crate::timefmt::now_ms() << 20;
        let first = {
            let intake = intake(dir.path());
            let first = intake
                .process(&[tagged(id)], &dsn_for("gone@example.net"))
                .unwrap();
            let again = intake
                .process(&[tagged(id)], &dsn_for("gone@example.net"))
                .unwrap();
            assert!(again.is_empty(), "{again:?}");
            intake.spool.shutdown();
            first
        };
        assert_eq!(first.len(), 2, "async_bounce and suppression: {first:?}");
        let intake = intake(dir.path());
        let replayed = intake
            .process(&[tagged(id)], &dsn_for("gone@example.net"))
            .unwrap();
        assert!(replayed.is_empty(), "{replayed:?}");
        // A report that says something new is acted on: first a delay,
        // then the failure after it.
        let delayed = intake
            .process(&[tagged(id)], &dsn_with_status("gone@example.net", "4.2.2"))
            .unwrap();
        assert_eq!(delayed.len(), 1, "{delayed:?}");
        assert_eq!(delayed[0].bounce_type, Some(BounceType::Soft));
        // Another recipient of the same message is another report.
        let other = Target {
            rcpt: 1,
            ..tagged(id)
        };
        assert_eq!(
            intake
                .process(&[other], &dsn_for("gone@example.net"))
                .unwrap()
                .len(),
            2
        );
        intake.spool.shutdown();
    }

    #[test]
    fn async_bounces_say_hard_or_soft() {
        let dir = tempfile::tempdir().unwrap();
        let intake = intake(dir.path());
        let hard = intake
            .process(&[tagged(3 << 20)], &dsn_for("gone@example.net"))
            .unwrap();
        assert_eq!(hard[0].bounce_type, Some(BounceType::Hard));
        assert_eq!(hard[1].kind, EventKind::Suppression);
        // A full mailbox, even at 5.2.2, may take mail again.
        let full = intake
            .process(
                &[tagged(4 << 20)],
                &dsn_with_status("full@example.net", "5.2.2"),
            )
            .unwrap();
        assert_eq!(full.len(), 1, "no suppression: {full:?}");
        assert_eq!(full[0].bounce_type, Some(BounceType::Soft));
        // "User unknown" at a 4.x.x status is temporary: soft, kept.
        let transient = intake
            .process(
                &[tagged(5 << 20)],
                &dsn_with_status("later@example.net", "4.1.1"),
            )
            .unwrap();
        assert_eq!(transient.len(), 1, "{transient:?}");
        assert_eq!(transient[0].bounce_type, Some(BounceType::Soft));
        intake.spool.shutdown();
    }

    #[test]
    fn complaints_suppress_unless_not_spam_or_an_authentication_report() {
        let mut r = record(Kind::Complaint, false);
        for (feedback_type, suppresses) in [
            (None, true),
            (Some("abuse"), true),
            (Some("opt-out"), true),
            (Some("fraud"), true),
            (Some("Not-Spam"), false),
            (Some("auth-failure"), false),
        ] {
            r.action = feedback_type.map(str::to_owned);
            assert_eq!(refuses_mail(&r), suppresses, "{feedback_type:?}");
        }
        assert!(!refuses_mail(&record(Kind::Bounce, true)));
    }

    #[test]
    fn replies_take_the_stated_code_else_one_from_the_status() {
        let mut r = record(Kind::Bounce, true);
        r.status = Some("5.1.1".into());
        r.diagnostic = Some("550-5.1.1 no such user".into());
        assert_eq!(bounce_reply(&r).code, 550);
        r.diagnostic = Some("user unknown".into());
        assert_eq!(bounce_reply(&r).code, 550);
        r.status = Some("4.2.2".into());
        assert_eq!(bounce_reply(&r).code, 450);
        r.diagnostic = Some("999 odd".into());
        assert_eq!(bounce_reply(&r).code, 450);
    }
}
