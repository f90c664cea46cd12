//! Suppression end to end, against the real daemon, the real sink and
//! smtplib: a hard 5xx from the sink classifies the bounce and suppresses
//! the address, the next injection drops it (the other recipients still
//! go), `sendctl suppression` shows and edits the lists, and soft 5xx or
//! 4xx replies suppress nothing.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Daemon, DaemonConfig, Sink, ctl, sendctl, smtplib_send, smtplib_try};

const LONG: Duration = Duration::from_secs(60);

fn suppressed(daemon: &Daemon, address: &str) -> bool {
    ctl(daemon, &["suppression", "check", address])["suppressed"] == true
}

fn for_recipient<'a>(events: &'a [Value], recipient: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["recipient"] == recipient)
        .collect()
}

#[test]
fn a_hard_bounce_suppresses_and_the_next_injection_drops_the_address() {
    let sink = Sink::start(&[
        "--fault",
        "rcpt~gone=550 5.1.1 no such user",
        "--fault",
        "rcpt~spam=550 5.7.1 spam rejected",
        "--fault",
        "rcpt~later=451 4.2.0 try again later",
    ]);
    let daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    let first = [
        "gone@example.net",
        "ok1@example.net",
        "spam@example.net",
        "later@example.net",
    ];
    smtplib_send(daemon.addr, "app@example.com", &first, "<first@test>");

    // The hard bounce: classified, then suppressed.
    let suppressions = daemon.wait_events("suppression", 1, LONG);
    assert_eq!(suppressions[0]["recipient"], "gone@example.net");
    assert_eq!(suppressions[0]["bounce_class"], "bad-mailbox");
    let bounces = daemon.wait_events("bounce", 2, LONG);
    let gone = for_recipient(&bounces, "gone@example.net");
    assert_eq!(gone[0]["bounce_class"], "bad-mailbox");
    assert_eq!(gone[0]["reply"]["enhanced"], "5.1.1");
    // A policy 5xx bounces (classified) but does not suppress; nor does a 4xx.
    let spam = for_recipient(&bounces, "spam@example.net");
    let spam_class = spam[0]["bounce_class"].as_str().expect("classified");
    assert_ne!(spam_class, "bad-mailbox");
    daemon.wait_events("transient_failure", 1, LONG);
    assert!(suppressed(&daemon, "gone@example.net"));
    assert!(
        suppressed(&daemon, "GONE@Example.NET"),
        "case does not matter"
    );
    assert!(!suppressed(&daemon, "spam@example.net"));
    assert!(!suppressed(&daemon, "later@example.net"));
    let check = ctl(&daemon, &["suppression", "check", "gone@example.net"]);
    assert_eq!(check["entries"][0]["reason"], "bad-mailbox");
    let source = check["entries"][0]["source"].as_str().unwrap();
    assert!(source.contains("550 5.1.1"), "{source}");
    sink.wait_messages(1, LONG);

    // Next injection: the suppressed address is dropped, the other goes.
    smtplib_send(
        daemon.addr,
        "app@example.com",
        &["gone@example.net", "ok2@example.net"],
        "<second@test>",
    );
    let got = sink.wait_messages(2, LONG);
    let second = got
        .iter()
        .find(|m| m["message_id"] == "<second@test>")
        .expect("the second message reached the sink");
    assert_eq!(second["rcpts"], serde_json::json!(["ok2@example.net"]));
    let suppressions = daemon.wait_events("suppression", 2, LONG);
    let dropped = &suppressions[1];
    assert_eq!(dropped["recipient"], "gone@example.net");
    assert_eq!(
        dropped["reply"]["text"],
        "recipient is on the suppression list"
    );
    assert_eq!(dropped["header_message_id"], "<second@test>");
    assert_ne!(dropped["message_id"], "", "the queue id of what was kept");

    // Every recipient suppressed: the message is refused, nothing queued.
    let refused = smtplib_try(daemon.addr, "app@example.com", &["gone@example.net"], "");
    assert!(
        refused.trim() == "550 5.7.1 All recipients are on the suppression list",
        "{refused}"
    );
    daemon.wait_events("suppression", 3, LONG);

    // Removing it lets mail through again (and the sink bounces it again).
    let listed = ctl(&daemon, &["suppression", "list"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["address"], "gone@example.net");
    ctl(&daemon, &["suppression", "remove", "gone@example.net"]);
    assert!(!suppressed(&daemon, "gone@example.net"));
    let accepted = smtplib_try(daemon.addr, "app@example.com", &["gone@example.net"], "");
    assert_eq!(accepted.trim(), "250");
    let bounces = daemon.wait_events("bounce", 3, LONG);
    assert_eq!(for_recipient(&bounces, "gone@example.net").len(), 2);
}

#[test]
fn operators_edit_tenant_and_global_lists_with_sendctl() {
    let sink = Sink::start(&[]);
    let daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    let added = ctl(
        &daemon,
        &[
            "suppression",
            "add",
            "Someone@example.net",
            "--tenant",
            "acme",
            "--reason",
            "complaint",
        ],
    );
    assert_eq!(added["added"], true);
    let in_acme = ctl(
        &daemon,
        &[
            "suppression",
            "check",
            "someone@example.net",
            "--tenant",
            "acme",
        ],
    );
    assert_eq!(in_acme["suppressed"], true);
    assert_eq!(in_acme["entries"][0]["reason"], "complaint");
    assert!(
        !suppressed(&daemon, "someone@example.net"),
        "a tenant's entry is not on the global list"
    );

    // A global entry applies to every tenant, and to untenanted mail.
    ctl(&daemon, &["suppression", "add", "trap@example.net"]);
    let for_acme = ctl(
        &daemon,
        &[
            "suppression",
            "check",
            "trap@example.net",
            "--tenant",
            "acme",
        ],
    );
    assert_eq!(for_acme["suppressed"], true);
    let refused = smtplib_try(daemon.addr, "app@example.com", &["trap@example.net"], "");
    assert!(refused.starts_with("550"), "{refused}");

    let acme = ctl(&daemon, &["suppression", "list", "--tenant", "acme"]);
    assert_eq!(acme[0]["address"], "someone@example.net");
    let table = sendctl(&daemon, &["suppression", "list", "--limit", "10"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("ADDRESS"), "{text}");
    assert!(text.contains("trap@example.net"), "{text}");

    let missing = sendctl(&daemon, &["suppression", "remove", "nobody@example.net"]);
    assert_eq!(missing.status.code(), Some(1), "not on the list");
}
