//! Bodies in segment files, through the spool's API on real files: where
//! the bytes go and leave, a body that never reached the disk (a crash
//! between redb's commit and the segment's fdatasync) quarantined at open,
//! a body damaged later quarantined when loaded, a segment fdatasync that
//! fails after redb's commit (never acknowledged, taken back), and a spool
//! written in the earlier layout (bodies inside redb) still delivered after
//! the upgrade.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{assert_stored, config_in_segments, insert_async, message, open_in_segments, wait};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sendengine_queue::{MessageId, Outcome, Spool, SpoolError};
use tempfile::tempdir;

const BODY_BYTES: usize = 10_000;
/// The segment record header (see `segments/record.rs`).
const HEADER_BYTES: u64 = 20;

const BODY_REFS: TableDefinition<u64, (u32, u64, u32)> = TableDefinition::new("body_refs");
const SEGMENT_USAGE: TableDefinition<u32, (u64, u64)> = TableDefinition::new("segment_usage");
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");

fn insert_many(spool: &sendengine_queue::Spool, seeds: std::ops::Range<u64>) -> Vec<MessageId> {
    let pending: Vec<_> = seeds
        .map(|seed| insert_async(spool, message(seed, 1, BODY_BYTES), false))
        .collect();
    pending.iter().map(|rx| wait(rx).unwrap()).collect()
}

fn segment_files(dir: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<_> = fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    files.sort();
    files
}

