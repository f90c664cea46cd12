//! Asynchronous bounce parsing: one raw email in, one [`Record`] per affected
//! recipient out.
//!
//! Order of decisions: a feedback report (RFC 5965 ARF, Hotmail's format,
//! Apple's unsubscribe notice) is a complaint; a delivery-status report or a
//! mail that looks like a bounce (by its sender, subject or wording) and
//! names a recipient is a bounce, and so is fml's refusal of a list post; a mail
//! marked as automatic (RFC 3834) or titled like a vacation notice is an
//! auto-reply; anything else is not a bounce. Exim marks its bounces
//! `Auto-Submitted: auto-replied`, hence bounces before auto-replies.
//! Complaints are read in `complaint.rs`, auto-replies in `auto_reply.rs`,
//! bounces here.

use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

use crate::category::Category;
use crate::classify::{Classifier, builtin_classifier, is_permanent};
use crate::dsn::{self, DsnRecipient};
use crate::fml;
use crate::mail::{Mail, SectionKind, parse_header_block, split_header_body};
use crate::ses::{self, SesKind, SesRecipient, SesVerdict};
use crate::text::{self, MAX_DIAGNOSTIC_CHARS, TextRecipient};
use crate::verp;

mod auto_reply;
mod complaint;

use auto_reply::{auto_reply_record, is_auto_reply};
pub use complaint::is_complaint_type;
use complaint::{complaint_records, is_complaint};

/// What kind of email it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Bounce,
    Complaint,
    AutoReply,
    NotBounce,
}

/// One affected recipient, as printed by `sendctl bounce parse --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// The file the email came from, when read from one.
    pub file: Option<String>,
    /// The failed (or complaining, or auto-replying) address.
    pub recipient: Option<String>,
    /// A DSN's Original-Recipient when it is another Internet address than
    /// `recipient` (the address the mail was sent to, before forwarding);
    /// not part of the JSON record.
    #[serde(skip)]
    pub original_recipient: Option<String>,
    /// RFC 3463 status ("5.1.1"), when the email gives or implies one.
    pub status: Option<String>,
    /// DSN action: failed, delayed, delivered, relayed, expanded; for a
    /// complaint, the feedback type (abuse, opt-out, ...).
    pub action: Option<String>,
    /// Bounces only.
    pub category: Option<Category>,
    /// A hard bounce: a category that says the address will never work
    /// (bad mailbox, inactive mailbox, bad domain), at a permanent status.
    pub hard: bool,
    /// Permanent failure (5.x.x); not part of the JSON record.
    #[serde(skip)]
    pub permanent: bool,
    pub kind: Kind,
    pub diagnostic: Option<String>,
    pub remote_mta: Option<String>,
    pub original_message_id: Option<String>,
    /// Our VERP tag (lowercase), found in the envelope, the To of the bounce
    /// or the returned headers; its HMAC is not checked here.
    pub verp_tag: Option<String>,
}

impl Record {
    /// Whether the record is about `address`: its recipient, or the
    /// original recipient it was forwarded from (ASCII case ignored).
    pub fn names(&self, address: &str) -> bool {
        [&self.recipient, &self.original_recipient]
            .into_iter()
            .flatten()
            .any(|a| a.eq_ignore_ascii_case(address))
    }

    fn new(kind: Kind) -> Record {
        Record {
            file: None,
            recipient: None,
            original_recipient: None,
            status: None,
            action: None,
            category: None,
            hard: false,
            permanent: false,
            kind,
            diagnostic: None,
            remote_mta: None,
            original_message_id: None,
            verp_tag: None,
        }
    }
}

