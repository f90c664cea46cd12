//! RFC 3464 delivery-status fields (and the RFC 5965 feedback-report fields,
//! which share the syntax): `Name: value` lines, folded continuation lines,
//! grouped per recipient.
//!
//! Many non-standard bounces (Exchange, qmail-ldap, SES, ...) print the same
//! field names in their text, so the reader accepts them anywhere.

/// Most recipients read from one message: a bounce naming more is abuse or a
/// broken list, and the first ones are enough to act on.
pub(crate) const MAX_RECIPIENTS: usize = 1000;

/// The fields of one recipient in a delivery-status report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DsnRecipient {
    pub final_recipient: Option<String>,
    pub original_recipient: Option<String>,
    pub action: Option<String>,
    pub status: Option<String>,
    pub diagnostic: Option<String>,
    pub remote_mta: Option<String>,
}

impl DsnRecipient {
    /// The address to report: Final-Recipient, else Original-Recipient,
    /// whichever is an Internet address. An X.400 name, a bare local host
    /// name, a pipe or a file is no address to suppress: None then, and
    /// the caller looks elsewhere or reports no recipient.
    pub(crate) fn address(&self) -> Option<&str> {
        [&self.final_recipient, &self.original_recipient]
            .into_iter()
            .filter_map(|a| a.as_deref())
            .find(|a| is_internet_address(a))
    }

    /// Whether the group names a recipient at all (in any form).
    fn names_recipient(&self) -> bool {
        [&self.final_recipient, &self.original_recipient]
            .into_iter()
            .any(|a| a.as_deref().is_some_and(|a| !a.is_empty()))
    }
}

/// `local@domain.tld`: one `@`, a local part that is not a path, a pipe or
/// a source route, a domain of dot-separated labels ending in letters.
/// Internationalized domains count, in Unicode (`例子.example`, `.рф`) or
/// in their ASCII form (`xn--p1ai`).
pub(crate) fn is_internet_address(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && !local.starts_with(['/', '|', '@'])
        && !local.contains(['@', ':', ' ', '<', '>']);
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels
            .iter()
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '-'))
        && labels.last().is_some_and(|tld| {
            (tld.chars().count() >= 2 && tld.chars().all(char::is_alphabetic))
                || tld.to_ascii_lowercase().starts_with("xn--")
        });
    local_ok && domain_ok
}

/// The per-message fields and the recipients of a report.
#[derive(Debug, Clone, Default)]
pub(crate) struct DsnReport {
    pub reporting_mta: Option<String>,
    pub recipients: Vec<DsnRecipient>,
}

/// `Name: value` pairs (name lowercased) with folded lines joined.
pub(crate) fn fields(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut last_was_field = false;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) && last_was_field {
            if let Some((_, value)) = out.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        last_was_field = false;
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty()
            || name.len() > 40
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            continue;
        }
        out.push((name.to_ascii_lowercase(), value.trim().to_string()));
        last_was_field = true;
    }
    out
}

/// Reads the recipients of a delivery-status text.
///
/// RFC 3464 §2.1: the per-message fields come first, then one group of
/// fields per recipient, the groups separated by blank lines, and inside a
/// group the fields in any order. So a paragraph that names a recipient
/// starts a new one, and every field of that paragraph (also those before
/// the recipient line) belongs to it. Only inside a paragraph that names
/// several recipients (text that is not a standard report) does a repeated
/// recipient field start the next one; paragraphs without a recipient
/// field add to the current recipient, as non-standard text spreads one
/// recipient's lines over paragraphs.
pub(crate) fn read_report(text: &str) -> DsnReport {
    let mut report = DsnReport::default();
    let mut current = DsnRecipient::default();
    for paragraph in paragraphs(text) {
        let fields = fields(paragraph);
        let names_recipient = fields.iter().any(|(name, _)| is_recipient_field(name));
        if names_recipient {
            push(&mut report, std::mem::take(&mut current));
        }
        for (name, value) in fields {
            read_field(&mut report, &mut current, &name, value);
        }
    }
    push(&mut report, current);
    report
}

/// The blank-line separated paragraphs of a text (a line of only spaces
/// counts as blank).
fn paragraphs(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let mut end = rest.len();
            let mut next = rest.len();
            let mut offset = 0;
            for line in rest.split_inclusive('\n') {
                if line.trim().is_empty() {
                    end = offset;
                    next = offset + line.len();
                    break;
                }
                offset += line.len();
            }
            let paragraph = &rest[..end];
            rest = &rest[next..];
            if !paragraph.trim().is_empty() {
                return Some(paragraph);
            }
        }
    })
}

fn is_recipient_field(name: &str) -> bool {
    matches!(name, "original-recipient" | "final-recipient")
}

