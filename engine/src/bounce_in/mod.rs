//! The bounce listener (`[bounce_in]`): a small SMTP server that takes
//! asynchronous bounces (DSNs) and complaints (ARF) addressed to our VERP
//! return paths, and turns them into events and suppressions (`intake`).
//!
//! No AUTH, no relaying, no TLS: it accepts mail only for
//! `local+TAG@domain` where TAG passes its HMAC check (and, if
//! `[bounce_in] domains` is set, the domain is listed); anything else gets
//! 550 5.1.1. Any sender is accepted, the null sender `<>` included (DSNs
//! come from it). A message is answered 250 only once its suppressions are
//! committed and its events handed to the event log. The session itself
//! (commands, limits, timeouts, DATA budget) is the injection server's
//! core, `smtp::session`; this file is the policy.

mod choose;
pub mod intake;
mod lookup;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sendengine_bounces::verp;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::config::BounceInSection;
use crate::events::EventLog;
use crate::smtp::listener::{ListenerControl, serve_listener};
use crate::smtp::session::{
    Basics, Client, ListenerGuards, Policy, SessionLimits, Texts, Transaction,
};
use crate::values::Reply;
pub use intake::{Intake, Target};

/// Longest command line (RFC 5321 asks for at least 512).
const MAX_LINE_BYTES: usize = 2048;
/// Recipients per transaction; a DSN has one.
const MAX_RECIPIENTS: usize = 50;
/// Refused commands before the session is closed.
const MAX_ERRORS: u32 = 10;
/// How long sessions get to finish once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// What every bounce session shares.
pub struct BounceContext {
    pub intake: Intake,
    pub events: EventLog,
    pub settings: BounceInSection,
    pub basics: Basics,
}

const TEXTS: Texts = Texts {
    banner: "ESMTP sendengine bounce intake",
    help: "Bounce intake: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT",
    vrfy: "Cannot verify the address, but will accept bounces for it",
};

impl BounceContext {
    pub fn new(engine: &crate::engine::Engine, config: &crate::config::Config) -> BounceContext {
        let settings = &config.bounce_in;
        BounceContext {
            intake: Intake {
                spool: engine.spool.clone(),
                verp_secret: engine.tenancy.secrets().derived("verp"),
                auto_suppress: config.suppression.auto_suppress,
                // The recorder's copy: the one the delivery side writes to.
                fleet: engine.router.recorder().fleet_index.clone(),
            },
            events: engine.events.clone(),
            basics: Basics {
                hostname: config.hostname.clone(),
                texts: TEXTS,
                limits: SessionLimits {
                    max_line_length: MAX_LINE_BYTES,
                    max_message_size: settings.max_message_size,
                    max_recipients: MAX_RECIPIENTS,
                    max_errors: MAX_ERRORS,
                    max_idle_commands: settings.max_idle_commands,
                    max_connections_per_ip: settings.max_connections_per_ip,
                    command_timeout: settings.command_timeout,
                    data_timeout: settings.data_timeout,
                },
                guards: Arc::new(ListenerGuards::new(settings.max_data_in_flight)),
            },
            settings: settings.clone(),
        }
    }
}

/// Binds every `[bounce_in] listen` address (at start, so a busy port is
/// an error then, not later).
pub async fn bind(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, (SocketAddr, std::io::Error)> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        let listener = crate::smtp::listener::bind(addr).map_err(|e| (addr, e))?;
        if let Ok(local) = listener.local_addr() {
            log::info!("bounce listener on {local}");
        }
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Accepts bounce sessions on every listener until shutdown, then waits
/// (at most `DRAIN_TIMEOUT`) for the sessions to finish.
pub async fn serve(
    listeners: Vec<TcpListener>,
    ctx: Arc<BounceContext>,
    shutdown: watch::Receiver<bool>,
) {
    let max = ctx.settings.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    // The policy never changes; the listeners close as shutdown starts.
    let (_context, context) = watch::channel(ctx);
    let accept_loops: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let control = ListenerControl {
                context: context.clone(),
                slots: slots.clone(),
                shutdown: shutdown.clone(),
                closed: shutdown.clone(),
            };
            tokio::spawn(serve_listener(listener, control))
        })
        .collect();
    for task in accept_loops {
        let _ = task.await;
    }
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(all)).await;
}

impl Policy for BounceContext {
    /// Tied recipients of ours, one per accepted RCPT.
    type Recipient = Target;

    fn basics(&self) -> &Basics {
        &self.basics
    }

    fn rcpt(
        &self,
        _client: &Client,
        _tx: &Transaction<Target>,
        to: String,
    ) -> Result<Target, Reply> {
        self.bounce_target(&to).inspect_err(|_| {
            ::metrics::counter!("sendengine_bounce_in_total", "kind" => "refused-rcpt")
                .increment(1);
        })
    }

    async fn deliver(&self, _client: Client, tx: Transaction<Target>, body: Vec<u8>) -> Reply {
        self.take(tx.rcpts, body).await
    }
}

impl BounceContext {
    /// The recipient of ours a bounce address stands for, or the 550.
    fn bounce_target(&self, to: &str) -> Result<Target, Reply> {
        let domain = to.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
        let domains = &self.settings.domains;
        if !domains.is_empty() && !domain.is_some_and(|d| domains.contains(&d)) {
            return Err(Reply::new(
                550,
                "5.1.1",
                format!(
                    "No such mailbox <{to}>: this server takes bounces only for its return-path domains"
                ),
            ));
        }
        match verp::decode_address(to, &self.intake.verp_secret) {
            Ok(tagged) => Ok(Target::of(tagged, to.to_owned())),
            Err(why) => Err(Reply::new(
                550,
                "5.1.1",
                format!(
                    "No such mailbox <{to}>: this server takes only bounces to the VERP addresses it sent from ({why})"
                ),
            )),
        }
    }

    /// Runs the intake off the async threads; 250 once it is all handed over.
    async fn take(&self, targets: Vec<Target>, body: Vec<u8>) -> Reply {
        let intake = self.intake.clone();
        let processed = tokio::task::spawn_blocking(move || intake.process(&targets, &body)).await;
        match processed {
            Ok(Ok(events)) => {
                events.into_iter().for_each(|e| self.events.emit(e));
                Reply::new(250, "2.0.0", "Bounce received")
            }
            Ok(Err(e)) => {
                if !e.logged {
                    log::error!("bounce intake failed, answering 451: {e}");
                }
                Reply::new(
                    451,
                    "4.3.0",
                    "Temporary local problem while recording the bounce: try again later",
                )
            }
            Err(e) => {
                log::error!("bounce intake stopped, answering 451: {e}");
                Reply::new(451, "4.3.0", "Temporary local problem: try again later")
            }
        }
    }
}