/// Why a file could not be parsed (the parser itself never fails).
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// Reads one email file and parses it (built-in rules); each record names
/// the file.
pub fn parse_file_records(path: &Path) -> Result<Vec<Record>, ParseError> {
    let raw = std::fs::read(path).map_err(|source| ParseError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let file = path.display().to_string();
    let mut records = parse_message(&raw);
    for record in &mut records {
        record.file = Some(file.clone());
    }
    Ok(records)
}

/// Parses one raw email (any line endings). Always returns at least one
/// record; never panics.
pub fn parse_message(raw: &[u8]) -> Vec<Record> {
    parse_message_with(raw, builtin_classifier())
}

/// [`parse_message`] with the operator's rules (see
/// [`Classifier::with_operator_rules`]).
pub fn parse_message_with(raw: &[u8], classifier: &Classifier) -> Vec<Record> {
    parse_at_depth(raw, 0, classifier)
}

/// A bounce of a bounce (or a forwarded bounce) carries the useful report
/// one level down; deeper nesting is not followed.
const MAX_NESTING: usize = 2;

fn parse_at_depth(raw: &[u8], depth: usize, classifier: &Classifier) -> Vec<Record> {
    let mail = Mail::parse(raw);
    let context = Context::new(&mail, classifier);
    let ses = ses::read_notification(&context.own_text);
    let mut records = if !ses.is_empty() {
        ses.iter().map(|r| ses_record(r, classifier)).collect()
    } else if is_complaint(&mail) {
        complaint_records(&mail, &context)
    } else {
        let mut bounces = bounce_records(&mail, &context);
        if bounces.iter().all(|r| r.status.is_none()) && depth < MAX_NESTING {
            let nested = nested_bounces(&mail, &context, depth);
            if !nested.is_empty() {
                bounces = nested;
            }
        }
        if !bounces.is_empty() {
            bounces
        } else if is_auto_reply(&mail) {
            vec![auto_reply_record(&mail)]
        } else {
            vec![Record::new(Kind::NotBounce)]
        }
    };
    for record in &mut records {
        record.original_message_id = context.original_message_id.clone();
        record.verp_tag = context.verp_tag.clone();
        // A temporary failure is never hard, whatever its words say: the
        // address may work at the next try (Postfix and KumoMTA suppress
        // nothing on a 4.x.x either).
        record.hard &= record.permanent;
    }
    // A report that repeats a recipient's block word for word (a retry
    // history, a broken generator) reports it once.
    let mut unique: Vec<Record> = Vec::with_capacity(records.len());
    for record in records {
        if !unique.contains(&record) {
            unique.push(record);
        }
    }
    unique
}

/// The bounce records of returned messages that are bounces themselves.
fn nested_bounces(mail: &Mail, context: &Context, depth: usize) -> Vec<Record> {
    mail.sections
        .iter()
        .filter(|s| s.kind == SectionKind::Returned)
        .map(|s| s.text.as_str())
        .chain(std::iter::once(context.inline_returned.as_str()))
        .filter(|text| !text.trim().is_empty())
        .flat_map(|text| parse_at_depth(text.as_bytes(), depth + 1, context.classifier))
        .filter(|r| r.kind == Kind::Bounce && r.status.is_some())
        .collect()
}

/// What every record of one email shares.
struct Context<'c> {
    classifier: &'c Classifier,
    /// The bounce's own text, without the returned message.
    own_text: String,
    /// The returned message found inside the text parts (non-MIME bounces).
    inline_returned: String,
    /// Headers of the returned message, unfolded.
    returned_headers: Vec<(String, String)>,
    original_message_id: Option<String>,
    verp_tag: Option<String>,
    /// The bounce's subject: Sendmail says there that it gave up.
    subject: String,
}

impl<'c> Context<'c> {
    fn new(mail: &Mail, classifier: &'c Classifier) -> Context<'c> {
        let mut own_text = String::new();
        let mut inline_returned = String::new();
        for section in mail.sections.iter().filter(|s| s.kind == SectionKind::Text) {
            let (own, returned) = text::split_returned(&section.text);
            own_text.push_str(own);
            own_text.push('\n');
            inline_returned.push_str(returned);
            inline_returned.push('\n');
        }
        let returned = mail.text_of(SectionKind::Returned) + &inline_returned;
        let returned_headers = returned_headers(&returned);
        let original_message_id = crate::mail::header_value(&returned_headers, "message-id")
            .map(|id| id.trim().to_string())
            .filter(|id| !id.is_empty());
        let top_headers: String = mail
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}\n"))
            .collect();
        let verp_tag = verp::find_tag(&top_headers)
            .or_else(|| verp::find_tag(&mail.text_of(SectionKind::DeliveryStatus)))
            .or_else(|| verp::find_tag(&returned))
            .or_else(|| verp::find_tag(&own_text));
        Context {
            classifier,
            own_text,
            inline_returned,
            returned_headers,
            original_message_id,
            verp_tag,
            subject: mail.subject.clone(),
        }
    }

    fn returned_header(&self, name: &str) -> Option<&str> {
        crate::mail::header_value(&self.returned_headers, name)
    }
}

