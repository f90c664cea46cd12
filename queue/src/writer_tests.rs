//! The writer driven batch by batch on a real database, so a test
//! decides exactly which requests share one group commit.

use std::sync::mpsc;

use crossbeam::channel::{self, Sender};

use super::*;
use crate::clients::ClientPresence;
use crate::delivered::DeliveredWrite;
use crate::message::{Claimed, MessageMeta, NewMessage, Outcome};
use crate::requests::{ClaimRequest, Completion, InsertRequest, RecordRequest};
use crate::store::EncodedMessage;

struct Harness {
    writer: Writer,
    requests: Sender<Request>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Harness {
        Harness::lingering(Duration::ZERO)
    }

    /// A writer whose batches of outcomes alone wait `outcome_linger`.
    fn lingering(outcome_linger: Duration) -> Harness {
        Harness::with_waits(outcome_linger, Duration::ZERO)
    }

    /// A writer whose inserts wait up to `commit_delay` for the other
    /// connected clients'.
    fn delaying(commit_delay: Duration) -> Harness {
        Harness::with_waits(Duration::ZERO, commit_delay)
    }

    fn with_waits(outcome_linger: Duration, commit_delay: Duration) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.redb");
        let cache_bytes = 4 * 1024 * 1024;
        let db = store::open_database(&path, cache_bytes).unwrap();
        let segments = Arc::new(SegmentFiles::open(dir.path()).unwrap());
        let recovered = store::recover(&db, &segments, now_ms()).unwrap();
        let live = store::live_segments(&db).unwrap();
        let appender = SegmentAppender::open(Arc::clone(&segments), live).unwrap();
        let archive_path = dir.path().join(crate::archive::ARCHIVE_FILE_NAME);
        let archive = Arc::new(Archive::open(&archive_path).unwrap());
        let (requests, receiver) = channel::unbounded();
        let settings = WriterSettings {
            max_batch: 1024,
            durable: true,
            cache_bytes,
            reopen_delay: Duration::from_millis(10),
            fail_commits: None,
            fail_segment_syncs: None,
            segment_bodies_from: 0,
            outcome_linger,
            commit_delay,
        };
        let writer = Writer::new(
            Arc::new(Shared::new(path, db, segments, archive)),
            receiver,
            settings,
            IdGenerator::new(recovered.id_floor),
            appender,
            recovered.messages,
        );
        Harness {
            writer,
            requests,
            _dir: dir,
        }
    }

    /// `n` connected clients, until the presences are dropped.
    fn clients(&self, n: usize) -> Vec<ClientPresence> {
        (0..n)
            .map(|_| ClientPresence::new(Arc::clone(&self.writer.shared)))
            .collect()
    }

    /// Sends a request to the writer as `Spool` does, inserts counted.
    fn send(&self, request: Request) {
        (self.sender())(request);
    }

    /// What sends as [`Harness::send`] from another thread.
    fn sender(&self) -> impl Fn(Request) + Send + 'static {
        let (requests, shared) = (self.requests.clone(), Arc::clone(&self.writer.shared));
        move |request| {
            let insert = matches!(request, Request::Insert(_));
            requests.send(request).unwrap();
            if insert {
                shared.arrivals.sent();
            }
        }
    }

    /// Gathers one batch from what was sent, and how long that took.
    fn gather_timed(&mut self) -> (Batch, Duration) {
        let started = Instant::now();
        let first = self.writer.next_request().unwrap();
        let batch = self.writer.gather(first);
        (batch, started.elapsed())
    }

    /// Applies `requests` in one group commit.
    fn one_commit(&mut self, requests: Vec<Request>) {
        for request in requests {
            self.requests.send(request).unwrap();
        }
        let first = self.writer.next_request().unwrap();
        let batch = self.writer.gather(first);
        assert!(self.requests.is_empty(), "every request in one batch");
        self.writer.process(batch);
    }

    fn corrupt(&self, key: (MessageId, u32)) {
        self.writer
            .shared
            .read(|db| store::overwrite_recipient_row(db, key, b"\xffnot a recipient row"))
            .unwrap();
    }

    fn stats(&self) -> (u64, u64) {
        let shared = &self.writer.shared;
        let counts = shared.read(store::counts).unwrap();
        (
            counts.quarantined,
            shared.failed_batches.load(Ordering::Relaxed),
        )
    }
}

fn reply<T: Send + 'static>() -> (Completion<T>, mpsc::Receiver<Result<T, SpoolError>>) {
    let (tx, rx) = mpsc::channel();
    let done: Completion<T> = Box::new(move |result| {
        let _ = tx.send(result);
    });
    (done, rx)
}

fn insert(recipients: usize) -> (Request, mpsc::Receiver<Result<MessageId, SpoolError>>) {
    insert_submitted(recipients, Instant::now())
}

