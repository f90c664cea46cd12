//! Outcomes the spool could not write (disk full, I/O error), and the
//! pause of delivery while any wait.
//!
//! A delivered recipient whose outcome is not on disk is still claimed
//! there; the claim itself may even be rolled back when the spool reopens
//! after the error (claims are committed without fdatasync). Sending more
//! mail then only multiplies what may be sent again, so, as Postfix's
//! queue manager stops taking work when it cannot update the queue:
//! - the refused outcomes are held here in memory, in order, and written
//!   again every `RETRY` as one request until the spool takes them;
//! - meanwhile no worker starts a transaction (`wait_until_recording`) and
//!   the scheduler claims nothing, and every later outcome joins the wait;
//! - the log says so when delivery pauses, then at most once per
//!   `LOG_INTERVAL`, and once when it resumes; the gauges
//!   `sendengine_delivery_paused` and `sendengine_outcomes_unrecorded`
//!   show it.
//!
//! Once written, each outcome has its events, suppressions and end of
//! lease as if it had been written at once.
//!
//! A slow spool is the same problem in small. Outcomes go to the spool
//! without waiting for their commit, and a delivered message whose outcome
//! is not committed yet goes out again after a crash. Left alone, that
//! number is the delivery rate times the writer's lag: hundreds of messages
//! when the writer falls behind (a busy disk, a starved CPU). So at most
//! `MAX_COMMITTING` transactions' outcomes may wait for their commit; at
//! the bound no worker starts a transaction until one is written. A crash
//! then sends again at most that many, plus one message per connection
//! whose final reply was not read yet. Unlike the pause this is no error:
//! nothing is logged, and the gauge `sendengine_outcomes_committing` shows
//! the count (read with the other gauges every few seconds).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sendengine_queue::{Delivered, SpoolError};
use tokio::sync::Notify;

use super::record::{Recorder, Written};

/// Wait before writing held-back outcomes again.
const RETRY: Duration = Duration::from_secs(1);
/// At most one log line per this interval while paused.
const LOG_INTERVAL: Duration = Duration::from_secs(30);

/// Transactions whose outcomes may wait for their commit at once: about
/// 60 ms of deliveries at 17,000 a second, a backlog's drain on a 2-core
/// machine. The bound is a net for a writer that falls behind, not a
/// throttle: 256 slowed that drain by a sixth and 512 by a twentieth
/// (BENCHMARKS, "Bounding what a crash sends again"), 1024 not measurably.
pub const MAX_COMMITTING: usize = 1024;

pub const PAUSED_GAUGE: &str = "sendengine_delivery_paused";
pub const UNRECORDED_GAUGE: &str = "sendengine_outcomes_unrecorded";
pub const COMMITTING_GAUGE: &str = "sendengine_outcomes_committing";

#[derive(Default)]
pub struct Unrecorded {
    state: Mutex<State>,
    paused: AtomicBool,
    /// Transactions' outcomes handed to the spool, not committed yet.
    committing: AtomicUsize,
    /// Wakes the workers waiting in `wait_until_recording`.
    resumed: Notify,
}

#[derive(Default)]
struct State {
    waiting: Vec<Written>,
    /// A task is writing them again.
    retrying: bool,
    paused_at: Option<Instant>,
    logged_at: Option<Instant>,
    /// Refused writes since the last log line.
    refusals: u64,
}

impl State {
    fn outcomes(&self) -> usize {
        self.waiting.iter().map(|w| w.outcomes.len()).sum()
    }

    /// Whether a log line is due now (the first, then one per interval).
    fn log_due(&mut self) -> bool {
        let due = self.logged_at.is_none_or(|t| t.elapsed() >= LOG_INTERVAL);
        if due {
            self.logged_at = Some(Instant::now());
        }
        due
    }
}

