//! The sink's SMTP dialogue, byte by byte: pipelining, dot-stuffing, limits,
//! AUTH and command order.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{RawClient, SinkProcess};

fn greeted(sink: &SinkProcess) -> RawClient {
    let mut client = RawClient::connect(sink.addr);
    assert!(client.reply().starts_with("220 "));
    client
}

#[test]
fn pipelined_commands_are_answered_in_order_and_body_is_unstuffed() {
    let sink = SinkProcess::start(&["--hostname", "sink.test"]);
    let mut client = greeted(&sink);
    client.send(
        "EHLO raw.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n\
         RCPT TO:<c@example.net>\r\nDATA\r\n",
    );
    let ehlo = client.reply();
    assert!(ehlo.starts_with("250-sink.test greets raw.test"), "{ehlo}");
    for extension in [
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "SIZE 104857600",
    ] {
        assert!(ehlo.contains(extension), "{extension} missing from {ehlo}");
    }
    assert!(!ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"));
    assert_eq!(client.reply(), "250 2.1.0 Ok");
    assert_eq!(client.reply(), "250 2.1.5 Ok");
    assert_eq!(client.reply(), "250 2.1.5 Ok");
    assert!(client.reply().starts_with("354 "));
    client.send("Message-ID: <raw-1@test>\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n");
    assert_eq!(client.reply(), "250 2.0.0 Ok: queued as 1");
    assert!(client.reply().starts_with("221 "));

    let log = sink.log();
    assert_eq!(log[0]["message_id"], "<raw-1@test>");
    assert_eq!(
        log[0]["rcpts"],
        serde_json::json!(["b@example.net", "c@example.net"])
    );
    let stored = sink.stored(1);
    assert_eq!(stored, b"Message-ID: <raw-1@test>\r\n\r\n.leading dot\r\n");
    assert_eq!(log[0]["size"], stored.len());
}

#[test]
fn message_without_message_id_logs_null() {
    let sink = SinkProcess::start(&[]);
    let mut client = greeted(&sink);
    client.command("HELO raw.test");
    client.command("MAIL FROM:<>");
    client.command("RCPT TO:<b@example.net>");
    client.command("DATA");
    assert!(
        client
            .command("Subject: none\r\n\r\nhi\r\n.")
            .starts_with("250 ")
    );
    let log = sink.log();
    assert!(log[0]["message_id"].is_null());
    assert_eq!(log[0]["mail_from"], "");
}

#[test]
fn no_pipelining_is_not_advertised() {
    let sink = SinkProcess::start(&["--no-pipelining"]);
    let mut client = greeted(&sink);
    assert!(!client.command("EHLO raw.test").contains("PIPELINING"));
}

#[test]
fn long_lines_and_big_messages_are_refused() {
    let sink = SinkProcess::start(&["--max-size", "100"]);
    let mut client = greeted(&sink);
    assert!(client.command("EHLO raw.test").contains("SIZE 100"));
    let long = format!("NOOP {}", "x".repeat(5000));
    assert_eq!(client.command(&long), "500 5.5.2 Line too long");
    assert!(client.command("NOOP").starts_with("250 "));

    assert!(
        client
            .command("MAIL FROM:<a@example.com> SIZE=1000")
            .starts_with("552 5.3.4")
    );
    client.command("MAIL FROM:<a@example.com>");
    client.command("RCPT TO:<b@example.net>");
    client.command("DATA");
    let big = format!("{}\r\n.", "y".repeat(200));
    assert!(client.command(&big).starts_with("552 5.3.4"));
    // The session goes on after the refusal.
    client.command("MAIL FROM:<a@example.com>");
    client.command("RCPT TO:<b@example.net>");
    client.command("DATA");
    assert!(client.command("small\r\n.").starts_with("250 "));
    assert_eq!(sink.log().len(), 1);
}

#[test]
fn commands_out_of_order_get_503() {
    let sink = SinkProcess::start(&[]);
    let mut client = greeted(&sink);
    assert!(
        client
            .command("MAIL FROM:<a@example.com>")
            .starts_with("503 ")
    );
    client.command("EHLO raw.test");
    assert!(
        client
            .command("RCPT TO:<b@example.net>")
            .starts_with("503 ")
    );
    assert!(client.command("DATA").starts_with("503 "));
    client.command("MAIL FROM:<a@example.com>");
    assert!(
        client
            .command("MAIL FROM:<a@example.com>")
            .starts_with("503 ")
    );
    assert!(client.command("DATA").starts_with("554 "));
    assert!(client.command("RSET").starts_with("250 "));
    assert!(
        client
            .command("RCPT TO:<b@example.net>")
            .starts_with("503 ")
    );
    assert!(client.command("BDAT 10 LAST").starts_with("500 "));
    assert!(client.command("STARTTLS").starts_with("502 "));
    assert!(client.command("AUTH PLAIN").starts_with("502 "));
}

#[test]
fn auth_login_and_plain_and_530() {
    let sink = SinkProcess::start(&["--auth", "user:secret"]);
    let mut client = greeted(&sink);
    assert!(client.command("EHLO raw.test").contains("AUTH PLAIN LOGIN"));
    assert!(
        client
            .command("MAIL FROM:<a@example.com>")
            .starts_with("530 5.7.0")
    );
    assert_eq!(
        client.command("AUTH LOGIN"),
        format!("334 {}", BASE64.encode("Username:"))
    );
    assert_eq!(
        client.command(&BASE64.encode("user")),
        format!("334 {}", BASE64.encode("Password:"))
    );
    assert!(client.command(&BASE64.encode("secret")).starts_with("235 "));
    assert!(
        client
            .command("MAIL FROM:<a@example.com>")
            .starts_with("250 ")
    );

    let mut client = greeted(&sink);
    client.command("EHLO raw.test");
    let wrong = BASE64.encode("\0user\0nope");
    assert!(
        client
            .command(&format!("AUTH PLAIN {wrong}"))
            .starts_with("535 5.7.8")
    );
    assert_eq!(client.command("AUTH PLAIN").trim_end(), "334");
    assert!(client.command("*").starts_with("501 "));
    assert!(client.command("AUTH PLAIN !!!").starts_with("501 "));
    let right = BASE64.encode("\0user\0secret");
    assert!(
        client
            .command(&format!("AUTH PLAIN {right}"))
            .starts_with("235 ")
    );
}

#[test]
fn greeting_5xx_serves_only_quit() {
    let sink = SinkProcess::start(&["--fault", "greeting=554 5.3.2 not now"]);
    let mut client = RawClient::connect(sink.addr);
    assert_eq!(client.reply(), "554 5.3.2 not now");
    assert!(client.command("EHLO raw.test").starts_with("503 "));
    assert!(client.command("QUIT").starts_with("221 "));
    assert!(client.is_closed());
}

#[test]
fn positive_fault_reply_replaces_the_normal_one() {
    let sink = SinkProcess::start(&["--fault", "dot=250 2.0.0 custom ok"]);
    let mut client = greeted(&sink);
    client.command("EHLO raw.test");
    client.command("MAIL FROM:<a@example.com>");
    client.command("RCPT TO:<b@example.net>");
    client.command("DATA");
    assert_eq!(client.command("x\r\n."), "250 2.0.0 custom ok");
    assert_eq!(sink.log().len(), 1);
}
