//! The ledger's local books (`cluster::quota`): what this node holds of
//! each quota key, and the background work that brings PostgreSQL in line.
//!
//! Per key, this node's lease row in PostgreSQL amounts to `available +
//! reserved + spent` (leased and unused, taken by messages being stored,
//! stored but not yet settled). Local operations only move amounts between
//! these three, so the sum changes only by a lease (added) or a settle
//! (spent and given back, removed), both of which go through the ledger's
//! single connection. If a lease row turns out to be gone (it expired and
//! another node reclaimed it), the books are "orphaned": what was spent is
//! counted directly, reservations made against the old lease (older
//! `epoch`) are counted when consumed and dropped when released.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::postgres::DbError;
use super::quota_sql::{self as sql, Key};

/// A key's books are dropped after this long without use.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// A give-back request is honoured for this long.
const ASKED_FOR: Duration = Duration::from_secs(2);

/// What this node holds of one key.
#[derive(Debug, Default)]
pub struct Held {
    pub available: u64,
    pub reserved: u64,
    pub spent: u64,
    /// To add to the fleet's usage directly (unlimited quotas; spending
    /// from a reclaimed lease).
    pub counted: u64,
    pub epoch: u64,
    /// The lease may be spent until then (None: no usable lease).
    pub usable_until: Option<Instant>,
    pub last_used: Option<Instant>,
    /// This node has a lease row for the key in PostgreSQL.
    pub row: bool,
    /// Another node asked for unused leases back.
    pub asked: Option<Instant>,
    /// When this node last asked the others.
    pub notified: Option<Instant>,
    /// Shutting down: give everything back.
    pub closing: bool,
}

/// One message's share of one key.
#[derive(Debug)]
pub struct Part {
    pub key: Key,
    pub amount: u64,
    pub epoch: u64,
    pub limited: bool,
}

impl Held {
    fn tracked(&self) -> u64 {
        self.available + self.reserved + self.spent
    }

    /// What a message may take without asking PostgreSQL.
    pub fn usable(&self, now: Instant) -> u64 {
        if self.usable_until.is_some_and(|t| t > now) {
            self.available
        } else {
            0
        }
    }

    /// Takes `amount` (checked `usable` by the caller when `limited`).
    pub fn take(&mut self, key: &Key, amount: u64, limited: bool, now: Instant) -> Part {
        self.last_used = Some(now);
        if limited {
            self.available -= amount;
            self.reserved += amount;
        }
        Part {
            key: key.clone(),
            amount,
            epoch: self.epoch,
            limited,
        }
    }

    /// Consumes (`stored`) or releases a part.
    pub fn settle(&mut self, part: &Part, stored: bool, now: Instant) {
        self.last_used = Some(now);
        if part.limited && part.epoch == self.epoch {
            self.reserved = self.reserved.saturating_sub(part.amount);
            if stored {
                self.spent += part.amount;
            } else {
                self.available += part.amount;
            }
        } else if stored {
            self.counted += part.amount;
        }
    }

    /// A lease of `block` was committed; the row now holds `row_after`.
    pub fn granted(&mut self, block: u64, row_after: u64, until: Instant) {
        if row_after.saturating_sub(block) < self.tracked() {
            // The row was reclaimed and made anew: the old books are void.
            self.orphan();
        }
        self.available += block;
        self.row = true;
        self.usable_until = Some(until);
    }

    /// The lease row is gone: another node gave all of it back.
    fn orphan(&mut self) {
        self.counted += self.spent;
        self.spent = 0;
        self.available = 0;
        self.reserved = 0;
        self.epoch += 1;
        self.row = false;
        self.usable_until = None;
    }
}

/// A call the background task makes.
#[derive(Debug)]
pub enum Work {
    /// Settle `spent` and give back `give_back` of this node's lease.
    Settle {
        key: Key,
        epoch: u64,
        spent: u64,
        give_back: u64,
    },
    /// Add `n` to the fleet's usage.
    Count { key: Key, n: u64 },
    /// Delete this node's empty lease row.
    Forget { key: Key },
}

/// Takes out of the books what the next round settles, gives back and
/// counts (so that concurrent messages cannot take it meanwhile).
pub fn collect(
    state: &mut HashMap<Key, Held>,
    now: Instant,
    idle_return: Duration,
    renew_before: Duration,
) -> Vec<Work> {
    let mut work = Vec::new();
    for (key, held) in state.iter_mut() {
        if held.counted > 0 {
            work.push(Work::Count {
                key: key.clone(),
                n: std::mem::take(&mut held.counted),
            });
        }
        if !held.row {
            continue;
        }
        let since = |t: Option<Instant>| t.map_or(Duration::MAX, |t| now.duration_since(t));
        let unusable = held.usable_until.is_none_or(|t| t <= now);
        let give_back = since(held.last_used) >= idle_return
            || since(held.asked) < ASKED_FOR
            || unusable
            || held.closing;
        let give_back = if give_back { held.available } else { 0 };
        let renew = held
            .usable_until
            .is_some_and(|t| t.saturating_duration_since(now) < renew_before);
        if held.spent > 0 || give_back > 0 || renew || held.tracked() == 0 {
            held.available -= give_back;
            work.push(Work::Settle {
                key: key.clone(),
                epoch: held.epoch,
                spent: std::mem::take(&mut held.spent),
                give_back,
            });
        }
    }
    state.retain(|_, h| {
        h.row
            || h.tracked() > 0
            || h.counted > 0
            || h.last_used
                .is_some_and(|t| now.duration_since(t) < FORGET_AFTER)
    });
    work
}

