//! Which of a route's workers will take the queue's next jobs.
//!
//! A worker between transactions, or one that has just written a message,
//! looks at the queue anyway; with PIPELINING it sends the next job's
//! envelope behind the message it just wrote. Waking a parked worker (and
//! its connection) for every job instead spreads the load over as many
//! connections as there are jobs in a burst: each then carries one message
//! per wake-up and pipelines nothing. So a push wakes a parked worker, or
//! asks for a new one, only when the queued jobs outnumber what the active
//! workers are counted on to take (`QUEUED_PER_WORKER` each).
//!
//! A worker that waits on a slow server stops counting after a short
//! patience (`leave`, then `rejoin`), so a job never waits long behind a
//! slow transaction while the route could open another connection. Parked
//! workers are woken last parked, first woken: the surplus stays parked,
//! times out and closes its connection, and the route keeps the
//! connections its load needs.

use std::sync::Arc;

use tokio::sync::Notify;

/// Queued jobs each active worker is counted on to take, one after the
/// other, before another worker is woken for more.
pub const QUEUED_PER_WORKER: usize = 4;

#[derive(Default)]
pub struct Takers {
    /// Workers that will look at the queue soon: running, not parked, not
    /// resigned.
    active: usize,
    /// Parked workers, the last parked at the back.
    parked: Vec<Arc<Notify>>,
}

impl Takers {
    fn wanted(&self, queued: usize) -> bool {
        queued > self.active * QUEUED_PER_WORKER
    }

    /// Wakes the last parked worker if the queued jobs call for one more.
    pub fn wake_if_wanted(&mut self, queued: usize) {
        if self.wanted(queued)
            && let Some(worker) = self.parked.pop()
        {
            self.active += 1;
            worker.notify_one();
        }
    }

    /// Counts a new worker in when the queued jobs call for one more and
    /// none is parked; the caller starts it, or gives the place back with
    /// `leave` when the route has all the workers it may have.
    pub fn claim_new(&mut self, queued: usize) -> bool {
        let wanted = self.wanted(queued) && self.parked.is_empty();
        if wanted {
            self.active += 1;
        }
        wanted
    }

    pub fn park(&mut self, worker: &Arc<Notify>) {
        self.active = self.active.saturating_sub(1);
        self.parked.push(worker.clone());
    }

    /// Back from a park that timed out. A worker woken meanwhile was counted
    /// active by whoever woke it (its wake-up permit is left unused).
    pub fn unpark(&mut self, worker: &Arc<Notify>) {
        if let Some(at) = self.parked.iter().position(|w| Arc::ptr_eq(w, worker)) {
            self.parked.remove(at);
            self.active += 1;
        }
    }

    /// Wakes every parked worker (the queue closed: each says goodbye to
    /// its server instead of idling out).
    pub fn wake_all(&mut self) {
        for worker in self.parked.drain(..) {
            self.active += 1;
            worker.notify_one();
        }
    }

    /// An active worker ends, or resigns while it waits on a slow server.
    pub fn leave(&mut self) {
        self.active = self.active.saturating_sub(1);
    }

    /// A resigned worker is back.
    pub fn rejoin(&mut self) {
        self.active += 1;
    }

    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize) {
        (self.active, self.parked.len())
    }
}
