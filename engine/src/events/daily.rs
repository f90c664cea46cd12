//! The daily counters behind `sendctl report`: the event log's thread
//! hands every event to `DailyCounters`, which tallies it per (UTC day,
//! tenant) in memory and writes the changed rows to the spool
//! (`daily_counters` table) at most every `WRITE_INTERVAL`, in the spool's
//! group commit. So the figures survive restarts: a clean stop writes the
//! last ones (the event log's flush), a crash loses at most the last
//! interval's. Days older than `RETAIN_DAYS` are deleted.
//!
//! Only the current day's rows are held in memory (one per tenant seen
//! today, at most `MAX_TENANTS`). They are read from the spool once, at
//! start (a restart continues the day's counts); a new day starts empty.
//! The event thread itself never reads the spool: a read waits for the
//! commit in progress, and the event file would wait with it.

pub mod tally;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sendengine_queue::{DailyRow, Spool, SpoolError};

use super::{Event, EventKind};
use crate::timefmt::now_ms;
use tally::DayTally;

/// How often changed rows are written: what a crash may lose.
pub const WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// Days of counters kept in the spool.
pub const RETAIN_DAYS: u32 = 90;
/// Tenant rows per day; events of further tenants count under `OTHER_TENANT`.
const MAX_TENANTS: usize = 10_000;
pub const OTHER_TENANT: &str = "(other tenants)";
/// Message ids remembered to count a message's bytes once: its reception
/// events (one per recipient) are emitted together, so a short memory
/// is enough.
const RECENT_MESSAGES: usize = 4096;

const DAY_MS: u64 = 86_400_000;

/// The UTC day number (days since 1970-01-01) of `ms`.
pub fn day_of(ms: u64) -> u32 {
    (ms / DAY_MS) as u32
}

/// Decodes a stored row; a row that does not decode counts as empty
/// (and is overwritten by the next write) rather than stopping the counts.
pub fn decode(row: &DailyRow) -> DayTally {
    serde_json::from_slice(&row.tally).unwrap_or_else(|e| {
        log::warn!(
            "the daily counters of day {} tenant `{}` do not decode ({e}); starting them again",
            row.day,
            row.tenant
        );
        DayTally::default()
    })
}

/// Owned by the event log's thread.
pub struct DailyCounters {
    spool: Spool,
    day: u32,
    rows: HashMap<String, DayTally>,
    dirty: HashSet<String>,
    last_write: Instant,
    /// Set by a failed write's completion: everything is written again.
    health: Arc<WriteHealth>,
    /// Prune old days at the next write (at start and on a new day).
    prune: bool,
    recent: RecentMessages,
}

impl DailyCounters {
    /// Reads today's rows (blocking: call at start).
    pub fn new(spool: Spool) -> DailyCounters {
        let day = day_of(now_ms());
        let rows = match spool.daily_rows(day, None) {
            Ok(rows) => rows.iter().map(|r| (r.tenant.clone(), decode(r))).collect(),
            Err(e) => {
                log::warn!(
                    "reading today's daily counters failed ({e}); today's report starts from zero"
                );
                HashMap::new()
            }
        };
        DailyCounters {
            spool,
            day,
            rows,
            dirty: HashSet::new(),
            last_write: Instant::now(),
            health: Arc::default(),
            prune: true,
            recent: RecentMessages::default(),
        }
    }

    /// Counts one event on today's row of its tenant.
    pub fn add(&mut self, event: &Event) {
        let today = day_of(now_ms());
        if today != self.day {
            // Yesterday's rows go out whole before they leave memory.
            self.write(false);
            self.rows.clear();
            self.day = today;
            self.prune = true;
        }
        let first_of_message =
            event.kind == EventKind::Reception && self.recent.first_time(&event.message_id);
        let tenant = self.tenant_key(event.tenant.as_deref().unwrap_or(""));
        self.rows
            .entry(tenant.clone())
            .or_default()
            .add(event, first_of_message);
        self.dirty.insert(tenant);
    }

    /// Writes the changed rows if `WRITE_INTERVAL` has passed, or now and
    /// waiting for the commit when `wait` (someone flushes the event log).
    pub fn write_if_due(&mut self, wait: bool) {
        if wait || self.last_write.elapsed() >= WRITE_INTERVAL {
            self.write(wait);
        }
    }

