//! Nodes know each other (#17): three real daemons on one PostgreSQL.
//! `sendctl fleet status` lists them with their figures, drops a node
//! stopped with SIGTERM at once and one killed with SIGKILL after the
//! liveness window, and forgets a node that is not live on request; a
//! second node under a name in use refuses to start;
//! a fleet queue action issued on one node holds and releases a
//! campaign's mail on the others.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::fleet::FleetPlace;
use support::{Daemon, DaemonConfig, Sink, ctl, free_port, sendctl, smtplib_try, wait_for};

const LONG: Duration = Duration::from_secs(30);

/// A node of `place` named `name`, delivering to `sink_port`; deferred
/// mail waits an hour (tests flush it).
fn node(place: &FleetPlace, name: &str, sink_port: u16) -> Daemon {
    let mut config = DaemonConfig::new(sink_port);
    config.extra_top = place.node_config(name);
    config.extra_delivery = "retry_schedule = [\"1h\"]\nfailover_backoff = \"1s\"\n".into();
    Daemon::start(config)
}

fn fleet_status(daemon: &Daemon, all: bool) -> Value {
    let mut args = vec!["fleet", "status"];
    if all {
        args.push("--all");
    }
    ctl(daemon, &args)
}

fn names(status: &Value) -> Vec<String> {
    status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["name"].as_str().expect("name").to_owned())
        .collect()
}

fn state_of(status: &Value, name: &str) -> String {
    let nodes = status["nodes"].as_array().expect("nodes");
    let node = nodes.iter().find(|n| n["name"] == name);
    node.map(|n| n["state"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

#[test]
fn fleet_status_lists_the_nodes_then_loses_stopped_and_killed_ones() {
    let Some(place) = FleetPlace::new("fleet_status", false) else {
        return;
    };
    let port = free_port();
    let a = node(&place, "a", port);
    let mut b = node(&place, "b", port);
    let mut c = node(&place, "c", port);

    let status = wait_for(LONG, "three live nodes", || {
        let s = fleet_status(&a, false);
        (names(&s) == ["a", "b", "c"]).then_some(s)
    });
    assert_eq!(status["node"], "a");
    for n in status["nodes"].as_array().unwrap() {
        assert_eq!(n["state"], "live", "{n}");
        assert_eq!(n["version"], env!("CARGO_PKG_VERSION"), "{n}");
        assert!(n["up_since"].as_str().unwrap().ends_with('Z'), "{n}");
        assert!(n["last_seen"].as_str().is_some(), "{n}");
        assert!(n["last_seen_age_seconds"].as_f64().unwrap() < 5.0, "{n}");
        assert_eq!(n["queue_size"], 0, "{n}");
        assert_eq!(n["connections"], 0, "{n}");
        assert!(n["delivery_rate_per_minute"].is_number(), "{n}");
    }
    let human = sendctl(&b, &["fleet", "status"]);
    assert!(human.status.success());
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.starts_with("NODE"), "{text}");
    for name in ["a", "b", "c"] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{text}"
        );
    }

    // A graceful stop marks the row at once.
    assert!(c.stop().success());
    assert_eq!(names(&fleet_status(&a, false)), ["a", "b"]);
    assert_eq!(state_of(&fleet_status(&a, true), "c"), "stopped");

    // A killed node says nothing: it ages out of the live list.
    b.kill9();
    let killed = Instant::now();
    wait_for(LONG, "b gone from the live nodes", || {
        (names(&fleet_status(&a, false)) == ["a"]).then_some(())
    });
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "the liveness window is 5 s: {:?}",
        killed.elapsed()
    );
    let all = fleet_status(&a, true);
    assert_eq!(names(&all), ["a", "b", "c"]);
    assert_eq!(state_of(&all, "b"), "lost");
    assert_eq!(state_of(&all, "a"), "live");

    // The operator drops the rows of nodes that are gone for good, never a
    // live one's.
    assert_eq!(ctl(&a, &["fleet", "forget", "c"])["was"], "stopped");
    assert_eq!(ctl(&a, &["fleet", "forget", "b"])["was"], "lost");
    assert_eq!(names(&fleet_status(&a, true)), ["a"]);
    for (name, code) in [("a", "node_live"), ("b", "not_found")] {
        let out = sendctl(&a, &["--json", "fleet", "forget", name]);
        assert!(!out.status.success(), "forget {name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(code), "forget {name}: {err}");
    }
    assert_eq!(names(&fleet_status(&a, true)), ["a"]);
    // A forgotten node that runs again is listed again.
    let c = node(&place, "c", port);
    wait_for(LONG, "c live again", || {
        (names(&fleet_status(&a, false)) == ["a", "c"]).then_some(())
    });
    drop(c);
}

