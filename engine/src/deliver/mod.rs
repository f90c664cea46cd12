//! Delivery: a `Route` per delivery server, each with its ready queue, its
//! rate limits and a pool of connection workers.
//!
//! Workers are started on demand, up to the server's `max_connections`,
//! when jobs wait and no worker is idle; each keeps its connection open for
//! up to `max_messages_per_connection` transactions and closes it after
//! `idle_timeout` without work. Every attempt ends in `Recorder`, except a
//! connection-level failure of a fresh connection: then the route is marked
//! down for a while and the job (with everything queued behind it) goes
//! back to the `Router`, which hands it to the next server of the group, if
//! there is one. A pooled connection the server closed while it was idle
//! costs a reconnect, not an attempt (see `Route::deliver`).

mod connection_run;
mod fleet_throttle;
mod lease;
mod ready;
mod record;
mod server_limits;
mod stats;
mod throttle;
mod unrecorded;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use connection_run::{InHand, Pooled};
pub use fleet_throttle::{FleetSettings, FleetThrottles, RateGrant};
pub use lease::{CLAIM_LEASE, Hold, Leases};
pub use ready::{Job, ReadyQueue, Refused, is_priority_channel};
pub use record::{AttemptContext, Recorder, RetryPolicy, SharedRetry, base_event, job_for};
use server_limits::{ConnectionLease, ServerLimits};
pub use stats::RouteStats;
pub use throttle::Throttle;
use tokio::sync::mpsc;
pub use unrecorded::{COMMITTING_GAUGE, PAUSED_GAUGE, UNRECORDED_GAUGE, Unrecorded};

use crate::smtp::client::{ClientSettings, Connection, Reply, SessionError, TlsState};
use crate::tenancy::DeliveryServer;
use crate::timefmt::now_ms;

/// A job a route could not deliver for a connection-level reason.
pub struct Failover {
    pub job: Job,
    pub error: SessionError,
    pub remote_host: Option<String>,
    /// Set when the server lacks what the message needs (8BITMIME,
    /// SMTPUTF8) rather than failing: the route stays up, and with no next
    /// server the recipients bounce with this reply.
    pub unsupported: Option<Reply>,
    /// Set when the route did not try the job (it is down until then):
    /// with no next server it waits that long, no attempt counted.
    pub untried_until_ms: Option<u64>,
}

/// What every route needs from the daemon.
#[derive(Clone)]
pub struct RouteContext {
    pub helo_name: String,
    pub ready_capacity: usize,
    pub idle_timeout: Duration,
    pub failover_backoff: Duration,
    pub recorder: Recorder,
    pub failover: mpsc::UnboundedSender<Failover>,
    /// Key of the HMAC in VERP tags.
    pub verp_secret: Arc<[u8; 32]>,
    /// `[cluster] redis`: delivery servers' limits count fleet-wide.
    pub fleet: Option<Arc<FleetThrottles>>,
    /// `[cluster]`: tags name this node (once its number is known).
    pub verp_node: Option<Arc<crate::cluster::delivered::SharedDelivered>>,
    /// Wakes the scheduler before its sleep is over (see `schedule.rs`).
    pub schedule_wake: Arc<tokio::sync::Notify>,
}

/// The local part of VERP return paths: `bounces+TAG@domain`.
pub const VERP_LOCAL: &str = "bounces";

/// Where a direct-delivery site's mail goes: the MX hosts of `domain`.
pub struct MxTarget {
    pub domain: String,
    pub resolver: crate::dns::Resolver,
}

/// Why a connection could not be had.
enum ConnectFailure {
    /// Try again later (or on another server).
    Session(SessionError),
    /// The destination accepts no mail at all (null MX, no such domain).
    Permanent(Reply),
}

