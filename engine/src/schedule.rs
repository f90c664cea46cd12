//! The scheduler: moves due recipients from the spool's schedule index
//! into the routes' ready queues.
//!
//! Retries and any backlog larger than the ready queues wait on disk; this
//! loop claims, per route and lane, only as many due recipients as that
//! route's queue has room for (what does not fit stays scheduled), groups
//! them by message so that a message's recipients share one transaction,
//! and sleeps until the next entry is due (at most `MAX_SLEEP`, so that
//! room freed by the workers is noticed). It also gives back the claims
//! no job holds once their lease runs out, drops idle direct-delivery
//! sites, and claims nothing while delivery is paused because outcomes
//! cannot be written. When the spool has emptied it is compacted, giving
//! disk space back after a burst. It is woken before its sleep is over
//! when a route's ready queue falls to half full (a backlog drains as
//! fast as the workers go, not a queue's capacity per sleep) and when an
//! operator's action makes recipients due now (`Router::schedule_wake`).
//! That wake comes only from above half: a lane that was full when the
//! claim measured its room but is at half or below once the claim is
//! queued (the workers drained it meanwhile) would never send it, so the
//! scheduler claims again at once instead of sleeping.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use sendengine_queue::{ClaimCandidate, ClaimFilter, Claimed, MessageId, Spool, SpoolError};
use tokio::sync::watch;

use crate::deliver::{Job, Leases, is_priority_channel, job_for};
use crate::engine::Engine;
use crate::route::Router;
use crate::timefmt::now_ms;

const MAX_SLEEP: Duration = Duration::from_millis(500);
/// Most recipients claimed at once, so one claim never holds the spool's
/// writer (and with it every SMTP session's commit) for long.
const CLAIM_BATCH: usize = 2_000;
/// How often leases are renewed and the unheld expired ones given back.
const LEASE_SWEEP: Duration = Duration::from_secs(5);

