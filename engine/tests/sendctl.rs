//! `sendctl` as an operator uses it, against the real daemon, real sinks,
//! a real DNS server and real Unix sockets (issue 18): help and the
//! nearest command, the socket found from the daemon's configuration,
//! errors in the CLI's words, typed `put` flags and `get --json` put back
//! as is, servers that start disabled and show their allocation, `server
//! test` exit status / `--file` / `direct`, the queue's last replies and
//! counts, a departed message's history, the default X-Mailer,
//! `sender_domains_limit = 0`, and where the master key lives.

mod support;

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::dns_server::{DnsServer, RecordData};
use support::{Daemon, DaemonConfig, Sink, ctl, sendctl, sendctl_in, wait_for};

const LONG: Duration = Duration::from_secs(60);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Fails the test unless the command's stderr contains `needle`.
fn stderr_has(out: &Output, needle: &str) {
    let stderr = text(&out.stderr);
    assert!(stderr.contains(needle), "{stderr}");
}

/// `sendctl --json ARGS`, whatever its exit status: (status, JSON result).
fn ctl_any(daemon: &Daemon, args: &[&str]) -> (Option<i32>, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = sendctl(daemon, &all);
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), json)
}

/// sendctl with no `--socket`: it must find the socket itself.
fn bare_sendctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sendctl"))
        .args(args)
        .env_remove("SENDENGINE_SOCKET")
        .env_remove("SENDENGINE_CONFIG")
        .envs(env.iter().copied())
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run sendctl")
}

/// One message from the relay network with extra header lines (`|`-separated).
fn send(daemon: &Daemon, rcpts: &[&str], headers: &str) {
    let got = support::smtplib_try(daemon.addr, "app@example.com", rcpts, headers);
    assert_eq!(got, "250", "{got}");
}

