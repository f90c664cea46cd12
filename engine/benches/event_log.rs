//! `cargo bench -p sendengine --bench event_log -- [--size 1GB] [--reps 7]
//! [--dir /var/tmp/sendengine-bench/event-log]`: how fast `sendctl log`'s
//! reader answers on a big event log (issue 18).
//!
//! Writes the log once with the daemon's own writer (`EventLog`: the real
//! schema, rotated into 256 MiB files as in production) unless the folder
//! already holds one of that size, then times, `--reps` times each: the
//! newest page (50), a page from the middle of the log, and a filter that
//! matches 3 events in the whole log, with `grep -F -c` over the same
//! files beside it for scale. Prints the median [min..max] and the load
//! average. The page cache is warm (the files were just written or read).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sendengine::events::filter::{FilterSpec, LogFilter};
use sendengine::events::reader::{Cursor, Query, read_backward};
use sendengine::events::{
    Event, EventKind, EventLog, EventLogSettings, EventReply, RotationPolicy,
};
use sendengine::values::parse_size;

const RARE: &str = "needle@rare.example";
const FILE_BYTES: u64 = 256 << 20;
const NOW: u64 = 1_795_257_000_000;

struct Options {
    size: u64,
    reps: usize,
    dir: PathBuf,
}

fn options() -> Options {
    let mut o = Options {
        size: 1 << 30,
        reps: 7,
        dir: PathBuf::from("/var/tmp/sendengine-bench/event-log"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--size" => o.size = parse_size(&value).expect("--size like 1GB"),
            "--reps" => o.reps = value.parse().expect("--reps N"),
            "--dir" => o.dir = PathBuf::from(value),
            _ => {
                i += 1; // cargo's own --bench
                continue;
            }
        }
        i += 2;
    }
    o
}

/// Event `n` of a busy day: receptions and deliveries, some deferrals
/// and bounces, 20 tenants, 50 campaigns, 8 routes.
fn event(n: u64, recipient: String) -> Event {
    let kind = match n % 40 {
        0 => EventKind::Bounce,
        1 | 2 => EventKind::TransientFailure,
        n if n.is_multiple_of(2) => EventKind::Reception,
        _ => EventKind::Delivery,
    };
    let reply = match kind {
        EventKind::Reception => None,
        EventKind::Delivery => Some((250, "2.0.0", format!("Ok: queued as {n:X}"))),
        EventKind::Bounce => Some((
            550,
            "5.1.1",
            "The email account that you tried to reach does not exist".into(),
        )),
        _ => Some((451, "4.7.1", "Try again later, closing connection".into())),
    };
    Event {
        time: sendengine::timefmt::rfc3339(NOW + n * 20),
        kind,
        message_id: format!("{:016x}", n / 2),
        header_message_id: format!("<{}.{n}@mail.shop{}.example>", n / 2, n % 20),
        sender: format!("news@shop{}.example", n % 20),
        recipient,
        tenant: Some(format!("tenant{}", n % 20)),
        group: Some(format!("group{}", n % 5)),
        channel: "marketing".into(),
        campaign: Some(format!("campaign-{}", n % 50)),
        route: Some(format!("relay-{}", n % 8)),
        remote_host: reply.as_ref().map(|_| format!("mx{}.example.net", n % 30)),
        reply: reply.map(|(code, enhanced, text)| EventReply {
            code,
            enhanced: Some(enhanced.into()),
            text,
        }),
        bounce_class: (kind == EventKind::Bounce).then(|| "bad-mailbox".into()),
        bounce_type: None,
        tls: Some("TLSv1.3 TLS_AES_256_GCM_SHA384".into()),
        dkim: Some(format!("signed d=shop{}.example s=s1", n % 20)),
        attempt: 1,
        queue_time_ms: n % 5000,
        size: 10_240 + (n % 7) as usize * 100,
        url: None,
        user_agent: None,
        metadata: None,
    }
}