/// Puts back what `collect` took out, for work that did not happen.
pub fn undo(state: &mut HashMap<Key, Held>, work: Vec<Work>) {
    for item in work {
        match item {
            Work::Settle {
                key,
                epoch,
                spent,
                give_back,
            } => {
                let held = state.entry(key).or_default();
                if held.epoch == epoch {
                    held.available += give_back;
                    held.spent += spent;
                } else {
                    held.counted += spent;
                }
            }
            Work::Count { key, n } => state.entry(key).or_default().counted += n,
            Work::Forget { .. } => {}
        }
    }
}

impl Work {
    /// Runs the call: for a settle, the lease row's amount after it (None:
    /// the row is gone).
    pub async fn run(&self, client: &Client, node: &str) -> Result<Option<u64>, DbError> {
        match self {
            Work::Settle {
                key,
                spent,
                give_back,
                ..
            } => sql::settle(client, node, key, *spent, *give_back).await,
            Work::Count { key, n } => sql::count(client, key, *n).await.map(|()| None),
            Work::Forget { key } => sql::forget(client, node, key).await.map(|()| None),
        }
    }

    /// Brings the books in line with a call that succeeded; returns a
    /// follow-up call when the row holds more than the books (a lease
    /// whose commit was not confirmed): that much goes back.
    pub fn applied(
        &self,
        state: &mut HashMap<Key, Held>,
        after: Option<u64>,
        until: Instant,
    ) -> Option<Work> {
        let Work::Settle {
            key, epoch, spent, ..
        } = self
        else {
            return None;
        };
        let held = state.entry(key.clone()).or_default();
        if held.epoch != *epoch {
            return None;
        }
        let Some(after) = after else {
            held.counted += spent;
            held.orphan();
            return None;
        };
        held.usable_until = Some(until);
        let tracked = held.tracked();
        if after > tracked {
            return Some(Work::Settle {
                key: key.clone(),
                epoch: held.epoch,
                spent: 0,
                give_back: after - tracked,
            });
        }
        if after < tracked {
            // Cannot happen while this node is the only writer of its row;
            // if it does, spend less rather than more.
            log::warn!(
                "cluster quota: lease of {} holds less than the books",
                key.name
            );
            held.available = held.available.saturating_sub(tracked - after);
        }
        if after == 0 && held.tracked() == 0 {
            held.row = false;
            held.usable_until = None;
            return Some(Work::Forget { key: key.clone() });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key {
            name: "user:a".into(),
            window: 0,
            period: 1,
        }
    }

    #[test]
    fn spending_and_giving_back_keep_the_books() {
        let now = Instant::now();
        let mut state = HashMap::new();
        let held: &mut Held = state.entry(key()).or_default();
        held.granted(10, 10, now + Duration::from_secs(5));
        let a = held.take(&key(), 4, true, now);
        let b = held.take(&key(), 3, true, now);
        held.settle(&a, true, now);
        held.settle(&b, false, now);
        assert_eq!((held.available, held.reserved, held.spent), (6, 0, 4));
        // Asked by another node: the unused 6 go back, the 4 are settled.
        held.asked = Some(now);
        let work = collect(&mut state, now, Duration::from_secs(1), Duration::ZERO);
        assert!(matches!(
            work.as_slice(),
            [Work::Settle {
                spent: 4,
                give_back: 6,
                ..
            }]
        ));
        let fix = work[0].applied(&mut state, Some(0), now);
        assert!(matches!(fix, Some(Work::Forget { .. })));
        assert!(!state[&key()].row);
    }

    #[test]
    fn a_reclaimed_lease_counts_what_was_spent_and_voids_the_rest() {
        let now = Instant::now();
        let mut state = HashMap::new();
        let held: &mut Held = state.entry(key()).or_default();
        held.granted(10, 10, now + Duration::from_secs(5));
        let in_flight = held.take(&key(), 2, true, now);
        let stored = held.take(&key(), 3, true, now);
        held.settle(&stored, true, now);
        let work = collect(&mut state, now, Duration::from_secs(1), Duration::ZERO);
        work[0].applied(&mut state, None, now);
        let held = state.get_mut(&key()).unwrap();
        assert_eq!(held.counted, 3, "what was stored is counted directly");
        assert_eq!((held.available, held.reserved, held.spent), (0, 0, 0));
        held.settle(&in_flight, true, now);
        assert_eq!(held.counted, 5, "an old reservation stored: counted too");
    }

    #[test]
    fn a_row_holding_more_than_the_books_gives_the_excess_back() {
        let now = Instant::now();
        let mut state: HashMap<Key, Held> = HashMap::new();
        state
            .entry(key())
            .or_default()
            .granted(10, 10, now + Duration::from_secs(5));
        state.get_mut(&key()).unwrap().spent = 1;
        state.get_mut(&key()).unwrap().available = 9;
        state.get_mut(&key()).unwrap().last_used = Some(now);
        let work = collect(&mut state, now, Duration::from_secs(60), Duration::ZERO);
        // The row says 12 after the settle; the books say 9.
        let fix = work[0].applied(&mut state, Some(12), now);
        assert!(matches!(fix, Some(Work::Settle { give_back: 3, .. })));
    }
}
