//! The event log file: appends JSON lines, rotates by size and by day, and
//! reopens its path on request (logrotate moves the file, then SIGHUP).
//!
//! Rotated files are numbered: `events.jsonl.1` is the newest, up to
//! `events.jsonl.<keep_files>`; older ones are deleted. A path that is not a
//! regular file (a FIFO, /dev/null) is written to but never rotated.
//!
//! Events name recipients, so the file is 0640 (the daemon's user writes,
//! its group, e.g. a log shipper, reads) whatever the umask; rotated files
//! keep that mode, being the same files renamed.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bytes buffered before a write to the file; one write per batch otherwise.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// At most one stderr line per this long about failing writes.
const ERROR_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// Mode of the event log files (see the module comment).
const FILE_MODE: u32 = 0o640;

/// How the file is rotated.
#[derive(Debug, Clone)]
pub struct RotationPolicy {
    /// Rotate before a line would make the file bigger than this.
    pub max_file_bytes: u64,
    /// Rotate at the first write after midnight UTC.
    pub rotate_daily: bool,
    /// Rotated files kept (`.1` to `.keep_files`); at least 1.
    pub keep_files: usize,
}

pub(crate) struct EventFile {
    path: PathBuf,
    policy: RotationPolicy,
    out: BufWriter<File>,
    /// Bytes in the file, counting what is still buffered.
    size: u64,
    /// UTC day (days since the epoch) the file's content started on.
    day: u64,
    regular: bool,
    last_error_report: Option<SystemTime>,
}

impl EventFile {
    /// Opens `path` for appending, creating it and its parent folders.
    pub(crate) fn open(path: &Path, policy: RotationPolicy) -> io::Result<EventFile> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(FILE_MODE)
            .open(path)?;
        let mut meta = file.metadata()?;
        if meta.is_file() {
            restrict_mode(&file, meta.permissions().mode())?;
            end_torn_line(path, &mut file, meta.len())?;
            meta = file.metadata()?;
        }
        // A file left by an earlier run belongs to the day it was last written.
        let day = meta.modified().map_or_else(|_| today(), utc_day);
        Ok(EventFile {
            path: path.to_owned(),
            policy,
            out: BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
            size: meta.len(),
            day,
            regular: meta.is_file(),
            last_error_report: None,
        })
    }

    /// Appends one line (which ends with '\n'), rotating first if due.
    pub(crate) fn write_line(&mut self, line: &[u8]) {
        if self.rotation_due(line.len() as u64) {
            self.rotate();
        }
        match self.out.write_all(line) {
            Ok(()) => self.size += line.len() as u64,
            Err(e) => self.report_error("write to", &e),
        }
    }

    pub(crate) fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            self.report_error("flush", &e);
        }
    }

    /// Closes the file and opens the path again (after logrotate moved it).
    pub(crate) fn reopen(&mut self) {
        self.flush();
        match EventFile::open(&self.path, self.policy.clone()) {
            Ok(file) => *self = file,
            Err(e) => self.report_error("reopen", &e),
        }
    }

    /// Daily rotation for an idle log: called between batches.
    pub(crate) fn rotate_if_new_day(&mut self) {
        if self.rotation_due(0) {
            self.rotate();
        }
    }

    fn rotation_due(&self, next_line: u64) -> bool {
        if !self.regular || self.size == 0 {
            return false;
        }
        let too_big = self.size.saturating_add(next_line) > self.policy.max_file_bytes;
        let new_day = self.policy.rotate_daily && today() != self.day;
        too_big || new_day
    }

    /// `path` -> `path.1`, `path.1` -> `path.2`, ... and a new empty `path`.
    fn rotate(&mut self) {
        self.flush();
        let keep = self.policy.keep_files.max(1);
        for n in (1..keep).rev() {
            let from = numbered(&self.path, n);
            if let Err(e) = std::fs::rename(&from, numbered(&self.path, n + 1))
                && e.kind() != io::ErrorKind::NotFound
            {
                self.report_error("rotate", &e);
            }
        }
        if let Err(e) = std::fs::rename(&self.path, numbered(&self.path, 1)) {
            self.report_error("rotate", &e);
            return;
        }
        self.reopen();
        self.day = today();
    }

    /// Failing writes are reported, but not once per event.
    fn report_error(&mut self, what: &str, e: &io::Error) {
        let now = SystemTime::now();
        let quiet = self.last_error_report.is_some_and(|last| {
            now.duration_since(last)
                .is_ok_and(|d| d < ERROR_REPORT_INTERVAL)
        });
        if !quiet {
            log::error!("cannot {what} the event log {}: {e}", self.path.display());
            self.last_error_report = Some(now);
        }
    }
}

/// A crash can leave the file ending in half a line; without a newline
/// the next event would be glued to it and lost with it. (Readers skip
/// the torn line; `sendctl log` counts it.)
fn end_torn_line(path: &Path, file: &mut File, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8];
    File::open(path)?.read_exact_at(&mut last, len - 1)?;
    if last[0] != b'\n' {
        file.write_all(b"\n")?;
    }
    Ok(())
}

/// Sets 0640 on a file created under a loose umask (022 gave 0644) or left
/// so by an earlier version; never adds a permission the file lacks besides
/// the owner's read and write.
fn restrict_mode(file: &File, mode: u32) -> io::Result<()> {
    let mode = mode & 0o7777;
    let restricted = (mode & FILE_MODE) | 0o600;
    if restricted != mode {
        file.set_permissions(Permissions::from_mode(restricted))?;
    }
    Ok(())
}

/// `events.jsonl` -> `events.jsonl.3`.
pub(crate) fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn today() -> u64 {
    utc_day(SystemTime::now())
}

fn utc_day(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}
