//! `Engine`: what the SMTP sessions, the scheduler and the workers share,
//! and admission, the step between a finished DATA and the reply to it.
//!
//! Admission resolves the tenant (AUTH user, or the default user of relay
//! networks) and its group, reads the control headers, checks the sender
//! domain, applies the group's header/footer and the server's From rules
//! once, picks the route, and commits the message to the spool together
//! with its quota counts. The 250 is returned only after the spool's
//! commit (fdatasync); a failed commit is 451 4.3.0, a quota refusal names
//! the limit, and the client keeps its copy in both cases. Recipients on a
//! suppression list are dropped first (`suppress`).

use std::net::SocketAddr;
use std::sync::Arc;

use sendengine_queue::{MessageId, MessageMeta, NewMessage, Spool, SpoolError, StoredMessage};
use tokio::sync::oneshot;

use crate::deliver::{Job, base_event};
use crate::events::{EventKind, EventLog};
use crate::limits;
use crate::message::{self, TraceInfo};
use crate::metrics::Refusal;
use crate::route::{Router, Target};
use crate::suppress;
use crate::tenancy::{CHANNELS, Tenancy, TenancyStore, User};
use crate::timefmt::now_ms;
use crate::transform;
use crate::values::Reply;

/// Who sent a message, as the SMTP session knows it.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub peer: SocketAddr,
    pub helo: String,
    pub tls: bool,
    pub auth_user: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Envelope {
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub client: ClientInfo,
}

pub struct Engine {
    pub hostname: String,
    pub spool: Spool,
    pub events: EventLog,
    pub router: Arc<Router>,
    pub tenancy: Arc<TenancyStore>,
    /// The tenant of relay-network mail without AUTH.
    pub default_user: Option<String>,
    /// `[dns] nameservers`, or the system's resolver.
    pub resolver: crate::dns::Resolver,
    /// `[cluster]`: the fleet this node belongs to; none when standalone.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

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

impl Engine {
    /// Admits a message and returns the reply to its DATA.
    pub async fn admit(&self, envelope: Envelope, data: Vec<u8>) -> Reply {
        let snapshot = self.tenancy.snapshot();
        let mut admitted = match self.prepare(&snapshot, &envelope, data) {
            Ok(a) => a,
            Err(reply) => return reply,
        };
        if admitted.message.recipients.is_empty() {
            self.emit_suppressed(&admitted, "");
            crate::metrics::recipients_suppressed(
                &admitted.message.meta,
                admitted.suppressed.len(),
            );
            crate::metrics::injection_refused(Refusal::AllSuppressed);
            return suppress::all_suppressed();
        }
        let dkim = sign(&snapshot, &mut admitted).await;
        let meta = admitted.message.meta.clone();
        let target = self
            .router
            .choose(&snapshot, &meta.group, &meta.channel, &[]);
        let priority = crate::deliver::is_priority_channel(&meta.channel);
        let reserved = match &target {
            Some(Target::Relay(r)) if r.ready.try_reserve(priority) => Some(r.clone()),
            _ => None,
        };
        // Direct mail is split by domain right after the commit.
        let direct = matches!(target, Some(Target::Direct));
        let (job, id) = match self.commit(admitted, reserved.is_some() || direct).await {
            Ok(committed) => committed,
            Err(reply) => {
                if let Some(r) = reserved {
                    r.ready.cancel_reservation(priority);
                }
                return reply;
            }
        };
        self.record_reception(&job, &dkim);
        crate::metrics::message_received(&job.message.meta, job.message.recipients.len());
        if let Some(route) = reserved {
            self.router.leases().track(&job, now_ms());
            self.router.queue_reserved(&route, job);
        } else if direct {
            self.router.leases().track(&job, now_ms());
            self.router.dispatch_direct(job);
        }
        Reply::new(
            250,
            "2.0.0",
            format!("Queued as {}", sendengine_queue::format_id(id)),
        )
    }

