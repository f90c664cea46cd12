//! Shared by the integration tests: start the real `sendengine` binary and
//! the real `sendengine-sink` on loopback ports in temporary folders, and
//! read what they wrote (sink log, event log).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// `target/debug` (or release), derived from this test's own path.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_owned()
}

/// The sink lives in the benches package; build it on first use.
pub fn sink_binary() -> PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    let path = target_dir().join("sendengine-sink");
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let profile_release = target_dir().ends_with("release");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "sendengine-benches", "--bins"]);
        if profile_release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build for the sink");
        assert!(status.success(), "building sendengine-sink failed");
    });
    path
}

pub fn daemon_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sendengine"))
}

/// Polls `check` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A loopback port that was free a moment ago.
/// `GET /metrics` over plain HTTP/1.0; returns the body.
pub fn scrape_metrics(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

/// The sum of the samples of `name` whose labels include all of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let wanted = series_name == name
                && labels.iter().all(|(k, v)| {
                    series_labels
                        .split(',')
                        .any(|l| l == format!("{k}=\"{v}\""))
                });
            wanted.then(|| value.parse::<f64>().expect("a number"))
        })
        .sum()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

/// The complete lines of a JSON-lines file another process is appending
/// to: a last line without its newline is still being written.
fn read_json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

// ---- the sink -----------------------------------------------------------------

