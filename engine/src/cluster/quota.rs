//! Sending quotas exact across the fleet: each node leases blocks of a
//! quota from PostgreSQL (`quota_sql`) and spends them locally, so the
//! database is off the per-message path while a user is far from a limit.
//!
//! Admission calls [`QuotaLedger::reserve`] before the spool commit and
//! settles the [`Reservation`] after it. A reservation is taken from a
//! local lease. Within the lease's cap of unrecorded spending (a quarter of
//! a large block, none of a small one: `quota_sql::unrecorded_cap`) it is
//! returned at once and recorded as spent after the commit, so PostgreSQL
//! is off the per-message path; beyond it, it is recorded before it is
//! returned (both batched: `quota_spend`), and settled unstored, it is
//! un-spent. Either way nothing acknowledged can be given back twice: a
//! killed node's expired lease keeps its cap in limbo until the node
//! starts again and settles it from its spool's counts. Blocks are large far from
//! the limit and shrink to exactly what a message needs near it
//! ([`lease_size`]); a node refused while others hold unspent leases asks
//! them (NOTIFY) to give back and retries for up to [`RESERVE_WAIT`], so
//! the fleet accepts exactly the limit. A background task runs every
//! [`TICK`]: it gives unused leases back after [`IDLE_RETURN`] (and at
//! shutdown), renews the leases in use, counts unlimited quotas (limit 0:
//! only counted, in batches, never waited for), un-spends and reclaims
//! expired leases.
//!
//! When PostgreSQL is unreachable: once the ledger knows it, a spend
//! cannot be recorded, so mail of a user with a limit gets `451 4.3.0`
//! (never a 5xx), even within a lease this node holds (what was taken
//! unrecorded before is recorded when the database is back); mail without
//! limits is accepted and counted later. The outage is logged once and
//! `sendengine_cluster_quota_database_up` is 0. Everything recovers by
//! itself when the database answers again. A node killed with SIGKILL:
//! its leases expire after `LEASE_TTL_SECS` and are given back but for
//! their caps, which the node settles when it starts again; a crash between
//! a spend's record and the spool commit counts a message that was not
//! queued (fewer accepted, never more).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sendengine_queue::{Quota, QuotaExceeded, Standing, Window};
use tokio::sync::Notify;

use super::FleetView;
use super::postgres::{Database, DbError, Notice, Prepared, listen};
use super::quota_health::Health;
pub use super::quota_health::METRIC_UP;
use super::quota_spend::{self as spend, Pending, SpendQueue, Spent};
pub use super::quota_spend::{METRIC_SPEND_FLUSHES, METRIC_SPENDS};
use super::quota_sql::{
    self as sql, Ask, Key, LEASE_MARGIN_SECS, LEASE_TTL_SECS, Leased, key_of, window_of,
};
use super::quota_state::{Held, Part};
use crate::timefmt::now_ms;
use crate::values::Reply;

/// How long admission may wait for other nodes to give back leases.
pub const RESERVE_WAIT: Duration = Duration::from_secs(5);
/// How often idle leases are given back, leases renewed and counts sent.
pub const TICK: Duration = Duration::from_millis(100);
/// A lease not drawn on for this long goes back to the fleet.
pub const IDLE_RETURN: Duration = Duration::from_secs(1);
/// The largest block one lease takes.
pub const MAX_BLOCK: u64 = 500;
/// How long spends that nobody waits for gather before they are recorded
/// (cut short when a key's unrecorded spending passes half its cap).
const SPEND_LINGER: Duration = Duration::from_millis(20);
/// How often expired leases (of killed nodes) are looked for.
const RECLAIM_EVERY: Duration = Duration::from_secs(1);

/// Messages answered 451 because no quota decision could be made.
pub const METRIC_UNAVAILABLE: &str = "sendengine_cluster_quota_unavailable_total";
/// Lease transactions that granted blocks.
pub const METRIC_LEASES: &str = "sendengine_cluster_quota_leases_total";
/// Times an admission waited for a lease transaction (a retry near a
/// limit counts again); far from every limit the next block is leased
/// ahead and this stays near 0.
pub const METRIC_LEASE_WAITS: &str = "sendengine_cluster_quota_lease_waits_total";

