//! The spool's metrics, through the `metrics` facade (a no-op until the
//! daemon installs a recorder, like `log` without a logger).
//!
//! Names, descriptions and bucket lists live here; the engine's
//! `metrics::install` applies the buckets and calls `describe`. The other
//! spool figures (recipients queued and deferred, file size) are read from
//! `Spool::stats` and `Spool::queue_counts` by the engine's refresh task.

use std::time::Duration;

/// Time of one group commit: the write transaction and its fdatasync.
pub const COMMIT_SECONDS: &str = "sendengine_spool_commit_seconds";
/// Requests (inserts, outcomes, claims, ...) written by one group commit.
pub const COMMIT_BATCH_SIZE: &str = "sendengine_spool_commit_batch_size";
/// How long a group commit held its inserts for other connected clients'
/// (`SpoolConfig::commit_delay`); only commits that waited are counted.
pub const COMMIT_WAIT_SECONDS: &str = "sendengine_spool_commit_wait_seconds";
/// Recipient rows moved to the quarantine because they could not be decoded.
pub(crate) const QUARANTINED_TOTAL: &str = "sendengine_spool_quarantined_total";

/// From half a millisecond (no fsync, or a fast NVMe) to a second (a disk
/// in trouble).
pub const COMMIT_SECONDS_BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// From a tenth of a millisecond to the longest `commit_delay` allowed.
pub const COMMIT_WAIT_SECONDS_BUCKETS: [f64; 8] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05];
/// Powers of two up to `SpoolConfig::max_batch`'s order of magnitude.
pub const COMMIT_BATCH_SIZE_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Registers the descriptions; call once after installing a recorder.
pub fn describe() {
    ::metrics::describe_histogram!(
        COMMIT_SECONDS,
        ::metrics::Unit::Seconds,
        "Time of one spool group commit (write transaction and fdatasync)"
    );
    ::metrics::describe_histogram!(
        COMMIT_BATCH_SIZE,
        ::metrics::Unit::Count,
        "Requests written by one spool group commit"
    );
    ::metrics::describe_histogram!(
        COMMIT_WAIT_SECONDS,
        ::metrics::Unit::Seconds,
        "Time a spool group commit held its messages for other connected clients' (commit_delay)"
    );
    ::metrics::describe_counter!(
        QUARANTINED_TOTAL,
        ::metrics::Unit::Count,
        "Recipient rows the spool could not decode and moved to its quarantine table"
    );
}

/// A batch committed.
pub(crate) fn committed(took: Duration, requests: u64) {
    ::metrics::histogram!(COMMIT_SECONDS).record(took.as_secs_f64());
    ::metrics::histogram!(COMMIT_BATCH_SIZE).record(requests as f64);
}

/// A batch waited `took` for more clients' inserts.
pub(crate) fn commit_waited(took: Duration) {
    ::metrics::histogram!(COMMIT_WAIT_SECONDS).record(took.as_secs_f64());
}

/// Recipient rows quarantined.
pub(crate) fn quarantined(rows: u64) {
    ::metrics::counter!(QUARANTINED_TOTAL).increment(rows);
}
