//! Routing: which delivery server takes a job.
//!
//! A message's group and channel (in its spool metadata) name an ordered
//! list of delivery servers. The first one that is up takes the job. Each
//! server has a circuit breaker: a connection-level failure (refused,
//! timeout, 421, TLS) marks it down for `failover_backoff` and its traffic
//! goes to the next one; once the back-off has run out one job probes it
//! (the others still go to the next server), and its success brings the
//! traffic back, its failure starts another back-off. When every server
//! of the list is down the first one gets the job anyway, so mail keeps
//! being tried rather than parked.
//!
//! A list may name `direct`, the built-in route to the recipients' own MX
//! hosts: its jobs are split by recipient domain, each domain (site) with
//! a route of its own, made on first use and capped at
//! `[direct] max_connections_per_site` connections, and dropped once idle.
//!
//! Ready queues are bounded: a job a full queue refuses goes back to the
//! spool (due again, no attempt counted) and one a retired route refuses
//! is routed again, so no job waits where nothing will send it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;

use crate::config::DirectSection;
use crate::deliver::{Failover, Job, Leases, MxTarget, Recorder, Refused, Route, RouteContext};
use crate::dns::Resolver;
use crate::smtp::client::{Encryption, Timeouts};
use crate::tenancy::{DIRECT, DeliveryServer, Tenancy, TenancyStore};

/// The daemon-wide settings every route shares.
pub struct RouteSettings {
    pub helo_name: String,
    pub ready_capacity: usize,
    pub idle_timeout: std::time::Duration,
    pub failover_backoff: std::time::Duration,
    pub direct: DirectSection,
    pub resolver: Resolver,
    pub verp_secret: [u8; 32],
    /// `[cluster] redis`: delivery servers' limits count fleet-wide.
    pub fleet: Option<Arc<crate::deliver::FleetThrottles>>,
    /// `[cluster]`: where this node's number for VERP tags comes from.
    pub verp_node: Option<Arc<crate::cluster::delivered::SharedDelivered>>,
}

/// Where a job goes.
#[derive(Clone)]
pub enum Target {
    Relay(Arc<Route>),
    /// To the recipients' MX hosts, one site per domain.
    Direct,
}

pub struct Router {
    routes: RwLock<HashMap<String, Arc<Route>>>,
    /// Direct-delivery routes by recipient domain.
    sites: RwLock<HashMap<String, Arc<Route>>>,
    tenancy: Arc<TenancyStore>,
    ctx: RouteContext,
    direct: DirectSection,
    resolver: Resolver,
}

impl Router {
    /// Builds a route for every delivery server of the current snapshot and
    /// returns the receiver the failover loop (`run_failover`) reads.
    pub fn new(
        tenancy: Arc<TenancyStore>,
        settings: RouteSettings,
        recorder: Recorder,
    ) -> (Arc<Router>, mpsc::UnboundedReceiver<Failover>) {
        let (failover, rx) = mpsc::unbounded_channel();
        let ctx = RouteContext {
            helo_name: settings.helo_name,
            ready_capacity: settings.ready_capacity,
            idle_timeout: settings.idle_timeout,
            failover_backoff: settings.failover_backoff,
            recorder,
            failover,
            verp_secret: Arc::new(settings.verp_secret),
            fleet: settings.fleet,
            verp_node: settings.verp_node,
            schedule_wake: Arc::new(tokio::sync::Notify::new()),
        };
        let snapshot = tenancy.snapshot();
        let routes = snapshot
            .servers
            .iter()
            .map(|s| (s.name.clone(), Arc::new(Route::new(s, ctx.clone()))))
            .collect();
        let router = Arc::new(Router {
            routes: RwLock::new(routes),
            sites: RwLock::new(HashMap::new()),
            tenancy,
            ctx,
            direct: settings.direct,
            resolver: settings.resolver,
        });
        (router, rx)
    }

    pub fn route(&self, name: &str) -> Option<Arc<Route>> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Every relay route and direct-delivery site.
    pub fn all(&self) -> Vec<Arc<Route>> {
        let relays = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let sites = self.sites.read().unwrap_or_else(|p| p.into_inner());
        relays.values().chain(sites.values()).cloned().collect()
    }