/// The header block of the returned message: from its first header-looking
/// line to the first empty line after it.
fn returned_headers(returned: &str) -> Vec<(String, String)> {
    let start = returned
        .lines()
        .position(|line| {
            let name = line.split(':').next().unwrap_or("");
            line.contains(':')
                && !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .unwrap_or(0);
    let rest: String = returned.lines().skip(start).collect::<Vec<_>>().join("\n");
    let (block, _) = split_header_body(&rest);
    parse_header_block(block)
}

// ------------------------------------------------------------------- bounces

/// Senders and subjects of bounces from MTAs that do not send RFC 3464.
static BOUNCE_SENDER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)mailer-daemon|mailer_daemon|mailerdaemon|post_?master|mail delivery (subsystem|system|service)|",
        r"mail ?administrator|mdaemon|microsoftexchange|system administrator|returned|",
        r"daemon@|bounce|delivery|notification|failure"
    ))
    .unwrap_or_else(|e| panic!("{e}"))
});

static BOUNCE_SUBJECT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)undeliver|undelivered|delivery (status|failure|failed|notification|report|problem|error|final failure|incomplete)|",
        r"returned mail|mail delivery failed|failure notice|failed delivery|non.?delivery|could not (be )?deliver|",
        r"delivery has failed|mail system error|warning: could not send|message not delivered|permanent error|",
        r"returned to sender|undeliverable|nondeliverable|error sending|bounced|mail failure|delayed mail|",
        r"delivery delayed|unzustellbar|unable to deliver|no se puede entregar|non remis|",
        r"notice of delivery failure|message delivery|mail could not|delivery notification|",
        r"エラー|未配達|配信失敗|送信できません"
    ))
    .unwrap_or_else(|e| panic!("{e}"))
});

/// Words of a bounce's subject that people use too ("Re: your payment
/// failed"): they count only in a subject that is no reply or forward.
static BOUNCE_SUBJECT_WORD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)rejected|failed|failure|error|returned|problem")
        .unwrap_or_else(|e| panic!("{e}"))
});

static REPLY_SUBJECT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^\s*(re|aw|sv|fwd?|wg|tr)\s*:").unwrap_or_else(|e| panic!("{e}"))
});

fn is_bounce_subject(subject: &str) -> bool {
    BOUNCE_SUBJECT.is_match(subject)
        || (BOUNCE_SUBJECT_WORD.is_match(subject) && !REPLY_SUBJECT.is_match(subject))
}

/// Sentences only a bounce writes, for notices whose sender and subject say
/// nothing (KDDI's "Mail" from no-reply@).
static BOUNCE_BODY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)could not be delivered to:|delivery to the following recipients? failed|",
        r"the following addresses had permanent fatal errors|this is the qmail-send program|",
        r"this is the mail system at host"
    ))
    .unwrap_or_else(|e| panic!("{e}"))
});

fn looks_like_bounce(mail: &Mail, context: &Context) -> bool {
    let subject = mail.subject.as_str();
    let from = mail.header("from").unwrap_or_default();
    mail.content_type.contains("delivery-status")
        || mail.header("x-failed-recipients").is_some()
        || is_bounce_subject(subject)
        || (BOUNCE_SENDER.is_match(from) && !subject.to_ascii_lowercase().contains("notification"))
        || BOUNCE_BODY.is_match(&context.own_text)
}

fn bounce_records(mail: &Mail, context: &Context) -> Vec<Record> {
    let report = dsn::read_report(&mail.text_of(SectionKind::DeliveryStatus));
    let mut dsn_recipients: Vec<DsnRecipient> = report.recipients;
    if dsn_recipients.is_empty() && looks_like_bounce(mail, context) {
        dsn_recipients = dsn::read_report(&context.own_text).recipients;
    }
    let excluded = sender_addresses(mail, context);
    let mut text_recipients = text::recipients_in_text(&context.own_text, &excluded);
    if text_recipients.is_empty() {
        // People bounce mail they sent themselves: retry keeping only the
        // returned message's sender out.
        text_recipients = text::recipients_in_text(&context.own_text, &returned_senders(context));
    }
    if let ([only], [named]) = (dsn_recipients.as_mut_slice(), text_recipients.as_slice())
        && only.address().is_none()
    {
        // The report names its recipient in a form that is no Internet
        // address (X.400, a local host name); the text names one address.
        only.final_recipient = Some(named.address.clone());
    }
    if !dsn_recipients.is_empty() {
        return dsn_recipients
            .iter()
            .map(|r| {
                dsn_record(
                    r,
                    &text_recipients,
                    context,
                    report.reporting_mta.as_deref(),
                )
            })
            .collect();
    }
    if !looks_like_bounce(mail, context) {
        return fml::records(mail, &context.own_text)
            .iter()
            .map(|r| text_record(r, context))
            .collect();
    }
    let mut recipients = text_recipients;
    if recipients.is_empty() {
        recipients = fallback_recipients(mail, context);
    }
    if recipients.is_empty() && text_names_a_recipient(context) {
        // The text names its recipient in no usable form: still a bounce
        // (the VERP tag says whose), with no address rather than a guess.
        recipients.push(TextRecipient {
            address: String::new(),
            diagnostic: String::new(),
        });
    }
    for recipient in recipients.iter_mut().filter(|r| r.diagnostic.is_empty()) {
        recipient.diagnostic = last_paragraph(&context.own_text);
    }
    recipients.iter().map(|r| text_record(r, context)).collect()
}

