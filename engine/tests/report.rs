//! `sendctl report` and `sendctl user usage` against the real daemon: mail
//! from two tenants to a sink that accepts some recipients and refuses
//! others (hard, soft, temporarily), one recipient suppressed at admission;
//! the day's figures match the event log exactly, survive a clean stop and
//! a SIGKILL after the write interval, filter by tenant, and an empty day
//! says so. Usage: each limit's used, left and reset time (computed here
//! with `date`, not with the daemon's code).

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::{Daemon, DaemonConfig, Sink, ctl, sendctl};

const LONG: Duration = Duration::from_secs(60);

fn config(sink_port: u16, group_extra: &str, top: &str) -> String {
    format!(
        "[smtp_in]\nlisten = [\"127.0.0.1:0\"]\nrelay_networks = [\"127.0.0.0/8\"]\ndefault_user = \"alpha\"\n\
         [delivery]\nretry_schedule = [\"1h\"]\n\
         [[delivery_server]]\nname = \"sink\"\nhost = \"127.0.0.1\"\nport = {sink_port}\ntimeout = \"5s\"\n\
         [[user_group]]\nname = \"default\"\nmarketing = [\"sink\"]\ntransactional = [\"sink\"]\nautoresponder = [\"sink\"]\n{group_extra}\n\
         [[user]]\nname = \"alpha\"\n[[user]]\nname = \"beta\"\npassword = \"pw\"\n{top}"
    )
}

/// Sends one message with smtplib, as `user` (AUTH, password "pw") or as
/// the relay network's default user; returns "250" or the refusal.
fn send(daemon: &Daemon, user: Option<&str>, from: &str, rcpts: &[&str], headers: &str) -> String {
    let login = user.map(|u| (u, "pw"));
    support::smtplib_try_as(daemon.addr, login, from, rcpts, headers)
}

/// The totals the event log implies, counted here independently.
fn totals_from_events(events: &[Value], tenant: Option<&str>) -> Value {
    let mut n: HashMap<&str, u64> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for e in events {
        if tenant.is_some_and(|t| e["tenant"] != t) {
            continue;
        }
        let size = e["size"].as_u64().unwrap();
        match e["type"].as_str().unwrap() {
            "reception" => {
                *n.entry("received").or_default() += 1;
                if seen.insert(e["message_id"].as_str().unwrap().to_owned()) {
                    *n.entry("messages").or_default() += 1;
                    *n.entry("bytes_in").or_default() += size;
                }
            }
            "delivery" => {
                *n.entry("delivered").or_default() += 1;
                *n.entry("bytes_out").or_default() += size;
            }
            "transient_failure" => *n.entry("deferred").or_default() += 1,
            "bounce" if e["bounce_type"] == "hard" => *n.entry("bounced_hard").or_default() += 1,
            "bounce" => *n.entry("bounced_soft").or_default() += 1,
            "suppression" if e["attempt"] == 0 => *n.entry("suppressed").or_default() += 1,
            "click" => *n.entry("clicks").or_default() += 1,
            "open" => *n.entry("opens").or_default() += 1,
            _ => {}
        }
    }
    let g = |k: &str| n.get(k).copied().unwrap_or(0);
    json!({
        "received": g("received"), "messages": g("messages"), "delivered": g("delivered"),
        "deferred": g("deferred"), "bounced": g("bounced_hard") + g("bounced_soft"),
        "bounced_hard": g("bounced_hard"), "bounced_soft": g("bounced_soft"),
        "expired": 0, "suppressed": g("suppressed"), "complaints": 0,
        "bytes_in": g("bytes_in"), "bytes_out": g("bytes_out"),
        "clicks": g("clicks"), "opens": g("opens"),
    })
}

/// The entry `name` of a report table's top list.
fn entry<'a>(report: &'a Value, table: &str, name: &str) -> &'a Value {
    report[table]["top"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {table}: {report}"))
}

