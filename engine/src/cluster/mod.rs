//! Cluster mode: several nodes, each with its own spool, sharing what must
//! be shared through PostgreSQL (configuration objects, suppressions, quota
//! counters, nodes) and Redis (delivery servers' throttles).
//!
//! Optional: without a `[cluster]` section nothing here runs and the daemon
//! needs no service. With it, a node owns the mail it acknowledged (no
//! shared queue, as KumoMTA and Halon fleets do) and PostgreSQL is the
//! source of truth for everything an operator configures.

pub mod delivered;
pub mod fleet_actions;
pub mod idempotency;
pub mod nodes;
pub mod objects;
pub mod postgres;
pub mod quota;
mod quota_health;
mod quota_spend;
mod quota_sql;
mod quota_state;
pub mod settings;
pub mod shared;
pub mod suppressions;

pub use settings::{ClusterSettings, RawCluster};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use postgres::Database;

/// This node's handle on the fleet, shared by whatever needs it.
pub struct Cluster {
    pub settings: ClusterSettings,
    /// The shared database (connected on first use, again after a drop).
    pub db: Arc<Database>,
    /// What this node knows of the others.
    pub fleet: Arc<FleetView>,
    /// Sending quotas, exact across the fleet (`quota`).
    pub quota: quota::QuotaLedger,
    /// HTTP idempotency keys across the fleet (`idempotency`).
    pub idempotency_keys: idempotency::FleetKeys,
}

impl Cluster {
    /// Needs a tokio runtime: background tasks start here.
    /// `spool_counts` is what this node's spool counted of each quota (the
    /// ledger settles its previous run's leases from it).
    pub fn new(settings: ClusterSettings, spool_counts: quota::SpoolCounts) -> Cluster {
        let db = Arc::new(Database::new(&settings.database));
        let fleet = Arc::new(FleetView::default());
        let idempotency_keys = idempotency::FleetKeys::new(db.clone(), &settings.node);
        Cluster {
            quota: quota::QuotaLedger::start(
                &settings.node,
                db.clone(),
                fleet.clone(),
                spool_counts,
            ),
            db,
            settings,
            fleet,
            idempotency_keys,
        }
    }
}

/// The fleet as this node last saw it; the heartbeat keeps it current.
#[derive(Debug)]
pub struct FleetView {
    live_nodes: AtomicUsize,
}

impl Default for FleetView {
    fn default() -> FleetView {
        FleetView {
            live_nodes: AtomicUsize::new(1),
        }
    }
}

impl FleetView {
    /// Nodes seen alive, this one included (at least 1): what a fleet-wide
    /// limit is divided by when a node must enforce its share alone.
    pub fn live_nodes(&self) -> usize {
        self.live_nodes.load(Ordering::Relaxed).max(1)
    }

    pub fn set_live_nodes(&self, n: usize) {
        self.live_nodes.store(n.max(1), Ordering::Relaxed);
    }
}
