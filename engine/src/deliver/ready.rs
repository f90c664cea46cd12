//! `ReadyQueue`: the jobs of one route that are due now, held in memory.
//!
//! It is bounded so that a backlog waits on disk (in the spool's schedule
//! index) rather than in RAM. Admission reserves a place before it commits
//! a message, so a message that will go straight to the queue is stored as
//! claimed and skips a round trip through the index; the scheduler fills
//! whatever room is left from the index.
//!
//! Two lanes, so that a big campaign cannot hold up a password reset:
//! transactional and autoresponder mail go in the priority lane, which has
//! room of its own and is always served first; marketing mail waits in one
//! queue per campaign, served in turn.

use std::collections::{HashMap, VecDeque};
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
    /// Delivery servers that failed this job at connection level in this
    /// round; failover skips them.
    pub tried: Vec<String>,
}

impl Job {
    /// Whether this job goes in the priority lane.
    pub fn is_priority(&self) -> bool {
        is_priority_channel(&self.message.meta.channel)
    }
}

pub fn is_priority_channel(channel: &str) -> bool {
    matches!(channel, "transactional" | "autoresponder")
}

pub struct ReadyQueue {
    jobs: Mutex<Inner>,
    notify: Notify,
    capacity: usize,
}

#[derive(Default)]
struct Lane {
    queued: usize,
    reserved: usize,
}

#[derive(Default)]
struct Inner {
    priority: VecDeque<Job>,
    /// Marketing jobs by campaign, and the order campaigns take turns in.
    campaigns: HashMap<String, VecDeque<Job>>,
    turns: VecDeque<String>,
    priority_lane: Lane,
    bulk_lane: Lane,
}

impl Inner {
    fn lane(&mut self, priority: bool) -> &mut Lane {
        if priority {
            &mut self.priority_lane
        } else {
            &mut self.bulk_lane
        }
    }

    fn push(&mut self, job: Job) {
        if job.is_priority() {
            self.priority_lane.queued += 1;
            self.priority.push_back(job);
            return;
        }
        self.bulk_lane.queued += 1;
        let campaign = job.message.meta.campaign.clone();
        let queue = self.campaigns.entry(campaign.clone()).or_default();
        if queue.is_empty() {
            self.turns.push_back(campaign);
        }
        queue.push_back(job);
    }

    fn pop(&mut self) -> Option<Job> {
        if let Some(job) = self.priority.pop_front() {
            self.priority_lane.queued -= 1;
            return Some(job);
        }
        let campaign = self.turns.pop_front()?;
        let queue = self.campaigns.get_mut(&campaign)?;
        let job = queue.pop_front();
        if queue.is_empty() {
            self.campaigns.remove(&campaign);
        } else {
            self.turns.push_back(campaign);
        }
        if job.is_some() {
            self.bulk_lane.queued -= 1;
        }
        job
    }

    fn len(&self) -> usize {
        self.priority_lane.queued + self.bulk_lane.queued
    }
}

impl ReadyQueue {
    pub fn new(capacity: usize) -> ReadyQueue {
        ReadyQueue {
            jobs: Mutex::new(Inner::default()),
            notify: Notify::new(),
            capacity,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue half-changed.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place in a lane for a job that is about to be committed.
    pub fn try_reserve(&self, priority: bool) -> bool {
        let capacity = self.capacity;
        let mut inner = self.inner();
        let lane = inner.lane(priority);
        if lane.queued + lane.reserved < capacity {
            lane.reserved += 1;
            true
        } else {
            false
        }
    }

    pub fn cancel_reservation(&self, priority: bool) {
        let mut inner = self.inner();
        let lane = inner.lane(priority);
        lane.reserved = lane.reserved.saturating_sub(1);
    }

    /// Fills a place taken with `try_reserve`.
    pub fn push_reserved(&self, job: Job) {
        let mut inner = self.inner();
        let lane = inner.lane(job.is_priority());
        lane.reserved = lane.reserved.saturating_sub(1);
        inner.push(job);
        drop(inner);
        self.notify.notify_one();
    }

    /// Adds a job the scheduler claimed; may pass the capacity, which is
    /// only a target for how much the scheduler asks for.
    pub fn push(&self, job: Job) {
        self.inner().push(job);
        self.notify.notify_one();
    }

    pub fn len(&self) -> usize {
        self.inner().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many more marketing jobs the scheduler may add (priority jobs
    /// from the schedule are few and always taken).
    pub fn room(&self) -> usize {
        let inner = self.inner();
        let bulk = &inner.bulk_lane;
        self.capacity.saturating_sub(bulk.queued + bulk.reserved)
    }

    /// Queued jobs by campaign, for `status`; mail without one is left out.
    pub fn campaign_counts(&self) -> Vec<(String, usize)> {
        let inner = self.inner();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        let priority = inner
            .priority
            .iter()
            .map(|j| (j.message.meta.campaign.as_str(), 1));
        let bulk = inner.campaigns.iter().map(|(c, q)| (c.as_str(), q.len()));
        for (campaign, n) in priority.chain(bulk).filter(|(c, _)| !c.is_empty()) {
            *counts.entry(campaign).or_default() += n;
        }
        counts.into_iter().map(|(c, n)| (c.to_owned(), n)).collect()
    }

    /// Takes the next job, if any, without waiting.
    pub fn try_pop(&self) -> Option<Job> {
        self.inner().pop()
    }

    /// Waits at most `idle` for a job to be queued; false on timeout.
    pub async fn wait_for_job(&self, idle: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + idle;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return !self.is_empty();
            }
        }
    }

    /// Empties the queue (shutdown); the jobs stay claimed in the spool
    /// and are rescheduled by recovery at the next start.
    pub fn drain(&self) -> Vec<Job> {
        let mut inner = self.inner();
        std::iter::from_fn(|| inner.pop()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sendengine_queue::{MessageMeta, StoredMessage};

    fn job(id: u64, channel: &str, campaign: &str) -> Job {
        Job {
            message: Arc::new(StoredMessage {
                id,
                mail_from: String::new(),
                recipients: vec!["r@example.net".into()],
                meta: MessageMeta {
                    channel: channel.into(),
                    campaign: campaign.into(),
                    ..MessageMeta::default()
                },
                body: Arc::from(&b""[..]),
            }),
            header_message_id: String::new(),
            rcpts: vec![(0, 0)],
            tried: Vec::new(),
        }
    }

    #[tokio::test]
    async fn transactional_first_then_campaigns_take_turns() {
        let q = ReadyQueue::new(100);
        for i in 0..5 {
            q.push(job(i, "marketing", "big"));
        }
        q.push(job(10, "marketing", "small"));
        q.push(job(20, "transactional", ""));
        let order: Vec<u64> =
            std::iter::from_fn(|| q.inner().pop().map(|j| j.message.id)).collect();
        assert_eq!(order, vec![20, 0, 10, 1, 2, 3, 4]);
    }

    #[test]
    fn a_full_bulk_lane_leaves_room_for_transactional() {
        let q = ReadyQueue::new(2);
        assert!(q.try_reserve(false));
        assert!(q.try_reserve(false));
        assert!(!q.try_reserve(false));
        assert!(q.try_reserve(true), "the priority lane has room of its own");
        assert_eq!(q.room(), 0);
        q.cancel_reservation(false);
        assert_eq!(q.room(), 1);
    }
}
