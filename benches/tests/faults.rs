//! The sink's fault modes, seen by the loadgen and by a raw SMTP client.

mod common;

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read};
use std::time::Duration;

use common::{RawClient, SinkProcess, loadgen, read_lines};

#[test]
fn rcpt_substring_rejects_only_matching_recipients() {
    let sink = SinkProcess::start(&["--fault", "rcpt~RCPT2@=550 5.1.1 no such user"]);
    let run = loadgen(
        &sink,
        &["--messages", "20", "--rcpts", "3", "--connections", "2"],
    );
    assert!(
        run.success,
        "partly rejected messages are still acked: {}",
        run.stdout
    );
    let log = sink.log();
    assert_eq!(log.len(), 20);
    for entry in &log {
        assert_eq!(
            entry["rcpts"],
            serde_json::json!(["rcpt1@example.net", "rcpt3@example.net"])
        );
    }

    let mut client = RawClient::connect(sink.addr);
    client.reply();
    client.command("EHLO raw.test");
    client.command("MAIL FROM:<a@example.com>");
    assert_eq!(
        client.command("RCPT TO:<rcpt2@example.net>"),
        "550 5.1.1 no such user"
    );
    assert!(
        client
            .command("RCPT TO:<XRcpt2@example.net>")
            .starts_with("550 ")
    );
    assert!(
        client
            .command("RCPT TO:<other@example.net>")
            .starts_with("250 ")
    );
}

#[test]
fn dot_count_fails_the_first_message_only() {
    let sink = SinkProcess::start(&["--fault", "dot#1=451 4.3.0 try again later"]);
    let ids = sink.ids_path();
    let run = loadgen(
        &sink,
        &[
            "--messages",
            "5",
            "--connections",
            "1",
            "--ids-file",
            ids.to_str().unwrap(),
        ],
    );
    assert!(!run.success, "one message was not acked");
    assert_eq!(run.field("tempfail"), 1);
    assert_eq!(run.field("acked"), 4);
    assert_eq!(run.field("conn_errors"), 0);
    assert_eq!(sink.log().len(), 4);
    let acked: BTreeSet<String> = read_lines(&ids).into_iter().collect();
    let logged: BTreeSet<String> = sink.logged_message_ids().into_iter().collect();
    assert_eq!(acked, logged);

    // The rule is used up: the next message goes through.
    let again = loadgen(&sink, &["--messages", "1"]);
    assert!(again.success);
}

#[test]
fn permanent_rejection_at_mail_counts_as_permfail() {
    let sink = SinkProcess::start(&["--fault", "mail~blocked=550 5.7.1 sender blocked"]);
    let run = loadgen(
        &sink,
        &[
            "--messages",
            "3",
            "--connections",
            "1",
            "--from",
            "blocked@example.com",
        ],
    );
    assert!(!run.success);
    assert_eq!(run.field("permfail"), 3);
    assert_eq!(run.field("acked"), 0);
    assert!(sink.log().is_empty());
}

#[test]
fn greeting_421_closes_the_connection() {
    let sink = SinkProcess::start(&["--fault", "greeting=421 4.3.2 busy"]);
    let mut client = RawClient::connect(sink.addr);
    assert_eq!(client.reply(), "421 4.3.2 busy");
    assert!(client.is_closed());

    let run = loadgen(&sink, &["--messages", "3", "--connections", "1"]);
    assert!(!run.success);
    assert_eq!(run.field("acked"), 0);
    assert_eq!(run.field("conn_errors"), 1);
}

#[test]
fn greeting_count_with_keep_going_recovers() {
    let sink = SinkProcess::start(&["--fault", "greeting#2=421 4.3.2 busy"]);
    let run = loadgen(
        &sink,
        &["--messages", "5", "--connections", "1", "--keep-going"],
    );
    assert!(!run.success);
    assert_eq!(run.field("attempted"), 5);
    assert_eq!(run.field("conn_errors"), 2);
    assert_eq!(run.field("acked"), 3);
    assert_eq!(sink.log().len(), 3);
}

#[test]
fn disconnect_at_dot_loses_the_message_everywhere() {
    let sink = SinkProcess::start(&["--fault", "dot#1=disconnect"]);
    let ids = sink.ids_path();
    let run = loadgen(
        &sink,
        &[
            "--messages",
            "5",
            "--connections",
            "1",
            "--keep-going",
            "--ids-file",
            ids.to_str().unwrap(),
        ],
    );
    assert!(!run.success);
    assert_eq!(run.field("conn_errors"), 1);
    assert_eq!(run.field("acked"), 4);
    let acked = read_lines(&ids);
    assert_eq!(acked.len(), 4);
    assert!(
        acked.iter().all(|id| !id.ends_with("-1@loadgen.invalid>")),
        "{acked:?}"
    );
    let logged: BTreeSet<String> = sink.logged_message_ids().into_iter().collect();
    assert_eq!(logged, acked.into_iter().collect());
}

#[test]
fn disconnect_after_data_command() {
    let sink = SinkProcess::start(&["--fault", "data=disconnect"]);
    let mut client = RawClient::connect(sink.addr);
    client.reply();
    client.command("EHLO raw.test");
    client.command("MAIL FROM:<a@example.com>");
    client.command("RCPT TO:<b@example.net>");
    client.send("DATA\r\n");
    assert!(client.is_closed());
}

#[test]
fn stall_never_answers_but_keeps_the_socket() {
    let sink = SinkProcess::start(&["--fault", "mail=stall"]);
    let mut client = RawClient::connect(sink.addr);
    client.reply();
    client.command("EHLO raw.test");
    client.send("MAIL FROM:<a@example.com>\r\n");
    client
        .stream()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0u8; 1];
    let err = client.stream().read(&mut byte).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "expected silence, got {err:?}"
    );

    let run = loadgen(
        &sink,
        &["--messages", "2", "--connections", "1", "--timeout", "1"],
    );
    assert!(!run.success);
    assert_eq!(run.field("conn_errors"), 1);
    assert_eq!(run.field("acked"), 0);
}

#[test]
fn dot_substring_matches_the_message_id() {
    let sink = SinkProcess::start(&["--fault", "dot~-3@LOADGEN=554 5.6.0 bad content"]);
    let ids = sink.ids_path();
    let run = loadgen(
        &sink,
        &[
            "--messages",
            "5",
            "--connections",
            "1",
            "--ids-file",
            ids.to_str().unwrap(),
        ],
    );
    assert_eq!(run.field("permfail"), 1);
    assert_eq!(run.field("acked"), 4);
    let acked = read_lines(&ids);
    assert!(
        acked.iter().all(|id| !id.ends_with("-3@loadgen.invalid>")),
        "{acked:?}"
    );
    assert_eq!(sink.log().len(), 4);
}
