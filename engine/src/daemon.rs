//! Start-up and the one graceful shutdown path.
//!
//! Start: open the spool (recovery runs there), the event log, the routes,
//! bind every listener (a busy port is an error at start, not later), then
//! start the scheduler and the accept loops; then tell systemd we are
//! ready. Stop (SIGTERM or SIGINT): new connections get 421, sessions
//! finish what they are doing (a session in DATA gets its commit and its
//! reply), deliveries in flight finish and every delivery connection ends
//! with QUIT, all within `[delivery] shutdown_grace`; then the listeners
//! close and the spool and the event log are closed. Whatever was claimed
//! but not delivered is rescheduled by the spool's recovery at the next
//! start. Reload (SIGHUP): see `reload`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sendengine_queue::{Spool, SpoolConfig};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::deliver::{Recorder, RetryPolicy, SharedRetry};
use crate::engine::Engine;
use crate::events::EventLog;
use crate::events::webhook::WebhookSenders;
use crate::inject::{ListenerControl, ServerContext, SharedState, serve_listener};
use crate::route::{RouteSettings, Router};
use crate::secrets::Secrets;
use crate::tenancy::TenancyStore;

/// How often the end of the drain is checked for at shutdown.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// How long a stopping daemon waits, at most, for its delivery connections'
/// replies to QUIT.
const QUIT_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the spool in {dir}: {message}")]
    Spool { dir: String, message: String },
    #[error("cannot open the event log {path}: {source}")]
    Events {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source} (is another process using the port?)")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS certificate or key: {0}")]
    Tls(String),
    #[error("configuration objects: {0}")]
    Tenancy(String),
    #[error("{0}")]
    Admin(#[from] crate::admin::AdminStartError),
    #[error("webhooks: {0}")]
    Webhooks(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("{0}")]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("cannot start the DKIM signing threads: {0}")]
    Signing(std::io::Error),
}

/// `[cluster] redis`: the fleet-wide throttles of delivery servers.
fn fleet_throttles(
    cluster: Option<&Arc<crate::cluster::Cluster>>,
) -> Result<Option<Arc<crate::deliver::FleetThrottles>>, StartError> {
    let Some(cluster) = cluster else {
        return Ok(None);
    };
    let Some(redis) = &cluster.settings.redis else {
        return Ok(None);
    };
    let fleet = cluster.fleet.clone();
    crate::deliver::FleetThrottles::new(crate::deliver::FleetSettings {
        redis: redis.clone(),
        prefix: cluster.settings.redis_prefix.clone(),
        node: cluster.settings.node.clone(),
        live_nodes: Arc::new(move || fleet.live_nodes()),
    })
    .map(Some)
    .map_err(StartError::Cluster)
}

/// Runs the daemon until SIGTERM or SIGINT, reloading `config_path` on SIGHUP.
pub async fn run(config: Config, config_path: PathBuf) -> Result<(), StartError> {
    // Only aws-lc-rs is in the build; installing it makes that explicit.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Before start-up, so that an early SIGHUP does not end the process.
    let mut signals = Signals::install().map_err(StartError::Signals)?;
    let mut daemon = Daemon::start(config).await?;
    for addr in &daemon.local_addrs {
        crate::logging::announce(&format!("listening on {addr}"));
    }
    let notifier = crate::systemd::notifier();
    notifier.ready();
    crate::logging::announce("ready");
    if notifier.is_enabled() {
        tokio::spawn(report_status(
            daemon.engine.clone(),
            daemon.shutdown.subscribe(),
        ));
    }
    while let Wanted::Reload = signals.next().await {
        notifier.reloading();
        daemon.reload(&config_path);
        notifier.ready();
    }
    notifier.stopping();
    notifier.status("shutting down");
    daemon.shutdown().await;
    crate::logging::announce("stopped");
    Ok(())
}

/// What a signal asks for.
enum Wanted {
    Reload,
    Stop,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Wanted {
        tokio::select! {
            _ = self.term.recv() => Wanted::Stop,
            _ = self.int.recv() => Wanted::Stop,
            _ = self.hup.recv() => Wanted::Reload,
        }
    }
}

