//! Free space on the filesystem that holds the spool.
//!
//! Inserts stop while a reserve is still free, so that recording outcomes
//! (deliveries, bounces, which delete more than they add but still need new
//! pages in a copy-on-write file) never fails on a full disk.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Longest a probe's figure is trusted: other programs use the disk too.
const MAX_PROBE_AGE: Duration = Duration::from_millis(100);
/// Spool bytes an admitted message may take, per byte of message: redb
/// rounds a body up to a power-of-two page run (18 KB for 10 KB measured).
const SPOOL_GROWTH_FACTOR: u64 = 2;

/// Decides whether an insert leaves the reserve free, probing the
/// filesystem only when the last figure is old or the bytes admitted
/// since could have brought it near the reserve. One `statvfs` per insert
/// cost 1.4% of the daemon's CPU at full load.
pub(crate) struct FreeSpaceGuard {
    dir: PathBuf,
    last: Mutex<Option<Probe>>,
}

struct Probe {
    at: Instant,
    available: u64,
    /// Message bytes admitted since the probe.
    admitted: u64,
}

impl FreeSpaceGuard {
    pub(crate) fn new(dir: PathBuf) -> FreeSpaceGuard {
        FreeSpaceGuard {
            dir,
            last: Mutex::new(None),
        }
    }

    /// `Err(available)` when `bytes` more would leave less than `reserve`
    /// free. A failed probe refuses nothing (the write itself will report
    /// a real problem).
    pub(crate) fn admit(&self, bytes: u64, reserve: u64) -> Result<(), u64> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let growth = |admitted: u64| admitted.saturating_mul(SPOOL_GROWTH_FACTOR);
        if let Some(probe) = last.as_mut() {
            let worst_case = probe
                .available
                .saturating_sub(growth(probe.admitted.saturating_add(bytes)));
            if probe.at.elapsed() < MAX_PROBE_AGE && worst_case >= reserve {
                probe.admitted += bytes;
                return Ok(());
            }
        }
        let Some(available) = available_bytes(&self.dir) else {
            *last = None;
            return Ok(());
        };
        *last = Some(Probe {
            at: Instant::now(),
            available,
            admitted: bytes,
        });
        if available < reserve.saturating_add(bytes) {
            return Err(available);
        }
        Ok(())
    }
}

/// Bytes an unprivileged writer may still use on `dir`'s filesystem, or
/// `None` when the probe fails.
pub(crate) fn available_bytes(dir: &Path) -> Option<u64> {
    let path = CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid NUL-terminated string and `stats` points to
    // writable memory of the right type; statvfs fills it on success only.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `stats`.
    let stats = unsafe { stats.assume_init() };
    // The field types are u64 here but narrower on 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    let (blocks, block_size) = (stats.f_bavail as u64, stats.f_frsize as u64);
    Some(blocks.saturating_mul(block_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_directory_has_some_space_and_a_missing_one_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_bytes(dir.path()).is_some_and(|n| n > 0));
        assert_eq!(available_bytes(&dir.path().join("missing")), None);
    }

    #[test]
    fn the_guard_refuses_what_would_eat_into_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let guard = FreeSpaceGuard::new(dir.path().to_path_buf());
        let free = available_bytes(dir.path()).unwrap();
        assert_eq!(guard.admit(1000, 0), Ok(()));
        // Within the cached figure's age, a reserve above what is free is
        // still noticed: the worst case falls below it, so it probes.
        assert!(guard.admit(1000, free.saturating_mul(2)).is_err());
        assert_eq!(guard.admit(1000, 0), Ok(()));
    }

    #[test]
    fn the_guard_counts_admitted_bytes_against_the_last_probe() {
        let dir = tempfile::tempdir().unwrap();
        let guard = FreeSpaceGuard::new(dir.path().to_path_buf());
        let free = available_bytes(dir.path()).unwrap();
        // Each admitted byte counts twice against the last probe: after an
        // eighth of the free space, half of it more would leave the worst
        // case under the reserve, so the guard probes again. The disk has
        // not changed, so the message is admitted all the same.
        let reserve = free / 8;
        assert_eq!(guard.admit(1, reserve), Ok(()));
        assert_eq!(guard.admit(free / 8, reserve), Ok(()));
        let before = guard.last.lock().unwrap().as_ref().unwrap().at;
        assert_eq!(guard.admit(free / 2, reserve), Ok(()));
        let after = guard.last.lock().unwrap().as_ref().unwrap().at;
        assert!(
            after > before,
            "a worst case under the reserve must probe again"
        );
    }
}
