//! The reader against real files: rotated sets written by `EventFile`,
//! torn and overlong lines, cursors across a rotation, filters, budgets.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::*;
use crate::events::file::{EventFile, RotationPolicy};
use crate::events::filter::FilterSpec;
use crate::events::{EventKind, test_event};

const NOW: u64 = 1_795_257_000_000; // 2026-11-21T10:30:00Z

/// Event `n` as the writer writes it: a bounce every tenth, else a delivery.
fn line(n: usize) -> String {
    let kind = if n.is_multiple_of(10) {
        EventKind::Bounce
    } else {
        EventKind::Delivery
    };
    let time = crate::timefmt::rfc3339(NOW - 1_000_000 + n as u64 * 1000);
    let mut event = test_event(kind, &format!("rcpt{n}@example.net"), &time);
    event.message_id = format!("{n:016x}");
    serde_json::to_string(&event).unwrap() + "\n"
}

fn append(path: &Path, text: &str) {
    let mut f = File::options()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn append_events(path: &Path, numbers: std::ops::Range<usize>) {
    append(path, &numbers.map(line).collect::<String>());
}

/// `events.jsonl` -> `.1` -> `.2` ..., as `EventFile` rotates.
fn rotate(path: &Path) {
    for n in (1..10).rev() {
        let _ = std::fs::rename(numbered(path, n), numbered(path, n + 1));
    }
    std::fs::rename(path, numbered(path, 1)).unwrap();
}

fn numbers(page: &Page) -> Vec<usize> {
    page.events
        .iter()
        .map(|e| usize::from_str_radix(e["message_id"].as_str().unwrap(), 16).unwrap())
        .collect()
}

fn any() -> LogFilter {
    LogFilter::new(&FilterSpec::default(), NOW).unwrap()
}

fn bounces() -> LogFilter {
    let spec = FilterSpec {
        types: Some("bounce".into()),
        ..FilterSpec::default()
    };
    LogFilter::new(&spec, NOW).unwrap()
}

fn query(filter: &LogFilter, limit: usize) -> Query<'_> {
    Query {
        filter,
        limit,
        max_scan_bytes: u64::MAX,
    }
}

fn log_path() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    (dir, path)
}

/// Every page from the newest back, following `next`.
fn all_pages(path: &Path, q: &Query) -> Vec<usize> {
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = read_backward(path, before, q).unwrap();
        seen.extend(numbers(&page));
        match page.next {
            Some(next) => before = Some(next),
            None => return seen,
        }
    }
}

#[test]
fn pages_go_back_through_the_files_the_writer_rotated() {
    let (_dir, path) = log_path();
    let policy = RotationPolicy {
        max_file_bytes: 4_000,
        rotate_daily: false,
        keep_files: 50,
    };
    let mut file = EventFile::open(&path, policy).unwrap();
    (0..100).for_each(|n| file.write_line(line(n).as_bytes()));
    file.flush();
    assert!(numbered(&path, 3).exists(), "the log rotated");

    let filter = any();
    let newest = read_backward(&path, None, &query(&filter, 5)).unwrap();
    assert_eq!(numbers(&newest), vec![99, 98, 97, 96, 95]);
    assert!(newest.complete && newest.next.is_some() && newest.head.is_some());
    let everything = all_pages(&path, &query(&filter, 7));
    assert_eq!(everything, (0..100).rev().collect::<Vec<_>>());

    let bounces = bounces();
    let found = all_pages(&path, &query(&bounces, 3));
    assert_eq!(
        found,
        (0..100).rev().filter(|n| n % 10 == 0).collect::<Vec<_>>()
    );
}

