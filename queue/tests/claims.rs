//! Claims that respect the caller's room, and claimed recipients given
//! back: the spool side of bounded ready queues and leases (issue 14,
//! points 7 and 8).

mod common;

use std::sync::{Arc, Mutex};

use common::{message, open};
use sendengine_queue::{Outcome, QueueAction, RecipientStatus, SUSPENDED_DUE, Spool};
use tempfile::tempdir;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn insert(spool: &Spool, seed: u64, campaign: &str) -> u64 {
    let mut msg = message(seed, 1, 100);
    msg.meta.campaign = campaign.into();
    spool.insert_blocking(msg, false).unwrap()
}

fn status(spool: &Spool, id: u64) -> (RecipientStatus, u64) {
    let filter = sendengine_queue::QueueFilter {
        id: Some(id),
        ..Default::default()
    };
    let page = spool.queue_page(&filter, None, 10).unwrap();
    let r = &page.recipients[0];
    (r.status, r.next_attempt_ms)
}

/// What does not fit stays scheduled: a full route's recipients are
/// skipped, the ones behind them are claimed, and nothing is lost.
#[test]
fn a_filtered_claim_leaves_what_it_refuses_scheduled() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let slow: Vec<u64> = (0..5).map(|i| insert(&spool, i, "slow")).collect();
    let fast = insert(&spool, 10, "fast");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let mut slow_room = 2;
    let claimed = spool
        .claim_due_where(
            now_ms() + 1_000,
            100,
            Box::new(move |c| {
                log.lock().unwrap().push(c.id);
                if c.meta.campaign == "slow" {
                    if slow_room == 0 {
                        return false;
                    }
                    slow_room -= 1;
                }
                true
            }),
        )
        .unwrap();
    let ids: Vec<u64> = claimed.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![slow[0], slow[1], fast]);
    assert_eq!(seen.lock().unwrap().len(), 6, "every due entry was offered");
    for id in &slow[2..] {
        assert_eq!(status(&spool, *id).0, RecipientStatus::Queued);
    }
    let rest = spool.claim_due(now_ms() + 1_000, 100).unwrap();
    assert_eq!(rest.len(), 3, "the refused ones are still due");
}

/// Jobs pulled out of a ready queue are claimed in the spool: an action on
/// them as "returned" applies (suspend, remove), where the plain action
/// would skip them as in flight.
#[test]
fn an_action_on_returned_claims_applies_to_them() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let a = insert(&spool, 1, "c");
    let b = insert(&spool, 2, "c");
    let claimed = spool.claim_due(now_ms() + 1_000, 10).unwrap();
    assert_eq!(claimed.len(), 2);
    assert_eq!(
        spool
            .queue_action(QueueAction::Suspend, vec![(a, 0)])
            .unwrap(),
        vec![false],
        "a claimed recipient is skipped by the plain action"
    );
    assert_eq!(
        spool
            .queue_action_returned(QueueAction::Suspend, vec![(a, 0)])
            .unwrap(),
        vec![true]
    );
    assert_eq!(
        status(&spool, a),
        (RecipientStatus::Suspended, SUSPENDED_DUE)
    );
    assert_eq!(
        spool
            .queue_action_returned(QueueAction::Remove, vec![(b, 0)])
            .unwrap(),
        vec![true]
    );
    assert!(spool.load(b).unwrap().is_none(), "the message left");
    // A returned recipient the action leaves alone is due again, not stranded.
    let c = insert(&spool, 3, "c");
    assert_eq!(spool.claim_due(now_ms() + 1_000, 10).unwrap().len(), 1);
    assert_eq!(
        spool
            .queue_action_returned(QueueAction::Resume, vec![(c, 0)])
            .unwrap(),
        vec![false]
    );
    assert_eq!(status(&spool, c).0, RecipientStatus::Queued);
}

/// A release that comes after the recipient was suspended or deferred
/// (a lease that ran out late) changes nothing.
#[test]
fn a_release_applies_only_to_claimed_recipients() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let id = insert(&spool, 1, "c");
    spool
        .queue_action(QueueAction::Suspend, vec![(id, 0)])
        .unwrap();
    spool
        .record_blocking(vec![Outcome::Release { id, rcpt: 0 }])
        .unwrap();
    assert_eq!(status(&spool, id).0, RecipientStatus::Suspended);
    spool
        .queue_action(QueueAction::Resume, vec![(id, 0)])
        .unwrap();
    assert_eq!(spool.claim_due(now_ms() + 1_000, 10).unwrap().len(), 1);
    spool
        .record_blocking(vec![Outcome::Release { id, rcpt: 0 }])
        .unwrap();
    assert_eq!(status(&spool, id).0, RecipientStatus::Queued);
}

/// A full route's long run of due recipients does not hide the ones
/// behind it: past the head, each filtered claim goes on from where the
/// last stopped, so the one recipient another route could take is
/// reached within a few claims, not when the full route has drained.
#[test]
fn recipients_behind_a_long_run_of_a_full_route_are_reached() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let mut slow = message(1, 25_000, 100);
    slow.meta.campaign = "slow".into();
    spool.insert_blocking(slow, false).unwrap();
    let fast = insert(&spool, 2, "fast");
    let mut claims = 0;
    let claimed = loop {
        claims += 1;
        assert!(claims <= 3, "the fast route's recipient was never offered");
        let claimed = spool
            .claim_due_where(
                now_ms() + 1_000,
                100,
                Box::new(|c| c.meta.campaign == "fast"),
            )
            .unwrap();
        if !claimed.is_empty() {
            break claimed;
        }
    };
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, fast);
    assert_eq!(
        claims, 2,
        "the second claim goes on past the first's window"
    );
    let rest = spool.claim_due(now_ms() + 1_000, 30_000).unwrap();
    assert_eq!(rest.len(), 25_000, "the refused ones are still due");
}
