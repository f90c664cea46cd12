//! Behaviour of the spool through its public API, on real files in temp dirs:
//! roundtrips, ids, claiming and outcomes, recovery, group commit, injected
//! commit failures and shutdown.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{DEADLOCK_GUARD, assert_stored, body, config, insert_async, message, open, wait};
use sendengine_queue::{
    Claimed, MessageId, NewMessage, Outcome, Spool, SpoolError, format_id, id_timestamp_ms,
    parse_id,
};
use tempfile::tempdir;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// An hour ahead: due times the wall clock cannot reach during a test.
fn future_ms() -> u64 {
    now_ms() + 3_600_000
}

/// Holds the writer thread inside the completion of one insert, so requests
/// sent meanwhile pile up in its channel.
struct WriterHold {
    release: mpsc::Sender<()>,
    done: mpsc::Receiver<Result<MessageId, SpoolError>>,
}

impl WriterHold {
    fn new(spool: &Spool) -> Self {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let (done_tx, done) = mpsc::channel();
        let completion = move |result| {
            let _ = entered_tx.send(());
            let _ = release_rx.recv_timeout(DEADLOCK_GUARD);
            let _ = done_tx.send(result);
        };
        spool.insert(message(0, 1, 100), false, Box::new(completion));
        entered_rx
            .recv_timeout(DEADLOCK_GUARD)
            .expect("the writer ran the completion");
        WriterHold { release, done }
    }

    fn release(self) -> Result<MessageId, SpoolError> {
        let _ = self.release.send(());
        wait(&self.done)
    }
}

fn claim_all_now(spool: &Spool) -> Vec<Claimed> {
    spool.claim_due(now_ms(), 10_000).unwrap()
}

#[test]
fn insert_then_load_roundtrips_binary_bodies() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let mut msg = message(1, 3, 0);
    let mut bytes =
        b"Subject: 8bit\r\n\r\n.leading dot\r\n\x00\xff\xfe caf\xc3\xa9\r\n\r\n.\r\n".to_vec();
    bytes.extend(body(7, 20_000));
    msg.body = bytes.into();

    let id = spool.insert_blocking(msg.clone(), false).unwrap();
    assert_stored(&spool, id, &msg);
    assert!(spool.load(id + 1).unwrap().is_none());

    let stats = spool.stats().unwrap();
    assert_eq!(
        (
            stats.messages,
            stats.recipients,
            stats.scheduled,
            stats.claimed
        ),
        (1, 3, 3, 0)
    );
    assert!(stats.file_bytes > 20_000);

    // The id names the acceptance time and survives text form.
    assert!(id_timestamp_ms(id).abs_diff(now_ms()) < 600_000);
    assert_eq!(parse_id(&format_id(id)), Some(id));
}

#[test]
fn ids_increase_across_reopen_even_after_the_spool_emptied() {
    let dir = tempdir().unwrap();
    let mut last = 0;
    for _round in 0..3 {
        let spool = open(dir.path());
        let first = spool.insert_blocking(message(1, 1, 100), true).unwrap();
        let second = spool.insert_blocking(message(2, 1, 100), true).unwrap();
        assert!(
            last < first && first < second,
            "{last:x} {first:x} {second:x}"
        );
        last = second;
        let done = [first, second].map(|id| Outcome::Done { id, rcpt: 0 });
        spool.record_blocking(done.to_vec()).unwrap();
        assert_eq!(spool.stats().unwrap().messages, 0, "the spool is empty");
        spool.shutdown();
    }
}

