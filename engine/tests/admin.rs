//! The admin socket and `sendctl` against the real daemon, real sinks and
//! real Unix sockets: malformed input, live configuration (kept across a
//! restart), secrets shown as "(set)", exit codes, status, server tests
//! step by step, and the queue commands with the sink down.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::{
    Daemon, DaemonConfig, Sink, ctl, free_port, sendctl, sendctl_in, status_route, wait_for,
};

const LONG: Duration = Duration::from_secs(60);

/// Sends one message with smtplib from the relay network.
fn send(daemon: &Daemon, rcpt: &str, headers: &str) {
    let script = r#"
import smtplib, sys
host, port, rcpt, headers = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
msg = "From: a@example.com\r\nTo: %s\r\nSubject: admin test\r\n%s\r\nHello.\r\n" % (rcpt, headers.replace("|", "\r\n"))
with smtplib.SMTP(host, port, timeout=30) as s:
    s.sendmail("a@example.com", [rcpt], msg)
"#;
    let out = support::python(
        script,
        &[
            daemon.addr.ip().to_string(),
            daemon.addr.port().to_string(),
            rcpt.into(),
            headers.into(),
        ],
    )
    .expect("python3 is required for the integration tests");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn connect(daemon: &Daemon) -> (BufReader<UnixStream>, UnixStream) {
    let stream = UnixStream::connect(daemon.admin_socket()).expect("connect to the admin socket");
    stream
        .set_read_timeout(Some(LONG))
        .expect("set a read timeout");
    (BufReader::new(stream.try_clone().unwrap()), stream)
}

/// Writes raw bytes (a newline is added) and reads one response line.
fn exchange(reader: &mut BufReader<UnixStream>, writer: &mut UnixStream, raw: &[u8]) -> Value {
    writer.write_all(raw).unwrap();
    writer.write_all(b"\n").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).expect("a response line");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("response {line:?}: {e}"))
}

