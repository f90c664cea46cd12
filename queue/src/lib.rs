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
//! Start with [`Spool::open`]; the table layout is described in `store.rs`.

mod codec;
mod config;
mod error;
mod id;
mod message;
mod quota;
mod select;
mod spool;
mod store;
mod suppress;
mod writer;

pub use config::SpoolConfig;
pub use error::SpoolError;
pub use id::{MessageId, format_id, id_timestamp_ms, parse_id};
pub use message::{
    Claimed, MAX_BODY_BYTES, MAX_FIELD_BYTES, MAX_RECIPIENTS, MessageMeta, NewMessage, Outcome,
    StoredMessage,
};
pub use quota::{Quota, QuotaExceeded, Window};
pub use select::{
    MAX_PAGE, QueueAction, QueueCounts, QueueFilter, QueuePage, QueuedRecipient, RecipientStatus,
    SUSPENDED_DUE,
};
pub use spool::{Spool, SpoolStats};
pub use suppress::{GLOBAL_TENANT, MAX_ADDRESS_BYTES, MAX_NOTE_BYTES, Suppression};