fn insert_submitted(
    recipients: usize,
    submitted: Instant,
) -> (Request, mpsc::Receiver<Result<MessageId, SpoolError>>) {
    let msg = NewMessage {
        mail_from: "sender@example.com".into(),
        recipients: (0..recipients)
            .map(|i| format!("r{i}@example.net"))
            .collect(),
        body: b"Subject: x\r\n\r\nhello\r\n".to_vec().into(),
        meta: MessageMeta::default(),
        quotas: Vec::new(),
        tracking: None,
        idempotency: None,
    };
    let (done, rx) = reply();
    let msg = EncodedMessage::new(msg).unwrap();
    let request = Request::Insert(InsertRequest {
        msg,
        claimed: false,
        done,
        submitted,
    });
    (request, rx)
}

fn claim() -> (Request, mpsc::Receiver<Result<Vec<Claimed>, SpoolError>>) {
    let (done, rx) = reply();
    let request = Request::Claim(ClaimRequest {
        now_ms: now_ms() + 60_000,
        limit: 100,
        accept: None,
        done,
    });
    (request, rx)
}

fn record(outcome: Outcome) -> (Request, mpsc::Receiver<Result<(), SpoolError>>) {
    let (done, rx) = reply();
    let request = Request::Record(RecordRequest {
        outcomes: vec![outcome],
        index: DeliveredWrite::default(),
        done,
    });
    (request, rx)
}

fn keys(claimed: &[Claimed]) -> Vec<(MessageId, u32)> {
    let mut keys: Vec<_> = claimed.iter().map(|c| (c.id, c.rcpt)).collect();
    keys.sort_unstable();
    keys
}

#[test]
fn a_corrupt_row_fails_no_request_of_its_commit_and_is_quarantined_once() {
    let mut h = Harness::new();
    let (x, x_id) = insert(2);
    let (y, y_id) = insert(1);
    h.one_commit(vec![x, y]);
    let x_id = x_id.recv().unwrap().unwrap();
    let y_id = y_id.recv().unwrap().unwrap();
    // One row an outcome reaches, one a claim reaches.
    h.corrupt((x_id, 1));
    h.corrupt((y_id, 0));

    let (z, z_id) = insert(1);
    let (w, w_id) = insert(1);
    let (deferred, deferred_done) = record(Outcome::Deferred {
        id: x_id,
        rcpt: 1,
        next_attempt_ms: now_ms() + 3_600_000,
        reply: String::new(),
    });
    let (claim_now, claimed) = claim();
    h.one_commit(vec![z, w, deferred, claim_now]);

    let z_id = z_id
        .recv()
        .unwrap()
        .expect("an insert beside a corrupt row");
    let w_id = w_id
        .recv()
        .unwrap()
        .expect("an insert beside a corrupt row");
    deferred_done
        .recv()
        .unwrap()
        .expect("an outcome for a corrupt row");
    let claimed = claimed
        .recv()
        .unwrap()
        .expect("a claim meeting a corrupt row");
    assert_eq!(keys(&claimed), vec![(x_id, 0), (z_id, 0), (w_id, 0)]);
    assert_eq!(h.stats(), (2, 0), "(quarantined, failed batches)");

    // Y lost its only recipient: the message moved to the quarantine too.
    let rows = h.writer.shared.read(|db| quarantine::list(db, 10)).unwrap();
    let mut moved: Vec<_> = rows
        .iter()
        .map(|r| (r.table.as_str(), r.id, r.rcpt))
        .collect();
    moved.sort_unstable();
    let mut expected = vec![
        ("bodies", y_id, 0),
        ("messages", y_id, 0),
        ("recipients", x_id, 1),
        ("recipients", y_id, 0),
    ];
    expected.sort_unstable();
    assert_eq!(moved, expected);
    assert!(
        rows.iter()
            .all(|r| r.table != "recipients" || r.value == b"\xffnot a recipient row")
    );
    assert!(
        h.writer
            .shared
            .read(|db| store::load(db, &h.writer.shared.segments, y_id))
            .unwrap()
            .is_none()
    );
    let counts = h.writer.shared.read(store::counts).unwrap();
    assert_eq!((counts.messages, counts.recipients), (3, 3));
    assert_eq!(counts.scheduled, 0, "no schedule entry is left behind");

    // The next ticks meet nothing: no failure, nothing quarantined again.
    for _ in 0..3 {
        let (claim_again, again) = claim();
        let (one_more, one_more_id) = insert(1);
        h.one_commit(vec![one_more, claim_again]);
        let id = one_more_id.recv().unwrap().unwrap();
        assert_eq!(keys(&again.recv().unwrap().unwrap()), vec![(id, 0)]);
    }
    assert_eq!(h.stats(), (2, 0), "(quarantined, failed batches)");
}

/// Inserts a message of one recipient and claims it: the key an outcome
/// can be recorded for.
fn claimed_key(h: &mut Harness) -> (MessageId, u32) {
    let (x, x_id) = insert(1);
    h.one_commit(vec![x]);
    let id = x_id.recv().unwrap().unwrap();
    let (c, claimed) = claim();
    h.one_commit(vec![c]);
    assert_eq!(keys(&claimed.recv().unwrap().unwrap()), vec![(id, 0)]);
    (id, 0)
}

