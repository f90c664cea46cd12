//! The programs a benchmark run starts: the sink, the daemon under test, the
//! load generator and `sendctl`. Each is a child process found next to the
//! runner's own executable (or in `--bin-dir`), stopped by its own PID.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::RunError;

/// Longest wait for the daemon's "ready" line (RSA key generation and a
/// large spool's recovery happen before it).
pub const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest wait for a SIGTERM'd process to exit before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the tools' executables are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    /// The folder of the running executable: `cargo build --release` puts
    /// every binary of the workspace there.
    pub fn beside_self() -> Binaries {
        let dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        Binaries { dir }
    }

    pub fn path(&self, name: &str) -> Result<PathBuf, RunError> {
        let path = self.dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(RunError::Failed(format!(
                "{} not found: build it with `cargo build --release -p sendengine -p sendengine-benches` or give --bin-dir",
                path.display()
            )))
        }
    }
}

fn spawn_error(program: &Path, source: std::io::Error) -> RunError {
    RunError::Io {
        what: format!("cannot start {}", program.display()),
        source,
    }
}

/// Sends `signal` (e.g. "-TERM") to `pid` with kill(1): the runner has no
/// libc binding of its own.
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL.
fn stop_child(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    signal(child.id(), "-TERM");
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `sendengine-sink` writing one JSON line per accepted message to `log`.
pub struct Sink {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Sink {
    /// Starts the sink on 127.0.0.1:`port` (0 = any free port).
    pub fn start(bins: &Binaries, port: u16, log: &Path) -> Result<Sink, RunError> {
        let program = bins.path("sendengine-sink")?;
        let mut child = Command::new(&program)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--log")
            .arg(log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| spawn_error(&program, source))?;
        let mut first_line = String::new();
        if let Some(stdout) = child.stdout.take() {
            let mut reader = BufReader::new(stdout);
            let _ = reader.read_line(&mut first_line);
            // Keep reading: the sink prints its summary at exit, and a
            // closed pipe would make that fail.
            std::thread::spawn(move || {
                for line in reader.lines().map_while(Result::ok) {
                    eprintln!("{line}");
                }
            });
        }
        let port = first_line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| {
                RunError::Failed(format!(
                    "sendengine-sink did not say where it listens: {first_line:?}"
                ))
            })?;
        Ok(Sink {
            child,
            port,
            log: log.to_path_buf(),
        })
    }

    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The daemon under test, started on a configuration file.
pub struct Daemon {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    /// When the process was spawned and when it said "ready".
    pub spawned: Instant,
    pub ready: Instant,
}

impl Daemon {
    /// Starts `sendengine --config CONFIG` and waits for its "ready" line.
    /// Its stderr goes to `log` (a thread copies it, keeping the pipe drained).
    pub fn start(bins: &Binaries, config: &Path, log: &Path) -> Result<Daemon, RunError> {
        let program = bins.path("sendengine")?;
        let spawned = Instant::now();
        let mut child = Command::new(&program)
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| spawn_error(&program, source))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| RunError::Failed("no stderr pipe from the daemon".into()))?;
        let (lines_tx, lines_rx) = mpsc::channel();
        let log_path = log.to_path_buf();
        std::thread::spawn(move || copy_daemon_log(stderr, &log_path, lines_tx));
        let pid = child.id();
        let mut daemon = Daemon {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            spawned,
            ready: spawned,
        };
        daemon.wait_ready(&lines_rx, log)?;
        Ok(daemon)
    }

    fn wait_ready(&mut self, lines: &mpsc::Receiver<String>, log: &Path) -> Result<(), RunError> {
        let deadline = Instant::now() + DAEMON_START_TIMEOUT;
        let mut addr = None;
        while Instant::now() < deadline {
            match lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(text) = line.strip_prefix("sendengine: listening on ") {
                        addr = addr.or(text.trim().parse().ok());
                    }
                    if line.trim() == "sendengine: ready" {
                        self.ready = Instant::now();
                        self.addr = addr.ok_or_else(|| {
                            RunError::Failed("the daemon did not say where it listens".into())
                        })?;
                        return Ok(());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        Err(RunError::Failed(format!(
            "the daemon did not become ready; its log: {}",
            log.display()
        )))
    }

    /// SIGTERM and wait for the exit (SIGKILL after two minutes).
    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }

    /// SIGKILL: a crash, no chance to close the spool cleanly.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies the daemon's stderr to `log`, passing each line on until nobody listens.
fn copy_daemon_log(stderr: std::process::ChildStderr, log: &Path, lines: mpsc::Sender<String>) {
    use std::io::Write;
    let mut file = crate::open_append(log).ok();
    let mut forward = true;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if let Some(file) = file.as_mut() {
            let _ = writeln!(file, "{line}");
        }
        if forward && lines.send(line).is_err() {
            forward = false;
        }
    }
}

/// The load generator's options for one injection.
#[derive(Debug, Clone)]
pub struct Injection {
    pub server: SocketAddr,
    pub messages: u64,
    pub connections: usize,
    pub size: usize,
    pub rcpts: usize,
    pub rate: f64,
    pub acks_file: Option<PathBuf>,
    /// A fresh connection per message (`--connection-per-message`).
    pub connection_per_message: bool,
    /// STARTTLS on each connection (`--starttls`).
    pub starttls: bool,
}

/// What the load generator reported (its --json summary).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct InjectionSummary {
    pub acked: u64,
    pub tempfail: u64,
    pub permfail: u64,
    pub conn_errors: u64,
    pub elapsed_s: f64,
    pub msgs_per_s: f64,
}