/// Keeps systemd's `STATUS=` line up to date with the queue size.
async fn report_status(engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) {
    let notifier = crate::systemd::notifier();
    loop {
        let spool = engine.spool.clone();
        if let Ok(Ok(stats)) = tokio::task::spawn_blocking(move || spool.stats()).await {
            notifier.status(&crate::systemd::queue_status(
                stats.messages,
                stats.recipients,
            ));
        }
        tokio::select! {
            _ = tokio::time::sleep(crate::systemd::STATUS_INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Sets the gauges that are read rather than counted (queue sizes, spool
/// file size, per-route depth and connections, outcomes waiting for their
/// commit) every
/// `metrics::REFRESH_INTERVAL`. It lives here, not in `metrics`, because
/// it reads the `Engine`, and `metrics` sits below it.
async fn refresh_gauges(engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) {
    let mut routes_before = HashSet::new();
    loop {
        refresh_spool_gauges(&engine).await;
        let routes = engine.router.all();
        routes_before = crate::metrics::set_route_gauges(
            routes.iter().map(|route| crate::metrics::RouteGauges {
                name: &route.name,
                ready: route.ready.len(),
                open_connections: route.open_connections(),
                max_connections: route.server.max_connections,
            }),
            routes_before,
        );
        let committing = engine.router.recorder().unrecorded.committing_now();
        ::metrics::gauge!(crate::deliver::COMMITTING_GAUGE).set(committing as f64);
        tokio::select! {
            _ = tokio::time::sleep(crate::metrics::REFRESH_INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// The counts walk the schedule index, so they are read off the async
/// threads.
async fn refresh_spool_gauges(engine: &Engine) {
    let spool = engine.spool.clone();
    let read = tokio::task::spawn_blocking(move || {
        Ok::<_, sendengine_queue::SpoolError>((spool.stats()?, spool.queue_counts()?))
    })
    .await;
    // A spool that cannot be read keeps its last values; the reason is
    // in the log of whatever failed with it.
    if let Ok(Ok((stats, counts))) = read {
        crate::metrics::set_spool_gauges(&stats, &counts);
    }
}

/// A running daemon; tests start one in-process with `Daemon::start`.
pub struct Daemon {
    pub engine: Arc<Engine>,
    pub local_addrs: Vec<std::net::SocketAddr>,
    shutdown: watch::Sender<bool>,
    /// Set once the drain after `shutdown` is over: listeners close.
    closed: watch::Sender<bool>,
    /// What new SMTP sessions get; replaced on reload.
    contexts: watch::Sender<Arc<ServerContext>>,
    /// The configuration in force (live keys as last reloaded).
    config: Config,
    retry: SharedRetry,
    slots: Arc<Semaphore>,
    max_connections: usize,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Runs as long as routes exist; stopped last.
    failover_task: tokio::task::JoinHandle<()>,
    webhooks: WebhookSenders,
    amqp_out: crate::amqp_out::AmqpOutSenders,
    /// `[cluster]`: this node's rows of the fleet's delivered index.
    fleet_index: Option<Arc<crate::cluster::delivered::SharedDelivered>>,
}

/// How long a stopping node waits for its last delivered-index rows to
/// reach PostgreSQL (the writer lingers 100 ms per batch).
const FLEET_INDEX_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

impl Daemon {
    pub async fn start(config: Config) -> Result<Daemon, StartError> {
        let started = std::time::Instant::now();
        let spool = open_spool(&config).await?;
        let (mut feeds, webhooks) = crate::events::webhook::start(&spool, &config.events.webhooks)
            .map_err(StartError::Webhooks)?;
        let amqp_out = crate::amqp_out::start(&spool, &config.amqp_out, &mut feeds);
        let events_path = config.events.path.clone().unwrap_or_default();
        let settings = config.events.log_settings();
        let outlets = crate::events::Outlets {
            webhooks: Some(feeds),
            daily: Some(crate::events::daily::DailyCounters::new(spool.clone())),
        };
        let events =
            EventLog::start(&settings, Some(outlets)).map_err(|source| StartError::Events {
                path: events_path.display().to_string(),
                source,
            })?;
        let retry = SharedRetry::new(retry_policy(&config));
        let cluster = config.cluster.clone().map(|settings| {
            let spool = spool.clone();
            let counts: crate::cluster::quota::SpoolCounts =
                Arc::new(move |name, window, bucket| {
                    // An unreadable count settles as spent: fewer accepted.
                    spool.usage_in(name, window, bucket).unwrap_or(u64::MAX)
                });
            Arc::new(crate::cluster::Cluster::new(settings, counts))
        });
        let fleet_index = crate::cluster::delivered::SharedDelivered::join(
            cluster.as_deref(),
            config.bounce_in.retain,
        )
        .await;
        let recorder = Recorder {
            spool: spool.clone(),
            events: events.clone(),
            retry: retry.clone(),
            auto_suppress: config.suppression.auto_suppress,
            index_retain: config.bounce_in.retain,
            leases: crate::deliver::Leases::new(crate::deliver::CLAIM_LEASE),
            unrecorded: Default::default(),
            fleet_index: fleet_index.clone(),
        };
        let secrets = load_secrets(&config)?;
        let tenancy = {
            let spool = spool.clone();
            let seeds = config.seeds.clone();
            tokio::task::spawn_blocking(move || TenancyStore::open(spool, secrets, &seeds))
                .await
                .map_err(|e| StartError::Tenancy(e.to_string()))?
                .map_err(|e| StartError::Tenancy(e.to_string()))?
        };
        let tenancy = Arc::new(tenancy);
        let resolver = if config.dns.nameservers.is_empty() {
            crate::dns::Resolver::system()
                .map_err(|e| StartError::Tenancy(format!("DNS resolver: {e}")))?
        } else {
            crate::dns::Resolver::with_nameservers(&config.dns.nameservers)
        };
        let fleet_throttles = fleet_throttles(cluster.as_ref())?;
        let (router, failovers) = Router::new(
            tenancy.clone(),
            RouteSettings {
                helo_name: config.hostname.clone(),
                ready_capacity: config.delivery.ready_queue_size,
                idle_timeout: config.delivery.idle_timeout,
                failover_backoff: config.delivery.failover_backoff,
                direct: config.direct.clone(),
                resolver: resolver.clone(),
                verp_secret: tenancy.secrets().derived("verp"),
                fleet: fleet_throttles.clone(),
                verp_node: fleet_index.clone(),
            },
            recorder,
        );
        let failover_task = tokio::spawn(router.clone().run_failover(failovers));
        let tracker = config.tracking.as_ref().map(|section| {
            Arc::new(crate::tracking::Tracker {
                tokens: tracking_tokens(&tenancy),
                scheme: section.scheme,
                retain: section.retain,
                node: cluster_node(&config),
            })
        });
        let engine = Arc::new(Engine {
            hostname: config.hostname.clone(),
            x_mailer: config.x_mailer.clone(),
            spool,
            events,
            events_path: config.events.path.clone(),
            router,
            tenancy,
            default_user: config.smtp_in.default_user.clone(),
            resolver,
            cluster,
            tracking: tracker,
            signing: crate::signing_pool::SigningPool::start(crate::config::available_cpus())
                .map_err(StartError::Signing)?,
        });
        let tls = tls_acceptor(&config)?;
        let mut listeners = Vec::new();
        for addr in &config.smtp_in.listen {
            let listener =
                crate::smtp::listener::bind(*addr).map_err(|source| StartError::Listen {
                    addr: *addr,
                    source,
                })?;
            listeners.push(listener);
        }
        let local_addrs: Vec<std::net::SocketAddr> = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        let admin_listener = crate::admin::bind(&config.admin)?;
        let bounce_listeners = crate::bounce_in::bind(&config.bounce_in.listen)
            .await
            .map_err(|(addr, source)| StartError::Listen { addr, source })?;
        let tracking_listener = bind_tracking(&config).await?;
        let http_listeners = crate::http_in::bind(&config.http_in)
            .await
            .map_err(|(addr, source)| StartError::Listen { addr, source })?;
        let http_tls = match (&config.http_in.tls_cert, &config.http_in.tls_key) {
            (Some(cert), Some(key)) => {
                Some(TlsAcceptor::from(Arc::new(server_tls_config(cert, key)?)))
            }
            _ => None,
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        // Cluster mode: heartbeat and fleet actions (nothing without [cluster]).
        let fleet_tasks = crate::admin::fleet::start(&engine, shutdown_rx.clone())
            .await
            .map_err(StartError::Cluster)?;
        let max_connections = config.smtp_in.max_connections;
        let slots = Arc::new(Semaphore::new(max_connections));
        let shared = SharedState::new(&config.smtp_in);
        let (contexts, _) = watch::channel(server_context(&engine, &config, tls, &shared));
        let (closed, closed_rx) = watch::channel(false);
        let mut tasks = vec![
            tokio::spawn(crate::schedule::run(engine.clone(), shutdown_rx.clone())),
            tokio::spawn(crate::verify::run(
                engine.clone(),
                config.dns.verify_interval,
                shutdown_rx.clone(),
            )),
        ];
        tasks.extend(fleet_tasks);
        tasks.extend(crate::metrics::start(&config.metrics, shutdown_rx.clone())?);
        if let Some(throttles) = fleet_throttles {
            tasks.push(tokio::spawn(throttles.run(shutdown_rx.clone())));
        }
        if let Some(cluster) = engine.cluster.clone() {
            let router = engine.router.clone();
            let local = crate::cluster::shared::Local {
                tenancy: engine.tenancy.clone(),
                spool: engine.spool.clone(),
                routes_changed: Box::new(move || router.sync()),
            };
            tasks.extend(crate::cluster::shared::start(
                local,
                cluster,
                shutdown_rx.clone(),
            ));
        }
        if crate::metrics::enabled() {
            tasks.push(tokio::spawn(refresh_gauges(
                engine.clone(),
                shutdown_rx.clone(),
            )));
        }
        if let Some(listener) = admin_listener {
            let admin = Arc::new(crate::admin::AdminContext {
                engine: engine.clone(),
                started,
                listeners: local_addrs.clone(),
                events_path: config.events.path.clone(),
            });
            tasks.push(tokio::spawn(crate::admin::serve(
                listener,
                admin,
                shutdown_rx.clone(),
            )));
        }
        if !bounce_listeners.is_empty() {
            tasks.push(tokio::spawn(crate::bounce_in::serve(
                bounce_listeners,
                Arc::new(crate::bounce_in::BounceContext::new(&engine, &config)),
                shutdown_rx.clone(),
            )));
        }
        if let Some(listener) = tracking_listener {
            if let Ok(addr) = listener.local_addr() {
                crate::logging::announce(&format!("tracking listener on {addr}"));
            }
            tasks.push(tokio::spawn(crate::tracking::serve(
                listener,
                engine.spool.clone(),
                engine.events.clone(),
                tracking_tokens(&engine.tenancy),
                cluster_node(&config),
                shutdown_rx.clone(),
            )));
        }
        // RabbitMQ front doors: stopped with the listeners, before the spool.
        tasks.extend(crate::amqp_in::start(
            &engine,
            &config.amqp_in,
            crate::amqp_in::Limits {
                max_message_size: config.smtp_in.max_message_size,
                max_recipients: config.smtp_in.max_recipients,
            },
            &shutdown_rx,
        ));
        // The HTTP API: stopped with the listeners (requests in flight are
        // answered), before the spool.
        tasks.extend(
            crate::http_in::start(
                &engine,
                &config.http_in,
                config.smtp_in.max_message_size,
                http_listeners,
                http_tls,
                &shutdown_rx,
            )
            .map_err(|e| StartError::Tls(format!("http_in: {e}")))?,
        );
        for listener in listeners {
            let control = ListenerControl {
                context: contexts.subscribe(),
                slots: slots.clone(),
                shutdown: shutdown_rx.clone(),
                closed: closed_rx.clone(),
            };
            tasks.push(tokio::spawn(serve_listener(listener, control)));
        }
        Ok(Daemon {
            engine,
            local_addrs,
            shutdown,
            closed,
            contexts,
            config,
            retry,
            slots,
            max_connections,
            tasks,
            failover_task,
            webhooks,
            amqp_out,
            fleet_index,
        })
    }

    /// Drains and stops: see the module comment for the order.
    pub async fn shutdown(&mut self) {
        let grace = self.config.delivery.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        // Sessions say goodbye at their next command, listeners answer 421,
        // the scheduler stops; routes take no new jobs, workers finish the
        // transaction they are in.
        let _ = self.shutdown.send(true);
        // Announced once the flag is set, so that a client that reads this
        // line and connects is refused.
        crate::logging::announce("shutting down");
        self.engine.router.stop();
        // Every session holds a slot; all slots back means all sessions ended.
        let all = self.max_connections as u32;
        let sessions = tokio::time::timeout_at(deadline, self.slots.acquire_many(all)).await;
        if sessions.is_err() {
            log::warn!(
                "SMTP sessions still open after the shutdown grace of {}s: closing them",
                grace.as_secs()
            );
        }
        if let Some(cluster) = &self.engine.cluster {
            cluster.quota.shutdown().await;
        }
        let in_flight =
            wait_for_routes(&self.engine.router, deadline, |r| r.stats.in_flight()).await;
        if in_flight > 0 {
            log::warn!(
                "{in_flight} deliveries still in flight after the shutdown grace of {}s: \
                 they are retried after the restart",
                grace.as_secs()
            );
        }
        // Delivery connections say QUIT, as a polite client does; a server
        // slow to answer is not waited for past the grace or `QUIT_WAIT`.
        let quit_by = deadline.min(tokio::time::Instant::now() + QUIT_WAIT);
        wait_for_routes(&self.engine.router, quit_by, |r| r.open_connections()).await;
        let _ = self.closed.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        self.failover_task.abort();
        // The last outcomes' events into the webhook backlogs while the spool
        // is open: the first flush waits for the spool's commits, whose
        // completions may emit events that the second one takes.
        let events = self.engine.events.clone();
        let _ = tokio::task::spawn_blocking(move || (events.flush(), events.flush())).await;
        self.webhooks.stop().await;
        self.amqp_out.stop().await;
        let spool = self.engine.spool.clone();
        let _ = tokio::task::spawn_blocking(move || spool.shutdown()).await;
        // The last outcomes' rows, committed just now, into the fleet's index.
        if let Some(index) = &self.fleet_index {
            let left = index
                .drain(tokio::time::Instant::now() + FLEET_INDEX_DRAIN)
                .await;
            if left > 0 {
                log::warn!(
                    "{left} delivered-index rows not written to the cluster database at shutdown: \
                     bounces for them reaching other nodes will not be tied to their tenant"
                );
            }
        }
        self.engine.events.flush();
    }

    /// Reopens the event log, re-reads the configuration file and applies
    /// what can change while running (see `reload`). A file that does not
    /// load, or a TLS certificate that does not, is refused and the
    /// running configuration stays.
    pub fn reload(&mut self, path: &Path) {
        log::info!("reloading {}", path.display());
        // Whatever the file holds: logrotate moved the event log away and
        // new events go to a fresh file at the path.
        self.engine.events.reopen();
        let applied = Config::load(path)
            .map_err(|e| e.to_string())
            .and_then(|new| self.apply(new));
        match applied {
            Ok(plan) => log::info!("reloaded {}: {}", path.display(), describe(&plan)),
            Err(e) => log::error!("reload refused, the running configuration stays: {e}"),
        }
    }

    /// Applies the live keys of `new`; everything or nothing.
    pub fn apply(&mut self, new: Config) -> Result<crate::reload::ReloadPlan, String> {
        let plan = crate::reload::plan(&self.config, &new);
        let tls = tls_acceptor(&new).map_err(|e| e.to_string())?;
        let log_spec = crate::logging::filter_spec(new.log.filter.as_deref());
        let log_filter = crate::logging::Filter::parse(&log_spec)
            .map_err(|e| format!("log filter `{log_spec}`: {e}"))?;
        crate::logging::set_filter(log_filter);
        self.retry.set(retry_policy(&new));
        self.engine
            .spool
            .set_min_free_bytes(new.spool.min_free_bytes);
        let shared = self.contexts.borrow().shared();
        let _ = self
            .contexts
            .send(server_context(&self.engine, &new, tls, &shared));
        self.config = new;
        Ok(plan)
    }
}

/// Waits until `count` (deliveries in flight, open connections) is zero
/// over every route, or `deadline` passes; returns what was left.
async fn wait_for_routes(
    router: &crate::route::Router,
    deadline: tokio::time::Instant,
    count: impl Fn(&crate::deliver::Route) -> usize,
) -> usize {
    loop {
        let left: usize = router.all().iter().map(|r| count(r)).sum();
        if left == 0 || tokio::time::Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// For the log: what a reload changed.
fn describe(plan: &crate::reload::ReloadPlan) -> String {
    let mut parts = Vec::new();
    if !plan.applied.is_empty() {
        parts.push(format!("applied {}", plan.applied.join(", ")));
    }
    if !plan.needs_restart.is_empty() {
        parts.push(format!(
            "changed but needs a restart: {}",
            plan.needs_restart.join(", ")
        ));
    }
    if parts.is_empty() {
        "no changes".to_owned()
    } else {
        parts.join("; ")
    }
}

fn retry_policy(config: &Config) -> RetryPolicy {
    RetryPolicy {
        schedule: config.delivery.retry_schedule.clone(),
        max_age: config.delivery.max_age,
    }
}

/// What SMTP sessions share, built at start and again at each reload.
fn server_context(
    engine: &Arc<Engine>,
    config: &Config,
    tls: Option<TlsAcceptor>,
    shared: &SharedState,
) -> Arc<ServerContext> {
    Arc::new(ServerContext::new(
        engine,
        &config.smtp_in,
        &config.hostname,
        tls,
        shared,
    ))
}

/// The key of tracking tokens, derived from the master key: every node of
/// a fleet (which shares the master key) verifies every node's tokens.
fn tracking_tokens(tenancy: &TenancyStore) -> crate::tracking::token::TokenKey {
    crate::tracking::token::TokenKey::new(&tenancy.secrets().derived(crate::tracking::KEY_PURPOSE))
}

/// `[cluster] node`, which tracked links carry in cluster mode.
fn cluster_node(config: &Config) -> Option<String> {
    config.cluster.as_ref().map(|c| c.node.clone())
}

/// Binds `[tracking] listen` (with its TLS certificate, if any).
async fn bind_tracking(
    config: &Config,
) -> Result<Option<crate::tracking::TrackingListener>, StartError> {
    let Some(section) = &config.tracking else {
        return Ok(None);
    };
    let tls = match (&section.tls_cert, &section.tls_key) {
        (Some(cert), Some(key)) => Some(TlsAcceptor::from(Arc::new(server_tls_config(cert, key)?))),
        _ => None,
    };
    crate::tracking::bind(section, tls)
        .await
        .map(Some)
        .map_err(|(addr, source)| StartError::Listen { addr, source })
}

/// The master key (see `secrets::load_configured`).
fn load_secrets(config: &Config) -> Result<Secrets, StartError> {
    crate::secrets::load_configured(
        &config.secrets.key_file,
        config.secrets.key_file_set,
        &config.spool.dir,
    )
    .map_err(|e| StartError::Tenancy(e.to_string()))
}

async fn open_spool(config: &Config) -> Result<Spool, StartError> {
    let mut spool_config = SpoolConfig::new(config.spool.dir.clone());
    spool_config.cache_bytes = config.spool.cache_bytes as usize;
    spool_config.durable = config.spool.sync;
    spool_config.min_free_bytes = config.spool.min_free_bytes;
    spool_config.segment_bodies_from = config.spool.segment_bodies_from;
    spool_config.commit_delay = config.spool.commit_delay;
    let dir = config.spool.dir.display().to_string();
    tokio::task::spawn_blocking(move || Spool::open(spool_config))
        .await
        .map_err(|e| StartError::Spool {
            dir: dir.clone(),
            message: e.to_string(),
        })?
        .map_err(|e| StartError::Spool {
            dir,
            message: e.to_string(),
        })
}

fn tls_acceptor(config: &Config) -> Result<Option<TlsAcceptor>, StartError> {
    let (Some(cert), Some(key)) = (&config.smtp_in.tls_cert, &config.smtp_in.tls_key) else {
        return Ok(None);
    };
    Ok(Some(TlsAcceptor::from(Arc::new(server_tls_config(
        cert, key,
    )?))))
}

fn server_tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, StartError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|e| StartError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(StartError::Tls(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| StartError::Tls(format!("{}: {e}", key.display())))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StartError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| StartError::Tls(e.to_string()))
}
