//! Heuristics for bounces that are not (only) RFC 3464: qmail, Exim, old
//! Postfix and Sendmail texts, Exchange, provider notices. They name the
//! failed recipient in the text and put the remote server's reply near it.
//!
//! The approach is Sisimai's: cut off the returned message, find the
//! addresses in what remains (skipping senders, postmasters and message ids),
//! and take the lines after each address as its diagnostic.

use std::sync::LazyLock;

use regex::Regex;

/// Lines of text kept after an address as its diagnostic.
const MAX_DIAGNOSTIC_LINES: usize = 8;
/// Characters kept in one diagnostic.
pub(crate) const MAX_DIAGNOSTIC_CHARS: usize = 1000;
/// Most candidate recipients taken from free text.
const MAX_TEXT_RECIPIENTS: usize = 100;
/// Statuses or reply codes looked at after a success one, looking for the
/// failure (a transcript holds a few dozen at most).
const MAX_STATUSES_SCANNED: usize = 100;

static ADDRESS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+'=!#$&*/?^`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
        .unwrap_or_else(|e| panic!("address regex: {e}"))
});

/// Lines that start the returned message in a plain-text bounce.
static RETURNED_MARKER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?im)^[ \t]*(",
        r"[-=*_#]{3,}.*(copy of|original message|returned message|unsent message|message follows|",
        r"undelivered message|original headers|message headers|rfc822|headers of|returned mail|",
        r"original mail|message text follows|message header)",
        r"|(-{2,} ?)?below this line is a copy",
        r"|return-path:[ \t]*<",
        r"|received:[ \t]+from[ \t]",
        r"|content-type:[ \t]*(message/rfc822|text/rfc822-headers)",
        r")"
    ))
    .unwrap_or_else(|e| panic!("marker regex: {e}"))
});

/// Lines where an address is a sender, a message id or a server, not a
/// failed recipient.
static NOT_RECIPIENT_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)(^|>>> )[ \t>*-]*(from|sender|reply-to|return-path|received|message-id|references|",
        r"in-reply-to|x-postfix-sender|envelope-from|original-mail-from|mail from|arrival-date|",
        r"reporting-mta|x-original-sender|errors-to|delivered-to|dkim-signature|list-|",
        r"authentication-results|x-sender|resent-from)|message-id|msgid|smtp\.mailfrom|header\.from|",
        r"sent by|sender address|by mx|envelope sender|authenticated sender|expanded from"
    ))
    .unwrap_or_else(|e| panic!("line regex: {e}"))
});

static ENHANCED_STATUS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:^|[^\d.])([245]\.\d{1,3}\.\d{1,3})(?:[^\d.]|\.(?:\D|$)|$)")
        .unwrap_or_else(|e| panic!("status regex: {e}"))
});

static REPLY_CODE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:^|[^\d.#:/-])([245][0-5]\d)(?:[ -]|$)")
        .unwrap_or_else(|e| panic!("code regex: {e}"))
});

/// Splits a plain-text bounce into its own text and the returned message.
pub(crate) fn split_returned(text: &str) -> (&str, &str) {
    match RETURNED_MARKER.find(text) {
        Some(found) => (&text[..found.start()], &text[found.start()..]),
        None => (text, ""),
    }
}

/// A recipient named in free text, with the lines that explain it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TextRecipient {
    pub address: String,
    pub diagnostic: String,
}

/// The failed recipients named in a bounce's own text. `excluded` holds
/// addresses known to be senders (lowercase).
pub(crate) fn recipients_in_text(text: &str, excluded: &[String]) -> Vec<TextRecipient> {
    let lines: Vec<&str> = text.lines().collect();
    let found = recipients_in_lines(&lines, excluded, false);
    if found.is_empty() {
        return recipients_in_lines(&lines, excluded, true);
    }
    found
}

/// Lines that quote the returned message's addressees in a summary of it
/// ("Your message / To: list@example.org / Subject: ... / did not reach the
/// following recipient(s): ..."): the To of a message sent to a list or to
/// several people names more than the one that failed.
static ADDRESSEE_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^[ \t>*-]*(to|cc|bcc|x-original-to)[ \t]*:")
        .unwrap_or_else(|e| panic!("addressee regex: {e}"))
});

