//! The outbound SMTP client: one [`Connection`] to a relay or MX, set up with
//! greeting, EHLO, STARTTLS (required or opportunistic) or implicit TLS, and
//! AUTH, then reused for many transactions. A transaction pipelines MAIL, RCPT
//! and DATA when the server allows it (and may write them behind the previous
//! message's end of data) and returns one [`Reply`] per recipient,
//! so a refused recipient never costs the others their delivery. Every wait on
//! the server has its own phase timeout. `SessionError` is for failures that
//! make the connection unusable; the caller defers and drops the connection.

mod body;
mod capabilities;
mod commands;
mod content;
mod reply;
mod session;
mod tls;
mod transaction;
mod transport;

use std::time::Duration;

pub use capabilities::Capabilities;
pub use content::ContentNeeds;
pub use reply::{MAX_REPLY_LINE, MAX_REPLY_LINES, Reply, ReplyLine};
/// The client's TLS handshake (aws-lc-rs; webpki roots, or any certificate
/// when `verify` is false); `server test` uses it step by step.
pub use tls::handshake as tls_handshake;
pub use transaction::{AwaitingFinal, Opened, Sent};

use transport::Transport;

pub use crate::values::relay::{Credentials, Encryption, Phase, Timeouts};

/// Where to connect and how.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// Host name or IP address; also the TLS server name.
    pub host: String,
    pub port: u16,
    pub encryption: Encryption,
    /// Our name in EHLO/HELO.
    pub helo_name: String,
    pub auth: Option<Credentials>,
    pub timeouts: Timeouts,
    /// Verify the server certificate against the webpki roots (required
    /// STARTTLS and implicit TLS only; opportunistic STARTTLS never verifies).
    pub tls_verify: bool,
}

/// A connection-level failure: the connection is unusable and every recipient
/// of the transaction in progress is deferred by the caller.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("I/O error during {phase}: {source}")]
    Io {
        phase: Phase,
        source: std::io::Error,
    },
    #[error("timeout after {after:?} during {phase}")]
    Timeout { phase: Phase, after: Duration },
    #[error("TLS failure during {phase}: {message}")]
    Tls { phase: Phase, message: String },
    #[error("server refused {phase}: {reply}")]
    Rejected { phase: Phase, reply: Reply },
    #[error("protocol error during {phase}: {message}")]
    Protocol { phase: Phase, message: String },
}

impl SessionError {
    pub fn phase(&self) -> Phase {
        match self {
            SessionError::Io { phase, .. }
            | SessionError::Timeout { phase, .. }
            | SessionError::Tls { phase, .. }
            | SessionError::Rejected { phase, .. }
            | SessionError::Protocol { phase, .. } => *phase,
        }
    }

    /// Whether this failure, on a connection that already carried a
    /// transaction, only says that the server closed it meanwhile: an I/O
    /// error or a 421 at the first command (MAIL), before anything of the
    /// message was sent. Then a fresh connection is worth one more try, and
    /// the failure says nothing about the server's health.
    pub fn closed_while_idle(&self) -> bool {
        match self {
            SessionError::Io { phase, .. } => *phase == Phase::Mail,
            SessionError::Rejected { phase, reply } => *phase == Phase::Mail && reply.code == 421,
            _ => false,
        }
    }

    /// The server's reply, when a reply caused the failure.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            SessionError::Rejected { reply, .. } => Some(reply),
            _ => None,
        }
    }
}

/// The envelope of one transaction.
pub struct Envelope<'a> {
    /// The return path; "" is the null sender (`MAIL FROM:<>`).
    pub mail_from: &'a str,
    pub recipients: &'a [&'a str],
}

/// How the connection ended up protected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsState {
    Plain,
    /// Upgraded with STARTTLS.
    StartTls,
    /// TLS from the first byte.
    Implicit,
    /// Opportunistic STARTTLS failed (the reason is given), so this connection
    /// is plain.
    PlainAfterTlsFailure(String),
}

/// An open SMTP session, ready for transactions.
pub struct Connection {
    transport: Transport,
    timeouts: Timeouts,
    remote: String,
    greeting: String,
    capabilities: Capabilities,
    tls: TlsState,
    /// Set once `send` failed: the session state is unknown from then on.
    broken: bool,
}

impl Connection {
    pub fn tls(&self) -> TlsState {
        self.tls.clone()
    }

    /// "host:port" (IPv6 addresses in brackets), for events.
    pub fn remote(&self) -> &str {
        &self.remote
    }

    /// The text of the server's 220 greeting, without the code.
    pub fn greeting(&self) -> &str {
        &self.greeting
    }

    /// The extensions from the last EHLO (after STARTTLS when it was used).
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// Whether the server closed the connection (or said something, such as
    /// a 421, without being asked) while it sat idle in the pool. A cheap
    /// look, without waiting: relays close idle connections after a few
    /// seconds, and a pooled connection is checked before each reuse.
    pub fn closed_by_server(&mut self) -> bool {
        self.broken || self.transport.has_unsolicited_input()
    }

    /// The permanent refusal when this server lacks an extension the
    /// message needs (8BITMIME, SMTPUTF8), naming the server; None if not.
    pub fn content_refusal(&self, needs: &ContentNeeds) -> Option<Reply> {
        needs.refusal(&self.capabilities, &self.remote)
    }

    /// Ends the session politely: QUIT, wait for its reply with the quit
    /// timeout, close. Errors do not matter any more at this point. After a
    /// failed `send` the session state is unknown, so it only closes.
    pub async fn quit(mut self) {
        let after = self.timeouts.quit;
        if !self.broken {
            let sent = self.transport.send_line(Phase::Quit, after, "QUIT").await;
            if sent.is_ok() {
                let _ = self.transport.read_reply(Phase::Quit, after).await;
            }
        }
        self.transport.shutdown(after).await;
    }
}

/// "host:port", with brackets around an IPv6 address.
fn remote_name(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
