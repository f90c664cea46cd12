//! The JSON an application publishes to an `[[amqp_in]]` queue, and its
//! parser. The same fields the SMTP path takes:
//!
//! ```json
//! {"user": "alice", "channel": "marketing", "campaign": "spring-sale",
//!  "mail_from": "news@example.com", "recipients": ["bob@example.net"],
//!  "message": "From: news@example.com\r\nTo: bob@example.net\r\nSubject: Hi\r\n\r\nHello\r\n"}
//! ```
//!
//! `user` is the tenant (as an SMTP AUTH user; the AMQP login is the
//! authentication); without it, `smtp_in.default_user`. `channel` and
//! `campaign` are optional and win over `X-Channel` / `X-Campaign-Id` in the
//! message. `message` is the RFC 5322 text (bare LF line ends become CRLF);
//! `message_base64` carries 8-bit or binary content instead. Unknown fields
//! are refused, so a typo is never silently ignored.

use serde::Deserialize;

use crate::admit::MAX_CONTROL_VALUE;
use crate::values::Reply;
use crate::values::mailbox::is_mailbox;

/// What the SMTP listener would bound: the same limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_size: u64,
    pub max_recipients: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    user: Option<String>,
    channel: Option<String>,
    campaign: Option<String>,
    mail_from: String,
    recipients: Vec<String>,
    message: Option<String>,
    message_base64: Option<String>,
}

/// A parsed injection: an envelope and the message bytes as DATA holds them.
#[derive(Debug)]
pub struct Injection {
    pub user: Option<String>,
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub data: Vec<u8>,
}

/// The largest AMQP body looked at: the message may be escaped or base64
/// encoded inside the JSON.
pub fn max_body(limits: &Limits) -> usize {
    (limits.max_message_size as usize)
        .saturating_mul(4)
        .saturating_add(64 * 1024)
}

/// Parses and checks a delivery's body; a refusal says what to fix.
pub fn parse(body: &[u8], limits: &Limits) -> Result<Injection, Reply> {
    if body.len() > max_body(limits) {
        return Err(too_big(limits));
    }
    let wire: Wire = serde_json::from_slice(body).map_err(|e| {
        malformed(format!(
            "the body is not a sendengine injection ({e}); see README, \"RabbitMQ injection\""
        ))
    })?;
    let raw = match (wire.message, wire.message_base64) {
        (Some(text), None) => crlf(text.into_bytes()),
        (None, Some(b64)) => {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| malformed(format!("message_base64 is not base64: {e}")))?;
            crlf(bytes)
        }
        _ => {
            return Err(malformed(
                "give exactly one of `message` and `message_base64`".into(),
            ));
        }
    };
    if raw.len() as u64 > limits.max_message_size {
        return Err(too_big(limits));
    }
    check_envelope(&wire.mail_from, &wire.recipients, limits)?;
    let mut control = Vec::new();
    for (name, value) in [
        ("X-Channel", &wire.channel),
        ("X-Campaign-Id", &wire.campaign),
    ] {
        if let Some(value) = value {
            if value.len() > MAX_CONTROL_VALUE || value.chars().any(|c| c.is_control()) {
                return Err(malformed(format!(
                    "{name} value {value:?} is longer than {MAX_CONTROL_VALUE} bytes or has control characters"
                )));
            }
            control.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
    }
    Ok(Injection {
        user: wire.user.filter(|u| !u.is_empty()),
        mail_from: wire.mail_from,
        recipients: wire.recipients,
        data: with_control_headers(raw, &control),
    })
}

fn check_envelope(mail_from: &str, recipients: &[String], limits: &Limits) -> Result<(), Reply> {
    if !mail_from.is_empty() && !is_mailbox(mail_from) {
        return Err(malformed(format!(
            "mail_from {mail_from:?} is not an address: write local@domain, or \"\" for a null sender"
        )));
    }
    if recipients.is_empty() {
        return Err(malformed("recipients is empty: give at least one".into()));
    }
    if recipients.len() > limits.max_recipients {
        return Err(Reply::new(
            550,
            "5.5.3",
            format!(
                "Too many recipients ({}): at most {} per message (smtp_in.max_recipients); split the message",
                recipients.len(),
                limits.max_recipients
            ),
        ));
    }
    if let Some(bad) = recipients.iter().find(|r| !is_mailbox(r)) {
        return Err(malformed(format!(
            "recipient {bad:?} is not an address: write local@domain"
        )));
    }
    Ok(())
}

/// The control headers at the end of the header section, so they win
/// over the message's own (the last one is read).
pub(crate) fn with_control_headers(mut data: Vec<u8>, control: &[u8]) -> Vec<u8> {
    if control.is_empty() {
        return data;
    }
    let at = if data.starts_with(b"\r\n") {
        0
    } else {
        memchr::memmem::find(&data, b"\r\n\r\n").map_or(data.len(), |i| i + 2)
    };
    if at == data.len() && !data.is_empty() && !data.ends_with(b"\r\n") {
        data.extend_from_slice(b"\r\n");
        data.extend_from_slice(control);
        return data;
    }
    data.splice(at..at, control.iter().copied());
    data
}

