//! `ReadyQueue`: the jobs of one route that are due now, held in memory.
//!
//! It is bounded so that a backlog waits on disk (in the spool's schedule
//! index) rather than in RAM: a push past the capacity of its lane is
//! refused, and the caller gives the job back to the spool. Admission
//! reserves a place before it commits a message, so a message that will go
//! straight to the queue is stored as claimed and skips a round trip
//! through the index; the scheduler claims per route only what fits in the
//! room that is left. A retired route's queue is closed: what waited in it
//! and what is pushed afterwards goes back to the router.
//!
//! Two lanes, so that a big campaign cannot hold up a password reset:
//! transactional and autoresponder mail go in the priority lane, which has
//! room of its own and is always served first; marketing mail waits in one
//! queue per campaign, served in turn.
//!
//! The queue also knows which of the route's workers will take its jobs
//! (`takers`), so that a push wakes a worker only when one is wanted.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use sendengine_queue::StoredMessage;
use tokio::sync::Notify;

use super::lease::Hold;

mod takers;

use takers::Takers;

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
    /// Keeps the lease on the job's claims while any copy of it lives.
    pub hold: Arc<Hold>,
}

/// A job a ready queue did not take.
#[derive(Debug)]
pub enum Refused {
    /// Its lane is at capacity: back to the spool, due again.
    Full(Job),
    /// The route was retired: to the router, for the route now in force.
    Closed(Job),
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
    capacity: usize,
    /// Told when a lane falls to half its capacity: the scheduler, which
    /// sleeps while the queue is full, claims more at once instead of at
    /// its next round (half a second: a backlog would drain at no more
    /// than two capacities a second).
    room_freed: Arc<Notify>,
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
    /// Set when the route is retired; every push is refused from then on.
    closed: bool,
    /// Under the same lock as the jobs, so a worker cannot park just as a
    /// push counts on it.
    takers: Takers,
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

    /// Takes out the recipients `pick` chooses, as jobs of their own; a
    /// job left with none is dropped from the queue.
    fn take_matching(&mut self, pick: &mut impl FnMut(&Job, u32) -> bool) -> Vec<Job> {
        let mut taken = Vec::new();
        let (before_priority, before_bulk) = (self.priority.len(), self.bulk_len());
        take_from(&mut self.priority, pick, &mut taken);
        for queue in self.campaigns.values_mut() {
            take_from(queue, pick, &mut taken);
        }
        self.campaigns.retain(|_, queue| !queue.is_empty());
        let campaigns = &self.campaigns;
        self.turns.retain(|c| campaigns.contains_key(c));
        self.priority_lane.queued -= before_priority - self.priority.len();
        self.bulk_lane.queued -= before_bulk - self.bulk_len();
        taken
    }

    fn bulk_len(&self) -> usize {
        self.campaigns.values().map(VecDeque::len).sum()
    }
}

fn take_from(
    queue: &mut VecDeque<Job>,
    pick: &mut impl FnMut(&Job, u32) -> bool,
    taken: &mut Vec<Job>,
) {
    queue.retain_mut(|job| {
        let (chosen, kept): (Vec<_>, Vec<_>) = job.rcpts.iter().partition(|(r, _)| pick(job, *r));
        if chosen.is_empty() {
            return true;
        }
        taken.push(Job {
            rcpts: chosen,
            ..job.clone()
        });
        job.rcpts = kept;
        !job.rcpts.is_empty()
    });
}

impl ReadyQueue {
    pub fn new(capacity: usize) -> ReadyQueue {
        ReadyQueue::waking(capacity, Arc::new(Notify::new()))
    }

