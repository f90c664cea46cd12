//! The event log: one JSON line per thing that happened to a recipient.
//!
//! Producers (admission, delivery) hand events to `EventLog::emit`, which
//! never blocks: events wait in a bounded queue (full: the event is dropped
//! and counted, never silently) for a writer thread that appends them to
//! the configured file (`file.rs`: rotation, reopen) and to the webhook
//! backlogs (`webhook.rs`). It flushes whenever it has caught up, then
//! pauses for `ROUND_PAUSE` before it looks for more: a `tail -f` sees
//! events within milliseconds, and at full load the thread wakes and
//! writes once per pause instead of once per event. The schema is fixed
//! (see `Event`); fields that do not apply are `null`. The same thread
//! feeds the daily counters of `sendctl report` (`daily.rs`).

pub mod daily;
mod file;
pub mod filter;
pub mod http;
pub mod reader;
pub mod webhook;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use serde::{Deserialize, Serialize};

use daily::DailyCounters;
use file::EventFile;
pub use file::RotationPolicy;
use webhook::WebhookFeeds;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Reception,
    Delivery,
    TransientFailure,
    Bounce,
    Expiration,
    /// An operator acted on a recipient (so far: deleted it from the queue).
    AdminAction,
    /// A recipient was put on a suppression list (hard bounce), or dropped
    /// at admission because it is on one.
    Suppression,
    /// A bounce that came back later as an email (a DSN or the like) to
    /// the bounce listener; `bounce_class` and `reply` come from it.
    AsyncBounce,
    /// A feedback report (ARF) saying the recipient marked the mail as spam.
    Complaint,
    /// A tracked link was followed (`url`, `user_agent`, and the client
    /// address in `remote_host`); see `crate::tracking`.
    Click,
    /// The open pixel was loaded (`user_agent`, `remote_host`).
    Open,
}

impl EventKind {
    /// Every kind, in the schema's order.
    pub const ALL: [EventKind; 11] = [
        EventKind::Reception,
        EventKind::Delivery,
        EventKind::TransientFailure,
        EventKind::Bounce,
        EventKind::Expiration,
        EventKind::AdminAction,
        EventKind::Suppression,
        EventKind::AsyncBounce,
        EventKind::Complaint,
        EventKind::Click,
        EventKind::Open,
    ];

    /// The name in the `type` field (`transient_failure`).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Reception => "reception",
            EventKind::Delivery => "delivery",
            EventKind::TransientFailure => "transient_failure",
            EventKind::Bounce => "bounce",
            EventKind::Expiration => "expiration",
            EventKind::AdminAction => "admin_action",
            EventKind::Suppression => "suppression",
            EventKind::AsyncBounce => "async_bounce",
            EventKind::Complaint => "complaint",
            EventKind::Click => "click",
            EventKind::Open => "open",
        }
    }
}

/// What ESP users call a bounce: `hard` when the address will never work
/// (bad mailbox, inactive mailbox, bad domain, at a permanent 5.x.x: it is
/// suppressed), `soft` for everything else (full mailbox, spam block,
/// 4.x.x DSNs, ...): the address may work later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BounceType {
    Hard,
    Soft,
}