/// Addresses that send rather than receive: never reported as recipients.
fn sender_addresses(mail: &Mail, context: &Context) -> Vec<String> {
    let mut senders = Vec::new();
    for name in [
        "from",
        "to",
        "return-path",
        "reply-to",
        "sender",
        "delivered-to",
        "x-original-to",
    ] {
        if let Some(value) = mail.header(name) {
            senders.extend(text::addresses(value));
        }
    }
    for name in ["from", "return-path", "sender", "reply-to"] {
        if let Some(value) = context.returned_header(name) {
            senders.extend(text::addresses(value));
        }
    }
    let to_of_returned: Vec<String> = context
        .returned_header("to")
        .map(text::addresses)
        .unwrap_or_default()
        .iter()
        .map(|a| a.to_ascii_lowercase())
        .collect();
    senders
        .into_iter()
        .map(|a| a.to_ascii_lowercase())
        .filter(|a| !to_of_returned.contains(a))
        .collect()
}

fn returned_senders(context: &Context) -> Vec<String> {
    ["from", "return-path", "sender"]
        .iter()
        .filter_map(|name| context.returned_header(name))
        .flat_map(text::addresses)
        .map(|a| a.to_ascii_lowercase())
        .collect()
}

/// Whether the bounce's own text names a recipient, in any form, even one
/// left out as a sender of the returned message.
fn text_names_a_recipient(context: &Context) -> bool {
    !text::local_host_addresses(&context.own_text).is_empty()
        || !text::recipients_in_text(&context.own_text, &[]).is_empty()
}

/// X-Failed-Recipients (Exim), else the To of the returned message. When
/// the text already named the recipient, the returned To is no evidence
/// (it lists the message's other readers: a list, a colleague), except a
/// To with the local part of an address named at a bare local host name
/// ("<kim@mailhost>"): that is the address that was meant.
fn fallback_recipients(mail: &Mail, context: &Context) -> Vec<TextRecipient> {
    let mut listed = mail
        .header("x-failed-recipients")
        .map(text::addresses)
        .unwrap_or_default();
    let named_internet = !text::recipients_in_text(&context.own_text, &[]).is_empty();
    if listed.is_empty() && !named_internet {
        listed = context
            .returned_header("to")
            .map(text::addresses)
            .unwrap_or_default();
        let named = text::local_host_addresses(&context.own_text);
        if !named.is_empty() {
            listed.retain(|address| {
                let local = address.split('@').next().unwrap_or_default();
                named
                    .iter()
                    .any(|(named_local, _)| named_local.eq_ignore_ascii_case(local))
            });
        }
    }
    listed
        .into_iter()
        .map(|address| {
            let diagnostic = text::diagnostic_for(&context.own_text, &address)
                .unwrap_or_else(|| last_paragraph(&context.own_text));
            TextRecipient {
                address,
                diagnostic: text::truncate(&diagnostic, MAX_DIAGNOSTIC_CHARS),
            }
        })
        .collect()
}

/// Bounces put the details after their boilerplate, just before the copy
/// of the message.
fn last_paragraph(text: &str) -> String {
    let paragraph = text
        .split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.chars().all(|c| matches!(c, '-' | '=' | '*')))
        .last()
        .unwrap_or_default();
    text::squeeze(paragraph)
}

