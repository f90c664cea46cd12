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
use crate::transform::header::parse_header_block;
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
    pub time_ms: u64,
}

/// Applies admission's header edits and returns the bytes to spool.
pub(super) fn edit_headers(message: &[u8], trace: &TraceInfo<'_>) -> Edited {
    let header = parse_header_block(message, 0, message.len());
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
            message_id = Some(f.unfolded_value(message));
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
    // RFC 3848 protocol names: ESMTP, plus S for TLS and A for AUTH.
    let proto = match (t.tls, t.authenticated) {
        (false, false) => "ESMTP",
        (true, false) => "ESMTPS",
        (false, true) => "ESMTPA",
        (true, true) => "ESMTPSA",
    };
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
    fn missing_message_id_and_date_are_added_in_the_header() {
        let p = edit_headers(b"Subject: hi\r\n\r\nbody\r\n", &trace());
        let text = String::from_utf8(p.body).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Message-ID: {}", p.message_id)));
        assert!(head.contains("Date: Sat, 21 Nov 2026 10:30:00 +0000"));
        assert_eq!(body, "body\r\n");
    }

    #[test]
    fn message_without_body() {
        let p = edit_headers(b"Subject: hi\r\n", &trace());
        let text = String::from_utf8(p.body).unwrap();
        assert!(text.ends_with("+0000\r\n\r\n"), "{text:?}");
    }
}
