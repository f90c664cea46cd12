//! The ledger's local books (`cluster::quota`): what this node holds of
//! each quota key, and the background work that brings PostgreSQL in line.
//!
//! Per key, this node's lease row in PostgreSQL amounts to `available +
//! reserved` (leased and unused, taken by messages waiting for the spend
//! flush). Local operations only move amounts between these two, so the
//! sum changes only by a lease (added), a spend flush (`quota_spend`:
//! reserved and recorded as spent, removed) or a give-back (removed), all
//! of which go through the ledger's single connection. Spent amounts are
//! in PostgreSQL before their message is committed, except up to the
//! lease's `cap` (`unrecorded`: recorded after the commit); a message the
//! spool refuses after its spend was recorded is un-spent afterwards
//! (`released`, taken off the usage). If a
//! lease row turns out to be gone (it expired and another node reclaimed
//! it), the books are "orphaned": reservations made against the old lease
//! (older `epoch`) are not flushed but retried on a new lease.

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
    /// Taken by messages whose spend is recorded after their commit, not
    /// yet recorded (any epoch); at most `cap`.
    pub unrecorded: u64,
    /// Of `unrecorded`, what the spend flush in flight is recording.
    pub recording: u64,
    /// How much of this node's lease row may be spent unrecorded.
    pub cap: u64,
    /// To add to the fleet's usage directly (unlimited quotas).
    pub counted: u64,
    /// To take off the fleet's usage: recorded spending of messages the
    /// spool refused (lost in a crash: fewer accepted, never more).
    pub released: u64,
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
    /// A lease ahead of need was asked for since the last grant.
    pub leasing_ahead: bool,
}

/// One message's share of one key; a limited one is recorded as spent in
/// PostgreSQL once its reservation is returned.
#[derive(Debug)]
pub struct Part {
    pub key: Key,
    pub amount: u64,
    pub epoch: u64,
    pub limited: bool,
}

impl Held {
    fn tracked(&self) -> u64 {
        self.available + self.reserved
    }

    /// Whether the unrecorded spending that no flush is recording yet has
    /// passed half the cap: the next flush must not linger. What is in
    /// flight does not count, or every commit made during a flush would
    /// start another one at once for a handful of messages.
    pub fn flush_due(&self) -> bool {
        (self.unrecorded - self.recording.min(self.unrecorded)) * 2 >= self.cap
    }

    /// Whether `amount` more may be spent before it is recorded.
    pub fn room_unrecorded(&self, amount: u64) -> bool {
        self.unrecorded + amount <= self.cap
    }

    /// What a message may take without asking PostgreSQL.
    pub fn usable(&self, now: Instant) -> u64 {
        if self.usable_until.is_some_and(|t| t > now) {
            self.available
        } else {
            0
        }
    }