/// Bare LF line ends become CRLF (applications write `\n` in JSON). Text
/// that has none comes back as it is, without a copy: the HTTP API calls
/// this once per rendered message.
pub(crate) fn crlf(bytes: Vec<u8>) -> Vec<u8> {
    let is_bare = |i: usize| i == 0 || bytes[i - 1] != b'\r';
    let lfs = memchr::memchr_iter(b'\n', &bytes);
    let bare = lfs.clone().filter(|&i| is_bare(i)).count();
    if bare == 0 {
        return bytes;
    }
    let mut out = Vec::with_capacity(bytes.len() + bare);
    let mut from = 0;
    for i in lfs.filter(|&i| is_bare(i)) {
        out.extend_from_slice(&bytes[from..i]);
        out.extend_from_slice(b"\r");
        from = i;
    }
    out.extend_from_slice(&bytes[from..]);
    out
}

fn malformed(why: String) -> Reply {
    Reply::new(554, "5.6.0", format!("Malformed injection: {why}"))
}

fn too_big(limits: &Limits) -> Reply {
    Reply::new(
        552,
        "5.3.4",
        format!(
            "Message too big: at most {} bytes (smtp_in.max_message_size)",
            limits.max_message_size
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_message_size: 1000,
        max_recipients: 3,
    };

    fn json(extra: &str) -> Vec<u8> {
        format!(
            r#"{{"mail_from":"a@b.c","recipients":["x@y.z"],"message":"Subject: s\n\nbody\n"{extra}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn parses_and_normalises_line_ends() {
        let i = parse(&json(r#","user":"alice""#), &LIMITS).unwrap();
        assert_eq!(i.user.as_deref(), Some("alice"));
        assert_eq!(i.data, b"Subject: s\r\n\r\nbody\r\n");
        assert_eq!(i.recipients, ["x@y.z"]);
    }

    #[test]
    fn only_bare_line_feeds_become_crlf_and_clean_text_is_not_copied() {
        assert_eq!(crlf(b"\na\nb\r\nc\n".to_vec()), b"\r\na\r\nb\r\nc\r\n");
        let clean = b"a\r\nb\r\n".to_vec();
        let at = clean.as_ptr();
        let same = crlf(clean);
        assert_eq!((same.as_slice(), same.as_ptr()), (&b"a\r\nb\r\n"[..], at));
    }

    #[test]
    fn channel_and_campaign_become_the_last_control_headers() {
        let i = parse(
            &json(r#","channel":"transactional","campaign":"spring""#),
            &LIMITS,
        )
        .unwrap();
        assert_eq!(
            i.data,
            b"Subject: s\r\nX-Channel: transactional\r\nX-Campaign-Id: spring\r\n\r\nbody\r\n"
        );
        let bad = parse(&json(r#","campaign":"a\r\nBcc: x@y.z""#), &LIMITS).unwrap_err();
        assert_eq!(bad.code, 554);
    }

    #[test]
    fn base64_carries_8bit_content() {
        let body = br#"{"mail_from":"","recipients":["x@y.z"],"message_base64":"U3ViamVjdDogw6kKCnjpCg=="}"#;
        let i = parse(body, &LIMITS).unwrap();
        assert_eq!(i.data, b"Subject: \xc3\xa9\r\n\r\nx\xe9\r\n");
    }

    #[test]
    fn refusals_say_what_to_fix() {
        for (body, code) in [
            (b"not json".to_vec(), 554),
            (json(r#","usr":"typo""#), 554),
            (
                br#"{"mail_from":"a@b.c","recipients":[],"message":"x"}"#.to_vec(),
                554,
            ),
            (
                br#"{"mail_from":"a@b.c","recipients":["no-at"],"message":"x"}"#.to_vec(),
                554,
            ),
            (
                br#"{"mail_from":"a b@c","recipients":["x@y.z"],"message":"x"}"#.to_vec(),
                554,
            ),
            (
                br#"{"mail_from":"a@b.c","recipients":["x@y.z"]}"#.to_vec(),
                554,
            ),
            (
                br#"{"mail_from":"a@b.c","recipients":["a@b","c@d","e@f","g@h"],"message":"x"}"#
                    .to_vec(),
                550,
            ),
            (json(&format!(r#","campaign":"{}""#, "x".repeat(300))), 554),
        ] {
            let e = parse(&body, &LIMITS).unwrap_err();
            assert_eq!(e.code, code, "{e}");
        }
        let big = format!(
            r#"{{"mail_from":"a@b.c","recipients":["x@y.z"],"message":"{}"}}"#,
            "x".repeat(1001)
        );
        assert_eq!(parse(big.as_bytes(), &LIMITS).unwrap_err().code, 552);
    }
}
