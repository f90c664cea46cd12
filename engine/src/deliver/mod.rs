//! Delivery: a `Route` per delivery server, each with its ready queue and
//! a pool of connection workers.
//!
//! Workers are started on demand, up to the server's `max_connections`,
//! when jobs wait and no worker is idle; each keeps its connection open for
//! up to `max_messages_per_connection` transactions and closes it after
//! `idle_timeout` without work. Every attempt ends in `Recorder`.

mod ready;
mod record;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

pub use ready::{Job, ReadyQueue};
pub use record::{AttemptContext, Recorder, RetryPolicy, base_event, job_for};

use crate::config::DeliveryServer;
use crate::smtp::client::{
    ClientSettings, Connection, Envelope, Reply, SessionError, Timeouts, TlsState,
};

/// One delivery server and the work waiting for it.
pub struct Route {
    pub name: String,
    settings: ClientSettings,
    max_connections: usize,
    max_messages_per_connection: usize,
    idle_timeout: Duration,
    pub ready: ReadyQueue,
    workers: AtomicUsize,
    idle_workers: AtomicUsize,
    stopping: AtomicBool,
    recorder: Recorder,
}

impl Route {
    pub fn new(
        server: &DeliveryServer,
        helo_name: &str,
        ready_capacity: usize,
        idle_timeout: Duration,
        recorder: Recorder,
    ) -> Route {
        Route {
            name: server.name.clone(),
            settings: ClientSettings {
                host: server.host.clone(),
                port: server.port,
                encryption: server.encryption,
                helo_name: helo_name.to_owned(),
                auth: server.auth.clone(),
                timeouts: Timeouts::uniform(server.timeout),
                tls_verify: server.tls_verify,
            },
            max_connections: server.max_connections,
            max_messages_per_connection: server.max_messages_per_connection,
            idle_timeout,
            ready: ReadyQueue::new(ready_capacity),
            workers: AtomicUsize::new(0),
            idle_workers: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            recorder,
        }
    }

    /// Queues a job whose place was reserved with `ready.try_reserve()`.
    pub fn push_reserved(self: &Arc<Self>, job: Job) {
        self.ready.push_reserved(job);
        self.start_worker_if_needed();
    }

    /// Queues a job from the scheduler.
    pub fn push(self: &Arc<Self>, job: Job) {
        self.ready.push(job);
        self.start_worker_if_needed();
    }

    pub fn open_connections(&self) -> usize {
        self.workers.load(Ordering::Relaxed)
    }

    fn start_worker_if_needed(self: &Arc<Self>) {
        if self.stopping.load(Ordering::Relaxed) || self.idle_workers.load(Ordering::Acquire) > 0 {
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
        }
    }

    /// Stops taking new jobs; running transactions finish.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.ready.drain();
    }
}

/// Takes jobs from the route's queue and delivers them over one
/// connection at a time until idle.
async fn worker(route: Arc<Route>) {
    let mut conn: Option<Connection> = None;
    let mut sent_on_conn = 0;
    loop {
        route.idle_workers.fetch_add(1, Ordering::AcqRel);
        let job = route.ready.pop(route.idle_timeout).await;
        route.idle_workers.fetch_sub(1, Ordering::AcqRel);
        let Some(job) = job else { break };
        if route.stopping.load(Ordering::Relaxed) {
            break;
        }
        let mut c = match conn.take() {
            Some(c) => c,
            None => match Connection::connect(&route.settings).await {
                Ok(c) => {
                    sent_on_conn = 0;
                    c
                }
                Err(e) => {
                    let at = route.attempt_context(None, None);
                    route.recorder.session_failed(&job, &e, &at);
                    continue;
                }
            },
        };
        let result = attempt(&mut c, &job).await;
        let at = route.attempt_context(Some(c.remote().to_owned()), Some(tls_label(&c.tls())));
        match result {
            Ok(replies) => {
                route.recorder.replies(&job, &replies, &at);
                sent_on_conn += 1;
                if sent_on_conn >= route.max_messages_per_connection {
                    c.quit().await;
                } else {
                    conn = Some(c);
                }
            }
            Err(e) => route.recorder.session_failed(&job, &e, &at),
        }
    }
    if let Some(c) = conn {
        c.quit().await;
    }
    route.workers.fetch_sub(1, Ordering::AcqRel);
    // A job may have arrived while this worker was leaving.
    if !route.ready.is_empty() {
        route.start_worker_if_needed();
    }
}

/// One transaction for the job's recipients on an open connection.
fn attempt<'a>(
    c: &'a mut Connection,
    job: &'a Job,
) -> impl std::future::Future<Output = Result<Vec<Reply>, SessionError>> + Send + 'a {
    let rcpts: Vec<&'a str> = job
        .rcpts
        .iter()
        .map(|&(i, _)| job.message.recipients[i as usize].as_str())
        .collect();
    async move {
        let envelope = Envelope {
            mail_from: &job.message.mail_from,
            recipients: &rcpts,
        };
        c.send(&envelope, &job.message.body).await
    }
}

impl Route {
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

fn tls_label(state: &TlsState) -> String {
    match state {
        TlsState::Plain => "none".to_owned(),
        TlsState::StartTls => "starttls".to_owned(),
        TlsState::Implicit => "tls".to_owned(),
        TlsState::PlainAfterTlsFailure(why) => format!("none (STARTTLS failed: {why})"),
    }
}

/// Every route of the daemon. Until routing by tenant arrives, mail goes to
/// the route named in its metadata, or else to the first delivery server.
pub struct Routes {
    routes: Vec<Arc<Route>>,
}

impl Routes {
    pub fn new(routes: Vec<Arc<Route>>) -> Routes {
        assert!(
            !routes.is_empty(),
            "config validation requires a delivery server"
        );
        Routes { routes }
    }

    pub fn default_route(&self) -> &Arc<Route> {
        &self.routes[0]
    }

    pub fn by_name(&self, name: &str) -> &Arc<Route> {
        self.routes
            .iter()
            .find(|r| r.name == name)
            .unwrap_or(&self.routes[0])
    }

    /// How many jobs the scheduler may claim for all routes together.
    pub fn room(&self) -> usize {
        self.routes
            .iter()
            .map(|r| r.ready.room())
            .min()
            .unwrap_or(0)
    }

    pub fn all(&self) -> &[Arc<Route>] {
        &self.routes
    }

    pub fn stop(&self) {
        self.routes.iter().for_each(|r| r.stop());
    }
}
