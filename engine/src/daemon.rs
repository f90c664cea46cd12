//! Start-up and the one graceful shutdown path.
//!
//! Start: open the spool (recovery runs there), the event log, the routes,
//! bind every listener (a busy port is an error at start, not later), then
//! start the scheduler and the accept loops. Stop (SIGTERM or SIGINT):
//! stop accepting, let sessions finish what they are doing (a session in
//! DATA gets its commit and its reply), stop the routes, then close the
//! spool and the event log. Whatever was claimed but not delivered is
//! rescheduled by the spool's recovery at the next start.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sendengine_queue::{Spool, SpoolConfig};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::deliver::{Recorder, RetryPolicy};
use crate::engine::Engine;
use crate::events::EventLog;
use crate::route::{RouteSettings, Router};
use crate::secrets::Secrets;
use crate::smtp::server::{ServerContext, serve_listener};
use crate::tenancy::TenancyStore;

/// How long sessions get to finish after a shutdown request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

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
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), StartError> {
    // Only aws-lc-rs is in the build; installing it makes that explicit.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut daemon = Daemon::start(config).await?;
    for addr in &daemon.local_addrs {
        eprintln!("sendengine: listening on {addr}");
    }
    eprintln!("sendengine: ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(StartError::Signals)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("sendengine: shutting down");
    daemon.shutdown().await;
    eprintln!("sendengine: stopped");
    Ok(())
}

/// A running daemon; tests start one in-process with `Daemon::start`.
pub struct Daemon {
    pub engine: Arc<Engine>,
    pub local_addrs: Vec<std::net::SocketAddr>,
    shutdown: watch::Sender<bool>,
    slots: Arc<Semaphore>,
    max_connections: usize,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Runs as long as routes exist; stopped last.
    failover_task: tokio::task::JoinHandle<()>,
}

impl Daemon {
    pub async fn start(config: Config) -> Result<Daemon, StartError> {
        let started = std::time::Instant::now();
        let spool = open_spool(&config).await?;
        let events = match &config.events.path {
            Some(path) => EventLog::open(path).map_err(|source| StartError::Events {
                path: path.display().to_string(),
                source,
            })?,
            None => EventLog::disabled(),
        };
        let recorder = Recorder {
            spool: spool.clone(),
            events: events.clone(),
            retry: RetryPolicy {
                schedule: config.delivery.retry_schedule.clone(),
                max_age: config.delivery.max_age,
            },
        };
        let secrets = Secrets::load_or_create(&config.secrets.key_file)
            .map_err(|e| StartError::Tenancy(e.to_string()))?;
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
            },
            recorder,
        );
        let failover_task = tokio::spawn(router.clone().run_failover(failovers));
        let engine = Arc::new(Engine {
            hostname: config.hostname.clone(),
            spool,
            events,
            router,
            tenancy,
            default_user: config.smtp_in.default_user.clone(),
            resolver,
        });
        let tls = tls_acceptor(&config)?;
        let mut listeners = Vec::new();
        for addr in &config.smtp_in.listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Listen {
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
        let (shutdown, shutdown_rx) = watch::channel(false);
        let max_connections = config.smtp_in.max_connections;
        let slots = Arc::new(Semaphore::new(max_connections));
        let ctx = Arc::new(ServerContext {
            engine: engine.clone(),
            settings: config.smtp_in.clone(),
            hostname: config.hostname.clone(),
            tls,
        });
        let mut tasks = vec![
            tokio::spawn(crate::schedule::run(engine.clone(), shutdown_rx.clone())),
            tokio::spawn(crate::verify::run(
                engine.clone(),
                config.dns.verify_interval,
                shutdown_rx.clone(),
            )),
        ];
        if let Some(listener) = admin_listener {
            let admin = Arc::new(crate::admin::AdminContext {
                engine: engine.clone(),
                started,
                listeners: local_addrs.clone(),
            });
            tasks.push(tokio::spawn(crate::admin::serve(
                listener,
                admin,
                shutdown_rx.clone(),
            )));
        }
        for listener in listeners {
            tasks.push(tokio::spawn(serve_listener(
                listener,
                ctx.clone(),
                slots.clone(),
                shutdown_rx.clone(),
            )));
        }
        Ok(Daemon {
            engine,
            local_addrs,
            shutdown,
            slots,
            max_connections,
            tasks,
            failover_task,
        })
    }

    pub async fn shutdown(&mut self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        // Every session holds a slot; all slots back means all sessions ended.
        let all = self.max_connections as u32;
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.slots.acquire_many(all)).await;
        self.engine.router.stop();
        self.failover_task.abort();
        let spool = self.engine.spool.clone();
        let _ = tokio::task::spawn_blocking(move || spool.shutdown()).await;
        self.engine.events.flush();
    }
}

async fn open_spool(config: &Config) -> Result<Spool, StartError> {
    let mut spool_config = SpoolConfig::new(config.spool.dir.clone());
    spool_config.cache_bytes = config.spool.cache_bytes as usize;
    spool_config.durable = config.spool.sync;
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
