//! How a session with a relay or MX is protected, authenticated and timed,
//! and the steps it goes through: plain values that the tenancy model
//! (delivery servers), routing and the SMTP client all use. They live here,
//! below all three, so that the tenancy model need not import the client.

use std::fmt;
use std::time::Duration;

/// How the connection is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encryption {
    /// Plain SMTP, never STARTTLS.
    None,
    /// STARTTLS is required: not offered or failed is a [`SessionError`].
    StartTls,
    /// STARTTLS when offered, without certificate checks; plain otherwise, and
    /// plain on a fresh connection when the handshake fails.
    StartTlsOpportunistic,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
}

/// AUTH credentials for a relay. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// One timeout per wait on the server. The defaults are RFC 5321 4.5.3.2's
/// minimums: a relay that scans a message for minutes after the final dot
/// must not get it twice because we gave up early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect (a delivery server's `timeout`).
    pub connect: Duration,
    pub greeting: Duration,
    /// EHLO or HELO reply, and the reply to STARTTLS.
    pub ehlo: Duration,
    /// The TLS handshake (a delivery server's `timeout`, like connect).
    pub tls: Duration,
    /// Each AUTH exchange.
    pub auth: Duration,
    /// MAIL reply (also used for RSET).
    pub mail: Duration,
    pub rcpt: Duration,
    /// DATA reply (the 354).
    pub data: Duration,
    /// Each block of the body written to the server (RFC 5321 4.5.3.2.5:
    /// per send, not for the whole body).
    pub data_block: Duration,
    /// The reply after the final dot.
    pub final_dot: Duration,
    /// The reply to QUIT. Every outcome is recorded by then, and the
    /// worker's wait holds a connection place: a few seconds, at most.
    pub quit: Duration,
}

/// The longest wait for the reply to QUIT.
const QUIT_WAIT: Duration = Duration::from_secs(5);

impl Timeouts {
    /// The same timeout for every phase.
    pub fn uniform(timeout: Duration) -> Self {
        Timeouts {
            connect: timeout,
            greeting: timeout,
            ehlo: timeout,
            tls: timeout,
            auth: timeout,
            mail: timeout,
            rcpt: timeout,
            data: timeout,
            data_block: timeout,
            final_dot: timeout,
            quit: timeout.min(QUIT_WAIT),
        }
    }

    /// The RFC 5321 defaults, with `connection` for TCP connect and the TLS
    /// handshake (what a delivery server's `timeout` means).
    pub fn with_connection_timeout(connection: Duration) -> Self {
        Timeouts {
            connect: connection,
            tls: connection,
            ..Timeouts::default()
        }
    }

    /// The longest a session can take from connect to the end of one
    /// transaction (one body block counted): every phase's timeout added up.
    pub fn whole_session(&self) -> Duration {
        [
            self.connect,
            self.greeting,
            self.ehlo,
            self.tls,
            self.auth,
            self.mail,
            self.rcpt,
            self.data,
            self.data_block,
            self.final_dot,
        ]
        .iter()
        .sum()
    }

    /// The timeout that bounds waits in `phase`.
    pub fn for_phase(&self, phase: Phase) -> Duration {
        match phase {
            Phase::Connect => self.connect,
            Phase::Greeting => self.greeting,
            Phase::Ehlo | Phase::StartTls => self.ehlo,
            Phase::Tls => self.tls,
            Phase::Auth => self.auth,
            Phase::Mail | Phase::Rset => self.mail,
            Phase::Rcpt => self.rcpt,
            Phase::Data => self.data,
            Phase::Body => self.data_block,
            Phase::DataEnd => self.final_dot,
            Phase::Quit => self.quit,
        }
    }
}

impl Default for Timeouts {
    /// RFC 5321 4.5.3.2 minimums (EHLO, STARTTLS and AUTH as MAIL: 5 min),
    /// and Postfix's 30 s connect timeout.
    fn default() -> Self {
        const MINUTE: u64 = 60;
        Timeouts {
            connect: Duration::from_secs(30),
            greeting: Duration::from_secs(5 * MINUTE),
            ehlo: Duration::from_secs(5 * MINUTE),
            tls: Duration::from_secs(5 * MINUTE),
            auth: Duration::from_secs(5 * MINUTE),
            mail: Duration::from_secs(5 * MINUTE),
            rcpt: Duration::from_secs(5 * MINUTE),
            data: Duration::from_secs(2 * MINUTE),
            data_block: Duration::from_secs(3 * MINUTE),
            final_dot: Duration::from_secs(10 * MINUTE),
            quit: QUIT_WAIT,
        }
    }
}

/// The step of the session a reply or failure belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Connect,
    Greeting,
    Ehlo,
    /// The STARTTLS command and its reply.
    StartTls,
    /// The TLS handshake.
    Tls,
    Auth,
    Mail,
    Rcpt,
    /// The DATA command and its 354.
    Data,
    /// Sending the body.
    Body,
    /// The final dot and the reply to it.
    DataEnd,
    Rset,
    Quit,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Phase::Connect => "connect",
            Phase::Greeting => "greeting",
            Phase::Ehlo => "EHLO",
            Phase::StartTls => "STARTTLS",
            Phase::Tls => "TLS handshake",
            Phase::Auth => "AUTH",
            Phase::Mail => "MAIL FROM",
            Phase::Rcpt => "RCPT TO",
            Phase::Data => "DATA",
            Phase::Body => "message body",
            Phase::DataEnd => "end of data",
            Phase::Rset => "RSET",
            Phase::Quit => "QUIT",
        };
        f.write_str(name)
    }
}
