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
pub const MAX_DIAGNOSTIC_CHARS: usize = 1000;
/// Most candidate recipients taken from free text.
const MAX_TEXT_RECIPIENTS: usize = 100;

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
        r"(?i)(^|>>> )[ \t]*(from|sender|reply-to|return-path|received|message-id|references|",
        r"in-reply-to|x-postfix-sender|envelope-from|original-mail-from|mail from|arrival-date|",
        r"reporting-mta|x-original-sender|errors-to|delivered-to|dkim-signature|list-|",
        r"authentication-results|x-sender|resent-from)|message-id|msgid|smtp\.mailfrom|header\.from|",
        r"sent by|sender address|by mx|envelope sender"
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
pub fn split_returned(text: &str) -> (&str, &str) {
    match RETURNED_MARKER.find(text) {
        Some(found) => (&text[..found.start()], &text[found.start()..]),
        None => (text, ""),
    }
}

/// A recipient named in free text, with the lines that explain it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRecipient {
    pub address: String,
    pub diagnostic: String,
}

/// The failed recipients named in a bounce's own text. `excluded` holds
/// addresses known to be senders (lowercase).
pub fn recipients_in_text(text: &str, excluded: &[String]) -> Vec<TextRecipient> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found: Vec<TextRecipient> = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        if NOT_RECIPIENT_LINE.is_match(line) {
            continue;
        }
        for address in ADDRESS.find_iter(line) {
            let address = address.as_str().trim_matches(['.', '\'', '`', '=']);
            if !is_recipient_candidate(address, excluded) {
                continue;
            }
            let context = context_after(&lines, index, address);
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
pub fn diagnostic_for(text: &str, address: &str) -> Option<String> {
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

fn is_recipient_candidate(address: &str, excluded: &[String]) -> bool {
    let lower = address.to_ascii_lowercase();
    let local = lower.split('@').next().unwrap_or("");
    let service_mailbox = matches!(
        local,
        "postmaster" | "mailer-daemon" | "mailer_daemon" | "mailerdaemon" | "abuse" | "root"
    );
    // URLs and mailto links are not recipients.
    let in_url = local.contains('/') || local.contains('?');
    !service_mailbox && !in_url && !excluded.contains(&lower) && !local.is_empty()
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
pub fn squeeze(text: &str) -> String {
    text.replace("< >", " ")
        .replace("<>", " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// The first RFC 3463 status ("5.1.1") in a text.
pub fn enhanced_status(text: &str) -> Option<String> {
    ENHANCED_STATUS
        .captures(text)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().to_string())
}

/// The first SMTP reply code in a text.
pub fn reply_code(text: &str) -> Option<u16> {
    REPLY_CODE
        .captures(text)
        .and_then(|c| c.get(1))
        .and_then(|m| m.as_str().parse().ok())
}

/// Every address in a text, in order.
pub fn addresses(text: &str) -> Vec<String> {
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
}
