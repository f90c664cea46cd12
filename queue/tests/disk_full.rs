//! A real storage failure: the spool lives on a 4 MiB tmpfs that fills up.
//! Inserts must fail with an error (not hang, not panic), the writer must
//! reopen the database after redb latched the I/O error, retry while reopening
//! fails, and accept inserts again once the filesystem has room, all without
//! restarting the `Spool`. Needs root (mount); skipped with a message otherwise.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{DEADLOCK_GUARD, assert_stored, config, message};
use sendengine_queue::{MessageId, Spool, SpoolConfig, SpoolError};
use tempfile::tempdir;

const BODY_BYTES: usize = 10_000;
/// 2,000 messages of 10 KB cannot fit in 4 MiB: the disk fills long before.
const MAX_FILL_INSERTS: u64 = 2_000;

/// A tmpfs mounted for one test; unmounted on drop, even when the test fails.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let options = format!("size={size}");
        run(
            "mount",
            &["-t", "tmpfs", "-o", &options, "tmpfs", path_str(dir)],
        )?;
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    fn resize(&self, size: &str) {
        let options = format!("remount,size={size}");
        run("mount", &["-o", &options, path_str(&self.dir)]).expect("remount the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if run("umount", &[path_str(&self.dir)]).is_err() {
            let _ = run("umount", &["-l", path_str(&self.dir)]);
        }
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn fast_retry_config(dir: &Path) -> SpoolConfig {
    let mut cfg = config(dir);
    cfg.reopen_delay = Duration::from_millis(50);
    cfg
}

/// Inserts until the disk is full; returns what was acknowledged and the
/// first error.
fn fill(spool: &Spool, first_seed: u64) -> (Vec<(MessageId, u64)>, SpoolError) {
    let mut acked = Vec::new();
    for seed in first_seed..first_seed + MAX_FILL_INSERTS {
        match spool.insert_blocking(message(seed, 2, BODY_BYTES), false) {
            Ok(id) => acked.push((id, seed)),
            Err(err) => return (acked, err),
        }
    }
    panic!("{MAX_FILL_INSERTS} inserts of {BODY_BYTES} bytes fit in a 4 MiB tmpfs");
}

/// Retries an insert until the writer has reopened the database.
fn insert_when_possible(spool: &Spool, seed: u64) -> MessageId {
    let deadline = Instant::now() + DEADLOCK_GUARD;
    loop {
        match spool.insert_blocking(message(seed, 2, BODY_BYTES), false) {
            Ok(id) => return id,
            Err(SpoolError::Storage(_)) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20))
            }
            Err(err) => panic!("the spool did not recover: {err}"),
        }
    }
}

fn assert_all_stored(spool: &Spool, acked: &[(MessageId, u64)]) {
    for &(id, seed) in acked {
        assert_stored(spool, id, &message(seed, 2, BODY_BYTES));
    }
}

#[test]
fn a_full_disk_fails_requests_and_the_spool_recovers_when_space_returns() {
    let root = tempdir().unwrap();
    let mount_dir = root.path().join("tmpfs");
    let tmpfs = match Tmpfs::mount(&mount_dir, "4m") {
        Ok(tmpfs) => tmpfs,
        Err(reason) => {
            common::missing_peer(
                &format!("a tmpfs mount ({reason})"),
                "run as root to test a full disk",
            );
            return;
        }
    };
    let spool_dir = mount_dir.join("spool");
    let spool = Spool::open(fast_retry_config(&spool_dir)).unwrap();

    let (mut acked, err) = fill(&spool, 0);
    eprintln!("disk full after {} inserts: {err}", acked.len());
    assert!(matches!(err, SpoolError::Storage(_)), "{err}");
    assert!(!acked.is_empty());

    // Make reopening fail too: hide the file behind a directory of its name.
    // The writer must keep retrying, and requests must keep getting errors.
    let db_file = spool_dir.join("spool.redb");
    let moved = spool_dir.join("spool.redb.moved");
    fs::rename(&db_file, &moved).unwrap();
    fs::create_dir(&db_file).unwrap();
    let (more, err) = fill(&spool, 10_000);
    acked.extend(more);
    for _ in 0..3 {
        let err = spool
            .insert_blocking(message(1, 1, 100), false)
            .unwrap_err();
        assert!(
            err.to_string().contains("reopening the database failed"),
            "{err}"
        );
    }
    eprintln!("while the file is hidden: {err}");

    // Give the space and the file back: the same Spool works again.
    fs::remove_dir(&db_file).unwrap();
    fs::rename(&moved, &db_file).unwrap();
    tmpfs.resize("64m");
    let id = insert_when_possible(&spool, 20_000);
    acked.push((id, 20_000));
    for seed in 20_001..20_020 {
        let id = spool
            .insert_blocking(message(seed, 2, BODY_BYTES), false)
            .unwrap();
        acked.push((id, seed));
    }
    let stats = spool.stats().unwrap();
    eprintln!("{stats:?}");
    assert!(stats.reopens >= 1 && stats.failed_batches >= 2);
    assert_all_stored(&spool, &acked);

    // Nothing committed before the failures was damaged.
    spool.shutdown();
    drop(spool);
    let reopened = Spool::open(fast_retry_config(&spool_dir)).unwrap();
    assert_all_stored(&reopened, &acked);
    assert_eq!(reopened.stats().unwrap().messages, acked.len() as u64);
}