    /// A queue that tells `room_freed` when a lane falls to half its
    /// capacity (only then: not on every job taken, which would wake the
    /// scheduler for every message at full load).
    pub fn waking(capacity: usize, room_freed: Arc<Notify>) -> ReadyQueue {
        ReadyQueue {
            jobs: Mutex::new(Inner::default()),
            capacity,
            room_freed,
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

    /// Fills a place taken with `try_reserve`; refused only once closed.
    pub fn push_reserved(&self, job: Job) -> Result<(), Refused> {
        let mut inner = self.inner();
        let lane = inner.lane(job.is_priority());
        lane.reserved = lane.reserved.saturating_sub(1);
        if inner.closed {
            return Err(Refused::Closed(job));
        }
        inner.push(job);
        let queued = inner.len();
        inner.takers.wake_if_wanted(queued);
        Ok(())
    }

    /// Adds a job if its lane has room and the queue is open.
    pub fn try_push(&self, job: Job) -> Result<(), Refused> {
        let capacity = self.capacity;
        let mut inner = self.inner();
        if inner.closed {
            return Err(Refused::Closed(job));
        }
        let lane = inner.lane(job.is_priority());
        if lane.queued + lane.reserved >= capacity {
            return Err(Refused::Full(job));
        }
        inner.push(job);
        let queued = inner.len();
        inner.takers.wake_if_wanted(queued);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.inner().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many more jobs the lane takes (0 once closed).
    pub fn room(&self, priority: bool) -> usize {
        let capacity = self.capacity;
        let mut inner = self.inner();
        if inner.closed {
            return 0;
        }
        let lane = inner.lane(priority);
        capacity.saturating_sub(lane.queued + lane.reserved)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether taking jobs from the lane will tell `room_freed` (see
    /// `waking`): only while it is over half full, as the tell comes when
    /// a take brings it down to half. A closed queue says yes: it wants
    /// nothing more.
    pub fn wakes_when_taken(&self, priority: bool) -> bool {
        let capacity = self.capacity;
        let mut inner = self.inner();
        if inner.closed {
            return true;
        }
        let lane = inner.lane(priority);
        lane.queued + lane.reserved > capacity / 2
    }

    /// Takes the recipients `pick` chooses out of the queue (an operator's
    /// action reaches them there), as jobs of their own.
    pub fn take_matching(&self, mut pick: impl FnMut(&Job, u32) -> bool) -> Vec<Job> {
        self.inner().take_matching(&mut pick)
    }

    /// The claimed recipients of every queued job, for leases and tests.
    pub fn for_each_job(&self, mut each: impl FnMut(&Job)) {
        let inner = self.inner();
        inner.priority.iter().for_each(&mut each);
        inner.campaigns.values().flatten().for_each(&mut each);
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
        let mut inner = self.inner();
        let job = inner.pop()?;
        let lane = inner.lane(job.is_priority());
        let half_full = lane.queued + lane.reserved == self.capacity / 2;
        drop(inner);
        if half_full {
            self.room_freed.notify_one();
        }
        Some(job)
    }

    /// Parks `worker` until a push wants it, for at most `idle`; true when a
    /// job waits, false on timeout with the queue empty or once the queue is
    /// closed. The worker counts as active again when this returns.
    pub async fn wait_for_job(&self, idle: Duration, worker: &Arc<Notify>) -> bool {
        let deadline = tokio::time::Instant::now() + idle;
        loop {
            {
                let mut inner = self.inner();
                if inner.len() > 0 {
                    return true;
                }
                if inner.closed {
                    return false;
                }
                inner.takers.park(worker);
            }
            if tokio::time::timeout_at(deadline, worker.notified())
                .await
                .is_err()
            {
                let mut inner = self.inner();
                inner.takers.unpark(worker);
                return inner.len() > 0;
            }
        }
    }

    /// Counts in a new worker when the queued jobs call for one more and
    /// no parked worker is left to wake; false when none is needed. The
    /// caller starts it, or calls `leave` when it may not.
    pub fn claim_new_worker(&self) -> bool {
        let mut inner = self.inner();
        let queued = inner.len();
        inner.takers.claim_new(queued)
    }

    /// An active worker ends, or stops counting while it waits on a slow
    /// server (then `rejoin` when it is back); a parked one is woken if the
    /// queued jobs now call for it.
    pub fn leave(&self) {
        let mut inner = self.inner();
        inner.takers.leave();
        let queued = inner.len();
        inner.takers.wake_if_wanted(queued);
    }

    pub fn rejoin(&self) {
        self.inner().takers.rejoin();
    }

    /// Empties the queue (failover); the jobs stay claimed in the spool.
    pub fn drain(&self) -> Vec<Job> {
        let mut inner = self.inner();
        std::iter::from_fn(|| inner.pop()).collect()
    }

    /// Closes the queue for good (the route is retired, or the daemon stops)
    /// and returns what waited in it; a push from now on is refused with
    /// `Closed`. Parked workers are woken to close their connections.
    pub fn close(&self) -> Vec<Job> {
        let mut inner = self.inner();
        inner.closed = true;
        inner.takers.wake_all();
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
                body: Default::default(),
            }),
            header_message_id: String::new(),
            rcpts: vec![(0, 0), (1, 0)],
            tried: Vec::new(),
            hold: Arc::default(),
        }
    }

    #[tokio::test]
    async fn transactional_first_then_campaigns_take_turns() {
        let q = ReadyQueue::new(100);
        for i in 0..5 {
            q.try_push(job(i, "marketing", "big")).unwrap();
        }
        q.try_push(job(10, "marketing", "small")).unwrap();
        q.try_push(job(20, "transactional", "")).unwrap();
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
        assert_eq!(q.room(false), 0);
        q.cancel_reservation(false);
        assert_eq!(q.room(false), 1);
    }

    #[tokio::test]
    async fn the_scheduler_is_woken_once_when_a_lane_falls_to_half_full() {
        let wake = Arc::new(Notify::new());
        let q = ReadyQueue::waking(4, wake.clone());
        let woken = || async {
            let wait = tokio::time::timeout(Duration::from_millis(20), wake.notified());
            wait.await.is_ok()
        };
        for id in 0..4 {
            q.try_push(job(id, "marketing", "a")).unwrap();
        }
        q.try_push(job(9, "transactional", "")).unwrap();
        assert!(q.wakes_when_taken(false) && !q.wakes_when_taken(true));
        q.try_pop().unwrap();
        assert!(
            !woken().await,
            "the priority lane (1 of 4) did not fall to half"
        );
        q.try_pop().unwrap();
        assert!(!woken().await, "3 of 4 left: not yet");
        assert!(q.wakes_when_taken(false));
        q.try_pop().unwrap();
        assert!(woken().await, "2 of 4 left: half full");
        assert!(!q.wakes_when_taken(false), "the wake has come");
        q.try_pop().unwrap();
        q.try_pop().unwrap();
        assert!(!woken().await, "below half: no wake per job taken");
    }

    /// A lane at half or below never wakes the scheduler as it drains,
    /// and says so: the scheduler must not sleep on it (`schedule.rs`).
    #[tokio::test]
    async fn a_lane_at_half_or_below_says_its_takes_will_not_wake_the_scheduler() {
        let wake = Arc::new(Notify::new());
        let q = ReadyQueue::waking(4, wake.clone());
        for id in 0..2 {
            q.try_push(job(id, "marketing", "a")).unwrap();
        }
        assert!(!q.wakes_when_taken(false));
        while q.try_pop().is_some() {}
        let wait = tokio::time::timeout(Duration::from_millis(20), wake.notified());
        assert!(wait.await.is_err(), "drained from half: no wake");
        q.close();
        assert!(q.wakes_when_taken(false), "closed: nothing to wait for");
    }

    /// Whether `worker`, parked, was woken within a moment.
    async fn was_woken(worker: &Arc<Notify>) -> bool {
        let wait = tokio::time::timeout(Duration::from_millis(20), worker.notified());
        wait.await.is_ok()
    }

    #[tokio::test]
    async fn a_push_wakes_a_parked_worker_only_when_the_active_ones_have_enough() {
        let q = Arc::new(ReadyQueue::new(100));
        assert!(!q.claim_new_worker(), "nothing queued: no worker");
        q.try_push(job(0, "marketing", "a")).unwrap();
        assert!(q.claim_new_worker(), "a job and no worker: one is wanted");
        assert!(!q.claim_new_worker(), "one active worker takes it");
        let first = q.try_pop().unwrap();
        assert_eq!(first.message.id, 0);
        // A second worker, then parked: the first is busy (still active).
        q.try_push(job(1, "marketing", "a")).unwrap();
        for id in 2..=(takers::QUEUED_PER_WORKER as u64) {
            q.try_push(job(id, "marketing", "a")).unwrap();
            assert!(
                !q.claim_new_worker(),
                "{id} queued: the busy worker takes them"
            );
        }
        q.try_push(job(99, "marketing", "a")).unwrap();
        assert!(
            q.claim_new_worker(),
            "one more than it takes: a second worker"
        );
        let parked = Arc::new(Notify::new());
        while q.try_pop().is_some() {}
        let waiting = {
            let (q, parked) = (q.clone(), parked.clone());
            tokio::spawn(async move { q.wait_for_job(Duration::from_secs(30), &parked).await })
        };
        tokio::task::yield_now().await;
        while q.inner().takers.counts() != (1, 1) {
            tokio::task::yield_now().await;
        }
        for id in 0..takers::QUEUED_PER_WORKER as u64 {
            q.try_push(job(100 + id, "marketing", "a")).unwrap();
        }
        assert_eq!(
            q.inner().takers.counts(),
            (1, 1),
            "the active worker will take these"
        );
        q.try_push(job(200, "marketing", "a")).unwrap();
        assert!(
            waiting.await.unwrap(),
            "one job too many wakes the parked worker"
        );
        assert_eq!(q.inner().takers.counts(), (2, 0));
    }

    #[tokio::test]
    async fn the_worker_parked_last_is_woken_first_and_a_resigned_one_lets_another_take_over() {
        let q = ReadyQueue::new(100);
        let (early, late) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        {
            let mut inner = q.inner();
            for _ in 0..3 {
                inner.takers.rejoin();
            }
            inner.takers.park(&early);
            inner.takers.park(&late);
        }
        // One active worker, busy with a slow server: it resigns.
        q.leave();
        assert!(!was_woken(&late).await, "nothing queued yet");
        q.try_push(job(1, "transactional", "")).unwrap();
        assert!(
            was_woken(&late).await,
            "the job does not wait on the slow server"
        );
        assert!(!was_woken(&early).await, "the surplus worker stays parked");
        assert_eq!(q.inner().takers.counts(), (1, 1));
        q.inner().takers.unpark(&early);
        assert_eq!(
            q.inner().takers.counts(),
            (2, 0),
            "a timed-out park counts active again"
        );
    }

    #[tokio::test]
    async fn closing_the_queue_wakes_every_parked_worker_to_leave() {
        let q = Arc::new(ReadyQueue::new(100));
        // Two running workers, both about to park on the empty queue.
        q.inner().takers.rejoin();
        q.inner().takers.rejoin();
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let (q, parked) = (q.clone(), Arc::new(Notify::new()));
                tokio::spawn(async move { q.wait_for_job(Duration::from_secs(30), &parked).await })
            })
            .collect();
        while q.inner().takers.counts() != (0, 2) {
            tokio::task::yield_now().await;
        }
        assert!(q.close().is_empty());
        for worker in waiting {
            let ended = tokio::time::timeout(Duration::from_secs(5), worker).await;
            assert!(!ended.expect("woken, not left to idle out").unwrap());
        }
        assert_eq!(q.inner().takers.counts(), (2, 0), "each leaves in turn");
    }