    /// Where mail of `group` on `channel` goes, skipping `tried` servers.
    /// `None` only when every server of the list was tried.
    pub fn choose(
        &self,
        snapshot: &Tenancy,
        group: &str,
        channel: &str,
        tried: &[String],
    ) -> Option<Target> {
        self.pick(snapshot, group, channel, tried)
            .map(|(target, _)| target)
    }

    /// Like `choose`, and says whether the target takes jobs now (false:
    /// every candidate is backed off and this is the first of the list).
    fn pick(
        &self,
        snapshot: &Tenancy,
        group: &str,
        channel: &str,
        tried: &[String],
    ) -> Option<(Target, bool)> {
        // A group deleted since the message was queued: it waits for a retry.
        let names = snapshot.group(group)?.servers_for(channel);
        let candidates: Vec<Target> = names
            .iter()
            .filter(|n| !tried.contains(n))
            .filter_map(|n| match n.as_str() {
                DIRECT => Some(Target::Direct),
                name => self.route(name).map(Target::Relay),
            })
            .collect();
        let up = |t: &&Target| match t {
            Target::Relay(r) => r.take_job(),
            Target::Direct => true,
        };
        match candidates.iter().find(up) {
            Some(target) => Some((target.clone(), true)),
            None => candidates.first().map(|target| (target.clone(), false)),
        }
    }

    /// The claims the delivery side holds.
    pub fn leases(&self) -> &Arc<Leases> {
        &self.ctx.recorder.leases
    }

    /// The recorder every route writes outcomes with.
    pub fn recorder(&self) -> &Recorder {
        &self.ctx.recorder
    }

    /// Wakes the scheduler: a ready queue fell to half full, or recipients
    /// were made due now. A wake while it is awake is kept for its next sleep.
    pub fn schedule_wake(&self) -> &tokio::sync::Notify {
        &self.ctx.schedule_wake
    }

    /// Queues a job where its group and channel say.
    pub fn dispatch(&self, job: Job) {
        let snapshot = self.tenancy.snapshot();
        let meta = &job.message.meta;
        match self.choose(&snapshot, &meta.group, &meta.channel, &job.tried) {
            Some(Target::Relay(route)) => self.queue_on(&route, job),
            Some(Target::Direct) => self.dispatch_direct(job),
            None => {
                // The recipients wait for a retry.
                let error = crate::smtp::client::SessionError::Protocol {
                    phase: crate::smtp::client::Phase::Connect,
                    message: no_server_reason(&snapshot, &meta.group, &meta.channel),
                };
                let at = crate::deliver::AttemptContext {
                    route: &meta.route,
                    remote_host: None,
                    tls: None,
                };
                self.ctx.recorder.session_failed(&job, &error, &at);
            }
        }
    }

    /// Splits a job by recipient domain and queues each part on its site.
    pub fn dispatch_direct(&self, job: Job) {
        let mut by_domain: Vec<(String, Vec<(u32, u32)>)> = Vec::new();
        for &(rcpt, attempts) in &job.rcpts {
            let domain = domain_of(&job.message.recipients[rcpt as usize]);
            match by_domain.iter_mut().find(|(d, _)| *d == domain) {
                Some((_, list)) => list.push((rcpt, attempts)),
                None => by_domain.push((domain, vec![(rcpt, attempts)])),
            }
        }
        for (domain, rcpts) in by_domain {
            let part = Job {
                rcpts,
                tried: Vec::new(),
                ..job.clone()
            };
            self.queue_on(&self.site(&domain), part);
        }
    }

    /// Pushes a job onto a route and deals with what it refuses: a full
    /// queue's parts go back to the spool; a retired route's parts are
    /// routed again (to the route that replaced it), once; after that
    /// they go back to the spool too.
    pub fn queue_on(&self, route: &Arc<Route>, job: Job) {
        for refused in route.push(job) {
            self.handle_refused(refused, true);
        }
    }

    /// [`Router::queue_on`] for a place reserved at admission.
    pub fn queue_reserved(&self, route: &Arc<Route>, job: Job) {
        for refused in route.push_reserved(job) {
            self.handle_refused(refused, true);
        }
    }

    fn handle_refused(&self, refused: Refused, route_again: bool) {
        match refused {
            Refused::Closed(job) if route_again => self.route_again(job),
            Refused::Closed(job) | Refused::Full(job) => self.ctx.recorder.release(job),
        }
    }

