//! Message bodies in append-only segment files, outside the database.
//!
//! Why: a 10 KB body inside redb took ~16.5 KB (redb rounds a value up to
//! its page run) and made the database file, and quick repair's allocator
//! state written on every commit, grow with the queue. Here bodies are
//! appended to `<spool>/segments/NNNNNNNN.seg` files of up to 64 MiB (one
//! record per body, see `record.rs`); the database keeps only the small
//! per-message and per-recipient rows, the body's place (segment, offset,
//! length) and a live count per segment (`store/bodies.rs`).
//!
//! - Writing (`append.rs`): the writer thread appends a batch's bodies with
//!   one write and fdatasyncs the segment on a second thread while redb
//!   commits (`sync.rs`); the replies wait for both. A crash between the two
//!   leaves records in the database whose bodies fail their check: never
//!   acknowledged, they are quarantined at open (`store/recovery.rs`).
//! - Freeing: a segment file is deleted once the commit that removed its
//!   last live body is durable; a new process never appends to an old file
//!   (its tail may be torn), it starts a new one.
//! - Reading (`SegmentFiles::read`): on the caller's thread, through a cache
//!   of open files, checking the record.
//!
//! - Where a body goes: into redb's `bodies` table while fewer than
//!   `SpoolConfig::segment_bodies_from` messages are queued (default
//!   10,000), into a segment from there on. A short queue costs little disk
//!   either way, and a segment's fdatasync beside redb's two was ~6% of the
//!   CPU per message at full load (BENCHMARKS.md); a long queue is where
//!   bodies inside redb cost disk, memory and restart time. Each message's
//!   body is read and freed from where it is, so a spool written before
//!   segments existed is read the same way.

mod append;
mod record;
mod sync;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

pub(crate) use append::{Appended, SegmentAppender};
pub(crate) use record::{HEADER_BYTES, checksum};

use crate::id::MessageId;

/// The folder of segment files inside the spool directory.
pub(crate) const SEGMENTS_DIR: &str = "segments";
/// A segment is closed once the next record would take it past this size
/// (a larger body gets a segment of its own).
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;
/// Segment files hold message bodies: the daemon's user only, like the database.
const SEGMENT_FILE_MODE: u32 = 0o600;

/// Where a body is: the record starting at `offset` in segment `segment`,
/// with a body of `len` bytes after its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct BodyRef {
    pub(crate) segment: u32,
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

impl BodyRef {
    /// Bytes the record takes in its segment, header included.
    pub(crate) fn record_bytes(&self) -> u64 {
        HEADER_BYTES as u64 + u64::from(self.len)
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The segment file is gone: the message left the spool meanwhile, or
    /// the file was removed by hand.
    Missing,
    /// The record is not the body it should be (see `record::verify`).
    Damaged(String),
    /// The disk failed to answer; the body may well be fine.
    Io(io::Error),
}

/// The segment folder as readers and the writer share it: open read
/// handles, and the total size of the segment files.
pub(crate) struct SegmentFiles {
    dir: PathBuf,
    /// Read handles by segment number. Opening and evicting both hold the
    /// lock, so a handle of a deleted segment is never cached after its
    /// deletion (it would keep the file's blocks allocated).
    readers: Mutex<HashMap<u32, Arc<File>>>,
    /// Bytes in segment files (for `SpoolStats::file_bytes`).
    bytes: AtomicU64,
}

impl SegmentFiles {
    /// Creates the folder if missing (mode 0700, like the spool's).
    pub(crate) fn open(spool_dir: &Path) -> io::Result<SegmentFiles> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = spool_dir.join(SEGMENTS_DIR);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        // The folder's own entry must outlive a crash like the files in it.
        File::open(spool_dir)?.sync_all()?;
        Ok(SegmentFiles {
            dir,
            readers: Mutex::new(HashMap::new()),
            bytes: AtomicU64::new(0),
        })
    }

    pub(crate) fn path(&self, segment: u32) -> PathBuf {
        self.dir.join(format!("{segment:08}.seg"))
    }

    /// The segment files present, by number, with their sizes.
    pub(crate) fn list(&self) -> io::Result<Vec<(u32, u64)>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(number) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            found.push((number, entry.metadata()?.len()));
        }
        found.sort_unstable();
        Ok(found)
    }

    /// Reads and checks the body of message `id`.
    pub(crate) fn read(&self, id: MessageId, at: BodyRef) -> Result<Vec<u8>, ReadError> {
        let mut record = self.read_raw(at)?;
        let body_len = record::verify(&record, id, at.len)
            .map_err(ReadError::Damaged)?
            .len();
        record.drain(..HEADER_BYTES);
        debug_assert_eq!(record.len(), body_len);
        Ok(record)
    }

    /// The record's bytes as they are on disk (header included), unchecked;
    /// short if the file ends early.
    pub(crate) fn read_raw(&self, at: BodyRef) -> Result<Vec<u8>, ReadError> {
        let file = self.reader(at.segment)?;
        let mut record = vec![0u8; at.record_bytes() as usize];
        let mut filled = 0;
        while filled < record.len() {
            match file.read_at(&mut record[filled..], at.offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(ReadError::Io(err)),
            }
        }
        record.truncate(filled);
        Ok(record)
    }

    fn reader(&self, segment: u32) -> Result<Arc<File>, ReadError> {
        let mut readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(file) = readers.get(&segment) {
            return Ok(Arc::clone(file));
        }
        let file = match File::open(self.path(segment)) {
            Ok(file) => Arc::new(file),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(ReadError::Missing),
            Err(err) => return Err(ReadError::Io(err)),
        };
        readers.insert(segment, Arc::clone(&file));
        Ok(file)
    }

    /// Deletes a segment file whose bodies are all gone (durably).
    pub(crate) fn delete(&self, segment: u32) {
        let mut readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        readers.remove(&segment);
        let path = self.path(segment);
        let size = fs::metadata(&path).map_or(0, |m| m.len());
        match fs::remove_file(&path) {
            Ok(()) => {
                self.bytes.fetch_sub(size, Ordering::Relaxed);
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            // Left behind: the sweep at the next open deletes it.
            Err(err) => log::warn!("spool: cannot delete {}: {err}", path.display()),
        }
    }

    /// Total bytes of the segment files.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    fn sub_bytes(&self, n: u64) {
        self.bytes.fetch_sub(n, Ordering::Relaxed);
    }

    /// Creates segment file `segment` (it must not exist) and makes its
    /// directory entry durable, so a synced record is never in a file a
    /// crash forgets.
    fn create(&self, segment: u32) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(SEGMENT_FILE_MODE)
            .open(self.path(segment))?;
        File::open(&self.dir)?.sync_all()?;
        Ok(file)
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
