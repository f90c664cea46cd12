//! `sendctl log` against the real daemon: mail delivered to a sink makes
//! the events; `sendctl log` filters them, pages back to the end, prints
//! JSON and a table, refuses bad filters, follows new events like
//! `tail -f`, and keeps paging and following when the file is rotated.

mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use support::{Daemon, DaemonConfig, Sink, ctl, sendctl, smtplib_try, wait_for};

const LONG: Duration = Duration::from_secs(30);

fn send(daemon: &Daemon, rcpt: &str, campaign: &str) {
    let header = format!("X-Campaign-Id: {campaign}|");
    let reply = smtplib_try(daemon.addr, "app@shop.example", &[rcpt], &header);
    assert_eq!(reply, "250", "sending to {rcpt}");
}

fn events(result: &Value) -> Vec<Value> {
    result["events"].as_array().cloned().unwrap_or_default()
}

fn recipients(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|e| e["recipient"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// `sendctl --json log ...` events.
fn log(daemon: &Daemon, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["log"];
    all.extend_from_slice(args);
    events(&ctl(daemon, &all))
}

/// Every page of `--limit 3` from the newest back to the log's start.
fn all_pages(daemon: &Daemon, filters: &[&str]) -> Vec<Value> {
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..100 {
        let mut args = vec!["log", "--limit", "3"];
        args.extend_from_slice(filters);
        if let Some(cursor) = &before {
            args.extend_from_slice(&["--before", cursor]);
        }
        let page = ctl(daemon, &args);
        let got = events(&page);
        assert!(got.len() <= 3);
        seen.extend(got);
        match page["next"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => return seen,
        }
    }
    panic!("paging did not end");
}

/// `sendctl log --follow --json ...` with its lines on a channel.
struct Follower {
    child: std::process::Child,
    lines: mpsc::Receiver<Value>,
}

impl Follower {
    fn start(daemon: &Daemon, args: &[&str]) -> Follower {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sendctl"))
            .arg("--socket")
            .arg(daemon.admin_socket())
            .args(["--json", "log", "--follow"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run sendctl log --follow");
        let stdout = child.stdout.take().expect("follower stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let event = serde_json::from_str(&line).expect("--follow --json prints JSON lines");
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        Follower { child, lines }
    }

    fn next(&self) -> Value {
        self.lines.recv_timeout(LONG).expect("a followed event")
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sendctl_log_filters_pages_follows_and_survives_a_rotation() {
    let sink = Sink::start(&[]);
    let daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    for n in 0..5 {
        let campaign = if n % 2 == 0 { "spring" } else { "autumn" };
        send(&daemon, &format!("rcpt{n}@example.net"), campaign);
    }
    daemon.wait_events("delivery", 5, LONG);

    // Newest first; every filter selects by its field.
    let deliveries = log(&daemon, &["--type", "delivery"]);
    assert_eq!(deliveries.len(), 5);
    let times: Vec<&str> = deliveries
        .iter()
        .map(|e| e["time"].as_str().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    let everything = log(&daemon, &[]);
    assert_eq!(everything.len(), 10, "a reception and a delivery each");
    assert_eq!(everything.len(), daemon.events().len());
    let rcpt2 = log(&daemon, &["--recipient", "RCPT2@Example.NET"]);
    assert_eq!(recipients(&rcpt2), ["rcpt2@example.net"; 2]);
    let spring = log(&daemon, &["--campaign", "spring", "--type", "delivery"]);
    assert_eq!(
        recipients(&spring),
        [
            "rcpt4@example.net",
            "rcpt2@example.net",
            "rcpt0@example.net"
        ]
    );
    let route = deliveries[0]["route"]
        .as_str()
        .expect("a delivery names its route");
    assert_eq!(
        log(&daemon, &["--route", route, "--type", "delivery"]).len(),
        5
    );
    assert_eq!(
        log(&daemon, &["--sender", "@SHOP.example", "--since", "1h"]).len(),
        10
    );
    assert!(log(&daemon, &["--since", "2099-01-01T00:00:00Z"]).is_empty());
    assert!(log(&daemon, &["--tenant", "nobody"]).is_empty());

    // Paging to the end gives every event once, in the same order.
    let paged = all_pages(&daemon, &[]);
    assert_eq!(paged, everything);
    let ids: HashSet<String> = paged.iter().map(|e| e.to_string()).collect();
    assert_eq!(ids.len(), 10);

    // The table: a header, one row per event, how to get the next page.
    let out = sendctl(&daemon, &["log", "--type", "delivery", "--limit", "2"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("RECIPIENT"),
        "{text}"
    );
    assert!(
        lines[1].contains("delivery") && lines[1].contains("rcpt4@example.net"),
        "{text}"
    );
    assert!(lines[1].contains("250"), "the reply: {text}");
    assert!(
        lines[3].starts_with("next page: sendctl log --limit 2 --type delivery --before "),
        "{text}"
    );

    // Bad filters: a clear error naming the field, exit 1.
    for (args, says) in [
        (
            &["log", "--type", "delivered"][..],
            "delivery, transient_failure",
        ),
        (&["log", "--since", "10"][..], "unit"),
        (&["log", "--limit", "0"][..], "limit"),
        (&["log", "--before", "zz"][..], "not a cursor"),
    ] {
        let out = sendctl(&daemon, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }

    // Follow: the newest delivery, then each new one.
    let follower = Follower::start(&daemon, &["--type", "delivery", "--limit", "1"]);
    assert_eq!(follower.next()["recipient"], "rcpt4@example.net");
    send(&daemon, "late@example.net", "spring");
    assert_eq!(follower.next()["recipient"], "late@example.net");

    // A page cursor taken before the file is rotated.
    let before_rotation = ctl(&daemon, &["log", "--type", "delivery", "--limit", "2"]);
    let cursor = before_rotation["next"].as_str().unwrap().to_owned();

    // Rotate as logrotate would: move the file away (to `.1`, where the
    // daemon's own rotation puts it) and tell the daemon to reopen.
    let rotated = format!("{}.1", daemon.events_path().display());
    std::fs::rename(daemon.events_path(), &rotated).unwrap();
    daemon.signal("HUP");
    wait_for(LONG, "the daemon to reopen the event log", || {
        daemon.events_path().exists().then_some(())
    });
    send(&daemon, "after@example.net", "autumn");
    daemon.wait_events("delivery", 1, LONG);

    assert_eq!(follower.next()["recipient"], "after@example.net");
    let newest = log(&daemon, &["--type", "delivery", "--limit", "3"]);
    assert_eq!(
        recipients(&newest),
        ["after@example.net", "late@example.net", "rcpt4@example.net"]
    );
    let older = log(
        &daemon,
        &["--type", "delivery", "--limit", "2", "--before", &cursor],
    );
    assert_eq!(
        recipients(&older),
        ["rcpt3@example.net", "rcpt2@example.net"]
    );
    assert_eq!(all_pages(&daemon, &["--type", "delivery"]).len(), 7);
}