/// The block to lease when `need` more is wanted and the fleet has used
/// `used` of `limit`: none if it does not fit; else a share of what is left
/// (a quarter per live node, at most [`MAX_BLOCK`]) but never less than
/// `need`, so that near the limit a node takes exactly what it needs.
pub fn lease_size(need: u64, limit: u64, used: u64, live_nodes: usize) -> Option<u64> {
    let remaining = limit.saturating_sub(used);
    if need > remaining {
        return None;
    }
    let share = remaining / (4 * live_nodes.max(1) as u64);
    Some(share.min(MAX_BLOCK).max(need).min(remaining))
}

/// What one message wants of one quota.
#[derive(Clone, Debug)]
struct Want {
    key: Key,
    first: i32,
    window: Window,
    limit: u64,
    amount: u64,
}

/// What `try_take` took for one message.
struct Taken {
    parts: Vec<Part>,
    /// The spend may be recorded after the commit (every limited key has
    /// room under its cap, and the database answered last time).
    unrecorded: bool,
    /// Keys whose lease runs low: lease the next block now.
    ahead: Vec<Ask>,
}

/// What this node's spool counted of a quota in one bucket of a window:
/// every message it committed (`Spool::usage_in`).
pub type SpoolCounts = Arc<dyn Fn(&str, Window, u32) -> u64 + Send + Sync>;

/// This node's quota ledger.
pub struct QuotaLedger {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    url: String,
    db: Arc<Database>,
    fleet: Arc<FleetView>,
    /// One connection for every write of this node, so that a settle never
    /// runs between a lease's commit and its arrival in `state`.
    conn: tokio::sync::Mutex<Conn>,
    state: Mutex<HashMap<Key, Held>>,
    health: Health,
    wake: Notify,
    spends: SpendQueue,
    spool_counts: SpoolCounts,
}

#[derive(Default)]
struct Conn {
    client: Option<tokio_postgres::Client>,
    /// Statements prepared on `client`.
    prepared: Prepared,
    /// Schema created.
    ready: bool,
    /// The previous run's leases settled (once per run, not per connection).
    previous_settled: bool,
}

/// A reservation made by admission: settle it once the spool answered.
/// Dropped unsettled, it is consumed (the safe side: counted even if the
/// message was not stored).
pub struct Reservation {
    inner: Arc<Inner>,
    parts: Vec<Part>,
    /// Not recorded yet: recorded once stored, put back if not.
    unrecorded: bool,
}

impl Reservation {
    pub fn settle(mut self, stored: bool) {
        let parts = std::mem::take(&mut self.parts);
        self.inner.settle_parts(parts, stored, self.unrecorded);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let parts = std::mem::take(&mut self.parts);
        self.inner.settle_parts(parts, true, self.unrecorded);
    }
}

impl QuotaLedger {
    /// Starts the ledger's background task and its LISTEN for give-back
    /// requests; needs a tokio runtime.
    pub fn start(
        node: &str,
        db: Arc<Database>,
        fleet: Arc<FleetView>,
        spool_counts: SpoolCounts,
    ) -> QuotaLedger {
        let inner = Arc::new(Inner {
            node: node.to_owned(),
            url: db.url().to_owned(),
            db,
            fleet,
            conn: tokio::sync::Mutex::new(Conn::default()),
            state: Mutex::new(HashMap::new()),
            health: Health::default(),
            wake: Notify::new(),
            spends: SpendQueue::default(),
            spool_counts,
        });
        metrics::gauge!(METRIC_UP).set(1.0);
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        listen(inner.url.clone(), vec![sql::RETURN_CHANNEL.into()], tx);
        tokio::spawn(listen_for_returns(Arc::downgrade(&inner), rx));
        tokio::spawn(run(Arc::downgrade(&inner)));
        tokio::spawn(flush_spends(Arc::downgrade(&inner)));
        QuotaLedger { inner }
    }

