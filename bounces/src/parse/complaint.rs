//! Feedback-loop complaints: ARF reports (RFC 5965) and the providers'
//! own forms (Hotmail's, Apple's unsubscribe notice), one record per
//! complaining address.

use std::sync::LazyLock;

use regex::Regex;

use super::{Context, Kind, Record};
use crate::dsn;
use crate::mail::{Mail, SectionKind};
use crate::text;

static FEEDBACK_TYPE_LINE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?im)^feedback-type:").unwrap_or_else(|e| panic!("{e}")));

pub(super) fn is_complaint(mail: &Mail) -> bool {
    mail.content_type.contains("feedback-report")
        || mail
            .sections
            .iter()
            .any(|s| s.kind == SectionKind::FeedbackReport)
        || is_hotmail_complaint(mail)
        || is_apple_unsubscribe(mail)
        || mail
            .sections
            .iter()
            .any(|s| s.kind == SectionKind::Text && FEEDBACK_TYPE_LINE.is_match(&s.text))
            && mail.content_type.starts_with("multipart/report")
}

fn is_hotmail_complaint(mail: &Mail) -> bool {
    let from = mail.header("from").unwrap_or_default().to_ascii_lowercase();
    from.contains("staff@hotmail.com")
        || mail.sections.iter().any(|s| {
            s.kind == SectionKind::Returned && s.text.contains("X-HmXmrOriginalRecipient:")
        })
}

fn is_apple_unsubscribe(mail: &Mail) -> bool {
    mail.header("x-apple-unsubscribe")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Whether a feedback report of `feedback_type` is a complaint: the
/// recipient wants no more of this mail. Every type is but a report that
/// a message is not spam (RFC 6430) and an authentication failure report
/// (RFC 6591), which is about the sender's DKIM or SPF.
pub fn is_complaint_type(feedback_type: &str) -> bool {
    !["not-spam", "auth-failure"]
        .iter()
        .any(|t| feedback_type.eq_ignore_ascii_case(t))
}

pub(super) fn complaint_records(mail: &Mail, context: &Context) -> Vec<Record> {
    let report_text = {
        let report = mail.text_of(SectionKind::FeedbackReport);
        if report.trim().is_empty() {
            context.own_text.clone()
        } else {
            report
        }
    };
    let fields = dsn::fields(&report_text);
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let feedback_type = field("feedback-type")
        .map(|t| t.to_ascii_lowercase())
        .unwrap_or_else(|| {
            if is_apple_unsubscribe(mail) {
                "opt-out"
            } else {
                "abuse"
            }
            .to_string()
        });
    let mut recipients: Vec<String> = fields
        .iter()
        .filter(|(n, _)| n == "original-rcpt-to" || n == "removal-recipient")
        .map(|(_, v)| dsn::clean_address(v))
        .collect();
    // Both fields often name the same address: one complaint, not two.
    let mut seen = Vec::new();
    recipients.retain(|r| {
        let key = r.to_ascii_lowercase();
        let new = !seen.contains(&key);
        seen.push(key);
        new
    });
    if recipients.is_empty() {
        recipients = complaint_fallback_recipients(mail, context);
    }
    if recipients.is_empty() {
        recipients.push(String::new());
    }
    let diagnostic = [
        field("user-agent"),
        field("source-ip").map(|ip| format!("source-ip {ip}")),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join("; ");
    recipients
        .into_iter()
        .map(|address| {
            let mut record = Record::new(Kind::Complaint);
            record.recipient = (!address.is_empty()).then_some(address);
            record.action = Some(feedback_type.clone());
            record.diagnostic = (!diagnostic.is_empty()).then(|| diagnostic.clone());
            record.remote_mta = field("reporting-mta").map(|m| dsn::strip_type(&m));
            record
        })
        .collect()
}

/// Hotmail names the complainer in X-HmXmrOriginalRecipient; others leave
/// the To of the returned message; Apple's notice comes from the user.
fn complaint_fallback_recipients(mail: &Mail, context: &Context) -> Vec<String> {
    if let Some(original) = context.returned_header("x-hmxmroriginalrecipient") {
        return vec![dsn::clean_address(original)];
    }
    if let Some(to) = context.returned_header("to") {
        let found = text::addresses(to);
        if !found.is_empty() {
            return found;
        }
    }
    if is_apple_unsubscribe(mail) {
        return mail.header("from").map(text::addresses).unwrap_or_default();
    }
    Vec::new()
}