/// One delivery server (or one destination site of direct delivery) and
/// the work waiting for it.
pub struct Route {
    pub name: String,
    /// The settings this route was built from; a change builds a new route.
    pub server: Arc<DeliveryServer>,
    settings: ClientSettings,
    max_connections: usize,
    max_messages_per_connection: usize,
    pub ready: ReadyQueue,
    /// In flight and delivered lately, for `status`.
    pub stats: RouteStats,
    throttle: ServerLimits,
    workers: AtomicUsize,
    stopping: AtomicBool,
    /// Wall-clock ms until which the server counts as down (0 = up).
    down_until_ms: AtomicU64,
    /// Wall-clock ms when the probe of a half-open route started (0 = none).
    probe_started_ms: AtomicU64,
    /// Set for a direct-delivery site: connect to its MX hosts.
    mx: Option<MxTarget>,
    ctx: RouteContext,
}

impl Route {
    pub fn new(server: &Arc<DeliveryServer>, ctx: RouteContext) -> Route {
        Route {
            name: server.name.clone(),
            server: server.clone(),
            settings: ClientSettings {
                host: server.host.clone(),
                port: server.port,
                encryption: server.encryption,
                helo_name: ctx.helo_name.clone(),
                auth: server.auth.clone(),
                timeouts: server.timeouts.clone(),
                tls_verify: server.tls_verify,
            },
            max_connections: server.max_connections,
            max_messages_per_connection: server.max_messages_per_connection,
            ready: ReadyQueue::waking(ctx.ready_capacity, ctx.schedule_wake.clone()),
            stats: RouteStats::default(),
            throttle: ServerLimits::new(server, ctx.fleet.as_ref()),
            workers: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            down_until_ms: AtomicU64::new(0),
            probe_started_ms: AtomicU64::new(0),
            mx: None,
            ctx,
        }
    }

    /// A route to the MX hosts of one destination domain; `site` carries
    /// the port, connection cap and timeout of `[direct]`.
    pub fn direct_site(site: &Arc<DeliveryServer>, mx: MxTarget, ctx: RouteContext) -> Route {
        Route {
            mx: Some(mx),
            // A site's connection cap is per node, as `[direct]` says.
            throttle: ServerLimits::local(site),
            ..Route::new(site, ctx)
        }
    }

    /// Connects to the relay, or to the first MX host that answers.
    async fn connect(&self) -> Result<Connection, ConnectFailure> {
        let Some(mx) = &self.mx else {
            return Connection::connect(&self.settings)
                .await
                .map_err(ConnectFailure::Session);
        };
        let dns_failure = |e: crate::dns::DnsError| {
            if e.is_permanent() {
                ConnectFailure::Permanent(Reply::local(
                    550,
                    "5.1.2",
                    format!("{e}: the recipient domain cannot receive mail"),
                ))
            } else {
                ConnectFailure::Session(SessionError::Protocol {
                    phase: crate::smtp::client::Phase::Connect,
                    message: format!("DNS lookup failed: {e}"),
                })
            }
        };
        let hosts = match mx.resolver.mx(&mx.domain).await.map_err(dns_failure)? {
            crate::dns::MxLookup::NullMx => {
                return Err(ConnectFailure::Permanent(Reply::local(
                    556,
                    "5.1.10",
                    format!("{} publishes a null MX: it accepts no mail", mx.domain),
                )));
            }
            crate::dns::MxLookup::Hosts(hosts) => hosts,
        };
        let mut last = None;
        for host in hosts {
            let addresses = match mx.resolver.addresses(&host.exchange).await {
                Ok(a) => a,
                Err(e) => {
                    last = Some(dns_failure(e));
                    continue;
                }
            };
            for ip in addresses {
                let mut settings = self.settings.clone();
                settings.host = ip.to_string();
                match Connection::connect(&settings).await {
                    Ok(c) => return Ok(c),
                    Err(e) => last = Some(ConnectFailure::Session(e)),
                }
            }
        }
        // Every host was tried; an unreachable site is never permanent.
        Err(match last {
            Some(ConnectFailure::Permanent(r)) => ConnectFailure::Session(SessionError::Protocol {
                phase: crate::smtp::client::Phase::Connect,
                message: format!("no MX host of {} has an address: {r}", mx.domain),
            }),
            Some(failure) => failure,
            None => ConnectFailure::Session(SessionError::Protocol {
                phase: crate::smtp::client::Phase::Connect,
                message: format!("no MX host of {} could be tried", mx.domain),
            }),
        })
    }