#[test]
fn malformed_requests_get_errors_and_the_connection_and_daemon_stay() {
    let sink = Sink::start(&[]);
    let mut config = DaemonConfig::new(sink.addr.port());
    // Our own group: the one group a test may hand a file to.
    let gid = tempfile::tempfile().unwrap().metadata().unwrap().gid();
    config.extra_admin = format!("mode = \"0600\"\ngroup = \"{gid}\"\n");
    let daemon = Daemon::start(config);
    let meta = std::fs::metadata(daemon.admin_socket()).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "socket mode as configured"
    );
    assert_eq!(meta.gid(), gid);

    let (mut reader, mut writer) = connect(&daemon);
    let huge = format!(
        "{{\"cmd\": \"hello\", \"args\": {{\"x\": \"{}\"}}}}",
        "a".repeat(2 << 20)
    );
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "bad_json"),
        (b"\x00\x01\x02\xff\xfe garbage".to_vec(), "bad_json"),
        (huge.into_bytes(), "too_large"),
        (b"[1, 2, 3]".to_vec(), "bad_args"),
        (b"\"hello\"".to_vec(), "bad_args"),
        (b"{}".to_vec(), "bad_args"),
        (br#"{"cmd": 42}"#.to_vec(), "bad_args"),
        (br#"{"cmd": "hello", "args": "x"}"#.to_vec(), "bad_args"),
        (br#"{"cmd": "hello", "extra": 1}"#.to_vec(), "bad_args"),
        (br#"{"cmd": "no.such"}"#.to_vec(), "unknown_command"),
        (br#"{"cmd": "server.frobnicate"}"#.to_vec(), "unknown_command"),
        (br#"{"cmd": "server.get"}"#.to_vec(), "bad_args"),
        (br#"{"cmd": "server.get", "args": {"name": 7}}"#.to_vec(), "bad_args"),
        (br#"{"cmd": "server.get", "args": {"name": "nope"}}"#.to_vec(), "not_found"),
        (br#"{"cmd": "server.put", "args": {"name": "x"}}"#.to_vec(), "bad_args"),
        (br#"{"cmd": "server.put", "args": {"name": "x", "host": "h", "port": 70000}}"#.to_vec(), "bad_args"),
        (br#"{"cmd": "server.put", "args": {"name": "x", "host": " "}}"#.to_vec(), "invalid"),
        (br#"{"cmd": "group.put", "args": {"name": "g", "marketing": ["missing"], "transactional": ["missing"], "autoresponder": ["missing"]}}"#.to_vec(), "invalid"),
        (br#"{"cmd": "queue.list", "args": {"limit": "ten"}}"#.to_vec(), "bad_args"),
        (br#"{"cmd": "queue.inspect", "args": {"id": "zz"}}"#.to_vec(), "bad_args"),
        (br#"{"cmd": "queue.delete"}"#.to_vec(), "bad_args"),
    ];
    for (raw, code) in &bad {
        let response = exchange(&mut reader, &mut writer, raw);
        assert_eq!(response["ok"], false, "{response}");
        assert_eq!(response["error"]["code"], *code, "{response}");
        assert!(
            response["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // Errors name the field at fault.
    let port = exchange(
        &mut reader,
        &mut writer,
        br#"{"cmd": "server.put", "args": {"name": "x", "host": "h", "port": 70000}}"#,
    );
    assert!(
        port["error"]["message"].as_str().unwrap().contains("70000"),
        "{port}"
    );
    let missing = exchange(
        &mut reader,
        &mut writer,
        br#"{"cmd": "server.put", "args": {"name": "x"}}"#,
    );
    assert!(
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .contains("host"),
        "{missing}"
    );
    // Values no connection could use are refused, naming the field, and
    // nothing is stored.
    let unusable: &[(&[u8], &str)] = &[
        (br#"{"name": "x", "host": "h", "port": 0}"#, "port"),
        (br#"{"name": "x", "host": "h", "timeout": "0s"}"#, "timeout"),
        (br#"{"name": "x", "host": "h\r\nX-Evil: 1"}"#, "host"),
        (br#"{"name": "x", "host": "h\u0000"}"#, "host"),
        (br#"{"name": "x", "host": "relay example.com"}"#, "host"),
    ];
    for (args, field) in unusable {
        let mut request = br#"{"cmd": "server.put", "args": "#.to_vec();
        request.extend_from_slice(args);
        request.push(b'}');
        let response = exchange(&mut reader, &mut writer, &request);
        assert_eq!(response["error"]["code"], "invalid", "{response}");
        let message = response["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("{field}:")), "{message}");
    }
    let get = exchange(
        &mut reader,
        &mut writer,
        br#"{"cmd": "server.get", "args": {"name": "x"}}"#,
    );
    assert_eq!(get["error"]["code"], "not_found", "{get}");

    let hello = exchange(&mut reader, &mut writer, br#"{"cmd": "hello"}"#);
    assert_eq!(hello["ok"], true);
    assert_eq!(hello["result"]["protocol"], 1);

    // Many clients at once, while the first connection stays open.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (mut r, mut w) = connect(&daemon);
            std::thread::spawn(move || {
                (0..10)
                    .map(|_| exchange(&mut r, &mut w, br#"{"cmd": "status"}"#))
                    .all(|v| v["ok"] == true)
            })
        })
        .collect();
    for client in clients {
        assert!(client.join().unwrap());
    }
    // The daemon still takes mail.
    send(&daemon, "still@example.net", "");
    sink.wait_messages(1, LONG);
}

fn two_sink_config(first: &Sink) -> DaemonConfig {
    let config = format!(
        "[smtp_in]\nlisten = [\"127.0.0.1:0\"]\nrelay_networks = [\"127.0.0.0/8\"]\ndefault_user = \"alice\"\n\
         [delivery]\nretry_schedule = [\"1s\"]\n\
         [[delivery_server]]\nname = \"first\"\nhost = \"127.0.0.1\"\nport = {}\ntimeout = \"5s\"\n",
        first.addr.port()
    );
    DaemonConfig::custom(&config)
}

#[test]
fn objects_pushed_with_sendctl_route_mail_live_and_survive_a_restart() {
    let first = Sink::start(&[]);
    let second = Sink::start(&["--auth", "relayuser:relaypass"]);
    let mut daemon = Daemon::start(two_sink_config(&first));

    send(&daemon, "before@example.net", "");
    first.wait_messages(1, LONG);

    let server = json!({
        "name": "second", "host": "127.0.0.1", "port": second.addr.port(),
        "timeout": "5s", "auth": {"username": "relayuser", "password": "relaypass"},
    });
    let put = sendctl_in(&daemon, &["server", "put"], Some(&server.to_string()));
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    // A server new to the socket carries no mail until it is enabled.
    assert_eq!(ctl(&daemon, &["server", "get", "second"])["enabled"], false);
    ctl(&daemon, &["server", "enable", "second"]);
    ctl(
        &daemon,
        &["group", "put", "--name", "vip", "--servers", "second"],
    );
    ctl(
        &daemon,
        &[
            "user",
            "put",
            "--name",
            "alice",
            "--group",
            "vip",
            "--password",
            "s3cret",
        ],
    );

    // Secrets are write-only.
    let shown = ctl(&daemon, &["server", "get", "second"]);
    assert_eq!(shown["auth"]["password"], "(set)");
    assert_eq!(shown["auth"]["username"], "relayuser");
    let user = ctl(&daemon, &["user", "get", "alice"]);
    assert_eq!(user["password"], "(set)");
    assert!(user.get("password_hash").is_none(), "{user}");
    // Putting it back as read keeps the stored password: mail still authenticates.
    let resent = sendctl_in(&daemon, &["server", "put"], Some(&shown.to_string()));
    assert!(resent.status.success());

    send(&daemon, "after@example.net", "");
    let at_second = second.wait_messages(1, LONG);
    assert_eq!(at_second[0]["auth"], "relayuser", "{}", at_second[0]);
    assert_eq!(first.messages().len(), 1, "the new group's server took it");

    // Deleting a server a group uses is refused, naming the group.
    let refused = sendctl(&daemon, &["server", "delete", "second"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("vip"));

    daemon.stop();
    daemon.restart();
    let names: Vec<Value> = ctl(&daemon, &["server", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert!(names.contains(&json!("second")), "{names:?}");
    send(&daemon, "restarted@example.net", "");
    second.wait_messages(2, LONG);
    assert_eq!(first.messages().len(), 1);
}

#[test]
fn sendctl_exit_codes_tables_and_json() {
    let sink = Sink::start(&[]);
    let daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));

    let usage = sendctl(&daemon, &["frobnicate"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("usage:"));
    let missing = sendctl(&daemon, &["server", "get"]);
    assert_eq!(missing.status.code(), Some(2));

    let not_found = sendctl(&daemon, &["server", "get", "nope"]);
    assert_eq!(not_found.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&not_found.stderr);
    assert!(
        stderr.contains("not_found") && stderr.contains("nope"),
        "{stderr}"
    );
    assert!(not_found.stdout.is_empty());

    let table = sendctl(&daemon, &["server", "list"]);
    assert_eq!(table.status.code(), Some(0));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("NAME"), "{text}");
    assert!(text.contains("test-sink"), "{text}");

    let json = ctl(&daemon, &["server", "list"]);
    assert_eq!(json[0]["name"], "test-sink");

    let nowhere = Command::new(env!("CARGO_BIN_EXE_sendctl"))
        .args(["--socket", "/nonexistent/admin.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(nowhere.status.code(), Some(1));
}

#[test]
fn runtime_worker_threads_sizes_the_async_runtime() {
    let sink = Sink::start(&[]);
    let mut config = DaemonConfig::new(sink.addr.port());
    config.extra_top = "[runtime]\nworker_threads = 3".into();
    let daemon = Daemon::start(config);
    let status = ctl(&daemon, &["status"]);
    assert_eq!(status["threads"]["async_workers"], 3, "{status}");
    let text = String::from_utf8_lossy(&sendctl(&daemon, &["status"]).stdout).into_owned();
    assert!(text.contains("threads.async_workers: 3"), "{text}");
}

#[test]
fn status_shows_listeners_queue_and_routes() {
    let sink = Sink::start(&[]);
    let mut daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    send(&daemon, "s@example.net", "");
    sink.wait_messages(1, LONG);
    let status = ctl(&daemon, &["status"]);
    assert_eq!(status["listeners"][0], daemon.addr.to_string());
    assert!(status["uptime_seconds"].is_u64());
    assert!(status["spool_bytes"].as_u64().unwrap() > 0);
    assert!(status["memory_rss_bytes"].as_u64().unwrap() > 0);
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    let threads = &status["threads"];
    assert_eq!(threads["async_workers"], (cpus - 1).max(1), "{status}");
    assert_eq!(threads["dkim_signers"], cpus, "{status}");
    for key in ["queued", "deferred", "suspended", "in_flight"] {
        assert!(status["queue"][key].is_u64(), "{key}: {status}");
    }
    let route = &status["routes"][0];
    assert_eq!(route["name"], "test-sink");
    assert_eq!(route["max_connections"], 5);
    let text = String::from_utf8_lossy(&sendctl(&daemon, &["status"]).stdout).into_owned();
    assert!(
        text.contains("ROUTE") && text.contains("test-sink"),
        "{text}"
    );

    // A socket file left by a killed daemon does not stop the next one.
    daemon.kill9();
    assert!(daemon.admin_socket().exists());
    daemon.restart();
    assert_eq!(ctl(&daemon, &["hello"])["protocol"], 1);
}

fn put_server(daemon: &Daemon, name: &str, sink: &Sink, password: &str) {
    let spec = json!({
        "name": name, "host": "127.0.0.1", "port": sink.addr.port(), "timeout": "5s",
        "auth": {"username": "u", "password": password},
    });
    let out = sendctl_in(daemon, &["server", "put"], Some(&spec.to_string()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sendctl --json ARGS` of a server test that must fail: exit 1, and
/// the result on stdout.
fn failed_test(daemon: &Daemon, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = sendctl(daemon, &all);
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    serde_json::from_slice(&out.stdout).expect("the result is printed")
}

#[test]
fn server_test_reports_every_step_and_the_failing_one() {
    let good = Sink::start(&["--auth", "u:right"]);
    let refusing = Sink::start(&[
        "--auth",
        "u:right",
        "--fault",
        "rcpt=550 5.1.1 no such user",
    ]);
    let daemon = Daemon::start(DaemonConfig::new(good.addr.port()));
    put_server(&daemon, "good", &good, "right");
    put_server(&daemon, "badauth", &good, "wrong");
    put_server(&daemon, "badrcpt", &refusing, "right");

    let ok = ctl(
        &daemon,
        &["server", "test", "good", "--to", "check@example.net"],
    );
    assert_eq!(ok["ok"], true, "{ok}");
    let steps: Vec<&str> = ok["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "connect",
            "greeting",
            "EHLO",
            "AUTH",
            "MAIL FROM",
            "RCPT TO",
            "DATA",
            "end of data",
            "QUIT"
        ]
    );
    assert!(
        ok["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["ok"] == true)
    );
    good.wait_messages(1, LONG);

    // Without --to nothing is sent: RSET after RCPT.
    let dry = ctl(&daemon, &["server", "test", "good"]);
    assert_eq!(dry["ok"], true, "{dry}");
    assert!(
        dry["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["step"] == "RSET")
    );

    // A failed step is a failed command (exit 1), with the result printed.
    let auth = failed_test(&daemon, &["server", "test", "badauth"]);
    assert_eq!(auth["ok"], false);
    assert_eq!(auth["failed_step"], "AUTH", "{auth}");
    let auth_step = auth["steps"].as_array().unwrap().last().unwrap().clone();
    assert!(
        auth_step["reply"].as_str().unwrap().starts_with("535"),
        "{auth_step}"
    );

    let rcpt = failed_test(
        &daemon,
        &["server", "test", "badrcpt", "--to", "x@example.net"],
    );
    assert_eq!(rcpt["failed_step"], "RCPT TO", "{rcpt}");
    let human = String::from_utf8_lossy(&sendctl(&daemon, &["server", "test", "badrcpt"]).stdout)
        .into_owned();
    assert!(
        human.contains("FAILED at RCPT TO") && human.contains("550"),
        "{human}"
    );

    // The result is kept on the server.
    let stored = ctl(&daemon, &["server", "get", "badauth"]);
    assert_eq!(stored["last_test"]["failed_step"], "AUTH", "{stored}");
    assert_eq!(
        good.messages().len(),
        1,
        "only the --to test sent a message"
    );
}

fn queue_rows(daemon: &Daemon, filter: &[&str]) -> Vec<Value> {
    let mut args = vec!["queue", "list"];
    args.extend_from_slice(filter);
    ctl(daemon, &args).as_array().unwrap().clone()
}

#[test]
fn queue_list_inspect_suspend_delete_flush_resume_with_the_sink_down() {
    let port = free_port();
    let mut config = DaemonConfig::new(port);
    config.extra_delivery = "retry_schedule = [\"1h\"]\nfailover_backoff = \"1s\"\n".into();
    let daemon = Daemon::start(config);
    send(&daemon, "a@example.net", "X-Campaign-Id: alpha|");
    send(&daemon, "b@example.net", "X-Campaign-Id: beta|");
    send(&daemon, "c@example.org", "X-Campaign-Id: gamma|");
    daemon.wait_events("transient_failure", 3, LONG);
    wait_for(LONG, "three deferred recipients", || {
        let rows = queue_rows(&daemon, &[]);
        (rows.len() == 3 && rows.iter().all(|r| r["status"] == "deferred")).then_some(())
    });

    let alpha = queue_rows(&daemon, &["--campaign", "alpha"]);
    assert_eq!(alpha.len(), 1);
    assert_eq!(alpha[0]["recipient"], "a@example.net");
    assert_eq!(queue_rows(&daemon, &["--domain", "example.org"]).len(), 1);
    assert_eq!(queue_rows(&daemon, &["--limit", "2"]).len(), 2);
    let id = alpha[0]["id"].as_str().unwrap();
    let inspected = ctl(&daemon, &["queue", "inspect", id]);
    assert!(
        inspected["headers"]
            .as_str()
            .unwrap()
            .contains("Subject: admin test")
    );
    assert_eq!(inspected["recipients"][0]["attempts"], 1);

    let summary = ctl(&daemon, &["queue", "summary"]);
    assert_eq!(summary["recipients"], 3);
    assert_eq!(summary["by_status"]["deferred"], 3);

    let suspended = ctl(&daemon, &["queue", "suspend", "--campaign", "alpha"]);
    assert_eq!(suspended["changed"], 1);
    let deleted = ctl(&daemon, &["queue", "delete", "--campaign", "beta"]);
    assert_eq!(deleted["changed"], 1);
    let events = daemon.wait_events("admin_action", 1, LONG);
    assert_eq!(events[0]["recipient"], "b@example.net");
    assert_eq!(events[0]["campaign"], "beta");
    let status = ctl(&daemon, &["status"]);
    assert_eq!(status["queue"]["suspended"], 1);
    assert_eq!(status["queue"]["deferred"], 1);

    // The sink comes up; flush sends the deferred mail now, not in an hour.
    let sink = Sink::start_on(port, &[]);
    let flushed = ctl(&daemon, &["queue", "flush"]);
    assert_eq!(flushed["changed"], 1, "{flushed}");
    let got = sink.wait_messages(1, LONG);
    assert_eq!(got[0]["rcpts"][0], "c@example.org", "{}", got[0]);
    // The sink has the message a moment before the daemon records its 250.
    let left = wait_for(LONG, "the flushed recipient recorded", || {
        let rows = queue_rows(&daemon, &[]);
        (rows.len() == 1).then_some(rows)
    });
    assert_eq!(left[0]["status"], "suspended");

    ctl(&daemon, &["queue", "resume", "--campaign", "alpha"]);
    let got = sink.wait_messages(2, LONG);
    assert_eq!(got[1]["rcpts"][0], "a@example.net", "{}", got[1]);
    wait_for(LONG, "an empty queue", || {
        queue_rows(&daemon, &[]).is_empty().then_some(())
    });
    assert_eq!(sink.messages().len(), 2, "the deleted recipient never went");
}

/// A misspelled or value-less flag is a usage error (exit 2, naming the
/// flag and the nearest valid one) and a misspelled field on the socket an
/// error response; neither acts on the whole queue (issue 14.13).
#[test]
fn misspelled_flags_and_fields_are_refused_and_change_nothing() {
    let mut config = DaemonConfig::new(free_port());
    config.extra_delivery = "retry_schedule = [\"1h\"]\nfailover_backoff = \"1s\"\n".into();
    let daemon = Daemon::start(config);
    send(&daemon, "a@example.net", "X-Campaign-Id: alpha|");
    send(&daemon, "b@example.net", "X-Campaign-Id: beta|");
    daemon.wait_events("transient_failure", 2, LONG);
    let all_deferred = || {
        let rows = queue_rows(&daemon, &[]);
        rows.len() == 2 && rows.iter().all(|r| r["status"] == "deferred")
    };
    wait_for(LONG, "two deferred recipients", || {
        all_deferred().then_some(())
    });

    let refused: &[(&[&str], &str)] = &[
        (&["queue", "suspend", "--campain", "nothing"], "--campaign"),
        (
            &["queue", "suspend", "--campaign", "alpha", "--tenent", "x"],
            "--tenant",
        ),
        (&["queue", "list", "--tenent", "x"], "--tenant"),
        (&["queue", "delete", "--campaign"], "needs a value"),
        (&["queue", "bounce", "--campaign", "--all"], "needs a value"),
        (&["queue", "flush", "--olderthan", "2h"], "--older-than"),
        (
            &["suppression", "add", "x@example.net", "--tenat", "t"],
            "--tenant",
        ),
        (
            &["server", "test", "test-sink", "--too", "x@example.net"],
            "--to",
        ),
        (&["status", "--verbose"], "takes no flags"),
    ];
    for (args, hint) in refused {
        let out = sendctl(&daemon, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(hint), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed a result");
    }
    assert!(all_deferred(), "no refused command touched the queue");
    let checked = ctl(&daemon, &["suppression", "check", "x@example.net"]);
    assert_eq!(checked["suppressed"], false, "{checked}");

    // The socket refuses unknown fields the same way, naming the field.
    let (mut reader, mut writer) = connect(&daemon);
    let raw: &[(&[u8], &str)] = &[
        (
            br#"{"cmd": "queue.suspend", "args": {"campain": "x"}}"#,
            "campaign",
        ),
        (
            br#"{"cmd": "queue.delete", "args": {"all": true, "tennant": "x"}}"#,
            "tenant",
        ),
        (br#"{"cmd": "queue.list", "args": {"limt": 1}}"#, "limit"),
        (br#"{"cmd": "status", "args": {"x": 1}}"#, "no arguments"),
        (
            br#"{"cmd": "domain.put", "args": {"domain": "d.example", "owner": "u", "ownr": "v"}}"#,
            "owner",
        ),
        (
            br#"{"cmd": "server.put", "args": {"name": "n", "host": "h", "hots": "h"}}"#,
            "hots",
        ),
        // Values no mail could use: an address or domain of bad syntax.
        (
            br#"{"cmd": "suppression.add", "args": {"address": "x"}}"#,
            "not a mailbox",
        ),
        (
            br#"{"cmd": "domain.put", "args": {"domain": "a..b", "owner": "u"}}"#,
            "not a host name",
        ),
        (
            br#"{"cmd": "server.test", "args": {"name": "test-sink", "to": "not-an-address"}}"#,
            "not a mailbox",
        ),
    ];
    for (request, hint) in raw {
        let response = exchange(&mut reader, &mut writer, request);
        assert_eq!(response["ok"], false, "{response}");
        assert_eq!(response["error"]["code"], "bad_args", "{response}");
        let message = response["error"]["message"].as_str().unwrap();
        assert!(message.contains(hint), "{message}");
    }
    assert!(all_deferred(), "no refused request touched the queue");

    // The spelled-right filter acts on its campaign only.
    let suspended = ctl(&daemon, &["queue", "suspend", "--campaign=alpha"]);
    assert_eq!(suspended["changed"], 1, "{suspended}");
}

/// Idle and half-written admin connections from another process (Python
/// raw sockets) do not lock `sendctl` out (issue 15.8): with 100 of them
/// open, more than the 64 regular slots, `sendctl status` still answers
/// within a few seconds.
#[test]
fn idle_admin_clients_do_not_lock_out_sendctl() {
    let sink = Sink::start(&[]);
    let daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    let script = r#"
import socket, sys, time
path, count = sys.argv[1], int(sys.argv[2])
held = []
for i in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    if i % 2:
        s.sendall(b'{"cmd": "sta')  # a request that never ends
    held.append(s)
print("ready", flush=True)
time.sleep(120)
"#;
    let mut idle = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(daemon.admin_socket())
        .arg("100")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is required for the integration tests");
    let mut ready = String::new();
    BufReader::new(idle.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready", "the idle clients are connected");

    for _ in 0..3 {
        let started = std::time::Instant::now();
        let mut status = Command::new(env!("CARGO_BIN_EXE_sendctl"))
            .arg("--socket")
            .arg(daemon.admin_socket())
            .arg("status")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let answered = wait_for(Duration::from_secs(15), "sendctl status", || {
            status.try_wait().unwrap()
        });
        assert!(answered.success());
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "status took {took:?}");
    }
    let _ = idle.kill();
    let _ = idle.wait();
}

#[test]
fn server_test_stops_at_a_certificate_it_cannot_verify() {
    let sink = Sink::start(&["--tls", "starttls"]);
    let daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    let spec = json!({"name": "tls", "host": "127.0.0.1", "port": sink.addr.port(),
        "encryption": "starttls", "timeout": "5s"});
    let put = sendctl_in(&daemon, &["server", "put"], Some(&spec.to_string()));
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let result = failed_test(&daemon, &["server", "test", "tls"]);
    assert_eq!(result["failed_step"], "TLS handshake", "{result}");
    let steps: Vec<&str> = result["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["connect", "greeting", "EHLO", "STARTTLS", "TLS handshake"]
    );
}

/// The route of `status` named `name`.
#[test]
fn status_shows_jobs_in_flight_queued_campaigns_and_recent_deliveries() {
    // The sink never answers RCPT for "held": its transaction stays in
    // flight on the one connection, and the mail behind it waits queued.
    let sink = Sink::start(&["--fault", "rcpt~held=stall"]);
    let config = format!(
        "[smtp_in]\nlisten = [\"127.0.0.1:0\"]\nrelay_networks = [\"127.0.0.0/8\"]\n\
         [delivery]\nretry_schedule = [\"1h\"]\n\
         [[delivery_server]]\nname = \"slow\"\nhost = \"127.0.0.1\"\nport = {}\n\
         encryption = \"none\"\ntimeout = \"300s\"\nmax_connections = 1\nrate_per_second = 2.0\n",
        sink.addr.port()
    );
    let daemon = Daemon::start(DaemonConfig::custom(&config));

    send(&daemon, "first@example.net", "X-Campaign-Id: early|");
    sink.wait_messages(1, LONG);
    wait_for(LONG, "a delivery counted in the last minute", || {
        let route = status_route(&ctl(&daemon, &["status"]), "slow");
        (route["delivered_last_minute"] == 1 && route["in_flight"] == 0).then_some(())
    });

    send(&daemon, "held@example.net", "X-Campaign-Id: spring|");
    send(&daemon, "next1@example.net", "X-Campaign-Id: spring|");
    send(&daemon, "next2@example.net", "X-Campaign-Id: autumn|");
    let status = wait_for(LONG, "one job in flight and two queued", || {
        let status = ctl(&daemon, &["status"]);
        let route = status_route(&status, "slow");
        (route["in_flight"] == 1 && route["ready"] == 2).then_some(status)
    });
    let route = status_route(&status, "slow");
    assert_eq!(route["connections"], 1, "{route}");
    assert_eq!(route["max_connections"], 1, "{route}");
    assert_eq!(
        status["active_campaigns"],
        json!([
            {"campaign": "autumn", "in_flight": 0, "ready": 1},
            {"campaign": "spring", "in_flight": 1, "ready": 1},
        ]),
        "{status}"
    );
    assert_eq!(status["queue"]["in_flight"], 3, "{status}");

    let text = String::from_utf8_lossy(&sendctl(&daemon, &["status"]).stdout).into_owned();
    assert!(
        text.contains("IN_FLIGHT") && text.contains("DELIVERED_1M"),
        "{text}"
    );
    let spring = text.lines().find(|l| l.starts_with("spring"));
    assert_eq!(
        spring.map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["spring", "1", "1"]),
        "{text}"
    );
}

#[test]
fn a_suspended_campaign_stays_queued_while_others_flow_until_resumed() {
    // The first attempts of alpha and gamma are deferred for an hour.
    let sink = Sink::start(&[
        "--fault",
        "rcpt~alpha#2=451 4.7.1 later",
        "--fault",
        "rcpt~gamma#1=451 4.7.1 later",
    ]);
    let mut config = DaemonConfig::new(sink.addr.port());
    config.extra_delivery = "retry_schedule = [\"1h\"]\n".into();
    let daemon = Daemon::start(config);
    send(&daemon, "alpha1@example.net", "X-Campaign-Id: alpha|");
    send(&daemon, "alpha2@example.net", "X-Campaign-Id: alpha|");
    send(&daemon, "gamma@example.net", "X-Campaign-Id: gamma|");
    daemon.wait_events("transient_failure", 3, LONG);

    let suspended = ctl(&daemon, &["queue", "suspend", "--campaign", "alpha"]);
    assert_eq!(suspended["changed"], 2, "{suspended}");
    // Flush retries everything deferred, but not what is suspended.
    let flushed = ctl(&daemon, &["queue", "flush"]);
    assert_eq!(flushed["changed"], 1, "{flushed}");
    send(&daemon, "beta@example.net", "X-Campaign-Id: beta|");
    let got = sink.wait_messages(2, LONG);
    let mut delivered: Vec<&str> = got
        .iter()
        .map(|m| m["rcpts"][0].as_str().unwrap())
        .collect();
    delivered.sort();
    assert_eq!(delivered, ["beta@example.net", "gamma@example.net"]);
    wait_for(LONG, "only the suspended campaign left", || {
        let rows = queue_rows(&daemon, &[]);
        (rows.len() == 2).then_some(())
    });
    let left = queue_rows(&daemon, &[]);
    assert!(
        left.iter()
            .all(|r| r["campaign"] == "alpha" && r["status"] == "suspended"),
        "{left:?}"
    );

    let resumed = ctl(&daemon, &["queue", "resume", "--campaign", "alpha"]);
    assert_eq!(resumed["changed"], 2, "{resumed}");
    let got = sink.wait_messages(4, LONG);
    let mut late: Vec<&str> = got[2..]
        .iter()
        .map(|m| m["rcpts"][0].as_str().unwrap())
        .collect();
    late.sort();
    assert_eq!(late, ["alpha1@example.net", "alpha2@example.net"]);
    wait_for(LONG, "an empty queue", || {
        queue_rows(&daemon, &[]).is_empty().then_some(())
    });
}

#[test]
fn queue_bounce_writes_an_admin_bounce_event() {
    let port = free_port();
    let mut config = DaemonConfig::new(port);
    config.extra_delivery = "retry_schedule = [\"1h\"]\nfailover_backoff = \"1s\"\n".into();
    let daemon = Daemon::start(config);
    send(&daemon, "gone@example.net", "X-Campaign-Id: omega|");
    send(&daemon, "kept@example.net", "X-Campaign-Id: other|");
    daemon.wait_events("transient_failure", 2, LONG);

    let bounced = ctl(&daemon, &["queue", "bounce", "--campaign", "omega"]);
    assert_eq!(bounced["changed"], 1, "{bounced}");
    let events = daemon.wait_events("bounce", 1, LONG);
    assert_eq!(events[0]["recipient"], "gone@example.net");
    assert_eq!(events[0]["bounce_class"], "admin");
    assert_eq!(events[0]["reply"]["code"], 550);
    let left = queue_rows(&daemon, &[]);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["recipient"], "kept@example.net");
}

#[test]
fn sendctl_bounce_parse_works_offline_on_the_corpus() {
    let corpus = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/corpora/bounces/sisimai/emails/maildir/bsd"
    );
    if !std::path::Path::new(corpus).exists() {
        support::missing_peer(
            "the shared bounce corpus (shared/corpora beside the checkout)",
            "lay out shared/ beside the repository as CI does",
        );
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sendctl"))
        .args([
            "--socket",
            "/nonexistent/admin.sock",
            "--json",
            "bounce",
            "parse",
        ])
        .arg(format!("{corpus}/lhost-amavis-01.eml"))
        .arg(format!("{corpus}/arf-01.eml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let bounce = records
        .iter()
        .find(|r| r["file"].as_str().unwrap().ends_with("lhost-amavis-01.eml"))
        .unwrap();
    assert_eq!(bounce["recipient"], "neko@example.co.jp");
    assert_eq!(bounce["status"], "5.1.1");
    assert_eq!(bounce["kind"], "bounce");
    assert_eq!(bounce["category"], "bad-mailbox");
    assert_eq!(bounce["hard"], true);
    let complaint = records
        .iter()
        .find(|r| r["file"].as_str().unwrap().ends_with("arf-01.eml"))
        .unwrap();
    assert_eq!(complaint["kind"], "complaint");
    for key in [
        "file",
        "recipient",
        "status",
        "action",
        "category",
        "hard",
        "kind",
        "diagnostic",
        "remote_mta",
        "original_message_id",
        "verp_tag",
    ] {
        assert!(bounce.get(key).is_some(), "record lacks {key}");
    }

    let missing = Command::new(env!("CARGO_BIN_EXE_sendctl"))
        .args(["bounce", "parse", "/nonexistent.eml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
}

/// Sizes and durations need a unit (issue 14.14): `--check-config` refuses
/// `max_message_size = "25"` (it meant 25 bytes and refused every message),
/// `timeout = "10"` on a delivery server and `shutdown_grace = "15"`, each
/// naming the key and an example with the unit; the admin socket refuses
/// a unitless server timeout and queue age the same way.
#[test]
fn unitless_sizes_and_durations_are_refused_with_an_example() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "max_message_size = \"25MB\"",
            "max_message_size = \"25\"",
            "\"25MB\"",
        ),
        ("\ntimeout = \"10s\"", "\ntimeout = \"10\"", "\"10s\""),
        (
            "[delivery]",
            "[delivery]\nshutdown_grace = \"15\"",
            "\"15s\"",
        ),
    ];
    for (from, to, hint) in cases {
        assert!(example.contains(from), "config.toml has {from}");
        let path = dir.path().join("unitless.toml");
        std::fs::write(&path, example.replacen(from, to, 1)).unwrap();
        let out = Command::new(support::daemon_binary())
            .arg("--check-config")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{to}: {err}");
        assert!(err.contains("no unit") && err.contains(hint), "{to}: {err}");
    }

    let sink = Sink::start(&[]);
    let daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    let (mut reader, mut writer) = connect(&daemon);
    let requests: &[(&[u8], &str)] = &[
        (
            br#"{"cmd": "server.put", "args": {"name": "s", "host": "127.0.0.1", "timeout": "10"}}"#,
            "\"10s\"",
        ),
        (
            br#"{"cmd": "queue.flush", "args": {"older_than": "2"}}"#,
            "\"2s\"",
        ),
    ];
    for (request, hint) in requests {
        let response = exchange(&mut reader, &mut writer, request);
        assert_eq!(response["ok"], false, "{response}");
        let message = response["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("no unit") && message.contains(hint),
            "{message}"
        );
    }
    let servers = ctl(&daemon, &["server", "list"]);
    assert_eq!(servers.as_array().unwrap().len(), 1, "{servers}");
}

/// Changes to one object's keys made at the same moment all hold: each
/// is made on the object as it is then, not on a copy read before another
/// change was made (API keys are checked the same way in `http_in.rs`).
#[test]
fn dkim_keys_generated_at_the_same_moment_are_all_kept() {
    let sink = Sink::start(&[]);
    let daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    let words = |line: String| -> Vec<String> { line.split(' ').map(String::from).collect() };
    let generate = |selector: &str| {
        words(format!(
            "dkim generate example.com --algorithm ed25519 --selector {selector}"
        ))
    };
    let selectors = || -> Vec<String> {
        let keys = ctl(&daemon, &["dkim", "get", "example.com"]);
        let keys = keys["keys"].as_array().unwrap().iter();
        let mut selectors: Vec<String> = keys
            .map(|k| k["selector"].as_str().unwrap().to_owned())
            .collect();
        selectors.sort();
        selectors
    };
    let runs: Vec<Vec<String>> = (0..6).map(|i| generate(&format!("s{i}"))).collect();
    support::ctl_at_once(&daemon, &runs);
    assert_eq!(selectors(), ["s0", "s1", "s2", "s3", "s4", "s5"]);
    // Retiring and adding at once, too.
    let mut edits: Vec<Vec<String>> = (0..3)
        .map(|i| words(format!("dkim retire example.com --selector s{i}")))
        .collect();
    edits.push(generate("s9"));
    support::ctl_at_once(&daemon, &edits);
    assert_eq!(selectors(), ["s3", "s4", "s5", "s9"]);
}
