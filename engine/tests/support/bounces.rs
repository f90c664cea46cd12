//! Asynchronous bounces as the bounce listener gets them: an RFC 3464 DSN
//! built for a message we sent, sent with Python's smtplib from the null
//! sender to the VERP return path.

use std::time::Duration;

use serde_json::Value;

use super::{Daemon, Sink, python, smtplib_try, wait_for};

/// How long a delivery or an event may take to show up.
const LONG: Duration = Duration::from_secs(60);

/// Sends one message of campaign "spring" to `rcpt` through `daemon`;
/// returns (its queue id, the return path the sink got) once delivered.
pub fn deliver(daemon: &Daemon, sink: &Sink, rcpt: &str, message_id: &str) -> (String, String) {
    let headers = format!("X-Campaign-Id: spring|Message-ID: {message_id}|");
    assert_eq!(
        smtplib_try(daemon.addr, "app@example.com", &[rcpt], &headers),
        "250"
    );
    let delivered = wait_for(LONG, &format!("delivery to {rcpt}"), || {
        daemon
            .events_of("delivery")
            .into_iter()
            .find(|e| e["recipient"] == rcpt)
    });
    let at_sink = wait_for(LONG, &format!("{rcpt} at the sink"), || {
        sink.messages().into_iter().find(|m| m["rcpts"][0] == rcpt)
    });
    (
        delivered["message_id"].as_str().unwrap().to_owned(),
        at_sink["mail_from"].as_str().unwrap().to_owned(),
    )
}

/// The first event of `kind` for `recipient`, waiting for it.
pub fn event_for(daemon: &Daemon, kind: &str, recipient: &str) -> Value {
    wait_for(LONG, &format!("a {kind} event for {recipient}"), || {
        daemon
            .events_of(kind)
            .into_iter()
            .find(|e| e["recipient"] == recipient)
    })
}

/// How many events of `kind` name `recipient`.
pub fn count_events(daemon: &Daemon, kind: &str, recipient: &str) -> usize {
    daemon
        .events_of(kind)
        .iter()
        .filter(|e| e["recipient"] == recipient)
        .count()
}

/// Under `CI=true` a missing python3 fails the test instead of skipping it.
pub fn python_missing() -> bool {
    super::python3_missing("smtplib sends the bounces")
}

/// Sends one email with a null sender to `rcpt`; prints "250" or the
/// refusal (of RCPT or DATA) as "code text".
const BOUNCE_SEND: &str = r#"
import smtplib, sys
host, port, rcpt, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
msg = open(path, "rb").read()
with smtplib.SMTP(host, port, timeout=30) as s:
    try:
        s.sendmail("", [rcpt], msg)
        print("250")
    except smtplib.SMTPRecipientsRefused as e:
        code, text = e.recipients[rcpt]
        print(code, text.decode())
    except smtplib.SMTPDataError as e:
        print(e.smtp_code, e.smtp_error.decode())
"#;

/// A Postfix-style DSN: `recipient` failed with 5.1.1 (user unknown).
pub fn dsn(return_path: &str, recipient: &str, message_id: &str) -> String {
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n\
To: {return_path}\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
Message-ID: <dsn.{recipient}@mx.example.net>\r\n\
Auto-Submitted: auto-replied\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"BOUNDARY\"\r\n\
\r\n\
--BOUNDARY\r\n\
Content-Type: text/plain\r\n\
\r\n\
This is the mail system at host mx.example.net.\r\n\
Your message could not be delivered to one or more recipients.\r\n\
\r\n\
--BOUNDARY\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; mx.example.net\r\n\
\r\n\
Final-Recipient: rfc822; {recipient}\r\n\
Original-Recipient: rfc822;{recipient}\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
Remote-MTA: dns; inbox.example.net\r\n\
Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: Recipient address rejected: User unknown in virtual mailbox table\r\n\
\r\n\
--BOUNDARY\r\n\
Content-Type: text/rfc822-headers\r\n\
\r\n\
Return-Path: <{return_path}>\r\n\
From: app@example.com\r\n\
To: {recipient}\r\n\
Subject: test\r\n\
Message-ID: {message_id}\r\n\
\r\n\
--BOUNDARY--\r\n"
    )
}

/// Sends `email` to the bounce listener; "250" or the refusal.
pub fn send_bounce(port: u16, rcpt: &str, email: &str) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bounce.eml");
    std::fs::write(&path, email).unwrap();
    let args = [
        "127.0.0.1".to_owned(),
        port.to_string(),
        rcpt.to_owned(),
        path.display().to_string(),
    ];
    let out = python(BOUNCE_SEND, &args)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
