//! Crash safety: a child process inserts (and defers, and finishes some
//! recipients) in a loop and prints every acknowledged id; it is killed with
//! SIGKILL at a random point; reopening must find every acknowledged message.
//!
//! The child is this test binary run again with an env var set, so no extra
//! binary has to be built.

mod common;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{DEADLOCK_GUARD, assert_stored, message, open};
use sendengine_queue::{MessageId, Outcome, Spool, SpoolConfig};
use tempfile::tempdir;

const CHILD_DIR_ENV: &str = "SENDENGINE_QUEUE_KILL9_CHILD_DIR";
const CHILD_TEST_NAME: &str = "kill9_child_inserter";
const INSERT_THREADS: u64 = 4;
const CYCLES: usize = 4;

/// What the child printed for one acknowledged insert.
struct Ack {
    id: MessageId,
    seed: u64,
}

/// Seeds say how to rebuild the message: distinct per thread and per cycle.
fn seed(cycle: u64, thread_no: u64, i: u64) -> u64 {
    (cycle << 40) | (thread_no << 32) | i
}

fn child_message(seed: u64) -> sendengine_queue::NewMessage {
    let body_len = 200 + (seed as usize * 7919) % 30_000;
    message(seed, 2, body_len)
}

/// The child's work. A no-op when run as an ordinary test.
#[test]
fn kill9_child_inserter() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let cycle: u64 = std::env::var("KILL9_CYCLE")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut config = SpoolConfig::new(dir);
    // Every cycle leaves its messages queued (recipient 0 is deferred) and
    // acknowledges at least 20, so the four cycles always cross this: the
    // kills meet bodies in the database, in segment files, and the switch.
    config.segment_bodies_from = 50;
    let spool = Spool::open(config).expect("child opens the spool");
    let defer_loop = {
        let spool = spool.clone();
        thread::spawn(move || churn(&spool))
    };
    let inserters: Vec<_> = (0..INSERT_THREADS)
        .map(|thread_no| {
            let spool = spool.clone();
            thread::spawn(move || insert_forever(&spool, cycle, thread_no))
        })
        .collect();
    for inserter in inserters {
        let _ = inserter.join();
    }
    let _ = defer_loop.join();
}

fn insert_forever(spool: &Spool, cycle: u64, thread_no: u64) {
    for i in 0.. {
        let seed = seed(cycle, thread_no, i);
        let id = spool
            .insert_blocking(child_message(seed), i % 2 == 0)
            .expect("child insert");
        let mut out = std::io::stdout().lock();
        writeln!(out, "ACK {id} {seed}").expect("write ack");
        out.flush().expect("flush ack");
    }
}

/// Claims due recipients, finishes recipient 1 and defers recipient 0, so
/// the file sees removals and schedule changes while it is killed.
fn churn(spool: &Spool) {
    loop {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let claimed = spool.claim_due(now, 100).expect("child claim");
        let outcomes = claimed
            .iter()
            .map(|c| match c.rcpt {
                0 => Outcome::Deferred {
                    id: c.id,
                    rcpt: 0,
                    next_attempt_ms: now + 60_000,
                    reply: String::new(),
                },
                _ => Outcome::Done {
                    id: c.id,
                    rcpt: c.rcpt,
                },
            })
            .collect();
        spool.record_blocking(outcomes).expect("child record");
        thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn kill_9_loses_no_acknowledged_message() {
    if std::env::var(CHILD_DIR_ENV).is_ok() {
        return;
    }
    let dir = tempdir().unwrap();
    let mut all_acks = Vec::new();
    for cycle in 0..CYCLES {
        let kill_after = 20 + RandomState::new().hash_one(cycle) % 400;
        let acks = run_child_and_kill(dir.path(), cycle as u64, kill_after as usize);
        eprintln!(
            "cycle {cycle}: killed after {} acknowledged inserts",
            acks.len()
        );
        assert!(acks.len() >= kill_after as usize);
        all_acks.extend(acks);
        check_everything_survived(dir.path(), &all_acks);
    }
}

/// Runs the child until it acknowledged `kill_after` inserts, SIGKILLs it,
/// and returns every ack it printed, including those still in the pipe.
fn run_child_and_kill(dir: &Path, cycle: u64, kill_after: usize) -> Vec<Ack> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            CHILD_TEST_NAME,
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env("KILL9_CYCLE", cycle.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });

    let mut acks = Vec::new();
    while acks.len() < kill_after {
        let line = lines
            .recv_timeout(DEADLOCK_GUARD)
            .expect("the child keeps acknowledging");
        acks.extend(parse_ack(&line));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    acks.extend(lines.try_iter().filter_map(|line| parse_ack(&line)));
    acks
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut words = line.strip_prefix("ACK ")?.split(' ');
    let id = words.next()?.parse().ok()?;
    let seed = words.next()?.parse().ok()?;
    Some(Ack { id, seed })
}

fn check_everything_survived(dir: &Path, acks: &[Ack]) {
    let spool = open(dir);
    for ack in acks {
        // The churn thread never finishes recipient 0, so every message stays.
        assert_stored(&spool, ack.id, &child_message(ack.seed));
    }
    let stats = spool.stats().unwrap();
    assert_eq!(
        stats.claimed, 0,
        "recovery scheduled every claimed recipient"
    );
    assert_eq!(stats.scheduled, stats.recipients);
    assert!(stats.messages >= acks.len() as u64);
}