impl BounceType {
    pub fn of(hard: bool) -> BounceType {
        if hard {
            BounceType::Hard
        } else {
            BounceType::Soft
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventReply {
    pub code: u16,
    pub enhanced: Option<String>,
    pub text: String,
}

/// The reply text of a `suppression` event for a recipient dropped at
/// admission (the other `suppression` events add an address to a list).
pub const SUPPRESSED_AT_ADMISSION: &str = "recipient is on the suppression list";

/// One event record. Field order is the order in the JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub time: String,
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// Our queue id (16 hex digits).
    pub message_id: String,
    /// The `Message-ID:` header, which the application knows the message by.
    pub header_message_id: String,
    pub sender: String,
    pub recipient: String,
    pub tenant: Option<String>,
    pub group: Option<String>,
    pub channel: String,
    pub campaign: Option<String>,
    pub route: Option<String>,
    pub remote_host: Option<String>,
    pub reply: Option<EventReply>,
    pub bounce_class: Option<String>,
    /// `bounce` and `async_bounce` events (and the `suppression` that
    /// follows one): see [`BounceType`]; `null` for the others.
    pub bounce_type: Option<BounceType>,
    pub tls: Option<String>,
    /// DKIM at reception: `signed d=... s=...` or why the message is unsigned.
    pub dkim: Option<String>,
    pub attempt: u32,
    pub queue_time_ms: u64,
    pub size: usize,
    /// `click` events: the original URL the link led to.
    pub url: Option<String>,
    /// `click` and `open` events: the client's `User-Agent`.
    pub user_agent: Option<String>,
    /// The application's metadata for this recipient (HTTP injection's
    /// `recipients[].metadata`); left out when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

/// The metadata a message carries for its recipient, for its events.
pub fn metadata_of(meta: &sendengine_queue::MessageMeta) -> Option<serde_json::Value> {
    if meta.metadata.is_empty() {
        return None;
    }
    serde_json::from_str(&meta.metadata).ok()
}

/// Where events go besides the file.
#[derive(Default)]
pub struct Outlets {
    pub webhooks: Option<WebhookFeeds>,
    pub daily: Option<DailyCounters>,
}

/// Events held between producers and the writer thread, when not configured.
pub const DEFAULT_QUEUE_SIZE: usize = 65_536;
/// Largest `[events] queue_size` accepted: the queue's slots are allocated
/// up front.
pub const MAX_QUEUE_SIZE: usize = 1 << 24;
/// Events written per round before the file is flushed and the webhook
/// backlogs get their append.
const MAX_EVENTS_PER_ROUND: usize = 4096;
/// At most one stderr line per this many seconds about dropped events.
const DROP_REPORT_INTERVAL_SECS: u64 = 10;
/// How often an idle writer looks at reopen requests and the date.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// Rest after a round that wrote events, so that the events of the next
/// few milliseconds share a round. Without it each event woke the thread
/// and cost a write of its own: 7% of the daemon's CPU at full load.
const ROUND_PAUSE: Duration = Duration::from_millis(10);

/// Where events go and how much may wait; see `[events]` in the README.
#[derive(Debug, Clone)]
pub struct EventLogSettings {
    /// `None`: no file (webhooks only, or nothing).
    pub path: Option<PathBuf>,
    pub rotation: RotationPolicy,
    pub queue_size: usize,
}

/// `[events] queue_size`, defaulted and checked.
pub fn checked_queue_size(value: Option<usize>) -> Result<usize, String> {
    match value.unwrap_or(DEFAULT_QUEUE_SIZE) {
        n @ 1..=MAX_QUEUE_SIZE => Ok(n),
        n => Err(format!(
            "events.queue_size: {n} is not between 1 and {MAX_QUEUE_SIZE}"
        )),
    }
}

enum Note {
    Event(Box<Event>),
    Flush(Sender<()>),
}

/// What every clone of an `EventLog` shares with the writer thread.
struct Shared {
    queue_size: usize,
    dropped: AtomicU64,
    /// Dropped events not yet reported on stderr.
    unreported: AtomicU64,
    last_report_secs: AtomicU64,
    reopen: AtomicBool,
}

/// Cheap to clone; every clone feeds the same writer.
#[derive(Clone)]
pub struct EventLog {
    tx: Option<Sender<Note>>,
    shared: Arc<Shared>,
}

impl EventLog {
    /// An event log that discards everything (no `[events] path`).
    pub fn disabled() -> EventLog {
        EventLog {
            tx: None,
            shared: Arc::new(Shared::new(0)),
        }
    }

    /// Opens the file (appending, creating parent folders) with default
    /// rotation and queue size, and starts the writer thread.
    pub fn open(path: &Path) -> std::io::Result<EventLog> {
        let settings = EventLogSettings {
            path: Some(path.to_owned()),
            rotation: RotationPolicy {
                max_file_bytes: 256 << 20,
                rotate_daily: true,
                keep_files: 14,
            },
            queue_size: DEFAULT_QUEUE_SIZE,
        };
        EventLog::start(&settings, None)
    }

    /// Starts the writer thread, which writes the file (if any), feeds
    /// the webhook backlogs (if any) and the daily counters (if given).
    /// None of them: a disabled log.
    pub fn start(
        settings: &EventLogSettings,
        outlets: Option<Outlets>,
    ) -> std::io::Result<EventLog> {
        let Outlets { webhooks, daily } = outlets.unwrap_or_default();
        let webhooks = webhooks.filter(|w| !w.is_empty());
        let file = match &settings.path {
            Some(path) => Some(EventFile::open(path, settings.rotation.clone())?),
            None => None,
        };
        if file.is_none() && webhooks.is_none() && daily.is_none() {
            return Ok(EventLog::disabled());
        }
        let shared = Arc::new(Shared::new(settings.queue_size.max(1)));
        let (tx, rx) = bounded(settings.queue_size.max(1));
        let writer = Writer {
            file,
            webhooks,
            daily,
            shared: shared.clone(),
        };
        // The thread ends when the last EventLog clone is dropped.
        std::thread::Builder::new()
            .name("event-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(EventLog {
            tx: Some(tx),
            shared,
        })
    }

    /// Queues an event; never blocks. When the queue is full the event is
    /// dropped, counted (`dropped()`, `sendengine_events_dropped_total`)
    /// and reported on stderr at most every few seconds.
    pub fn emit(&self, event: Event) {
        let Some(tx) = &self.tx else {
            return;
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(Note::Event(Box::new(event))) {
            self.shared.count_drop();
        }
    }

    /// Events dropped because the queue was full, since the start.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Closes and reopens the file at the next chance (within about a
    /// second): after logrotate moved it away, new events go to a new file
    /// at the configured path. Cheap; callable from any thread, including a
    /// signal handler's task.
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Relaxed);
    }

    /// Waits until everything emitted so far is written to the file and,
    /// with webhooks, committed to their backlogs in the spool.
    pub fn flush(&self) {
        if let Some(tx) = &self.tx {
            let (done_tx, done_rx) = crossbeam::channel::bounded(1);
            if tx.send(Note::Flush(done_tx)).is_ok() {
                let _ = done_rx.recv();
            }
        }
    }
}

impl Shared {
    fn new(queue_size: usize) -> Shared {
        Shared {
            queue_size,
            dropped: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
            last_report_secs: AtomicU64::new(0),
            reopen: AtomicBool::new(false),
        }
    }