#[test]
fn help_nearest_commands_config_lookup_and_errors_in_cli_words() {
    for args in [&["--help"][..], &["help"], &["-h"], &["help", "queue"]] {
        let out = bare_sendctl(args, &[]);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let usage = text(&out.stdout);
        assert!(usage.starts_with("usage: sendctl"), "{usage}");
        assert!(usage.contains("sendctl queue inspect ID"), "{usage}");
        assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    }
    let wrong = bare_sendctl(&["queue", "lst"], &[]);
    assert_eq!(wrong.status.code(), Some(2));
    stderr_has(&wrong, "did you mean `queue list`?");
    // A help topic that names no command is refused as an unknown command
    // is, not answered with the whole help.
    for (args, hint) in [
        (
            &["help", "nope"][..],
            "unknown help topic `nope` (a command starts with",
        ),
        (
            &["help", "servr"],
            "unknown help topic `servr`; did you mean `server`?",
        ),
        (&["queue", "lst", "--help"], "did you mean `queue list`?"),
    ] {
        let out = bare_sendctl(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        stderr_has(&out, hint);
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
    }
    // A global flag without its value is named, not taken for a missing
    // command.
    for flag in ["--socket", "--config"] {
        let out = bare_sendctl(&[flag], &[]);
        assert_eq!(out.status.code(), Some(2), "{flag}");
        stderr_has(&out, &format!("{flag} needs a value"));
    }

    let sink = Sink::start(&[]);
    let daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    let config = daemon.config_path.display().to_string();
    // The socket from the daemon's own configuration, by flag or variable.
    let by_flag = bare_sendctl(&["--config", &config, "--json", "hello"], &[]);
    assert_eq!(by_flag.status.code(), Some(0), "{}", text(&by_flag.stderr));
    let by_env = bare_sendctl(&["--json", "hello"], &[("SENDENGINE_CONFIG", &config)]);
    assert_eq!(by_env.status.code(), Some(0), "{}", text(&by_env.stderr));
    let no_socket = daemon.dir.path().join("no-admin.toml");
    std::fs::write(
        &no_socket,
        "[spool]\ndir = \"x\"\n[smtp_in]\nlisten = [\"127.0.0.1:0\"]\n\
         [[delivery_server]]\nname = \"a\"\nhost = \"127.0.0.1\"\n",
    )
    .unwrap();
    let none = bare_sendctl(
        &["--config", &no_socket.display().to_string(), "status"],
        &[],
    );
    assert_eq!(none.status.code(), Some(1));
    stderr_has(&none, "sets no [admin] socket");
    // --socket and --config together: one would be ignored unread (here a
    // configuration that does not exist), so neither is used.
    let socket = daemon.admin_socket().display().to_string();
    let both = bare_sendctl(
        &["--socket", &socket, "--config", "/nonexistent", "status"],
        &[],
    );
    assert_eq!(both.status.code(), Some(2), "{}", text(&both.stdout));
    stderr_has(&both, "--socket and --config both say which socket to use");
    assert!(both.stdout.is_empty(), "{}", text(&both.stdout));

    // The daemon's refusals name what the operator typed.
    let bad_id = sendctl(&daemon, &["queue", "inspect", "zz"]);
    assert_eq!(bad_id.status.code(), Some(1));
    stderr_has(&bad_id, "ID: `zz`");
    let everything = sendctl(&daemon, &["queue", "delete"]);
    let stderr = text(&everything.stderr);
    assert!(
        stderr.contains("--all") && !stderr.contains("all: true"),
        "{stderr}"
    );
    let operand = sendctl(&daemon, &["queue", "inspect"]);
    stderr_has(&operand, "give the ID: sendctl queue inspect ID");
}

#[test]
fn servers_start_disabled_show_their_allocation_and_round_trip() {
    let sink = Sink::start(&[]);
    let spare = Sink::start(&[]);
    let mut daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    // Every field as a flag, typed: `--tls-verify false` is a boolean.
    let put = sendctl(
        &daemon,
        &[
            "--json",
            "server",
            "put",
            "--name",
            "extra",
            "--host",
            "127.0.0.1",
            "--port",
            &spare.addr.port().to_string(),
            "--encryption",
            "starttls-opportunistic",
            "--tls-verify",
            "false",
            "--max-connections",
            "2",
            "--rate-per-second",
            "50.5",
        ],
    );
    assert_eq!(put.status.code(), Some(0), "{}", text(&put.stderr));
    let shown: Value = serde_json::from_slice(&put.stdout).unwrap();
    assert_eq!(
        (shown["tls_verify"].clone(), shown["enabled"].clone()),
        (json!(false), json!(false))
    );
    let table = text(&sendctl(&daemon, &["server", "list"]).stdout);
    let line = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or("")
            .to_owned()
    };
    assert!(line("extra").contains("not allocated"), "{table}");
    assert!(line("test-sink").contains("default(M,T,AR)"), "{table}");

    // Single-tenant: every enabled server. "extra" sorts first, yet a
    // new (disabled) server gets nothing.
    send(&daemon, &["one@example.net"], "");
    sink.wait_messages(1, LONG);
    ctl(&daemon, &["server", "enable", "extra"]);
    send(&daemon, &["two@example.net"], "");
    spare.wait_messages(1, LONG);
    ctl(&daemon, &["server", "disable", "extra"]);
    send(&daemon, &["three@example.net"], "");
    sink.wait_messages(2, LONG);
    assert_eq!(spare.messages().len(), 1);

    // `get --json` output goes back as it is: last_test and allocation
    // are the daemon's, ignored on put.
    let (status, _) = ctl_any(&daemon, &["server", "test", "extra"]);
    assert_eq!(status, Some(0));
    let got = ctl(&daemon, &["server", "get", "extra"]);
    assert!(
        got["last_test"]["ok"] == true && got["allocation"] == json!({}),
        "{got}"
    );
    let back = sendctl_in(&daemon, &["server", "put"], Some(&got.to_string()));
    assert_eq!(back.status.code(), Some(0), "{}", text(&back.stderr));
    assert_eq!(ctl(&daemon, &["server", "get", "extra"]), got);

    // With groups, the badges are per group and channel.
    ctl(
        &daemon,
        &[
            "group",
            "put",
            "--name",
            "g",
            "--marketing",
            "extra",
            "--transactional",
            "test-sink,extra",
            "--autoresponder",
            "test-sink",
        ],
    );
    let table = text(&sendctl(&daemon, &["server", "list"]).stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("extra") && l.contains("g(M,T)")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("test-sink") && l.contains("g(T,AR)")),
        "{table}"
    );

    // An operator's disable outlives a restart; config.toml's server stays enabled.
    daemon.stop();
    daemon.restart();
    let listed = ctl(&daemon, &["server", "list"]);
    let enabled: Vec<(Value, Value)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].clone(), s["enabled"].clone()))
        .collect();
    assert_eq!(
        enabled,
        [
            (json!("extra"), json!(false)),
            (json!("test-sink"), json!(true))
        ]
    );
}

