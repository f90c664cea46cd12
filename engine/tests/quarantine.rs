//! A spool row damaged while the daemon was stopped (garbage written into
//! the recipient table with redb): the daemon starts anyway, moves the row
//! to the quarantine (with one log line), shows it in `sendctl status`, and
//! delivers the rest of the queue.

mod support;

use std::path::Path;
use std::time::Duration;

use redb::{Database, TableDefinition};
use sendengine_queue::parse_id;
use support::{Daemon, DaemonConfig, Sink, ctl, free_port, sendctl, smtplib_send};

/// The spool's recipient table, as queue/src/store/mod.rs defines it.
const RECIPIENTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("recipients");
const LONG: Duration = Duration::from_secs(60);

fn corrupt_recipient_row(spool_file: &Path, id: u64) {
    let db = Database::create(spool_file).expect("open the stopped daemon's spool");
    let txn = db.begin_write().unwrap();
    txn.open_table(RECIPIENTS)
        .unwrap()
        .insert((id, 0), b"\x09damaged".as_slice())
        .unwrap();
    txn.commit().unwrap();
}

#[test]
fn a_damaged_row_is_quarantined_and_the_rest_is_delivered() {
    // Nothing listens on the relay's port yet: both messages stay queued.
    let relay_port = free_port();
    let mut daemon = Daemon::start(DaemonConfig::new(relay_port));
    smtplib_send(
        daemon.addr,
        "app@example.com",
        &["a@example.net"],
        "<damaged@test>",
    );
    smtplib_send(
        daemon.addr,
        "app@example.com",
        &["b@example.net"],
        "<intact@test>",
    );
    let received = daemon.wait_events("reception", 2, LONG);
    let id_of = |msgid: &str| {
        let event = received
            .iter()
            .find(|e| e["header_message_id"] == msgid)
            .unwrap_or_else(|| panic!("no reception event for {msgid}"));
        parse_id(event["message_id"].as_str().unwrap()).unwrap()
    };
    let damaged = id_of("<damaged@test>");
    assert!(daemon.stop().success());
    corrupt_recipient_row(&daemon.dir.path().join("spool/spool.redb"), damaged);

    // The log line comes before "ready", among the lines the start-up wait
    // reads; the status is what this test checks.
    daemon.restart();
    let status = ctl(&daemon, &["status"]);
    assert_eq!(status["queue"]["quarantined"], 1, "{status}");
    assert_eq!(status["queue"]["messages"], 1, "{status}");
    let text = String::from_utf8_lossy(&sendctl(&daemon, &["status"]).stdout).into_owned();
    assert!(text.contains("quarantined"), "{text}");

    let sink = Sink::start_on(relay_port, &[]);
    ctl(&daemon, &["queue", "flush"]);
    daemon.wait_events("delivery", 1, LONG);
    let delivered = sink.wait_messages(1, LONG);
    assert_eq!(delivered.len(), 1);
    assert!(
        delivered[0].to_string().contains("intact@test"),
        "{}",
        delivered[0]
    );
    let status = ctl(&daemon, &["status"]);
    assert_eq!(status["queue"]["messages"], 0, "{status}");
    assert_eq!(status["queue"]["quarantined"], 1, "{status}");
}