    /// A relay fails over to the group's next server; a direct site has no
    /// next server, so its recipients wait for a retry.
    fn connection_failed(&self, job: Job, error: SessionError, remote_host: Option<String>) {
        if self.mx.is_some() {
            let at = self.attempt_context(remote_host, None);
            self.ctx.recorder.session_failed(&job, &error, &at);
        } else {
            self.fail_over(job, error, remote_host);
        }
    }

    /// Up, or down long enough that it is time to try it again.
    pub fn is_available(&self) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) <= now_ms()
    }

    /// Whether the route takes a job now, as a circuit breaker: up (closed)
    /// yes; down (open) no; down with the back-off run out (half-open) only
    /// for the one caller that wins the probe. Other jobs keep going to the
    /// next server until the probe succeeds (`mark_up`) or fails
    /// (`mark_down` again). A probe that has had time for a whole session
    /// without either is taken as lost, and another job may probe.
    pub fn take_job(&self) -> bool {
        let until = self.down_until_ms.load(Ordering::Acquire);
        let now = now_ms();
        if until == 0 {
            return true;
        }
        if until > now {
            return false;
        }
        let probe = self.probe_started_ms.load(Ordering::Acquire);
        let lost_after = self.settings.timeouts.whole_session().as_millis() as u64;
        if probe != 0 && now < probe.saturating_add(lost_after) {
            return false;
        }
        self.probe_started_ms
            .compare_exchange(probe, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn mark_down(&self) {
        let until = now_ms() + self.ctx.failover_backoff.as_millis() as u64;
        let was = self.down_until_ms.swap(until, Ordering::Relaxed);
        self.probe_started_ms.store(0, Ordering::Release);
        // One line per state change, not per failed probe.
        if was == 0 {
            log::warn!(
                "route {} failed at connection level: skipped for {}s, then probed",
                self.name,
                self.ctx.failover_backoff.as_secs()
            );
        }
    }

    fn mark_up(&self) {
        if self.down_until_ms.swap(0, Ordering::Relaxed) != 0 {
            log::info!("route {} is back: it takes mail again", self.name);
        }
        self.probe_started_ms.store(0, Ordering::Release);
    }

    /// Queues a job whose place was reserved with `ready.try_reserve()`;
    /// returns the parts the queue refused (full, or the route retired).
    #[must_use]
    pub fn push_reserved(self: &Arc<Self>, job: Job) -> Vec<Refused> {
        let mut parts = per_transaction(job).into_iter();
        let mut refused = Vec::new();
        if let Some(first) = parts.next() {
            refused.extend(self.ready.push_reserved(first).err());
        }
        refused.extend(parts.filter_map(|part| self.ready.try_push(part).err()));
        self.start_worker_if_needed();
        refused
    }

    /// Queues a job from the scheduler or the router; returns the parts
    /// the queue refused (full, or the route retired).
    #[must_use]
    pub fn push(self: &Arc<Self>, job: Job) -> Vec<Refused> {
        let refused = per_transaction(job)
            .into_iter()
            .filter_map(|part| self.ready.try_push(part).err())
            .collect();
        self.start_worker_if_needed();
        refused
    }

    /// Nothing queued and no connection open: a direct-delivery site in
    /// this state may be dropped.
    pub fn is_idle(&self) -> bool {
        self.ready.is_empty() && self.workers.load(Ordering::Acquire) == 0
    }

    pub fn open_connections(&self) -> usize {
        self.workers.load(Ordering::Relaxed)
    }

    /// Starts a worker when the queued jobs call for one more than the
    /// running ones will take (see `ready/takers.rs`) and the route has
    /// fewer than `max_connections`.
    fn start_worker_if_needed(self: &Arc<Self>) {
        if self.stopping.load(Ordering::Relaxed) || !self.ready.claim_new_worker() {
            return;
        }
        let started = self
            .workers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_connections).then_some(n + 1)
            })
            .is_ok();
        if started {
            tokio::spawn(worker(self.clone()));
        } else {
            self.ready.leave();
        }
    }

    /// The next job, for the message place the rate limits gave; the place
    /// goes back when another worker took the job meanwhile.
    fn pop_with_paid_place(&self) -> Option<Job> {
        let job = self.ready.try_pop();
        if job.is_none() {
            self.throttle.give_back();
        }
        job
    }

    /// Stops taking new jobs; running transactions finish. Returns the
    /// jobs that were waiting (still claimed in the spool); a push from
    /// now on is refused, so the caller routes those jobs again.
    pub fn stop(&self) -> Vec<Job> {
        self.stopping.store(true, Ordering::Relaxed);
        self.ready.close()
    }

    /// The server failed at connection level: skip it for a while and give
    /// the job, and all queued behind it, to the router.
    fn fail_over(&self, job: Job, error: SessionError, remote_host: Option<String>) {
        self.mark_down();
        let mut job = job;
        job.tried.push(self.name.clone());
        let _ = self.ctx.failover.send(Failover {
            job,
            error,
            remote_host,
            unsupported: None,
            untried_until_ms: None,
        });
        for queued in self.ready.drain() {
            self.pass_on_while_down(queued);
        }
    }

    /// A job this route will not try while it is down goes to the router,
    /// for the group's next server.
    fn pass_on_while_down(&self, mut job: Job) {
        job.tried.push(self.name.clone());
        let error = SessionError::Protocol {
            phase: crate::smtp::client::Phase::Connect,
            message: format!("delivery server {} is down", self.name),
        };
        let _ = self.ctx.failover.send(Failover {
            job,
            error,
            remote_host: None,
            unsupported: None,
            untried_until_ms: Some(self.down_until_ms.load(Ordering::Relaxed)),
        });
    }

    fn attempt_context(
        &self,
        remote_host: Option<String>,
        tls: Option<String>,
    ) -> AttemptContext<'_> {
        AttemptContext {
            route: &self.name,
            remote_host: remote_host
                .or_else(|| Some(format!("{}:{}", self.settings.host, self.settings.port))),
            tls,
        }
    }
}

