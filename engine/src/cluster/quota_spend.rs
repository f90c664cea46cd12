//! The spend flush of the quota ledger (`cluster::quota`): what messages
//! spend of the leases is recorded in PostgreSQL, so that what PostgreSQL
//! knows covers what was acknowledged.
//!
//! A spend is recorded one of two ways:
//! - **before the commit** (`Pending::waiting`): admission waits for the
//!   record, then commits; once committed, a confirmation (`Pending::confirmed`)
//!   adds it to this node's total (`quota_node_spent`);
//! - **after the commit** (`Pending::committed`), for at most the lease's
//!   cap per key (`quota_sql::unrecorded_cap`): admission does not wait for
//!   PostgreSQL, so a busy node's commits are not held up by a round trip
//!   and PostgreSQL's own fsync. A killed node's lease keeps its cap in
//!   limbo, and the node settles it from its spool's counts at start.
//!
//! One task gathers the spends waiting at each moment and records them in
//! one statement (`quota_sql::spend`), as the spool's group commit does
//! with fdatasync: one round trip per batch, and the next batch gathers
//! while one is in flight.
//!
//! PostgreSQL unreachable: a spend recorded before its commit cannot be, so
//! the message is answered 451 4.3.0 and its take is put back; a committed
//! spend stays queued and is recorded when the database answers.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::{Notify, oneshot};

use super::quota_sql::{Key, SpendSum};
use super::quota_state::{Held, Part};

/// Messages' spends of limited quotas sent to PostgreSQL, by when:
/// `before_commit` (admission waited for the record) or `after_commit` (it
/// did not).
pub const METRIC_SPENDS: &str = "sendengine_cluster_quota_spends_total";
/// Statements that recorded a batch of spends.
pub const METRIC_SPEND_FLUSHES: &str = "sendengine_cluster_quota_spend_flushes_total";

/// What became of one message's spends.
#[derive(Debug, PartialEq, Eq)]
pub enum Spent {
    /// Recorded in PostgreSQL: the message may be committed.
    Recorded,
    /// The lease changed meanwhile (reclaimed, or no longer usable): the
    /// take was undone; reserve again.
    Retry,
    /// The database did not answer: the take was undone.
    Failed,
}

/// How a pending spend is recorded.
enum Kind {
    /// Before its commit; admission waits for the answer.
    Waiting(oneshot::Sender<Spent>),
    /// After its commit: must be recorded, whatever the lease's state.
    Committed,
    /// Recorded before its commit, which succeeded: this node's total only.
    Confirmed,
}

/// One message's limited parts (key, amount, epoch of the lease they were
/// taken from), waiting for the flush.
pub struct Pending {
    parts: Vec<(Key, u64, u64)>,
    kind: Kind,
}

impl Pending {
    /// The spend of `parts` to record before the commit, and its answer.
    pub fn waiting(parts: &[Part]) -> (Pending, oneshot::Receiver<Spent>) {
        let (done, rx) = oneshot::channel();
        (Pending::of(parts, Kind::Waiting(done)), rx)
    }

    /// The spend of a committed message, taken unrecorded.
    pub fn committed(parts: &[Part]) -> Pending {
        Pending::of(parts, Kind::Committed)
    }

    /// A committed message whose spend was recorded before its commit.
    pub fn confirmed(parts: &[Part]) -> Pending {
        Pending::of(parts, Kind::Confirmed)
    }

    fn of(parts: &[Part], kind: Kind) -> Pending {
        let parts = parts
            .iter()
            .filter(|p| p.limited)
            .map(|p| (p.key.clone(), p.amount, p.epoch))
            .collect();
        Pending { parts, kind }
    }

    fn answer(self, spent: Spent) {
        if let Kind::Waiting(done) = self.kind {
            let _ = done.send(spent);
        }
    }

    /// The flush that was recording this committed spend ended.
    fn not_recording(&self, state: &mut HashMap<Key, Held>) {
        for (key, amount, _) in &self.parts {
            if let Some(held) = state.get_mut(key) {
                held.recording = held.recording.saturating_sub(*amount);
            }
        }
    }