    /// Policy and transforms: everything decided before the commit.
    fn prepare(
        &self,
        snapshot: &Tenancy,
        envelope: &Envelope,
        data: Vec<u8>,
    ) -> Result<Admitted, Reply> {
        let now = now_ms();
        let client = &envelope.client;
        let tenant = client
            .auth_user
            .clone()
            .or_else(|| self.default_user.clone());
        let user: Option<&Arc<User>> = tenant.as_ref().and_then(|t| snapshot.users.get(t));
        let group = snapshot
            .group_of(user.map(|u| u.as_ref()))
            .ok_or_else(|| no_tenant(tenant.as_deref(), user.map(|u| u.as_ref()), client))?;
        let prepared = message::prepare(
            &data,
            &TraceInfo {
                hostname: &self.hostname,
                helo: &client.helo,
                peer_ip: client.peer.ip().to_string(),
                tls: client.tls,
                authenticated: client.auth_user.is_some(),
                time_ms: now,
            },
        );
        drop(data);
        let channel = channel_of(prepared.control.channel.as_deref())
            .inspect_err(|_| crate::metrics::injection_refused(Refusal::UnknownChannel))?;
        let split = suppress::split_recipients(
            &self.spool,
            tenant.as_deref().unwrap_or_default(),
            &envelope.recipients,
        )
        .inspect_err(|_| crate::metrics::injection_refused(Refusal::LocalError))?;
        let recipients = split.kept.len() as u64;
        let from_domain = transform::from_domain(&prepared.body);
        let mut quotas = match &tenant {
            Some(t) => limits::user_quotas(t, group, recipients),
            None => Vec::new(),
        };
        if let Some(q) = limits::check_sender_domain(
            snapshot,
            user.map(|u| u.as_ref()),
            group,
            from_domain.as_deref(),
            recipients,
        )
        .inspect_err(|_| crate::metrics::injection_refused(Refusal::SenderDomain))?
        {
            quotas.push(q);
        }
        // The route is known here only as the group's list for the channel,
        // in failover order. The message is transformed and signed once, for
        // the first server: a failover server sends the same bytes, with the
        // first server's From (see README, "From rewrites and DKIM").
        let primary = group
            .servers_for(channel)
            .first()
            .and_then(|name| snapshot.server(name));
        let mut decoration = group.decoration();
        decoration.from = primary.and_then(|s| {
            s.enforced_from.clone().or_else(|| {
                s.sender_info_as_from
                    .then(|| user.and_then(|u| u.sender_from()))
                    .flatten()
            })
        });
        let (mail_from, return_path_domain) = return_path(
            snapshot,
            primary.map(|s| s.as_ref()),
            user.map(|u| u.as_ref()),
            group,
            envelope,
            from_domain.as_deref(),
        );
        let body = transformed(prepared.body, &decoration, envelope)?;
        // After every rewrite: the domain of the From that leaves signs.
        let signing_domain = transform::from_domain(&body);
        Ok(Admitted {
            message: NewMessage {
                mail_from,
                recipients: split.kept,
                body,
                meta: MessageMeta {
                    tenant: tenant.unwrap_or_default(),
                    group: group.name.clone(),
                    channel: channel.to_owned(),
                    campaign: prepared.control.campaign.unwrap_or_default(),
                    route: primary.map(|s| s.name.clone()).unwrap_or_default(),
                    received_at_ms: now,
                    client: format!("{} ({})", client.peer, client.helo),
                    return_path_domain,
                },
                quotas,
            },
            header_message_id: prepared.message_id,
            signing_domain,
            suppressed: split.dropped,
        })
    }

    /// Events for the recipients admission left out (suppressed).
    fn emit_suppressed(&self, admitted: &Admitted, queue_id: &str) {
        let message = &admitted.message;
        suppress::emit_dropped(
            &self.events,
            &message.mail_from,
            &message.meta,
            message.body.len(),
            &admitted.header_message_id,
            &admitted.suppressed,
            queue_id,
        );
    }

