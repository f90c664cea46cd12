//! The syntax of a mailbox, `local-part@domain` (RFC 5321 section 4.1.2,
//! with RFC 6531's UTF-8 where the client asked for SMTPUTF8), checked in
//! one place for every front door: SMTP's MAIL and RCPT, the HTTP API and
//! AMQP. An address a relay would refuse for its syntax is refused at
//! injection, where the application learns of it at once, instead of
//! coming back later as a bounce.

use std::net::{Ipv4Addr, Ipv6Addr};

/// RFC 5321 section 4.5.3.1: an address (forward-path) of at most 256
/// octets with its brackets.
pub const MAX_ADDRESS: usize = 254;
/// RFC 5321 section 4.5.3.1.1.
pub const MAX_LOCAL_PART: usize = 64;

/// Checks `address`; the error says what is wrong, in words a sender
/// can act on. `utf8`: non-ASCII is allowed (SMTPUTF8).
pub fn check(address: &str, utf8: bool) -> Result<(), &'static str> {
    if address.len() > MAX_ADDRESS {
        return Err("longer than 254 characters");
    }
    let (local, domain) = address
        .rsplit_once('@')
        .ok_or("an address needs local-part@domain")?;
    if local.is_empty() || domain.is_empty() {
        return Err("an address needs local-part@domain");
    }
    if !utf8 && !address.is_ascii() {
        return Err("non-ASCII needs SMTPUTF8");
    }
    check_local_part(local)?;
    if !valid_domain(domain) {
        return Err("the domain is not a valid host name or address literal");
    }
    Ok(())
}

/// Whether `address` is a mailbox, UTF-8 allowed.
pub fn is_mailbox(address: &str) -> bool {
    check(address, true).is_ok()
}

/// A dot-string (atoms joined by single dots) or a quoted string.
fn check_local_part(local: &str) -> Result<(), &'static str> {
    if let Some(quoted) = local.strip_prefix('"') {
        let inner = quoted
            .strip_suffix('"')
            .ok_or("a quoted local part must end with its quote")?;
        return check_quoted(inner);
    }
    if local.len() > MAX_LOCAL_PART {
        return Err("local part longer than 64 characters");
    }
    if local.chars().any(|c| c.is_control() || c == ' ') {
        return Err("spaces and control characters are not allowed");
    }
    if local.split('.').any(str::is_empty) {
        return Err("a dot may not start or end the local part, or follow another dot");
    }
    if !local.chars().all(|c| c == '.' || is_atext(c)) {
        return Err("the local part has a character only a quoted local part may have");
    }
    Ok(())
}

/// The inside of a quoted local part: printable characters, with `"` and
/// `\` escaped by a backslash.
fn check_quoted(inner: &str) -> Result<(), &'static str> {
    if inner.len() + 2 > MAX_LOCAL_PART {
        return Err("local part longer than 64 characters");
    }
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        let ok = match c {
            '\\' => chars
                .next()
                .is_some_and(|e| e == ' ' || e.is_ascii_graphic()),
            '"' => false,
            c if c.is_ascii() => c == ' ' || c.is_ascii_graphic(),
            c => !c.is_control(),
        };
        if !ok {
            return Err("a quoted local part has an unescaped quote or a control character");
        }
    }
    Ok(())
}

/// RFC 5322 atext, and with SMTPUTF8 any non-ASCII character but controls.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_control())
}

/// A host name (letters, digits, `-` and `_`, no empty label, 63 per
/// label) or an address literal.
pub fn valid_domain(domain: &str) -> bool {
    if let Some(literal) = domain.strip_prefix('[') {
        return literal.strip_suffix(']').is_some_and(valid_literal);
    }
    domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && label
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
    })
}

/// RFC 5321 section 4.1.3: IPv4, `IPv6:` and an address, or a standard
/// tag, a colon and printable content.
fn valid_literal(literal: &str) -> bool {
    if let Some(v6) = literal
        .strip_prefix("IPv6:")
        .or_else(|| literal.strip_prefix("ipv6:"))
    {
        return v6.parse::<Ipv6Addr>().is_ok();
    }
    if literal.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    match literal.split_once(':') {
        Some((tag, content)) => {
            !tag.is_empty()
                && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !tag.ends_with('-')
                && !content.is_empty()
                && content
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !matches!(b, b'[' | b'\\' | b']'))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_strings_quoted_strings_and_literals_that_relays_take() {
        for good in [
            "b@example.net",
            "first.last+tag@example.net",
            "!#$%&'*+-/=?^_`{|}~@example.net",
            "\"john doe\"@example.net",
            "\"a@b\"@example.net",
            "\"quote\\\"d\"@example.net",
            "user@[192.0.2.1]",
            "user@[IPv6:2001:db8::1]",
            "user@sub_domain.example.net",
        ] {
            assert_eq!(check(good, false), Ok(()), "{good}");
        }
        assert_eq!(check("jörg@exämple.de", true), Ok(()));
    }

    #[test]
    fn what_rfc_5321_does_not_allow_is_refused_with_the_reason() {
        for (bad, why) in [
            ("b@@example.net", "only a quoted local part"),
            (".b@example.net", "a dot may not start"),
            ("b.@example.net", "a dot may not start"),
            ("b..c@example.net", "a dot may not start"),
            ("b(comment)@example.net", "only a quoted local part"),
            ("a,b@example.net", "only a quoted local part"),
            ("user@[300.1.1.1]", "address literal"),
            ("user@[x]", "address literal"),
            ("user@[IPv6:zz::1]", "address literal"),
            ("b@example..net", "address literal"),
            ("\"open@example.net", "end with its quote"),
            ("\"a\"b\"@example.net", "unescaped quote"),
            ("postmaster", "local-part@domain"),
            ("@example.net", "local-part@domain"),
            ("jörg@example.de", "SMTPUTF8"),
        ] {
            let err = check(bad, false).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let long_local = format!("{}@example.net", "a".repeat(65));
        assert!(check(&long_local, false).unwrap_err().contains("64"));
    }
}
