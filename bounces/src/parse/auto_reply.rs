//! Auto-replies (RFC 3834 and the usual vacation notices): not bounces,
//! reported so that they are counted and left alone.

use std::sync::LazyLock;

use regex::Regex;

use super::{Kind, Record};
use crate::mail::Mail;
use crate::text::{self, MAX_DIAGNOSTIC_CHARS};

static AUTO_REPLY_SUBJECT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)auto(matic)?[ -]?(reply|response|antwort|respons)|out of (the )?office|vacation|",
        r"abwesenheit|absence|away from|on leave|fuera de la oficina|r[ée]ponse automatique|",
        r"risposta automatica|automatisch|away until|holiday|自動応答|不在|自动回复|",
        r"respuesta autom[aá]tica|resposta autom[aá]tica|odpowied[zź] automatyczna|",
        r"автоматический ответ|автоответ|autosvar|otomatik yan[ıi]t|automatick[aá] odpov[eě][dď]|",
        r"automatisch antwoord|autom[aá]tikus v[aá]lasz"
    ))
    .unwrap_or_else(|e| panic!("{e}"))
});

/// An auto-reply answers for a person's mailbox; a notice from the mail
/// system's own (postmaster, mailer-daemon) that is no bounce we can read
/// names nobody, so it is no auto-reply either.
pub(super) fn is_auto_reply(mail: &Mail) -> bool {
    let from = mail.header("from").map(text::addresses).unwrap_or_default();
    if from.first().is_some_and(|a| text::is_service_mailbox(a)) {
        return false;
    }
    let auto_submitted = mail
        .header("auto-submitted")
        .is_some_and(|v| !v.trim().eq_ignore_ascii_case("no"));
    let marked = [
        "x-autoreply",
        "x-autorespond",
        "x-autoresponse",
        "x-auto-response",
    ]
    .iter()
    .any(|name| mail.header(name).is_some());
    let precedence = mail
        .header("precedence")
        .is_some_and(|v| v.eq_ignore_ascii_case("auto_reply"));
    auto_submitted || marked || precedence || AUTO_REPLY_SUBJECT.is_match(&mail.subject)
}

pub(super) fn auto_reply_record(mail: &Mail) -> Record {
    let mut record = Record::new(Kind::AutoReply);
    record.recipient = mail
        .header("from")
        .map(text::addresses)
        .and_then(|found| found.into_iter().next());
    record.diagnostic =
        Some(text::truncate(&mail.subject, MAX_DIAGNOSTIC_CHARS)).filter(|s| !s.is_empty());
    record
}
