//! The bounce listener end to end, against the real daemon, the real sink
//! and Python's smtplib: a message is delivered through the sink with a
//! VERP return path, then an RFC 3464 DSN (or an ARF complaint) built for
//! it is sent to `[bounce_in]` at that return path. The event must name the
//! right message, tenant, campaign and recipient, the address must be
//! suppressed (unless `auto_suppress = false`), forged tags and strangers
//! get 550 5.1.1, and the delivered index survives a restart. The same DSN
//! sent again (before and after a restart) makes no second event, and
//! bounce events say `bounce_type` hard or soft.

mod support;

use serde_json::Value;
use support::bounces::{count_events, deliver, dsn, event_for, python_missing, send_bounce};
use support::{Daemon, DaemonConfig, Sink, ctl, free_port, smtplib_try};

fn arf(return_path: &str, recipient: &str, message_id: &str) -> String {
    format!(
        "From: Feedback Loop <fbl@feedback.example.org>\r\n\
To: {return_path}\r\n\
Subject: FW: test\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=feedback-report; boundary=\"ARF\"\r\n\
\r\n\
--ARF\r\n\
Content-Type: text/plain\r\n\
\r\n\
This is an email abuse report for an email message received from IP 192.0.2.1.\r\n\
\r\n\
--ARF\r\n\
Content-Type: message/feedback-report\r\n\
\r\n\
Feedback-Type: abuse\r\n\
User-Agent: SomeGenerator/1.0\r\n\
Version: 1\r\n\
Original-Mail-From: <{return_path}>\r\n\
Original-Rcpt-To: <{recipient}>\r\n\
Reported-Domain: example.com\r\n\
\r\n\
--ARF\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
Return-Path: <{return_path}>\r\n\
From: app@example.com\r\n\
To: {recipient}\r\n\
Subject: test\r\n\
Message-ID: {message_id}\r\n\
\r\n\
Hello.\r\n\
--ARF--\r\n"
    )
}

fn config(sink_port: u16, bounce_port: u16, auto_suppress: bool) -> DaemonConfig {
    DaemonConfig::custom(&format!(
        "[smtp_in]\nlisten = [\"127.0.0.1:0\"]\nrelay_networks = [\"127.0.0.0/8\"]\ndefault_user = \"acme\"\n\
[delivery]\nretry_schedule = [\"1s\"]\n\
[bounce_in]\nlisten = [\"127.0.0.1:{bounce_port}\"]\ndomains = [\"bounce.example.net\"]\n\
[suppression]\nauto_suppress = {auto_suppress}\n\
[[delivery_server]]\nname = \"s\"\nhost = \"127.0.0.1\"\nport = {sink_port}\nmail_from_domain = \"bounce.example.net\"\n\
[[user_group]]\nname = \"default\"\nmarketing = [\"s\"]\ntransactional = [\"s\"]\nautoresponder = [\"s\"]\n\
[[user]]\nname = \"acme\"\n"
    ))
}

/// `deliver`, and the return path is a VERP address of the bounce domain.
fn deliver_verp(daemon: &Daemon, sink: &Sink, rcpt: &str, message_id: &str) -> (String, String) {
    let (id, return_path) = deliver(daemon, sink, rcpt, message_id);
    assert!(
        return_path.starts_with("bounces+") && return_path.ends_with("@bounce.example.net"),
        "{return_path}"
    );
    (id, return_path)
}

fn suppressed(daemon: &Daemon, address: &str) -> Value {
    ctl(
        daemon,
        &["suppression", "check", address, "--tenant", "acme"],
    )
}

/// Suppression events that a bounce caused (not the drops at injection,
/// which answer 5.7.1).
fn bounce_suppressions(daemon: &Daemon, recipient: &str) -> usize {
    daemon
        .events_of("suppression")
        .iter()
        .filter(|e| e["recipient"] == recipient && e["reply"]["enhanced"] == "5.1.1")
        .count()
}

