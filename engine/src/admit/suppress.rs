//! Admission step 3, suppression: recipients on their tenant's suppression list
//! or on the global one are taken out of a message before it is queued.
//!
//! Each dropped recipient gets a `suppression` event; a message left with
//! no recipient is refused with a 550 (nothing is stored). The lists are
//! kept in the spool (`Spool::suppress`); hard bounces fill them (see
//! `deliver::record`) and operators edit them over the admin socket.

use sendengine_queue::{MessageMeta, Spool};

use crate::events::{Event, EventKind, EventLog, EventReply, SUPPRESSED_AT_ADMISSION};
use crate::metrics::Refusal;
use crate::timefmt::{now_ms, rfc3339};
use crate::values::Reply;

use super::Admitted;

/// A message's recipients split by the suppression lists, in their order.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Split {
    pub kept: Vec<String>,
    pub dropped: Vec<String>,
}

/// Splits `recipients` by `tenant`'s list and the global one. A failed
/// read is a 451: better to have the client retry than to send to an
/// address that asked not to get mail.
pub(super) fn split_recipients(
    spool: &Spool,
    tenant: &str,
    recipients: &[String],
) -> Result<Split, Reply> {
    let listed = spool.suppressed(tenant, recipients).map_err(|e| {
        log::error!("reading the suppression lists failed, answering 451: {e}");
        crate::metrics::injection_refused(Refusal::LocalError);
        Reply::new(
            451,
            "4.3.0",
            "Temporary local problem: the suppression list could not be read, try again later",
        )
    })?;
    let mut split = Split::default();
    for (address, listed) in recipients.iter().zip(listed) {
        let side = if listed {
            &mut split.dropped
        } else {
            &mut split.kept
        };
        side.push(address.clone());
    }
    Ok(split)
}

/// The answer to a message whose every recipient is suppressed, after an
/// event for each of them.
pub(super) fn refuse_all(events: &EventLog, admitted: &Admitted) -> Reply {
    let message = &admitted.message;
    emit_dropped(
        events,
        &message.mail_from,
        &message.meta,
        message.body.len(),
        &admitted.header_message_id,
        &admitted.suppressed,
        "",
    );
    crate::metrics::recipients_suppressed(&message.meta, admitted.suppressed.len());
    crate::metrics::injection_refused(Refusal::AllSuppressed);
    Reply::new(550, "5.7.1", "All recipients are on the suppression list")
}

/// One `suppression` event per dropped recipient. `message_id` is the
/// queue id of what was kept, or "" when nothing was queued.
pub(super) fn emit_dropped(
    events: &EventLog,
    mail_from: &str,
    meta: &MessageMeta,
    size: usize,
    header_message_id: &str,
    dropped: &[String],
    message_id: &str,
) {
    let now = now_ms();
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    for recipient in dropped {
        events.emit(Event {
            time: rfc3339(now),
            kind: EventKind::Suppression,
            message_id: message_id.to_owned(),
            header_message_id: header_message_id.to_owned(),
            sender: mail_from.to_owned(),
            recipient: recipient.clone(),
            tenant: opt(&meta.tenant),
            group: opt(&meta.group),
            channel: meta.channel.clone(),
            campaign: opt(&meta.campaign),
            route: opt(&meta.route),
            remote_host: Some(meta.client.clone()),
            reply: Some(EventReply {
                code: 550,
                enhanced: Some("5.7.1".into()),
                text: SUPPRESSED_AT_ADMISSION.into(),
            }),
            bounce_class: None,
            bounce_type: None,
            tls: None,
            dkim: None,
            attempt: 0,
            queue_time_ms: 0,
            size,
            url: None,
            user_agent: None,
            metadata: crate::events::metadata_of(meta),
        });
    }
}