/// The addresses of `lines` that may be failed recipients; addressee
/// lines only `with_addressees` (when nothing else names one).
fn recipients_in_lines(
    lines: &[&str],
    excluded: &[String],
    with_addressees: bool,
) -> Vec<TextRecipient> {
    let mut found: Vec<TextRecipient> = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        if NOT_RECIPIENT_LINE.is_match(line) || (!with_addressees && ADDRESSEE_LINE.is_match(line))
        {
            continue;
        }
        for found_at in ADDRESS.find_iter(line) {
            let address = found_at.as_str().trim_matches(['.', '\'', '`', '=']);
            let address = crate::dsn::strip_exchange_prefix(address);
            let before = text_before(lines, index, found_at.start());
            if !is_recipient_candidate(address, excluded)
                || is_offered_in_prose(&before)
                || SENDER_WORDS.is_match(&before)
            {
                continue;
            }
            let context = context_after(lines, index, address);
            if let Some(known) = found
                .iter_mut()
                .find(|r| r.address.eq_ignore_ascii_case(address))
            {
                append_limited(&mut known.diagnostic, &context);
            } else if found.len() < MAX_TEXT_RECIPIENTS {
                found.push(TextRecipient {
                    address: address.to_string(),
                    diagnostic: truncate(&context, MAX_DIAGNOSTIC_CHARS),
                });
            }
        }
    }
    found
}

/// The lines explaining one known address (for a DSN without a
/// Diagnostic-Code), or None when the text does not name it.
pub(crate) fn diagnostic_for(text: &str, address: &str) -> Option<String> {
    if address.is_empty() {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let lower = address.to_ascii_lowercase();
    let mut diagnostic = String::new();
    for (index, line) in lines.iter().enumerate() {
        if line.to_ascii_lowercase().contains(&lower) && !NOT_RECIPIENT_LINE.is_match(line) {
            let found = line.to_ascii_lowercase().find(&lower).unwrap_or(0);
            let spelled = line.get(found..found + address.len()).unwrap_or(address);
            append_limited(&mut diagnostic, &context_after(&lines, index, spelled));
        }
    }
    Some(diagnostic.trim().to_string()).filter(|d| !d.is_empty())
}

/// Words that offer an address rather than report one: "try
/// name@example.org instead", "contact helpdesk@example.org", "his new
/// address is ...", "please write to ...". Looked for just before the
/// address on its line, or at the end of the line before when the address
/// opens its line.
static OFFERING_WORDS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)\b(try|contact|contacting|write to|writing to|reach|reached at|",
        r"send (it |them |your message |your mail )?to|redirect(ed)? to|resend to|",
        r"instead|replaced by|new (e-?mail )?address( is)?|now at|moved to|changed to|alternat\w*|",
        r"please (send|use|mail|e-?mail|write))\b",
        r"[^@\w]{0,4}(\w+[^@\w]{1,4}){0,3}[<(\x22']?$"
    ))
    .unwrap_or_else(|e| panic!("offering regex: {e}"))
});

/// Words that name the address after them as the sender: "not accepting
/// mail from list@example.org", "messages from ...".
static SENDER_WORDS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(mail|messages?|e-?mails?|sent|coming|originating) from:?\s*[<(\x22']?$")
        .unwrap_or_else(|e| panic!("sender words regex: {e}"))
});

/// What precedes an address at `at` on line `index`: the start of its line,
/// and when that is blank, the previous line too.
fn text_before(lines: &[&str], index: usize, at: usize) -> String {
    let own = lines[index].get(..at).unwrap_or_default();
    match index.checked_sub(1).map(|i| lines[i]) {
        Some(previous) if own.trim().is_empty() => format!("{previous} {own}"),
        _ => own.to_owned(),
    }
}

fn is_offered_in_prose(before_address: &str) -> bool {
    let start = before_address
        .char_indices()
        .rev()
        .nth(60)
        .map_or(0, |(i, _)| i);
    OFFERING_WORDS.is_match(&before_address[start..])
}

fn is_recipient_candidate(address: &str, excluded: &[String]) -> bool {
    let lower = address.to_ascii_lowercase();
    let local = lower.split('@').next().unwrap_or("");
    // URLs and mailto links are not recipients.
    let in_url = local.contains('/') || local.contains('?');
    !is_service_mailbox(address) && !in_url && !excluded.contains(&lower) && !local.is_empty()
}

/// The mailboxes of a mail system rather than of a person.
pub(crate) fn is_service_mailbox(address: &str) -> bool {
    let local = address.split('@').next().unwrap_or("").to_ascii_lowercase();
    matches!(
        local.as_str(),
        "postmaster" | "mailer-daemon" | "mailer_daemon" | "mailerdaemon" | "abuse" | "root"
    )
}