fn dsn_record(
    recipient: &DsnRecipient,
    in_text: &[TextRecipient],
    context: &Context,
    reporting_mta: Option<&str>,
) -> Record {
    let own_text = context.own_text.as_str();
    let address = recipient.address().unwrap_or_default().to_string();
    // The text may spell the address differently (an alias before
    // rewriting); when it names a single recipient, that one is meant.
    let text_diagnostic = text::diagnostic_for(own_text, &address).or_else(|| {
        (in_text.len() == 1)
            .then(|| in_text.first().map(|t| t.diagnostic.clone()))
            .flatten()
    });
    let diagnostic = recipient
        .diagnostic
        .as_deref()
        .filter(|d| !d.trim().is_empty())
        .map(|d| text::complete_multiline_reply(d, own_text))
        .or(text_diagnostic)
        .map(|d| text::truncate(&text::squeeze(&d), MAX_DIAGNOSTIC_CHARS));
    let status = recipient
        .status
        .as_deref()
        .and_then(text::enhanced_status)
        .or_else(|| diagnostic.as_deref().and_then(text::enhanced_status));
    let mut record = classified_record(
        context.classifier,
        &address,
        status,
        diagnostic,
        recipient.action.clone(),
    );
    classify_from_whole_notice(&mut record, context);
    record.original_recipient = recipient
        .original_recipient
        .clone()
        .filter(|o| dsn::is_internet_address(o) && !o.eq_ignore_ascii_case(&address));
    record.remote_mta = recipient
        .remote_mta
        .clone()
        .or_else(|| reporting_mta.map(str::to_string));
    record
}

/// Sendmail's "(reason: 553 ...)": the remote server's own reply. Sendmail
/// may follow it with its stock "550 5.1.1 ... User unknown" for any 55x,
/// which says nothing of the mailbox.
fn sendmail_reason(diagnostic: &str) -> Option<&str> {
    let start = diagnostic.find("(reason: ")? + "(reason: ".len();
    let mut depth = 0usize;
    for (at, c) in diagnostic[start..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => {
                let reason = diagnostic[start..start + at].trim();
                return text::reply_code(reason).is_some().then_some(reason);
            }
            ')' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn text_record(recipient: &TextRecipient, context: &Context) -> Record {
    let own_text = context.own_text.as_str();
    let diagnostic = sendmail_reason(&recipient.diagnostic)
        .unwrap_or(&recipient.diagnostic)
        .to_owned();
    let status = text::enhanced_status(&diagnostic);
    let diagnostic = Some(diagnostic).filter(|d| !d.is_empty());
    let mut record = classified_record(
        context.classifier,
        &recipient.address,
        status,
        diagnostic,
        None,
    );
    classify_from_whole_notice(&mut record, context);
    if record.status.is_none() && is_delay_notice(own_text) {
        record.permanent = false;
        record.action = Some("delayed".into());
    }
    record
}

/// When the lines about the recipient match no rule, the whole notice may
/// (Google Groups, for one, explains itself paragraphs away from the
/// address); and a notice titled as given up on turns a connection
/// failure into an expired message.
fn classify_from_whole_notice(record: &mut Record, context: &Context) {
    let connection_trouble = matches!(
        record.category,
        Some(Category::NoAnswerFromHost | Category::BadConnection)
    );
    if connection_trouble && GAVE_UP_SUBJECT.is_match(&context.subject) {
        record.category = Some(Category::MessageExpired);
        return;
    }
    if record.category != Some(Category::Other) {
        return;
    }
    let code = record
        .diagnostic
        .as_deref()
        .and_then(text::reply_code)
        .unwrap_or(0);
    let category = context
        .classifier
        .category(code, record.status.as_deref(), &context.own_text);
    record.category = Some(category);
    record.hard = category.is_hard();
}

/// A success report (delivered, relayed, expanded; status 2.x.x) names a
/// recipient but is no bounce.
fn is_success(record: &Record) -> bool {
    let action = record.action.as_deref().unwrap_or_default();
    matches!(action, "delivered" | "relayed" | "expanded")
        || record.status.as_deref().is_some_and(|s| s.starts_with('2'))
}

/// A temporary failure that still ended the delivery means the sending MTA
/// gave up retrying: the message expired, whatever the last error was.
fn expiry_aware_category(
    category: Category,
    status: &Option<String>,
    action: Option<&str>,
    permanent: bool,
) -> Category {
    if action == Some("expired") {
        // Non-standard but plain (SendGrid): the queue gave up.
        return Category::MessageExpired;
    }
    let temporary_status = status.as_deref().is_some_and(|s| s.starts_with('4'));
    let gave_up = action.is_none_or(|a| a == "failed");
    let connection_trouble = matches!(
        category,
        Category::NoAnswerFromHost | Category::BadConnection
    );
    // A permanent failure without status: only silence means "gave up".
    let unknown_status = status.is_none() && permanent;
    let gave_up_waiting = temporary_status && connection_trouble
        || unknown_status && category == Category::NoAnswerFromHost;
    if gave_up && gave_up_waiting {
        Category::MessageExpired
    } else {
        category
    }
}

/// Sendmail's subject when it returns a message it could not send in time.
static GAVE_UP_SUBJECT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)cannot send message (for|within) \d+ (day|hour)")
        .unwrap_or_else(|e| panic!("{e}"))
});