#[test]
fn server_test_exit_status_unsaved_definitions_and_the_mx_path() {
    let good = Sink::start(&[]);
    let refusing = Sink::start(&["--fault", "rcpt=550 5.1.1 no such user"]);
    let dns = DnsServer::start([
        ("example.net", RecordData::mx(10, "mx.example.net")),
        ("mx.example.net", RecordData::A(Ipv4Addr::LOCALHOST)),
        ("nullmx.example", RecordData::NullMx),
        // The preferred MX has nobody listening: the test goes on to the next.
        ("example.org", RecordData::mx(10, "mx1.example.org")),
        ("example.org", RecordData::mx(20, "mx2.example.org")),
        (
            "mx1.example.org",
            RecordData::A(Ipv4Addr::new(127, 0, 0, 2)),
        ),
        ("mx2.example.org", RecordData::A(Ipv4Addr::LOCALHOST)),
        // One MX host, its first address down: the test goes on to the second.
        ("two.example", RecordData::mx(10, "mx.two.example")),
        ("mx.two.example", RecordData::A(Ipv4Addr::new(127, 0, 0, 2))),
        ("mx.two.example", RecordData::A(Ipv4Addr::LOCALHOST)),
    ]);
    let mut config = DaemonConfig::new(good.addr.port());
    config.extra_top = format!(
        "[dns]\n{}\n[direct]\nport = {}\n",
        dns.nameservers_line(),
        good.addr.port()
    );
    let daemon = Daemon::start(config);

    let bad = json!({"name": "bad", "host": "127.0.0.1", "port": refusing.addr.port()});
    let file = daemon.dir.path().join("bad.json");
    std::fs::write(&file, bad.to_string()).unwrap();
    let path = file.display().to_string();
    // A definition not saved yet: tested, not stored; a failed step is exit 1.
    let out = sendctl(
        &daemon,
        &["server", "test", "--file", &path, "--to", "x@example.net"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("FAILED at RCPT TO"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        sendctl(&daemon, &["server", "get", "bad"]).status.code(),
        Some(1)
    );
    let (status, passed) = ctl_any(&daemon, &["server", "test", "test-sink"]);
    assert_eq!((status, &passed["ok"]), (Some(0), &json!(true)), "{passed}");

    // The MX path: the preferred MX of the address's domain, on [direct] port.
    let (status, direct) = ctl_any(
        &daemon,
        &["server", "test", "direct", "--to", "someone@example.net"],
    );
    assert_eq!(status, Some(0), "{direct}");
    let lookup = &direct["steps"][0];
    assert_eq!(lookup["step"], "MX lookup", "{direct}");
    assert!(
        lookup["reply"]
            .as_str()
            .unwrap()
            .contains("MX 10 mx.example.net"),
        "{lookup}"
    );
    good.wait_messages(1, LONG);
    for (to, second) in [
        ("someone@example.org", "MX 20 mx2.example.org (127.0.0.1)"),
        ("someone@two.example", "MX 10 mx.two.example (127.0.0.1)"),
    ] {
        let (status, fallback) = ctl_any(&daemon, &["server", "test", "direct", "--to", to]);
        assert_eq!(
            (status, &fallback["failed_step"]),
            (Some(0), &json!(null)),
            "{fallback}"
        );
        let steps: Vec<(&str, bool)> = fallback["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["step"].as_str().unwrap(), s["ok"].as_bool().unwrap()))
            .take(4)
            .collect();
        assert_eq!(
            steps,
            [
                ("MX lookup", true),
                ("connect", false),
                ("MX lookup", true),
                ("connect", true)
            ],
            "{fallback}"
        );
        let reply = fallback["steps"][2]["reply"].as_str().unwrap();
        assert!(reply.contains(second), "{fallback}");
    }
    good.wait_messages(3, LONG);
    let (status, nullmx) = ctl_any(
        &daemon,
        &["server", "test", "direct", "--to", "a@nullmx.example"],
    );
    assert_eq!(
        (status, &nullmx["failed_step"]),
        (Some(1), &json!("MX lookup")),
        "{nullmx}"
    );
    let usage = sendctl(&daemon, &["server", "test", "direct"]);
    stderr_has(&usage, "--to");
}

/// A relay that says when a client connected (`connected`), holds its
/// greeting until `release` fires, then says yes to everything.
fn slow_relay(
    listener: std::net::TcpListener,
    connected: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    use std::io::Write;
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        connected.send(()).unwrap();
        release.recv().unwrap();
        let mut out = stream.try_clone().unwrap();
        out.write_all(b"220 slow.example ESMTP\r\n").unwrap();
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            let reply: &[u8] = match line.to_ascii_uppercase().get(..4) {
                Some("QUIT") => b"221 bye\r\n",
                _ => b"250 ok\r\n",
            };
            if out.write_all(reply).is_err() || reply.starts_with(b"221") {
                return;
            }
        }
    })
}

