//! Admission step 9: the commit. The message is written to the spool with
//! its quota counts (group commit, fdatasync) and only then answered 250;
//! a refused or failed write is the reply instead, and the client keeps
//! its copy. A message whose route has room goes straight to its ready
//! queue (`Handoff`); the others wait in the spool for `schedule`.

use std::sync::Arc;

use sendengine_queue::{MessageId, MessageMeta, SpoolError, StoredMessage};
use tokio::sync::oneshot;

use crate::cluster::quota::Refused;
use crate::deliver::{Job, Route, base_event};
use crate::engine::Engine;
use crate::events::EventKind;
use crate::route::Target;
use crate::tenancy::Tenancy;
use crate::timefmt::now_ms;
use crate::values::Reply;

use super::{Admitted, limits, suppress};

/// Where the message goes once committed, decided before the commit so
/// that a message claimed for a ready queue is never also scheduled.
pub(super) enum Handoff {
    /// A place in the route's ready queue, reserved.
    Relay { route: Arc<Route>, priority: bool },
    /// Direct mail: split by domain right after the commit.
    Direct,
    /// The ready queue is full or there is no route: `schedule` picks it
    /// up from the spool.
    Later,
}

impl Handoff {
    /// Chooses the route and reserves a place in its ready queue.
    pub(super) fn reserve(engine: &Engine, snapshot: &Tenancy, meta: &MessageMeta) -> Handoff {
        let target = engine
            .router
            .choose(snapshot, &meta.group, &meta.channel, &[]);
        let priority = crate::deliver::is_priority_channel(&meta.channel);
        match target {
            Some(Target::Relay(route)) if route.ready.try_reserve(priority) => {
                Handoff::Relay { route, priority }
            }
            Some(Target::Direct) => Handoff::Direct,
            _ => Handoff::Later,
        }
    }

    /// Whether the spool marks the message claimed (not for `schedule`).
    pub(super) fn claims(&self) -> bool {
        !matches!(self, Handoff::Later)
    }

    /// Gives the reservation back when the commit failed.
    pub(super) fn cancel(self) {
        if let Handoff::Relay { route, priority } = self {
            route.ready.cancel_reservation(priority);
        }
    }

    /// Hands the committed job to its ready queue or to direct delivery.
    pub(super) fn deliver(self, engine: &Engine, job: Job) {
        match self {
            Handoff::Relay { route, .. } => {
                engine.router.leases().track(&job, now_ms());
                engine.router.queue_reserved(&route, job);
            }
            Handoff::Direct => {
                engine.router.leases().track(&job, now_ms());
                engine.router.dispatch_direct(job);
            }
            Handoff::Later => {}
        }
    }
}

/// Writes the message to the spool (durably: the caller answers 250
/// after this) and returns the job that delivers it.
pub(super) async fn write(
    engine: &Engine,
    admitted: Admitted,
    claimed: bool,
) -> Result<(Job, MessageId), Reply> {
    let Admitted {
        mut message,
        header_message_id,
        suppressed,
        ..
    } = admitted;
    // Cluster mode: the fleet's quotas are decided by the ledger; the
    // spool only counts (`cluster::quota`).
    let reservation = match &engine.cluster {
        Some(c) => Some(
            c.quota
                .reserve(&mut message.quotas)
                .await
                .map_err(fleet_quota_refusal)?,
        ),
        None => None,
    };
    // Shared with the spool, not copied: the first delivery reads the same bytes.
    let body = message.body.clone();
    let (mail_from, recipients, meta) = (
        message.mail_from.clone(),
        message.recipients.clone(),
        message.meta.clone(),
    );
    let (tx, rx) = oneshot::channel();
    engine.spool.insert(
        message,
        claimed,
        Box::new(move |result| {
            let _ = tx.send(result);
        }),
    );
    let result = rx.await.unwrap_or(Err(SpoolError::Closed));
    if let Some(r) = reservation {
        r.settle(result.is_ok());
    }
    let id = result.map_err(|e| refusal_for(&e))?;
    let stored = Arc::new(StoredMessage {
        id,
        mail_from,
        recipients,
        meta,
        body,
    });
    suppress::emit_dropped(
        &engine.events,
        &stored.mail_from,
        &stored.meta,
        stored.body.len(),
        &header_message_id,
        &suppressed,
        &sendengine_queue::format_id(id),
    );
    crate::metrics::recipients_suppressed(&stored.meta, suppressed.len());
    let rcpts = (0..stored.recipients.len() as u32)
        .map(|i| (i, 0))
        .collect();
    let job = Job {
        message: stored,
        header_message_id,
        rcpts,
        tried: Vec::new(),
        hold: Default::default(),
    };
    Ok((job, id))
}

/// One reception event per recipient, saying how the message was signed.
pub(super) fn record_reception(engine: &Engine, job: &Job, dkim: &str) {
    let now = job.message.meta.received_at_ms;
    for rcpt in 0..job.message.recipients.len() as u32 {
        let mut event = base_event(job, rcpt, EventKind::Reception, now);
        event.remote_host = Some(job.message.meta.client.clone());
        event.dkim = Some(dkim.to_owned());
        engine.events.emit(event);
    }
    crate::metrics::message_received(&job.message.meta, job.message.recipients.len());
}

/// The reply to a committed message.
pub(super) fn queued(id: MessageId) -> Reply {
    Reply::new(
        250,
        "2.0.0",
        format!("Queued as {}", sendengine_queue::format_id(id)),
    )
}

/// The reply when the fleet's quota ledger refused (cluster mode).
fn fleet_quota_refusal(e: Refused) -> Reply {
    match e {
        Refused::Limit(exceeded) => {
            crate::metrics::injection_refused(crate::metrics::Refusal::Quota);
            limits::refusal(&exceeded)
        }
        Refused::Unavailable => {
            crate::metrics::injection_refused(crate::metrics::Refusal::LocalError);
            Refused::unavailable_reply()
        }
    }
}

/// The reply when the spool did not take the message.
fn refusal_for(e: &SpoolError) -> Reply {
    crate::metrics::spool_refused(e);
    match e {
        SpoolError::QuotaExceeded(q) => limits::refusal(q),
        SpoolError::Invalid(why) => Reply::new(554, "5.6.0", format!("Message refused: {why}")),
        SpoolError::Closed => Reply::new(
            451,
            "4.3.0",
            "Temporary local problem: the queue is shutting down, try again later",
        ),
        other => {
            log::error!("spool write failed, answering 451: {other}");
            Reply::new(
                451,
                "4.3.0",
                "Temporary local problem: the message could not be queued, try again later",
            )
        }
    }
}