pub struct Sink {
    pub addr: SocketAddr,
    pub log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Sink {
    /// Starts a sink on a random port (or `port`), with `--fault` rules etc.
    pub fn start_on(port: u16, extra: &[&str]) -> Sink {
        Sink::start_at(&format!("127.0.0.1:{port}"), extra)
    }

    /// Starts a sink on `listen` (any loopback address, e.g. 127.0.0.3:PORT).
    pub fn start_at(listen: &str, extra: &[&str]) -> Sink {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("sink.jsonl");
        let mut child = Command::new(sink_binary())
            .arg("--listen")
            .arg(listen)
            .arg("--log")
            .arg(&log)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sendengine-sink");
        let stdout = child.stdout.take().expect("sink stdout");
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("sink first line");
        let addr = first
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected sink banner {first:?}"));
        Sink {
            addr,
            log,
            child,
            _dir: dir,
        }
    }

    pub fn start(extra: &[&str]) -> Sink {
        Sink::start_on(0, extra)
    }

    pub fn messages(&self) -> Vec<Value> {
        read_json_lines(&self.log)
    }

    pub fn wait_messages(&self, n: usize, timeout: Duration) -> Vec<Value> {
        wait_for(timeout, &format!("{n} messages at the sink"), || {
            let m = self.messages();
            (m.len() >= n).then_some(m)
        })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- the daemon ---------------------------------------------------------------

/// Settings a test may change; the rest of the config is fixed.
pub struct DaemonConfig {
    pub sink_port: u16,
    pub listen_port: u16,
    pub relay_networks: Vec<String>,
    pub extra_smtp_in: String,
    pub extra_delivery: String,
    pub extra_server: String,
    pub extra_top: String,
    /// Lines of the `[spool]` section after `dir`.
    pub extra_spool: String,
    /// Lines of the `[admin]` section after `socket`.
    pub extra_admin: String,
    /// Everything but `hostname`, `[spool]`, `[events]` and `[admin]`, which are
    /// filled in; replaces the other fields when set.
    pub custom: Option<String>,
}

impl DaemonConfig {
    pub fn new(sink_port: u16) -> DaemonConfig {
        DaemonConfig {
            sink_port,
            listen_port: 0,
            relay_networks: vec!["127.0.0.0/8".into()],
            extra_smtp_in: String::new(),
            extra_delivery: "retry_schedule = [\"1s\"]\n".into(),
            extra_server: String::new(),
            extra_top: String::new(),
            extra_spool: String::new(),
            extra_admin: String::new(),
            custom: None,
        }
    }

    /// A configuration written by the test (listen on port 0 for a random port).
    pub fn custom(text: &str) -> DaemonConfig {
        DaemonConfig {
            custom: Some(text.to_owned()),
            ..DaemonConfig::new(0)
        }
    }

    fn render(&self, dir: &Path) -> String {
        if let Some(custom) = &self.custom {
            return format!(
                "hostname = \"mta.test\"\n[spool]\ndir = \"{d}/spool\"\n[events]\npath = \"{d}/events.jsonl\"\n[admin]\nsocket = \"{d}/admin.sock\"\n{admin}\n{custom}",
                d = dir.display(),
                admin = self.extra_admin,
            );
        }
        let nets: Vec<String> = self
            .relay_networks
            .iter()
            .map(|n| format!("{n:?}"))
            .collect();
        format!(
            r#"hostname = "mta.test"
{top}
[spool]
dir = "{dir}/spool"
{spool}
[smtp_in]
listen = ["127.0.0.1:{port}"]
relay_networks = [{nets}]
max_message_size = "1MB"
{smtp_in}
[delivery]
{delivery}
[events]
path = "{dir}/events.jsonl"
[admin]
socket = "{dir}/admin.sock"
{admin}
[[delivery_server]]
name = "test-sink"
host = "127.0.0.1"
port = {sink}
encryption = "none"
timeout = "5s"
max_connections = 5
max_messages_per_connection = 100
{server}
"#,
            top = self.extra_top,
            spool = self.extra_spool,
            admin = self.extra_admin,
            dir = dir.display(),
            port = self.listen_port,
            nets = nets.join(", "),
            smtp_in = self.extra_smtp_in,
            delivery = self.extra_delivery,
            sink = self.sink_port,
            server = self.extra_server,
        )
    }
}

pub struct Daemon {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    child: Option<Child>,
    pub stderr: mpsc::Receiver<String>,
}

impl Daemon {
    pub fn start(config: DaemonConfig) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        Daemon::start_in(dir, &config)
    }

    /// Starts the daemon on the configuration in `dir` (spool kept across restarts).
    pub fn start_in(dir: tempfile::TempDir, config: &DaemonConfig) -> Daemon {
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config.render(dir.path())).expect("write config");
        let (child, addr, stderr) = spawn_daemon(&config_path);
        Daemon {
            addr,
            dir,
            config_path,
            child: Some(child),
            stderr,
        }
    }

    /// The admin socket every test configuration sets.
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    pub fn events_path(&self) -> PathBuf {
        self.dir.path().join("events.jsonl")
    }

    pub fn events(&self) -> Vec<Value> {
        read_json_lines(&self.events_path())
    }

    /// Events of `kind` (reception, delivery, transient_failure, bounce, expiration).
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["type"] == kind)
            .collect()
    }

    pub fn wait_events(&self, kind: &str, n: usize, timeout: Duration) -> Vec<Value> {
        wait_for(timeout, &format!("{n} {kind} events"), || {
            let e = self.events_of(kind);
            (e.len() >= n).then_some(e)
        })
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        child.wait().expect("wait for daemon")
    }

    /// Starts again on the same configuration and spool.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the daemon first");
        let (child, addr, stderr) = spawn_daemon(&self.config_path);
        self.child = Some(child);
        self.addr = addr;
        self.stderr = stderr;
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("daemon running")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn_daemon(config: &Path) -> (Child, SocketAddr, mpsc::Receiver<String>) {
    spawn_daemon_with_env(config, &[])
}

fn spawn_daemon_with_env(
    config: &Path,
    env: &[(&str, &str)],
) -> (Child, SocketAddr, mpsc::Receiver<String>) {
    let mut child = Command::new(daemon_binary())
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sendengine");
    let stderr = child.stderr.take().expect("daemon stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[daemon] {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut addr = None;
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if let Some(a) = line.strip_prefix("sendengine: listening on ") {
                    addr = a.trim().parse().ok();
                }
                if line == "sendengine: ready" {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("sendengine exited during start-up: {status}");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("sendengine exited during start-up")
            }
        }
    }
    let addr = addr.expect("sendengine announced its listening address");
    (child, addr, rx)
}

// ---- real clients -------------------------------------------------------------

