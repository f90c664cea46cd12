//! The writer thread's side of the segment files: appends a batch's bodies
//! to the open segment (one write per segment touched), starts their
//! fdatasync on the sync thread, and deletes segments whose last body left
//! once the commit that removed it is durable.
//!
//! Live counts: the database's `segment_usage` table is the truth (changed
//! in the same transactions as the bodies' rows); this keeps a copy of it
//! as of the last commit, to know when a file can go.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::sync::SyncThread;
use super::{BodyRef, HEADER_BYTES, SEGMENT_BYTES, SegmentFiles, record};
use crate::id::MessageId;

/// A reused write buffer larger than this is given back after the batch.
const KEEP_BUFFER_BYTES: usize = 16 << 20;
/// The segment being appended to is emptied (cut to 0 bytes) once no live
/// body is left in it and it holds at least this much: a queue that drains
/// as fast as it fills keeps one small file instead of a 64 MiB one.
const RESET_BYTES: u64 = 4 << 20;

pub(crate) struct SegmentAppender {
    files: Arc<SegmentFiles>,
    /// The segment being appended to; `None` until the first body, and after
    /// a failure to create one.
    current: Option<Current>,
    next_number: u32,
    /// Size at which a segment is closed (`SEGMENT_BYTES`; smaller in tests).
    segment_bytes: u64,
    /// Records of the batch not yet written to `current`.
    buffer: Vec<u8>,
    sync: SyncThread,
    /// Live bodies per segment, as of the last commit.
    live: HashMap<u32, u64>,
    /// Segments that may have no live body left: looked at after each commit.
    to_check: BTreeSet<u32>,
}

struct Current {
    number: u32,
    file: Arc<File>,
    /// Bytes written (the next record's offset).
    len: u64,
}

/// What `append` wrote: each body's place, in the order given, and where
/// the first record starts (every byte before it was synced earlier).
#[derive(Debug, Default)]
pub(crate) struct Appended {
    pub(crate) refs: Vec<BodyRef>,
    pub(crate) start: Option<(u32, u64)>,
}

impl SegmentAppender {
    /// Takes the live counts from the database (segment -> live bodies),
    /// deletes the segment files with none (left by a crash, or by a delete
    /// that failed) and starts a new segment after every existing one.
    pub(crate) fn open(
        files: Arc<SegmentFiles>,
        live: HashMap<u32, u64>,
    ) -> io::Result<SegmentAppender> {
        let mut next_number = live.keys().max().map_or(1, |n| n.saturating_add(1));
        let mut kept_bytes = 0;
        for (number, size) in files.list()? {
            next_number = next_number.max(number.saturating_add(1));
            if live.get(&number).is_some_and(|&n| n > 0) {
                kept_bytes += size;
            } else {
                files.add_bytes(size);
                files.delete(number);
            }
        }
        files.add_bytes(kept_bytes);
        Ok(SegmentAppender {
            files,
            current: None,
            next_number,
            segment_bytes: SEGMENT_BYTES,
            buffer: Vec::new(),
            sync: SyncThread::start()?,
            live,
            to_check: BTreeSet::new(),
        })
    }

    /// Appends one record per (id, body, CRC-32 of the body) and, with
    /// `durable`, starts their fdatasync: call [`Self::wait_synced`] before
    /// acknowledging them. On an error nothing appended is referenced; the
    /// bytes already written are dead space.
    pub(crate) fn append<'a>(
        &mut self,
        bodies: impl IntoIterator<Item = (MessageId, &'a [u8], u32)>,
        durable: bool,
    ) -> io::Result<Appended> {
        let mut appended = Appended::default();
        let mut written: Vec<Arc<File>> = Vec::new();
        for (id, body, crc) in bodies {
            let record_bytes = (HEADER_BYTES + body.len()) as u64;
            let full = self.current.as_ref().is_none_or(|c| {
                let used = c.len + self.buffer.len() as u64;
                used > 0 && used + record_bytes > self.segment_bytes
            });
            if full {
                self.write_buffer(&mut written)?;
                self.roll()?;
            }
            let current = self.current.as_ref().expect("rolled above");
            let offset = current.len + self.buffer.len() as u64;
            appended.start.get_or_insert((current.number, offset));
            appended.refs.push(BodyRef {
                segment: current.number,
                offset,
                len: body.len() as u32,
            });
            record::encode(&mut self.buffer, id, body, crc);
        }
        self.write_buffer(&mut written)?;
        if self.buffer.capacity() > KEEP_BUFFER_BYTES {
            self.buffer = Vec::new();
        }
        if durable && !written.is_empty() {
            self.sync.start_sync(written);
        }
        Ok(appended)
    }

