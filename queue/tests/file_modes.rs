//! The spool holds every queued message and the stored secrets: its files
//! (database and segments) must be 0600 and its directories 0700 whatever the umask the daemon was
//! started with (outside systemd it is usually 022).
//!
//! One test in its own binary: the umask belongs to the whole process.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::open_in_segments;
use tempfile::tempdir;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn set_umask(mask: libc::mode_t) {
    // SAFETY: umask has no memory effects; this binary runs one test.
    unsafe {
        libc::umask(mask);
    }
}

#[test]
fn the_spool_is_private_whatever_the_umask() {
    for umask in [0o022, 0o000, 0o002] {
        set_umask(umask);
        let top = tempdir().unwrap();
        let dir = top.path().join("var").join("spool");
        let spool = open_in_segments(&dir);
        spool
            .insert_blocking(common::message(1, 1, 100), false)
            .unwrap();
        let file = dir.join("spool.redb");
        assert_eq!(mode(&file), 0o600, "spool file under umask {umask:03o}");
        assert_eq!(mode(&dir), 0o700, "spool directory under umask {umask:03o}");
        // The bodies' segment files too.
        let segments = dir.join("segments");
        assert_eq!(mode(&segments), 0o700, "segments under umask {umask:03o}");
        for segment in fs::read_dir(&segments).unwrap() {
            let path = segment.unwrap().path();
            assert_eq!(
                mode(&path),
                0o600,
                "{} under umask {umask:03o}",
                path.display()
            );
        }
        spool.shutdown();
        drop(spool);

        // A file an earlier version left world-readable is tightened on open.
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let spool = open_in_segments(&dir);
        assert_eq!(mode(&file), 0o600, "reopened under umask {umask:03o}");
        assert_eq!(spool.stats().unwrap().messages, 1);
    }
    set_umask(0o022);
}