#[test]
fn a_server_test_result_is_kept_only_on_the_server_it_tested() {
    let sink = Sink::start(&[]);
    let daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let put = |max: &str| {
        ctl(
            &daemon,
            &[
                "server",
                "put",
                "--name",
                "slow",
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--max-connections",
                max,
            ],
        )
    };
    put("2");
    let (release, released) = std::sync::mpsc::channel();
    let (connected_tx, connected) = std::sync::mpsc::channel();
    let relay = slow_relay(listener, connected_tx, released);
    let testing = Command::new(env!("CARGO_BIN_EXE_sendctl"))
        .arg("--socket")
        .arg(daemon.admin_socket())
        .args(["--json", "server", "test", "slow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Put again while the test waits for the greeting: what it tested is
    // no longer the server.
    connected.recv_timeout(LONG).unwrap();
    put("3");
    release.send(()).unwrap();
    let out = testing.wait_with_output().unwrap();
    relay.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["ok"], true, "{result}");
    let got = ctl(&daemon, &["server", "get", "slow"]);
    assert_eq!(got["max_connections"], 3, "{got}");
    assert_eq!(
        got["last_test"],
        Value::Null,
        "kept on a server it did not test: {got}"
    );
}

#[test]
fn queue_views_show_last_replies_counts_and_a_departed_messages_history() {
    let store = tempfile::tempdir().unwrap();
    let sink = Sink::start(&[
        "--store-dir",
        store.path().to_str().unwrap(),
        "--fault",
        "rcpt~grey=451 4.7.1 greylisted, try later",
    ]);
    let mut config = DaemonConfig::new(sink.addr.port());
    config.extra_delivery = "retry_schedule = [\"1h\"]\n".into();
    let daemon = Daemon::start(config);
    send(
        &daemon,
        &["grey@example.net", "ok@example.net"],
        "X-Campaign-Id: welcome",
    );
    let delivered = sink.wait_messages(1, LONG);
    // The default X-Mailer, as the group sets none.
    let stored = store.path().join(format!("{}.eml", delivered[0]["seq"]));
    let data = std::fs::read_to_string(stored).unwrap();
    assert!(data.contains("X-Mailer: sendengine\r\n"), "{data}");
    daemon.wait_events("transient_failure", 1, LONG);

    let rows = ctl(&daemon, &["queue", "list"]);
    let row = &rows[0];
    assert_eq!(row["recipient"], "grey@example.net");
    assert!(
        row["last_reply"]
            .as_str()
            .unwrap()
            .starts_with("451 4.7.1 greylisted"),
        "{row}"
    );
    assert!(row["next_attempt"].is_string(), "{row}");
    let listed = text(&sendctl(&daemon, &["queue", "list"]).stdout);
    assert!(
        listed.contains("LAST_REPLY") && listed.contains("451 4.7.1 greylisted"),
        "{listed}"
    );
    let id = row["id"].as_str().unwrap().to_owned();
    let inspected = text(&sendctl(&daemon, &["queue", "inspect", &id]).stdout);
    assert!(inspected.contains("451 4.7.1 greylisted"), "{inspected}");

    // Names and counts, not the number of entries.
    let summary = text(&sendctl(&daemon, &["queue", "summary"]).stdout);
    let campaign = summary
        .lines()
        .find(|l| l.starts_with("welcome"))
        .unwrap_or("");
    assert_eq!(
        campaign.split_whitespace().collect::<Vec<_>>(),
        ["welcome", "1"],
        "{summary}"
    );
    assert!(!summary.contains("by_campaign"), "{summary}");

    // The log rotates (as logrotate does: move, then SIGHUP): the history
    // and `log --message` read the rotated file too.
    std::fs::rename(
        daemon.events_path(),
        daemon.dir.path().join("events.jsonl.1"),
    )
    .unwrap();
    daemon.signal("HUP");
    wait_for(LONG, "the event log reopened", || {
        daemon.events_path().exists().then_some(())
    });
    let logged = ctl(&daemon, &["log", "--message", &id.to_uppercase()]);
    let events = logged["events"].as_array().unwrap();
    assert!(
        events.len() >= 3 && events.iter().all(|e| e["message_id"] == id.as_str()),
        "{logged}"
    );
    stderr_has(&sendctl(&daemon, &["log", "--message", "12"]), "message");

    // Gone from the queue: its history instead of not_found.
    ctl(&daemon, &["queue", "delete", "--id", &id]);
    let history = ctl(&daemon, &["queue", "inspect", &id]);
    assert_eq!(history["in_queue"], false, "{history}");
    let kinds: Vec<&str> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for kind in ["reception", "delivery", "transient_failure", "admin_action"] {
        assert!(kinds.contains(&kind), "{kind}: {history}");
    }
    let shown = text(&sendctl(&daemon, &["queue", "inspect", &id]).stdout);
    assert!(
        shown.contains("transient_failure") && shown.contains("greylisted"),
        "{shown}"
    );
    let unknown = sendctl(&daemon, &["queue", "inspect", "00000000000000ff"]);
    assert_eq!(unknown.status.code(), Some(1));
}

#[test]
fn a_sender_domains_limit_of_zero_is_unlimited() {
    let sink = Sink::start(&[]);
    let daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    let group = |limit: &str| {
        let args = ["group", "put", "--name", "g", "--servers", "test-sink"];
        sendctl(
            &daemon,
            &[&args[..], &["--sender-domains-limit", limit]].concat(),
        )
    };
    assert_eq!(group("0").status.code(), Some(0));
    ctl(&daemon, &["user", "put", "--name", "u", "--group", "g"]);
    for n in 0..12 {
        let domain = format!("d{n}.example");
        ctl(&daemon, &["domain", "put", &domain, "--owner", "u"]);
    }
    // A limit still limits.
    let refused = group("3");
    assert_eq!(refused.status.code(), Some(1));
    stderr_has(&refused, "allows 3");
}

/// A new install keeps its master key beside config.toml, not in the
/// spool; an install whose key is in the spool keeps using it, warned.
#[test]
fn the_master_key_lives_beside_the_config_and_an_old_one_in_the_spool_is_kept() {
    let sink = Sink::start(&[]);
    let daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    assert!(daemon.dir.path().join("secret.key").is_file());
    assert!(!daemon.dir.path().join("spool/secret.key").exists());
    drop(daemon);

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("spool")).unwrap();
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
    std::fs::write(dir.path().join("spool/secret.key"), key).unwrap();
    let config = DaemonConfig::new(sink.addr.port());
    let daemon = Daemon::start_in(dir, &config);
    assert!(
        !daemon.dir.path().join("secret.key").exists(),
        "no new key was made"
    );
    let mut daemon = daemon;
    daemon.kill9();
    // Its start-up says where the key is and how to move it.
    let mut child = Command::new(support::daemon_binary())
        .arg("--config")
        .arg(&daemon.config_path)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut warned = None;
    for line in BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        if line.contains("spool/secret.key") && line.contains("mv ") {
            warned = Some(line.clone());
        }
        if line == "sendengine: ready" {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned.is_some(), "no warning about the key in the spool");
}
