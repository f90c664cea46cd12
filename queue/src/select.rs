//! Operator access to queued recipients: filters, paged listing, and the
//! admin actions (flush, suspend, resume, remove) applied to chosen ones.
//!
//! Listing streams: each page is one read transaction over the
//! `recipients` table in key order, so even a million queued recipients
//! are walked page by page, never loaded at once. Actions go through the
//! writer thread like every other change, one page of keys per request,
//! so a large action never holds up SMTP commits for long.
//!
//! A suspended recipient keeps its schedule entry, moved to the far end of
//! the index (`SUSPENDED_DUE`), so the one-entry invariant of `store/mod.rs`
//! holds and `claim_due` never reaches it. Claimed recipients are being
//! attempted in memory: suspend, resume and flush leave them alone, and
//! remove drops their row so the attempt's outcome is ignored afterwards
//! (an attempt already under way may still deliver). A caller that took
//! claimed recipients back out of memory (jobs waiting in a ready queue)
//! applies the action to them with `Spool::queue_action_returned`.

use crate::id::MessageId;
use crate::message::MessageMeta;

/// The due time of a suspended recipient: after every real time.
pub const SUSPENDED_DUE: u64 = u64::MAX;

/// Most recipients one page or one action request may cover.
pub const MAX_PAGE: usize = 10_000;

/// Which recipients an operator means. Empty fields match everything;
/// text matches are exact, the domain case-insensitive.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueFilter {
    pub id: Option<MessageId>,
    pub route: Option<String>,
    /// The recipient's domain.
    pub domain: Option<String>,
    pub tenant: Option<String>,
    pub campaign: Option<String>,
    pub channel: Option<String>,
    /// Only messages received before this time (unix ms).
    pub received_before_ms: Option<u64>,
}

impl QueueFilter {
    pub fn matches(&self, id: MessageId, address: &str, meta: &MessageMeta) -> bool {
        let same = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        let domain_ok = self.domain.as_deref().is_none_or(|want| {
            address
                .rsplit_once('@')
                .is_some_and(|(_, d)| d.eq_ignore_ascii_case(want))
        });
        self.id.is_none_or(|want| want == id)
            && same(&self.route, &meta.route)
            && same(&self.tenant, &meta.tenant)
            && same(&self.campaign, &meta.campaign)
            && same(&self.channel, &meta.channel)
            && domain_ok
            && self
                .received_before_ms
                .is_none_or(|t| meta.received_at_ms < t)
    }
}

/// Where a recipient is in its life in the spool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecipientStatus {
    /// Due now, waiting for room in a ready queue.
    Queued,
    /// Waiting for a later attempt time (a retry, mostly).
    Deferred,
    /// Held by an operator until resumed.
    Suspended,
    /// Claimed: held in memory by the delivery side right now.
    InFlight,
}

impl RecipientStatus {
    pub fn name(self) -> &'static str {
        match self {
            RecipientStatus::Queued => "queued",
            RecipientStatus::Deferred => "deferred",
            RecipientStatus::Suspended => "suspended",
            RecipientStatus::InFlight => "in_flight",
        }
    }
}

/// One unfinished recipient with its message's envelope.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedRecipient {
    pub id: MessageId,
    pub rcpt: u32,
    pub address: String,
    pub mail_from: String,
    pub meta: MessageMeta,
    pub attempts: u32,
    /// When it is due; `SUSPENDED_DUE` while suspended.
    pub next_attempt_ms: u64,
    pub status: RecipientStatus,
    /// The reply of its last deferred attempt, if it had one.
    pub last_reply: Option<String>,
}

/// One page of a listing and where the next one starts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueuePage {
    pub recipients: Vec<QueuedRecipient>,
    /// Pass as `from` for the next page; `None` at the end of the queue.
    pub next: Option<(MessageId, u32)>,
}

/// What an operator does to chosen recipients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueAction {
    /// Due now (scheduled and deferred ones; not suspended ones).
    Flush,
    Suspend,
    /// Suspended ones due now.
    Resume,
    /// Out of the spool; the message leaves with its last recipient.
    Remove,
}

/// A due recipient the scheduler may claim: what a [`ClaimFilter`] sees.
#[derive(Clone, Copy, Debug)]
pub struct ClaimCandidate<'a> {
    pub id: MessageId,
    pub rcpt: u32,
    pub address: &'a str,
    pub meta: &'a MessageMeta,
}

/// Says, per due recipient in due order, whether to claim it now; one left
/// out stays scheduled (its route has no room). Runs on the writer thread
/// inside the claim's transaction: keep it cheap and never wait for the spool.
pub type ClaimFilter = Box<dyn FnMut(&ClaimCandidate<'_>) -> bool + Send>;

/// Due entries one filtered claim looks at from the head of the schedule,
/// so a backlog whose route is full costs a bounded walk, not one over the
/// whole index.
pub(crate) const HEAD_CLAIM_SCAN: usize = 10_000;
/// Due entries one filtered claim looks at further on, from where the last
/// one stopped ([`ClaimCursor`]): without them, recipients behind more than
/// a head's worth of a full route's would wait until that route drained.
pub(crate) const ROTATING_CLAIM_SCAN: usize = 10_000;

/// A key of the schedule: (due time in ms, message, recipient).
pub(crate) type ScheduleKey = (u64, MessageId, u32);

/// Where the next filtered claim goes on walking the due entries past the
/// head; None: right after the head. Kept by the writer between claims.
pub(crate) type ClaimCursor = Option<ScheduleKey>;

/// Recipient counts by status, as `Spool::queue_counts` finds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub queued: u64,
    pub deferred: u64,
    pub suspended: u64,
    pub in_flight: u64,
}