#[test]
fn a_dsn_and_a_complaint_are_tied_suppressed_and_survive_a_restart() {
    if python_missing() {
        return;
    }
    let sink = Sink::start(&[]);
    let bounce_port = free_port();
    let mut daemon = Daemon::start(config(sink.addr.port(), bounce_port, true));
    let (gone_id, gone_path) = deliver_verp(&daemon, &sink, "gone@example.net", "<m1@app.test>");
    let (fbl_id, fbl_path) = deliver_verp(&daemon, &sink, "fbl@example.net", "<m2@app.test>");
    let (late_id, late_path) = deliver_verp(&daemon, &sink, "late@example.net", "<m3@app.test>");

    // (a) A DSN for a delivered message: tied, classified, suppressed.
    let email = dsn(&gone_path, "gone@example.net", "<m1@app.test>");
    assert_eq!(
        send_bounce(bounce_port, &gone_path, &email).as_deref(),
        Some("250")
    );
    let bounce = event_for(&daemon, "async_bounce", "gone@example.net");
    assert_eq!(bounce["message_id"], gone_id.as_str());
    assert_eq!(bounce["header_message_id"], "<m1@app.test>");
    assert_eq!(bounce["tenant"], "acme");
    assert_eq!(bounce["campaign"], "spring");
    assert_eq!(bounce["route"], "s");
    assert_eq!(bounce["bounce_class"], "bad-mailbox");
    assert_eq!(bounce["bounce_type"], "hard");
    assert_eq!(bounce["reply"]["code"], 550);
    assert_eq!(bounce["reply"]["enhanced"], "5.1.1");
    assert_eq!(bounce["sender"], gone_path.as_str());
    let check = suppressed(&daemon, "gone@example.net");
    assert_eq!(check["suppressed"], true, "{check}");
    assert_eq!(check["entries"][0]["reason"], "bad-mailbox");
    event_for(&daemon, "suppression", "gone@example.net");
    // The next injection to it is dropped (the only recipient: refused).
    let refused = smtplib_try(daemon.addr, "app@example.com", &["gone@example.net"], "");
    assert!(refused.starts_with("550 5.7.1"), "{refused}");
    // The same DSN three more times (a sender that retries, a replay):
    // accepted, and nothing new happens.
    let email = dsn(&gone_path, "gone@example.net", "<m1@app.test>");
    for _ in 0..3 {
        assert_eq!(
            send_bounce(bounce_port, &gone_path, &email).as_deref(),
            Some("250")
        );
    }

    // (b) An ARF complaint: a complaint event, and the address suppressed.
    let email = arf(&fbl_path, "fbl@example.net", "<m2@app.test>");
    assert_eq!(
        send_bounce(bounce_port, &fbl_path, &email).as_deref(),
        Some("250")
    );
    let complaint = event_for(&daemon, "complaint", "fbl@example.net");
    assert_eq!(complaint["message_id"], fbl_id.as_str());
    assert_eq!(complaint["tenant"], "acme");
    assert_eq!(complaint["campaign"], "spring");
    assert_eq!(complaint["bounce_class"], "abuse", "the feedback type");
    assert_eq!(complaint["bounce_type"], Value::Null);
    // Events are written in order: the replays came before the complaint.
    assert_eq!(count_events(&daemon, "async_bounce", "gone@example.net"), 1);
    assert_eq!(bounce_suppressions(&daemon, "gone@example.net"), 1);
    let check = suppressed(&daemon, "fbl@example.net");
    assert_eq!(check["entries"][0]["reason"], "complaint", "{check}");

    // (c) A forged or altered tag, and a stranger: 550 5.1.1 at RCPT.
    let (local, domain) = late_path.split_once('@').unwrap();
    let last = local.chars().last().unwrap();
    let swapped = if last == 'a' { 'b' } else { 'a' };
    let forged = format!("{}{swapped}@{domain}", &local[..local.len() - 1]);
    let email = dsn(&forged, "late@example.net", "<m3@app.test>");
    let reply = send_bounce(bounce_port, &forged, &email).unwrap();
    assert!(reply.starts_with("550 5.1.1"), "{reply}");
    // A valid tag at a domain that is not in `[bounce_in] domains`.
    let elsewhere = format!("{local}@elsewhere.example");
    for stranger in [
        "postmaster@bounce.example.net",
        "bounces@bounce.example.net",
        elsewhere.as_str(),
    ] {
        let reply = send_bounce(bounce_port, stranger, &email).unwrap();
        assert!(reply.starts_with("550 5.1.1"), "{stranger}: {reply}");
    }
    assert!(
        daemon.events_of("async_bounce").len() == 1,
        "refused bounces make no events"
    );

    // (e) After a restart the index still ties a bounce to its message.
    daemon.stop();
    daemon.restart();
    // The replayed DSN is still known after the restart.
    let email = dsn(&gone_path, "gone@example.net", "<m1@app.test>");
    assert_eq!(
        send_bounce(bounce_port, &gone_path, &email).as_deref(),
        Some("250")
    );
    let email = dsn(&late_path, "late@example.net", "<m3@app.test>");
    assert_eq!(
        send_bounce(bounce_port, &late_path, &email).as_deref(),
        Some("250")
    );
    let late = event_for(&daemon, "async_bounce", "late@example.net");
    assert_eq!(late["message_id"], late_id.as_str());
    assert_eq!(late["tenant"], "acme");
    assert_eq!(late["campaign"], "spring");
    assert_eq!(late["header_message_id"], "<m3@app.test>");
    assert_eq!(count_events(&daemon, "async_bounce", "gone@example.net"), 1);
    assert_eq!(bounce_suppressions(&daemon, "gone@example.net"), 1);
}

