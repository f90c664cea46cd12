//! The quota ledger's view of the database's health (`cluster::quota`):
//! up or down, logged once per change and exposed as
//! `sendengine_cluster_quota_database_up`; while down, calls fail at once
//! for a moment instead of piling up connection attempts.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::postgres::DbError;

/// `sendengine_cluster_quota_database_up`: 1 when the last call worked.
pub const METRIC_UP: &str = "sendengine_cluster_quota_database_up";

/// After a failed call, calls fail at once for this long (no pile-up of
/// connection attempts while the database is down).
const FAIL_FAST: Duration = Duration::from_millis(500);

/// Up or down, logged once per change.
#[derive(Default)]
pub struct Health {
    down: AtomicBool,
    last_failure: Mutex<Option<Instant>>,
}

impl Health {
    pub fn failed(&self, e: &DbError) {
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        if !self.down.swap(true, Ordering::Relaxed) {
            log::warn!(
                "cluster quota: the database does not answer ({e}); mail of users with a \
                 limit is answered 451 4.3.0 until it does"
            );
            metrics::gauge!(METRIC_UP).set(0.0);
        }
    }

    pub fn ok(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            log::warn!("cluster quota: the database answers again; quotas are leased again");
            metrics::gauge!(METRIC_UP).set(1.0);
        }
    }

    /// Whether the last call worked.
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    pub fn failing_fast(&self) -> bool {
        self.down.load(Ordering::Relaxed)
            && self
                .last_failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|t| t.elapsed() < FAIL_FAST)
    }
}
