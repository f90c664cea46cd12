//! The durability contract: a 250 means the message is on disk.
//!
//! - kill -9 while a client injects: every acknowledged message is
//!   delivered after restart; duplicates only for messages in flight.
//! - a spool that cannot write (a full tmpfs): 451 4.3.0, never 250, the
//!   daemon keeps serving and recovers by itself when space returns.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Daemon, DaemonConfig, Sink, free_port, target_dir, wait_for};

/// A few bits of randomness without a crate: the clock's nanoseconds.
fn jitter(max_ms: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    Duration::from_millis(nanos % max_ms)
}

#[test]
fn kill_9_while_injecting_loses_no_acknowledged_message() {
    let sink = Sink::start(&[]);
    let mut cfg = DaemonConfig::new(sink.addr.port());
    cfg.listen_port = free_port();
    // Every body in a segment file (a short queue keeps them in the
    // database, which the soak covers too).
    cfg.extra_spool = "segment_bodies_from = 0\n".into();
    let mut daemon = Daemon::start(cfg);
    let ids_file = daemon.dir.path().join("acked-ids.txt");

    let _ = support::sink_binary(); // builds the loadgen too
    let mut loadgen = Command::new(target_dir().join("sendengine-loadgen"))
        .args(["--server", &daemon.addr.to_string()])
        .args([
            "--messages",
            "4000",
            "--connections",
            "10",
            "--size",
            "2000",
            "--keep-going",
        ])
        .arg("--ids-file")
        .arg(&ids_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sendengine-loadgen");

    let kills = 5;
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(300) + jitter(900));
        daemon.kill9();
        std::thread::sleep(jitter(300));
        daemon.restart();
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = loadgen.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "loadgen did not finish");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut summary = String::new();
    use std::io::Read;
    loadgen
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut summary)
        .unwrap();
    eprintln!("loadgen: {summary} ({status})");

    let acked: Vec<String> = std::fs::read_to_string(&ids_file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        acked.len() > 1000,
        "too few messages were acknowledged: {}",
        acked.len()
    );

    let counts = wait_for(
        Duration::from_secs(300),
        "every acknowledged message at the sink",
        || {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for m in sink.messages() {
                *counts
                    .entry(m["message_id"].as_str().unwrap_or("").to_owned())
                    .or_default() += 1;
            }
            acked
                .iter()
                .all(|id| counts.contains_key(id))
                .then_some(counts)
        },
    );
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "acknowledged={} delivered={} duplicates={duplicates} after {kills} kills",
        acked.len(),
        counts.len()
    );
    // In flight at a kill: at most the open transactions plus outcomes not
    // yet committed, per kill.
    assert!(
        duplicates <= kills * 200,
        "{duplicates} duplicates is more than in-flight work"
    );
}

/// Mounts a tmpfs for the test's spool and unmounts it at the end.
struct Tmpfs {
    path: std::path::PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs {
            path: path.to_owned(),
        })
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

const INJECT: &str = r#"
import smtplib, sys
host, port, n, tag = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
body = "x" * 76 + "\r\n"
with smtplib.SMTP(host, port, timeout=60) as s:
    for i in range(n):
        mid = "<%s-%d@test>" % (tag, i)
        msg = "Message-ID: %s\r\nSubject: big\r\n\r\n%s" % (mid, body * 2500)
        try:
            s.sendmail("a@example.com", ["b@example.net"], msg)
            print("ok", mid)
        except smtplib.SMTPDataError as e:
            print("refused", e.smtp_code, e.smtp_error.decode())
    print("noop", s.noop()[0])
"#;

fn inject(addr: std::net::SocketAddr, n: usize, tag: &str) -> Vec<String> {
    let out = support::python(
        INJECT,
        &[
            addr.ip().to_string(),
            addr.port().to_string(),
            n.to_string(),
            tag.into(),
        ],
    )
    .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn full_disk_gives_451_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tmpfs) = Tmpfs::mount(&dir.path().join("spool"), "8m") else {
        support::missing_peer("a tmpfs mount", "mounting one needs root");
        return;
    };
    // The delivery server is down, so the spool only grows.
    let sink_port = free_port();
    let daemon = Daemon::start_in(dir, &DaemonConfig::new(sink_port));

    let lines = inject(daemon.addr, 40, "fill");
    let accepted: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("ok ")).collect();
    let refused: Vec<&String> = lines.iter().filter(|l| l.starts_with("refused")).collect();
    assert!(!accepted.is_empty(), "some messages fit: {lines:?}");
    assert!(!refused.is_empty(), "the disk never filled: {lines:?}");
    assert!(
        refused[0].starts_with("refused 451 4.3.0 "),
        "{}",
        refused[0]
    );
    assert_eq!(lines.last().unwrap(), "noop 250", "the session still works");

    // Space returns: new mail is accepted without a restart.
    tmpfs.resize("256m");
    let lines = inject(daemon.addr, 3, "after");
    assert!(
        lines.iter().filter(|l| l.starts_with("ok ")).count() == 3,
        "{lines:?}"
    );

    // Nothing acknowledged was lost: once the relay is up, all of it arrives.
    let sink = Sink::start_on(sink_port, &[]);
    let total = accepted.len() + 3;
    let got = sink.wait_messages(total, Duration::from_secs(120));
    for id in &accepted {
        assert!(
            got.iter().any(|m| m["message_id"] == *id),
            "{id} was acknowledged but lost"
        );
    }
    drop(daemon);
}