    fn untake(&self, state: &mut HashMap<Key, Held>) {
        for (key, amount, epoch) in &self.parts {
            if let Some(held) = state.get_mut(key) {
                held.untake(*amount, *epoch);
            }
        }
    }
}

/// The spends waiting for the next flush. Bounded: a waiting spend by the
/// admissions in flight, a committed one by the leases' caps, a
/// confirmation by the messages committed since the last flush.
///
/// The flush task is woken only when it has something new to do: the
/// first spend of a batch (which starts the linger), and the first spend
/// that must not linger (an admission waits, or a key passed half its
/// cap). At full speed a spend arrives with every message; waking the
/// task for each would cost a thread wake-up per message.
#[derive(Default)]
pub struct SpendQueue {
    pending: Mutex<Vec<Pending>>,
    /// The batch must go now: an admission waits for it, or a key's
    /// unrecorded spending passed half its cap.
    now: AtomicBool,
    pub wake: Notify,
}

impl SpendQueue {
    /// A spend that may linger for company (recorded after its commit, or
    /// a confirmation).
    pub fn push(&self, pending: Pending) {
        let first = {
            let mut queue = self.lock();
            queue.push(pending);
            queue.len() == 1
        };
        if first {
            self.wake.notify_one();
        }
    }

    /// A spend an admission waits for, or a committed one past half its
    /// key's cap: the flush ends its linger.
    pub fn push_now(&self, pending: Pending) {
        self.lock().push(pending);
        if !self.now.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Puts back spends that must still be recorded (the flush failed).
    pub fn requeue(&self, batch: Vec<Pending>) {
        if !batch.is_empty() {
            self.lock().extend(batch);
        }
    }

    /// Whether the batch must go without lingering.
    pub fn is_due(&self) -> bool {
        self.now.load(Ordering::Acquire)
    }

    pub fn take(&self) -> Vec<Pending> {
        self.now.store(false, Ordering::Release);
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counts a batch about to be sent (`METRIC_SPENDS`, `METRIC_SPEND_FLUSHES`):
/// once per statement, not per message.
pub fn count(batch: &[Pending]) {
    let before = batch
        .iter()
        .filter(|p| matches!(p.kind, Kind::Waiting(_)))
        .count();
    let after = batch
        .iter()
        .filter(|p| matches!(p.kind, Kind::Committed))
        .count();
    metrics::counter!(METRIC_SPEND_FLUSHES).increment(1);
    metrics::counter!(METRIC_SPENDS, "when" => "before_commit").increment(before as u64);
    metrics::counter!(METRIC_SPENDS, "when" => "after_commit").increment(after as u64);
}

/// Before the statement, with the connection held (no lease or give-back
/// runs meanwhile): answers Retry to the waiting spends whose lease changed
/// or may no longer be spent, and sums the others per key.
pub fn prepare(
    state: &mut HashMap<Key, Held>,
    batch: Vec<Pending>,
    now: Instant,
) -> (Vec<Pending>, Vec<(Key, SpendSum)>) {
    let mut kept = Vec::new();
    let mut sums: HashMap<Key, SpendSum> = HashMap::new();
    for pending in batch {
        let current = pending.parts.iter().all(|(key, _, epoch)| {
            state.get(key).is_some_and(|h| {
                h.epoch == *epoch && h.row && h.usable_until.is_some_and(|t| t > now)
            })
        });
        if matches!(pending.kind, Kind::Waiting(_)) && !current {
            pending.untake(state);
            pending.answer(Spent::Retry);
            continue;
        }
        for (key, amount, _) in &pending.parts {
            let sum = sums.entry(key.clone()).or_default();
            match pending.kind {
                Kind::Waiting(_) => sum.lease += amount,
                Kind::Committed => {
                    sum.lease += amount;
                    sum.committed += amount;
                    if let Some(held) = state.get_mut(key) {
                        held.recording += amount;
                    }
                }
                Kind::Confirmed => sum.confirmed += amount,
            }
        }
        kept.push(pending);
    }
    (kept, sums.into_iter().collect())
}

/// The statement failed: every waiting take is put back and answered
/// Failed; the spends that must still be recorded are returned.
pub fn failed(state: &mut HashMap<Key, Held>, batch: Vec<Pending>) -> Vec<Pending> {
    let mut again = Vec::new();
    for pending in batch {
        if matches!(pending.kind, Kind::Waiting(_)) {
            pending.untake(state);
            pending.answer(Spent::Failed);
        } else {
            pending.not_recording(state);
            again.push(pending);
        }
    }
    again
}

/// The statement ran: `found` are the keys whose lease row was spent from.
/// A missing row was reclaimed: its books are orphaned, and a waiting
/// message with a part there is retried, its parts recorded on other keys
/// un-spent. Committed spends are recorded either way (on the row, or
/// straight into the usage).
pub fn applied(
    state: &mut HashMap<Key, Held>,
    batch: Vec<Pending>,
    sums: &[(Key, SpendSum)],
    found: &[Key],
) {
    let found: HashSet<&Key> = found.iter().collect();
    for (key, _) in sums.iter().filter(|(_, s)| s.lease > 0) {
        if !found.contains(key) {
            state.entry(key.clone()).or_default().orphan();
        }
    }
    for pending in batch {
        match pending.kind {
            Kind::Confirmed => {}
            Kind::Committed => {
                pending.not_recording(state);
                for (key, amount, epoch) in &pending.parts {
                    let held = state.entry(key.clone()).or_default();
                    held.unrecorded = held.unrecorded.saturating_sub(*amount);
                    if held.epoch == *epoch {
                        held.flushed(*amount);
                    }
                }
            }
            Kind::Waiting(_) => {
                let all_found = pending.parts.iter().all(|(key, _, _)| found.contains(key));
                for (key, amount, _) in pending.parts.iter().filter(|p| found.contains(&p.0)) {
                    let held = state.entry(key.clone()).or_default();
                    held.flushed(*amount);
                    if !all_found {
                        held.released += amount;
                    }
                }
                pending.answer(if all_found {
                    Spent::Recorded
                } else {
                    Spent::Retry
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(name: &str) -> Key {
        Key {
            name: name.into(),
            window: 0,
            period: 1,
        }
    }

    #[test]
    fn a_batch_is_summed_per_key_and_a_missing_row_retries_its_messages() {
        let now = Instant::now();
        let mut state: HashMap<Key, Held> = HashMap::new();
        for name in ["user:a", "group:g"] {
            state
                .entry(key(name))
                .or_default()
                .granted(10, 10, 0, now + Duration::from_secs(5));
        }
        let take = |state: &mut HashMap<Key, Held>, name: &str, n| {
            state
                .get_mut(&key(name))
                .unwrap()
                .take(&key(name), n, true, now)
        };
        let one = vec![
            take(&mut state, "user:a", 2),
            take(&mut state, "group:g", 2),
        ];
        let two = vec![take(&mut state, "user:a", 3)];
        let (p1, mut r1) = Pending::waiting(&one);
        let (p2, mut r2) = Pending::waiting(&two);
        let (kept, mut sums) = prepare(&mut state, vec![p1, p2], now);
        sums.sort_by(|a, b| a.0.cmp(&b.0));
        let lease = |n| SpendSum {
            lease: n,
            ..SpendSum::default()
        };
        assert_eq!(
            sums,
            vec![(key("group:g"), lease(2)), (key("user:a"), lease(5))]
        );
        // The group's row was reclaimed meanwhile.
        applied(&mut state, kept, &sums, &[key("user:a")]);
        assert_eq!(r1.try_recv(), Ok(Spent::Retry));
        assert_eq!(r2.try_recv(), Ok(Spent::Recorded));
        let user = &state[&key("user:a")];
        assert_eq!((user.available, user.reserved, user.released), (5, 0, 2));
        assert!(!state[&key("group:g")].row, "orphaned");
    }

    /// What a flush in flight records no longer makes the next flush due:
    /// otherwise every commit during a flush starts another one at once.
    #[test]
    fn spends_in_flight_do_not_make_the_next_flush_due() {
        let now = Instant::now();
        let mut state: HashMap<Key, Held> = HashMap::new();
        let held = state.entry(key("user:a")).or_default();
        held.granted(100, 100, 20, now + Duration::from_secs(5));
        let committed = |state: &mut HashMap<Key, Held>, n| {
            let held = state.get_mut(&key("user:a")).unwrap();
            let part = held.take(&key("user:a"), n, true, now);
            held.unrecorded += n;
            Pending::committed(&[part])
        };
        let first = committed(&mut state, 10);
        assert!(
            state[&key("user:a")].flush_due(),
            "half the cap, unrecorded"
        );
        let (in_flight, sums) = prepare(&mut state, vec![first], now);
        assert!(!state[&key("user:a")].flush_due(), "all of it in flight");
        let _second = committed(&mut state, 9);
        assert!(!state[&key("user:a")].flush_due(), "9 of 20 not yet sent");
        let failed_again = failed(&mut state, in_flight);
        assert!(
            state[&key("user:a")].flush_due(),
            "the failed flush's spends are unrecorded and not in flight again"
        );
        let (in_flight, sums_again) = prepare(&mut state, failed_again, now);
        assert_eq!(sums, sums_again);
        applied(&mut state, in_flight, &sums, &[key("user:a")]);
        let held = &state[&key("user:a")];
        assert_eq!((held.unrecorded, held.recording), (9, 0));
    }

    #[test]
    fn a_failed_flush_puts_the_takes_back() {
        let now = Instant::now();
        let mut state: HashMap<Key, Held> = HashMap::new();
        let held = state.entry(key("user:a")).or_default();
        held.granted(10, 10, 0, now + Duration::from_secs(5));
        let part = held.take(&key("user:a"), 4, true, now);
        let (p, mut r) = Pending::waiting(&[part]);
        let (kept, _) = prepare(&mut state, vec![p], now);
        assert!(failed(&mut state, kept).is_empty());
        assert_eq!(r.try_recv(), Ok(Spent::Failed));
        let held = &state[&key("user:a")];
        assert_eq!((held.available, held.reserved), (10, 0));
    }

    #[test]
    fn a_committed_spend_is_recorded_even_after_its_lease_is_gone() {
        let now = Instant::now();
        let mut state: HashMap<Key, Held> = HashMap::new();
        let held = state.entry(key("user:a")).or_default();
        held.granted(100, 100, 25, now + Duration::from_secs(5));
        assert!(held.room_unrecorded(25) && !held.room_unrecorded(26));
        let part = held.take(&key("user:a"), 4, true, now);
        held.unrecorded += 4;
        let confirmed = held.take(&key("user:a"), 1, true, now);
        // The database is down: the committed spend waits for the next flush.
        let batch = vec![
            Pending::committed(std::slice::from_ref(&part)),
            Pending::confirmed(&[confirmed]),
        ];
        let (kept, _) = prepare(&mut state, batch, now + Duration::from_secs(60));
        let again = failed(&mut state, kept);
        assert_eq!(again.len(), 2, "both still to record");
        // Later, with the lease expired: still summed, still recorded.
        let (kept, sums) = prepare(&mut state, again, now + Duration::from_secs(60));
        let expected = SpendSum {
            lease: 4,
            committed: 4,
            confirmed: 1,
        };
        assert_eq!(sums, vec![(key("user:a"), expected)]);
        applied(&mut state, kept, &sums, &[]);
        let held = &state[&key("user:a")];
        assert_eq!(held.unrecorded, 0);
        assert!(!held.row, "the missing row orphans the books");
    }
}
