//! Operator queue access on a real spool: filtered paging, suspend and
//! resume against claiming, flush of deferred recipients, removal (with
//! the message leaving with its last recipient), and a restart in between.

mod common;

use common::{message, open};
use sendengine_queue::{
    Outcome, QueueAction, QueueFilter, QueuePage, RecipientStatus, SUSPENDED_DUE, Spool,
};
use tempfile::tempdir;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Every matching recipient, walking the pages with a small page size.
fn all(spool: &Spool, filter: &QueueFilter) -> Vec<(u64, u32, RecipientStatus)> {
    let mut out = Vec::new();
    let mut from = None;
    loop {
        let QueuePage { recipients, next } = spool.queue_page(filter, from, 3).unwrap();
        out.extend(recipients.iter().map(|r| (r.id, r.rcpt, r.status)));
        match next {
            Some(n) => from = Some(n),
            None => return out,
        }
    }
}

fn keys(list: &[(u64, u32, RecipientStatus)]) -> Vec<(u64, u32)> {
    list.iter().map(|&(id, rcpt, _)| (id, rcpt)).collect()
}

#[test]
fn pages_and_filters_find_exactly_the_matching_recipients() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let mut other = message(2, 3, 100);
    other.meta.campaign = "spring".into();
    other.recipients[1] = "someone@Example.ORG".into();
    let first = spool.insert_blocking(message(1, 4, 100), false).unwrap();
    let second = spool.insert_blocking(other, false).unwrap();

    let everything = all(&spool, &QueueFilter::default());
    assert_eq!(everything.len(), 7);
    assert!(everything.iter().all(|r| r.2 == RecipientStatus::Queued));

    let spring = QueueFilter {
        campaign: Some("spring".into()),
        ..QueueFilter::default()
    };
    assert_eq!(
        keys(&all(&spool, &spring)),
        vec![(second, 0), (second, 1), (second, 2)]
    );
    let by_domain = QueueFilter {
        domain: Some("example.org".into()),
        ..QueueFilter::default()
    };
    assert_eq!(keys(&all(&spool, &by_domain)), vec![(second, 1)]);
    let by_id = QueueFilter {
        id: Some(first),
        ..QueueFilter::default()
    };
    assert_eq!(all(&spool, &by_id).len(), 4);
    let old = QueueFilter {
        received_before_ms: Some(1_700_000_000_002),
        ..QueueFilter::default()
    };
    assert_eq!(all(&spool, &old).len(), 4, "only seed 1 is older");
}

#[test]
fn suspended_recipients_are_never_claimed_until_resumed() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let mut held = message(1, 2, 100);
    held.meta.campaign = "held".into();
    let held_id = spool.insert_blocking(held, false).unwrap();
    let free_id = spool.insert_blocking(message(2, 1, 100), false).unwrap();
    let filter = QueueFilter {
        campaign: Some("held".into()),
        ..QueueFilter::default()
    };
    let chosen = keys(&all(&spool, &filter));
    let changed = spool
        .queue_action(QueueAction::Suspend, chosen.clone())
        .unwrap();
    assert_eq!(changed, vec![true, true]);
    // Suspending twice changes nothing.
    assert_eq!(
        spool
            .queue_action(QueueAction::Suspend, chosen.clone())
            .unwrap(),
        vec![false, false]
    );
    let counts = spool.queue_counts().unwrap();
    assert_eq!((counts.suspended, counts.queued), (2, 1));

    let claimed = spool.claim_due(now_ms() + 1_000, 100).unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, free_id);
    assert_eq!(spool.next_due_ms().unwrap(), None, "suspended is never due");

    // The suspension survives a restart (recovery only touches claimed rows).
    drop(spool);
    let spool = open(dir.path());
    let listed = all(&spool, &filter);
    assert!(listed.iter().all(|r| r.2 == RecipientStatus::Suspended));
    let page = spool.queue_page(&filter, None, 10).unwrap();
    assert_eq!(page.recipients[0].next_attempt_ms, SUSPENDED_DUE);

    assert_eq!(
        spool.queue_action(QueueAction::Resume, chosen).unwrap(),
        vec![true, true]
    );
    let claimed = spool.claim_due(now_ms() + 1_000, 100).unwrap();
    let ids: Vec<u64> = claimed.iter().map(|c| c.id).collect();
    assert!(ids.contains(&held_id), "{ids:?}");
}