    /// Waits for the fdatasync `append` started, if any.
    pub(crate) fn wait_synced(&mut self) -> io::Result<()> {
        self.sync.wait()
    }

    /// Writes the buffer at the end of the current segment. On failure the
    /// file is cut back to what it held, so a later batch continues there.
    fn write_buffer(&mut self, written: &mut Vec<Arc<File>>) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let current = self
            .current
            .as_mut()
            .expect("a buffered record has a segment");
        let result = current.file.write_all_at(&self.buffer, current.len);
        let bytes = self.buffer.len() as u64;
        self.buffer.clear();
        if let Err(err) = result {
            let _ = current.file.set_len(current.len);
            return Err(err);
        }
        current.len += bytes;
        self.files.add_bytes(bytes);
        if !written.iter().any(|f| Arc::ptr_eq(f, &current.file)) {
            written.push(Arc::clone(&current.file));
        }
        Ok(())
    }

    /// Closes the current segment and creates the next one.
    fn roll(&mut self) -> io::Result<()> {
        self.close_current();
        let number = self.next_number;
        self.next_number = number
            .checked_add(1)
            .ok_or_else(|| io::Error::other("segment numbers are used up"))?;
        let file = self.files.create(number)?;
        self.current = Some(Current {
            number,
            file: Arc::new(file),
            len: 0,
        });
        Ok(())
    }

    /// After a commit (durable, when it removed bodies): applies its
    /// changes of live bodies per segment and deletes the segments left
    /// with none, except the one being appended to.
    pub(crate) fn committed(&mut self, changes: &[(u32, i64)]) {
        for &(segment, change) in changes {
            let live = self.live.entry(segment).or_insert(0);
            *live = live.saturating_add_signed(change);
            if *live == 0 {
                self.live.remove(&segment);
                self.to_check.insert(segment);
            }
        }
        self.reset_if_empty();
        let current = self.current.as_ref().map(|c| c.number);
        let empty: Vec<u32> = self
            .to_check
            .iter()
            .copied()
            .filter(|s| Some(*s) != current && !self.live.contains_key(s))
            .collect();
        self.to_check.clear();
        for segment in empty {
            self.files.delete(segment);
        }
    }

    /// Cuts the current segment back to nothing when no live body is left
    /// in it (see `RESET_BYTES`). Only after a commit: no reply waits on
    /// its bytes, and no row of the database points into it.
    fn reset_if_empty(&mut self) {
        let Some(current) = self.current.as_mut() else {
            return;
        };
        if current.len < RESET_BYTES || self.live.contains_key(&current.number) {
            return;
        }
        match current.file.set_len(0) {
            Ok(()) => {
                self.files.sub_bytes(current.len);
                current.len = 0;
            }
            Err(err) => {
                log::warn!("spool: cannot empty segment {}: {err}", current.number);
                let number = current.number;
                self.current = None;
                self.to_check.insert(number);
            }
        }
    }

    /// Closes the segment being appended to; the next append starts a new
    /// one (compaction copies bodies out of the old one).
    pub(crate) fn close_current(&mut self) {
        if let Some(old) = self.current.take() {
            self.to_check.insert(old.number);
        }
    }

    /// Where the next record would go, if a segment is open.
    pub(crate) fn end(&self) -> Option<(u32, u64)> {
        self.current.as_ref().map(|c| (c.number, c.len))
    }

    /// Deletes those of `segments` that hold no live body (and are not
    /// being appended to).
    pub(crate) fn forget_if_empty(&mut self, segments: impl IntoIterator<Item = u32>) {
        self.to_check.extend(segments);
        self.committed(&[]);
    }

    /// A smaller segment size, so tests roll segments without writing 64 MiB.
    #[cfg(test)]
    pub(crate) fn with_segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// The segment being appended to.
    #[cfg(test)]
    pub(crate) fn current_segment(&self) -> Option<u32> {
        self.current.as_ref().map(|c| c.number)
    }
}
