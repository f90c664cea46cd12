//! `Spool::compact`: gives disk space back to the filesystem, when idle.
//!
//! Segment files first: one whose live bodies fill less than half of it
//! (a few long-deferred messages pin a whole 64 MiB file) has them copied
//! to a new segment, synced, and pointed at in a durable commit; the file
//! is then deleted like any segment left with no live body. Then redb's
//! own compaction, which moves pages to the front of its file and cuts the
//! free tail off.
//!
//! It runs on the writer thread with the database to itself (no reader
//! holds a body's place while it moves).

use std::collections::HashSet;
use std::sync::Arc;

use redb::Database;

use crate::error::SpoolError;
use crate::id::MessageId;
use crate::segments::{BodyRef, SegmentAppender, SegmentFiles, checksum};
use crate::store::{self, WriteTables};

/// Bodies copied per commit, in bytes: bounds the memory compaction holds.
const MOVE_CHUNK_BYTES: u64 = 16 << 20;

/// Whether anything was given back.
pub(crate) fn compact(
    db: &mut Database,
    segments: &Arc<SegmentFiles>,
    appender: &mut SegmentAppender,
) -> Result<bool, SpoolError> {
    let moved = compact_segments(db, segments, appender)?;
    let compacted = compact_database(db)?;
    Ok(moved || compacted)
}

fn compact_database(db: &mut Database) -> Result<bool, SpoolError> {
    let compacted = db.compact()?;
    // Compaction's own commits do not record the allocator state; one empty
    // quick-repair commit does, so a crash after it still reopens quickly.
    store::begin_write(db, true, true)?.commit()?;
    Ok(compacted)
}

fn storage(what: &str, err: std::io::Error) -> SpoolError {
    SpoolError::Storage(format!("compacting the segment files: {what}: {err}"))
}

fn compact_segments(
    db: &Database,
    segments: &Arc<SegmentFiles>,
    appender: &mut SegmentAppender,
) -> Result<bool, SpoolError> {
    let usage = store::segment_usage(db)?;
    let listed = segments.list().map_err(|e| storage("listing", e))?;
    let sparse: HashSet<u32> = listed
        .into_iter()
        .filter(|&(segment, size)| {
            let live_bytes = usage.get(&segment).map_or(0, |u| u.1);
            size > 0 && live_bytes * 2 < size
        })
        .map(|(segment, _)| segment)
        .collect();
    if sparse.is_empty() {
        return Ok(false);
    }
    // The open segment may be sparse too: its copies go to a new one.
    if appender
        .end()
        .is_some_and(|(open, _)| sparse.contains(&open))
    {
        appender.close_current();
    }
    let bodies = store::bodies_in(db, &sparse)?;
    for chunk in chunks(&bodies) {
        move_bodies(db, segments, appender, chunk)?;
    }
    appender.forget_if_empty(sparse);
    Ok(true)
}

/// Splits `bodies` into runs of about `MOVE_CHUNK_BYTES`.
fn chunks(bodies: &[(MessageId, BodyRef)]) -> Vec<&[(MessageId, BodyRef)]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (_, at)) in bodies.iter().enumerate() {
        bytes += at.record_bytes();
        if bytes >= MOVE_CHUNK_BYTES {
            out.push(&bodies[start..=i]);
            (start, bytes) = (i + 1, 0);
        }
    }
    if start < bodies.len() {
        out.push(&bodies[start..]);
    }
    out
}

/// Copies one run of bodies, syncs the copies, then points the messages at
/// them in one durable commit. A body that does not read back intact stays
/// where it is, for the load that meets it to quarantine.
fn move_bodies(
    db: &Database,
    segments: &Arc<SegmentFiles>,
    appender: &mut SegmentAppender,
    bodies: &[(MessageId, BodyRef)],
) -> Result<(), SpoolError> {
    let copies: Vec<(MessageId, BodyRef, Vec<u8>)> = bodies
        .iter()
        .filter_map(|&(id, at)| segments.read(id, at).ok().map(|body| (id, at, body)))
        .collect();
    let input = copies
        .iter()
        .map(|(id, _, body)| (*id, body.as_slice(), checksum(body)));
    let appended = appender
        .append(input, true)
        .map_err(|e| storage("copying bodies", e))?;
    appender
        .wait_synced()
        .map_err(|e| storage("syncing the copies", e))?;
    let txn = store::begin_write(db, true, true)?;
    let usage = {
        let mut tables = WriteTables::open(&txn, segments)?;
        for ((id, from, _), &to) in copies.iter().zip(&appended.refs) {
            tables.move_body(*id, *from, to)?;
        }
        // Every copy is synced: the check at open need not read them.
        if let Some(end) = appender.end() {
            tables.store_synced_before(end)?;
        }
        tables.flush_usage()?
    };
    txn.commit()?;
    appender.committed(&usage);
    Ok(())
}
