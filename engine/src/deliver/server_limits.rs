//! A delivery server's limits as one route applies them: its message rates
//! (`rate_per_second/hour/day`) before each transaction, and, in a fleet,
//! a connection lease before each connection it opens.
//!
//! Standalone the local GCRA (`Throttle`) is the whole story and the route
//! caps its own workers at `max_connections`. In a fleet with Redis
//! (`FleetThrottles`) the rates and the connections count fleet-wide. A
//! node asks Redis for a block of messages (up to [`BLOCK_SPAN`] of the
//! strictest rate, at most [`MAX_BLOCK`]) and spends it before asking
//! again: near the limit Redis has room for one at a time, so blocks shrink
//! to one and the pace stays exact; far below it, one round trip serves
//! many messages. A block not spent within [`BLOCK_SPAN`] is dropped, so no
//! node saves up a burst. While
//! Redis is down this node keeps to its share: every rate and
//! `max_connections` divided by the fleet's nodes (connections rounded up,
//! at least 1), and a connection over that share closes after its current
//! message. When Redis answers again the open connections register there
//! again before any new one opens; one with no room left closes. Mail
//! over a limit waits in the ready queue; it is never refused for it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::fleet_throttle::{FleetThrottles, LEASE_RENEW, RateGrant};
use super::throttle::Throttle;
use crate::tenancy::DeliveryServer;

/// The longest one wait for a rate lasts before Redis is asked again, so a
/// switch between fleet and share is seen within a second.
const MAX_RATE_WAIT: Duration = Duration::from_secs(1);
/// Pause between asks for a connection lease while the server has all it
/// may have (jittered up to twice this, so waiting nodes do not ask in step).
const LEASE_POLL: Duration = Duration::from_millis(100);
/// A block of messages from Redis covers at most this much of the
/// strictest rate, and is dropped if not spent within it.
pub const BLOCK_SPAN: Duration = Duration::from_millis(100);
/// The most messages one ask to Redis takes.
pub const MAX_BLOCK: u32 = 256;

pub struct ServerLimits {
    /// The whole limits (standalone), or the template of the share.
    local: Throttle,
    fleet: Option<FleetLimits>,
}

/// The fleet-wide side of one server's limits.
struct FleetLimits {
    throttles: Arc<FleetThrottles>,
    /// Key, emission interval and tolerance of each rate limit.
    rates: Vec<(String, Duration, Duration)>,
    leases_key: String,
    max_connections: usize,
    /// How many messages one ask to Redis takes at most.
    block: u32,
    /// What is left of the last block Redis granted. The async lock makes
    /// one worker ask while the others wait for its block.
    prepaid: tokio::sync::Mutex<Prepaid>,
    /// This node's share of the rates, and the divisor it was made for.
    share: Mutex<(usize, Arc<Throttle>)>,
    /// Leases this node holds for the server (from Redis or by share).
    held: Arc<AtomicUsize>,
}

/// Messages granted by Redis and not spent yet.
#[derive(Debug)]
struct Prepaid {
    left: u32,
    until: Instant,
}

impl Prepaid {
    /// Spends one message of the block, if one is left and still valid.
    fn spend(&mut self, now: Instant) -> bool {
        if self.left == 0 || now >= self.until {
            return false;
        }
        self.left -= 1;
        true
    }
}

/// The wait for a connection lease ended: there is no work for it left.
pub struct NotWanted;

/// A connection's place among the server's `max_connections` across the
/// fleet, renewed while it is kept; dropping it gives the place back.
pub struct ConnectionLease {
    held: Arc<AtomicUsize>,
    /// Set when the place is given up: Redis lost the lease and the fleet
    /// filled up meanwhile, or Redis is down and this node holds more than
    /// its share. The connection should close.
    lost: Arc<AtomicBool>,
    /// Dropped with the lease: the keeper task then releases it in Redis.
    _keeper: oneshot::Sender<()>,
}

impl ConnectionLease {
    /// The connection should close after its current transaction.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }
}

impl Drop for ConnectionLease {
    fn drop(&mut self) {
        give_up(&self.lost, &self.held);
    }
}

