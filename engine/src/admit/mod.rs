//! Admission: the step between a finished DATA and the reply to it. Every
//! decision about a message is made here, once; the message is committed
//! to the spool and only then answered 250.
//!
//! `admit` runs the steps in this order, one file each:
//!
//! 1. `tenant`: the tenant (AUTH user, or the default user of relay
//!    networks) and its user group; none is 550 5.7.1.
//! 2. `control`: our Received line, a Message-ID and Date where missing,
//!    and the X-Channel / X-Campaign-Id control headers, read and removed.
//! 3. `suppress`: recipients on a suppression list are dropped, with an
//!    event each; a message left with none is 550 5.7.1.
//! 4. `limits`: the sender-domain check and the quotas the spool counts at
//!    the commit.
//! 5. `return_path`: MAIL FROM for delivery and its VERP domain.
//! 6. `decorate`: the group's header/footer, the server's From rules and
//!    the 7-bit re-encoding (the byte-level work is in `crate::transform`).
//! 7. `track`: click and open tracking (links and pixel in the HTML
//!    parts) for mail to a server with tracking domains (`crate::tracking`).
//! 8. `sign`: DKIM, with the keys of the From domain the message leaves
//!    with.
//! 9. `commit`: the route's ready queue is reserved, the spool write is
//!    waited for (a failed one is 451 4.3.0, a quota refusal names the
//!    limit: the client keeps its copy), the reception events are written
//!    and the message is handed to delivery.

mod commit;
mod control;
mod decorate;
pub(crate) mod limits;
mod return_path;
mod sign;
mod suppress;
mod tenant;
mod track;

pub(crate) use control::MAX_CONTROL_VALUE;

use sendengine_queue::{IdempotencyRow, MessageMeta, NewMessage};

use crate::engine::{Engine, Envelope};
use crate::tenancy::Tenancy;
use crate::timefmt::now_ms;
use crate::transform;
use crate::values::Reply;

use commit::Handoff;
use control::TraceInfo;

/// What admission decided before the commit.
struct Admitted {
    message: NewMessage,
    header_message_id: String,
    /// The domain of the From the message leaves with (after
    /// `enforced_from` / `sender_info_as_from`), whose DKIM keys sign it.
    signing_domain: Option<String>,
    /// Recipients left out because they are on a suppression list.
    suppressed: Vec<String>,
}

/// What a front door other than SMTP adds to a message (HTTP injection).
#[derive(Debug, Default)]
pub struct Extras {
    /// JSON text carried into every event of the message's recipients;
    /// empty: none.
    pub metadata: String,
    /// Written in the commit's own transaction: it exists exactly when
    /// the message does (see `http_in::idempotency`).
    pub idempotency: Option<IdempotencyRow>,
}

/// Admits a message and returns the reply to its DATA.
pub async fn admit(engine: &Engine, envelope: Envelope, data: Vec<u8>) -> Reply {
    admit_with(engine, envelope, data, Extras::default()).await
}

/// [`admit`], with what the front door adds.
pub async fn admit_with(
    engine: &Engine,
    envelope: Envelope,
    data: Vec<u8>,
    extras: Extras,
) -> Reply {
    let snapshot = engine.tenancy.snapshot();
    let mut admitted = match decide(engine, &snapshot, &envelope, data) {
        Ok(a) => a,
        Err(reply) => return reply,
    };
    admitted.message.meta.metadata = extras.metadata;
    admitted.message.idempotency = extras.idempotency;
    if admitted.message.recipients.is_empty() {
        return suppress::refuse_all(&engine.events, &admitted);
    }
    let dkim = sign::sign(engine, &snapshot, &mut admitted).await;
    let handoff = Handoff::reserve(engine, &snapshot, &admitted.message.meta);
    let (job, id) = match commit::write(engine, admitted, handoff.claims()).await {
        Ok(committed) => committed,
        Err(reply) => {
            handoff.cancel();
            return reply;
        }
    };
    commit::record_reception(engine, &job, &dkim);
    handoff.deliver(engine, job);
    commit::queued(id)
}

/// Steps 1 to 7: policy and transforms, everything decided before the
/// message is signed and committed.
fn decide(
    engine: &Engine,
    snapshot: &Tenancy,
    envelope: &Envelope,
    data: Vec<u8>,
) -> Result<Admitted, Reply> {
    let now = now_ms();
    let client = &envelope.client;
    let tenant = tenant::resolve(snapshot, client, engine.default_user.as_deref())?;
    let edited = control::edit_headers(
        &data,
        &TraceInfo {
            hostname: &engine.hostname,
            helo: &client.helo,
            peer_ip: client.peer.ip().to_string(),
            tls: client.tls,
            authenticated: client.auth_user.is_some(),
            smtputf8: envelope.smtputf8,
            time_ms: now,
        },
    );
    drop(data);
    let channel = control::channel_of(edited.control.channel.as_deref())?;
    control::check_campaign(edited.control.campaign.as_deref())?;
    let split = suppress::split_recipients(
        &engine.spool,
        tenant.name.as_deref().unwrap_or_default(),
        &envelope.recipients,
    )?;
    let from_domain = transform::from_domain(&edited.body);
    let quotas = limits::quotas(
        snapshot,
        &tenant,
        from_domain.as_deref(),
        split.kept.len() as u64,
    )?;
    let primary = snapshot.primary_server(tenant.group, channel);
    let decoration = decorate::decoration(primary, &tenant, &engine.x_mailer);
    let (mail_from, return_path_domain) =
        return_path::return_path(snapshot, primary, &tenant, envelope, from_domain.as_deref());
    let transformed = decorate::transformed(edited.body, &decoration, envelope)?;
    let (body, tracking) = track::track(
        engine.tracking.as_deref(),
        primary,
        tenant.group,
        transformed.body,
        &edited.message_id,
        now,
    );
    // The domain of the From that leaves signs; tracking leaves the
    // header alone, so only the transforms can have changed it.
    let signing_domain = if transformed.from_rewritten {
        transform::from_domain(&body)
    } else {
        from_domain.clone()
    };
    Ok(Admitted {
        message: NewMessage {
            mail_from,
            recipients: split.kept,
            body: body.into(),
            meta: MessageMeta {
                tenant: tenant.name.unwrap_or_default(),
                group: tenant.group.name.clone(),
                channel: channel.to_owned(),
                campaign: edited.control.campaign.unwrap_or_default(),
                route: primary.map(|s| s.name.clone()).unwrap_or_default(),
                received_at_ms: now,
                client: format!("{} ({})", client.peer, client.helo),
                return_path_domain,
                metadata: String::new(),
            },
            quotas,
            tracking,
            idempotency: None,
        },
        header_message_id: edited.message_id,
        signing_domain,
        suppressed: split.dropped,
    })
}
