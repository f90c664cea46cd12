//! Routing: which delivery server takes a job.
//!
//! A message's group and channel (in its spool metadata) name an ordered
//! list of delivery servers. The first one that is up takes the job;
//! a server that failed at connection level is down for `failover_backoff`
//! and its traffic goes to the next one, and comes back once it is up
//! again (the first job after the back-off tries it). When every server
//! of the list is down the first one gets the job anyway, so mail keeps
//! being tried rather than parked.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;

use crate::deliver::{Failover, Job, Recorder, Route, RouteContext};

/// The daemon-wide settings every route shares.
pub struct RouteSettings {
    pub helo_name: String,
    pub ready_capacity: usize,
    pub idle_timeout: std::time::Duration,
    pub failover_backoff: std::time::Duration,
}
use crate::tenancy::{Tenancy, TenancyStore};

pub struct Router {
    routes: RwLock<HashMap<String, Arc<Route>>>,
    tenancy: Arc<TenancyStore>,
    ctx: RouteContext,
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
        };
        let snapshot = tenancy.snapshot();
        let routes = snapshot
            .servers
            .iter()
            .map(|s| (s.name.clone(), Arc::new(Route::new(s, ctx.clone()))))
            .collect();
        let router = Arc::new(Router {
            routes: RwLock::new(routes),
            tenancy,
            ctx,
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

    pub fn all(&self) -> Vec<Arc<Route>> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The route for mail of `group` on `channel`, skipping `tried` ones.
    /// `None` only when every server of the list was tried.
    pub fn choose(
        &self,
        snapshot: &Tenancy,
        group: &str,
        channel: &str,
        tried: &[String],
    ) -> Option<Arc<Route>> {
        let names = snapshot.group(group).servers_for(channel);
        let candidates: Vec<Arc<Route>> = names
            .iter()
            .filter(|n| !tried.contains(n))
            .filter_map(|n| self.route(n))
            .collect();
        candidates
            .iter()
            .find(|r| r.is_available())
            .or(candidates.first())
            .cloned()
    }

    /// Queues a job on the route its group and channel give.
    pub fn dispatch(&self, job: Job) {
        let snapshot = self.tenancy.snapshot();
        let meta = &job.message.meta;
        match self.choose(&snapshot, &meta.group, &meta.channel, &job.tried) {
            Some(route) => route.push(job),
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
            let next = self.choose(&snapshot, &meta.group, &meta.channel, &job.tried);
            match next {
                Some(route) if route.is_available() => route.push(job),
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