/// Counts a lease out of `held` once, whether lost first or dropped.
fn give_up(lost: &AtomicBool, held: &AtomicUsize) {
    if !lost.swap(true, Ordering::AcqRel) {
        held.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ServerLimits {
    /// This node alone: the server's own limits.
    pub fn local(server: &DeliveryServer) -> ServerLimits {
        ServerLimits {
            local: Throttle::new(
                server.rate_per_second,
                server.rate_per_hour,
                server.rate_per_day,
            ),
            fleet: None,
        }
    }

    /// Fleet-wide limits when `fleet` is set, else this node's own.
    pub fn new(server: &DeliveryServer, fleet: Option<&Arc<FleetThrottles>>) -> ServerLimits {
        let mut limits = ServerLimits::local(server);
        limits.fleet = fleet.map(|throttles| {
            let rates = limits
                .local
                .limits()
                .map(|(name, interval, tolerance)| {
                    let key = throttles.key(&server.name, &format!("per_{name}"));
                    (key, interval, tolerance)
                })
                .collect();
            let divisor = throttles.share_divisor();
            FleetLimits {
                block: block_size(&limits.local),
                prepaid: tokio::sync::Mutex::new(Prepaid {
                    left: 0,
                    until: Instant::now(),
                }),
                leases_key: throttles.key(&server.name, "connections"),
                throttles: throttles.clone(),
                rates,
                max_connections: server.max_connections,
                share: Mutex::new((divisor, Arc::new(limits.local.share(divisor)))),
                held: Arc::new(AtomicUsize::new(0)),
            }
        });
        limits
    }

    /// Waits until one more message may go.
    pub async fn acquire(&self) {
        let Some(fleet) = &self.fleet else {
            return self.local.acquire().await;
        };
        if self.local.is_unlimited() {
            return;
        }
        loop {
            let wait = match fleet.take().await {
                Some(RateGrant::Go(_)) => Duration::ZERO,
                Some(RateGrant::Wait(wait)) => wait,
                None => match fleet.share(&self.local).try_take(Instant::now()) {
                    Ok(()) => Duration::ZERO,
                    Err(wait) => wait,
                },
            };
            if wait.is_zero() {
                return;
            }
            tokio::time::sleep(wait.min(MAX_RATE_WAIT)).await;
        }
    }

    /// Gives back a place `acquire` or `try_acquire` took for a job that
    /// another worker popped first, so that the limits (above all a daily
    /// one) count only mail that went. In a fleet, to the block in hand
    /// while it is valid; a place from Redis's fallback share stays spent.
    pub fn give_back(&self) {
        if self.local.is_unlimited() {
            return;
        }
        match &self.fleet {
            None => self.local.give_back(),
            Some(fleet) => {
                if let Ok(mut prepaid) = fleet.prepaid.try_lock()
                    && Instant::now() < prepaid.until
                {
                    prepaid.left += 1;
                }
            }
        }
    }

    /// Takes one message's place only if it is free now, without waiting
    /// or asking Redis (in a fleet, only from the block in hand): a worker
    /// with a final reply still to read asks this before taking the next job
    /// at once, and otherwise goes the waiting way of `acquire`.
    pub fn try_acquire(&self) -> bool {
        if self.local.is_unlimited() {
            return true;
        }
        match &self.fleet {
            None => self.local.try_take(Instant::now()).is_ok(),
            Some(fleet) => fleet
                .prepaid
                .try_lock()
                .is_ok_and(|mut prepaid| prepaid.spend(Instant::now())),
        }
    }

    /// Waits for a place among the server's connections across the fleet
    /// while `wanted()` (the route has work); None standalone, where the
    /// route's worker count is the cap.
    pub async fn connection_lease(
        &self,
        wanted: impl Fn() -> bool,
    ) -> Result<Option<ConnectionLease>, NotWanted> {
        let Some(fleet) = &self.fleet else {
            return Ok(None);
        };
        loop {
            if let Some(lease) = fleet.try_lease().await {
                return Ok(Some(lease));
            }
            if !wanted() {
                return Err(NotWanted);
            }
            tokio::time::sleep(jittered(LEASE_POLL)).await;
        }
    }
}

impl FleetLimits {
    /// One message from the block in hand, or from a new block asked of
    /// Redis; None when Redis is down.
    async fn take(&self) -> Option<RateGrant> {
        let mut prepaid = self.prepaid.lock().await;
        if prepaid.spend(Instant::now()) {
            return Some(RateGrant::Go(1));
        }
        let grant = self.throttles.take(&self.rates, self.block).await?;
        if let RateGrant::Go(n) = grant {
            *prepaid = Prepaid {
                left: n - 1,
                until: Instant::now() + BLOCK_SPAN,
            };
        }
        Some(grant)
    }

    /// The throttle at this node's share, made again when the fleet's size
    /// changed.
    fn share(&self, whole: &Throttle) -> Arc<Throttle> {
        let divisor = self.throttles.share_divisor();
        let mut share = self.share.lock().unwrap_or_else(|p| p.into_inner());
        if share.0 != divisor {
            *share = (divisor, Arc::new(whole.share(divisor)));
        }
        share.1.clone()
    }

    /// A lease from Redis, or by share while Redis is down; None when the
    /// server has all the connections it may have.
    async fn try_lease(&self) -> Option<ConnectionLease> {
        if self.throttles.settling() {
            return None;
        }
        let id = self.throttles.new_lease_id();
        let from_redis = self
            .throttles
            .lease(&self.leases_key, &id, self.max_connections)
            .await;
        match from_redis {
            Some(true) => {
                self.held.fetch_add(1, Ordering::AcqRel);
            }
            Some(false) => return None,
            None => {
                let share = share_of(self.max_connections, &self.throttles);
                self.held
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < share).then_some(n + 1)
                    })
                    .ok()?;
            }
        }
        Some(self.keep(id))
    }

    /// Renews lease `id` until the returned lease is dropped, then gives
    /// it back. A lease given by share is renewed too: once Redis is back
    /// it counts there like the others, or is lost if there is no room.
    fn keep(&self, id: String) -> ConnectionLease {
        let (keeper, mut released) = oneshot::channel::<()>();
        let lost = Arc::new(AtomicBool::new(false));
        let (throttles, key, max) = (
            self.throttles.clone(),
            self.leases_key.clone(),
            self.max_connections,
        );
        let (flag, held) = (lost.clone(), self.held.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut released => break,
                    _ = tokio::time::sleep(LEASE_RENEW) => {}
                }
                let keep = match throttles.lease(&key, &id, max).await {
                    Some(kept) => kept,
                    None => held.load(Ordering::Acquire) <= share_of(max, &throttles),
                };
                if !keep {
                    give_up(&flag, &held);
                    break;
                }
            }
            throttles.release(&key, &id).await;
        });
        ConnectionLease {
            held: self.held.clone(),
            lost,
            _keeper: keeper,
        }
    }
}

