//! The spend flush of the quota ledger (`cluster::quota`): spending is
//! recorded in PostgreSQL before the spool commit of the message that
//! spends it, so what PostgreSQL knows always covers what was acknowledged.
//!
//! A reservation taken from a local lease waits here; one task gathers the
//! spends of every admission waiting at that moment and records them in one
//! statement (`quota_sql::spend`), as the spool's group commit does with
//! fdatasync: one round trip per batch, and the next batch gathers while
//! one is in flight. Only limited quotas wait; limit-0 quotas are counted
//! in batches afterwards, as before.
//!
//! Exactness: a lease row holds only unspent quota, so when a killed
//! node's lease expires and another node gives it back, nothing it
//! acknowledged is given back. A crash between the record and the spool
//! commit counts a message that was not queued: fewer accepted, never more.
//! PostgreSQL unreachable: the spend cannot be recorded, so the message is
//! answered 451 4.3.0 (even within a lease) and its take is put back.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::{Notify, oneshot};

use super::quota_sql::Key;
use super::quota_state::{Held, Part};

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

/// One message waiting for the flush: its limited parts (key, amount,
/// epoch of the lease they were taken from).
pub struct Pending {
    parts: Vec<(Key, u64, u64)>,
    done: oneshot::Sender<Spent>,
}

impl Pending {
    /// The pending spend of `parts` (limited ones only) and its answer.
    pub fn new(parts: &[Part]) -> (Pending, oneshot::Receiver<Spent>) {
        let (done, rx) = oneshot::channel();
        let parts = parts
            .iter()
            .filter(|p| p.limited)
            .map(|p| (p.key.clone(), p.amount, p.epoch))
            .collect();
        (Pending { parts, done }, rx)
    }

    fn answer(self, spent: Spent) {
        let _ = self.done.send(spent);
    }

    fn untake(&self, state: &mut HashMap<Key, Held>) {
        for (key, amount, epoch) in &self.parts {
            if let Some(held) = state.get_mut(key) {
                held.untake(*amount, *epoch);
            }
        }
    }
}

/// The admissions waiting for the next flush. Bounded by the admissions
/// in flight (each waits for its answer).
#[derive(Default)]
pub struct SpendQueue {
    pending: Mutex<Vec<Pending>>,
    pub wake: Notify,
}

impl SpendQueue {
    pub fn push(&self, pending: Pending) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pending);
        self.wake.notify_one();
    }

    pub fn take(&self) -> Vec<Pending> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Before the statement, with the connection held (no lease or give-back
/// runs meanwhile): answers Retry to the messages whose lease changed or
/// may no longer be spent, and sums the others' spends per key.
pub fn prepare(
    state: &mut HashMap<Key, Held>,
    batch: Vec<Pending>,
    now: Instant,
) -> (Vec<Pending>, Vec<(Key, u64)>) {
    let mut kept = Vec::new();
    let mut sums: HashMap<Key, u64> = HashMap::new();
    for pending in batch {
        let current = pending.parts.iter().all(|(key, _, epoch)| {
            state.get(key).is_some_and(|h| {
                h.epoch == *epoch && h.row && h.usable_until.is_some_and(|t| t > now)
            })
        });
        if !current {
            pending.untake(state);
            pending.answer(Spent::Retry);
            continue;
        }
        for (key, amount, _) in &pending.parts {
            *sums.entry(key.clone()).or_default() += amount;
        }
        kept.push(pending);
    }
    (kept, sums.into_iter().collect())
}

/// The statement failed: every take is put back, every message Failed.
/// (Had it been applied after all, the rows hold less than the books: the
/// next give-back finds it, and fewer are accepted, never more.)
pub fn failed(state: &mut HashMap<Key, Held>, batch: Vec<Pending>) {
    for pending in batch {
        pending.untake(state);
        pending.answer(Spent::Failed);
    }
}

/// The statement ran: `found` are the keys whose lease row was spent from.
/// A missing row was reclaimed: its books are orphaned, and a message with
/// a part there is retried, its parts recorded on other keys un-spent.
pub fn applied(
    state: &mut HashMap<Key, Held>,
    batch: Vec<Pending>,
    sums: &[(Key, u64)],
    found: &[Key],
) {
    let found: HashSet<&Key> = found.iter().collect();
    for (key, sum) in sums {
        let held = state.entry(key.clone()).or_default();
        if found.contains(key) {
            held.flushed(*sum);
        } else {
            held.orphan();
        }
    }
    for pending in batch {
        if pending.parts.iter().all(|(key, _, _)| found.contains(key)) {
            pending.answer(Spent::Recorded);
            continue;
        }
        for (key, amount, _) in pending.parts.iter().filter(|p| found.contains(&p.0)) {
            state.entry(key.clone()).or_default().released += amount;
        }
        pending.answer(Spent::Retry);
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
                .granted(10, 10, now + Duration::from_secs(5));
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
        let (p1, mut r1) = Pending::new(&one);
        let (p2, mut r2) = Pending::new(&two);
        let (kept, mut sums) = prepare(&mut state, vec![p1, p2], now);
        sums.sort();
        assert_eq!(sums, vec![(key("group:g"), 2), (key("user:a"), 5)]);
        // The group's row was reclaimed meanwhile.
        applied(&mut state, kept, &sums, &[key("user:a")]);
        assert_eq!(r1.try_recv(), Ok(Spent::Retry));
        assert_eq!(r2.try_recv(), Ok(Spent::Recorded));
        let user = &state[&key("user:a")];
        assert_eq!((user.available, user.reserved, user.released), (5, 0, 2));
        assert!(!state[&key("group:g")].row, "orphaned");
    }

    #[test]
    fn a_failed_flush_puts_the_takes_back() {
        let now = Instant::now();
        let mut state: HashMap<Key, Held> = HashMap::new();
        let held = state.entry(key("user:a")).or_default();
        held.granted(10, 10, now + Duration::from_secs(5));
        let part = held.take(&key("user:a"), 4, true, now);
        let (p, mut r) = Pending::new(&[part]);
        let (kept, _) = prepare(&mut state, vec![p], now);
        failed(&mut state, kept);
        assert_eq!(r.try_recv(), Ok(Spent::Failed));
        let held = &state[&key("user:a")];
        assert_eq!((held.available, held.reserved), (10, 0));
    }
}
