//! Files the daemon creates are private whatever the umask it was started
//! with (outside systemd usually 022, which made them 0644): the spool
//! (every queued message, the stored secrets) 0600 in a 0700 directory, the
//! event log (recipient addresses) 0640, rotated files included.
//!
//! Its own test binary: the umask belongs to the whole process, and the
//! daemon inherits it.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sendengine::events::{EventLog, EventLogSettings, RotationPolicy};
use support::{Daemon, DaemonConfig, delivery_event as event, free_port};

unsafe extern "C" {
    /// POSIX umask(2); mode_t is 32 bits on Linux.
    fn umask(mask: u32) -> u32;
}

fn set_umask(mask: u32) {
    // SAFETY: umask only changes the process's file creation mask.
    unsafe {
        umask(mask);
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The event log alone: the file and every rotated one is 0640.
fn event_log_files_are_0640(umask: u32) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let settings = EventLogSettings {
        path: Some(path.clone()),
        rotation: RotationPolicy {
            max_file_bytes: 2_000,
            rotate_daily: false,
            keep_files: 3,
        },
        queue_size: 1_024,
    };
    let log = EventLog::start(&settings, None).unwrap();
    for n in 0..60 {
        log.emit(event(n));
    }
    log.flush();
    for file in ["events.jsonl", "events.jsonl.1", "events.jsonl.2"] {
        let file = dir.path().join(file);
        assert_eq!(
            mode(&file),
            0o640,
            "{} under umask {umask:03o}",
            file.display()
        );
    }
}

#[test]
fn the_spool_and_the_event_log_are_private_whatever_the_umask() {
    for umask in [0o022, 0o000] {
        set_umask(umask);
        event_log_files_are_0640(umask);

        let mut daemon = Daemon::start(DaemonConfig::new(free_port()));
        let dir = daemon.dir.path().to_owned();
        for file in ["spool/spool.redb", "spool/archive.redb"] {
            assert_eq!(mode(&dir.join(file)), 0o600, "{file}, umask {umask:03o}");
        }
        assert_eq!(mode(&dir.join("spool")), 0o700, "umask {umask:03o}");
        assert_eq!(mode(&dir.join("events.jsonl")), 0o640, "umask {umask:03o}");
        assert!(daemon.stop().success());

        // Files an earlier version left 0644 are tightened at the next start.
        for file in ["spool/spool.redb", "spool/archive.redb", "events.jsonl"] {
            let path = dir.join(file);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        daemon.restart();
        assert_eq!(mode(&dir.join("spool/spool.redb")), 0o600);
        assert_eq!(mode(&dir.join("spool/archive.redb")), 0o600);
        assert_eq!(mode(&dir.join("events.jsonl")), 0o640);
    }
    set_umask(0o022);
}
