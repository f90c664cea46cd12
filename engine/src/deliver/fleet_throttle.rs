//! Fleet-wide throttles of delivery servers, kept in Redis (`[cluster]
//! redis`). Every node of a fleet asks the same Redis for the right to send
//! (a GCRA per limit, `lua/gcra.lua`, granting a block of messages per call
//! so a busy node does not pay a round trip per message) and before a
//! connection opens (a
//! lease that expires, `lua/lease.lua`: KumoMTA's scheme over a sorted
//! set), so the fleet as a whole keeps each server's `rate_per_*` and
//! `max_connections`. Times are Redis's own clock, so node clocks may
//! differ. This file is the node's Redis side; `server_limits` applies it
//! per route.
//!
//! Redis down: every call is bounded by [`CALL_TIMEOUT`]. The first that
//! fails switches the node to its share of every limit (the limit divided
//! by the nodes of the fleet, see [`FleetThrottles::share_divisor`]), logs
//! one line, counts `sendengine_cluster_redis_fallbacks_total` and sets
//! `sendengine_cluster_redis_up` to 0. From then on no message waits for
//! Redis: `run` asks it once a second and switches back when it answers.
//! Delivery never stops for Redis.
//!
//! It lives in `deliver`, not `cluster`: these are delivery's limits, and
//! `deliver` stays free of `crate::cluster` (which reads the engine), so
//! the daemon hands it the settings and a way to count the live nodes.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Script, ScriptInvocation};
use tokio::sync::watch;
use tokio::time::Instant;

/// The longest a node waits for Redis on one call, message or connection.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(200);
/// How often Redis is asked whether it is back (and who uses it).
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How long a connection lease lives unless renewed; a killed node's
/// connections stop counting after this.
pub const LEASE_TIME: Duration = Duration::from_secs(6);
/// How often a live connection renews its lease.
pub const LEASE_RENEW: Duration = Duration::from_secs(2);
/// A node not seen for this long no longer counts in the fleet's size.
const PRESENCE_TIME: Duration = Duration::from_secs(5);

/// 1 while this node's Redis answers, 0 while it throttles alone.
pub const REDIS_UP: &str = "sendengine_cluster_redis_up";
/// Times this node lost Redis and fell back to its share.
pub const REDIS_FALLBACKS: &str = "sendengine_cluster_redis_fallbacks_total";

/// Redis's answer to a node asking for messages under a server's rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateGrant {
    /// This many messages may go now (at least one).
    Go(u32),
    /// None may go yet: ask again after this long.
    Wait(Duration),
}

/// What the daemon hands over from `[cluster]`.
pub struct FleetSettings {
    /// `redis://` URL.
    pub redis: String,
    /// Prefix of every key (`[cluster] redis_prefix`).
    pub prefix: String,
    /// This node's name, in lease ids and the presence set.
    pub node: String,
    /// Live nodes of the fleet as the heartbeat sees them (at least 1).
    pub live_nodes: Arc<dyn Fn() -> usize + Send + Sync>,
}

/// This node's handle on the fleet's throttles in Redis.
pub struct FleetThrottles {
    redis: ConnectionManager,
    prefix: String,
    node: String,
    live_nodes: Arc<dyn Fn() -> usize + Send + Sync>,
    up: AtomicBool,
    /// Until when, after Redis came back, no new lease is given: the
    /// connections opened meanwhile need a renewal to be counted again.
    settling_until: Mutex<Instant>,
    /// Nodes seen using the throttles while Redis answered.
    nodes_seen: AtomicUsize,
    /// Makes lease ids unique within this process.
    next_lease: AtomicU64,
    /// Makes lease ids unique across restarts of this node.
    incarnation: u64,
    gcra: Script,
    lease: Script,
    presence: Script,
}

