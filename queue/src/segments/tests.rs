//! The segment files on a real folder: append, read back, damage found by
//! the checksum, a file deleted once its last body is gone, and reopening.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::*;

fn body(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn append_all(
    appender: &mut SegmentAppender,
    bodies: &[(MessageId, Vec<u8>)],
    durable: bool,
) -> Vec<BodyRef> {
    let input = bodies
        .iter()
        .map(|(id, b)| (*id, b.as_slice(), checksum(b)));
    let appended = appender.append(input, durable).unwrap();
    appender.wait_synced().unwrap();
    appended.refs
}

fn open(dir: &std::path::Path, live: HashMap<u32, u64>) -> (Arc<SegmentFiles>, SegmentAppender) {
    let files = Arc::new(SegmentFiles::open(dir).unwrap());
    let appender = SegmentAppender::open(Arc::clone(&files), live).unwrap();
    (files, appender)
}

#[test]
fn bodies_read_back_and_the_first_record_says_where_the_batch_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (files, mut appender) = open(dir.path(), HashMap::new());
    let bodies = [(1, body(1, 10_000)), (2, body(2, 1)), (3, body(3, 70_000))];
    let input = bodies
        .iter()
        .map(|(id, b)| (*id, b.as_slice(), checksum(b)));
    let appended = appender.append(input, true).unwrap();
    appender.wait_synced().unwrap();
    assert_eq!(appended.start, Some((1, 0)));
    let refs = appended.refs;
    assert_eq!(refs[1].offset, refs[0].record_bytes());
    for ((id, expected), at) in bodies.iter().zip(&refs) {
        assert_eq!(&files.read(*id, *at).unwrap(), expected);
    }
    // The place of another message's body is not this one's.
    assert!(matches!(files.read(9, refs[0]), Err(ReadError::Damaged(_))));
    let total: u64 = refs.iter().map(BodyRef::record_bytes).sum();
    assert_eq!(files.bytes(), total);
    assert_eq!(files.list().unwrap(), vec![(1, total)]);

    let more = [(4, body(4, 100))];
    let input = more.iter().map(|(id, b)| (*id, b.as_slice(), checksum(b)));
    let appended = appender.append(input, true).unwrap();
    appender.wait_synced().unwrap();
    assert_eq!(
        appended.start,
        Some((1, total)),
        "the next batch starts after the last"
    );
}

#[test]
fn a_damaged_or_cut_body_is_found_by_its_check() {
    let dir = tempfile::tempdir().unwrap();
    let (files, mut appender) = open(dir.path(), HashMap::new());
    let bodies = vec![(1, body(1, 5_000)), (2, body(2, 5_000))];
    let refs = append_all(&mut appender, &bodies, true);

    let file = OpenOptions::new().write(true).open(files.path(1)).unwrap();
    file.write_all_at(b"X", refs[0].offset + HEADER_BYTES as u64 + 4_000)
        .unwrap();
    match files.read(1, refs[0]) {
        Err(ReadError::Damaged(reason)) => assert!(reason.contains("checksum"), "{reason}"),
        other => panic!("a damaged body was read: {other:?}"),
    }
    assert_eq!(
        files.read(2, refs[1]).unwrap(),
        bodies[1].1,
        "its neighbour is intact"
    );

    // A crash before the fdatasync: the tail of the file never arrived.
    file.set_len(refs[1].offset + 100).unwrap();
    assert!(matches!(files.read(2, refs[1]), Err(ReadError::Damaged(_))));
    // And zeros where a record should be (blocks allocated, never written).
    file.set_len(refs[1].offset + refs[1].record_bytes())
        .unwrap();
    assert!(matches!(files.read(2, refs[1]), Err(ReadError::Damaged(_))));
}

#[test]
fn a_segment_goes_once_its_last_body_is_gone_but_never_the_open_one() {
    let dir = tempfile::tempdir().unwrap();
    let (files, appender) = open(dir.path(), HashMap::new());
    let mut appender = appender.with_segment_bytes(30_000);
    // Two 10 KB records (with their headers) fill a 30,000-byte segment.
    let first: Vec<_> = (1..=4).map(|id| (id, body(id as u8, 10_000))).collect();
    let refs = append_all(&mut appender, &first, true);
    let segments: Vec<u32> = refs.iter().map(|r| r.segment).collect();
    assert_eq!(segments, vec![1, 1, 2, 2]);
    appender.committed(&[(1, 2), (2, 2)]);
    assert_eq!(files.list().unwrap().len(), 2);

    appender.committed(&[(1, -1)]);
    assert!(
        files.path(1).exists(),
        "one body is still live in segment 1"
    );
    appender.committed(&[(1, -1)]);
    assert!(
        !files.path(1).exists(),
        "segment 1 is deleted with its last body"
    );
    assert!(matches!(files.read(1, refs[0]), Err(ReadError::Missing)));

    appender.committed(&[(2, -2)]);
    assert!(
        files.path(2).exists(),
        "the segment being appended to stays"
    );
    assert_eq!(appender.current_segment(), Some(2));
    assert_eq!(files.bytes(), files.list().unwrap()[0].1);
}

#[test]
fn reopening_deletes_dead_segments_and_appends_to_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let bodies = vec![(1, body(1, 2_000)), (2, body(2, 3_000))];
    let refs = {
        let (_, mut appender) = open(dir.path(), HashMap::new());
        append_all(&mut appender, &bodies, true)
    };
    // A file a crash left with no live body, numbered past the live one.
    let orphan = SegmentFiles::open(dir.path()).unwrap().create(3).unwrap();
    orphan.write_all_at(b"torn", 0).unwrap();

    let (files, mut appender) = open(dir.path(), HashMap::from([(1, 2)]));
    assert_eq!(files.list().unwrap().len(), 1, "the orphan was deleted");
    assert_eq!(
        files.bytes(),
        refs.iter().map(BodyRef::record_bytes).sum::<u64>()
    );
    for ((id, expected), at) in bodies.iter().zip(&refs) {
        assert_eq!(&files.read(*id, *at).unwrap(), expected);
    }
    let next = append_all(&mut appender, &[(3, body(3, 10))], true);
    assert_eq!(
        next[0].segment, 4,
        "never appends to a file of an earlier run"
    );
}