#[test]
fn outcomes_alone_wait_for_an_insert_and_share_its_commit() {
    let mut h = Harness::lingering(Duration::from_secs(30));
    let (id, rcpt) = claimed_key(&mut h);
    let (r, recorded) = record(Outcome::Done { id, rcpt });
    h.requests.send(r).unwrap();
    let (x, inserted) = insert(1);
    let late = h.requests.clone();
    let started = Instant::now();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        late.send(x).unwrap();
    });
    let first = h.writer.next_request().unwrap();
    let batch = h.writer.gather(first);
    let waited = started.elapsed();
    sender.join().unwrap();
    assert!(waited >= Duration::from_millis(100), "{waited:?}");
    assert!(
        waited < Duration::from_secs(20),
        "the insert ended the wait: {waited:?}"
    );
    assert_eq!(
        (batch.writes.records.len(), batch.writes.inserts.len()),
        (1, 1)
    );
    let commits = h.writer.shared.commits.load(Ordering::Relaxed);
    h.writer.process(batch);
    assert_eq!(h.writer.shared.commits.load(Ordering::Relaxed), commits + 1);
    recorded.recv().unwrap().unwrap();
    inserted.recv().unwrap().unwrap();
}

#[test]
fn outcomes_alone_commit_by_themselves_once_the_linger_is_over() {
    let mut h = Harness::lingering(Duration::from_millis(200));
    let (id, rcpt) = claimed_key(&mut h);
    let (r, recorded) = record(Outcome::Done { id, rcpt });
    h.requests.send(r).unwrap();
    let started = Instant::now();
    let first = h.writer.next_request().unwrap();
    let batch = h.writer.gather(first);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(batch.len(), 1);
    h.writer.process(batch);
    recorded.recv().unwrap().unwrap();
}

#[test]
fn inserts_claims_and_bounce_marks_never_linger() {
    let mut h = Harness::lingering(Duration::from_secs(30));
    let (id, rcpt) = claimed_key(&mut h);
    let (report_done, _reported) = reply();
    let report = Request::Record(RecordRequest {
        outcomes: Vec::new(),
        index: DeliveredWrite::reports(&[(id, rcpt, "a report")]),
        done: report_done,
    });
    for (request, with_outcome) in [(insert(1).0, false), (claim().0, true), (report, false)] {
        if with_outcome {
            // Outcomes in company of a claim: the delivery side waits for it.
            h.requests
                .send(record(Outcome::Done { id, rcpt }).0)
                .unwrap();
        }
        h.requests.send(request).unwrap();
        let started = Instant::now();
        let first = h.writer.next_request().unwrap();
        let batch = h.writer.gather(first);
        assert!(started.elapsed() < Duration::from_secs(10));
        h.writer.process(batch);
    }
}

#[test]
fn an_insert_waits_for_the_other_connected_clients_insert() {
    let mut h = Harness::delaying(Duration::from_secs(30));
    let _clients = h.clients(4);
    let (x, x_id) = insert(1);
    h.send(x);
    let late = h.sender();
    let (y, y_id) = insert(1);
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        late(y);
    });
    let (batch, waited) = h.gather_timed();
    sender.join().unwrap();
    assert!(waited >= Duration::from_millis(100), "{waited:?}");
    assert!(
        waited < Duration::from_secs(20),
        "half of the clients in: no more wait: {waited:?}"
    );
    assert_eq!(batch.writes.inserts.len(), 2);
    h.writer.process(batch);
    x_id.recv().unwrap().unwrap();
    y_id.recv().unwrap().unwrap();
}

#[test]
fn a_lone_client_and_clients_that_are_not_sessions_never_wait() {
    let mut h = Harness::delaying(Duration::from_secs(30));
    for clients in [2, 1, 0] {
        let _present = h.clients(clients);
        let (x, x_id) = insert(1);
        h.send(x);
        let (batch, waited) = h.gather_timed();
        assert!(waited < Duration::from_secs(10), "{clients}: {waited:?}");
        h.writer.process(batch);
        x_id.recv().unwrap().unwrap();
    }
}

#[test]
fn the_wait_ends_commit_delay_after_the_oldest_insert_came() {
    let mut h = Harness::delaying(Duration::from_millis(200));
    let _clients = h.clients(5);
    let (x, x_id) = insert(1);
    h.send(x);
    let (batch, waited) = h.gather_timed();
    assert!(waited >= Duration::from_millis(190), "{waited:?}");
    assert_eq!(batch.len(), 1);
    h.writer.process(batch);
    x_id.recv().unwrap().unwrap();

    // One that already waited that long behind another commit goes at once.
    let mut h = Harness::delaying(Duration::from_secs(30));
    let _clients = h.clients(10);
    let long_ago = Instant::now() - Duration::from_secs(31);
    let (x, x_id) = insert_submitted(1, long_ago);
    let (y, y_id) = insert(1);
    h.send(x);
    h.send(y);
    let (batch, waited) = h.gather_timed();
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    assert_eq!(batch.writes.inserts.len(), 2);
    h.writer.process(batch);
    x_id.recv().unwrap().unwrap();
    y_id.recv().unwrap().unwrap();
}