/// The address's line (without the address) and the lines after it: the
/// paragraph, or the next one too while no reply code has been seen (many
/// bounces put the server's answer one blank line below the address).
fn context_after(lines: &[&str], index: usize, address: &str) -> String {
    let mut context = lines
        .get(index)
        .map(|l| l.replace(address, " "))
        .unwrap_or_default();
    let mut blank_run = 0;
    for line in lines.iter().skip(index + 1).take(MAX_DIAGNOSTIC_LINES) {
        if line.trim().is_empty() {
            blank_run += 1;
            if blank_run > 1 || has_reply(&context) {
                break;
            }
            continue;
        }
        blank_run = 0;
        if starts_with_other_address(line, address) {
            break;
        }
        context.push(' ');
        context.push_str(line.trim());
    }
    squeeze(&context)
}

fn has_reply(text: &str) -> bool {
    enhanced_status(text).is_some() || reply_code(text).is_some()
}

/// A line that opens another recipient's paragraph.
fn starts_with_other_address(line: &str, address: &str) -> bool {
    let trimmed = line.trim_start().trim_start_matches(['<', '"']);
    ADDRESS
        .find(trimmed)
        .is_some_and(|m| m.start() == 0 && !m.as_str().eq_ignore_ascii_case(address))
}

fn append_limited(diagnostic: &mut String, more: &str) {
    if diagnostic.len() < MAX_DIAGNOSTIC_CHARS && !diagnostic.contains(more) {
        diagnostic.push(' ');
        diagnostic.push_str(more);
        *diagnostic = truncate(diagnostic, MAX_DIAGNOSTIC_CHARS);
    }
}

/// Whitespace runs become one space; "<" and ">" left around removed
/// addresses go too.
pub(crate) fn squeeze(text: &str) -> String {
    text.replace("< >", " ")
        .replace("<>", " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// The first failure status (4.x.x, 5.x.x) of RFC 3463 in a text, else the
/// first status ("2.1.5"): a session transcript shows the successes before
/// the failure that matters.
pub(crate) fn enhanced_status(text: &str) -> Option<String> {
    first_failure(ENHANCED_STATUS.captures_iter(text).filter_map(|c| c.get(1)))
}

/// The first failure reply code (4xx, 5xx) in a text, else the first code.
pub(crate) fn reply_code(text: &str) -> Option<u16> {
    first_failure(REPLY_CODE.captures_iter(text).filter_map(|c| c.get(1)))
        .and_then(|code| code.parse().ok())
}

/// Failures start with 4 or 5; the first one wins, else the first of all.
fn first_failure<'t>(mut found: impl Iterator<Item = regex::Match<'t>>) -> Option<String> {
    let first = found.next()?;
    if first.as_str().starts_with(['4', '5']) {
        return Some(first.as_str().to_string());
    }
    let failure = found
        .take(MAX_STATUSES_SCANNED)
        .find(|m| m.as_str().starts_with(['4', '5']));
    Some(failure.unwrap_or(first).as_str().to_string())
}

/// Gmail wraps the remote server's reply in its own explanation ("Google
/// tried to deliver your message, but it was rejected by the recipient
/// domain ... The error that the other server returned was: 500 ..."); the
/// reply is what says why.
pub(crate) fn remote_reply(diagnostic: &str) -> &str {
    const GMAIL_WRAPPER: &str = "the error that the other server returned was:";
    match diagnostic.to_ascii_lowercase().find(GMAIL_WRAPPER) {
        Some(at) => diagnostic[at + GMAIL_WRAPPER.len()..].trim(),
        None => diagnostic,
    }
}

/// Most lines of a multi-line reply followed in a session transcript.
const MAX_REPLY_LINES: usize = 20;

/// Sendmail puts only the first line of a multi-line reply ("552-5.7.0 This
/// message was blocked because its content presents a potential") in the
/// DSN; the transcript in the text has the rest ("<<< 552-5.7.0 security
/// issue ..."). Returns the whole reply when found, else the diagnostic.
pub(crate) fn complete_multiline_reply(diagnostic: &str, text: &str) -> String {
    let first = squeeze(diagnostic);
    let Some(code) = first
        .get(..4)
        .filter(|head| head.ends_with('-') && head[..3].bytes().all(|b| b.is_ascii_digit()))
        .map(|head| head[..3].to_string())
    else {
        return diagnostic.to_string();
    };
    let transcript_line = |line: &str| squeeze(line.trim().trim_start_matches("<<<"));
    let mut lines = text.lines().map(transcript_line);
    if !lines.any(|line| line == first) {
        return diagnostic.to_string();
    }
    let mut whole = first;
    for line in lines.take(MAX_REPLY_LINES) {
        let Some(rest) = line.strip_prefix(code.as_str()) else {
            break;
        };
        whole.push(' ');
        whole.push_str(&line);
        if !rest.starts_with('-') {
            break;
        }
    }
    whole
}

/// Addresses at a bare local host name ("<kim@mailhost>"), as (local part,
/// host): a recipient named before the domain was added.
static LOCAL_HOST_ADDRESS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?:^|[\s<"'(])([A-Za-z0-9._%+=-]+)@([A-Za-z0-9-]+)(?:$|[\s>"'),:;])"#)
        .unwrap_or_else(|e| panic!("local host regex: {e}"))
});

