//! The event log: one JSON line per thing that happened to a recipient.
//!
//! Producers (admission, delivery) hand events to `EventLog::emit`, which
//! never blocks: a writer thread appends them to the configured file and
//! flushes whenever it has caught up, so a `tail -f` sees events within
//! moments while a burst costs one write per batch. The schema is fixed
//! (see `Event`); fields that do not apply are `null`.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::Path;

use crossbeam::channel::{Receiver, Sender, unbounded};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventReply {
    pub code: u16,
    pub enhanced: Option<String>,
    pub text: String,
}

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
    pub tls: Option<String>,
    /// DKIM at reception: `signed d=... s=...` or why the message is unsigned.
    pub dkim: Option<String>,
    pub attempt: u32,
    pub queue_time_ms: u64,
    pub size: usize,
}

enum Note {
    Event(Box<Event>),
    Flush(Sender<()>),
}

/// Cheap to clone; every clone feeds the same writer.
#[derive(Clone)]
pub struct EventLog {
    tx: Option<Sender<Note>>,
}

impl EventLog {
    /// An event log that discards everything (no `[events] path`).
    pub fn disabled() -> EventLog {
        EventLog { tx: None }
    }

    /// Opens (appending, creating parent folders) and starts the writer thread.
    pub fn open(path: &Path) -> std::io::Result<EventLog> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let (tx, rx) = unbounded();
        // The thread ends when the last EventLog clone is dropped.
        std::thread::Builder::new()
            .name("event-log".into())
            .spawn(move || write_events(BufWriter::with_capacity(64 * 1024, file), rx))?;
        Ok(EventLog { tx: Some(tx) })
    }

    pub fn emit(&self, event: Event) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Note::Event(Box::new(event)));
        }
    }

    /// Waits until everything emitted so far is written to the file.
    pub fn flush(&self) {
        if let Some(tx) = &self.tx {
            let (done_tx, done_rx) = crossbeam::channel::bounded(1);
            if tx.send(Note::Flush(done_tx)).is_ok() {
                let _ = done_rx.recv();
            }
        }
    }
}

fn write_events(mut out: BufWriter<std::fs::File>, rx: Receiver<Note>) {
    let mut line = Vec::with_capacity(1024);
    while let Ok(note) = rx.recv() {
        let mut next = Some(note);
        while let Some(note) = next {
            match note {
                Note::Event(event) => {
                    line.clear();
                    if serde_json::to_writer(&mut line, &event).is_ok() {
                        line.push(b'\n');
                        if let Err(e) = out.write_all(&line) {
                            eprintln!("sendengine: event log write failed: {e}");
                        }
                    }
                }
                Note::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush() {
            eprintln!("sendengine: event log flush failed: {e}");
        }
    }
}