#[test]
fn claim_due_takes_due_recipients_in_due_order_up_to_the_limit() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let a = spool.insert_blocking(message(1, 2, 100), true).unwrap();
    let b = spool.insert_blocking(message(2, 1, 100), true).unwrap();
    let base = future_ms();
    spool
        .record_blocking(vec![
            Outcome::Deferred {
                id: a,
                rcpt: 0,
                next_attempt_ms: base + 30,
                reply: String::new(),
            },
            Outcome::Deferred {
                id: a,
                rcpt: 1,
                next_attempt_ms: base + 10,
                reply: String::new(),
            },
            Outcome::Deferred {
                id: b,
                rcpt: 0,
                next_attempt_ms: base + 20,
                reply: String::new(),
            },
        ])
        .unwrap();
    assert_eq!(spool.next_due_ms().unwrap(), Some(base + 10));

    assert!(spool.claim_due(base + 9, 10).unwrap().is_empty());
    let first = spool.claim_due(base + 15, 10).unwrap();
    assert_eq!(
        first,
        vec![Claimed {
            id: a,
            rcpt: 1,
            attempts: 1
        }]
    );
    let limited = spool.claim_due(base + 100, 1).unwrap();
    assert_eq!(
        limited,
        vec![Claimed {
            id: b,
            rcpt: 0,
            attempts: 1
        }]
    );
    let rest = spool.claim_due(base + 100, 10).unwrap();
    assert_eq!(
        rest,
        vec![Claimed {
            id: a,
            rcpt: 0,
            attempts: 1
        }]
    );

    assert!(
        spool.claim_due(base + 100, 10).unwrap().is_empty(),
        "claimed ones are not claimed twice"
    );
    assert_eq!(spool.next_due_ms().unwrap(), None);
    let stats = spool.stats().unwrap();
    assert_eq!((stats.scheduled, stats.claimed), (0, 3));
}

#[test]
fn unclaimed_inserts_are_due_now_and_claimed_ones_are_not_scheduled() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let scheduled = spool.insert_blocking(message(1, 2, 100), false).unwrap();
    let held = spool.insert_blocking(message(2, 1, 100), true).unwrap();
    assert!(spool.next_due_ms().unwrap().unwrap() <= now_ms());

    let claimed = claim_all_now(&spool);
    let expected: Vec<Claimed> = (0..2)
        .map(|rcpt| Claimed {
            id: scheduled,
            rcpt,
            attempts: 0,
        })
        .collect();
    assert_eq!(
        claimed, expected,
        "the claimed insert {held:x} is not in the schedule"
    );
}

#[test]
fn deferred_recipient_waits_until_due_and_counts_an_attempt() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let id = spool.insert_blocking(message(1, 1, 100), true).unwrap();
    let due = future_ms();
    for attempt in 1..=3 {
        spool
            .record_blocking(vec![Outcome::Deferred {
                id,
                rcpt: 0,
                next_attempt_ms: due + attempt,
                reply: String::new(),
            }])
            .unwrap();
        assert!(
            spool.claim_due(due + attempt - 1, 10).unwrap().is_empty(),
            "not yet due"
        );
        let claimed = spool.claim_due(due + attempt, 10).unwrap();
        assert_eq!(
            claimed,
            vec![Claimed {
                id,
                rcpt: 0,
                attempts: attempt as u32
            }]
        );
    }
}

#[test]
fn done_removes_the_message_only_after_its_last_recipient() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let msg = message(1, 3, 5_000);
    let id = spool.insert_blocking(msg.clone(), true).unwrap();

    spool
        .record_blocking(vec![Outcome::Done { id, rcpt: 1 }])
        .unwrap();
    spool
        .record_blocking(vec![Outcome::Done { id, rcpt: 0 }])
        .unwrap();
    assert_stored(&spool, id, &msg);
    assert_eq!(spool.stats().unwrap().recipients, 1);

    spool
        .record_blocking(vec![Outcome::Done { id, rcpt: 2 }])
        .unwrap();
    assert!(spool.load(id).unwrap().is_none());
    let stats = spool.stats().unwrap();
    assert_eq!(
        (stats.messages, stats.recipients, stats.scheduled),
        (0, 0, 0)
    );

    // A duplicate report changes nothing.
    spool
        .record_blocking(vec![Outcome::Done { id, rcpt: 2 }])
        .unwrap();
    spool
        .record_blocking(vec![Outcome::Deferred {
            id,
            rcpt: 2,
            next_attempt_ms: 1,
            reply: String::new(),
        }])
        .unwrap();
    assert_eq!(spool.stats().unwrap().scheduled, 0);
}