/// (segment, offset, len) of a message's body, read with redb from the
/// closed spool.
fn body_ref(dir: &Path, id: MessageId) -> (u32, u64, u32) {
    let db = Database::create(dir.join("spool.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    let refs = txn.open_table(BODY_REFS).unwrap();
    refs.get(id).unwrap().unwrap().value()
}

fn damage_body(dir: &Path, id: MessageId) {
    let (segment, offset, _) = body_ref(dir, id);
    let path = dir.join("segments").join(format!("{segment:08}.seg"));
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(b"\0\0\0\0", offset + HEADER_BYTES + 100)
        .unwrap();
}

#[test]
fn bodies_take_their_size_in_segments_and_leave_with_their_messages() {
    let dir = tempdir().unwrap();
    let spool = open_in_segments(dir.path());
    let ids = insert_many(&spool, 0..600);
    let redb_bytes = fs::metadata(dir.path().join("spool.redb")).unwrap().len();
    let segments: u64 = segment_files(dir.path()).iter().map(|f| f.1).sum();
    let per_message = (redb_bytes + segments) / ids.len() as u64;
    eprintln!(
        "{} messages of {BODY_BYTES} B: redb {redb_bytes} B, segments {segments} B, \
         {per_message} B per message",
        ids.len()
    );
    assert_eq!(
        segments,
        ids.len() as u64 * (BODY_BYTES as u64 + HEADER_BYTES)
    );
    assert!(per_message <= 12_000, "{per_message} B per queued message");
    let archive_bytes = fs::metadata(dir.path().join("archive.redb")).unwrap().len();
    assert_eq!(
        spool.stats().unwrap().file_bytes,
        redb_bytes + archive_bytes + segments
    );
    for (seed, &id) in ids.iter().enumerate().step_by(37) {
        assert_stored(&spool, id, &message(seed as u64, 1, BODY_BYTES));
    }

    let done = ids
        .iter()
        .map(|&id| Outcome::Done { id, rcpt: 0 })
        .collect();
    spool.record_blocking(done).unwrap();
    let left: u64 = segment_files(dir.path()).iter().map(|f| f.1).sum();
    assert_eq!(left, 0, "the emptied segment gave its space back");
    assert!(spool.load(ids[0]).unwrap().is_none());

    // Still writable; after a restart the old segment is gone.
    let more = insert_many(&spool, 1_000..1_003);
    spool.shutdown();
    drop(spool);
    let spool = open_in_segments(dir.path());
    for (seed, &id) in (1_000..).zip(&more) {
        assert_stored(&spool, id, &message(seed, 1, BODY_BYTES));
    }
    assert_eq!(segment_files(dir.path()).len(), 1);
}

/// How many bodies are in the database's own table and in segments.
fn bodies_by_place(dir: &Path) -> (u64, u64) {
    let db = Database::create(dir.join("spool.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    let count = |table: redb::ReadOnlyTable<u64, _>| table.iter().unwrap().count() as u64;
    let inside = txn.open_table(BODIES).map(count).unwrap_or(0);
    let refs: redb::ReadOnlyTable<u64, (u32, u64, u32)> = txn.open_table(BODY_REFS).unwrap();
    (inside, refs.iter().unwrap().count() as u64)
}

/// A short queue keeps its bodies in the database (no segment file to
/// fdatasync beside it); from `segment_bodies_from` queued messages on, new
/// bodies go to segment files. Both kinds read back, survive a restart and
/// leave with their messages.
#[test]
fn bodies_go_to_segments_once_the_queue_is_long() {
    let dir = tempdir().unwrap();
    let mut cfg = config_in_segments(dir.path());
    cfg.segment_bodies_from = 50;
    let spool = Spool::open(cfg.clone()).unwrap();
    let short: Vec<MessageId> = (0..40)
        .flat_map(|seed| insert_many(&spool, seed..seed + 1))
        .collect();
    assert!(
        segment_files(dir.path()).iter().all(|f| f.1 == 0),
        "{:?}",
        segment_files(dir.path())
    );
    let long = insert_many(&spool, 40..200);
    spool.shutdown();
    drop(spool);
    let (inside, in_segments) = bodies_by_place(dir.path());
    assert!(
        (40..60).contains(&inside),
        "{inside} bodies in the database"
    );
    assert_eq!(inside + in_segments, 200);

    let spool = Spool::open(cfg).unwrap();
    for (seed, &id) in (0..).zip(short.iter().chain(&long)) {
        assert_stored(&spool, id, &message(seed, 1, BODY_BYTES));
    }
    let done = short.iter().chain(&long);
    let done = done.map(|&id| Outcome::Done { id, rcpt: 0 }).collect();
    spool.record_blocking(done).unwrap();
    spool.shutdown();
    drop(spool);
    assert_eq!(bodies_by_place(dir.path()), (0, 0));
    let left: u64 = segment_files(dir.path()).iter().map(|f| f.1).sum();
    assert_eq!(left, 0, "the emptied segments gave their space back");
}

#[test]
fn a_body_of_the_last_commit_that_never_reached_the_disk_is_quarantined_at_open() {
    let dir = tempdir().unwrap();
    let spool = open_in_segments(dir.path());
    let early = insert_many(&spool, 0..5);
    let last = spool
        .insert_blocking(message(5, 2, BODY_BYTES), false)
        .unwrap();
    spool.shutdown();
    drop(spool);
    // As if the process died after redb's commit, before the segment's
    // fdatasync: the record of the last commit is not what was written.
    damage_body(dir.path(), last);

    let spool = open_in_segments(dir.path());
    assert!(spool.load(last).unwrap().is_none(), "never delivered");
    let rows = spool.quarantined(100).unwrap();
    let moved: Vec<_> = rows.iter().map(|r| (r.table.as_str(), r.id)).collect();
    assert!(moved.contains(&("bodies", last)), "{moved:?}");
    assert!(moved.contains(&("messages", last)), "{moved:?}");
    assert_eq!(moved.iter().filter(|m| m.0 == "recipients").count(), 2);
    let stats = spool.stats().unwrap();
    assert_eq!((stats.messages, stats.recipients), (5, 5));
    for (seed, &id) in early.iter().enumerate() {
        assert_stored(&spool, id, &message(seed as u64, 1, BODY_BYTES));
    }
}

/// The segment's fdatasync fails after redb committed the batch (the hook
/// reports the sync failed: no real file system fails that one call on
/// demand, a full disk fails the write first, see `disk_full.rs`). None of
/// the batch's messages may be acknowledged or delivered, now or after a
/// restart, and the spool goes on taking mail once the sync works again.
#[test]
fn a_failed_segment_sync_after_the_commit_acknowledges_and_delivers_nothing() {
    let dir = tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let mut cfg = config_in_segments(dir.path());
    cfg.fail_segment_syncs = Some(Arc::clone(&fail));
    let spool = Spool::open(cfg.clone()).unwrap();
    let before = insert_many(&spool, 0..3);

    fail.store(true, Ordering::SeqCst);
    let pending: Vec<_> = (10..14)
        .map(|seed| insert_async(&spool, message(seed, 2, BODY_BYTES), false))
        .collect();
    for rx in &pending {
        match wait(rx) {
            Err(SpoolError::Storage(reason)) => {
                assert!(reason.contains("fdatasync"), "{reason}");
            }
            other => panic!("an insert whose body was not synced answered {other:?}"),
        }
    }
    fail.store(false, Ordering::SeqCst);
    let stats = spool.stats().unwrap();
    assert_eq!((stats.messages, stats.recipients), (3, 3));
    let rows = spool.quarantined(100).unwrap();
    let taken_back: Vec<_> = rows.iter().filter(|r| r.table == "messages").collect();
    assert_eq!(taken_back.len(), 4, "{rows:?}");
    assert!(taken_back.iter().all(|r| r.reason.contains("fdatasync")));
    assert!(taken_back.iter().all(|r| !before.contains(&r.id)));
    assert_eq!(rows.iter().filter(|r| r.table == "recipients").count(), 8);

    let after = insert_many(&spool, 20..22);
    let due = |spool: &Spool| {
        let mut ids: Vec<MessageId> = spool
            .claim_due(u64::MAX / 2, 100)
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect();
        ids.sort();
        ids
    };
    let mut expected: Vec<MessageId> = before.iter().chain(&after).copied().collect();
    expected.sort();
    assert_eq!(due(&spool), expected, "only acknowledged messages are due");
    spool.shutdown();
    drop(spool);

    // A restart schedules the claims again: still only those.
    let spool = Spool::open(cfg).unwrap();
    assert_eq!(due(&spool), expected);
    for (seed, &id) in (0..).zip(&before) {
        assert_stored(&spool, id, &message(seed, 1, BODY_BYTES));
    }
}

#[test]
fn a_body_damaged_later_is_quarantined_when_loaded_never_delivered() {
    let dir = tempdir().unwrap();
    let spool = open_in_segments(dir.path());
    let ids = insert_many(&spool, 0..3);
    insert_many(&spool, 3..4);
    spool.shutdown();
    drop(spool);
    damage_body(dir.path(), ids[1]);

    let spool = open_in_segments(dir.path());
    assert_eq!(
        spool.stats().unwrap().messages,
        4,
        "open checks only the last commit"
    );
    let err = spool.load(ids[1]).unwrap_err().to_string();
    assert!(err.contains("checksum"), "{err}");
    // The next commit quarantines it.
    spool.insert_blocking(message(9, 1, 10), false).unwrap();
    assert!(spool.load(ids[1]).unwrap().is_none());
    let rows = spool.quarantined(100).unwrap();
    assert!(rows.iter().any(|r| r.table == "bodies" && r.id == ids[1]));
    assert_stored(&spool, ids[0], &message(0, 1, BODY_BYTES));
    assert_stored(&spool, ids[2], &message(2, 1, BODY_BYTES));
}

/// Rewrites a closed spool into the layout of the build before segment
/// files: each body inside redb's `bodies` table, no `body_refs` or
/// `segment_usage` table, no segments folder.
fn to_earlier_layout(dir: &Path) {
    let db = Database::create(dir.join("spool.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let refs = txn.open_table(BODY_REFS).unwrap();
        let mut bodies = txn.open_table(BODIES).unwrap();
        for entry in refs.iter().unwrap() {
            let (id, value) = entry.unwrap();
            let (segment, offset, len) = value.value();
            let path = dir.join("segments").join(format!("{segment:08}.seg"));
            let mut body = vec![0; len as usize];
            fs::File::open(path)
                .unwrap()
                .read_exact_at(&mut body, offset + HEADER_BYTES)
                .unwrap();
            bodies.insert(id.value(), body.as_slice()).unwrap();
        }
    }
    txn.delete_table(BODY_REFS).unwrap();
    txn.delete_table(SEGMENT_USAGE).unwrap();
    txn.commit().unwrap();
    fs::remove_dir_all(dir.join("segments")).unwrap();
}

#[test]
fn a_spool_in_the_earlier_layout_still_delivers_after_the_upgrade() {
    let dir = tempdir().unwrap();
    let spool = open_in_segments(dir.path());
    let old = insert_many(&spool, 0..20);
    spool.shutdown();
    drop(spool);
    to_earlier_layout(dir.path());

    let spool = open_in_segments(dir.path());
    for (seed, &id) in old.iter().enumerate() {
        assert_stored(&spool, id, &message(seed as u64, 1, BODY_BYTES));
    }
    let new = insert_many(&spool, 100..110);
    let claimed = spool.claim_due(u64::MAX / 2, 1_000).unwrap();
    assert_eq!(claimed.len(), 30, "old and new messages are due");
    // Delivering every old message empties the old table.
    let done = old
        .iter()
        .map(|&id| Outcome::Done { id, rcpt: 0 })
        .collect();
    spool.record_blocking(done).unwrap();
    spool.shutdown();
    drop(spool);
    {
        let db = Database::create(dir.path().join("spool.redb")).unwrap();
        let txn = db.begin_read().unwrap();
        assert_eq!(txn.open_table(BODIES).unwrap().iter().unwrap().count(), 0);
    }
    let spool = open_in_segments(dir.path());
    assert_eq!(spool.stats().unwrap().messages, 10);
    for (seed, &id) in (100..).zip(&new) {
        assert_stored(&spool, id, &message(seed, 1, BODY_BYTES));
    }
}