#[test]
fn with_auto_suppress_off_bounces_are_reported_but_nothing_is_suppressed() {
    if python_missing() {
        return;
    }
    let sink = Sink::start(&[
        "--fault",
        "rcpt~nouser=550 5.1.1 no such user",
        "--fault",
        "rcpt~full=552 5.2.2 mailbox full",
    ]);
    let bounce_port = free_port();
    let daemon = Daemon::start(config(sink.addr.port(), bounce_port, false));
    let (id, path) = deliver_verp(&daemon, &sink, "async@example.net", "<m4@app.test>");

    // (d) An asynchronous hard bounce: the event, no suppression.
    let email = dsn(&path, "async@example.net", "<m4@app.test>");
    assert_eq!(
        send_bounce(bounce_port, &path, &email).as_deref(),
        Some("250")
    );
    let bounce = event_for(&daemon, "async_bounce", "async@example.net");
    assert_eq!(bounce["message_id"], id.as_str());
    assert_eq!(bounce["bounce_class"], "bad-mailbox");
    assert_eq!(
        suppressed(&daemon, "async@example.net")["suppressed"],
        false
    );

    // A synchronous hard bounce: also classified, also not suppressed.
    assert_eq!(
        smtplib_try(daemon.addr, "app@example.com", &["nouser@example.net"], ""),
        "250"
    );
    let sync = event_for(&daemon, "bounce", "nouser@example.net");
    assert_eq!(sync["bounce_class"], "bad-mailbox");
    assert_eq!(sync["bounce_type"], "hard");
    // A full mailbox is a soft bounce, even at 5.x.x.
    assert_eq!(
        smtplib_try(daemon.addr, "app@example.com", &["full@example.net"], ""),
        "250"
    );
    let full = event_for(&daemon, "bounce", "full@example.net");
    assert_eq!(full["bounce_type"], "soft", "{full}");
    assert_eq!(
        suppressed(&daemon, "nouser@example.net")["suppressed"],
        false
    );
    assert!(daemon.events_of("suppression").is_empty());
    // Mail to both still goes out.
    assert_eq!(
        smtplib_try(daemon.addr, "app@example.com", &["async@example.net"], ""),
        "250"
    );
}