impl Unrecorded {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether delivery is paused: some outcome waits to be written.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Outcomes waiting to be written.
    pub fn len(&self) -> usize {
        self.state().outcomes()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a transaction may start now: delivery is not paused, and
    /// fewer than `MAX_COMMITTING` outcomes wait for their commit.
    pub fn may_start(&self) -> bool {
        !self.is_paused() && self.committing.load(Ordering::Acquire) < MAX_COMMITTING
    }

    /// Returns once a transaction may start (at once when one may).
    pub async fn wait_until_recording(&self) {
        loop {
            let resumed = self.resumed.notified();
            tokio::pin!(resumed);
            resumed.as_mut().enable();
            if self.may_start() {
                return;
            }
            resumed.await;
        }
    }

    /// A transaction's outcomes go to the spool: they count until the
    /// guard is dropped (committed, refused and held back, where the pause
    /// takes over, or dropped by a closed spool).
    pub(super) fn committing(self: &Arc<Self>) -> Committing {
        self.committing.fetch_add(1, Ordering::AcqRel);
        Committing(self.clone())
    }

    /// Transactions whose outcomes wait for their commit now; read into
    /// `COMMITTING_GAUGE` with the other gauges (`daemon::refresh_gauges`),
    /// not set per transaction.
    pub fn committing_now(&self) -> usize {
        self.committing.load(Ordering::Acquire)
    }

    fn set_gauges(&self, outcomes: usize) {
        ::metrics::gauge!(UNRECORDED_GAUGE).set(outcomes as f64);
        ::metrics::gauge!(PAUSED_GAUGE).set(if self.is_paused() { 1.0 } else { 0.0 });
    }
}

/// One transaction's outcomes on their way to a commit.
pub(super) struct Committing(Arc<Unrecorded>);

impl Drop for Committing {
    fn drop(&mut self) {
        let unrecorded = &self.0;
        let before = unrecorded.committing.fetch_sub(1, Ordering::AcqRel);
        if before == MAX_COMMITTING {
            unrecorded.resumed.notify_waiters();
        }
    }
}

impl Recorder {
    /// Holds a write back (the spool refused it with `error`, or others
    /// already wait), pauses delivery and makes sure a task retries.
    /// `runtime` runs the retrying task: this is called from the spool's
    /// writer thread too, which has no runtime of its own.
    pub(super) fn hold_back(
        &self,
        written: Written,
        error: Option<&SpoolError>,
        runtime: Option<tokio::runtime::Handle>,
    ) {
        let unrecorded = &self.unrecorded;
        let mut state = unrecorded.state();
        state.waiting.push(written);
        unrecorded.paused.store(true, Ordering::Release);
        if error.is_some() {
            state.refusals += 1;
        }
        let outcomes = state.outcomes();
        if state.paused_at.is_none() {
            state.paused_at = Some(Instant::now());
        }
        if let Some(error) = error
            && state.log_due()
        {
            log::error!(
                "delivery paused: {outcomes} delivery outcomes cannot be recorded ({error}); \
                 no new delivery starts until they are written, retried every {}s \
                 ({} refused writes since the last report)",
                RETRY.as_secs(),
                std::mem::take(&mut state.refusals),
            );
        }
        let start = !state.retrying;
        state.retrying = true;
        drop(state);
        unrecorded.set_gauges(outcomes);
        if !start {
            return;
        }
        let recorder = self.clone();
        match runtime.or_else(|| tokio::runtime::Handle::try_current().ok()) {
            Some(runtime) => drop(runtime.spawn(recorder.write_held_back())),
            None => log::error!("delivery outcomes held back with no runtime to retry them"),
        }
    }

    /// Writes what waits, all in one request, every `RETRY` until the
    /// spool takes it; then resumes delivery.
    async fn write_held_back(self) {
        loop {
            tokio::time::sleep(RETRY).await;
            let batch = std::mem::take(&mut self.unrecorded.state().waiting);
            if batch.is_empty() {
                if self.resume() {
                    return;
                }
                continue;
            }
            match self.write_all(&batch).await {
                Ok(()) => batch.into_iter().for_each(|w| self.written(w)),
                Err(SpoolError::Closed) => return,
                Err(e) => self.put_back(batch, &e),
            }
        }
    }

    /// One request for every waiting write; the result once committed.
    async fn write_all(&self, batch: &[Written]) -> Result<(), SpoolError> {
        let outcomes = batch.iter().flat_map(|w| w.outcomes.clone()).collect();
        let delivered: Vec<Delivered> = batch.iter().flat_map(|w| w.delivered.clone()).collect();
        let (done, result) = tokio::sync::oneshot::channel();
        self.spool.record_with_index(
            outcomes,
            &delivered,
            self.index_retain,
            Box::new(move |r| {
                let _ = done.send(r);
            }),
        );
        result.await.unwrap_or(Err(SpoolError::Closed))
    }

    /// A retry failed: the batch goes back in front of what came meanwhile.
    fn put_back(&self, mut batch: Vec<Written>, error: &SpoolError) {
        let mut state = self.unrecorded.state();
        batch.append(&mut state.waiting);
        state.waiting = batch;
        state.refusals += 1;
        let outcomes = state.outcomes();
        if state.log_due() {
            log::error!(
                "delivery still paused: {outcomes} delivery outcomes cannot be recorded ({error}); \
                 {} refused writes since the last report",
                std::mem::take(&mut state.refusals),
            );
        }
        drop(state);
        self.unrecorded.set_gauges(outcomes);
    }

    /// Ends the pause if nothing came meanwhile; false if something did.
    fn resume(&self) -> bool {
        let unrecorded = &self.unrecorded;
        let mut state = unrecorded.state();
        if !state.waiting.is_empty() {
            return false;
        }
        state.retrying = false;
        state.logged_at = None;
        state.refusals = 0;
        let paused_for = state.paused_at.take().map_or(0, |t| t.elapsed().as_secs());
        unrecorded.paused.store(false, Ordering::Release);
        drop(state);
        unrecorded.resumed.notify_waiters();
        unrecorded.set_gauges(0);
        log::warn!("delivery resumed: the outcomes held back for {paused_for}s are recorded");
        true
    }
}
