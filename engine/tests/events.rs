//! The event log file on its own (no daemon): rotation by size and by day,
//! reopening after logrotate moved the file, and a writer that cannot keep
//! up (a FIFO nobody reads) never blocking `emit` while the overflow is
//! counted, in `dropped()` and in the Prometheus metric.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sendengine::events::{EventKind, EventLog, EventLogSettings, RotationPolicy};
use support::delivery_event as event;

fn settings(path: &Path, max_file_bytes: u64, keep_files: usize, daily: bool) -> EventLogSettings {
    EventLogSettings {
        path: Some(path.to_owned()),
        rotation: RotationPolicy {
            max_file_bytes,
            rotate_daily: daily,
            keep_files,
        },
        queue_size: 65_536,
    }
}

/// The event numbers in a file, in line order.
fn numbers(path: &Path) -> Vec<usize> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            usize::from_str_radix(v["message_id"].as_str().unwrap(), 16).unwrap()
        })
        .collect()
}

fn numbered(path: &Path, n: usize) -> PathBuf {
    PathBuf::from(format!("{}.{n}", path.display()))
}

#[test]
fn the_file_rotates_by_size_and_keeps_n_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs/events.jsonl");
    let log = EventLog::start(&settings(&path, 4_000, 3, false), None).unwrap();
    for n in 0..200 {
        log.emit(event(n));
    }
    log.flush();

    assert!(
        !numbered(&path, 4).exists(),
        "only 3 rotated files are kept"
    );
    // Oldest to newest: .3, .2, .1, then the current file.
    let mut kept = Vec::new();
    for file in [
        numbered(&path, 3),
        numbered(&path, 2),
        numbered(&path, 1),
        path.clone(),
    ] {
        let size = std::fs::metadata(&file).unwrap().len();
        assert!(size <= 4_000, "{} has {size} bytes", file.display());
        let lines = numbers(&file);
        assert!(!lines.is_empty(), "{} is empty", file.display());
        kept.extend(lines);
    }
    // The newest events, in order, nothing missing between the files.
    let first = kept[0];
    assert_eq!(kept, (first..200).collect::<Vec<_>>());
    assert!(first > 0, "older files were deleted");
}

#[test]
fn reopen_follows_logrotate_moving_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let moved = dir.path().join("events.jsonl-20261121");
    let log = EventLog::start(&settings(&path, 1 << 30, 14, false), None).unwrap();
    (0..5).for_each(|n| log.emit(event(n)));
    log.flush();
    std::fs::rename(&path, &moved).unwrap();
    // Until told, the log keeps writing to the file it has open.
    (5..8).for_each(|n| log.emit(event(n)));
    log.flush();
    log.reopen();
    (8..10).for_each(|n| log.emit(event(n)));
    log.flush();

    assert_eq!(numbers(&moved), (0..8).collect::<Vec<_>>());
    assert_eq!(numbers(&path), vec![8, 9]);
}

#[test]
fn a_file_from_an_earlier_day_is_rotated_at_the_first_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let old_line = serde_json::to_string(&event(1)).unwrap() + "\n";
    std::fs::write(&path, &old_line).unwrap();
    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 86_400);
    let file = std::fs::File::options().append(true).open(&path).unwrap();
    file.set_modified(two_days_ago).unwrap();
    drop(file);

    let log = EventLog::start(&settings(&path, 1 << 30, 14, true), None).unwrap();
    log.emit(event(2));
    log.flush();
    assert_eq!(numbers(&numbered(&path, 1)), vec![1]);
    assert_eq!(numbers(&path), vec![2]);
    drop(log);

    // Without daily rotation, the old file just grows.
    let path = dir.path().join("plain.jsonl");
    std::fs::write(&path, &old_line).unwrap();
    let file = std::fs::File::options().append(true).open(&path).unwrap();
    file.set_modified(two_days_ago).unwrap();
    drop(file);
    let log = EventLog::start(&settings(&path, 1 << 30, 14, false), None).unwrap();
    log.emit(event(2));
    log.flush();
    assert_eq!(numbers(&path), vec![1, 2]);
    assert!(!numbered(&path, 1).exists());
}