    #[test]
    fn a_push_past_the_capacity_is_refused() {
        let q = ReadyQueue::new(2);
        q.try_push(job(1, "marketing", "a")).unwrap();
        q.try_push(job(2, "marketing", "b")).unwrap();
        assert!(matches!(
            q.try_push(job(3, "marketing", "a")),
            Err(Refused::Full(j)) if j.message.id == 3
        ));
        assert_eq!(q.len(), 2, "never more than the capacity");
        q.try_push(job(4, "transactional", "")).unwrap();
        assert_eq!(q.room(true), 1);
    }

    #[test]
    fn a_closed_queue_hands_back_what_waited_and_refuses_the_rest() {
        let q = ReadyQueue::new(10);
        q.try_push(job(1, "marketing", "a")).unwrap();
        assert!(q.try_reserve(false));
        let waiting = q.close();
        assert_eq!(waiting.len(), 1);
        assert!(matches!(
            q.try_push(job(2, "marketing", "a")),
            Err(Refused::Closed(_))
        ));
        assert!(matches!(
            q.push_reserved(job(3, "marketing", "a")),
            Err(Refused::Closed(_))
        ));
        assert_eq!(q.room(false), 0);
    }

    #[test]
    fn matching_recipients_are_taken_out_and_the_rest_stays() {
        let q = ReadyQueue::new(10);
        q.try_push(job(1, "marketing", "a")).unwrap();
        q.try_push(job(2, "marketing", "b")).unwrap();
        q.try_push(job(3, "transactional", "a")).unwrap();
        // Campaign "a", and of message 1 only recipient 1.
        let taken = q.take_matching(|j, rcpt| {
            j.message.meta.campaign == "a" && (j.message.id != 1 || rcpt == 1)
        });
        let got: Vec<(u64, Vec<(u32, u32)>)> = taken
            .iter()
            .map(|j| (j.message.id, j.rcpts.clone()))
            .collect();
        assert_eq!(got, vec![(3, vec![(0, 0), (1, 0)]), (1, vec![(1, 0)])]);
        let left: Vec<(u64, usize)> = std::iter::from_fn(|| q.try_pop())
            .map(|j| (j.message.id, j.rcpts.len()))
            .collect();
        assert_eq!(left, vec![(1, 1), (2, 2)]);
        assert_eq!((q.room(false), q.room(true)), (10, 10));
    }
}