    /// Reserves `quotas` for one message, and sets their limits to 0 so
    /// that the spool only counts them (the fleet's limit is decided here).
    /// Err: the limit named, or 451 4.3.0 when the database is needed and
    /// does not answer.
    pub async fn reserve(&self, quotas: &mut [Quota]) -> Result<Reservation, Refused> {
        let now = now_ms();
        let wants: Vec<Want> = quotas
            .iter()
            .filter(|q| q.amount > 0)
            .map(|q| {
                let (key, first) = key_of(q, now);
                Want {
                    key,
                    first,
                    window: q.window,
                    limit: q.limit,
                    amount: q.amount,
                }
            })
            .collect();
        for q in quotas.iter_mut() {
            q.limit = 0;
        }
        self.inner.reserve(&wants, now).await
    }

    /// Records what is still unrecorded and gives every unspent lease
    /// back; called once SMTP sessions are over.
    pub async fn shutdown(&self) {
        self.inner
            .state_mut(|s| s.values_mut().for_each(|h| h.closing = true));
        let inner = &self.inner;
        let last = async {
            inner.flush(inner.spends.take()).await;
            inner.tick().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), last).await;
    }

    /// The fleet's usage of `quota` now: (accepted, and when some frees;
    /// leased and unspent). A release counts what is leased too.
    pub async fn fleet_usage(&self, quota: &Quota) -> Result<(Standing, u64), DbError> {
        let now = now_ms();
        let (key, first) = key_of(quota, now);
        let mut conn = self.inner.conn().await?;
        let client = conn.client.as_ref().ok_or(DbError::Closed)?;
        let result = sql::usage(client, &key, first).await;
        let (periods, leased) = self.inner.outcome(&mut conn, result)?;
        let counts: Vec<(u32, u64)> = periods
            .into_iter()
            .map(|(period, used)| (u32::try_from(period).unwrap_or(0), used))
            .collect();
        let mut standing = quota.window.standing(&counts, now);
        standing.used = standing.used.saturating_sub(leased);
        Ok((standing, leased))
    }
}