fn log_bytes(path: &Path) -> u64 {
    (0..100)
        .map(|n| match n {
            0 => path.to_owned(),
            n => PathBuf::from(format!("{}.{n}", path.display())),
        })
        .map_while(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Writes events until the log holds `size` bytes; the rare recipient at
/// the start, the middle and near the end.
fn generate(path: &Path, size: u64) {
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    let settings = EventLogSettings {
        path: Some(path.to_owned()),
        rotation: RotationPolicy {
            max_file_bytes: FILE_BYTES,
            rotate_daily: false,
            keep_files: 100,
        },
        queue_size: 65_536,
    };
    let log = EventLog::start(&settings, None).expect("open the event log");
    let per_event = serde_json::to_string(&event(1, "x".into())).unwrap().len() as u64 + 30;
    let total = size / per_event;
    let rare_at = [10, total / 2, total - 1000];
    let started = Instant::now();
    let mut n = 0;
    while log_bytes(path) < size {
        for _ in 0..50_000 {
            let recipient = if rare_at.contains(&n) {
                RARE.to_owned()
            } else {
                format!("user{}@domain{}.example", n / 2, n % 500)
            };
            log.emit(event(n, recipient));
            n += 1;
        }
        log.flush();
    }
    assert_eq!(log.dropped(), 0);
    println!(
        "wrote {n} events, {} MB, in {:.1} s",
        log_bytes(path) >> 20,
        started.elapsed().as_secs_f64()
    );
}

/// A line boundary in the middle of the log's middle file.
fn middle(path: &Path) -> Cursor {
    use std::os::unix::fs::MetadataExt;
    let files: Vec<PathBuf> = (1..100)
        .map(|n| PathBuf::from(format!("{}.{n}", path.display())))
        .take_while(|p| p.exists())
        .collect();
    let file = &files[files.len() / 2];
    let bytes = std::fs::read(file).unwrap();
    let half = bytes.len() / 2;
    let offset = half + bytes[half..].iter().position(|b| *b == b'\n').unwrap() + 1;
    Cursor {
        inode: std::fs::metadata(file).unwrap().ino(),
        offset: offset as u64,
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn time(reps: usize, mut run: impl FnMut() -> String) -> (Vec<Duration>, String) {
    let mut times = Vec::new();
    let mut what = String::new();
    for _ in 0..reps {
        let started = Instant::now();
        what = run();
        times.push(started.elapsed());
    }
    times.sort();
    (times, what)
}

fn report(name: &str, (times, what): (Vec<Duration>, String)) -> Duration {
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let median = times[times.len() / 2];
    println!(
        "{name:<34} median {:>8.1} ms [{:.1}..{:.1}]  {what}",
        ms(&median),
        ms(&times[0]),
        ms(&times[times.len() - 1])
    );
    median
}

fn main() {
    let o = options();
    let path = o.dir.join("events.jsonl");
    if log_bytes(&path) < o.size {
        generate(&path, o.size);
    }
    let bytes = log_bytes(&path);
    println!(
        "log: {} MB in {}; load average before: {}",
        bytes >> 20,
        o.dir.display(),
        load()
    );

    let any = LogFilter::new(&FilterSpec::default(), NOW).unwrap();
    let rare_spec = FilterSpec {
        recipient: Some(RARE.into()),
        ..FilterSpec::default()
    };
    let rare = LogFilter::new(&rare_spec, NOW).unwrap();
    let page = |filter| Query {
        filter,
        limit: 50,
        max_scan_bytes: u64::MAX,
    };
    let deep = middle(&path);
    report(
        "newest page (50)",
        time(o.reps, || {
            let p = read_backward(&path, None, &page(&any)).unwrap();
            format!(
                "{} events, {} KB scanned",
                p.events.len(),
                p.scanned_bytes >> 10
            )
        }),
    );
    report(
        "page from the middle (50)",
        time(o.reps, || {
            let p = read_backward(&path, Some(deep), &page(&any)).unwrap();
            format!(
                "{} events, {} KB scanned",
                p.events.len(),
                p.scanned_bytes >> 10
            )
        }),
    );
    let ours = report(
        "rare recipient, whole log",
        time(o.reps, || {
            let p = read_backward(&path, None, &page(&rare)).unwrap();
            format!(
                "{} events, {} MB scanned",
                p.events.len(),
                p.scanned_bytes >> 20
            )
        }),
    );
    let grep = report(
        "  grep -F -c, same files",
        time(o.reps, || {
            let files = std::fs::read_dir(&o.dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect::<Vec<_>>();
            let out = std::process::Command::new("grep")
                .args(["-F", "-c", "-h", RARE])
                .args(&files)
                .output()
                .expect("run grep");
            let found: u64 = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.trim().parse::<u64>().ok())
                .sum();
            format!("{found} lines")
        }),
    );
    println!(
        "rare filter: {:.2} GB/s, {:.2}x grep's time; load average after: {}",
        bytes as f64 / ours.as_secs_f64() / 1e9,
        ours.as_secs_f64() / grep.as_secs_f64(),
        load()
    );
}