#[test]
fn a_second_node_under_a_name_in_use_refuses_to_start() {
    let Some(place) = FleetPlace::new("fleet_names", false) else {
        return;
    };
    let first = node(&place, "twin", free_port());
    wait_for(LONG, "the first twin live", || {
        (names(&fleet_status(&first, false)) == ["twin"]).then_some(())
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let config = format!(
        "hostname = \"mta.test\"\n{top}\n[spool]\ndir = \"{d}/spool\"\n[smtp_in]\n\
         listen = [\"127.0.0.1:0\"]\n[events]\npath = \"{d}/events.jsonl\"\n\
         [admin]\nsocket = \"{d}/admin.sock\"\n[[delivery_server]]\nname = \"s\"\n\
         host = \"127.0.0.1\"\nport = 25\n",
        top = place.node_config("twin"),
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).expect("write config");
    let mut second = Command::new(support::daemon_binary())
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the second twin");
    let deadline = Instant::now() + LONG;
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("the second node under a name in use kept running");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    use std::io::Read as _;
    let _ = second.stderr.take().unwrap().read_to_string(&mut stderr);
    assert!(!status.success());
    assert!(
        stderr.contains("node name `twin` is in use by a running node"),
        "{stderr}"
    );
    // The first one is untouched.
    assert_eq!(state_of(&fleet_status(&first, false), "twin"), "live");
}

#[test]
fn fleet_commands_on_a_standalone_node_say_it_is_not_in_a_cluster() {
    let daemon = Daemon::start(DaemonConfig::new(free_port()));
    for args in [
        &["fleet", "status"][..],
        &["fleet", "queue", "suspend", "--campaign", "x"],
    ] {
        let out = sendctl(&daemon, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("not_clustered: this node is not in a cluster"),
            "{stderr}"
        );
    }
}

fn send(daemon: &Daemon, rcpt: &str, campaign: &str) {
    let headers = format!("X-Campaign-Id: {campaign}|");
    let reply = smtplib_try(daemon.addr, "a@example.com", &[rcpt], &headers);
    assert_eq!(reply, "250", "{rcpt}");
}

/// `result["nodes"]` as node -> its `changed` count.
fn changed_per_node(result: &Value) -> Vec<(String, u64)> {
    result["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            assert_eq!(n["done"], true, "{result}");
            let name = n["node"].as_str().unwrap().to_owned();
            (name, n["changed"].as_u64().expect("changed"))
        })
        .collect()
}

fn delivered_to(sink: &Sink) -> Vec<String> {
    let mut rcpts: Vec<String> = sink
        .messages()
        .iter()
        .flat_map(|m| m["rcpts"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    rcpts.sort();
    rcpts
}

#[test]
fn a_fleet_suspend_on_one_node_holds_the_campaign_on_the_others_until_resumed() {
    let Some(place) = FleetPlace::new("fleet_actions", false) else {
        return;
    };
    // The sink is down at first: every message waits, deferred for an hour.
    let port = free_port();
    let a = node(&place, "a", port);
    let b = node(&place, "b", port);
    let c = node(&place, "c", port);
    wait_for(LONG, "three live nodes", || {
        (names(&fleet_status(&a, false)).len() == 3).then_some(())
    });
    for (daemon, n) in [(&b, 1), (&c, 2)] {
        send(daemon, &format!("alpha{n}@example.net"), "alpha");
        send(daemon, &format!("beta{n}@example.net"), "beta");
        daemon.wait_events("transient_failure", 2, LONG);
    }

    let suspended = ctl(&a, &["fleet", "queue", "suspend", "--campaign", "alpha"]);
    assert_eq!(suspended["complete"], true, "{suspended}");
    assert_eq!(suspended["issued_by"], "a");
    let expect = |n: [u64; 3]| {
        vec![
            ("a".to_owned(), n[0]),
            ("b".to_owned(), n[1]),
            ("c".to_owned(), n[2]),
        ]
    };
    assert_eq!(changed_per_node(&suspended), expect([0, 1, 1]));

    // The sink comes up and the deferred mail is retried on each node:
    // beta goes, alpha stays held.
    let sink = Sink::start_on(port, &[]);
    for daemon in [&b, &c] {
        ctl(daemon, &["queue", "flush"]);
    }
    sink.wait_messages(2, LONG);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        delivered_to(&sink),
        ["beta1@example.net", "beta2@example.net"]
    );
    for daemon in [&b, &c] {
        let rows = ctl(daemon, &["queue", "list"]);
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0]["campaign"], "alpha");
        assert_eq!(rows[0]["status"], "suspended");
    }
    let human = sendctl(&b, &["fleet", "queue", "resume", "--campaign", "alpha"]);
    assert!(human.status.success());
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("applied by all 3 nodes"), "{text}");
    sink.wait_messages(4, LONG);
    assert_eq!(
        delivered_to(&sink),
        [
            "alpha1@example.net",
            "alpha2@example.net",
            "beta1@example.net",
            "beta2@example.net"
        ]
    );
}

