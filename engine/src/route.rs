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
//! `[direct] max_connections_per_site` connections.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;

use crate::config::DirectSection;
use crate::deliver::{Failover, Job, MxTarget, Recorder, Route, RouteContext};
use crate::dns::Resolver;
use crate::smtp::client::Encryption;
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

    /// Queues a job where its group and channel say.
    pub fn dispatch(&self, job: Job) {
        let snapshot = self.tenancy.snapshot();
        let meta = &job.message.meta;
        match self.choose(&snapshot, &meta.group, &meta.channel, &job.tried) {
            Some(Target::Relay(route)) => route.push(job),
            Some(Target::Direct) => self.dispatch_direct(job),
            None => {
                // Every server was tried: the recipients wait for a retry.
                let error = crate::smtp::client::SessionError::Protocol {
                    phase: crate::smtp::client::Phase::Connect,
                    message: "no delivery server of the group is reachable".into(),
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
            let address = &job.message.recipients[rcpt as usize];
            let domain = address
                .rsplit('@')
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
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
            self.site(&domain).push(part);
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
                let site = Arc::new(DeliveryServer {
                    name: format!("{DIRECT}:{domain}"),
                    host: domain.to_owned(),
                    port: self.direct.port,
                    encryption: Encryption::StartTlsOpportunistic,
                    timeout: self.direct.timeout,
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
                });
                let mx = MxTarget {
                    domain: domain.to_owned(),
                    resolver: self.resolver.clone(),
                };
                Arc::new(Route::direct_site(&site, mx, self.ctx.clone()))
            })
            .clone()
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
        while let Some(Failover {
            job,
            error,
            remote_host,
        }) = failed.recv().await
        {
            let snapshot = self.tenancy.snapshot();
            let meta = &job.message.meta;
            let next = self.pick(&snapshot, &meta.group, &meta.channel, &job.tried);
            match next {
                Some((Target::Relay(route), true)) => route.push(job),
                Some((Target::Direct, _)) => self.dispatch_direct(job),
                _ => {
                    let last = job.tried.last().cloned().unwrap_or_default();
                    let at = crate::deliver::AttemptContext {
                        route: &last,
                        remote_host,
                        tls: None,
                    };
                    self.ctx.recorder.session_failed(&job, &error, &at);
                }
            }
        }
    }

    /// How many marketing jobs the scheduler may claim for all routes.
    pub fn room(&self) -> usize {
        self.all().iter().map(|r| r.ready.room()).sum()
    }
}