    /// A job whose route was retired under it: where it goes now.
    fn route_again(&self, job: Job) {
        let snapshot = self.tenancy.snapshot();
        let meta = &job.message.meta;
        match self.choose(&snapshot, &meta.group, &meta.channel, &job.tried) {
            Some(Target::Relay(route)) => {
                for refused in route.push(job) {
                    self.handle_refused(refused, false);
                }
            }
            Some(Target::Direct) => self.dispatch_direct(job),
            None => self.ctx.recorder.release(job),
        }
    }

    /// The direct-delivery route of `domain`, made on first use.
    fn site(&self, domain: &str) -> Arc<Route> {
        if let Some(route) = self
            .sites
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
        {
            return route.clone();
        }
        let mut sites = self.sites.write().unwrap_or_else(|p| p.into_inner());
        sites
            .entry(domain.to_owned())
            .or_insert_with(|| {
                let site = Arc::new(self.direct_server(domain));
                let mx = MxTarget {
                    domain: domain.to_owned(),
                    resolver: self.resolver.clone(),
                };
                Arc::new(Route::direct_site(&site, mx, self.ctx.clone()))
            })
            .clone()
    }

    /// The settings direct delivery to `domain`'s MX hosts uses (`host`
    /// is the domain; the route looks its MX hosts up).
    pub fn direct_server(&self, domain: &str) -> DeliveryServer {
        DeliveryServer {
            name: site_name(domain),
            host: domain.to_owned(),
            port: self.direct.port,
            encryption: Encryption::StartTlsOpportunistic,
            timeout: self.direct.timeout,
            timeouts: Timeouts::with_connection_timeout(self.direct.timeout),
            max_connections: self.direct.max_connections_per_site,
            max_messages_per_connection: 100,
            auth: None,
            tls_verify: false,
            rate_per_second: None,
            rate_per_hour: None,
            rate_per_day: None,
            mail_from_domain: None,
            enforced_from: None,
            sender_info_as_mfrom: false,
            sender_info_as_from: false,
            link_tracking_domain: None,
            open_tracking_domain: None,
            enabled: true,
        }
    }

    pub fn stop(&self) {
        self.all().iter().for_each(|r| {
            r.stop();
        });
    }

    /// Brings the routes in line with the current tenancy: a new server
    /// gets a route, a changed one a fresh route, a deleted one none. The
    /// jobs waiting on a replaced route are routed again; transactions in
    /// flight finish on their old connections.
    pub fn sync(&self) {
        let snapshot = self.tenancy.snapshot();
        let mut retired = Vec::new();
        {
            let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
            for server in &snapshot.servers {
                let unchanged = routes
                    .get(&server.name)
                    .is_some_and(|r| *r.server == **server);
                if !unchanged {
                    let fresh = Arc::new(Route::new(server, self.ctx.clone()));
                    if let Some(old) = routes.insert(server.name.clone(), fresh) {
                        retired.push(old);
                    }
                }
            }
            routes.retain(|name, route| {
                let keep = snapshot.server(name).is_some();
                if !keep {
                    retired.push(route.clone());
                }
                keep
            });
        }
        for route in retired {
            for job in route.stop() {
                self.dispatch(job);
            }
        }
    }

    /// Hands failed-over jobs to the next server, or records the failure
    /// when none is left. Ends when every route is gone.
    pub async fn run_failover(self: Arc<Self>, mut failed: mpsc::UnboundedReceiver<Failover>) {
        while let Some(failover) = failed.recv().await {
            let Failover {
                job,
                error,
                remote_host,
                unsupported,
                untried_until_ms,
            } = failover;
            let snapshot = self.tenancy.snapshot();
            let meta = &job.message.meta;
            let next = self.pick(&snapshot, &meta.group, &meta.channel, &job.tried);
            match (next, unsupported) {
                (Some((Target::Relay(route), true)), _) => self.queue_on(&route, job),
                // A message the last server could not carry waits for a
                // backed-off next one rather than bounce untried there.
                (Some((Target::Relay(route), false)), Some(_)) => self.queue_on(&route, job),
                (Some((Target::Direct, _)), _) => self.dispatch_direct(job),
                (_, unsupported) => {
                    let last = job.tried.last().cloned().unwrap_or_default();
                    let at = crate::deliver::AttemptContext {
                        route: &last,
                        remote_host,
                        tls: None,
                    };
                    match (unsupported, untried_until_ms) {
                        (Some(refusal), _) => {
                            let replies = vec![refusal; job.rcpts.len()];
                            self.ctx.recorder.replies(&job, &replies, &at);
                        }
                        (None, Some(until)) => self.ctx.recorder.postpone(job, until, &error, &at),
                        (None, None) => self.ctx.recorder.session_failed(&job, &error, &at),
                    }
                }
            }
        }
    }

