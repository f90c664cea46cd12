//! The durable spool of sendengine: accepted messages, the state of each of
//! their recipients and the schedule of retries, kept in one redb database.
//!
//! One writer thread applies every change in group commits (many requests, one
//! durable commit), so an SMTP 250 can wait for fdatasync without costing one
//! fsync per message. Reads (`load`, `stats`, `next_due_ms`) run on the caller's
//! thread. Restarting rebuilds all state from the file: recipients that were
//! handed to the delivery side when the process died are scheduled again.
//!
//! Suppression lists (per tenant, plus a global one) live in the same
//! database, written by the same writer and read without it.
//!
//! Webhook backlogs (events waiting to be posted) live there too, see
//! `backlog.rs`, and so do the daily report counters (`daily.rs`).
//!
//! The bodies of a long queue are kept apart, in append-only segment files
//! (`segments/mod.rs`), written and synced in the same group commit; those
//! of a short one stay in the database (`SpoolConfig::segment_bodies_from`).
//!
//! Start with [`Spool::open`]; the table layout is described in `store/mod.rs`.

// A `pub` item this crate does not export is crate-private and says so
// (issue 16.4: no unused public item; scripts/check-unused-pub.py checks
// what is exported). Only here, not in Cargo.toml: test support modules
// are `pub` by habit.
#![warn(unreachable_pub)]

mod archive;
mod backlog;
mod batch;
mod clients;
mod codec;
mod compact;
mod config;
mod daily;
mod delivered;
mod error;
mod free_space;
mod id;
mod idempotency;
mod message;
pub mod metrics;
mod quarantine;
mod quota;
mod requests;
mod segments;
mod select;
mod spool;
mod store;
mod suppress;
mod tracking;
mod writer;

pub use backlog::{BacklogEntry, BacklogWritten, MAX_SINK_NAME_BYTES};
pub use clients::ClientPresence;
pub use config::{
    DEFAULT_CACHE_BYTES, DEFAULT_COMMIT_DELAY, DEFAULT_SEGMENT_BODIES_FROM, SpoolConfig,
};
pub use daily::DailyRow;
pub use delivered::Delivered;
pub use error::SpoolError;
pub use id::{MessageId, first_id_at, format_id, id_timestamp_ms, parse_id};
pub use idempotency::IdempotencyRow;
pub use message::{Claimed, MessageMeta, NewMessage, Outcome, StoredMessage};
pub use quarantine::QuarantinedRow;
pub use quota::{Quota, QuotaExceeded, Release, Standing, Window};
pub use select::{
    ClaimCandidate, ClaimFilter, MAX_PAGE, QueueAction, QueueCounts, QueueFilter, QueuePage,
    QueuedRecipient, RecipientStatus, SUSPENDED_DUE,
};
pub use spool::{Spool, SpoolStats};
pub use store::MAX_LAST_REPLY_BYTES;
pub use suppress::{GLOBAL_TENANT, MAX_ADDRESS_BYTES, Suppression, normalize as normalize_address};
pub use tracking::{MAX_TRACKED_LINKS, TrackedLinks, TrackedMessage, TrackingKey};