/// Takes jobs from the route's queue and delivers them over one
/// connection at a time until idle.
async fn worker(route: Arc<Route>) {
    let place = WorkerPlace(route.clone());
    let mut pooled: Option<Pooled> = None;
    // In a fleet, held while a connection is (about to be) open.
    let mut lease = None;
    let parking = Arc::new(tokio::sync::Notify::new());
    loop {
        if pooled.is_none() {
            lease = None;
        }
        let has_work = route
            .ready
            .wait_for_job(route.ctx.idle_timeout, &parking)
            .await;
        if !has_work || route.stopping.load(Ordering::Relaxed) {
            break;
        }
        // No new transaction while delivered outcomes wait to be written
        // (refused, or too many not committed yet).
        route.ctx.recorder.unrecorded.wait_until_recording().await;
        if pooled.is_none() {
            let wanted = || !route.ready.is_empty() && !route.stopping.load(Ordering::Relaxed);
            let Ok(granted) = route.throttle.connection_lease(wanted).await else {
                continue;
            };
            lease = granted;
        }
        // The job is taken only once the rate limit lets it go, so that a
        // transactional message queued meanwhile goes first.
        route.throttle.acquire().await;
        // The wait for the rate can be long, and the lease lost meanwhile:
        // the connection then carries nothing more (the job stays queued).
        if close_if_lease_lost(&lease, &mut pooled).await {
            continue;
        }
        let Some(job) = route.pop_with_paid_place() else {
            continue;
        };
        // Every path of `deliver` hands the job on before it is dropped.
        let hand = InHand::start(&route.stats, job);
        pooled = route.deliver(hand, pooled.take(), &lease).await;
        close_if_lease_lost(&lease, &mut pooled).await;
    }
    route.ready.leave();
    if let Some(pooled) = pooled {
        pooled.connection.quit().await;
    }
    drop(lease);
    drop(place);
    route.workers.fetch_sub(1, Ordering::AcqRel);
    // A job may have arrived while this worker was leaving.
    route.start_worker_if_needed();
}