/// Runs a Python script (smtplib is the reference client); `None` when
/// there is no python3, so a test can say it skipped.
pub fn python(script: &str, args: &[String]) -> Option<std::process::Output> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .ok()?;
    Some(out)
}

/// Whether python3 is missing (it fails the test under `CI=true`, see
/// `missing_peer`); `needed_for` says what the test uses it for.
pub fn python3_missing(needed_for: &str) -> bool {
    let missing = Command::new("python3").arg("--version").output().is_err();
    if missing {
        missing_peer(
            "python3",
            &format!("{needed_for}: scripts/install-test-deps.sh"),
        );
    }
    missing
}

/// The project venv's python (dkimpy, schemathesis: `scripts/python-venv.sh`,
/// made on first use); `None` when there is no python3 (skipped, or failed under CI).
pub fn venv_python() -> Option<PathBuf> {
    if python3_missing("the venv of dkimpy and schemathesis") {
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python-venv.sh");
    let out = Command::new("bash").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()))
}

/// Sends one message with Python's smtplib; returns what it printed.
pub const SMTPLIB_SEND: &str = r#"
import smtplib, sys
host, port, sender, rcpts, msgid = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split(','), sys.argv[5]
msg = ("From: %s\r\nTo: %s\r\nSubject: test\r\nMessage-ID: %s\r\n\r\nHello from smtplib.\r\n.leading dot line\r\n" % (sender, rcpts[0], msgid))
with smtplib.SMTP(host, port, timeout=30) as s:
    s.ehlo("client.test")
    refused = s.sendmail(sender, rcpts, msg)
    print("refused=%d" % len(refused))
"#;

pub fn smtplib_send(daemon: SocketAddr, sender: &str, rcpts: &[&str], msgid: &str) -> String {
    smtplib_run(SMTPLIB_SEND, daemon, sender, rcpts, msgid, &[])
}

/// Runs an smtplib script with `host port sender rcpt,rcpt... extra`
/// arguments; returns its output, failing the test if the script failed.
fn smtplib_run(
    script: &str,
    daemon: SocketAddr,
    sender: &str,
    rcpts: &[&str],
    extra: &str,
    more: &[String],
) -> String {
    let mut args = vec![
        daemon.ip().to_string(),
        daemon.port().to_string(),
        sender.into(),
        rcpts.join(","),
        extra.into(),
    ];
    args.extend_from_slice(more);
    let out = python(script, &args)
        .expect("python3 is required for the integration tests (scripts/install-test-deps.sh)");
    assert!(
        out.status.success(),
        "smtplib failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
pub mod bounces;
pub mod dns_server;
pub mod fleet;
pub mod http_api;

#[path = "../../../test-support/peers.rs"]
mod peers;
#[path = "../../../test-support/services.rs"]
pub mod services;
#[allow(unused_imports)] // not every test file has an optional peer
pub use peers::missing_peer;

/// Sends one small message with smtplib; returns "250" or the refusal of
/// DATA. `headers` are extra header lines separated by `|`.
pub fn smtplib_try(daemon: SocketAddr, from: &str, rcpts: &[&str], headers: &str) -> String {
    smtplib_try_as(daemon, None, from, rcpts, headers)
}

/// [`smtplib_try`], logged in first as `login` = (user, password) if given.
pub fn smtplib_try_as(
    daemon: SocketAddr,
    login: Option<(&str, &str)>,
    from: &str,
    rcpts: &[&str],
    headers: &str,
) -> String {
    let script = r#"
import smtplib, sys
host, port, sender, rcpts, headers = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split(','), sys.argv[5]
msg = "From: %s\r\nTo: %s\r\nSubject: test\r\n%s\r\nHello.\r\n" % (sender, rcpts[0], headers.replace("|", "\r\n"))
with smtplib.SMTP(host, port, timeout=30) as s:
    if len(sys.argv) > 7:
        s.login(sys.argv[6], sys.argv[7])
    try:
        s.sendmail(sender, rcpts, msg)
        print("250")
    except smtplib.SMTPDataError as e:
        print(e.smtp_code, e.smtp_error.decode())
"#;
    let login: Vec<String> = login
        .map(|(user, password)| vec![user.to_owned(), password.to_owned()])
        .unwrap_or_default();
    smtplib_run(script, daemon, from, rcpts, headers, &login)
        .trim()
        .to_owned()
}

// ---- sendctl ------------------------------------------------------------------

/// Runs the real `sendctl` against the daemon's admin socket.
/// The row of route `name` in `sendctl status`'s answer.
pub fn status_route(status: &Value, name: &str) -> Value {
    let routes = status["routes"].as_array().expect("routes");
    let found = routes.iter().find(|r| r["name"] == name);
    found
        .cloned()
        .unwrap_or_else(|| panic!("no route {name}: {status}"))
}

pub fn sendctl_in(daemon: &Daemon, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sendctl"))
        .arg("--socket")
        .arg(daemon.admin_socket())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sendctl");
    let mut input = child.stdin.take().expect("sendctl stdin");
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .expect("write sendctl stdin");
    drop(input);
    child.wait_with_output().expect("wait for sendctl")
}

pub fn sendctl(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    sendctl_in(daemon, args, None)
}

/// `sendctl --json ...`, which must succeed; its result.
pub fn ctl(daemon: &Daemon, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    ctl_result(args, sendctl(daemon, &all))
}

/// `sendctl --json` once for each of `runs`, all processes at once; their
/// results in order (each must succeed).
pub fn ctl_at_once(daemon: &Daemon, runs: &[Vec<String>]) -> Vec<Value> {
    let children: Vec<_> = runs
        .iter()
        .map(|args| {
            Command::new(env!("CARGO_BIN_EXE_sendctl"))
                .arg("--socket")
                .arg(daemon.admin_socket())
                .arg("--json")
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run sendctl")
        })
        .collect();
    let outputs = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("sendctl"));
    (outputs.zip(runs))
        .map(|(out, args)| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ctl_result(&args, out)
        })
        .collect()
}

