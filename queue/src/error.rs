//! The one error type of the spool. Every variant says what failed and what a
//! person (or the SMTP server, which answers 451 4.3.0) can do about it.

use std::path::PathBuf;

/// Why a spool operation failed. `Clone` because one failed group commit
/// reports the same error to every request in it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot open the spool at {}: {reason}", path.display())]
    Open { path: PathBuf, reason: String },

    /// Disk full, I/O error, or the database is being reopened after one.
    /// Nothing from the failed request was written; retrying later is safe.
    #[error("spool storage failed: {0} (check free space and the disk holding the spool)")]
    Storage(String),

    #[error("the spool is shut down")]
    Closed,

    /// A stored record could not be decoded: a bug or a damaged file.
    #[error("corrupt spool record: {0}")]
    Corrupt(String),

    /// The message was refused before anything was written.
    #[error("message refused by the spool: {0}")]
    Invalid(String),

    /// Too many bytes are queued for the writer: the disk is not keeping up.
    #[error(
        "the spool writer is behind ({pending_bytes} bytes queued, limit {limit_bytes}); try again later"
    )]
    Busy {
        pending_bytes: usize,
        limit_bytes: usize,
    },

    /// The spool's disk is nearly full: inserts stop while the rest is kept
    /// for delivery records. Nothing was written.
    #[error(
        "the spool's disk has {available_bytes} bytes free and {reserve_bytes} are kept for delivery records; free some space (the spool accepts mail again by itself)"
    )]
    LowSpace {
        available_bytes: u64,
        reserve_bytes: u64,
    },

    /// A sending quota would be passed; nothing was stored or counted.
    #[error("{} {} limit of {} reached ({} used)", .0.name, .0.window.name(), .0.limit, .0.used)]
    QuotaExceeded(crate::quota::QuotaExceeded),

    /// The random tracking key drawn for the message is in use already
    /// (about one chance in 2^48 per message of the same millisecond).
    /// Nothing was written; sending again draws another key.
    #[error("the message's tracking key is in use already; try again")]
    TrackingKeyTaken,

    /// A blocking spool call from a completion callback would wait for itself.
    #[error("blocking spool call made on the spool writer thread (inside a completion callback)")]
    WouldDeadlock,
}

impl SpoolError {
    pub(crate) fn is_storage(&self) -> bool {
        matches!(self, SpoolError::Storage(_))
    }
}

/// redb has one error type per operation; for the spool they all mean the
/// storage failed, and the message keeps redb's own explanation.
macro_rules! storage_error_from {
    ($($redb_error:ty),+ $(,)?) => {
        $(impl From<$redb_error> for SpoolError {
            fn from(err: $redb_error) -> Self {
                SpoolError::Storage(err.to_string())
            }
        })+
    };
}

storage_error_from!(
    redb::StorageError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError,
    redb::CompactionError,
    redb::SetDurabilityError,
);
