//! The scheduler against a real daemon, real clients and a real relay:
//! - ready queues are bounded per route (issue 14.7): a slow route's
//!   backlog waits in the spool, not in memory, and `queue suspend`
//!   reaches what waits in the ready queue;
//! - a rate limit counts only mail that went: a worker that waited for a
//!   place and found its job taken by another gives the place back;
//! - a disk filled by another process pauses delivery (issue 15.1): at
//!   most one copy per recipient while outcomes cannot be written, one
//!   log line per interval, and every outcome recorded once space returns.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Daemon, DaemonConfig, Sink, ctl, free_port, wait_for};

/// VmRSS of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kb * 1024
}

/// Sends `n` messages of `size` bytes over `threads` smtplib connections.
const INJECT: &str = r#"
import smtplib, sys, threading
host, port, n, size, threads, campaign = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
line = "y" * 76 + "\r\n"
body = line * (size // len(line))
failed = []
def run(t):
    with smtplib.SMTP(host, port, timeout=120) as s:
        for i in range(t, n, threads):
            msg = "Message-ID: <m%d@test>\r\nX-Campaign-Id: %s\r\nSubject: s\r\n\r\n%s" % (i, campaign, body)
            try:
                s.sendmail("a@example.com", ["r%d@example.net" % i], msg)
            except smtplib.SMTPException as e:
                failed.append(str(e))
ts = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
[t.start() for t in ts]
[t.join() for t in ts]
print("failed", len(failed), failed[:3])
"#;

fn inject(daemon: &Daemon, n: usize, size: usize, campaign: &str) -> String {
    let args = [
        daemon.addr.ip().to_string(),
        daemon.addr.port().to_string(),
        n.to_string(),
        size.to_string(),
        "4".into(),
        campaign.into(),
    ];
    let out = support::python(INJECT, &args).expect("python3 runs (CI installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// 12 messages at once on a route paced at 2 a second and limited to 14
/// an hour: up to three workers wait for places, and at the end of the
/// burst those that find the queue empty give theirs back, so the last
/// two of the hour's 14 go at once instead of 257 s later.
#[test]
fn places_the_rate_gave_for_jobs_another_worker_took_are_given_back() {
    let sink = Sink::start(&[]);
    let mut config = DaemonConfig::new(sink.addr.port());
    config.extra_server = "rate_per_second = 2\nrate_per_hour = 14\n".into();
    let daemon = Daemon::start(config);

    let result = inject(&daemon, 12, 1_000, "burst");
    assert!(result.starts_with("failed 0 "), "{result}");
    sink.wait_messages(12, Duration::from_secs(60));
    // The workers still waiting for a place get one now, and find nothing.
    std::thread::sleep(Duration::from_secs(2));

    let started = Instant::now();
    let result = inject(&daemon, 2, 1_000, "after");
    assert!(result.starts_with("failed 0 "), "{result}");
    sink.wait_messages(14, Duration::from_secs(20));
    eprintln!("the hour's last two went in {:?}", started.elapsed());
}

/// One slow route (1 message/s) among idle ones, `ready_queue_size = 10`,
/// 3,000 messages of 20 KB (60 MB of bodies): the daemon's memory stays
/// far below the bodies' size, and `queue suspend` changes what waits.
#[test]
fn a_slow_routes_backlog_waits_on_disk_and_suspend_reaches_it() {
    let sink = Sink::start(&[]);
    let idle: String = (1..=5)
        .map(|i| {
            format!(
                "[[delivery_server]]\nname = \"spare-{i}\"\nhost = \"127.0.0.1\"\nport = 9\nencryption = \"none\"\n"
            )
        })
        .collect();
    let mut config = DaemonConfig::new(sink.addr.port());
    // A small page cache, so that what is measured is the queued jobs.
    config.extra_spool = "cache_size = \"4MB\"\n".into();
    config.extra_delivery = "ready_queue_size = 10\nretry_schedule = [\"1h\"]\n".into();
    config.extra_server = format!(
        "rate_per_second = 1\n{idle}[[user_group]]\nname = \"default\"\n\
         marketing = [\"test-sink\"]\ntransactional = [\"test-sink\"]\n\
         autoresponder = [\"test-sink\"]\n[[user]]\nname = \"app\"\n"
    );
    config.extra_smtp_in = "default_user = \"app\"\n".into();
    let daemon = Daemon::start(config);
    let pid = daemon.pid();
    let before = rss_bytes(pid);

    let (messages, size) = (3_000usize, 20_000usize);
    let sampler = {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_bytes(pid));
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        (stop, handle)
    };
    let result = inject(&daemon, messages, size, "big");
    assert!(result.starts_with("failed 0 "), "{result}");
    // Give the scheduler rounds to (wrongly) pull the backlog into memory.
    std::thread::sleep(Duration::from_secs(3));
    sampler.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.1.join().unwrap().max(rss_bytes(pid));

    let bodies = (messages * size) as u64;
    let growth = peak.saturating_sub(before);
    eprintln!(
        "RSS before {} MiB, peak {} MiB, bodies {} MiB",
        before >> 20,
        peak >> 20,
        bodies >> 20
    );
    assert!(
        growth < bodies / 3,
        "RSS grew by {} MiB for {} MiB of bodies: the backlog is in memory",
        growth >> 20,
        bodies >> 20
    );

    let suspended = ctl(&daemon, &["queue", "suspend", "--campaign", "big"]);
    let changed = suspended["changed"].as_u64().unwrap();
    let skipped = suspended["in_flight_skipped"].as_u64().unwrap();
    let delivered = sink.messages().len() as u64;
    assert!(
        skipped <= 5,
        "only what the 5 connections hold is beyond reach: {suspended}"
    );
    assert!(
        changed + skipped + delivered + 5 >= messages as u64,
        "suspend reached the queue: {suspended}, {delivered} delivered"
    );
    // Nothing suspended is sent any more.
    std::thread::sleep(Duration::from_secs(3));
    let after = sink.messages().len() as u64;
    assert!(
        after <= delivered + skipped + 5,
        "{after} delivered after suspending at {delivered}"
    );
}

// ---- the disk filled by another process ------------------------------------

struct Tmpfs {
    path: std::path::PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Tmpfs {
            path: path.to_owned(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Another process fills the filesystem to 0 bytes free.
fn fill(dir: &Path) -> std::path::PathBuf {
    let filler = dir.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run dd");
    filler
}

/// 200 messages queued with the relay down; the disk is filled to 0 bytes
/// by another process; the relay comes back. While the disk is full each
/// recipient is delivered at most once and the log does not flood; once
/// space returns every outcome is recorded.
#[test]
fn a_full_disk_pauses_delivery_and_every_outcome_is_recorded_later() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let tmpfs = Tmpfs::mount(&spool_dir, "64m");
    let sink_port = free_port();
    let mut cfg = DaemonConfig::new(sink_port);
    cfg.extra_delivery = "retry_schedule = [\"2s\"]\nfailover_backoff = \"1s\"\n".into();
    let daemon = Daemon::start_in(dir, &cfg);

    let result = inject(&daemon, 200, 2_000, "c");
    assert!(result.starts_with("failed 0 "), "{result}");
    // Every recipient has had its failed attempt: deferred on disk.
    daemon.wait_events("transient_failure", 200, Duration::from_secs(60));
    let _drain: Vec<String> = daemon.stderr.try_iter().collect();

    let filler = fill(&tmpfs.path);
    let sink = Sink::start_on(sink_port, &[]);
    let full_since = Instant::now();
    std::thread::sleep(Duration::from_secs(12));
    let while_full = sink.messages();
    let mut copies: HashMap<String, usize> = HashMap::new();
    for m in &while_full {
        *copies
            .entry(m["message_id"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    let worst = copies.values().max().copied().unwrap_or(0);
    assert!(
        worst <= 1,
        "a message was sent {worst} times while its outcome could not be written"
    );
    let lines: Vec<String> = daemon.stderr.try_iter().collect();
    eprintln!(
        "{} deliveries and {} log lines in {:?} with the disk full",
        while_full.len(),
        lines.len(),
        full_since.elapsed()
    );
    assert!(
        lines.len() <= 20,
        "the log floods while the disk is full: {} lines, e.g. {:?}",
        lines.len(),
        lines.first()
    );

    std::fs::remove_file(&filler).unwrap();
    wait_for(Duration::from_secs(60), "the spool to empty", || {
        let summary = ctl(&daemon, &["queue", "summary"]);
        (summary["recipients"] == 0).then_some(())
    });
    let delivered = daemon.wait_events("delivery", 200, Duration::from_secs(30));
    let mut per_recipient: HashMap<String, usize> = HashMap::new();
    for e in &delivered {
        *per_recipient
            .entry(e["recipient"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_recipient.len(), 200, "every outcome is recorded");
    let got = sink.wait_messages(200, Duration::from_secs(30));
    let mut copies: HashMap<String, usize> = HashMap::new();
    for m in &got {
        *copies
            .entry(m["message_id"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    assert_eq!(copies.len(), 200);
    assert!(
        copies.values().all(|&n| n == 1),
        "one copy each: {copies:?}"
    );
}

// ---- direct-delivery sites ---------------------------------------------------

/// A direct-delivery site lives while it has mail or a connection, and is
/// dropped once idle (before: every domain ever mailed kept a route).
#[test]
fn an_idle_direct_delivery_site_is_dropped() {
    use support::dns_server::{DnsServer, RecordData};
    let sink = Sink::start(&[]);
    let dns = DnsServer::start([
        ("example.net", RecordData::mx(10, "mx.example.net")),
        (
            "mx.example.net",
            RecordData::A(std::net::Ipv4Addr::LOCALHOST),
        ),
    ]);
    let config = format!(
        "[smtp_in]\nlisten = [\"127.0.0.1:0\"]\nrelay_networks = [\"127.0.0.0/8\"]\n\
         default_user = \"app\"\n[delivery]\nretry_schedule = [\"1h\"]\nidle_timeout = \"1s\"\n[dns]\n{}\n\
         [direct]\nport = {}\ntimeout = \"5s\"\n\
         [[delivery_server]]\nname = \"unused\"\nhost = \"127.0.0.1\"\nport = 9\n\
         [[user_group]]\nname = \"default\"\nmarketing = [\"direct\"]\n\
         transactional = [\"direct\"]\nautoresponder = [\"direct\"]\n\
         [[user]]\nname = \"app\"\n",
        dns.nameservers_line(),
        sink.addr.port()
    );
    let daemon = Daemon::start(DaemonConfig::custom(&config));
    let out = support::smtplib_send(
        daemon.addr,
        "app@example.com",
        &["a@example.net"],
        "<site@test>",
    );
    assert!(out.contains("refused=0"), "{out}");
    daemon.wait_events("delivery", 1, Duration::from_secs(60));
    let sites = |daemon: &Daemon| -> Vec<String> {
        let status = ctl(daemon, &["status"]);
        status["routes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str())
            .filter(|n| n.starts_with("direct:"))
            .map(str::to_owned)
            .collect()
    };
    // Still there while its connection idles (1 s), gone soon after.
    wait_for(
        Duration::from_secs(30),
        "the idle site to be dropped",
        || sites(&daemon).is_empty().then_some(()),
    );
    // The next mail for the domain makes a fresh site and is delivered.
    let out = support::smtplib_send(
        daemon.addr,
        "app@example.com",
        &["b@example.net"],
        "<site-2@test>",
    );
    assert!(out.contains("refused=0"), "{out}");
    daemon.wait_events("delivery", 2, Duration::from_secs(60));
}