/// The result of `sendctl --json args`, which must have succeeded.
pub fn ctl_result(args: &[&str], out: std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "sendctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("sendctl --json prints JSON")
}

// ---- lifecycle: environment, signals, log lines ---------------------------------

impl Daemon {
    /// `start` with extra environment variables (NOTIFY_SOCKET, RUST_LOG, ...).
    pub fn start_with_env(config: DaemonConfig, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config.render(dir.path())).expect("write config");
        let (child, addr, stderr) = spawn_daemon_with_env(&config_path, env);
        Daemon {
            addr,
            dir,
            config_path,
            child: Some(child),
            stderr,
        }
    }

    /// Sends a signal by name (`TERM`, `HUP`, ...) and returns at once.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the daemon to exit (after a signal) and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("daemon running");
        let status = wait_for(timeout, "the daemon to exit", || {
            child.try_wait().expect("wait for daemon")
        });
        self.child = None;
        status
    }

    /// Waits for a stderr line containing `text` and returns it; earlier
    /// lines are consumed.
    /// The daemon's stderr lines not yet read by `wait_stderr` or this.
    pub fn stderr_so_far(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }

    pub fn wait_stderr(&self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(_) => panic!("no stderr line containing {text:?} from the daemon"),
            }
        }
    }
}

/// A delivery event numbered `n`, for tests of the event log file alone.
pub fn delivery_event(n: usize) -> sendengine::events::Event {
    sendengine::events::Event {
        time: "2026-11-21T12:00:00.000Z".into(),
        kind: sendengine::events::EventKind::Delivery,
        message_id: format!("{n:016x}"),
        header_message_id: format!("<{n}@test>"),
        sender: "app@example.com".into(),
        recipient: format!("rcpt{n}@example.net"),
        tenant: None,
        group: None,
        channel: "marketing".into(),
        campaign: None,
        route: Some("test".into()),
        remote_host: None,
        reply: None,
        bounce_class: None,
        bounce_type: None,
        tls: None,
        dkim: None,
        attempt: 1,
        queue_time_ms: 0,
        size: 100,
        url: None,
        user_agent: None,
        metadata: None,
    }
}