impl Inner {
    fn state_mut<T>(&self, f: impl FnOnce(&mut HashMap<Key, Held>) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state)
    }

    async fn reserve(self: &Arc<Self>, wants: &[Want], now: u64) -> Result<Reservation, Refused> {
        if let Some(w) = wants.iter().find(|w| w.limit > 0 && w.amount > w.limit) {
            return Err(refused(w, w.limit.min(w.amount), now));
        }
        let deadline = Instant::now() + RESERVE_WAIT;
        loop {
            let asks = match self.try_take(wants) {
                Ok(taken) if taken.unrecorded => {
                    self.lease_ahead(taken.ahead);
                    return Ok(Reservation {
                        inner: self.clone(),
                        parts: taken.parts,
                        unrecorded: true,
                    });
                }
                Ok(Taken { parts, ahead, .. }) => match self.record(&parts).await {
                    Spent::Recorded => {
                        self.lease_ahead(ahead);
                        return Ok(Reservation {
                            inner: self.clone(),
                            parts,
                            unrecorded: false,
                        });
                    }
                    Spent::Retry if Instant::now() < deadline => continue,
                    Spent::Retry | Spent::Failed => {
                        metrics::counter!(METRIC_UNAVAILABLE).increment(1);
                        return Err(Refused::Unavailable);
                    }
                },
                Err(asks) => asks,
            };
            metrics::counter!(METRIC_LEASE_WAITS).increment(1);
            match self.lease(&asks).await {
                Ok(None) => continue,
                Ok(Some((key, used, others))) => {
                    let own = self.state_mut(|s| s.get(&key).map_or(0, |h| h.reserved));
                    if (others > 0 || own > 0) && Instant::now() < deadline {
                        self.ask_others(&key).await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    let want = wants.iter().find(|w| w.key == key).unwrap_or(&wants[0]);
                    return Err(refused(want, used, now));
                }
                Err(e) => {
                    log::debug!("cluster quota: no lease: {e}");
                    metrics::counter!(METRIC_UNAVAILABLE).increment(1);
                    return Err(Refused::Unavailable);
                }
            }
        }
    }

    /// Waits for the spend flush to record the limited `parts` (taken by
    /// `try_take`; put back by the flush unless Recorded). Parts of
    /// unlimited quotas need no wait.
    async fn record(&self, parts: &[Part]) -> Spent {
        if !parts.iter().any(|p| p.limited) {
            return Spent::Recorded;
        }
        let (pending, answer) = Pending::waiting(parts);
        self.spends.push_now(pending);
        answer.await.unwrap_or(Spent::Failed)
    }

    /// Records every waiting spend in one statement (`quota_spend`).
    async fn flush(&self, batch: Vec<Pending>) {
        let Ok(mut conn) = self.conn().await else {
            self.failed(batch);
            return;
        };
        let (batch, sums) = self.state_mut(|s| spend::prepare(s, batch, Instant::now()));
        if sums.is_empty() {
            return;
        }
        let Conn {
            client, prepared, ..
        } = &mut *conn;
        let Some(client) = client.as_ref() else {
            self.failed(batch);
            return;
        };
        spend::count(&batch);
        let result = sql::spend(client, prepared, &self.node, &sums).await;
        match self.outcome(&mut conn, result) {
            Ok(found) => self.state_mut(|s| spend::applied(s, batch, &sums, &found)),
            Err(e) => {
                log::debug!("cluster quota: spend not recorded: {e}");
                self.failed(batch);
            }
        }
    }

    /// A flush that did not happen: waiting spends fail, the others stay
    /// queued for the next flush (the flush task retries every second).
    fn failed(&self, batch: Vec<Pending>) {
        let again = self.state_mut(|s| spend::failed(s, batch));
        self.spends.requeue(again);
    }

    /// Takes every limited want from the local leases, or takes nothing and
    /// returns what must be leased first.
    fn try_take(&self, wants: &[Want]) -> Result<Taken, Vec<Ask>> {
        let now = Instant::now();
        let database_up = self.health.is_up();
        self.state_mut(|state| {
            let asks: Vec<Ask> = wants
                .iter()
                .filter(|w| w.limit > 0)
                .filter_map(|w| {
                    let usable = state.get(&w.key).map_or(0, |h| h.usable(now));
                    (usable < w.amount).then(|| Ask {
                        key: w.key.clone(),
                        first: w.first,
                        limit: w.limit,
                        need: w.amount - usable,
                    })
                })
                .collect();
            if !asks.is_empty() {
                return Err(asks);
            }
            let limited = || wants.iter().filter(|w| w.limit > 0);
            let unrecorded = database_up
                && limited().next().is_some()
                && limited().all(|w| {
                    state
                        .get(&w.key)
                        .is_some_and(|h| h.room_unrecorded(w.amount))
                });
            let mut ahead = Vec::new();
            let parts = wants
                .iter()
                .map(|w| {
                    let held = state.entry(w.key.clone()).or_default();
                    if unrecorded && w.limit > 0 {
                        held.unrecorded += w.amount;
                    }
                    let part = held.take(&w.key, w.amount, w.limit > 0, now);
                    if w.limit > 0
                        && let Some(need) = held.lease_ahead()
                    {
                        ahead.push(Ask {
                            key: w.key.clone(),
                            first: w.first,
                            limit: w.limit,
                            need,
                        });
                    }
                    part
                })
                .collect();
            Ok(Taken {
                parts,
                unrecorded,
                ahead,
            })
        })
    }

    /// Leases the next blocks in the background, before the current ones
    /// run out, so that admissions far from a limit never wait for a lease
    /// transaction (`Held::lease_ahead` says when).
    fn lease_ahead(self: &Arc<Self>, asks: Vec<Ask>) {
        if asks.is_empty() {
            return;
        }
        // Refused or failed, the key is not leased ahead again until its
        // next grant: admissions then lease when they need to, as near a
        // limit.
        let inner = self.clone();
        tokio::spawn(async move {
            if let Err(e) = inner.lease(&asks).await {
                log::debug!("cluster quota: no lease ahead: {e}");
            }
        });
    }

    /// Leases the asks; Ok(None) when granted, Ok(Some((key, used, held by
    /// others))) when a key has not enough left.
    async fn lease(&self, asks: &[Ask]) -> Result<Option<(Key, u64, u64)>, DbError> {
        let started = Instant::now();
        let live = self.fleet.live_nodes();
        let mut conn = self.conn().await?;
        // Another admission (or a lease ahead) may have leased these keys
        // while this one waited for the connection.
        let now = Instant::now();
        let asks: Vec<Ask> = self.state_mut(|s| {
            asks.iter()
                .filter(|a| s.get(&a.key).map_or(0, |h| h.usable(now)) < a.need)
                .cloned()
                .collect()
        });
        if asks.is_empty() {
            return Ok(None);
        }
        let client = conn.client.as_mut().ok_or(DbError::Closed)?;
        let result = sql::lease(client, &self.node, &asks, |need, limit, used| {
            lease_size(need, limit, used, live)
        })
        .await;
        match self.outcome(&mut conn, result)? {
            Leased::Granted(blocks) => {
                metrics::counter!(METRIC_LEASES).increment(1);
                let until = started + lease_life();
                self.state_mut(|s| {
                    for g in blocks {
                        let held = s.entry(g.key).or_default();
                        held.granted(g.block, g.row_after, g.unrecorded_cap, until);
                    }
                });
                Ok(None)
            }
            Leased::Refused { key, used, others } => Ok(Some((key, used, others))),
        }
    }

    /// NOTIFY the other nodes, at most every 100 ms per key.
    async fn ask_others(&self, key: &Key) {
        let now = Instant::now();
        let due = self.state_mut(|s| {
            let held = s.entry(key.clone()).or_default();
            let due = held
                .notified
                .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(100));
            if due {
                held.notified = Some(now);
            }
            due
        });
        if !due {
            return;
        }
        if let Ok(mut conn) = self.conn().await
            && let Some(client) = conn.client.as_ref()
        {
            let result = sql::ask_return(client, key).await;
            let _ = self.outcome(&mut conn, result);
        }
    }

    /// After the commit: a stored message's spend is recorded (if it was
    /// not yet) or confirmed; an unstored one's is put back (if it was not
    /// recorded yet) or un-spent.
    fn settle_parts(&self, parts: Vec<Part>, stored: bool, unrecorded: bool) {
        if parts.is_empty() {
            return;
        }
        let now = Instant::now();
        let half_full = self.state_mut(|s| {
            let mut half_full = false;
            for part in &parts {
                let held = s.entry(part.key.clone()).or_default();
                if unrecorded && part.limited {
                    held.last_used = Some(now);
                    half_full |= held.flush_due();
                    if !stored {
                        held.unrecorded = held.unrecorded.saturating_sub(part.amount);
                        held.untake(part.amount, part.epoch);
                    }
                } else {
                    held.settle(part, stored, now);
                }
            }
            half_full
        });
        if !stored || !parts.iter().any(|p| p.limited) {
            return;
        }
        match (unrecorded, half_full) {
            (true, true) => self.spends.push_now(Pending::committed(&parts)),
            (true, false) => self.spends.push(Pending::committed(&parts)),
            (false, _) => self.spends.push(Pending::confirmed(&parts)),
        }
    }

    /// The connection, opened (and the schema made ready) if needed.
    async fn conn(&self) -> Result<tokio::sync::MutexGuard<'_, Conn>, DbError> {
        if self.health.failing_fast() {
            return Err(DbError::Closed);
        }
        let mut conn = self.conn.lock().await;
        if self.health.failing_fast() {
            return Err(DbError::Closed);
        }
        if conn.client.as_ref().is_none_or(|c| c.is_closed()) {
            conn.ready = false;
            conn.prepared.clear();
            let opened = super::postgres::connect(&self.url).await;
            conn.client = Some(self.outcome(&mut conn, opened)?);
        }
        if !conn.ready {
            let migrated = self.db.migrate(sql::SCHEMA).await;
            self.outcome(&mut conn, migrated)?;
            conn.ready = true;
        }
        if !conn.previous_settled {
            self.settle_previous_run(&mut conn).await?;
        }
        Ok(conn)
    }

    /// Settles the leases this node's previous run left, before this run
    /// takes any: what the spool counted beyond what PostgreSQL recorded
    /// was spent, the rest goes back.
    async fn settle_previous_run(&self, conn: &mut Conn) -> Result<(), DbError> {
        let client = conn.client.as_mut().ok_or(DbError::Closed)?;
        let counts = &self.spool_counts;
        let committed =
            |key: &Key| counts(&key.name, window_of(key.window), key.period.max(0) as u32);
        let oldest_day = Window::Day.bucket(now_ms()) as i32 - 31;
        let settled = sql::settle_previous_run(client, &self.node, oldest_day, committed).await;
        if self.outcome(conn, settled)? > 0 {
            log::info!("cluster quota: settled the leases of this node's previous run");
        }
        conn.previous_settled = true;
        Ok(())
    }

    /// Records the health of a call; a failed call drops the connection
    /// (it may be mid-transaction) so that the next one starts afresh.
    fn outcome<T>(&self, conn: &mut Conn, result: Result<T, DbError>) -> Result<T, DbError> {
        match &result {
            Ok(_) => self.health.ok(),
            Err(e) => {
                conn.client = None;
                conn.prepared.clear();
                self.health.failed(e);
            }
        }
        result
    }

    /// One round of the background work: give back, renew, count.
    async fn tick(&self) {
        let now = Instant::now();
        let work =
            self.state_mut(|s| super::quota_state::collect(s, now, IDLE_RETURN, renew_before()));
        if work.is_empty() {
            return;
        }
        let Ok(mut conn) = self.conn().await else {
            self.state_mut(|s| super::quota_state::undo(s, work));
            return;
        };
        let mut pending = work.into_iter();
        while let Some(item) = pending.next() {
            let started = Instant::now();
            let Some(client) = conn.client.as_ref() else {
                break;
            };
            let result = item.run(client, &self.node).await;
            match self.outcome(&mut conn, result) {
                Ok(after) => {
                    let fix = self.state_mut(|s| item.applied(s, after, started + lease_life()));
                    if let Some(fix) = fix
                        && let Some(client) = conn.client.as_ref()
                    {
                        let result = fix.run(client, &self.node).await;
                        let _ = self.outcome(&mut conn, result);
                    }
                }
                Err(_) => {
                    let rest: Vec<_> = std::iter::once(item).chain(pending).collect();
                    self.state_mut(|s| super::quota_state::undo(s, rest));
                    return;
                }
            }
        }
    }

    async fn reclaim_expired(&self) {
        if let Ok(mut conn) = self.conn().await
            && let Some(client) = conn.client.as_ref()
        {
            let result = sql::reclaim_expired(client).await;
            if let Ok(n) = self.outcome(&mut conn, result)
                && n > 0
            {
                log::info!("cluster quota: gave back {n} expired lease(s) of stopped nodes");
            }
        }
    }
}

