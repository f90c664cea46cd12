//! Disk space: after many messages came and went, `compact()` gives the free
//! space inside the file back to the filesystem.

mod common;

use common::{assert_stored, insert_async, message, open_in_segments, wait};
use sendengine_queue::Outcome;
use tempfile::tempdir;

const MESSAGES: u64 = 5_000;
const BODY_BYTES: usize = 10_000;
/// Every 100th message stays, so compaction has live data to move.
const KEEP_EVERY: u64 = 100;

#[test]
fn compact_shrinks_the_file_after_messages_leave() {
    let dir = tempdir().unwrap();
    let spool = open_in_segments(dir.path());
    let pending: Vec<_> = (0..MESSAGES)
        .map(|seed| insert_async(&spool, message(seed, 1, BODY_BYTES), true))
        .collect();
    let ids: Vec<_> = pending.iter().map(|rx| wait(rx).unwrap()).collect();
    let full = spool.stats().unwrap().file_bytes;

    let done = ids
        .iter()
        .enumerate()
        .filter(|(seed, _)| !(*seed as u64).is_multiple_of(KEEP_EVERY))
        .map(|(_, &id)| Outcome::Done { id, rcpt: 0 })
        .collect();
    spool.record_blocking(done).unwrap();
    let after_done = spool.stats().unwrap().file_bytes;

    assert!(spool.compact().unwrap(), "there was space to give back");
    let compacted = spool.stats().unwrap();
    eprintln!(
        "spool file: {full} bytes with {MESSAGES} messages of {BODY_BYTES} B, \
         {after_done} after all but {} left, {} after compact()",
        compacted.messages, compacted.file_bytes
    );
    assert_eq!(compacted.messages, MESSAGES / KEEP_EVERY);
    assert!(
        compacted.file_bytes < after_done,
        "compact() shrank the file"
    );
    assert!(compacted.file_bytes < full / 4);

    for (seed, &id) in ids.iter().enumerate().step_by(KEEP_EVERY as usize) {
        assert_stored(&spool, id, &message(seed as u64, 1, BODY_BYTES));
    }
    // Still writable, and the compacted file reopens.
    spool.insert_blocking(message(1, 1, 100), false).unwrap();
    spool.shutdown();
    assert_eq!(
        open_in_segments(dir.path()).stats().unwrap().messages,
        MESSAGES / KEEP_EVERY + 1
    );
}