#[test]
fn release_makes_a_recipient_due_now_without_counting_an_attempt() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let id = spool.insert_blocking(message(1, 1, 100), true).unwrap();
    spool
        .record_blocking(vec![Outcome::Deferred {
            id,
            rcpt: 0,
            next_attempt_ms: 0,
            reply: String::new(),
        }])
        .unwrap();
    assert_eq!(
        claim_all_now(&spool),
        vec![Claimed {
            id,
            rcpt: 0,
            attempts: 1
        }]
    );

    spool
        .record_blocking(vec![Outcome::Release { id, rcpt: 0 }])
        .unwrap();
    assert_eq!(
        claim_all_now(&spool),
        vec![Claimed {
            id,
            rcpt: 0,
            attempts: 1
        }]
    );
}

#[test]
fn outcome_for_a_scheduled_recipient_keeps_one_schedule_entry() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let id = spool.insert_blocking(message(1, 2, 100), false).unwrap();
    let later = future_ms();
    // Not claimed, yet deferred and done: the old schedule entries must go.
    spool
        .record_blocking(vec![
            Outcome::Deferred {
                id,
                rcpt: 0,
                next_attempt_ms: later,
                reply: String::new(),
            },
            Outcome::Done { id, rcpt: 1 },
        ])
        .unwrap();
    let stats = spool.stats().unwrap();
    assert_eq!((stats.recipients, stats.scheduled), (1, 1));
    assert!(claim_all_now(&spool).is_empty());
    assert_eq!(
        spool.claim_due(later, 10).unwrap(),
        vec![Claimed {
            id,
            rcpt: 0,
            attempts: 1
        }]
    );
}

#[test]
fn reopening_schedules_claimed_recipients_again() {
    let dir = tempdir().unwrap();
    let (held, deferred, untouched);
    {
        let spool = open(dir.path());
        held = spool.insert_blocking(message(1, 2, 100), true).unwrap();
        deferred = spool.insert_blocking(message(2, 1, 100), true).unwrap();
        untouched = spool.insert_blocking(message(3, 1, 100), false).unwrap();
        spool
            .record_blocking(vec![Outcome::Deferred {
                id: deferred,
                rcpt: 0,
                next_attempt_ms: 0,
                reply: String::new(),
            }])
            .unwrap();
        let claimed = claim_all_now(&spool);
        assert_eq!(claimed.len(), 2, "{claimed:?}");
        assert_eq!(spool.stats().unwrap().claimed, 4);
        // Dropped without shutdown: Drop must close it cleanly too.
    }
    let spool = open(dir.path());
    let stats = spool.stats().unwrap();
    assert_eq!(
        (stats.claimed, stats.scheduled, stats.recovered_claims),
        (0, 4, 4)
    );
    let mut claimed = claim_all_now(&spool);
    claimed.sort_by_key(|c| (c.id, c.rcpt));
    let expected = vec![
        Claimed {
            id: held,
            rcpt: 0,
            attempts: 0,
        },
        Claimed {
            id: held,
            rcpt: 1,
            attempts: 0,
        },
        Claimed {
            id: deferred,
            rcpt: 0,
            attempts: 1,
        },
        Claimed {
            id: untouched,
            rcpt: 0,
            attempts: 0,
        },
    ];
    assert_eq!(claimed, expected);
}

#[test]
fn group_commit_applies_all_waiting_requests_in_one_transaction() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let hold = WriterHold::new(&spool);
    let commits_before = spool.stats().unwrap().commits;

    let pending: Vec<_> = (0..200)
        .map(|seed| insert_async(&spool, message(seed, 1, 1000), false))
        .collect();
    hold.release().unwrap();
    let ids: HashSet<MessageId> = pending.iter().map(|rx| wait(rx).unwrap()).collect();
    assert_eq!(ids.len(), 200);

    let stats = spool.stats().unwrap();
    assert_eq!(
        stats.commits - commits_before,
        1,
        "200 waiting inserts, one commit"
    );
    assert_eq!(stats.last_batch, 200);
    assert_eq!(stats.messages, 201);
}