/// How long a lease may be spent, counted from before it was asked for.
fn lease_life() -> Duration {
    Duration::from_secs(LEASE_TTL_SECS - LEASE_MARGIN_SECS)
}

/// A lease in use is renewed when it has less than this left.
fn renew_before() -> Duration {
    Duration::from_secs(LEASE_TTL_SECS / 2)
}

/// The background task: ticks until the ledger is dropped.
async fn run(inner: std::sync::Weak<Inner>) {
    let mut last_reclaim = Instant::now();
    loop {
        let Some(ledger) = inner.upgrade() else {
            return;
        };
        let _ = tokio::time::timeout(TICK, ledger.wake.notified()).await;
        ledger.tick().await;
        if last_reclaim.elapsed() >= RECLAIM_EVERY {
            last_reclaim = Instant::now();
            ledger.reclaim_expired().await;
        }
    }
}

/// The spend flush: records the spends waiting at each wake-up in one
/// statement; those arriving meanwhile form the next batch. Spends that no
/// admission waits for (recorded after their commit, confirmations) linger
/// up to [`SPEND_LINGER`] for company, so a busy node sends a few
/// statements a second rather than one per commit; a waiting one ends the
/// linger at once.
async fn flush_spends(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(ledger) = inner.upgrade() else {
            return;
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), ledger.spends.wake.notified()).await;
        let linger_until = Instant::now() + SPEND_LINGER;
        while !ledger.spends.is_due() {
            let left = linger_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let _ = tokio::time::timeout(left, ledger.spends.wake.notified()).await;
        }
        let batch = ledger.spends.take();
        if !batch.is_empty() {
            ledger.flush(batch).await;
        }
    }
}