static DELAY_WORDS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)will (continue|keep) (trying|to try)|still (be )?trying|delivery (has been |is )?delayed|(has|have) been delayed|not yet been delivered|warning: message|will retry|will be retried|attempts will continue|temporar")
        .unwrap_or_else(|e| panic!("{e}"))
});

fn is_delay_notice(text: &str) -> bool {
    DELAY_WORDS.is_match(text)
}

/// Classifies one recipient from its status and diagnostic.
fn classified_record(
    classifier: &Classifier,
    address: &str,
    status: Option<String>,
    diagnostic: Option<String>,
    action: Option<String>,
) -> Record {
    let diagnostic_text = text::remote_reply(diagnostic.as_deref().unwrap_or_default());
    let code = text::reply_code(diagnostic_text).unwrap_or(0);
    let classification = classifier.classify(code, status.as_deref(), diagnostic_text);
    let permanent = match (&status, code, action.as_deref()) {
        (Some(_), _, _) | (None, 400..=599, _) => is_permanent(code, status.as_deref()),
        (None, _, Some("delayed")) => false,
        (None, _, _) => !is_delay_notice(diagnostic_text),
    };
    let mut record = Record::new(Kind::Bounce);
    record.category = Some(expiry_aware_category(
        classification.category,
        &status,
        action.as_deref(),
        permanent,
    ));
    record.recipient = Some(address.to_string()).filter(|a| !a.is_empty());
    record.status = status;
    record.action = action.or_else(|| Some(if permanent { "failed" } else { "delayed" }.into()));
    // A delay is not final (RFC 3464 2.3.3), whatever its status says: the
    // address may still take the mail, so it is never suppressed for it.
    let delayed = record
        .action
        .as_deref()
        .is_some_and(|a| a.eq_ignore_ascii_case("delayed"));
    record.hard = !delayed && record.category.is_some_and(Category::is_hard);
    record.permanent = permanent;
    record.diagnostic = diagnostic;
    if is_success(&record) {
        record.kind = Kind::NotBounce;
        record.category = None;
        record.hard = false;
        record.permanent = false;
    }
    record
}

fn ses_record(recipient: &SesRecipient, classifier: &Classifier) -> Record {
    let diagnostic = recipient.diagnostic.as_deref().map(dsn::strip_type);
    match recipient.kind {
        SesKind::Complaint => {
            let mut record = Record::new(Kind::Complaint);
            record.recipient = Some(recipient.address.clone());
            record.action = Some(
                recipient
                    .feedback_type
                    .clone()
                    .unwrap_or_else(|| "abuse".into()),
            );
            record
        }
        SesKind::Bounce | SesKind::Delivery => {
            let status = recipient.status.as_deref().and_then(text::enhanced_status);
            let mut record = classified_record(
                classifier,
                &recipient.address,
                status,
                diagnostic,
                recipient.action.clone(),
            );
            record.remote_mta = recipient.remote_mta.clone();
            if record.kind == Kind::Bounce {
                apply_ses_verdict(&mut record, recipient.verdict());
            }
            record
        }
    }
}

/// SES's verdict on the address. Keep: never hard, and without a status
/// of its own the sub-type names the cause. Remove without a status (none
/// for an address on SES's suppression list, or when the receiver's reply
/// was unclear): hard, a bad mailbox unless the words say which hard cause.
fn apply_ses_verdict(record: &mut Record, verdict: Option<SesVerdict>) {
    let unstated = record.status.is_none();
    match verdict {
        Some(SesVerdict::Keep(cause)) => {
            record.hard = false;
            if unstated {
                record.permanent = false;
                record.category = cause.or(record.category);
            }
        }
        Some(SesVerdict::Remove) if unstated => {
            record.permanent = true;
            if !record.category.is_some_and(Category::is_hard) {
                record.category = Some(Category::BadMailbox);
            }
            record.hard = true;
        }
        _ => {}
    }
}
