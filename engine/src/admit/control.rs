//! Admission step 2: the header edits, made once, before the message is
//! spooled, and the control headers they find.
//!
//! The application controls channel and campaign with `X-Channel` and
//! `X-Campaign-Id`; those are read and removed here so they never leave the
//! host. A message without `Message-ID` or `Date` gets one (RFC 5322 wants
//! both, and receivers score their absence), and every message gets our
//! `Received:` trace line on top. Only the transforms (`decorate`) and
//! the DKIM signature (`sign`) change the message after this.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::Refusal;
use crate::tenancy::CHANNELS;
use crate::transform::header::{parse_header_block, unseparated_body_start};
use crate::values::Reply;

/// What admission learnt from the headers it removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ControlHeaders {
    pub channel: Option<String>,
    pub campaign: Option<String>,
}

/// The result of admission's edits.
pub(super) struct Edited {
    pub body: Vec<u8>,
    pub control: ControlHeaders,
    pub message_id: String,
}

/// Everything the Received line says about the client.
pub(super) struct TraceInfo<'a> {
    pub hostname: &'a str,
    pub helo: &'a str,
    pub peer_ip: String,
    pub tls: bool,
    pub authenticated: bool,
    pub smtputf8: bool,
    pub time_ms: u64,
}

/// Applies admission's header edits and returns the bytes to spool.
pub(super) fn edit_headers(message: &[u8], trace: &TraceInfo<'_>) -> Edited {
    // Text where a field should be starts the body: the empty line before
    // it is written below, as for a message without a body.
    let fields_end = unseparated_body_start(message).unwrap_or(message.len());
    let header = parse_header_block(message, 0, fields_end);
    let mut control = ControlHeaders::default();
    let mut message_id = None;
    let mut has_date = false;
    let mut removed: Vec<(usize, usize)> = Vec::new();
    for f in &header.fields {
        if f.is(message, "X-Channel") {
            control.channel = Some(f.unfolded_value(message).to_ascii_lowercase());
            removed.push((f.start, f.end));
        } else if f.is(message, "X-Campaign-Id") {
            control.campaign = Some(f.unfolded_value(message));
            removed.push((f.start, f.end));
        } else if f.is(message, "Message-ID") {
            let id = f.unfolded_value(message);
            if id.is_empty() {
                // An empty one is none: one is made below.
                removed.push((f.start, f.end));
            } else if message_id.is_none() {
                message_id = Some(id);
            }
        } else if f.is(message, "Date") {
            has_date = true;
        }
    }
    let mut out = Vec::with_capacity(message.len() + 512);
    out.extend_from_slice(received_line(trace).as_bytes());
    let mut pos = 0;
    for (start, end) in removed {
        out.extend_from_slice(&message[pos..start]);
        pos = end;
    }
    out.extend_from_slice(&message[pos..header.fields_end]);
    if header.last_line_open {
        out.extend_from_slice(b"\r\n");
    }
    let message_id = match message_id {
        Some(id) => id,
        None => {
            let id = new_message_id(trace.hostname, trace.time_ms);
            out.extend_from_slice(format!("Message-ID: {id}\r\n").as_bytes());
            id
        }
    };
    if !has_date {
        let date = crate::timefmt::rfc5322(trace.time_ms);
        out.extend_from_slice(format!("Date: {date}\r\n").as_bytes());
    }
    if !header.has_separator {
        // No body: close the header section so the added fields stay headers.
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&message[header.fields_end..]);
    Edited {
        body: out,
        control,
        message_id,
    }
}

/// Longest `X-Campaign-Id` (and channel, over the HTTP API and AMQP): the
/// campaign is stored with every recipient and written in every event and
/// report row.
pub(crate) const MAX_CONTROL_VALUE: usize = 200;

/// Refuses an `X-Campaign-Id` too long to store or with control
/// characters, which would reach event logs and reports as they are.
pub(super) fn check_campaign(campaign: Option<&str>) -> Result<(), Reply> {
    let Some(campaign) = campaign else {
        return Ok(());
    };
    if campaign.len() <= MAX_CONTROL_VALUE && !campaign.chars().any(char::is_control) {
        return Ok(());
    }
    crate::metrics::injection_refused(Refusal::Content);
    Err(Reply::new(
        550,
        "5.6.0",
        format!(
            "X-Campaign-Id has {} bytes: give at most {MAX_CONTROL_VALUE}, without control characters",
            campaign.len()
        ),
    ))
}

/// The channel the application asked for with X-Channel (marketing when
/// it did not), or the refusal of an unknown one.
pub(super) fn channel_of(header: Option<&str>) -> Result<&'static str, Reply> {
    match header {
        None | Some("") => Ok("marketing"),
        Some(c) => CHANNELS.iter().copied().find(|k| *k == c).ok_or_else(|| {
            crate::metrics::injection_refused(Refusal::UnknownChannel);
            Reply::new(
                550,
                "5.6.0",
                format!(
                    "X-Channel `{c}` is unknown: use marketing, transactional or autoresponder"
                ),
            )
        }),
    }
}

fn received_line(t: &TraceInfo<'_>) -> String {
    // RFC 3848 protocol names: ESMTP, plus S for TLS and A for AUTH;
    // UTF8SMTP in their place for an SMTPUTF8 transaction (RFC 6531 3.7.3).
    let base = if t.smtputf8 { "UTF8SMTP" } else { "ESMTP" };
    let suffix = match (t.tls, t.authenticated) {
        (false, false) => "",
        (true, false) => "S",
        (false, true) => "A",
        (true, true) => "SA",
    };
    let proto = format!("{base}{suffix}");
    let helo: String = t
        .helo
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    format!(
        "Received: from {helo} ([{ip}])\r\n\tby {host} (sendengine) with {proto};\r\n\t{date}\r\n",
        ip = t.peer_ip,
        host = t.hostname,
        date = crate::timefmt::rfc5322(t.time_ms),
    )
}

