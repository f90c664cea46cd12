//! Leases on claimed recipients: which claims a live job holds, and which
//! nobody holds any more and must go back to the schedule.
//!
//! A recipient the spool marked claimed is the delivery side's to finish;
//! if the job holding it is lost (a bug, a route retired at the wrong
//! moment, a message that could not be loaded) nothing else would try it
//! again before a restart. So every claim is registered here with a lease
//! and the job's `Hold`: while any copy of the job lives (in a ready queue,
//! in a worker, in the failover channel, in the recorder waiting for its
//! outcome to be written) the lease is renewed; once none does and the
//! lease has run out, the scheduler gives the recipient back to the spool
//! (`Outcome::Release`: due now, no attempt counted). Delivery stays
//! at-least-once, and a recipient a worker still holds is never given out
//! twice.
//!
//! The registry also catches a claim the spool hands out a second time
//! while the first holder lives: claims are committed without fdatasync,
//! so the reopen after a storage error may roll them back (issue 15.1).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sendengine_queue::MessageId;

use super::ready::Job;

/// How long a claim nobody holds stays claimed before it is due again.
/// Long enough for an outcome written just as its job was dropped to land
/// first; short enough that a lost job costs a minute, not a restart.
pub const CLAIM_LEASE: Duration = Duration::from_secs(60);

/// Proof of holding a job's claims: every clone of a job shares one.
#[derive(Debug, Default)]
pub struct Hold;

type Key = (MessageId, u32);

struct Lease {
    holder: Weak<Hold>,
    /// Wall-clock ms until which the claim stays with its holder.
    until_ms: u64,
}

/// The claims the delivery side holds, with their leases.
pub struct Leases {
    held: Mutex<HashMap<Key, Lease>>,
    ttl: Duration,
}

impl Leases {
    pub fn new(ttl: Duration) -> Arc<Leases> {
        Arc::new(Leases {
            held: Mutex::new(HashMap::new()),
            ttl,
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Lease>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn until(&self, now_ms: u64) -> u64 {
        now_ms + self.ttl.as_millis() as u64
    }

    /// Registers the claims of a job the scheduler just made. Recipients a
    /// live job already holds are left out (a second claim of the same
    /// recipient); `None` when none is left.
    pub fn take(&self, mut job: Job, now_ms: u64) -> Option<Job> {
        let until_ms = self.until(now_ms);
        let id = job.message.id;
        let mut held = self.held();
        job.rcpts.retain(|&(rcpt, _)| match held.entry((id, rcpt)) {
            Entry::Occupied(e) if e.get().holder.strong_count() > 0 => false,
            entry => {
                let lease = Lease {
                    holder: Arc::downgrade(&job.hold),
                    until_ms,
                };
                entry.insert_entry(lease);
                true
            }
        });
        drop(held);
        (!job.rcpts.is_empty()).then_some(job)
    }

    /// Registers claims made outside the scheduler (admission).
    pub fn track(&self, job: &Job, now_ms: u64) {
        let until_ms = self.until(now_ms);
        let mut held = self.held();
        for &(rcpt, _) in &job.rcpts {
            let lease = Lease {
                holder: Arc::downgrade(&job.hold),
                until_ms,
            };
            held.insert((job.message.id, rcpt), lease);
        }
    }

    /// Registers claims no job holds (their message could not be loaded):
    /// they are due again once the lease runs out.
    pub fn orphan(&self, keys: &[Key], now_ms: u64) {
        let until_ms = self.until(now_ms);
        let mut held = self.held();
        for &key in keys {
            let holder = Weak::new();
            held.insert(key, Lease { holder, until_ms });
        }
    }

    /// Forgets claims whose outcome is written, unless another job holds
    /// them by now.
    pub fn finish(&self, hold: &Arc<Hold>, keys: impl IntoIterator<Item = Key>) {
        let mine = Arc::downgrade(hold);
        let mut held = self.held();
        for key in keys {
            if let Entry::Occupied(e) = held.entry(key) {
                let lease = e.get();
                if lease.holder.ptr_eq(&mine) || lease.holder.strong_count() == 0 {
                    e.remove();
                }
            }
        }
    }

    /// Forgets given-back claims, unless a live job holds them by now.
    pub fn forget_unheld(&self, keys: &[Key]) {
        let mut held = self.held();
        for key in keys {
            if held.get(key).is_some_and(|l| l.holder.strong_count() == 0) {
                held.remove(key);
            }
        }
    }

    /// Renews the leases of held claims and returns those nobody holds
    /// whose lease ran out; they get a fresh lease, so that they are
    /// returned once while their release is being written.
    pub fn expired(&self, now_ms: u64) -> Vec<Key> {
        let until_ms = self.until(now_ms);
        let mut expired = Vec::new();
        for (key, lease) in self.held().iter_mut() {
            if lease.holder.strong_count() > 0 {
                lease.until_ms = until_ms;
            } else if lease.until_ms <= now_ms {
                lease.until_ms = until_ms;
                expired.push(*key);
            }
        }
        expired
    }

    /// Claims registered (held, or waiting for their lease to run out).
    pub fn len(&self) -> usize {
        self.held().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::job_for;
    use sendengine_queue::{MessageMeta, StoredMessage};

    fn job(id: u64, rcpts: &[u32]) -> Job {
        let message = Arc::new(StoredMessage {
            id,
            mail_from: String::new(),
            recipients: vec!["r@example.net".into(); 4],
            meta: MessageMeta::default(),
            body: Default::default(),
        });
        job_for(message, rcpts.iter().map(|&r| (r, 0)).collect())
    }

    #[test]
    fn a_recipient_a_live_job_holds_is_not_taken_twice() {
        let leases = Leases::new(Duration::ZERO);
        let first = leases.take(job(1, &[0, 1]), 0).unwrap();
        let second = leases.take(job(1, &[1, 2]), 0).unwrap();
        assert_eq!(second.rcpts, vec![(2, 0)], "rcpt 1 is held by the first");
        assert!(leases.take(job(1, &[0]), 0).is_none());
        drop(first);
        let third = leases.take(job(1, &[0, 1]), 0).unwrap();
        assert_eq!(third.rcpts.len(), 2, "a dropped job holds nothing");
    }

    #[test]
    fn only_claims_nobody_holds_expire_and_each_once() {
        let leases = Leases::new(Duration::from_secs(60));
        let held = leases.take(job(1, &[0]), 0).unwrap();
        let lost = leases.take(job(2, &[0]), 0).unwrap();
        leases.orphan(&[(3, 0)], 0);
        drop(lost);
        assert!(leases.expired(59_999).is_empty(), "the lease still runs");
        let mut expired = leases.expired(60_000);
        expired.sort();
        assert_eq!(expired, vec![(2, 0), (3, 0)]);
        assert!(leases.expired(60_001).is_empty(), "returned once");
        leases.forget_unheld(&expired);
        assert_eq!(leases.len(), 1);
        // Hours later the held one is still renewed, never returned.
        assert!(leases.expired(10_000_000).is_empty());
        leases.finish(&held.hold, [(1, 0)]);
        assert!(leases.is_empty());
    }

    #[test]
    fn finishing_leaves_a_newer_holder_alone() {
        let leases = Leases::new(Duration::ZERO);
        let old = job(1, &[0]);
        leases.track(&old, 0);
        let newer = job(1, &[0]);
        leases.track(&newer, 0);
        leases.finish(&old.hold, [(1, 0)]);
        assert_eq!(leases.len(), 1);
        leases.finish(&newer.hold, [(1, 0)]);
        assert!(leases.is_empty());
    }
}
