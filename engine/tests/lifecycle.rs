//! Lifecycle: systemd notifications, SIGTERM under load, SIGHUP reload, and
//! the unit file passing `systemd-analyze verify`.
//!
//! The daemon is the real binary; systemd's side is played by a datagram
//! socket the test binds (what `systemd-notify`-style supervision reads),
//! the mail by the real sink and loadgen, the SMTP client by a few lines of
//! plain socket code so that each reply can be checked.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Daemon, DaemonConfig, Sink, daemon_binary, free_port, target_dir, wait_for};

const LONG: Duration = Duration::from_secs(120);

/// A bare SMTP client: one command, one (possibly multi-line) reply.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    /// Connects and returns the client with the greeting line.
    fn connect(addr: SocketAddr) -> (Client, String) {
        let stream = TcpStream::connect(addr).expect("connect to the daemon");
        stream.set_read_timeout(Some(LONG)).unwrap();
        let writer = stream.try_clone().unwrap();
        let mut client = Client {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = client.reply();
        (client, greeting)
    }

    /// Reads one reply; returns its last line.
    fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("read a reply");
            assert!(!line.is_empty(), "the daemon closed the connection");
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_owned();
            }
        }
    }

    fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).expect("write");
    }

    fn command(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n"));
        self.reply()
    }

    /// EHLO, MAIL, RCPT, DATA: ready for the message.
    fn start_message(&mut self) {
        assert!(self.command("EHLO client.test").starts_with("250"));
        assert!(self.command("MAIL FROM:<a@example.com>").starts_with("250"));
        assert!(self.command("RCPT TO:<b@example.net>").starts_with("250"));
        assert!(self.command("DATA").starts_with("354"));
    }

    /// Sends a whole message of about `size` bytes; returns the DATA reply.
    fn send_message(&mut self, message_id: &str, size: usize) -> String {
        self.start_message();
        self.send(&message_head(message_id));
        let line = format!("{}\r\n", "x".repeat(70));
        for _ in 0..size / line.len() {
            self.send(&line);
        }
        self.command(".")
    }
}

fn message_head(message_id: &str) -> String {
    format!(
        "From: a@example.com\r\nTo: b@example.net\r\nSubject: lifecycle\r\nMessage-ID: {message_id}\r\n\r\nHello.\r\n"
    )
}

// ---- systemd notifications ------------------------------------------------------

