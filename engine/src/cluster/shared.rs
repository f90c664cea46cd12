//! Keeping this node's copy of the shared state (configuration objects and
//! suppression lists) in line with PostgreSQL, the fleet's source of truth.
//!
//! One task per node: it creates the tables, then LISTENs on both change
//! channels and, on every notice (and on every (re)connect, and as a
//! fallback every [`POLL`]), reads the rows newer than what it applied and
//! applies them to the local spool. Admission and delivery read only the
//! local copy, so PostgreSQL stays off the per-message path.
//!
//! When PostgreSQL is down: the node keeps working from its local copy,
//! logs it once, sets `sendengine_cluster_database_up` to 0, and retries
//! until it answers again (no restart needed). Admin changes fail with a
//! clear error meanwhile (nothing is changed on any node), and
//! suppressions from bounces wait in a bounded queue (`suppressions`).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use sendengine_queue::Spool;

use super::postgres::{DbError, Notice};
use super::{Cluster, objects, suppressions};
use crate::tenancy::TenancyStore;

/// Fallback poll, for a NOTIFY lost while the LISTEN connection was down.
pub const POLL: Duration = Duration::from_secs(2);
/// Pause between attempts to create the tables while PostgreSQL is down.
const RETRY: Duration = Duration::from_secs(1);

/// What of this node the shared state is applied to.
pub struct Local {
    pub tenancy: Arc<TenancyStore>,
    pub spool: Spool,
    /// Brings the routes in line after the objects changed (`Router::sync`).
    pub routes_changed: Box<dyn Fn() + Send + Sync>,
}

/// Starts the replication of objects and suppressions for this node, and
/// makes every admin change go through PostgreSQL first.
pub fn start(
    local: Local,
    cluster: Arc<Cluster>,
    shutdown: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let objects = Arc::new(Progress::default());
    local
        .tenancy
        .set_publisher(Arc::new(objects::Publisher::new(
            &cluster,
            objects.clone(),
            tokio::runtime::Handle::current(),
        )));
    let feed = suppressions::open_feed();
    vec![
        tokio::spawn(suppressions::run_feed(
            cluster.clone(),
            feed,
            shutdown.clone(),
        )),
        tokio::spawn(run(local, cluster, objects, shutdown)),
    ]
}

/// How far this node has applied one kind of shared rows.
#[derive(Debug, Default)]
pub struct Progress {
    version: AtomicI64,
    synced: AtomicBool,
}

impl Progress {
    /// The highest version applied here.
    pub fn version(&self) -> i64 {
        self.version.load(Ordering::SeqCst)
    }

    /// Whether the whole set was read once since the start.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// Never goes back: a reader and a writer may both advance it.
    pub fn advance(&self, version: i64) {
        self.version.fetch_max(version, Ordering::SeqCst);
    }

    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::SeqCst);
    }
}

/// Why a catch-up did not finish.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Database(#[from] DbError),
    /// The rows were read but could not be applied here.
    #[error("{0}")]
    Apply(String),
}

/// Whether PostgreSQL answers, as the log and the metric show it: each
/// change of state is logged once, not each failed call.
pub struct Health {
    up: AtomicBool,
}

pub static HEALTH: Health = Health {
    up: AtomicBool::new(true),
};

impl Health {
    pub fn up(&self) {
        ::metrics::gauge!("sendengine_cluster_database_up", "task" => "shared").set(1.0);
        if !self.up.swap(true, Ordering::SeqCst) {
            log::info!("cluster: the cluster database answers again; shared state is in sync");
        }
    }

    pub fn down(&self, doing: &str, e: &DbError) {
        ::metrics::gauge!("sendengine_cluster_database_up", "task" => "shared").set(0.0);
        if self.up.swap(false, Ordering::SeqCst) {
            log::warn!(
                "cluster: the cluster database is unreachable ({doing}: {e}); this node works \
                 from its local copy of the configuration and suppressions, refuses admin \
                 changes, and retries"
            );
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }
}

/// What a notice asks to read again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Due {
    objects: bool,
    suppressions: bool,
}

impl Due {
    const BOTH: Due = Due {
        objects: true,
        suppressions: true,
    };

    fn add(&mut self, notice: &Notice) {
        match notice {
            Notice::Notify { channel, .. } if channel == objects::CHANNEL => self.objects = true,
            Notice::Notify { channel, .. } if channel == suppressions::CHANNEL => {
                self.suppressions = true
            }
            Notice::Notify { .. } => {}
            Notice::Resync => *self = Due::BOTH,
        }
    }
}

async fn run(
    local: Local,
    cluster: Arc<Cluster>,
    objects: Arc<Progress>,
    mut shutdown: watch::Receiver<bool>,
) {
    let schema = format!("{}; {}", objects::SCHEMA, suppressions::SCHEMA);
    while let Err(e) = cluster.db.migrate(&schema).await {
        HEALTH.down("creating the shared tables", &e);
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
    let suppressions = Progress::default();
    let (tx, mut notices) = mpsc::channel(64);
    let channels = vec![objects::CHANNEL.into(), suppressions::CHANNEL.into()];
    super::postgres::listen(cluster.settings.database.clone(), channels, tx);
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut due = tokio::select! {
            notice = notices.recv() => {
                let Some(notice) = notice else { return };
                let mut due = Due::default();
                due.add(&notice);
                due
            }
            _ = poll.tick() => Due::BOTH,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        // Notices that came meanwhile are served by the same reads.
        while let Ok(notice) = notices.try_recv() {
            due.add(&notice);
        }
        if due.objects {
            report(
                objects::catch_up(&local, &cluster, &objects).await,
                "objects",
            );
        }
        if due.suppressions {
            report(
                suppressions::catch_up(&local, &cluster, &suppressions).await,
                "suppressions",
            );
        }
    }
}

fn report(result: Result<(), SyncError>, what: &str) {
    match result {
        Ok(()) => HEALTH.up(),
        Err(SyncError::Database(e)) => HEALTH.down(&format!("reading the shared {what}"), &e),
        Err(SyncError::Apply(e)) => {
            ::metrics::counter!("sendengine_cluster_apply_errors_total", "what" => what.to_owned())
                .increment(1);
            // Tried again at every poll: log each new reason once.
            static LAST: Mutex<String> = Mutex::new(String::new());
            let line = format!("cluster: the shared {what} could not be applied here: {e}");
            let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
            if *last != line {
                log::error!("{line}");
                *last = line;
            }
        }
    }
}

/// Runs `f` on the runtime from synchronous code, which may be a blocking
/// thread or (as `verify` calls `Engine::change`) a runtime worker.
pub fn block_on<F: Future>(handle: &tokio::runtime::Handle, f: F) -> F::Output {
    tokio::task::block_in_place(|| handle.block_on(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_merge_into_what_to_read() {
        let mut due = Due::default();
        due.add(&Notice::Notify {
            channel: suppressions::CHANNEL.into(),
            payload: "7".into(),
        });
        assert_eq!(
            due,
            Due {
                objects: false,
                suppressions: true
            }
        );
        due.add(&Notice::Notify {
            channel: "elsewhere".into(),
            payload: String::new(),
        });
        assert!(!due.objects);
        due.add(&Notice::Resync);
        assert_eq!(due, Due::BOTH);
    }

    #[test]
    fn progress_never_goes_back() {
        let p = Progress::default();
        p.advance(5);
        p.advance(3);
        assert_eq!(p.version(), 5);
        assert!(!p.synced());
    }
}
