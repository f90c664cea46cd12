//! Helpers shared by the integration tests: start the real `sendengine-sink`
//! binary on a random loopback port, run `sendengine-loadgen` (or another
//! program) with a deadlock guard, and talk raw SMTP.

#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// Deadlock guard for any child program; never reached when things work.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(180);
/// Deadlock guard for raw socket reads.
pub const READ_DEADLINE: Duration = Duration::from_secs(30);

pub const SINK: &str = env!("CARGO_BIN_EXE_sendengine-sink");
pub const LOADGEN: &str = env!("CARGO_BIN_EXE_sendengine-loadgen");

/// A running sink with its log in a temporary directory.
pub struct SinkProcess {
    child: Child,
    stdout: BufReader<ChildStdout>,
    pub addr: SocketAddr,
    pub dir: TempDir,
}

impl SinkProcess {
    /// Starts the sink with `--listen 127.0.0.1:0 --log DIR/log.jsonl --store-dir DIR/store` plus `extra`.
    pub fn start(extra: &[&str]) -> SinkProcess {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(SINK)
            .args(["--listen", "127.0.0.1:0", "--log"])
            .arg(dir.path().join("log.jsonl"))
            .arg("--store-dir")
            .arg(dir.path().join("store"))
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let addr = first
            .trim()
            .strip_prefix("sendengine-sink listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .parse()
            .unwrap();
        SinkProcess {
            child,
            stdout,
            addr,
            dir,
        }
    }

    pub fn server(&self) -> String {
        self.addr.to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The parsed lines of the JSON log.
    pub fn log(&self) -> Vec<Value> {
        let path = self.dir.path().join("log.jsonl");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    pub fn logged_message_ids(&self) -> Vec<String> {
        self.log()
            .iter()
            .map(|entry| entry["message_id"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn stored(&self, seq: u64) -> Vec<u8> {
        std::fs::read(self.dir.path().join("store").join(format!("{seq}.eml"))).unwrap()
    }

    pub fn ids_path(&self) -> PathBuf {
        self.dir.path().join("ids.txt")
    }

    /// Sends SIGTERM and returns what the sink printed after its first line.
    pub fn terminate(mut self) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        assert!(self.child.wait().unwrap().success());
        rest
    }
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to its end, killing it if it outlives `PROCESS_DEADLINE`.
pub fn run_guarded(command: &mut Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > PROCESS_DEADLINE {
            let _ = child.kill();
            panic!("{command:?} still running after {PROCESS_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// The result of one loadgen run.
pub struct LoadgenRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl LoadgenRun {
    /// A field of the `key=value` summary line.
    pub fn field(&self, key: &str) -> u64 {
        let prefix = format!("{key}=");
        self.stdout
            .split_ascii_whitespace()
            .find_map(|pair| pair.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {key} in {:?}", self.stdout))
            .parse()
            .unwrap()
    }
}

pub fn loadgen(sink: &SinkProcess, args: &[&str]) -> LoadgenRun {
    let output = run_guarded(
        Command::new(LOADGEN)
            .args(["--server", &sink.server()])
            .args(args),
    );
    LoadgenRun {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A plain SMTP client over a std socket, for protocol-level checks.
pub struct RawClient {
    reader: BufReader<TcpStream>,
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(READ_DEADLINE)).unwrap();
        RawClient {
            reader: BufReader::new(stream),
        }
    }

    pub fn send(&mut self, bytes: &str) {
        self.reader.get_mut().write_all(bytes.as_bytes()).unwrap();
    }

    /// Reads one reply; returns all its lines joined by '\n'.
    pub fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let read = self.reader.read_line(&mut line).unwrap();
            assert!(read > 0, "connection closed; reply so far {lines:?}");
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    pub fn command(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n"));
        self.reply()
    }

    /// True when the server closed the connection (EOF) before sending anything more.
    pub fn is_closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(self.reader.read_to_end(&mut rest), Ok(0))
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }
}