#[test]
fn flush_makes_deferred_recipients_due_now_and_leaves_in_flight_ones() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let id = spool.insert_blocking(message(1, 2, 100), false).unwrap();
    let claimed = spool.claim_due(now_ms() + 1_000, 10).unwrap();
    assert_eq!(claimed.len(), 2);
    let later = now_ms() + 3_600_000;
    spool
        .record_blocking(vec![Outcome::Deferred {
            id,
            rcpt: 0,
            next_attempt_ms: later,
            reply: String::new(),
        }])
        .unwrap();
    let statuses = all(&spool, &QueueFilter::default());
    assert_eq!(
        statuses,
        vec![
            (id, 0, RecipientStatus::Deferred),
            (id, 1, RecipientStatus::InFlight)
        ]
    );
    let changed = spool
        .queue_action(QueueAction::Flush, vec![(id, 0), (id, 1)])
        .unwrap();
    assert_eq!(changed, vec![true, false], "in-flight is left alone");
    let again = spool.claim_due(now_ms() + 1_000, 10).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].rcpt, again[0].attempts), (0, 1));
}

#[test]
fn remove_deletes_exactly_the_chosen_recipients_and_then_the_message() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let id = spool.insert_blocking(message(1, 3, 100), false).unwrap();
    let other = spool.insert_blocking(message(2, 1, 100), false).unwrap();
    let changed = spool
        .queue_action(QueueAction::Remove, vec![(id, 0), (id, 2)])
        .unwrap();
    assert_eq!(changed, vec![true, true]);
    assert_eq!(
        keys(&all(&spool, &QueueFilter::default())),
        vec![(id, 1), (other, 0)]
    );
    assert!(spool.load(id).unwrap().is_some());
    spool
        .queue_action(QueueAction::Remove, vec![(id, 1)])
        .unwrap();
    assert!(
        spool.load(id).unwrap().is_none(),
        "last recipient takes the message"
    );
    // An outcome for a removed recipient is ignored.
    spool
        .record_blocking(vec![Outcome::Done { id, rcpt: 1 }])
        .unwrap();
    let stats = spool.stats().unwrap();
    assert_eq!(
        (stats.messages, stats.recipients, stats.scheduled),
        (1, 1, 1)
    );
}

#[test]
fn a_filter_matching_nothing_still_walks_the_whole_queue() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    for seed in 0..5 {
        spool.insert_blocking(message(seed, 4, 50), false).unwrap();
    }
    let none = QueueFilter {
        tenant: Some("nobody".into()),
        ..QueueFilter::default()
    };
    assert!(all(&spool, &none).is_empty());
    assert_eq!(all(&spool, &QueueFilter::default()).len(), 20);
}

/// `queue list` shows each recipient's last reply (as `mailq` does): kept
/// with a deferral, cut to its bound.
#[test]
fn a_deferred_recipient_keeps_its_last_reply_until_it_leaves() {
    let dir = tempdir().unwrap();
    let spool = open(dir.path());
    let id = spool.insert_blocking(message(1, 2, 100), false).unwrap();
    spool.claim_due(now_ms() + 1_000, 10).unwrap();
    let long = format!("451 4.7.1 greylisted {}", "é".repeat(400));
    let later = now_ms() + 3_600_000;
    let deferred = |rcpt, reply: &str| Outcome::Deferred {
        id,
        rcpt,
        next_attempt_ms: later,
        reply: reply.to_owned(),
    };
    spool
        .record_blocking(vec![deferred(0, &long), deferred(1, "")])
        .unwrap();
    let page = spool.queue_page(&QueueFilter::default(), None, 10).unwrap();
    let kept = page.recipients[0].last_reply.clone().expect("a last reply");
    assert!(kept.starts_with("451 4.7.1 greylisted"), "{kept}");
    assert!(
        kept.len() <= sendengine_queue::MAX_LAST_REPLY_BYTES,
        "{}",
        kept.len()
    );
    assert_eq!(page.recipients[1].last_reply, None);
}