/// One field into the report or the current recipient. A recipient field
/// seen twice starts the next recipient (non-standard text lists several
/// recipients in one paragraph, Original- and Final-Recipient in either
/// order).
fn read_field(report: &mut DsnReport, current: &mut DsnRecipient, name: &str, value: String) {
    match name {
        "reporting-mta" => report.reporting_mta = Some(strip_type(&value)),
        "original-recipient" => {
            if current.original_recipient.is_some() {
                push(report, std::mem::take(current));
            }
            current.original_recipient = Some(clean_address(&value));
        }
        "final-recipient" => {
            if current.final_recipient.is_some() {
                push(report, std::mem::take(current));
            }
            current.final_recipient = Some(clean_address(&value));
        }
        "action" => current.action = Some(value.to_ascii_lowercase()),
        "status" => current.status = Some(value),
        "diagnostic-code" => current.diagnostic = Some(strip_type(&value)),
        "remote-mta" => current.remote_mta = Some(strip_type(&value)),
        _ => {}
    }
}

fn push(report: &mut DsnReport, recipient: DsnRecipient) {
    if recipient.names_recipient() && report.recipients.len() < MAX_RECIPIENTS {
        report.recipients.push(recipient);
    }
}

/// "rfc822; <User@Example.com>" -> "User@Example.com"; Exchange's
/// "SMTP:user@example.com" and "smtp=user@example.com" lose their prefix.
pub(crate) fn clean_address(value: &str) -> String {
    let value = strip_type(value);
    let value = value.trim();
    // A display name before the address: "Name <user@example.com>".
    let value = match (value.find('<'), value.rfind('>')) {
        (Some(open), Some(close))
            if open > 0 && close > open && value[open..close].contains('@') =>
        {
            &value[open + 1..close]
        }
        _ => value,
    };
    let value = strip_exchange_prefix(value.trim_start_matches('<'));
    let value = value.split(['>', ' ', '\t', ',']).next().unwrap_or("");
    // Quoted local parts ("a..b"@example.com) are reported unquoted.
    value
        .replace('"', "")
        .trim_matches(|c| c == '\'' || c == '.')
        .to_string()
}

/// Exchange names addresses "SMTP:user@example.com" or "smtp=user@...".
pub(crate) fn strip_exchange_prefix(address: &str) -> &str {
    for prefix in ["smtp:", "smtp="] {
        if let Some(head) = address.get(..prefix.len())
            && head.eq_ignore_ascii_case(prefix)
        {
            return address[prefix.len()..].trim_start_matches('<');
        }
    }
    address
}

/// Drops the "rfc822;", "smtp;", "dns;" type prefix of a DSN value.
pub(crate) fn strip_type(value: &str) -> String {
    match value.split_once(';') {
        Some((kind, rest)) if kind.len() <= 12 && !kind.contains(' ') && !kind.contains('@') => {
            rest.trim().to_string()
        }
        _ => value.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_internet_addresses_are_reported() {
        for good in [
            "a@example.org",
            "first.last+tag@mx.example.co.uk",
            "x=y@a-b.example",
            "用户@例子.example",
            "ivan@пример.рф",
            "ivan@xn--e1afmkfd.xn--p1ai",
        ] {
            assert!(is_internet_address(good), "{good}");
        }
        for bad in [
            "/S=kijitora/ADMD=ATT/C=US/@x400.example.net",
            "kijitora@server",
            "@mx.example.org",
            "@smtp.example.net:kijitora@server",
            "|/usr/local/bin/filter",
            "/var/mail/kijitora",
            "a@192.0.2.1",
            "",
        ] {
            assert!(!is_internet_address(bad), "{bad}");
        }
        assert_eq!(
            clean_address("rfc822; SMTP:Bob@Example.org"),
            "Bob@Example.org"
        );
        assert_eq!(clean_address("smtp=<bob@example.org>"), "bob@example.org");
        // A display name, spaces and all, before the address.
        assert_eq!(
            clean_address("rfc822; undisclosed recipient <Bob@Example.org>"),
            "Bob@Example.org"
        );
        // Brackets out of order are no display name (and no panic).
        assert_eq!(clean_address("x>y <bob@example.org"), "x");
    }

    #[test]
    fn reads_two_recipients_with_folded_diagnostic() {
        let text = "Reporting-MTA: dns; mx.example.com\n\nOriginal-Recipient: rfc822;a@example.org\nFinal-Recipient: rfc822; <A@Example.org>\nAction: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 user\n  unknown\nRemote-MTA: dns; mx.example.org\n\nFinal-Recipient: rfc822; b@example.org\nAction: delayed\nStatus: 4.2.2\n";
        let report = read_report(text);
        assert_eq!(report.reporting_mta.as_deref(), Some("mx.example.com"));
        assert_eq!(report.recipients.len(), 2);
        let first = &report.recipients[0];
        assert_eq!(first.address(), Some("A@Example.org"));
        assert_eq!(first.diagnostic.as_deref(), Some("550 5.1.1 user unknown"));
        assert_eq!(first.remote_mta.as_deref(), Some("mx.example.org"));
        assert_eq!(report.recipients[1].action.as_deref(), Some("delayed"));
    }
}
