//! How a spool is opened: where it lives, how much memory it caches, how large
//! a group commit may grow, and the hooks tests and benchmarks need.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// Settings for [`crate::Spool::open`]. Build with [`SpoolConfig::new`] and
/// change the fields you need.
#[derive(Clone, Debug)]
pub struct SpoolConfig {
    /// Directory holding `spool.redb`; created if missing.
    pub dir: PathBuf,
    /// redb page cache, in bytes.
    pub cache_bytes: usize,
    /// Most requests applied in one write transaction; bounds commit latency.
    pub max_batch: usize,
    /// `false` commits with `Durability::None`: fast, but a crash can lose
    /// acknowledged messages. For benchmarks only.
    pub durable: bool,
    /// Insert bytes (bodies + envelopes) allowed to wait for the writer before
    /// new inserts are refused with [`crate::SpoolError::Busy`].
    pub max_pending_bytes: usize,
    /// Wait between attempts to reopen the database after a storage failure.
    pub reopen_delay: Duration,
    /// Test hook: while set to `true` every batch fails with
    /// `SpoolError::Storage("injected fault")` and nothing of it is applied.
    pub fail_commits: Option<Arc<AtomicBool>>,
    /// Test hook: while set to `true` the fdatasync of the segment files
    /// of every batch with new bodies is reported failed (after it ran),
    /// once redb's commit has succeeded. No real file system makes that
    /// one call fail on demand (a full or read-only disk fails the write
    /// before it), and this path must still never acknowledge a message.
    pub fail_segment_syncs: Option<Arc<AtomicBool>>,
    /// Free bytes on the spool's filesystem that inserts leave alone, so
    /// the records of deliveries and bounces always have room; 0 = none.
    pub min_free_bytes: u64,
    /// Bodies go to segment files while at least this many messages are
    /// queued, and into the database below it (see `segments/mod.rs`).
    pub segment_bodies_from: u64,
    /// How long a batch of delivery outcomes alone waits for a request
    /// somebody waits on before it commits by itself (see
    /// `DEFAULT_OUTCOME_LINGER`).
    pub outcome_linger: Duration,
    /// How long an insert's commit waits at most for the other connected
    /// clients' inserts (see `clients.rs`); zero commits at once.
    pub commit_delay: Duration,
    /// How often the delivered index's new rows move from `spool.redb`
    /// to `archive.redb` (see `archive.rs`).
    pub archive_every: Duration,
}

/// 16 MiB of page cache holds the hot part of a busy queue (the head of
/// the schedule, the rows of the messages in flight); bodies are not in
/// redb. 64 MiB cost ~45 MiB of RSS after a restart with a million queued
/// (recovery and `queue flush` walk every row through the cache) and
/// nothing measurable in CPU at full load (BENCHMARKS.md, goal 4).
pub const DEFAULT_CACHE_BYTES: usize = 16 * 1024 * 1024;
const DEFAULT_MAX_BATCH: usize = 1024;
/// A queue this short costs ~165 MB of database file with its bodies
/// inside; a longer one moves new bodies to segment files.
pub const DEFAULT_SEGMENT_BODIES_FROM: u64 = 10_000;
const DEFAULT_MAX_PENDING_BYTES: usize = 256 * 1024 * 1024;
const DEFAULT_REOPEN_DELAY: Duration = Duration::from_millis(500);
/// Nobody waits for an outcome's commit but its events and its claims'
/// release, and a crash before it only sends a second copy, so outcomes
/// ride on the next acknowledged insert's fdatasync instead of paying one
/// of their own: with a connection per message a fifth of the commits
/// were outcomes alone (BENCHMARKS.md, issue 20, session 11). The wait
/// ends at the first other request, which would otherwise have queued
/// behind the outcomes' commit.
pub(crate) const DEFAULT_OUTCOME_LINGER: Duration = Duration::from_millis(5);
/// At half of peak this took a commit from 3.0 to 7.9 messages and 20% off
/// the CPU per message (BENCHMARKS.md, issue 20, session 12); a 250 waits
/// at most this much longer.
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_millis(1);

impl SpoolConfig {
    /// Defaults: 16 MiB cache, batches of at most 1024 requests, durable
    /// commits, 256 MiB of queued inserts, reopen retried every 500 ms,
    /// outcomes alone wait 5 ms for company.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SpoolConfig {
            dir: dir.into(),
            cache_bytes: DEFAULT_CACHE_BYTES,
            max_batch: DEFAULT_MAX_BATCH,
            durable: true,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
            reopen_delay: DEFAULT_REOPEN_DELAY,
            fail_commits: None,
            fail_segment_syncs: None,
            min_free_bytes: 0,
            segment_bodies_from: DEFAULT_SEGMENT_BODIES_FROM,
            outcome_linger: DEFAULT_OUTCOME_LINGER,
            commit_delay: DEFAULT_COMMIT_DELAY,
            archive_every: Duration::from_secs(1),
        }
    }
}