/// Give-back requests of other nodes: mark the key and wake the task.
async fn listen_for_returns(
    inner: std::sync::Weak<Inner>,
    mut notices: tokio::sync::mpsc::Receiver<Notice>,
) {
    while let Some(notice) = notices.recv().await {
        let Some(ledger) = inner.upgrade() else {
            return;
        };
        if let Notice::Notify { payload, .. } = notice
            && let Some(key) = Key::from_payload(&payload)
        {
            let asked = ledger.state_mut(|s| {
                s.get_mut(&key)
                    .map(|h| h.asked = Some(Instant::now()))
                    .is_some()
            });
            if asked {
                ledger.wake.notify_one();
            }
        }
    }
}

/// The refusal naming the limit, as the standalone spool's.
fn refused(want: &Want, used: u64, now: u64) -> Refused {
    let exceeded = QuotaExceeded {
        name: want.key.name.clone(),
        window: want.window,
        limit: want.limit,
        used,
        resets_at_ms: want.window.resets_at_ms(now),
    };
    Refused::Limit(exceeded)
}

/// Why a reservation was refused; `reply()` is what the client gets.
#[derive(Debug)]
pub enum Refused {
    /// A limit is reached: admission names it, as the standalone spool's
    /// refusal (`admit::limits::refusal`).
    Limit(QuotaExceeded),
    /// The fleet's counters cannot be reached.
    Unavailable,
}

impl Refused {
    /// The reply when the counters cannot be reached: 451 4.3.0.
    pub fn unavailable_reply() -> Reply {
        Reply::new(
            451,
            "4.3.0",
            "The fleet's sending limits cannot be checked right now (the cluster database does not answer): try again later",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_large_far_from_the_limit_and_exact_near_it() {
        assert_eq!(lease_size(3, 1000, 0, 1), Some(250));
        assert_eq!(lease_size(3, 1000, 0, 3), Some(83));
        assert_eq!(lease_size(3, 1_000_000, 0, 1), Some(MAX_BLOCK));
        assert_eq!(lease_size(5, 1000, 990, 3), Some(5), "exact near the limit");
        assert_eq!(lease_size(10, 1000, 990, 1), Some(10), "the very last ones");
        assert_eq!(lease_size(11, 1000, 990, 1), None);
        assert_eq!(lease_size(1, 1000, 1000, 1), None);
        assert_eq!(
            lease_size(1, 1000, 1200, 1),
            None,
            "over after a lowered limit"
        );
        assert_eq!(lease_size(600, 1000, 0, 1), Some(600), "a big message");
    }
}