    /// After a take: how much to lease now, ahead of need, if this lease
    /// runs low. Only far from the limit (a large lease, `cap > 0`): near
    /// it a node leases exactly what a message needs, when it needs it.
    /// Low is under the cap (a quarter of the block): at full speed that
    /// leaves the lease transaction a few milliseconds before admissions
    /// would have to wait for it.
    pub fn lease_ahead(&mut self) -> Option<u64> {
        let low = self.cap > 0 && self.available < self.cap && !self.closing;
        if !low || self.leasing_ahead {
            return None;
        }
        self.leasing_ahead = true;
        Some(self.cap)
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

    /// Puts back a part taken but not flushed (the flush failed or must be
    /// retried); nothing if the books were orphaned since.
    pub fn untake(&mut self, amount: u64, epoch: u64) {
        if epoch == self.epoch {
            self.reserved = self.reserved.saturating_sub(amount);
            self.available += amount;
        }
    }

    /// A flushed part: recorded in the lease row, out of the books.
    pub fn flushed(&mut self, amount: u64) {
        self.reserved = self.reserved.saturating_sub(amount);
    }

    /// Consumes (`stored`) or releases a part. A limited part was recorded
    /// as spent before the commit: stored, nothing is left to do; refused,
    /// it is un-spent (given back to the fleet, not to this lease).
    pub fn settle(&mut self, part: &Part, stored: bool, now: Instant) {
        self.last_used = Some(now);
        match (part.limited, stored) {
            (true, false) => self.released += part.amount,
            (false, true) => self.counted += part.amount,
            _ => {}
        }
    }

    /// A lease of `block` was committed; the row now holds `row_after`,
    /// of which `cap` may be spent unrecorded.
    pub fn granted(&mut self, block: u64, row_after: u64, cap: u64, until: Instant) {
        if row_after.saturating_sub(block) < self.tracked() {
            // The row was reclaimed and made anew: the old books are void.
            self.orphan();
        }
        self.cap = cap;
        self.leasing_ahead = false;
        self.available += block;
        self.row = true;
        self.usable_until = Some(until);
    }

    /// The lease row is gone: another node gave all of it back.
    pub fn orphan(&mut self) {
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
    /// Give back `give_back` of this node's lease and renew it.
    Settle {
        key: Key,
        epoch: u64,
        give_back: u64,
    },
    /// Add `n` to the fleet's usage.
    Count { key: Key, n: u64 },
    /// Take `n` off the fleet's usage (un-spend).
    Uncount { key: Key, n: u64 },
    /// Delete this node's empty lease row.
    Forget { key: Key },
}

/// Takes out of the books what the next round gives back, counts and
/// un-spends (so that concurrent messages cannot take it meanwhile).
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
        if held.released > 0 {
            work.push(Work::Uncount {
                key: key.clone(),
                n: std::mem::take(&mut held.released),
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
        if give_back > 0 || renew || held.tracked() == 0 {
            held.available -= give_back;
            work.push(Work::Settle {
                key: key.clone(),
                epoch: held.epoch,
                give_back,
            });
        }
    }
    state.retain(|_, h| {
        h.row
            || h.tracked() > 0
            || h.counted > 0
            || h.released > 0
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
                give_back,
            } => {
                let held = state.entry(key).or_default();
                if held.epoch == epoch {
                    held.available += give_back;
                }
            }
            Work::Count { key, n } => state.entry(key).or_default().counted += n,
            Work::Uncount { key, n } => state.entry(key).or_default().released += n,
            Work::Forget { .. } => {}
        }
    }
}

impl Work {
    /// Runs the call: for a settle, the lease row's amount after it (None:
    /// the row is gone).
    pub async fn run(&self, client: &Client, node: &str) -> Result<Option<u64>, DbError> {
        match self {
            Work::Settle { key, give_back, .. } => sql::settle(client, node, key, *give_back).await,
            Work::Count { key, n } => sql::count(client, node, key, *n).await.map(|()| None),
            Work::Uncount { key, n } => sql::uncount(client, key, *n).await.map(|()| None),
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
        let Work::Settle { key, epoch, .. } = self else {
            return None;
        };
        let held = state.entry(key.clone()).or_default();
        if held.epoch != *epoch {
            return None;
        }
        let Some(after) = after else {
            held.orphan();
            return None;
        };
        held.usable_until = Some(until);
        let tracked = held.tracked();
        if after > tracked && held.unrecorded == 0 {
            // (With spends of an older lease still to record, the row's
            // excess may be theirs: it waits.)
            return Some(Work::Settle {
                key: key.clone(),
                epoch: held.epoch,
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
        held.granted(10, 10, 0, now + Duration::from_secs(5));
        let a = held.take(&key(), 4, true, now);
        let b = held.take(&key(), 3, true, now);
        // Both flushed (the row now holds 3); b's commit then failed.
        held.flushed(7);
        held.settle(&a, true, now);
        held.settle(&b, false, now);
        assert_eq!((held.available, held.reserved, held.released), (3, 0, 3));
        // Asked by another node: the unused 3 go back, b's 3 are un-spent.
        held.asked = Some(now);
        let work = collect(&mut state, now, Duration::from_secs(1), Duration::ZERO);
        assert!(matches!(
            work.as_slice(),
            [
                Work::Uncount { n: 3, .. },
                Work::Settle { give_back: 3, .. }
            ]
        ));
        let fix = work[1].applied(&mut state, Some(0), now);
        assert!(matches!(fix, Some(Work::Forget { .. })));
        assert!(!state[&key()].row);
    }

    #[test]
    fn a_large_lease_is_renewed_ahead_once_per_grant_and_a_small_one_never() {
        let now = Instant::now();
        let until = now + Duration::from_secs(5);
        let mut held = Held::default();
        held.granted(500, 500, 125, until);
        held.take(&key(), 375, true, now);
        assert_eq!(held.lease_ahead(), None, "a quarter left is not low yet");
        held.take(&key(), 1, true, now);
        assert_eq!(
            held.lease_ahead(),
            Some(125),
            "under a quarter: lease ahead"
        );
        held.take(&key(), 1, true, now);
        assert_eq!(held.lease_ahead(), None, "asked once until the next grant");
        held.granted(500, 1000, 125, until);
        held.take(&key(), 500, true, now);
        assert_eq!(held.lease_ahead(), Some(125), "the next grant re-arms it");

        let mut near_the_limit = Held::default();
        near_the_limit.granted(5, 5, 0, until);
        near_the_limit.take(&key(), 5, true, now);
        assert_eq!(
            near_the_limit.lease_ahead(),
            None,
            "near a limit a node leases only what a message needs"
        );
    }

    #[test]
    fn a_reclaimed_lease_voids_the_books_and_unflushed_parts() {
        let now = Instant::now();
        let mut state = HashMap::new();
        let held: &mut Held = state.entry(key()).or_default();
        held.granted(10, 10, 0, now + Duration::from_secs(5));
        let in_flight = held.take(&key(), 2, true, now);
        // A renewal finds the row gone.
        let renewal = Work::Settle {
            key: key(),
            epoch: 0,
            give_back: 0,
        };
        renewal.applied(&mut state, None, now);
        let held = state.get_mut(&key()).unwrap();
        assert_eq!((held.available, held.reserved), (0, 0));
        held.untake(in_flight.amount, in_flight.epoch);
        assert_eq!(held.available, 0, "a part of the old lease is not put back");
    }

    #[test]
    fn a_row_holding_more_than_the_books_gives_the_excess_back() {
        let now = Instant::now();
        let mut state: HashMap<Key, Held> = HashMap::new();
        state
            .entry(key())
            .or_default()
            .granted(10, 10, 0, now + Duration::from_secs(5));
        state.get_mut(&key()).unwrap().available = 9;
        state.get_mut(&key()).unwrap().last_used = Some(now);
        let work = collect(&mut state, now, Duration::from_secs(60), Duration::ZERO);
        assert!(work.is_empty(), "nothing to settle while in use");
        let settle = Work::Settle {
            key: key(),
            epoch: 0,
            give_back: 0,
        };
        // The row says 12 after the renewal; the books say 9.
        let fix = settle.applied(&mut state, Some(12), now);
        assert!(matches!(fix, Some(Work::Settle { give_back: 3, .. })));
    }
}