    /// Writes the message to the spool (durably: the caller answers 250
    /// after this) and returns the job that delivers it.
    async fn commit(&self, admitted: Admitted, claimed: bool) -> Result<(Job, MessageId), Reply> {
        let Admitted {
            mut message,
            header_message_id,
            suppressed,
            ..
        } = admitted;
        // Cluster mode: the fleet's quotas are decided by the ledger; the
        // spool only counts (`cluster::quota`).
        let reservation = match &self.cluster {
            Some(c) => Some(
                c.quota
                    .reserve(&mut message.quotas)
                    .await
                    .map_err(fleet_quota_refusal)?,
            ),
            None => None,
        };
        let body: Arc<[u8]> = message.body.as_slice().into();
        let (mail_from, recipients, meta) = (
            message.mail_from.clone(),
            message.recipients.clone(),
            message.meta.clone(),
        );
        let (tx, rx) = oneshot::channel();
        self.spool.insert(
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
            &self.events,
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

    /// Applies a change to the configuration objects and brings the routes
    /// in line; what the admin socket calls.
    pub fn change(
        &self,
        change: crate::tenancy::Change,
    ) -> Result<(), crate::tenancy::TenancyError> {
        self.tenancy.apply(change)?;
        self.router.sync();
        Ok(())
    }

    fn record_reception(&self, job: &Job, dkim: &str) {
        let now = job.message.meta.received_at_ms;
        for rcpt in 0..job.message.recipients.len() as u32 {
            let mut event = base_event(job, rcpt, EventKind::Reception, now);
            event.remote_host = Some(job.message.meta.client.clone());
            event.dkim = Some(dkim.to_owned());
            self.events.emit(event);
        }
    }
}

/// The group's and server's transforms, then the re-encoding for relays
/// without 8BITMIME (`transform::seven_bit`): what is signed and spooled.
fn transformed(
    body: Vec<u8>,
    decoration: &transform::Decoration,
    envelope: &Envelope,
) -> Result<Vec<u8>, Reply> {
    let refuse = |e: transform::TransformError| {
        crate::metrics::injection_refused(Refusal::Content);
        Reply::new(
            554,
            "5.6.0",
            format!("The message cannot be processed: {e}"),
        )
    };
    // Most groups decorate nothing: then the prepared bytes go on as they
    // are, without a copy.
    let body = if decoration.is_empty() {
        body
    } else {
        transform::decorate(&body, decoration).map_err(refuse)?
    };
    // UTF-8 addresses need SMTPUTF8 anyway: their header stays UTF-8.
    let utf8_envelope =
        !envelope.mail_from.is_ascii() || envelope.recipients.iter().any(|r| !r.is_ascii());
    Ok(transform::seven_bit(&body, utf8_envelope)
        .map_err(refuse)?
        .unwrap_or(body))
}

/// The refusal of a message that has no tenant in any user group.
fn no_tenant(tenant: Option<&str>, user: Option<&User>, client: &ClientInfo) -> Reply {
    crate::metrics::injection_refused(Refusal::NoTenant);
    let why = match (tenant, user) {
        (None, _) => format!(
            "Mail from {} without AUTH has no tenant: log in with SMTP AUTH, or have the \
             operator set smtp_in.default_user",
            client.peer.ip()
        ),
        (Some(name), None) => format!(
            "User `{name}` does not exist: create it, or have the operator change \
             smtp_in.default_user"
        ),
        (Some(name), Some(user)) => format!(
            "User `{name}` is in group `{}`, which does not exist: move the user to a user group",
            user.group
        ),
    };
    Reply::new(550, "5.7.1", why)
}

/// MAIL FROM for delivery and the domain of its VERP address (empty: no
/// VERP). The delivery server's mail-from domain wins; else an enabled
/// sender domain's own bounce subdomain (`sl.` by default); a server set to
/// `sender_info_as_mfrom` uses the user's sender address as it is.
fn return_path(
    snapshot: &Tenancy,
    server: Option<&crate::tenancy::DeliveryServer>,
    user: Option<&User>,
    group: &crate::tenancy::UserGroup,
    envelope: &Envelope,
    from_domain: Option<&str>,
) -> (String, String) {
    if let Some(server) = server
        && server.sender_info_as_mfrom
        && let Some(email) = user.and_then(|u| u.sender_email.clone())
    {
        return (email, String::new());
    }
    let verp_domain = server
        .and_then(|s| s.mail_from_domain.clone())
        .or_else(|| {
            let user = user?;
            let domain = from_domain?;
            snapshot
                .domain_of(&user.name, domain)
                .filter(|d| d.is_enabled())
                .map(|d| crate::domains::mail_from_domain(&d.domain, &group.domain_settings))
        })
        .unwrap_or_default();
    (envelope.mail_from.clone(), verp_domain)
}

/// DKIM-signs the message with its From domain's active keys, off the
/// async threads (RSA costs about a quarter of a millisecond). Returns
/// what the reception event says about it.
async fn sign(snapshot: &Tenancy, admitted: &mut Admitted) -> String {
    let Some(domain) = admitted.signing_domain.clone() else {
        return "unsigned: no From domain".into();
    };
    let signers = match snapshot.signing.get(&domain) {
        Some(s) if !s.signers.is_empty() => s.signers.clone(),
        _ => return format!("unsigned: no DKIM key for {domain}"),
    };
    let body = std::mem::take(&mut admitted.message.body);
    let signed = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let result = sendengine_dkim::sign_message(&signers, &body);
        crate::metrics::dkim_sign_time(started);
        (result, body, signers)
    })
    .await;
    match signed {
        Ok((Ok(signed), _, signers)) => {
            admitted.message.body = signed;
            let selectors: Vec<&str> = signers.iter().map(|s| s.selector()).collect();
            format!("signed d={domain} s={}", selectors.join(","))
        }
        Ok((Err(e), body, _)) => {
            admitted.message.body = body;
            format!("unsigned: {e}")
        }
        Err(_) => "unsigned: the signing task failed".into(),
    }
}

fn channel_of(header: Option<&str>) -> Result<&'static str, Reply> {
    match header {
        None | Some("") => Ok("marketing"),
        Some(c) => CHANNELS.iter().copied().find(|k| *k == c).ok_or_else(|| {
            Reply::new(
                550,
                "5.6.0",
                format!(
                    "X-Channel `{c}` is unknown: use marketing, transactional or autoresponder"
                ),
            )
        }),
    }
}

/// The reply when the fleet's quota ledger refused (cluster mode).
fn fleet_quota_refusal(e: crate::cluster::quota::Refused) -> Reply {
    let limit = matches!(e, crate::cluster::quota::Refused::Limit(_));
    crate::metrics::injection_refused(if limit {
        Refusal::Quota
    } else {
        Refusal::LocalError
    });
    e.reply()
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