#[test]
fn notifies_ready_status_watchdog_and_stopping() {
    let sink = Sink::start(&[]);
    let sockets = tempfile::tempdir().unwrap();
    let path = sockets.path().join("notify.sock");
    let notify = UnixDatagram::bind(&path).unwrap();
    notify.set_read_timeout(Some(LONG)).unwrap();
    let mut daemon = Daemon::start_with_env(
        DaemonConfig::new(sink.addr.port()),
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );

    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let count =
        |seen: &[String], prefix: &str| seen.iter().filter(|s| s.starts_with(prefix)).count();
    // STATUS= keeps coming every 10 s: a deadline, not just the read timeout.
    let deadline = Instant::now() + LONG;
    while count(&seen, "READY=1") == 0
        || count(&seen, "STATUS=") == 0
        || count(&seen, "WATCHDOG=1") < 3
    {
        assert!(
            Instant::now() < deadline,
            "no READY=1, STATUS= and 3 WATCHDOG=1 in time; got {seen:?}"
        );
        let n = notify
            .recv(&mut buf)
            .expect("a notification within the timeout");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let status = seen.iter().find(|s| s.starts_with("STATUS=")).unwrap();
    assert!(status.contains("queue: 0 messages"), "{status}");

    daemon.signal("TERM");
    loop {
        let n = notify.recv(&mut buf).expect("STOPPING=1 at SIGTERM");
        if &buf[..n] == b"STOPPING=1" {
            break;
        }
    }
    assert!(daemon.wait_exit(LONG).success());
}

// ---- SIGTERM under load -----------------------------------------------------------

/// How many deliveries the first sink never answers, and for how long the
/// daemon waits for them at SIGTERM.
const STALLED: usize = 3;

#[test]
fn sigterm_under_load_drains_exits_0_and_loses_nothing() {
    // The first deliveries hang at the final dot (a silent server), the
    // others go through: at SIGTERM some deliveries are in flight for good.
    let sink_port = free_port();
    let stalling = Sink::start_on(sink_port, &["--fault", &format!("dot#{STALLED}=stall")]);
    // The server gets longer to answer than the daemon waits at SIGTERM.
    let mut daemon = Daemon::start(DaemonConfig::custom(&format!(
        r#"
[smtp_in]
listen = ["127.0.0.1:0"]
relay_networks = ["127.0.0.0/8"]
[delivery]
retry_schedule = ["1s"]
shutdown_grace = "8s"
[[delivery_server]]
name = "test-sink"
host = "127.0.0.1"
port = {sink_port}
encryption = "none"
timeout = "10m"
max_connections = 5
"#
    )));

    let ids_file = daemon.dir.path().join("acked-ids.txt");
    let _ = support::sink_binary(); // builds the loadgen too
    let mut loadgen = Command::new(target_dir().join("sendengine-loadgen"))
        .args(["--server", &daemon.addr.to_string()])
        .args(["--messages", "5000", "--connections", "4", "--size", "1500"])
        .arg("--keep-going")
        .arg("--ids-file")
        .arg(&ids_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sendengine-loadgen");
    let acked = |n: usize| {
        let text = std::fs::read_to_string(&ids_file).unwrap_or_default();
        (text.lines().count() >= n).then_some(())
    };
    wait_for(LONG, "200 acknowledged messages", || acked(200));
    wait_for(LONG, "deliveries at the sink", || {
        (stalling.messages().len() >= 20).then_some(())
    });

    // A client in the middle of DATA when the signal comes.
    let (mut in_data, _) = Client::connect(daemon.addr);
    in_data.start_message();
    in_data.send(&message_head("<in-data@lifecycle.test>"));

    daemon.signal("TERM");
    daemon.wait_stderr("sendengine: shutting down", LONG);
    let (_, refused) = Client::connect(daemon.addr);
    assert!(
        refused.starts_with("421 4.3.2"),
        "during the drain: {refused}"
    );
    assert!(
        in_data.command(".").starts_with("250"),
        "a session in DATA finishes"
    );
    let warning = daemon.wait_stderr("still in flight", LONG);
    let in_flight: usize = warning
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("a count of deliveries in flight");
    assert!(daemon.wait_exit(LONG).success(), "exit status 0");
    let _ = loadgen.kill();
    let _ = loadgen.wait();

    let mut acked: Vec<String> = std::fs::read_to_string(&ids_file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    acked.push("<in-data@lifecycle.test>".into());
    let before = stalling.messages();
    drop(stalling);

    let sink = Sink::start_on(sink_port, &[]);
    daemon.restart();
    let counts = wait_for(LONG, "every acknowledged message at a sink", || {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for m in before.iter().chain(sink.messages().iter()) {
            let id = m["message_id"].as_str().unwrap_or("").to_owned();
            *counts.entry(id).or_default() += 1;
        }
        acked
            .iter()
            .all(|id| counts.contains_key(id))
            .then_some(counts)
    });
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "acknowledged={} delivered={} in_flight_at_stop={in_flight} duplicates={duplicates}",
        acked.len(),
        counts.len()
    );
    assert!(in_flight >= 1, "the stalled deliveries were in flight");
    assert!(
        duplicates <= in_flight,
        "{duplicates} duplicates, but only {in_flight} deliveries were in flight"
    );
}

// ---- SIGHUP -----------------------------------------------------------------------

#[test]
fn sighup_applies_limits_live_and_keeps_running_on_a_bad_file() {
    let sink = Sink::start(&[]);
    let daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    let (mut client, _) = Client::connect(daemon.addr);
    let reply = client.send_message("<big-1@lifecycle.test>", 4000);
    assert!(reply.starts_with("250"), "{reply}");

    let config = std::fs::read_to_string(&daemon.config_path).unwrap();
    let smaller = config
        .replace("max_message_size = \"1MB\"", "max_message_size = \"2KB\"")
        .replace("listen = [\"127.0.0.1:0\"]", "listen = [\"127.0.0.1:1\"]");
    assert_ne!(smaller, config);
    std::fs::write(&daemon.config_path, &smaller).unwrap();
    daemon.signal("HUP");
    let reloaded = daemon.wait_stderr("reloaded", LONG);
    assert!(
        reloaded.contains("applied smtp_in.max_message_size"),
        "{reloaded}"
    );
    assert!(
        reloaded.contains("needs a restart: smtp_in.listen"),
        "{reloaded}"
    );

    let (mut client, _) = Client::connect(daemon.addr);
    let reply = client.send_message("<big-2@lifecycle.test>", 4000);
    assert!(reply.starts_with("552 5.3.4"), "after the reload: {reply}");

    std::fs::write(&daemon.config_path, "[smtp_in\nbroken").unwrap();
    daemon.signal("HUP");
    let refused = daemon.wait_stderr("reload refused", LONG);
    assert!(refused.contains("config.toml"), "names the file: {refused}");
    let (mut client, _) = Client::connect(daemon.addr);
    assert!(
        client
            .send_message("<small@lifecycle.test>", 500)
            .starts_with("250"),
        "still running"
    );
    let (mut client, _) = Client::connect(daemon.addr);
    assert!(
        client
            .send_message("<big-3@lifecycle.test>", 4000)
            .starts_with("552 5.3.4"),
        "the reloaded limit stays"
    );
    sink.wait_messages(2, LONG);

    // logrotate: move the event log away, SIGHUP, new events in a new file
    // (even though the configuration file is still broken).
    let rotated = daemon.dir.path().join("events.jsonl.1");
    std::fs::rename(daemon.events_path(), &rotated).unwrap();
    daemon.signal("HUP");
    daemon.wait_stderr("reload refused", LONG);
    let (mut client, _) = Client::connect(daemon.addr);
    let reply = client.send_message("<after-rotate@lifecycle.test>", 500);
    assert!(reply.starts_with("250"), "{reply}");
    wait_for(LONG, "events in a new file after SIGHUP", || {
        daemon
            .events()
            .iter()
            .any(|e| {
                e["header_message_id"]
                    .as_str()
                    .is_some_and(|id| id.contains("after-rotate@lifecycle.test"))
            })
            .then_some(())
    });
}

// ---- the master key as a systemd credential ----------------------------------------

#[test]
fn master_key_comes_from_the_credentials_directory() {
    let sink = Sink::start(&[]);
    let credentials = tempfile::tempdir().unwrap();
    // 32 bytes in unpadded base64, as the README's install steps make it.
    let key = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY";
    std::fs::write(credentials.path().join("secret.key"), key).unwrap();
    let mut daemon = Daemon::start_with_env(
        DaemonConfig::new(sink.addr.port()),
        &[(
            "CREDENTIALS_DIRECTORY",
            credentials.path().to_str().unwrap(),
        )],
    );
    let (mut client, _) = Client::connect(daemon.addr);
    assert!(
        client
            .send_message("<key@lifecycle.test>", 500)
            .starts_with("250")
    );
    assert!(
        !daemon.dir.path().join("spool/secret.key").exists(),
        "no key file made next to the spool: the credential is used"
    );
    assert!(daemon.stop().success());
    // A credential that is not a key stops the start with a message.
    std::fs::write(credentials.path().join("secret.key"), "not a key").unwrap();
    let out = Command::new(daemon_binary())
        .arg("--config")
        .arg(&daemon.config_path)
        .env("CREDENTIALS_DIRECTORY", credentials.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("secret.key"), "{stderr}");
}

// ---- the unit file ----------------------------------------------------------------

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/sendengine.service");
    let text = std::fs::read_to_string(unit).expect("systemd/sendengine.service");
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        support::missing_peer(
            "systemd-analyze",
            "package systemd: scripts/install-test-deps.sh",
        );
        return;
    }
    // The unit names /usr/bin/sendengine, which verify checks exists: point
    // it at the binary just built.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("sendengine.service");
    let binary = daemon_binary();
    std::fs::write(
        &copy,
        text.replace("/usr/bin/sendengine", binary.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        !stderr.contains("sendengine.service"),
        "systemd-analyze verify warns: {stderr}"
    );
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LoadCredential=secret.key:",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
    ] {
        assert!(text.contains(key), "the unit sets {key}");
    }
}
