//! A recipient row damaged on disk (garbage bytes written into the table
//! with redb while the spool is closed) must neither keep the spool from
//! opening nor fail the requests around it: it is moved to the quarantine,
//! counted in the stats, and never met again.

mod common;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{message, open};
use redb::{Database, TableDefinition};
use sendengine_queue::{MessageId, Outcome, QueueAction, QueueFilter, Spool, SpoolError};
use tempfile::tempdir;

/// The spool's recipient table, as `store/mod.rs` defines it.
const RECIPIENTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("recipients");
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const GARBAGE: &[u8] = b"\x07garbage, not a recipient row";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn corrupt_on_disk(dir: &Path, keys: &[(MessageId, u32)]) {
    let db = Database::create(dir.join("spool.redb")).expect("open the closed spool with redb");
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(RECIPIENTS).unwrap();
        for &key in keys {
            table.insert(key, GARBAGE).unwrap();
        }
    }
    txn.commit().unwrap();
}

/// Queues a message with two recipients and one with one, lets `prepare`
/// act on the first, and closes the spool; returns their ids.
fn queue_two(dir: &Path, prepare: impl FnOnce(&Spool, MessageId)) -> (MessageId, MessageId) {
    let spool = open(dir);
    let two = spool.insert_blocking(message(1, 2, 300), false).unwrap();
    let one = spool.insert_blocking(message(2, 1, 300), false).unwrap();
    prepare(&spool, two);
    spool.shutdown();
    (two, one)
}

#[test]
fn a_corrupt_row_on_disk_is_quarantined_at_open_and_never_met_again() {
    let dir = tempdir().unwrap();
    let (two, one) = queue_two(dir.path(), |_, _| {});
    corrupt_on_disk(dir.path(), &[(two, 1), (one, 0)]);

    let spool = open(dir.path());
    let stats = spool.stats().unwrap();
    assert_eq!(stats.quarantined, 2);
    assert_eq!(
        (stats.messages, stats.recipients, stats.scheduled),
        (1, 1, 1)
    );
    let rows = spool.quarantined(100).unwrap();
    let recipient_rows: Vec<_> = rows
        .iter()
        .filter(|r| r.table == "recipients")
        .map(|r| ((r.id, r.rcpt), r.value.as_slice()))
        .collect();
    assert_eq!(
        recipient_rows,
        vec![((two, 1), GARBAGE), ((one, 0), GARBAGE)]
    );
    assert!(rows.iter().all(|r| !r.reason.is_empty()));
    // The message whose only recipient was damaged left the spool for the
    // quarantine, body included; the other keeps its good recipient.
    assert!(spool.load(one).unwrap().is_none());
    assert!(rows.iter().any(|r| r.table == "bodies" && r.id == one));
    assert_eq!(spool.load(two).unwrap().unwrap().recipients.len(), 2);

    // Inserts, claims and outcomes go on around it.
    let fresh = spool.insert_blocking(message(3, 1, 300), false).unwrap();
    let mut claimed: Vec<_> = spool
        .claim_due(now_ms() + 60_000, 100)
        .unwrap()
        .iter()
        .map(|c| (c.id, c.rcpt))
        .collect();
    claimed.sort_unstable();
    assert_eq!(claimed, vec![(two, 0), (fresh, 0)]);
    spool
        .record_blocking(vec![
            Outcome::Done { id: two, rcpt: 0 },
            Outcome::Done { id: two, rcpt: 1 },
            Outcome::Done { id: fresh, rcpt: 0 },
        ])
        .unwrap();
    let stats = spool.stats().unwrap();
    assert_eq!((stats.messages, stats.recipients), (0, 0));
    assert_eq!((stats.failed_batches, stats.quarantined), (0, 2));
    spool.shutdown();
    drop(spool);

    // Reopening finds nothing new to quarantine.
    let spool = open(dir.path());
    assert_eq!(spool.stats().unwrap().quarantined, 2);
    assert_eq!(spool.quarantined(100).unwrap(), rows);
}

fn damage_envelope_on_disk(dir: &Path, id: MessageId) {
    let db = Database::create(dir.join("spool.redb")).expect("open the closed spool with redb");
    let txn = db.begin_write().unwrap();
    txn.open_table(MESSAGES)
        .unwrap()
        .insert(id, GARBAGE)
        .unwrap();
    txn.commit().unwrap();
}