#[test]
fn a_cursor_pages_on_stably_across_a_rotation_and_growth() {
    let (_dir, path) = log_path();
    append_events(&path, 0..20);
    let filter = any();
    let first = read_backward(&path, None, &query(&filter, 5)).unwrap();
    assert_eq!(numbers(&first), vec![19, 18, 17, 16, 15]);
    let head = first.head.unwrap();

    append_events(&path, 20..23); // after the head, before the rotation
    rotate(&path);
    append_events(&path, 23..30);

    let second = read_backward(&path, first.next, &query(&filter, 5)).unwrap();
    assert_eq!(numbers(&second), vec![14, 13, 12, 11, 10]);
    // Following from the old head: the rest of the rotated file, then the new one.
    let followed = read_forward(&path, head, &query(&filter, 100)).unwrap();
    assert_eq!(numbers(&followed), (20..30).collect::<Vec<_>>());
    let head = followed.head.unwrap();
    let quiet = read_forward(&path, head, &query(&filter, 100)).unwrap();
    assert!(quiet.events.is_empty());
    assert_eq!(quiet.head, Some(head));
    // The cursor survives the file moving again, to `.2`.
    rotate(&path);
    let third = read_backward(&path, second.next, &query(&filter, 5)).unwrap();
    assert_eq!(numbers(&third), vec![9, 8, 7, 6, 5]);
}

#[test]
fn torn_and_foreign_lines_are_skipped_not_fatal() {
    let (_dir, path) = log_path();
    append_events(&path, 0..3);
    append(&path, "{\"time\":\"2026-11-21T1"); // torn by a crash
    append(&path, "\nnot json at all\n[1,2]\n\n");
    append_events(&path, 3..5);
    rotate(&path);
    append_events(&path, 5..7);
    let half = line(7);
    append(&path, &half[..40]); // being written

    let filter = any();
    let page = read_backward(&path, None, &query(&filter, 100)).unwrap();
    assert_eq!(numbers(&page), vec![6, 5, 4, 3, 2, 1, 0]);
    assert_eq!(page.skipped_lines, 3, "torn line, text, array");
    let head = page.head.unwrap();
    assert_eq!(
        head.offset,
        2 * line(5).len() as u64,
        "the head is before the half line"
    );

    append(&path, &half[40..]);
    let followed = read_forward(&path, head, &query(&filter, 100)).unwrap();
    assert_eq!(numbers(&followed), vec![7]);

    // A rotated file that ends without a newline: its tail is skipped.
    append(&path, "{\"torn");
    rotate(&path);
    append_events(&path, 8..9);
    let page = read_backward(&path, None, &query(&filter, 3)).unwrap();
    assert_eq!(numbers(&page), vec![8, 7, 6]);
    assert_eq!(page.skipped_lines, 1);
}

#[test]
fn lines_across_block_edges_are_read_whole() {
    let (_dir, path) = log_path();
    append_events(&path, 0..2000); // about four blocks
    assert!(std::fs::metadata(&path).unwrap().len() > 3 * BLOCK_BYTES as u64);
    let filter = any();
    let page = read_backward(&path, None, &query(&filter, 5000)).unwrap();
    assert_eq!(numbers(&page), (0..2000).rev().collect::<Vec<_>>());
    assert_eq!(page.skipped_lines, 0);
    let start = Cursor {
        inode: page.head.unwrap().inode,
        offset: 0,
    };
    let page = read_forward(&path, start, &query(&filter, 5000)).unwrap();
    assert_eq!(numbers(&page), (0..2000).collect::<Vec<_>>());
    assert_eq!(page.skipped_lines, 0);
}

#[test]
fn a_rare_filter_passes_over_blocks_and_still_pages_exactly() {
    let (_dir, path) = log_path();
    append_events(&path, 0..3000); // about six blocks
    let spec = |recipient: &str| FilterSpec {
        recipient: Some(recipient.into()),
        ..FilterSpec::default()
    };
    for n in [0, 1, 1234, 2999] {
        let one = LogFilter::new(&spec(&format!("rcpt{n}@example.net")), NOW).unwrap();
        assert_eq!(all_pages(&path, &query(&one, 10)), vec![n]);
    }
    let none = LogFilter::new(&spec("nobody@example.net"), NOW).unwrap();
    let page = read_backward(&path, None, &query(&none, 10)).unwrap();
    assert!(page.events.is_empty() && page.next.is_none() && page.complete);
    assert_eq!(page.scanned_bytes, std::fs::metadata(&path).unwrap().len());
    // With a budget: answers early, at a line boundary, and goes on exactly.
    let rare = LogFilter::new(&spec("rcpt7@example.net"), NOW).unwrap();
    let small = Query {
        filter: &rare,
        limit: 10,
        max_scan_bytes: BLOCK_BYTES as u64,
    };
    let first = read_backward(&path, None, &small).unwrap();
    assert!(!first.complete && first.events.is_empty());
    assert_eq!(all_pages(&path, &small), vec![7]);
}