#[test]
fn the_days_figures_match_the_events_and_survive_restarts() {
    let sink = Sink::start(&[
        "--fault",
        "rcpt~hard=550 5.1.1 no such user here",
        "--fault",
        "rcpt~full=552 5.2.2 mailbox full",
        "--fault",
        "rcpt~later=451 4.2.1 try again later",
    ]);
    let mut daemon = Daemon::start(DaemonConfig::custom(&config(sink.addr.port(), "", "")));
    ctl(
        &daemon,
        &[
            "suppression",
            "add",
            "blocked@example.net",
            "--tenant",
            "alpha",
        ],
    );

    let campaign = "X-Campaign-Id: spring|";
    let rcpts = ["ok1@example.net", "hard@example.net", "full@example.org"];
    assert_eq!(send(&daemon, None, "a@alpha.test", &rcpts, campaign), "250");
    let rcpts = [
        "ok2@example.org",
        "later@example.net",
        "blocked@example.net",
    ];
    assert_eq!(send(&daemon, None, "a@alpha.test", &rcpts, ""), "250");
    assert_eq!(
        send(
            &daemon,
            Some("beta"),
            "b@beta.test",
            &["ok3@example.net"],
            ""
        ),
        "250"
    );
    daemon.wait_events("delivery", 3, LONG);
    daemon.wait_events("bounce", 2, LONG);
    daemon.wait_events("transient_failure", 1, LONG);

    let report = ctl(&daemon, &["report", "today"]);
    let events = daemon.events();
    let expected = totals_from_events(&events, None);
    assert_eq!(report["totals"], expected, "{report}");
    // And the numbers themselves, so that a broken event log cannot hide a bug.
    let counts: Vec<u64> = [
        "received",
        "messages",
        "delivered",
        "deferred",
        "bounced_hard",
        "bounced_soft",
        "suppressed",
    ]
    .iter()
    .map(|k| report["totals"][k].as_u64().unwrap())
    .collect();
    assert_eq!(counts, [6, 3, 3, 1, 1, 1, 1]);
    let t = &report["totals"];
    assert!(t["bytes_in"].as_u64().unwrap() > 0 && t["bytes_out"].as_u64().unwrap() > 0);
    assert_eq!(report["scope"], "node");
    assert_eq!(entry(&report, "campaigns", "spring")["received"], 3);
    assert_eq!(entry(&report, "routes", "sink")["delivered"], 3);
    assert_eq!(entry(&report, "routes", "sink")["deferred"], 1);
    assert_eq!(
        entry(&report, "bounce_reasons", "bad-mailbox")["bounced_hard"],
        1
    );
    assert_eq!(
        entry(&report, "bounce_reasons", "quota-issues")["bounced_soft"],
        1
    );
    assert_eq!(
        entry(&report, "recipient_domains", "example.org")["received"],
        2
    );
    assert_eq!(entry(&report, "senders", "a@alpha.test")["received"], 5);
    assert_eq!(entry(&report, "senders", "b@beta.test")["delivered"], 1);
    let alpha = report["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "alpha");
    assert_eq!(alpha.map(|r| &r["received"]), Some(&json!(5)), "{report}");

    let beta = ctl(&daemon, &["report", "today", "--tenant", "beta"]);
    assert_eq!(
        beta["totals"],
        totals_from_events(&events, Some("beta")),
        "{beta}"
    );
    assert_eq!(beta["totals"]["received"], 1);
    assert_eq!(beta["tenant"], "beta");

    let human = sendctl(&daemon, &["report", "today"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.status.success(),
        "{}",
        String::from_utf8_lossy(&human.stderr)
    );
    assert!(
        text.contains("Received    6 recipients in 3 messages"),
        "{text}"
    );
    assert!(text.contains("Bounced     2 (hard 1, soft 1)"), "{text}");
    assert!(text.contains("\nTop recipient domains\nDOMAIN"), "{text}");
    assert!(text.contains("\nCampaigns\nCAMPAIGN"), "{text}");

    // A clean stop and start: the same figures, from the spool.
    assert!(daemon.stop().success());
    daemon.restart();
    assert_eq!(ctl(&daemon, &["report", "today"])["totals"], expected);

    // One more message, then SIGKILL after the write interval (1 s, plus
    // the event thread's idle tick): nothing of it is lost.
    assert_eq!(
        send(
            &daemon,
            Some("beta"),
            "b@beta.test",
            &["ok4@example.net"],
            ""
        ),
        "250"
    );
    daemon.wait_events("delivery", 4, LONG);
    std::thread::sleep(Duration::from_millis(2500));
    daemon.kill9();
    daemon.restart();
    let after = ctl(&daemon, &["report", "today"]);
    assert_eq!(
        after["totals"],
        totals_from_events(&daemon.events(), None),
        "{after}"
    );
    assert_eq!(after["totals"]["received"], 7);
    assert_eq!(after["totals"]["delivered"], 4);
}

#[test]
fn a_day_without_mail_says_so_and_a_bad_date_is_refused() {
    let sink = Sink::start(&[]);
    let daemon = Daemon::start(DaemonConfig::custom(&config(sink.addr.port(), "", "")));
    let yesterday = ctl(&daemon, &["report", "yesterday"]);
    assert_eq!(yesterday["empty"], true);
    assert_eq!(yesterday["totals"]["received"], 0);
    let human = sendctl(&daemon, &["report", "yesterday"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.starts_with("No activity recorded on ")
            && text.contains("(UTC) for all tenants on this node."),
        "{text}"
    );
    let dated = ctl(&daemon, &["report", "--date", "2026-01-31"]);
    assert_eq!(dated["date"], "2026-01-31");

    let bad = sendctl(&daemon, &["report", "--date", "2026-02-30"]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("`2026-02-30` is not a date; give today, yesterday or YYYY-MM-DD"),
        "{err}"
    );
    let twice = sendctl(&daemon, &["report", "today", "--date", "2026-01-31"]);
    assert_eq!(
        twice.status.code(),
        Some(2),
        "a day and --date: a usage error"
    );
}

/// `date -u -d WHEN`, in the daemon's RFC 3339 form.
fn date(when: &str) -> String {
    date_as(when, "+%Y-%m-%dT%H:%M:%S.000Z")
}

fn date_as(when: &str, format: &str) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", when, format])
        .output()
        .expect("run date");
    assert!(out.status.success(), "date -d {when} {format}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn usage_shows_each_limit_used_left_and_when_it_frees() {
    let sink = Sink::start(&[]);
    let group = "daily_limit = 10\nmonthly_limit = 100\nlifetime_limit = 1000\n\
                 sender_domain_management = true\ndefault_sender_domain = \"shared.example\"\ndefault_domain_limit = 5\n";
    let own = "[[sender_domain]]\ndomain = \"own.example\"\nowner = \"alpha\"\n";
    let daemon = Daemon::start(DaemonConfig::custom(&config(sink.addr.port(), group, own)));
    let two = ["r1@example.net", "r2@example.net"];
    assert_eq!(send(&daemon, None, "news@own.example", &two, ""), "250");
    assert_eq!(
        send(&daemon, None, "x@shared.example", &["r3@example.net"], ""),
        "250"
    );

    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let midnight = secs - secs % 86_400;
    let tomorrow = date(&format!("@{}", midnight + 86_400));
    let in_30_days = date(&format!("@{}", midnight + 30 * 86_400));
    let first_of_month = date_as(&format!("@{secs}"), "+%Y-%m-01");
    let next_month = date(&format!("{first_of_month} +1 month"));

    let usage = ctl(&daemon, &["user", "usage", "alpha"]);
    assert_eq!(usage["scope"], "node");
    let rows = usage["quotas"].as_array().unwrap();
    let line = |r: &Value| {
        (
            r["quota"].as_str().unwrap().to_owned(),
            r["limit"].clone(),
            r["used"].clone(),
            r["left"].clone(),
            r["resets"].as_str().unwrap().to_owned(),
            r["frees"].clone(),
        )
    };
    let got: Vec<_> = rows.iter().map(line).collect();
    let want = vec![
        (
            "daily".to_owned(),
            json!(10),
            json!(3),
            json!(7),
            tomorrow,
            json!(3),
        ),
        (
            "monthly".to_owned(),
            json!(100),
            json!(3),
            json!(97),
            next_month,
            json!(3),
        ),
        (
            "lifetime".to_owned(),
            json!(1000),
            json!(3),
            json!(997),
            "never".to_owned(),
            Value::Null,
        ),
        (
            "default domain (rolling 30-day)".to_owned(),
            json!(5),
            json!(1),
            json!(4),
            in_30_days,
            json!(1),
        ),
    ];
    assert_eq!(got, want, "{usage}");

    let human = sendctl(&daemon, &["user", "usage", "alpha"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("LEFT") && text.contains("RESETS") && text.contains("never"),
        "{text}"
    );
}