    /// The name of the route a recipient would be queued on now, for the
    /// scheduler's per-route room; like `pick`, without taking a probe.
    /// `None` when the group lists no server or no longer exists.
    pub fn route_name_for(
        &self,
        snapshot: &Tenancy,
        group: &str,
        channel: &str,
        address: &str,
    ) -> Option<String> {
        let names = snapshot.group(group)?.servers_for(channel);
        let mut first = None;
        for name in names.iter() {
            let available = match name.as_str() {
                DIRECT => true,
                name => match self.route(name) {
                    Some(route) => route.is_available(),
                    None => continue,
                },
            };
            first.get_or_insert(name);
            if available {
                first = Some(name);
                break;
            }
        }
        first.map(|name| match name.as_str() {
            DIRECT => site_name(&domain_of(address)),
            name => name.to_owned(),
        })
    }

    /// Room left on the route named by `route_name_for` (a site not made
    /// yet has a whole queue's room).
    pub fn room_of(&self, name: &str, priority: bool) -> usize {
        self.route_named(name)
            .map_or(self.ctx.ready_capacity, |r| r.ready.room(priority))
    }

    /// Whether the workers' takes from that lane will wake the scheduler
    /// (`ReadyQueue::wakes_when_taken`); a site not made yet has none.
    pub fn lane_wakes_scheduler(&self, name: &str, priority: bool) -> bool {
        self.route_named(name)
            .is_some_and(|r| r.ready.wakes_when_taken(priority))
    }

    /// The route or direct-delivery site a name of `route_name_for` names.
    fn route_named(&self, name: &str) -> Option<Arc<Route>> {
        let site = name
            .strip_prefix(DIRECT)
            .and_then(|rest| rest.strip_prefix(':'));
        match site {
            Some(domain) => self
                .sites
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(domain)
                .cloned(),
            None => self.route(name),
        }
    }

    /// Drops direct-delivery sites with nothing queued and no connection;
    /// the next mail for the domain makes a fresh one.
    pub fn drop_idle_sites(&self) {
        let mut idle = Vec::new();
        self.sites
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, site| {
                let keep = !site.is_idle();
                if !keep {
                    idle.push(site.clone());
                }
                keep
            });
        // A push racing with this lands in the closed queue or is refused;
        // either way it is routed again, to a fresh site.
        for site in idle {
            site.stop()
                .into_iter()
                .for_each(|job| self.route_again(job));
        }
    }

    /// Takes the queued recipients `pick` chooses out of every ready
    /// queue (for an operator's action), as jobs of their own.
    pub fn take_queued(&self, mut pick: impl FnMut(&Job, u32) -> bool) -> Vec<Job> {
        self.all()
            .iter()
            .flat_map(|route| route.ready.take_matching(&mut pick))
            .collect()
    }
}

/// The route name of the direct-delivery site of `domain`.
fn site_name(domain: &str) -> String {
    format!("{DIRECT}:{domain}")
}

/// The domain of an address, lowercased: what a direct-delivery site is for.
fn domain_of(address: &str) -> String {
    address
        .rsplit('@')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Why mail of `group` on `channel` has nowhere to go, for the operator.
fn no_server_reason(snapshot: &Tenancy, group: &str, channel: &str) -> String {
    match snapshot.group(group) {
        None => format!("user group `{group}` no longer exists: its mail has no delivery server"),
        Some(g) if g.servers_for(channel).is_empty() => format!(
            "no delivery server of group `{group}` is enabled for {channel} mail \
             (sendctl server list; sendctl server enable NAME)"
        ),
        Some(_) => format!(
            "no delivery server of group `{group}` for {channel} mail is reachable: each failed or is skipped after a failure"
        ),
    }
}