    fn count_drop(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.unreported.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sendengine_events_dropped_total").increment(1);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_report_secs.load(Ordering::Relaxed);
        // One thread wins the report; the others' drops go into its count
        // or the next one.
        if now >= last.saturating_add(DROP_REPORT_INTERVAL_SECS)
            && self
                .last_report_secs
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let n = self.unreported.swap(0, Ordering::Relaxed);
            log::warn!(
                "the event queue is full ({} events; the event log or the spool is slow): dropped {n} events",
                self.queue_size
            );
        }
    }
}

/// The writer thread's state.
struct Writer {
    file: Option<EventFile>,
    webhooks: Option<WebhookFeeds>,
    daily: Option<DailyCounters>,
    shared: Arc<Shared>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Note>) {
        let mut line = Vec::with_capacity(1024);
        loop {
            let first = match rx.recv_timeout(IDLE_TICK) {
                Ok(note) => Some(note),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            self.maintain_file();
            let mut next = first;
            let mut written = 0;
            let mut flushes = Vec::new();
            while let Some(note) = next {
                match note {
                    Note::Event(event) => self.write(&event, &mut line),
                    Note::Flush(done) => flushes.push(done),
                }
                written += 1;
                next = if written < MAX_EVENTS_PER_ROUND {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            self.end_round(flushes);
            if written > 0 {
                std::thread::sleep(ROUND_PAUSE);
            }
        }
        self.end_round(Vec::new());
    }

    fn write(&mut self, event: &Event, line: &mut Vec<u8>) {
        if let Some(daily) = &mut self.daily {
            daily.add(event);
        }
        line.clear();
        if serde_json::to_writer(&mut *line, event).is_err() {
            return;
        }
        if let Some(webhooks) = &mut self.webhooks {
            webhooks.add(event.kind, line);
        }
        if let Some(file) = &mut self.file {
            line.push(b'\n');
            file.write_line(line);
        }
    }

    /// Makes the round's events visible: file flushed, backlogs appended
    /// (waiting for the commit only when someone asked to flush).
    fn end_round(&mut self, flushes: Vec<Sender<()>>) {
        if let Some(file) = &mut self.file {
            file.flush();
        }
        if let Some(webhooks) = &mut self.webhooks {
            if flushes.is_empty() {
                webhooks.submit();
            } else {
                webhooks.submit_and_wait();
            }
        }
        if let Some(daily) = &mut self.daily {
            daily.write_if_due(!flushes.is_empty());
        }
        for done in flushes {
            let _ = done.send(());
        }
    }

    fn maintain_file(&mut self) {
        let Some(file) = &mut self.file else {
            return;
        };
        if self.shared.reopen.swap(false, Ordering::Relaxed) {
            file.reopen();
        }
        file.rotate_if_new_day();
    }
}

/// An event for the unit tests of this module's files: a delivery or
/// whatever `kind`, to `recipient`, stamped `time`; the rest fixed.
#[cfg(test)]
pub(crate) fn test_event(kind: EventKind, recipient: &str, time: &str) -> Event {
    Event {
        time: time.into(),
        kind,
        message_id: "0000000000000000".into(),
        header_message_id: "<x@test>".into(),
        sender: "App@Shop.example".into(),
        recipient: recipient.into(),
        tenant: Some("acme".into()),
        group: None,
        channel: "marketing".into(),
        campaign: Some("spring \"sale\"".into()),
        route: Some("relay-1".into()),
        remote_host: None,
        reply: None,
        bounce_class: None,
        bounce_type: None,
        tls: None,
        dkim: None,
        attempt: 1,
        queue_time_ms: 0,
        size: 100,
        url: None,
        user_agent: None,
        metadata: None,
    }
}