#[test]
fn batch_size_is_capped_by_max_batch() {
    let dir = tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_batch = 3;
    let spool = Spool::open(cfg).unwrap();
    let hold = WriterHold::new(&spool);
    let commits_before = spool.stats().unwrap().commits;

    let pending: Vec<_> = (0..9)
        .map(|seed| insert_async(&spool, message(seed, 1, 100), false))
        .collect();
    hold.release().unwrap();
    for rx in &pending {
        wait(rx).unwrap();
    }
    let stats = spool.stats().unwrap();
    assert_eq!(stats.commits - commits_before, 3);
    assert_eq!(stats.last_batch, 3);
}

#[test]
fn concurrent_inserts_share_commits() {
    const THREADS: u64 = 20;
    const PER_THREAD: u64 = 25;
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let workers: Vec<_> = (0..THREADS)
        .map(|thread_no| {
            let spool = spool.clone();
            thread::spawn(move || {
                (0..PER_THREAD)
                    .map(|i| {
                        let msg = message(thread_no * 1000 + i, 2, 10_000);
                        (spool.insert_blocking(msg.clone(), false).unwrap(), msg)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let inserted: Vec<_> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();

    let ids: HashSet<_> = inserted.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len() as u64, THREADS * PER_THREAD, "ids are unique");
    for (id, msg) in inserted.iter().step_by(37) {
        assert_stored(&spool, *id, msg);
    }
    let stats = spool.stats().unwrap();
    assert_eq!(stats.messages, THREADS * PER_THREAD);
    assert!(
        stats.commits < THREADS * PER_THREAD,
        "{} commits for {} inserts",
        stats.commits,
        THREADS * PER_THREAD
    );
}

#[test]
fn injected_commit_failure_fails_the_batch_then_later_batches_succeed() {
    let dir = tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let mut cfg = config(dir.path());
    cfg.fail_commits = Some(fail.clone());
    let spool = Spool::open(cfg).unwrap();
    let kept = spool.insert_blocking(message(1, 1, 100), true).unwrap();

    fail.store(true, Ordering::SeqCst);
    let err = spool
        .insert_blocking(message(2, 1, 100), false)
        .unwrap_err();
    assert!(
        matches!(&err, SpoolError::Storage(text) if text == "injected fault"),
        "{err}"
    );
    let err = spool
        .record_blocking(vec![Outcome::Done { id: kept, rcpt: 0 }])
        .unwrap_err();
    assert!(matches!(err, SpoolError::Storage(_)));
    assert!(matches!(
        spool.claim_due(now_ms(), 10),
        Err(SpoolError::Storage(_))
    ));
    let stats = spool.stats().unwrap();
    assert_eq!(
        (stats.messages, stats.failed_batches),
        (1, 3),
        "nothing of the failed batches was applied"
    );
    assert!(spool.load(kept).unwrap().is_some());

    fail.store(false, Ordering::SeqCst);
    let id = spool.insert_blocking(message(3, 1, 100), false).unwrap();
    assert!(id > kept);
    spool
        .record_blocking(vec![Outcome::Done { id: kept, rcpt: 0 }])
        .unwrap();
    assert!(spool.load(kept).unwrap().is_none());
}

#[test]
fn requests_after_shutdown_get_closed() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let id = spool.insert_blocking(message(1, 1, 100), false).unwrap();
    let other_handle = spool.clone();
    spool.shutdown();
    spool.shutdown();

    let result = wait(&insert_async(&other_handle, message(2, 1, 100), false));
    assert!(matches!(result, Err(SpoolError::Closed)));
    assert!(matches!(
        other_handle.record_blocking(vec![]),
        Err(SpoolError::Closed)
    ));
    assert!(matches!(
        other_handle.claim_due(now_ms(), 1),
        Err(SpoolError::Closed)
    ));
    assert!(matches!(other_handle.compact(), Err(SpoolError::Closed)));
    assert!(matches!(other_handle.load(id), Err(SpoolError::Closed)));
    assert!(matches!(other_handle.stats(), Err(SpoolError::Closed)));
}

#[test]
fn shutdown_answers_the_requests_already_queued() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let hold = WriterHold::new(&spool);
    let pending: Vec<_> = (0..50)
        .map(|seed| insert_async(&spool, message(seed, 1, 500), false))
        .collect();
    let stopper = {
        let spool = spool.clone();
        thread::spawn(move || spool.shutdown())
    };
    // Give the stopper a chance to close the queue first; either order must work.
    thread::yield_now();
    hold.release().unwrap();
    let ids: Vec<_> = pending.iter().map(|rx| wait(rx).unwrap()).collect();
    stopper.join().unwrap();
    drop(spool);

    let reopened = open(dir.path());
    for (seed, id) in ids.into_iter().enumerate() {
        assert_stored(&reopened, id, &message(seed as u64, 1, 500));
    }
}

#[test]
fn a_panicking_completion_does_not_stop_the_writer() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    spool.insert(
        message(1, 1, 100),
        false,
        Box::new(|_| panic!("completion panics (expected in this test)")),
    );
    let id = spool.insert_blocking(message(2, 1, 100), false).unwrap();
    assert!(spool.load(id).unwrap().is_some());
    assert_eq!(spool.stats().unwrap().messages, 2);
}

#[test]
fn blocking_calls_inside_a_completion_are_refused() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let (tx, rx) = mpsc::channel();
    let inner = spool.clone();
    let completion = move |_| {
        let _ = tx.send((
            inner.claim_due(0, 1),
            inner.insert_blocking(message(3, 1, 10), false),
        ));
    };
    spool.insert(message(1, 1, 100), false, Box::new(completion));
    let (claim, insert) = wait(&rx);
    assert!(matches!(claim, Err(SpoolError::WouldDeadlock)));
    assert!(matches!(insert, Err(SpoolError::WouldDeadlock)));
}

#[test]
fn invalid_messages_are_refused_before_anything_is_written() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let no_recipients = NewMessage {
        recipients: vec![],
        ..message(1, 1, 100)
    };
    let err = spool.insert_blocking(no_recipients, false).unwrap_err();
    assert!(matches!(err, SpoolError::Invalid(_)), "{err}");
    assert_eq!(spool.stats().unwrap().commits, 0);
}