/// A worker's place in its route's counts, given back if the worker
/// panics (a bug: its job waits for its claim's lease to run out). Left
/// counted, the route would start fewer workers than its queue needs, and
/// after `max_connections` panics none at all. The normal end gives it
/// back itself, after closing its connection; a worker dropped unfinished
/// by the runtime's shutdown has nothing to give back to.
struct WorkerPlace(Arc<Route>);

impl Drop for WorkerPlace {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let route = &self.0;
        log::error!(
            "route {}: a delivery worker panicked; its job goes again once its claim runs out",
            route.name
        );
        route.ready.leave();
        route.workers.fetch_sub(1, Ordering::AcqRel);
        route.start_worker_if_needed();
    }
}

/// Ends the connection of a lease given up (over this node's share, or
/// lost in Redis); true when the lease was lost, connection or not.
async fn close_if_lease_lost(lease: &Option<ConnectionLease>, pooled: &mut Option<Pooled>) -> bool {
    if !lease.as_ref().is_some_and(ConnectionLease::is_lost) {
        return false;
    }
    if let Some(p) = pooled.take() {
        p.connection.quit().await;
    }
    true
}

/// With VERP the envelope sender differs per recipient, so each recipient
/// gets a transaction (and a job) of its own; connections are still reused.
fn per_transaction(job: Job) -> Vec<Job> {
    if job.message.meta.return_path_domain.is_empty() || job.rcpts.len() < 2 {
        return vec![job];
    }
    job.rcpts
        .iter()
        .map(|&rcpt| Job {
            rcpts: vec![rcpt],
            ..job.clone()
        })
        .collect()
}

/// MAIL FROM for the job: the VERP return path that ties a bounce to the
/// message and recipient (and, in a fleet, the node), or the sender's own
/// (a null sender stays null).
fn mail_from(job: &Job, secret: &[u8; 32], node: Option<u32>) -> String {
    let msg = &job.message;
    if msg.meta.return_path_domain.is_empty() || msg.mail_from.is_empty() {
        return msg.mail_from.clone();
    }
    let rcpt = job.rcpts.first().map(|&(i, _)| i).unwrap_or(0);
    let tag = match node {
        Some(node) => sendengine_bounces::verp::encode_for_node(node, msg.id, rcpt, secret),
        None => sendengine_bounces::verp::encode(msg.id, rcpt, secret),
    };
    sendengine_bounces::verp::return_path(VERP_LOCAL, &tag, &msg.meta.return_path_domain)
}

/// The job's recipient addresses, in the job's order.
fn recipients(job: &Job) -> Vec<&str> {
    job.rcpts
        .iter()
        .map(|&(i, _)| job.message.recipients[i as usize].as_str())
        .collect()
}

fn tls_label(state: &TlsState) -> String {
    match state {
        TlsState::Plain => "none".to_owned(),
        TlsState::StartTls => "starttls".to_owned(),
        TlsState::Implicit => "tls".to_owned(),
        TlsState::PlainAfterTlsFailure(why) => format!("none (STARTTLS failed: {why})"),
    }
}