#[test]
fn an_overlong_line_is_skipped_in_both_directions() {
    let (_dir, path) = log_path();
    append_events(&path, 0..2);
    let long = format!("{{\"x\":\"{}\"}}\n", "y".repeat(MAX_LINE_BYTES + 10));
    append(&path, &long);
    append_events(&path, 2..4);
    let filter = any();
    let page = read_backward(&path, None, &query(&filter, 100)).unwrap();
    assert_eq!(numbers(&page), vec![3, 2, 1, 0]);
    assert_eq!(page.skipped_lines, 1);
    let start = Cursor {
        inode: page.head.unwrap().inode,
        offset: 0,
    };
    let page = read_forward(&path, start, &query(&filter, 100)).unwrap();
    assert_eq!(numbers(&page), vec![0, 1, 2, 3]);
    assert_eq!(page.skipped_lines, 1);
}

#[test]
fn the_scan_budget_answers_early_with_a_cursor_to_go_on_from() {
    let (_dir, path) = log_path();
    append_events(&path, 0..50);
    let bounces = bounces();
    let small = Query {
        filter: &bounces,
        limit: 100,
        max_scan_bytes: 10 * line(0).len() as u64,
    };
    let first = read_backward(&path, None, &small).unwrap();
    assert!(!first.complete);
    assert_eq!(numbers(&first), vec![40]);
    let everything = all_pages(&path, &small);
    assert_eq!(everything, vec![40, 30, 20, 10, 0]);
}

#[test]
fn since_stops_at_old_lines_and_old_files() {
    let (_dir, path) = log_path();
    append_events(&path, 0..1000);
    // Events are 1 s apart, the last 1 s before NOW: since 10 minutes
    // before NOW + 500 s wants 900..; the scan may stop 5 minutes earlier.
    let since = LogFilter::new(
        &FilterSpec {
            since: Some("10m".into()),
            ..FilterSpec::default()
        },
        NOW + 500_000,
    )
    .unwrap();
    let page = read_backward(&path, None, &query(&since, 1000)).unwrap();
    assert_eq!(numbers(&page), (900..1000).rev().collect::<Vec<_>>());
    assert_eq!(page.next, None, "nothing older can match");
    let lines = page.scanned_bytes / line(500).len() as u64;
    assert!((400..=402).contains(&lines), "stopped after {lines} lines");

    // A rotated file last written before `since` is not read at all.
    rotate(&path);
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    File::options()
        .append(true)
        .open(numbered(&path, 1))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let now = crate::timefmt::now_ms();
    let hour = LogFilter::new(
        &FilterSpec {
            since: Some("1h".into()),
            ..FilterSpec::default()
        },
        now,
    )
    .unwrap();
    let page = read_backward(&path, None, &query(&hour, 1000)).unwrap();
    assert_eq!(page.scanned_bytes, 0);
}

#[test]
fn bad_and_stale_cursors_are_errors() {
    let (_dir, path) = log_path();
    append_events(&path, 0..3);
    let filter = any();
    assert!(matches!(
        "xyz".parse::<Cursor>(),
        Err(ReadError::BadCursor(_))
    ));
    let head = read_backward(&path, None, &query(&filter, 1))
        .unwrap()
        .head
        .unwrap();
    assert_eq!(head.to_string().parse::<Cursor>().unwrap(), head);
    let mid_line = Cursor {
        offset: head.offset - 5,
        ..head
    };
    let gone = Cursor {
        inode: head.inode + 1,
        ..head
    };
    for cursor in [mid_line, gone] {
        let e = read_backward(&path, Some(cursor), &query(&filter, 1)).unwrap_err();
        assert!(matches!(e, ReadError::CursorGone), "{e}");
        let e = read_forward(&path, cursor, &query(&filter, 1)).unwrap_err();
        assert!(matches!(e, ReadError::CursorGone), "{e}");
    }
}

#[test]
fn no_log_yet_is_an_empty_page() {
    let (_dir, path) = log_path();
    let filter = any();
    let page = read_backward(&path, None, &query(&filter, 10)).unwrap();
    assert!(page.events.is_empty() && page.next.is_none() && page.head.is_none());
    assert!(page.complete);
}
