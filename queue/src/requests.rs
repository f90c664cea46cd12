//! What the writer thread is asked to do: one request type per kind of
//! change, each with the completion it calls once with its result.

use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

use crate::backlog::BacklogRequest;
use crate::daily::DailyRequest;
use crate::delivered::DeliveredWrite;
use crate::error::SpoolError;
use crate::id::MessageId;
use crate::idempotency::IdempotencyRequest;
use crate::message::{Claimed, Outcome};
use crate::quarantine::Damaged;
use crate::select::{ClaimFilter, QueueAction};
use crate::store::EncodedMessage;

pub(crate) use ObjectRequest as ObjectWrite;

/// Called once with the result of a request.
pub(crate) type Completion<T> = Box<dyn FnOnce(Result<T, SpoolError>) + Send>;

pub(crate) struct InsertRequest {
    pub(crate) msg: EncodedMessage,
    pub(crate) claimed: bool,
    pub(crate) done: Completion<MessageId>,
    /// When it was handed to the writer: the commit delay counts from it.
    pub(crate) submitted: Instant,
}

pub(crate) struct RecordRequest {
    pub(crate) outcomes: Vec<Outcome>,
    /// Delivered-index rows written in the same transaction.
    pub(crate) index: DeliveredWrite,
    pub(crate) done: Completion<()>,
}

/// Stores (`Some`) or deletes (`None`) a configuration object; the
/// completion says whether one existed before.
pub(crate) struct ObjectRequest {
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) done: Completion<bool>,
}

/// Adds (`entry` is `Some((reason, source))`) or removes a suppression;
/// the completion says whether the address was listed before.
pub(crate) struct SuppressRequest {
    pub(crate) tenant: String,
    pub(crate) address: String,
    pub(crate) entry: Option<(String, String)>,
    pub(crate) done: Completion<bool>,
}

/// An operator's action on chosen recipients; the completion gets, per
/// key, whether it changed anything.
pub(crate) struct ActionRequest {
    pub(crate) action: QueueAction,
    pub(crate) keys: Vec<(MessageId, u32)>,
    /// The keys are claimed recipients the caller took back from memory.
    pub(crate) returned: bool,
    pub(crate) done: Completion<Vec<bool>>,
}

/// Quarantines what a read found damaged: a message that cannot be
/// delivered (envelope or body unreadable) with every recipient row it
/// still has, or one recipient row that still does not decode.
pub(crate) struct QuarantineRequest {
    pub(crate) damaged: Damaged,
    pub(crate) done: Completion<()>,
}

pub(crate) struct ClaimRequest {
    pub(crate) now_ms: u64,
    pub(crate) limit: usize,
    pub(crate) accept: Option<ClaimFilter>,
    pub(crate) done: Completion<Vec<Claimed>>,
}

/// One message on the writer's channel.
pub(crate) enum Request {
    Insert(InsertRequest),
    Record(RecordRequest),
    Claim(ClaimRequest),
    Object(ObjectRequest),
    Suppress(SuppressRequest),
    Action(ActionRequest),
    Backlog(BacklogRequest),
    Daily(DailyRequest),
    Idempotency(IdempotencyRequest),
    Quarantine(QuarantineRequest),
    Forget(ForgetRequest),
    Compact(Completion<bool>),
}

/// Deletes delivered-index rows from the journal once the archive holds
/// them (`archive.rs`). Needs no fdatasync of its own: lost in a crash,
/// the rows are moved again.
pub(crate) struct ForgetRequest {
    pub(crate) keys: Vec<(MessageId, u32)>,
    pub(crate) done: Completion<()>,
}

impl Request {
    /// Bytes counted against `max_pending_bytes` while this request waits.
    pub(crate) fn pending_bytes(&self) -> usize {
        match self {
            Request::Insert(insert) => insert.msg.size_bytes(),
            _ => 0,
        }
    }

    pub(crate) fn fail(self, err: SpoolError) {
        match self {
            Request::Insert(r) => complete(r.done, Err(err)),
            Request::Record(r) => complete(r.done, Err(err)),
            Request::Claim(r) => complete(r.done, Err(err)),
            Request::Object(r) => complete(r.done, Err(err)),
            Request::Suppress(r) => complete(r.done, Err(err)),
            Request::Action(r) => complete(r.done, Err(err)),
            Request::Backlog(r) => complete(r.done, Err(err)),
            Request::Daily(r) => complete(r.done, Err(err)),
            Request::Idempotency(r) => complete(r.done, Err(err)),
            Request::Quarantine(r) => complete(r.done, Err(err)),
            Request::Forget(r) => complete(r.done, Err(err)),
            Request::Compact(done) => complete(done, Err(err)),
        }
    }
}

/// Calls a completion. A panicking callback must not take the writer thread,
/// and with it every later request, down.
pub(crate) fn complete<T>(done: Completion<T>, result: Result<T, SpoolError>) {
    let _ = panic::catch_unwind(AssertUnwindSafe(move || done(result)));
}