#[test]
fn inserts_are_refused_while_too_many_bytes_wait_for_the_writer() {
    let dir = tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_pending_bytes = 50_000;
    let spool = Spool::open(cfg).unwrap();
    let hold = WriterHold::new(&spool);

    let mut accepted = Vec::new();
    let busy = loop {
        assert!(accepted.len() < 10, "the limit never applied");
        let rx = insert_async(&spool, message(1, 1, 10_000), false);
        match rx.try_recv() {
            Ok(Err(err)) => break err,
            Ok(Ok(_)) => panic!("an insert completed while the writer was held"),
            Err(_) => accepted.push(rx),
        }
    };
    assert!(
        matches!(
            busy,
            SpoolError::Busy {
                limit_bytes: 50_000,
                ..
            }
        ),
        "{busy}"
    );
    assert!(
        (3..=5).contains(&accepted.len()),
        "{} accepted",
        accepted.len()
    );

    hold.release().unwrap();
    for rx in &accepted {
        wait(rx).unwrap();
    }
    spool.insert_blocking(message(2, 1, 10_000), false).unwrap();
    assert_eq!(spool.stats().unwrap().pending_bytes, 0);
}

#[test]
fn spool_handles_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Spool>();
}

#[test]
fn opening_the_same_spool_twice_is_an_error_not_a_panic() {
    let dir = tempdir().unwrap();
    let _first = open(dir.path());
    let err = Spool::open(config(dir.path())).unwrap_err();
    assert!(matches!(err, SpoolError::Open { .. }), "{err}");
    assert!(err.to_string().contains("spool.redb"), "{err}");
}

#[test]
fn non_durable_commits_still_reach_the_file_on_shutdown() {
    let dir = tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.durable = false;
    let spool = Spool::open(cfg.clone()).unwrap();
    let msg = message(1, 2, 3_000);
    let id = spool.insert_blocking(msg.clone(), false).unwrap();
    spool.shutdown();
    drop(spool);
    assert_stored(&Spool::open(cfg).unwrap(), id, &msg);
}