/// A running `sendengine-loadgen`.
pub struct Loadgen {
    child: Child,
}

impl Loadgen {
    pub fn start(bins: &Binaries, injection: &Injection) -> Result<Loadgen, RunError> {
        let program = bins.path("sendengine-loadgen")?;
        let mut command = Command::new(&program);
        command
            .arg("--server")
            .arg(injection.server.to_string())
            .arg("--messages")
            .arg(injection.messages.to_string())
            .arg("--connections")
            .arg(injection.connections.to_string())
            .arg("--size")
            .arg(injection.size.to_string())
            .arg("--rcpts")
            .arg(injection.rcpts.to_string())
            .arg("--rate")
            .arg(injection.rate.to_string())
            .arg("--timeout")
            .arg("300")
            .arg("--json");
        if let Some(path) = &injection.acks_file {
            command.arg("--acks-file").arg(path);
        }
        if injection.connection_per_message {
            command.arg("--connection-per-message");
        }
        if injection.starttls {
            command.arg("--starttls");
        }
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| spawn_error(&program, source))?;
        Ok(Loadgen { child })
    }

    /// Whether it has exited.
    pub fn finished(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Kills it (the run stops short; there is no summary).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the exit and reads the summary.
    pub fn finish(self) -> Result<InjectionSummary, RunError> {
        let output = self
            .child
            .wait_with_output()
            .map_err(|source| RunError::Io {
                what: "cannot wait for sendengine-loadgen".into(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().last().unwrap_or("");
        serde_json::from_str(line)
            .map_err(|err| RunError::Failed(format!("unreadable loadgen summary {line:?}: {err}")))
    }
}

/// Runs `sendctl --socket SOCKET ARGS...` and returns its stdout.
pub fn sendctl(bins: &Binaries, socket: &Path, args: &[&str]) -> Result<String, RunError> {
    let program = bins.path("sendctl")?;
    let output = Command::new(&program)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .map_err(|source| spawn_error(&program, source))?;
    if !output.status.success() {
        return Err(RunError::Failed(format!(
            "sendctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Bytes free for unprivileged users on the file system of `dir` (`df`).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let output = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// A loopback port nobody listens on right now (bound, then released).
pub fn unused_port() -> Result<u16, RunError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| RunError::Io {
        what: "cannot bind a loopback port".into(),
        source,
    })?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|source| RunError::Io {
            what: "cannot read a bound port".into(),
            source,
        })
}
