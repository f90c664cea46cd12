//! `Engine`: what the SMTP sessions, the scheduler and the workers share,
//! and admission, the step between a finished DATA and the reply to it.
//!
//! Admission edits the headers once (`message::prepare`), picks the route,
//! and commits the message to the spool. The 250 is returned only after the
//! spool's commit callback reported success, i.e. after fdatasync; a failed
//! commit becomes 451 4.3.0 and the client keeps its copy.

use std::net::SocketAddr;
use std::sync::Arc;

use sendengine_queue::{MessageMeta, NewMessage, Spool, StoredMessage};
use tokio::sync::oneshot;

use crate::deliver::{Job, Recorder, Routes, base_event};
use crate::events::{EventKind, EventLog};
use crate::message::{self, CHANNELS, TraceInfo};
use crate::smtp::reply::Reply;
use crate::timefmt::now_ms;

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
    pub routes: Routes,
    pub recorder: Recorder,
}

impl Engine {
    /// Admits a message and returns the reply to its DATA.
    pub async fn admit(&self, envelope: Envelope, data: Vec<u8>) -> Reply {
        let now = now_ms();
        let client = &envelope.client;
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
        let channel = match prepared.control.channel.as_deref() {
            None | Some("") => "marketing",
            Some(c) if CHANNELS.contains(&c) => c,
            Some(other) => {
                return Reply::new(
                    550,
                    "5.6.0",
                    format!(
                        "X-Channel `{other}` is unknown: use marketing, transactional or autoresponder"
                    ),
                );
            }
        };
        let route = self.routes.default_route().clone();
        let meta = MessageMeta {
            tenant: client.auth_user.clone().unwrap_or_default(),
            group: String::new(),
            channel: channel.to_owned(),
            campaign: prepared.control.campaign.clone().unwrap_or_default(),
            route: route.name.clone(),
            received_at_ms: now,
            client: format!("{} ({})", client.peer, client.helo),
        };
        let body: Arc<[u8]> = prepared.body.into();
        let claimed = route.ready.try_reserve();
        let (tx, rx) = oneshot::channel();
        self.spool.insert(
            NewMessage {
                mail_from: envelope.mail_from.clone(),
                recipients: envelope.recipients.clone(),
                body: body.to_vec(),
                meta: meta.clone(),
            },
            claimed,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        let id = match rx.await {
            Ok(Ok(id)) => id,
            Ok(Err(e)) => {
                if claimed {
                    route.ready.cancel_reservation();
                }
                eprintln!("sendengine: spool write failed, answering 451: {e}");
                return Reply::new(
                    451,
                    "4.3.0",
                    "Temporary local problem: the message could not be queued, try again later",
                );
            }
            Err(_) => {
                return Reply::new(
                    451,
                    "4.3.0",
                    "Temporary local problem: the queue is shutting down, try again later",
                );
            }
        };
        let stored = Arc::new(StoredMessage {
            id,
            mail_from: envelope.mail_from,
            recipients: envelope.recipients,
            meta,
            body,
        });
        let rcpts = (0..stored.recipients.len() as u32)
            .map(|i| (i, 0))
            .collect();
        let job = Job {
            message: stored,
            header_message_id: prepared.message_id,
            rcpts,
        };
        self.record_reception(&job, now);
        if claimed {
            route.push_reserved(job);
        }
        Reply::new(
            250,
            "2.0.0",
            format!("Queued as {}", sendengine_queue::format_id(id)),
        )
    }

    fn record_reception(&self, job: &Job, now: u64) {
        for rcpt in 0..job.message.recipients.len() as u32 {
            let mut event = base_event(job, rcpt, EventKind::Reception, now);
            event.remote_host = Some(job.message.meta.client.clone());
            self.events.emit(event);
        }
    }
}