/// How many messages one ask to Redis may take: [`BLOCK_SPAN`] of the
/// strictest rate, between 1 and [`MAX_BLOCK`].
fn block_size(rates: &Throttle) -> u32 {
    let slowest = rates
        .limits()
        .map(|(_, interval, _)| interval)
        .max()
        .unwrap_or(Duration::ZERO);
    if slowest.is_zero() {
        return MAX_BLOCK;
    }
    let per_span = BLOCK_SPAN.as_nanos() / slowest.as_nanos();
    u32::try_from(per_span)
        .unwrap_or(MAX_BLOCK)
        .clamp(1, MAX_BLOCK)
}

/// This node's part of `max` connections while Redis is down.
fn share_of(max: usize, throttles: &FleetThrottles) -> usize {
    max.div_ceil(throttles.share_divisor()).max(1)
}

/// `base` to twice `base`, varied by the clock's nanoseconds.
fn jittered(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    base + base.mul_f64(f64::from(nanos % 1000) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_covers_a_tenth_of_a_second_of_the_strictest_rate() {
        let block = |s, h, d| block_size(&Throttle::new(s, h, d));
        assert_eq!(block(Some(50.0), None, None), 5);
        assert_eq!(block(Some(5.0), None, None), 1, "never less than one");
        assert_eq!(block(Some(1e6), None, None), MAX_BLOCK);
        assert_eq!(
            block(Some(1e6), Some(3600), None),
            1,
            "the hour's one a second is stricter"
        );
        assert_eq!(block(None, None, None), MAX_BLOCK);
    }

    #[test]
    fn a_block_is_spent_once_and_not_after_its_time() {
        let now = Instant::now();
        let mut prepaid = Prepaid {
            left: 2,
            until: now + BLOCK_SPAN,
        };
        assert!(prepaid.spend(now));
        assert!(prepaid.spend(now));
        assert!(!prepaid.spend(now), "two were granted");
        let mut stale = Prepaid {
            left: 5,
            until: now + BLOCK_SPAN,
        };
        assert!(!stale.spend(now + BLOCK_SPAN), "an old block is dropped");
    }
}
