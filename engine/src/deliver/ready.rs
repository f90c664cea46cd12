//! `ReadyQueue`: the jobs of one route that are due now, held in memory.
//!
//! It is bounded so that a backlog waits on disk (in the spool's schedule
//! index) rather than in RAM. Admission reserves a place before it commits
//! a message, so a message that will go straight to the queue is stored as
//! claimed and skips a round trip through the index; the scheduler fills
//! whatever room is left from the index.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use sendengine_queue::StoredMessage;
use tokio::sync::Notify;

/// One message with the recipients to try in one transaction.
#[derive(Debug, Clone)]
pub struct Job {
    pub message: Arc<StoredMessage>,
    /// The `Message-ID:` header, for events.
    pub header_message_id: String,
    /// (recipient index, attempts made before this one)
    pub rcpts: Vec<(u32, u32)>,
}

pub struct ReadyQueue {
    jobs: Mutex<Inner>,
    notify: Notify,
    capacity: usize,
}

struct Inner {
    queue: VecDeque<Job>,
    reserved: usize,
}

impl ReadyQueue {
    pub fn new(capacity: usize) -> ReadyQueue {
        ReadyQueue {
            jobs: Mutex::new(Inner {
                queue: VecDeque::new(),
                reserved: 0,
            }),
            notify: Notify::new(),
            capacity,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue half-changed.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a job that is about to be committed.
    pub fn try_reserve(&self) -> bool {
        let mut inner = self.inner();
        if inner.queue.len() + inner.reserved < self.capacity {
            inner.reserved += 1;
            true
        } else {
            false
        }
    }

    pub fn cancel_reservation(&self) {
        let mut inner = self.inner();
        inner.reserved = inner.reserved.saturating_sub(1);
    }

    /// Fills a place taken with `try_reserve`.
    pub fn push_reserved(&self, job: Job) {
        let mut inner = self.inner();
        inner.reserved = inner.reserved.saturating_sub(1);
        inner.queue.push_back(job);
        drop(inner);
        self.notify.notify_one();
    }

    /// Adds a job the scheduler claimed; may pass the capacity, which is
    /// only a target for how much the scheduler asks for.
    pub fn push(&self, job: Job) {
        self.inner().queue.push_back(job);
        self.notify.notify_one();
    }

    pub fn len(&self) -> usize {
        self.inner().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many more jobs the scheduler may add.
    pub fn room(&self) -> usize {
        let inner = self.inner();
        self.capacity
            .saturating_sub(inner.queue.len() + inner.reserved)
    }

    /// Takes the next job, waiting at most `idle` for one.
    pub async fn pop(&self, idle: Duration) -> Option<Job> {
        let deadline = tokio::time::Instant::now() + idle;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(job) = self.inner().queue.pop_front() {
                return Some(job);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.inner().queue.pop_front();
            }
        }
    }

    /// Empties the queue (shutdown); the jobs stay claimed in the spool
    /// and are rescheduled by recovery at the next start.
    pub fn drain(&self) -> Vec<Job> {
        self.inner().queue.drain(..).collect()
    }
}
