//! The shared services of cluster mode for tests: PostgreSQL, Redis and
//! RabbitMQ on their standard loopback ports. Each `ensure_*` checks that
//! the service answers and starts it if not (the machine's own start
//! command); if it still does not answer, the test's peer is missing
//! (`missing_peer`: a failure under CI). Each test then takes a place of
//! its own (a fresh database, a Redis key prefix, a RabbitMQ vhost) so that
//! runs cannot collide.
//!
//! `#[path]`-included next to `peers.rs`, which it uses.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

pub const POSTGRES: &str = "127.0.0.1:5432";
pub const REDIS: &str = "127.0.0.1:6379";
pub const RABBITMQ: &str = "127.0.0.1:5672";

fn answers(addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().expect("service address");
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Checks `addr`; if down, runs `start` (a shell command) and waits up to
/// `wait` for it to answer. False (after `missing_peer`) if it never does.
fn ensure(what: &str, addr: &str, start: &str, wait: Duration) -> bool {
    if answers(addr) {
        return true;
    }
    eprintln!("{what} does not answer on {addr}; starting it: {start}");
    let _ = Command::new("sh").args(["-c", start]).status();
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if answers(addr) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    super::peers::missing_peer(
        &format!("{what} on {addr}"),
        &format!("start it with: {start}"),
    );
    false
}

pub fn ensure_postgres() -> bool {
    ensure(
        "PostgreSQL",
        POSTGRES,
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
        Duration::from_secs(30),
    )
}

pub fn ensure_redis() -> bool {
    ensure(
        "Redis",
        REDIS,
        "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log",
        Duration::from_secs(15),
    )
}

pub fn ensure_rabbitmq() -> bool {
    ensure(
        "RabbitMQ",
        RABBITMQ,
        "rabbitmq-server -detached",
        Duration::from_secs(60),
    )
}

/// A name no other test run uses: `prefix`, the time in seconds, the
/// process id and a counter (`fresh_database` reads the time back to drop
/// what old runs left).
pub fn unique_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}_t{}_{}_{n}", unix_seconds(), std::process::id())
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Test databases older than this are dropped by the next run.
const STALE_DATABASE_SECS: u64 = 6 * 3600;

/// Drops the databases earlier runs made (names from `unique_name`) that
/// are older than [`STALE_DATABASE_SECS`]: a run killed midway cleans up
/// nothing, and CI runs on a machine that lives on.
fn drop_stale_databases() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let names = psql("test", "SELECT datname FROM pg_database");
        let now = unix_seconds();
        for name in names.lines().map(str::trim) {
            let made = name
                .split('_')
                .find_map(|part| part.strip_prefix('t').and_then(|t| t.parse::<u64>().ok()))
                .filter(|&t| t > 1_600_000_000);
            if made.is_some_and(|t| now.saturating_sub(t) > STALE_DATABASE_SECS) {
                let _ = Command::new("psql")
                    .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c"])
                    .arg(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .output();
            }
        }
    });
}

/// Runs `sql` on database `db` with psql; panics with psql's stderr on failure.
pub fn psql(db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            db,
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A new, empty database of this test's own; returns its URL. None when
/// PostgreSQL is missing outside CI (the test returns).
pub fn fresh_database(prefix: &str) -> Option<String> {
    if !ensure_postgres() {
        return None;
    }
    drop_stale_databases();
    let name = unique_name(prefix).to_ascii_lowercase();
    psql("test", &format!("CREATE DATABASE \"{name}\""));
    Some(format!("postgres://postgres@127.0.0.1:5432/{name}"))
}

/// The URL of Redis and a key prefix of this test's own. None when Redis
/// is missing outside CI.
pub fn fresh_redis(prefix: &str) -> Option<(String, String)> {
    if !ensure_redis() {
        return None;
    }
    Some((format!("redis://{REDIS}"), unique_name(prefix)))
}

/// A new RabbitMQ vhost of this test's own (guest has every right on it);
/// returns the AMQP URL. None when RabbitMQ is missing outside CI.
pub fn fresh_vhost(prefix: &str) -> Option<String> {
    if !ensure_rabbitmq() {
        return None;
    }
    let name = unique_name(prefix);
    let ctl = |args: &[&str]| {
        let out = Command::new("rabbitmqctl")
            .args(args)
            .output()
            .expect("run rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ctl(&["add_vhost", &name]);
    ctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
    Some(format!("amqp://guest:guest@{RABBITMQ}/{name}"))
}