pub async fn run(engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) {
    let mut compactor = Compactor {
        needed: true,
        last: None,
    };
    let mut last_sweep = tokio::time::Instant::now();
    let mut claim_errors = ErrorLog::default();
    loop {
        // From this loop, so that a stuck scheduler stops the pings and
        // systemd restarts the daemon (`WatchdogSec=`).
        crate::systemd::notifier().watchdog_ping();
        if last_sweep.elapsed() >= LEASE_SWEEP {
            give_back_unheld(&engine.router);
            engine.router.drop_idle_sites();
            last_sweep = tokio::time::Instant::now();
        }
        let wait = if engine.router.recorder().unrecorded.is_paused() {
            // Outcomes wait to be written: no new work (see `unrecorded.rs`).
            MAX_SLEEP
        } else {
            match claim(&engine, &mut claim_errors).await {
                Claim::Full => Duration::from_millis(1),
                Claim::Some => {
                    compactor.run_if_idle(&engine).await;
                    next_wait(&engine).await
                }
                // What is due waits for room: noticed at the next round.
                Claim::Blocked => MAX_SLEEP,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = engine.router.schedule_wake().notified() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Gives the spool back the claims no job has held for a whole lease.
fn give_back_unheld(router: &Router) {
    let expired = router.leases().expired(now_ms());
    if !expired.is_empty() {
        log::warn!(
            "{} claimed recipients were held by no delivery job for {}s: due again",
            expired.len(),
            crate::deliver::CLAIM_LEASE.as_secs()
        );
        router.recorder().release_unheld(expired);
    }
}

/// What a round of claiming found.
enum Claim {
    /// The whole batch, or due recipients left out on a lane that is at
    /// half or below by now: claim again at once.
    Full,
    /// Less than a batch, and nothing due was left out for lack of room.
    Some,
    /// Due recipients were left in the spool because their routes are full.
    Blocked,
}

/// Claims due recipients within their routes' room and queues them.
async fn claim(engine: &Arc<Engine>, errors: &mut ErrorLog) -> Claim {
    let spool = engine.spool.clone();
    let room = RouteRoom::new(engine.router.clone(), engine.tenancy.snapshot());
    let full_lanes = room.full_lanes.clone();
    let leases = engine.router.leases().clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let claimed = spool.claim_due_where(now_ms(), CLAIM_BATCH, room.into_filter())?;
        let count = claimed.len();
        Ok::<_, SpoolError>((count, load_jobs(&spool, &leases, claimed)))
    })
    .await;
    let full_lanes = std::mem::take(&mut *full_lanes.lock().unwrap_or_else(|p| p.into_inner()));
    let blocked = !full_lanes.is_empty();
    match loaded {
        Ok(Ok((count, jobs))) => {
            jobs.into_iter().for_each(|job| engine.router.dispatch(job));
            if count == CLAIM_BATCH || (blocked && !will_wake(&engine.router, &full_lanes)) {
                Claim::Full
            } else if blocked {
                Claim::Blocked
            } else {
                Claim::Some
            }
        }
        Ok(Err(e)) => {
            errors.report(&e);
            Claim::Blocked
        }
        Err(_) => Claim::Blocked,
    }
}

/// A failing claim is logged once per `ERROR_LOG_INTERVAL` (with how many
/// failed since), not twice a second while the disk is full.
#[derive(Default)]
struct ErrorLog {
    last: Option<tokio::time::Instant>,
    unreported: u64,
}

const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(30);

impl ErrorLog {
    fn report(&mut self, error: &SpoolError) {
        self.unreported += 1;
        if self.last.is_some_and(|t| t.elapsed() < ERROR_LOG_INTERVAL) {
            return;
        }
        log::error!(
            "scheduler could not claim due recipients ({} failures since the last report): {error}",
            self.unreported
        );
        self.last = Some(tokio::time::Instant::now());
        self.unreported = 0;
    }
}

/// The jobs for claimed recipients, registered with their leases. A
/// message that cannot be read keeps its claims, unheld: they are due
/// again when the lease runs out, not lost until a restart.
fn load_jobs(spool: &Spool, leases: &Leases, claimed: Vec<Claimed>) -> Vec<Job> {
    let now = now_ms();
    let mut jobs = Vec::new();
    for (id, rcpts) in group_by_message(claimed) {
        match spool.load(id) {
            Ok(Some(message)) => {
                let job = job_for(Arc::new(message), rcpts);
                // A recipient a live job already holds is not sent twice.
                jobs.extend(leases.take(job, now));
            }
            // Deleted meanwhile: nothing left to do.
            Ok(None) => {}
            Err(e) => {
                log::error!(
                    "scheduler could not load message {}: {e}; its {} claimed recipients are \
                     due again in {}s",
                    sendengine_queue::format_id(id),
                    rcpts.len(),
                    crate::deliver::CLAIM_LEASE.as_secs()
                );
                let keys: Vec<(MessageId, u32)> = rcpts.iter().map(|&(r, _)| (id, r)).collect();
                leases.orphan(&keys, now);
            }
        }
    }
    jobs
}

/// Whether every lane that refused recipients is still over half full,
/// so that the workers' next takes will wake the scheduler.
fn will_wake(router: &Router, full_lanes: &[LaneKey]) -> bool {
    full_lanes
        .iter()
        .all(|(name, priority)| router.lane_wakes_scheduler(name, *priority))
}

/// A route and lane (priority or not).
type LaneKey = (String, bool);

/// Room per route and lane for one claim: the claim filter takes a due
/// recipient only while its route has room left.
struct RouteRoom {
    router: Arc<Router>,
    snapshot: Arc<crate::tenancy::Tenancy>,
    /// Places left, and whether a recipient was refused for want of one.
    left: HashMap<LaneKey, (usize, bool)>,
    /// The lanes that left due recipients out for lack of room.
    full_lanes: Arc<std::sync::Mutex<Vec<LaneKey>>>,
}

impl RouteRoom {
    fn new(router: Arc<Router>, snapshot: Arc<crate::tenancy::Tenancy>) -> RouteRoom {
        RouteRoom {
            router,
            snapshot,
            left: HashMap::new(),
            full_lanes: Arc::default(),
        }
    }

    /// Takes a place on the recipient's route; false when it has none. A
    /// recipient of a group with no server is taken: the router records
    /// that it cannot go anywhere.
    fn take(&mut self, c: &ClaimCandidate<'_>) -> bool {
        let meta = c.meta;
        let Some(name) =
            self.router
                .route_name_for(&self.snapshot, &meta.group, &meta.channel, c.address)
        else {
            return true;
        };
        let priority = is_priority_channel(&meta.channel);
        let mut lane = match self.left.entry((name, priority)) {
            Entry::Occupied(lane) => lane,
            Entry::Vacant(lane) => {
                let (name, priority) = lane.key();
                let room = self.router.room_of(name, *priority);
                lane.insert_entry((room, false))
            }
        };
        let (left, refused_before) = lane.get_mut();
        if *left > 0 {
            *left -= 1;
            return true;
        }
        if !std::mem::replace(refused_before, true) {
            let mut full = self.full_lanes.lock().unwrap_or_else(|p| p.into_inner());
            full.push(lane.key().clone());
        }
        false
    }

    fn into_filter(mut self) -> ClaimFilter {
        Box::new(move |c| self.take(c))
    }
}

/// Groups claimed recipients by message, keeping the order of first sight.
fn group_by_message(claimed: Vec<Claimed>) -> Vec<(MessageId, Vec<(u32, u32)>)> {
    let mut order: Vec<(MessageId, Vec<(u32, u32)>)> = Vec::new();
    let mut index: HashMap<MessageId, usize> = HashMap::new();
    for c in claimed {
        let slot = *index.entry(c.id).or_insert_with(|| {
            order.push((c.id, Vec::new()));
            order.len() - 1
        });
        order[slot].1.push((c.rcpt, c.attempts));
    }
    order
}

async fn next_wait(engine: &Arc<Engine>) -> Duration {
    let spool = engine.spool.clone();
    let next = tokio::task::spawn_blocking(move || spool.next_due_ms())
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    match next {
        Some(due) => Duration::from_millis(due.saturating_sub(now_ms())).min(MAX_SLEEP),
        None => MAX_SLEEP,
    }
}

/// Gives disk space back once each time the spool has emptied, at most
/// every `COMPACT_INTERVAL` (compaction holds up the spool's writer).
struct Compactor {
    needed: bool,
    last: Option<tokio::time::Instant>,
}

const COMPACT_INTERVAL: Duration = Duration::from_secs(60);

impl Compactor {
    async fn run_if_idle(&mut self, engine: &Arc<Engine>) {
        let spool = engine.spool.clone();
        let Ok(Ok(stats)) = tokio::task::spawn_blocking(move || spool.stats()).await else {
            return;
        };
        if stats.messages > 0 {
            self.needed = true;
            return;
        }
        let recent = self.last.is_some_and(|t| t.elapsed() < COMPACT_INTERVAL);
        if !self.needed || recent {
            return;
        }
        let spool = engine.spool.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || spool.compact()).await {
            log::error!("spool compaction failed: {e}");
        }
        self.needed = false;
        self.last = Some(tokio::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_grouped_by_message_in_order() {
        let c = |id, rcpt| Claimed {
            id,
            rcpt,
            attempts: 1,
        };
        let groups = group_by_message(vec![c(7, 0), c(3, 0), c(7, 2), c(3, 1)]);
        assert_eq!(
            groups,
            vec![(7, vec![(0, 1), (2, 1)]), (3, vec![(0, 1), (1, 1)])]
        );
    }
}
