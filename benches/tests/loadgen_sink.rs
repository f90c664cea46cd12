//! The loadgen against the sink, both as real processes on loopback: message
//! counts, ids, sizes and content, options, and AUTH.

mod common;

use std::collections::BTreeSet;

use common::{SinkProcess, loadgen, read_lines};
use sendengine_benches::message::build_body;

#[test]
fn thousand_messages_over_ten_connections_arrive_whole() {
    let sink = SinkProcess::start(&[]);
    let ids_path = sink.ids_path();
    let run = loadgen(
        &sink,
        &[
            "--messages",
            "1000",
            "--connections",
            "10",
            "--size",
            "10240",
            "--ids-file",
            ids_path.to_str().unwrap(),
        ],
    );
    assert!(run.success, "{} {}", run.stdout, run.stderr);
    assert_eq!(run.field("attempted"), 1000);
    assert_eq!(run.field("acked"), 1000);

    let log = sink.log();
    assert_eq!(log.len(), 1000);
    let acked: BTreeSet<String> = read_lines(&ids_path).into_iter().collect();
    let logged: BTreeSet<String> = sink.logged_message_ids().into_iter().collect();
    assert_eq!(acked.len(), 1000, "ids must be unique");
    assert_eq!(acked, logged);

    let body = build_body(10240);
    for entry in &log {
        let seq = entry["seq"].as_u64().unwrap();
        let stored = sink.stored(seq);
        assert_eq!(entry["size"].as_u64().unwrap(), stored.len() as u64);
        let split = stored.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        assert_eq!(&stored[split + 4..], &body[..], "body of message {seq}");
        assert_eq!(entry["mail_from"], "loadgen@example.com");
        assert_eq!(entry["rcpts"], serde_json::json!(["rcpt1@example.net"]));
        assert_eq!(entry["tls"], false);
        assert!(entry["auth"].is_null());
    }
    let seqs: BTreeSet<u64> = log.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=1000).collect());

    assert_eq!(sink.terminate().trim(), "messages=1000 recipients=1000");
}

#[test]
fn without_pipelining_with_several_recipients_and_json_summary() {
    let sink = SinkProcess::start(&["--no-pipelining"]);
    let run = loadgen(
        &sink,
        &[
            "--messages",
            "30",
            "--connections",
            "3",
            "--rcpts",
            "3",
            "--size",
            "100",
            "--to-domain",
            "dest.test",
            "--from",
            "sender@src.test",
            "--no-pipelining",
            "--json",
        ],
    );
    assert!(run.success, "{} {}", run.stdout, run.stderr);
    let summary: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(summary["acked"], 30);
    assert_eq!(summary["attempted"], 30);
    assert!(summary["latency_p50_ms"].as_f64().unwrap() >= 0.0);
    assert!(
        summary["latency_p99_ms"].as_f64().unwrap() >= summary["latency_p50_ms"].as_f64().unwrap()
    );
    let log = sink.log();
    assert_eq!(log.len(), 30);
    for entry in &log {
        assert_eq!(entry["mail_from"], "sender@src.test");
        assert_eq!(
            entry["rcpts"],
            serde_json::json!(["rcpt1@dest.test", "rcpt2@dest.test", "rcpt3@dest.test"])
        );
    }
    assert_eq!(sink.terminate().trim(), "messages=30 recipients=90");
}

#[test]
fn auth_is_required_and_checked() {
    let sink = SinkProcess::start(&["--auth", "user:secret"]);

    let unauthenticated = loadgen(&sink, &["--messages", "4", "--connections", "1"]);
    assert!(!unauthenticated.success);
    assert_eq!(unauthenticated.field("permfail"), 4, "530 for every MAIL");
    assert_eq!(unauthenticated.field("acked"), 0);

    let wrong = loadgen(
        &sink,
        &[
            "--messages",
            "4",
            "--connections",
            "1",
            "--auth",
            "user:wrong",
        ],
    );
    assert!(!wrong.success);
    assert_eq!(wrong.field("conn_errors"), 1);
    assert_eq!(wrong.field("acked"), 0);

    let right = loadgen(
        &sink,
        &[
            "--messages",
            "4",
            "--connections",
            "2",
            "--auth",
            "user:secret",
        ],
    );
    assert!(right.success, "{} {}", right.stdout, right.stderr);
    let log = sink.log();
    assert_eq!(log.len(), 4);
    assert!(log.iter().all(|entry| entry["auth"] == "user"));
}

#[test]
fn rate_limit_spreads_messages_and_still_delivers_all() {
    let sink = SinkProcess::start(&[]);
    let run = loadgen(
        &sink,
        &["--messages", "20", "--rate", "200", "--size", "10"],
    );
    assert!(run.success, "{} {}", run.stdout, run.stderr);
    assert_eq!(sink.log().len(), 20);
}

#[test]
fn unreachable_server_is_a_connection_error() {
    // Bind and drop to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = common::run_guarded(std::process::Command::new(common::LOADGEN).args([
        "--server",
        &format!("127.0.0.1:{port}"),
        "--messages",
        "3",
        "--connections",
        "1",
    ]));
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("acked=0"), "{stdout}");
    assert!(stdout.contains("conn_errors=1"), "{stdout}");
}

#[test]
fn bad_arguments_exit_with_2() {
    for args in [
        &["--messages", "1"][..],
        &["--server", "127.0.0.1:1"][..],
        &["--server", "127.0.0.1:1", "--messages", "x"][..],
        &[
            "--server",
            "127.0.0.1:1",
            "--messages",
            "1",
            "--timeout",
            "-1",
        ][..],
        &["--server", "127.0.0.1:1", "--messages", "1", "--bogus"][..],
    ] {
        let output = common::run_guarded(std::process::Command::new(common::LOADGEN).args(args));
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
    let output = common::run_guarded(std::process::Command::new(common::SINK).args([
        "--listen",
        "127.0.0.1:0",
        "--fault",
        "nope=1",
    ]));
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn acks_file_times_each_acknowledged_message() {
    let sink = SinkProcess::start(&[]);
    let acks_path = sink.ids_path().with_file_name("acks.txt");
    let run = loadgen(
        &sink,
        &[
            "--messages",
            "50",
            "--connections",
            "5",
            "--size",
            "500",
            "--acks-file",
            acks_path.to_str().unwrap(),
        ],
    );
    assert!(run.success, "{} {}", run.stdout, run.stderr);
    let acks = read_lines(&acks_path);
    assert_eq!(acks.len(), 50);
    let logged: BTreeSet<String> = sink.logged_message_ids().into_iter().collect();
    for line in &acks {
        let (id, micros) = line.rsplit_once(' ').expect("ID MICROS");
        assert!(logged.contains(id), "{id} acked but not at the sink");
        let acked_us: u64 = micros.parse().unwrap();
        // The sink logs (µs) before it sends the 250 the loadgen times.
        let entry = sink
            .log()
            .into_iter()
            .find(|e| e["message_id"] == id)
            .unwrap();
        assert!(entry["time_us"].as_u64().unwrap() <= acked_us);
        assert_eq!(
            entry["time_ms"].as_u64().unwrap(),
            entry["time_us"].as_u64().unwrap() / 1000
        );
    }
}