impl FleetThrottles {
    pub fn new(settings: FleetSettings) -> Result<Arc<FleetThrottles>, String> {
        let client = redis::Client::open(settings.redis.as_str())
            .map_err(|e| format!("[cluster] redis: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let redis = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("[cluster] redis: {e}"))?;
        Ok(Arc::new(FleetThrottles {
            redis,
            prefix: settings.prefix,
            node: settings.node,
            live_nodes: settings.live_nodes,
            up: AtomicBool::new(true),
            settling_until: Mutex::new(Instant::now()),
            nodes_seen: AtomicUsize::new(0),
            next_lease: AtomicU64::new(0),
            incarnation: crate::timefmt::now_ms(),
            gcra: Script::new(include_str!("lua/gcra.lua")),
            lease: Script::new(include_str!("lua/lease.lua")),
            presence: Script::new(include_str!("lua/presence.lua")),
        }))
    }

    /// Whether the fleet's throttles are in use (false: this node's share).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Whether Redis is just back and the fleet's connections are still
    /// being counted there again: new connections wait meanwhile.
    pub fn settling(&self) -> bool {
        let until = *self
            .settling_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.is_up() && Instant::now() < until
    }

    /// What a limit is divided by while Redis is down: the live nodes as
    /// the heartbeat counts them, or as Redis last saw them, whichever is
    /// more (so the shares never add up to more than the limit).
    pub fn share_divisor(&self) -> usize {
        (self.live_nodes)()
            .max(self.nodes_seen.load(Ordering::Relaxed))
            .max(1)
    }

    /// The key of one of `server`'s throttles; the server name is the hash
    /// tag, so a server's keys would share a slot of a Redis Cluster.
    pub fn key(&self, server: &str, what: &str) -> String {
        format!("{}throttle:{{{server}}}:{what}", self.prefix)
    }

    /// A lease id no other connection of the fleet uses.
    pub fn new_lease_id(&self) -> String {
        let n = self.next_lease.fetch_add(1, Ordering::Relaxed);
        format!("{}:{}:{n}", self.node, self.incarnation)
    }

    /// Up to `want` messages through every limit in `limits` (key,
    /// emission interval, tolerance) at once, as `want` asks for one would
    /// have gone: None when Redis is down (use the share).
    pub async fn take(
        &self,
        limits: &[(String, Duration, Duration)],
        want: u32,
    ) -> Option<RateGrant> {
        let mut call = self.gcra.prepare_invoke();
        call.arg(want.max(1));
        for (key, interval, tolerance) in limits {
            call.key(key)
                .arg(interval.as_micros() as u64)
                .arg(tolerance.as_micros() as u64);
        }
        let (granted, wait_us): (u32, u64) = self.eval(&call, "rate").await?;
        Some(match granted {
            0 => RateGrant::Wait(Duration::from_micros(wait_us.max(1))),
            n => RateGrant::Go(n),
        })
    }

    /// Takes or renews lease `id` among at most `max` on `key`: false when
    /// there is no room (for a renewal: Redis lost it and others took its
    /// place), None when Redis is down.
    pub async fn lease(&self, key: &str, id: &str, max: usize) -> Option<bool> {
        let mut call = self.lease.prepare_invoke();
        call.key(key)
            .arg(id)
            .arg(max)
            .arg(LEASE_TIME.as_millis() as u64);
        let granted: u8 = self.eval(&call, "connection lease").await?;
        Some(granted == 1)
    }

    /// Gives lease `id` back; if Redis is down it expires on its own.
    pub async fn release(&self, key: &str, id: &str) {
        if !self.is_up() {
            return;
        }
        let mut redis = self.redis.clone();
        let zrem = redis::cmd("ZREM").arg(key).arg(id).to_owned();
        let done = tokio::time::timeout(CALL_TIMEOUT, zrem.query_async::<i64>(&mut redis)).await;
        match done {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.mark_down(&e.to_string()),
            Err(_) => self.mark_down("no answer in time"),
        }
    }

    /// A script call while Redis is up; a failure switches to the share.
    async fn eval<T: FromRedisValue>(&self, call: &ScriptInvocation<'_>, what: &str) -> Option<T> {
        if !self.is_up() {
            return None;
        }
        match self.eval_now(call).await {
            Ok(v) => Some(v),
            Err(e) => {
                self.mark_down(&format!("{what}: {e}"));
                None
            }
        }
    }

    async fn eval_now<T: FromRedisValue>(&self, call: &ScriptInvocation<'_>) -> Result<T, String> {
        let mut redis = self.redis.clone();
        match tokio::time::timeout(CALL_TIMEOUT, call.invoke_async(&mut redis)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
        }
    }

    fn mark_down(&self, why: &str) {
        if self.up.swap(false, Ordering::AcqRel) {
            log::warn!(
                "cluster: Redis does not answer ({why}); this node throttles its delivery servers alone, at 1/{} of each limit, and asks Redis again every {}s",
                self.share_divisor(),
                HEALTH_INTERVAL.as_secs()
            );
            ::metrics::gauge!(REDIS_UP).set(0.0);
            ::metrics::counter!(REDIS_FALLBACKS).increment(1);
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            *self
                .settling_until
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Instant::now() + LEASE_RENEW + CALL_TIMEOUT;
            log::info!(
                "cluster: Redis answers again; delivery servers' throttles are fleet-wide again"
            );
        }
        ::metrics::gauge!(REDIS_UP).set(1.0);
    }

    /// Once a second: tells Redis this node uses it, learns how many do,
    /// and switches back from the share when Redis answers again.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        ::metrics::describe_gauge!(
            REDIS_UP,
            "1 while Redis answers, 0 while this node throttles alone"
        );
        ::metrics::describe_counter!(
            REDIS_FALLBACKS,
            "Times this node lost Redis and fell back to its share of each limit"
        );
        ::metrics::counter!(REDIS_FALLBACKS).increment(0);
        loop {
            self.check().await;
            tokio::select! {
                _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    async fn check(&self) {
        let mut call = self.presence.prepare_invoke();
        call.key(format!("{}throttle:nodes", self.prefix))
            .arg(&self.node)
            .arg(PRESENCE_TIME.as_millis() as u64);
        match self.eval_now::<usize>(&call).await {
            Ok(n) => {
                self.nodes_seen.store(n, Ordering::Relaxed);
                self.mark_up();
            }
            Err(e) => self.mark_down(&e),
        }
    }
}