#[test]
fn a_message_that_cannot_be_loaded_after_its_claim_is_quarantined_whole() {
    let dir = tempdir().unwrap();
    let (damaged, intact) = queue_two(dir.path(), |_, _| {});
    damage_envelope_on_disk(dir.path(), damaged);

    let spool = open(dir.path());
    let claimed = spool.claim_due(now_ms() + 60_000, 100).unwrap();
    assert_eq!(claimed.len(), 3);
    assert!(matches!(spool.load(damaged), Err(SpoolError::Corrupt(_))));
    assert!(spool.load(intact).unwrap().is_some());
    // A commit after the load: the quarantine it asked for is in.
    spool
        .backlog_append_blocking("barrier", Vec::new(), 1)
        .unwrap();

    let stats = spool.stats().unwrap();
    assert_eq!(
        stats.quarantined, 2,
        "both recipients of the damaged message"
    );
    assert_eq!((stats.messages, stats.recipients), (1, 1));
    assert!(spool.load(damaged).unwrap().is_none());
    let rows = spool.quarantined(100).unwrap();
    let envelope = rows.iter().find(|r| r.table == "messages").unwrap();
    assert_eq!((envelope.id, envelope.value.as_slice()), (damaged, GARBAGE));
    assert!(rows.iter().any(|r| r.table == "bodies" && r.id == damaged));

    // The damaged message's outcomes change nothing; nothing meets it again.
    spool
        .record_blocking(vec![
            Outcome::Release {
                id: damaged,
                rcpt: 0,
            },
            Outcome::Release {
                id: intact,
                rcpt: 0,
            },
        ])
        .unwrap();
    let again = spool.claim_due(now_ms() + 60_000, 100).unwrap();
    assert_eq!(
        again.iter().map(|c| (c.id, c.rcpt)).collect::<Vec<_>>(),
        vec![(intact, 0)]
    );
    assert_eq!(spool.stats().unwrap().failed_batches, 0);
}

/// The scheduler always claims through a filter, which reads each due
/// message's envelope: a damaged one must be claimed (so that the load
/// quarantines it), not fail every claim and every commit it shares.
#[test]
fn a_filtered_claim_takes_a_damaged_message_instead_of_failing() {
    let dir = tempdir().unwrap();
    let (damaged, intact) = queue_two(dir.path(), |_, _| {});
    damage_envelope_on_disk(dir.path(), damaged);

    let spool = open(dir.path());
    let claimed = spool
        .claim_due_where(now_ms() + 60_000, 100, Box::new(|_| true))
        .expect("a damaged envelope fails no claim");
    assert_eq!(claimed.len(), 3);
    assert!(matches!(spool.load(damaged), Err(SpoolError::Corrupt(_))));
    assert!(spool.load(intact).unwrap().is_some());
    spool
        .backlog_append_blocking("barrier", Vec::new(), 1)
        .unwrap();
    assert_eq!(spool.stats().unwrap().quarantined, 2);
    assert_eq!(spool.stats().unwrap().failed_batches, 0);
}

#[test]
fn a_damaged_message_no_claim_reaches_does_not_break_the_queue_listing() {
    let dir = tempdir().unwrap();
    // Suspended: the scheduler never claims it, so never loads it.
    let (damaged, intact) = queue_two(dir.path(), |spool, id| {
        let keys = vec![(id, 0), (id, 1)];
        let suspended = spool.queue_action(QueueAction::Suspend, keys).unwrap();
        assert_eq!(suspended, vec![true, true]);
    });
    damage_envelope_on_disk(dir.path(), damaged);

    let spool = open(dir.path());
    let page = spool
        .queue_page(&QueueFilter::default(), None, 100)
        .expect("one damaged message must not fail the whole listing");
    let listed: Vec<_> = page.recipients.iter().map(|r| (r.id, r.rcpt)).collect();
    assert_eq!(listed, vec![(intact, 0)]);

    spool
        .backlog_append_blocking("barrier", Vec::new(), 1)
        .unwrap();
    assert_eq!(spool.stats().unwrap().quarantined, 2);
    let counts = spool.queue_counts().unwrap();
    assert_eq!((counts.suspended, counts.queued), (0, 1));
    assert_eq!(spool.stats().unwrap().failed_batches, 0);
}