fn new_message_id(hostname: &str, time_ms: u64) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("<{time_ms:x}.{n:x}.{:x}@{hostname}>", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace() -> TraceInfo<'static> {
        TraceInfo {
            hostname: "mta.test",
            helo: "client.test",
            peer_ip: "127.0.0.1".into(),
            tls: false,
            authenticated: false,
            smtputf8: false,
            time_ms: 1_795_257_000_000,
        }
    }

    #[test]
    fn control_headers_are_read_and_removed() {
        let msg = b"From: a@b.c\r\nX-Channel: Transactional\r\nX-Campaign-Id: spring\r\n sale\r\nMessage-ID: <x@y>\r\nDate: today\r\n\r\nbody\r\n";
        let p = edit_headers(msg, &trace());
        assert_eq!(p.control.channel.as_deref(), Some("transactional"));
        assert_eq!(p.control.campaign.as_deref(), Some("spring sale"));
        assert_eq!(p.message_id, "<x@y>");
        let text = String::from_utf8(p.body).unwrap();
        assert!(text.starts_with(
            "Received: from client.test ([127.0.0.1])\r\n\tby mta.test (sendengine) with ESMTP;"
        ));
        assert!(!text.contains("X-Channel") && !text.contains("sale"));
        assert!(text.ends_with("From: a@b.c\r\nMessage-ID: <x@y>\r\nDate: today\r\n\r\nbody\r\n"));
    }

    #[test]
    fn the_received_line_names_the_protocol_of_rfc_3848_and_6531() {
        let proto = |tls, authenticated, smtputf8| {
            let t = TraceInfo {
                tls,
                authenticated,
                smtputf8,
                ..trace()
            };
            let line = received_line(&t);
            line.split(" with ")
                .nth(1)
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(proto(false, false, false), "ESMTP");
        assert_eq!(proto(true, true, false), "ESMTPSA");
        assert_eq!(proto(false, false, true), "UTF8SMTP");
        assert_eq!(proto(true, false, true), "UTF8SMTPS");
        assert_eq!(proto(true, true, true), "UTF8SMTPSA");
    }

    #[test]
    fn missing_message_id_and_date_are_added_in_the_header() {
        let p = edit_headers(b"Subject: hi\r\n\r\nbody\r\n", &trace());
        let text = String::from_utf8(p.body).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Message-ID: {}", p.message_id)));
        assert!(head.contains("Date: Sat, 21 Nov 2026 10:30:00 +0000"));
        assert_eq!(body, "body\r\n");
    }

    #[test]
    fn text_where_the_header_should_be_becomes_the_body() {
        let body_of = |m: &[u8]| {
            let text = String::from_utf8(edit_headers(m, &trace()).body).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(
                head.contains("Message-ID: <") && head.contains("Date: "),
                "{head}"
            );
            (head.to_owned(), body.to_owned())
        };
        let (_, body) = body_of(b"Hello world\r\nsecond line\r\n\r\nthird\r\n");
        assert_eq!(body, "Hello world\r\nsecond line\r\n\r\nthird\r\n");
        let (head, body) =
            body_of(b"Subject: x\r\nthis is not a header\r\nFrom: a@b.c\r\n\r\nb\r\n");
        assert!(head.contains("\r\nSubject: x\r\n"), "{head}");
        assert_eq!(body, "this is not a header\r\nFrom: a@b.c\r\n\r\nb\r\n");
        let (head, body) = body_of(b" folded first\r\nSubject: s\r\n\r\nb\r\n");
        assert!(!head.contains("folded"), "{head}");
        assert_eq!(body, " folded first\r\nSubject: s\r\n\r\nb\r\n");
    }

    #[test]
    fn an_empty_message_id_is_replaced_and_the_first_of_two_counts() {
        let p = edit_headers(b"Message-ID:\r\nSubject: s\r\n\r\nb\r\n", &trace());
        let text = String::from_utf8(p.body).unwrap();
        assert!(p.message_id.starts_with('<') && p.message_id.ends_with("@mta.test>"));
        assert_eq!(text.matches("Message-ID:").count(), 1, "{text}");
        let p = edit_headers(
            b"Message-ID: <a@x>\r\nMessage-ID: <b@x>\r\n\r\nb\r\n",
            &trace(),
        );
        assert_eq!(p.message_id, "<a@x>");
    }

    #[test]
    fn a_last_header_line_without_its_break_is_closed() {
        let p = edit_headers(b"Subject: hi", &trace());
        let text = String::from_utf8(p.body).unwrap();
        assert!(text.contains("Subject: hi\r\nMessage-ID: <"), "{text:?}");
    }

    #[test]
    fn long_or_controlled_campaigns_are_refused() {
        assert!(check_campaign(None).is_ok());
        assert!(check_campaign(Some(&"c".repeat(200))).is_ok());
        let long = check_campaign(Some(&"c".repeat(201))).unwrap_err();
        assert_eq!((long.code, long.enhanced), (550, "5.6.0"));
        assert!(long.text.contains("201 bytes"), "{}", long.text);
        assert!(check_campaign(Some("a\u{1}b")).is_err());
    }

    #[test]
    fn message_without_body() {
        let p = edit_headers(b"Subject: hi\r\n", &trace());
        let text = String::from_utf8(p.body).unwrap();
        assert!(text.ends_with("+0000\r\n\r\n"), "{text:?}");
    }
}
