//! The SMTP injection server's policy: what the session core
//! (`smtp::session`) asks of the listener the application sends through.
//!
//! A recipient is accepted only from a client that authenticated or sends
//! from a relay network (no open relay); AUTH checks the tenancy's users;
//! a finished DATA goes to `admit::admit`, whose reply (250 only once the
//! message is on disk) is sent back as is.

use std::net::IpAddr;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::config::SmtpInSection;
use crate::engine::{ClientInfo, Engine, Envelope};
use crate::metrics::Refusal;
use crate::smtp::sasl::Authenticator;
use crate::smtp::session::{
    Basics, Client, ListenerGuards, Policy, SessionLimits, Texts, Transaction,
};
use crate::values::Reply;

pub use crate::smtp::listener::{ListenerControl, serve_listener};

/// What every injection session of one daemon shares; rebuilt at reload.
pub struct ServerContext {
    pub engine: Arc<Engine>,
    pub settings: SmtpInSection,
    pub basics: Basics,
    pub tls: Option<TlsAcceptor>,
    pub authenticator: Authenticator,
}

const TEXTS: Texts = Texts {
    banner: "ESMTP sendengine ready",
    help: "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY STARTTLS AUTH",
    vrfy: "Cannot verify the address, but will accept mail for it",
};

impl ServerContext {
    pub fn new(
        engine: &Arc<Engine>,
        settings: &SmtpInSection,
        hostname: &str,
        tls: Option<TlsAcceptor>,
        shared: &SharedState,
    ) -> ServerContext {
        shared
            .auth_limiter
            .set_max_failures(settings.auth_failures_per_ip);
        ServerContext {
            engine: engine.clone(),
            basics: Basics {
                hostname: hostname.to_owned(),
                texts: TEXTS,
                limits: SessionLimits {
                    max_line_length: settings.max_line_length,
                    max_message_size: settings.max_message_size,
                    max_recipients: settings.max_recipients,
                    max_errors: settings.max_errors,
                    max_idle_commands: settings.max_idle_commands,
                    max_connections_per_ip: settings.max_connections_per_ip,
                    command_timeout: settings.command_timeout,
                    data_timeout: settings.data_timeout,
                },
                guards: shared.guards.clone(),
            },
            settings: settings.clone(),
            tls,
            authenticator: Authenticator {
                tenancy: engine.tenancy.clone(),
                limiter: shared.auth_limiter.clone(),
                max_failures: settings.auth_failures_per_ip,
            },
        }
    }
}

/// What outlives a reload: AUTH failure counts, connections per address,
/// the DATA budget (its size is read at start).
#[derive(Clone)]
pub struct SharedState {
    pub auth_limiter: Arc<crate::smtp::auth_limit::AuthLimiter>,
    pub guards: Arc<ListenerGuards>,
}

impl SharedState {
    pub fn new(settings: &SmtpInSection) -> SharedState {
        SharedState {
            auth_limiter: Arc::new(crate::smtp::auth_limit::AuthLimiter::new(
                settings.auth_failures_per_ip,
            )),
            guards: Arc::new(ListenerGuards::new(settings.max_data_in_flight)),
        }
    }
}

impl Policy for ServerContext {
    type Recipient = String;

    fn basics(&self) -> &Basics {
        &self.basics
    }

    fn tls(&self) -> Option<&TlsAcceptor> {
        self.tls.as_ref()
    }

    fn authenticator(&self) -> Option<&Authenticator> {
        Some(&self.authenticator)
    }

    /// The application's own hosts may open as many connections as
    /// `max_connections` allows (Postfix exempts `$mynetworks` the same way).
    fn trusted(&self, ip: IpAddr) -> bool {
        self.in_relay_networks(ip)
    }

    fn count_refusal(&self, why: Refusal) {
        crate::metrics::injection_refused(why);
    }

    fn count_session(&self) -> Option<crate::metrics::SmtpSession> {
        Some(crate::metrics::smtp_session())
    }

    fn client_presence(&self, client: &Client) -> Option<sendengine_queue::ClientPresence> {
        self.may_send(client)
            .then(|| self.engine.spool.client_connected())
    }

    fn rcpt(&self, client: &Client, tx: &Transaction<String>, to: String) -> Result<String, Reply> {
        if !self.may_send(client) {
            crate::metrics::injection_refused(Refusal::RelayDenied);
            return Err(Reply::new(
                554,
                "5.7.1",
                format!(
                    "Relay access denied for <{to}>: authenticate with AUTH or send from an allowed network"
                ),
            ));
        }
        if !to.is_ascii() && !tx.params.smtputf8 {
            return Err(Reply::new(
                553,
                "5.6.7",
                "Non-ASCII recipient needs SMTPUTF8 on MAIL FROM",
            ));
        }
        if tx.mail_from.is_empty() && !tx.rcpts.is_empty() {
            // A bounce goes to one address; many is a spam pattern.
            return Err(Reply::new(
                550,
                "5.5.3",
                "A message with a null sender (a bounce) has exactly one recipient",
            ));
        }
        Ok(to)
    }

    async fn deliver(&self, client: Client, tx: Transaction<String>, body: Vec<u8>) -> Reply {
        let envelope = Envelope {
            smtputf8: tx.params.smtputf8,
            mail_from: tx.mail_from,
            recipients: tx.rcpts,
            client: ClientInfo {
                peer: client.peer,
                helo: client.helo.unwrap_or_default(),
                tls: client.tls,
                auth_user: client.auth_user,
            },
        };
        // Boxed: admission's state is most of a session's future, and a
        // session future is moved whole when its connection's task is
        // spawned; on the heap it is made once per message instead.
        Box::pin(crate::admit::admit(&self.engine, envelope, body)).await
    }
}

impl ServerContext {
    /// What the next context (after a reload) must share with this one.
    pub fn shared(&self) -> SharedState {
        SharedState {
            auth_limiter: self.authenticator.limiter.clone(),
            guards: self.basics.guards.clone(),
        }
    }

    /// Whether `client` may send mail: authenticated, or from a relay
    /// network (no open relay).
    fn may_send(&self, client: &Client) -> bool {
        client.auth_user.is_some() || self.in_relay_networks(client.peer.ip())
    }

    fn in_relay_networks(&self, ip: IpAddr) -> bool {
        self.settings.relay_networks.iter().any(|n| n.contains(ip))
    }
}