/// Every address at a bare local host name in a text (see above).
pub(crate) fn local_host_addresses(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|line| !NOT_RECIPIENT_LINE.is_match(line))
        .flat_map(|line| LOCAL_HOST_ADDRESS.captures_iter(line))
        .map(|c| (c[1].to_string(), c[2].to_string()))
        .filter(|(local, _)| !is_service_mailbox(local))
        .take(MAX_TEXT_RECIPIENTS)
        .collect()
}

/// Every address in a text, in order.
pub(crate) fn addresses(text: &str) -> Vec<String> {
    ADDRESS
        .find_iter(text)
        .map(|m| m.as_str().trim_matches(['.', '\'']).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qmail_style_recipient_and_reply() {
        let text = "Hi. This is the qmail-send program at mx.example.jp.\n\n<kijitora@example.org>:\n192.0.2.1 does not like recipient.\nRemote host said: 550 5.1.1 <kijitora@example.org>... User Unknown\nGiving up on 192.0.2.1.\n\n--- Below this line is a copy of the message.\n\nReturn-Path: <sender@example.jp>\nTo: kijitora@example.org\n";
        let (own, returned) = split_returned(text);
        assert!(returned.starts_with("--- Below"));
        let found = recipients_in_text(own, &[]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].address, "kijitora@example.org");
        assert_eq!(
            enhanced_status(&found[0].diagnostic).as_deref(),
            Some("5.1.1")
        );
        assert_eq!(reply_code(&found[0].diagnostic), Some(550));
    }

    #[test]
    fn ip_addresses_are_not_statuses() {
        assert_eq!(
            enhanced_status("host 192.0.2.1 said 4.2.2 full"),
            Some("4.2.2".into())
        );
        assert_eq!(enhanced_status("host 192.0.2.1 said"), None);
        assert_eq!(
            reply_code("mx1.example.com [192.0.2.1]: 451 try later"),
            Some(451)
        );
    }

    #[test]
    fn a_transcript_gives_its_failure_not_its_successes() {
        let transcript = "In: RCPT TO:<a@example.org> Out: 250 2.1.5 Ok In: DATA Out: 354 End data Out: 451 4.3.0 Error: queue file write error Out: 221 2.0.0 Bye";
        assert_eq!(enhanced_status(transcript).as_deref(), Some("4.3.0"));
        assert_eq!(reply_code(transcript), Some(451));
        assert_eq!(enhanced_status("250 2.1.5 Ok").as_deref(), Some("2.1.5"));
    }

    #[test]
    fn gmail_wrapper_gives_way_to_the_remote_reply() {
        let gmail = "Technical details of permanent failure: Google tried to deliver your message, but it was rejected by the recipient domain. The error that the other server returned was: 500 Remote server does not support TLS (state 6).";
        assert_eq!(
            remote_reply(gmail),
            "500 Remote server does not support TLS (state 6)."
        );
        assert_eq!(
            remote_reply("550 5.1.1 user unknown"),
            "550 5.1.1 user unknown"
        );
    }

    #[test]
    fn multiline_reply_is_completed_from_the_transcript() {
        let first = "552-5.7.0 This message was blocked because its content presents a potential";
        let text = "... while talking to aspmx.l.google.com.:\n>>> DATA\n<<< 552-5.7.0 This message was blocked because its content presents a potential\n<<< 552-5.7.0 security issue. Please visit\n<<< 552 5.7.0 content guidelines. - gsmtp\n554 5.0.0 Service unavailable\n";
        assert_eq!(
            complete_multiline_reply(first, text),
            format!(
                "{first} 552-5.7.0 security issue. Please visit 552 5.7.0 content guidelines. - gsmtp"
            )
        );
        assert_eq!(complete_multiline_reply(first, "no transcript"), first);
        assert_eq!(
            complete_multiline_reply("550 5.1.1 unknown", text),
            "550 5.1.1 unknown"
        );
    }
}