#[test]
fn a_node_that_was_down_applies_the_fleet_action_it_missed_when_it_returns() {
    let Some(place) = FleetPlace::new("fleet_missed", false) else {
        return;
    };
    let port = free_port();
    let a = node(&place, "a", port);
    let mut c = node(&place, "c", port);
    send(&c, "alpha1@example.net", "alpha");
    send(&c, "beta1@example.net", "beta");
    c.wait_events("transient_failure", 2, LONG);
    assert!(c.stop().success());

    // Only the live node is waited for; c is not forgotten.
    let deleted = ctl(&a, &["fleet", "queue", "delete", "--campaign", "alpha"]);
    assert_eq!(changed_per_node(&deleted), [("a".to_owned(), 0)]);
    let refused = sendctl(&a, &["fleet", "queue", "delete"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("give --campaign, --tenant or both"),
        "{stderr}"
    );

    c.restart();
    let events = c.wait_events("admin_action", 1, LONG);
    assert_eq!(events[0]["recipient"], "alpha1@example.net");
    wait_for(LONG, "only beta left on c", || {
        let rows = ctl(&c, &["queue", "list"]);
        let rows = rows.as_array().unwrap().clone();
        (rows.len() == 1 && rows[0]["recipient"] == "beta1@example.net").then_some(())
    });
}

#[test]
fn nodes_come_back_by_themselves_after_their_database_connections_are_cut() {
    let Some(place) = FleetPlace::new("fleet_cut", false) else {
        return;
    };
    let port = free_port();
    let a = node(&place, "a", port);
    let b = node(&place, "b", port);
    wait_for(LONG, "two live nodes", || {
        (names(&fleet_status(&a, false)) == ["a", "b"]).then_some(())
    });
    // As a PostgreSQL restart would: every connection of the nodes dies.
    let db_name = place.database.rsplit('/').next().unwrap().to_owned();
    support::services::psql(
        "test",
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{db_name}' AND pid <> pg_backend_pid()"
        ),
    );
    let cut = Instant::now();
    // An operator's change right after the restart is not refused: the
    // statement runs again on a new connection.
    ctl(&a, &["suppression", "add", "cut@example.net"]);
    // Both rows move again (written after the cut), with no restart.
    wait_for(LONG, "both heartbeats written after the cut", || {
        let s = fleet_status(&b, false);
        let fresh = s["nodes"].as_array().unwrap().iter().all(|n| {
            let age = n["last_seen_age_seconds"].as_f64().unwrap();
            age < cut.elapsed().as_secs_f64() - 0.5
        });
        (names(&s) == ["a", "b"] && fresh && cut.elapsed() > Duration::from_secs(1)).then_some(())
    });
    // And the fleet actions' LISTEN connection is back too.
    let resumed = ctl(&b, &["fleet", "queue", "resume", "--tenant", "t"]);
    assert_eq!(resumed["complete"], true, "{resumed}");
    assert_eq!(changed_per_node(&resumed).len(), 2);
}

#[test]
fn a_node_restarted_right_after_a_crash_takes_its_name_back() {
    let Some(place) = FleetPlace::new("fleet_crash", false) else {
        return;
    };
    let mut a = node(&place, "a", free_port());
    let before = wait_for(LONG, "a live", || {
        let s = fleet_status(&a, false);
        (names(&s) == ["a"]).then(|| s["nodes"][0]["up_since"].clone())
    });
    // Its row still looks alive: the new life waits for it to go quiet
    // instead of refusing the name, as a systemd restart needs.
    a.kill9();
    a.restart();
    let status = fleet_status(&a, false);
    assert_eq!(names(&status), ["a"]);
    assert_ne!(status["nodes"][0]["up_since"], before, "{status}");
}