    fn tenant_key(&self, tenant: &str) -> String {
        if self.rows.len() >= MAX_TENANTS && !self.rows.contains_key(tenant) {
            return OTHER_TENANT.to_owned();
        }
        tenant.to_owned()
    }

    fn write(&mut self, wait: bool) {
        self.last_write = Instant::now();
        if self.health.failed.swap(false, Ordering::Relaxed) {
            self.dirty.extend(self.rows.keys().cloned());
        }
        if self.dirty.is_empty() && !self.prune {
            return;
        }
        let rows: Vec<DailyRow> = self
            .dirty
            .drain()
            .filter_map(|tenant| {
                let tally = serde_json::to_vec(self.rows.get(&tenant)?).ok()?;
                Some(DailyRow {
                    day: self.day,
                    tenant,
                    tally,
                })
            })
            .collect();
        let prune_before =
            std::mem::take(&mut self.prune).then(|| self.day.saturating_sub(RETAIN_DAYS));
        if wait {
            let result = self.spool.daily_write_blocking(rows, prune_before);
            self.health.record(result);
            return;
        }
        let health = self.health.clone();
        self.spool.daily_write(
            rows,
            prune_before,
            Box::new(move |result| health.record(result)),
        );
    }
}

/// Whether the last writes worked; a failure is logged once until a write
/// works again (a full disk must not log every second).
#[derive(Default)]
struct WriteHealth {
    /// Everything is to be written again at the next write.
    failed: AtomicBool,
    warned: AtomicBool,
}

impl WriteHealth {
    fn record(&self, result: Result<(), SpoolError>) {
        match result {
            Ok(()) => {
                if self.warned.swap(false, Ordering::Relaxed) {
                    log::info!("the daily counters are written again");
                }
            }
            Err(e) => {
                self.failed.store(true, Ordering::Relaxed);
                if !self.warned.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "writing the daily counters failed ({e}); retried every second, logged again once it works"
                    );
                }
            }
        }
    }
}

/// The last `RECENT_MESSAGES` message ids whose reception was counted.
#[derive(Default)]
struct RecentMessages {
    order: VecDeque<String>,
    seen: HashSet<String>,
}

impl RecentMessages {
    /// True the first time `id` is offered (within the memory).
    fn first_time(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() >= RECENT_MESSAGES
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        self.order.push_back(id.to_owned());
        self.seen.insert(id.to_owned());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_counts_once_among_interleaved_ones() {
        let mut recent = RecentMessages::default();
        assert!(recent.first_time("a"));
        assert!(recent.first_time("b"));
        assert!(!recent.first_time("a"));
        for n in 0..RECENT_MESSAGES {
            recent.first_time(&n.to_string());
        }
        assert_eq!(recent.order.len(), RECENT_MESSAGES);
        assert_eq!(recent.seen.len(), RECENT_MESSAGES);
        assert!(recent.first_time("a"), "forgotten after enough others");
    }

    #[test]
    fn a_failed_write_has_everything_written_again_and_warns_once() {
        let health = WriteHealth::default();
        health.record(Err(SpoolError::Closed));
        health.record(Err(SpoolError::Closed));
        assert!(health.failed.load(Ordering::Relaxed));
        assert!(health.warned.load(Ordering::Relaxed));
        health.record(Ok(()));
        assert!(
            !health.warned.load(Ordering::Relaxed),
            "warns again next time"
        );
    }

    #[test]
    fn rows_are_written_read_back_and_continue_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(sendengine_queue::SpoolConfig::new(dir.path())).unwrap();
        let mut counters = DailyCounters::new(spool.clone());
        let mut event = tally::tests::event(EventKind::Reception, "a@x.test");
        counters.add(&event);
        counters.write_if_due(true);
        let today = day_of(now_ms());
        let rows = spool.daily_rows(today, Some("alice")).unwrap();
        assert_eq!(decode(&rows[0]).totals.received, 1);

        // A new process: today's row is read back, then added to.
        let mut counters = DailyCounters::new(spool.clone());
        event.message_id = "0000000000000002".into();
        counters.add(&event);
        counters.write_if_due(true);
        let rows = spool.daily_rows(today, Some("alice")).unwrap();
        let totals = decode(&rows[0]).totals;
        assert_eq!((totals.received, totals.messages), (2, 2));
    }
}