#[test]
fn an_event_after_a_torn_line_starts_a_line_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let whole = serde_json::to_string(&event(1)).unwrap() + "\n";
    let torn = &serde_json::to_string(&event(2)).unwrap()[..50];
    std::fs::write(&path, format!("{whole}{torn}")).unwrap();

    let log = EventLog::start(&settings(&path, 1 << 30, 14, false), None).unwrap();
    log.emit(event(3));
    log.flush();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            whole.trim_end(),
            torn,
            &serde_json::to_string(&event(3)).unwrap()
        ]
    );
}

#[test]
fn a_stuck_writer_never_blocks_emit_and_the_overflow_is_counted() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");

    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("events.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success());
    // A reader that never reads: the writer fills the pipe (64 KiB) and
    // then blocks in write(2) for good.
    use std::os::unix::fs::OpenOptionsExt;
    const O_NONBLOCK: i32 = 0o4000;
    let reader = std::fs::File::options()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(&fifo)
        .unwrap();

    let mut settings = settings(&fifo, 1 << 30, 14, true);
    settings.queue_size = 100;
    let log = EventLog::start(&settings, None).unwrap();
    let emitted = 20_000;
    // Would hang here if emit waited for the writer.
    for n in 0..emitted {
        log.emit(event(n));
    }
    let dropped = log.dropped();
    // At most 64 KiB in the pipe, 4096 in the writer's hands and 100 queued
    // got through; everything else was dropped.
    assert!(dropped >= emitted as u64 - 5_000, "dropped {dropped}");
    assert!(dropped < emitted as u64);
    let rendered = metrics.render();
    let line = rendered
        .lines()
        .find(|l| l.starts_with("sendengine_events_dropped_total"))
        .unwrap_or_else(|| panic!("no dropped counter in:\n{rendered}"));
    let counted: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(counted, dropped);
    // Unblocks the writer (EPIPE) so its thread can end.
    drop(reader);
}

#[test]
fn the_events_section_and_webhooks_are_read_strictly() {
    use sendengine::config::Config;
    let base = "[spool]\ndir = \"/tmp/x\"\n[smtp_in]\nlisten = [\"127.0.0.1:0\"]\n\
                [[delivery_server]]\nname = \"r\"\nhost = \"127.0.0.1\"\n";
    let config = Config::parse(&format!("{base}[events]\npath = \"e.jsonl\"\n")).unwrap();
    let events = &config.events;
    assert_eq!(events.max_file_bytes, 256 << 20);
    assert!(events.rotate_daily);
    assert_eq!((events.keep_files, events.queue_size), (14, 65_536));
    assert!(events.webhooks.is_empty());

    let text = format!(
        "{base}[events]\nmax_file_size = \"10MB\"\nrotate_daily = false\nkeep_files = 3\nqueue_size = 10\n\
         [[webhook]]\nurl = \"http://127.0.0.1:9/a\"\nsecret = \"s\"\nkinds = [\"delivery\", \"complaint\"]\n\
         [[webhook]]\nname = \"b\"\nurl = \"https://hooks.example.com/\"\nsecret = \"t\"\n"
    );
    let config = Config::parse(&text).unwrap();
    let events = &config.events;
    assert_eq!((events.max_file_bytes, events.keep_files), (10 << 20, 3));
    assert_eq!(events.webhooks.len(), 2);
    assert_eq!(
        events.webhooks[0].kinds,
        Some(vec![EventKind::Delivery, EventKind::Complaint])
    );
    assert_eq!(events.webhooks[1].name, "b");

    for (bad, key) in [
        ("[events]\nkeep_files = 0", "events.keep_files"),
        ("[events]\nqueue_size = 0", "events.queue_size"),
        ("[events]\nqueue_size = 99999999", "events.queue_size"),
        ("[events]\nmax_file_size = \"big\"", "events.max_file_size"),
        ("[events]\nrotate = true", "rotate"),
        ("[[webhook]]\nurl = \"http://x/\"", "webhook[0].secret"),
        (
            "[[webhook]]\nurl = \"http://x/\"\nsecret = \"s\"\n[[webhook]]\nurl = \"http://x/\"\nsecret = \"s\"",
            "webhook[1].name",
        ),
    ] {
        let e = Config::parse(&format!("{base}{bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{bad}: {e}");
    }
}
