//! The SMTP session core shared by every listener of ours (injection and
//! bounce intake): one task per client connection.
//!
//! `Session` walks a client through EHLO, MAIL, RCPT and DATA, enforces the
//! order of commands and the numbered limits of `SessionLimits`, and runs
//! every read and every write under the command timeout and the shutdown
//! signal, so a client that never reads its replies cannot hold a slot.
//! What a recipient, AUTH and a finished message mean is the listener's
//! `Policy`. Every refusal carries a code, an enhanced status code and a
//! sentence; the session carries on after it unless the client passed the
//! error limit or the limit of commands that send no mail.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::budget::DataBudget;
use super::command::{self, Command, MailParams};
use super::connection::{Connection, Line, Stream};
use super::listener::PerIpConnections;
use super::reply::write_ehlo_reply;
use super::sasl::Authenticator;
use crate::metrics::Refusal;
use crate::values::Reply;

/// The numbered limits of one listener's sessions.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    pub max_line_length: usize,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Refused commands before the session is closed.
    pub max_errors: u32,
    /// Commands that send no mail (NOOP, RSET, VRFY, HELP, EHLO, HELO)
    /// before the session is closed; a finished transaction starts again.
    pub max_idle_commands: u32,
    /// Connections at once from one address (an IPv6 client by its /64).
    pub max_connections_per_ip: usize,
    /// How long a command line, or a write of replies, may take.
    pub command_timeout: Duration,
    /// How long the whole DATA section may take.
    pub data_timeout: Duration,
}

/// What a listener keeps for its whole life, across reloads.
#[derive(Debug)]
pub struct ListenerGuards {
    pub per_ip: PerIpConnections,
    pub data_budget: DataBudget,
}

impl ListenerGuards {
    pub fn new(max_data_in_flight: u64) -> ListenerGuards {
        ListenerGuards {
            per_ip: PerIpConnections::default(),
            data_budget: DataBudget::new(max_data_in_flight),
        }
    }
}

/// The words a listener greets and answers with.
#[derive(Debug, Clone, Copy)]
pub struct Texts {
    /// The greeting after the host name, e.g. "ESMTP sendengine ready".
    pub banner: &'static str,
    /// The text of the 214 reply to HELP.
    pub help: &'static str,
    /// The text of the 252 reply to VRFY.
    pub vrfy: &'static str,
}

/// What a listener's sessions run with, whatever the policy decides.
#[derive(Debug)]
pub struct Basics {
    pub hostname: String,
    pub texts: Texts,
    pub limits: SessionLimits,
    /// Shared by the listener's sessions, kept across reloads.
    pub guards: Arc<ListenerGuards>,
}

/// What the session knows about its client, for the policy to judge by.
#[derive(Debug, Clone)]
pub struct Client {
    pub peer: SocketAddr,
    /// The name given in EHLO or HELO.
    pub helo: Option<String>,
    pub tls: bool,
    /// The user who passed AUTH.
    pub auth_user: Option<String>,
}

/// One mail transaction, between MAIL and the reply to DATA.
pub struct Transaction<R> {
    pub mail_from: String,
    pub params: MailParams,
    pub rcpts: Vec<R>,
}

/// What one listener's commands mean; the session does the rest.
pub trait Policy: Send + Sync + 'static {
    /// What an accepted RCPT becomes.
    type Recipient: Send + Sync + 'static;

    fn basics(&self) -> &Basics;

    /// STARTTLS is offered when there is an acceptor.
    fn tls(&self) -> Option<&TlsAcceptor> {
        None
    }

    /// AUTH is offered when there is an authenticator with users.
    fn authenticator(&self) -> Option<&Authenticator> {
        None
    }

    /// Clients the per-address connection limit does not apply to.
    fn trusted(&self, _ip: IpAddr) -> bool {
        false
    }

    /// Counts a refusal in the listener's metrics.
    fn count_refusal(&self, _why: Refusal) {}

    /// Counts an open session in the listener's metrics, until dropped.
    fn count_session(&self) -> Option<crate::metrics::SmtpSession> {
        None
    }

    /// Counts a client that may send mail (now: after AUTH, or from a
    /// network that needs none) among the spool's connected clients, whose
    /// messages a commit waits a little for, until dropped.
    fn client_presence(&self, _client: &Client) -> Option<sendengine_queue::ClientPresence> {
        None
    }

    /// Checks a sender after the session's own checks (order, SIZE).
    fn mail(&self, _client: &Client, _from: &str, _params: &MailParams) -> Result<(), Reply> {
        Ok(())
    }

    /// Accepts a recipient (the session then applies `max_recipients`), or
    /// refuses it; a refusal counts against the error limit.
    fn rcpt(
        &self,
        client: &Client,
        tx: &Transaction<Self::Recipient>,
        to: String,
    ) -> Result<Self::Recipient, Reply>;

    /// Takes a finished message; the reply goes back as is (250 only once
    /// the message is safe).
    fn deliver(
        &self,
        client: Client,
        tx: Transaction<Self::Recipient>,
        body: Vec<u8>,
    ) -> impl Future<Output = Reply> + Send;
}

pub(super) enum Flow {
    Continue,
    Close,
}

pub struct Session<P: Policy> {
    pub(super) ctx: Arc<P>,
    pub(super) client: Client,
    pub(super) conn: Option<Connection>,
    pub(super) tx: Option<Transaction<P::Recipient>>,
    errors: u32,
    idle_commands: u32,
    pub(super) shutdown: watch::Receiver<bool>,
    /// Among the spool's connected clients while it may send.
    presence: Option<sendengine_queue::ClientPresence>,
}

impl<P: Policy> Session<P> {
    pub fn new(
        ctx: Arc<P>,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Session<P> {
        // TCP_NODELAY comes from the listening socket (`listener::bind`).
        Session {
            ctx,
            client: Client {
                peer,
                helo: None,
                tls: false,
                auth_user: None,
            },
            conn: Some(Connection::new(Stream::Plain(stream))),
            tx: None,
            errors: 0,
            idle_commands: 0,
            shutdown,
            presence: None,
        }
    }

    /// The session in the listener's metrics, until dropped.
    pub fn count_open(&self) -> Option<crate::metrics::SmtpSession> {
        self.ctx.count_session()
    }

    /// Counts the client among the spool's connected clients once it may
    /// send (`Policy::client_presence`); called again whenever that may
    /// have changed (AUTH, STARTTLS).
    pub(super) fn update_presence(&mut self) {
        if self.presence.is_none() {
            self.presence = self.ctx.client_presence(&self.client);
        }
    }

    /// Runs the session to its end; I/O errors and timeouts just end it.
    pub async fn run(mut self) {
        let basics = self.ctx.basics();
        let conn = self.conn.as_mut().expect("connection present");
        for part in [
            "220 ",
            basics.hostname.as_str(),
            " ",
            basics.texts.banner,
            "\r\n",
        ] {
            conn.queue_raw(part.as_bytes());
        }
        self.update_presence();
        let _ = self.serve().await;
        if self.conn.is_some() {
            let _ = self.send_last().await;
        }
    }

    pub(super) fn conn(&mut self) -> &mut Connection {
        self.conn
            .as_mut()
            .expect("connection present outside STARTTLS")
    }

    pub(super) fn limits(&self) -> &SessionLimits {
        &self.ctx.basics().limits
    }

    /// Writes the queued replies (see `bounded_write`).
    pub(super) async fn send(&mut self) -> io::Result<()> {
        let timeout = self.limits().command_timeout;
        let shutdown = self.shutdown.clone();
        let conn = self.conn.as_mut().expect("connection present");
        bounded_write(conn.flush(), timeout, shutdown).await
    }

    /// Writes the last replies (221, or a 421) and ends the stream, under
    /// the same bounds as `send`.
    async fn send_last(&mut self) -> io::Result<()> {
        let timeout = self.limits().command_timeout;
        let shutdown = self.shutdown.clone();
        let conn = self.conn.as_mut().expect("connection present");
        bounded_write(conn.finish(), timeout, shutdown).await
    }

    async fn serve(&mut self) -> io::Result<()> {
        loop {
            if !self.conn().has_buffered_input() {
                self.send().await?;
            }
            let flow = match self.next_line().await? {
                None | Some(Line::Closed) => return Ok(()),
                Some(Line::TooLong) => {
                    let limit = self.limits().max_line_length;
                    self.refuse(Reply::new(
                        500,
                        "5.5.2",
                        format!("Line too long: the limit is {limit} bytes"),
                    ))
                }
                Some(Line::Complete(bytes)) => match command::parse(&bytes) {
                    Ok(cmd) => self.handle(cmd).await?,
                    Err(reply) => self.refuse(reply),
                },
            };
            if let Flow::Close = flow {
                return Ok(());
            }
        }
    }

    /// The next command line, or `None` after saying goodbye on idle
    /// timeout or shutdown.
    async fn next_line(&mut self) -> io::Result<Option<Line>> {
        let limit = self.limits().max_line_length;
        let timeout = self.limits().command_timeout;
        let mut shutdown = self.shutdown.clone();
        let conn = self.conn.as_mut().expect("connection present");
        tokio::select! {
            read = tokio::time::timeout(timeout, conn.read_line(limit)) => match read {
                Ok(line) => line.map(Some),
                Err(_) => {
                    conn.queue_reply(&Reply::new(421, "4.4.2", "Idle timeout: closing the connection"));
                    Ok(None)
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => {
                conn.queue_reply(&Reply::new(421, "4.3.2", "Service shutting down: try again later"));
                Ok(None)
            }
        }
    }

    /// Sends a refusal and counts it against the client's error limit.
    pub(super) fn refuse(&mut self, reply: Reply) -> Flow {
        self.errors += 1;
        self.conn().queue_reply(&reply);
        if self.errors >= self.limits().max_errors {
            self.conn().queue_reply(&Reply::new(
                421,
                "4.7.0",
                "Too many errors in this session: closing the connection",
            ));
            return Flow::Close;
        }
        Flow::Continue
    }

    pub(super) fn reply(&mut self, reply: Reply) -> Flow {
        self.conn().queue_reply(&reply);
        Flow::Continue
    }

    /// Counts a command that sends no mail and answers it; past the limit,
    /// says goodbye instead (Postfix's `smtpd_junk_command_limit`).
    fn idle_command(&mut self, reply: Reply) -> Flow {
        if !self.within_idle_limit() {
            return Flow::Close;
        }
        self.reply(reply)
    }

    /// Counts a command that sends no mail; false (with the 421 queued)
    /// once the client has sent more than the limit.
    fn within_idle_limit(&mut self) -> bool {
        self.idle_commands += 1;
        let limit = self.limits().max_idle_commands;
        if self.idle_commands <= limit {
            return true;
        }
        self.conn().queue_reply(&Reply::new(
            421,
            "4.7.0",
            format!(
                "Too many commands that send no mail ({limit}) in this session: closing the connection"
            ),
        ));
        false
    }

    /// A transaction ended with a reply to DATA: the client is working.
    pub(super) fn transaction_done(&mut self) {
        self.idle_commands = 0;
    }

    async fn handle(&mut self, cmd: Command) -> io::Result<Flow> {
        Ok(match cmd {
            Command::Ehlo(name) => self.ehlo(name, true),
            Command::Helo(name) => self.ehlo(name, false),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to } => self.rcpt(to),
            Command::Data => return self.data().await,
            Command::Rset => {
                self.tx = None;
                self.idle_command(Reply::new(250, "2.0.0", "Reset OK"))
            }
            Command::Noop => self.idle_command(Reply::new(250, "2.0.0", "OK")),
            Command::Vrfy => {
                self.idle_command(Reply::new(252, "2.5.0", self.ctx.basics().texts.vrfy))
            }
            Command::Help => {
                self.idle_command(Reply::new(214, "2.0.0", self.ctx.basics().texts.help))
            }
            Command::Quit => {
                self.reply(Reply::new(221, "2.0.0", "Bye"));
                Flow::Close
            }
            Command::StartTls => return self.starttls().await,
            Command::Auth { mechanism, initial } => return self.auth(mechanism, initial).await,
        })
    }

    fn ehlo(&mut self, name: String, extended: bool) -> Flow {
        if !self.within_idle_limit() {
            return Flow::Close;
        }
        self.tx = None;
        self.client.helo = Some(name);
        if !extended {
            let host = self.ctx.basics().hostname.clone();
            return self.reply(Reply::new(250, "2.0.0", host));
        }
        let starttls = (self.ctx.tls().is_some() && !self.client.tls).then_some("STARTTLS");
        let auth = self.auth_allowed().then_some("AUTH PLAIN LOGIN");
        let extra: Vec<&str> = starttls.into_iter().chain(auth).collect();
        let basics = self.ctx.basics();
        let conn = self.conn.as_mut().expect("connection present");
        conn.queue_with(|out| {
            write_ehlo_reply(
                out,
                &basics.hostname,
                self.client.peer.ip(),
                basics.limits.max_message_size,
                &extra,
            );
        });
        Flow::Continue
    }

    fn mail(&mut self, from: String, params: MailParams) -> Flow {
        if self.client.helo.is_none() {
            return self.refuse(Reply::new(503, "5.5.1", "Send EHLO or HELO first"));
        }
        if self.tx.is_some() {
            return self.refuse(Reply::new(
                503,
                "5.5.1",
                "Sender already given: send RSET to start a new transaction",
            ));
        }
        let max = self.limits().max_message_size;
        if params.size.is_some_and(|s| s > max) {
            self.ctx.count_refusal(Refusal::TooBig);
            return self.refuse(too_big(max));
        }
        if let Err(reply) = self.ctx.mail(&self.client, &from, &params) {
            return self.refuse(reply);
        }
        self.tx = Some(Transaction {
            mail_from: from,
            params,
            rcpts: Vec::new(),
        });
        self.reply(Reply::new(250, "2.1.0", "Sender OK"))
    }

    fn rcpt(&mut self, to: String) -> Flow {
        let max = self.limits().max_recipients;
        let Some(tx) = self.tx.as_ref() else {
            return self.refuse(Reply::new(503, "5.5.1", "Send MAIL FROM first"));
        };
        let recipient = match self.ctx.rcpt(&self.client, tx, to) {
            Ok(recipient) => recipient,
            Err(reply) => return self.refuse(reply),
        };
        let tx = self.tx.as_mut().expect("checked above");
        if tx.rcpts.len() >= max {
            // Not an error: the client sends the rest in a new transaction.
            return self.reply(Reply::new(
                452,
                "4.5.3",
                format!("Too many recipients: at most {max} per message, send the rest separately"),
            ));
        }
        tx.rcpts.push(recipient);
        self.reply(Reply::new(250, "2.1.5", "Recipient OK"))
    }

    async fn starttls(&mut self) -> io::Result<Flow> {
        let Some(acceptor) = self.ctx.tls().cloned() else {
            return Ok(self.refuse(Reply::new(502, "5.5.1", "STARTTLS is not available here")));
        };
        if self.client.tls {
            return Ok(self.refuse(Reply::new(503, "5.5.1", "TLS is already active")));
        }
        self.conn()
            .queue_reply(&Reply::new(220, "2.0.0", "Ready to start TLS"));
        self.send().await?;
        // Anything the client pipelined after STARTTLS is dropped here
        // (CVE-2011-0411 style injection).
        let Stream::Plain(tcp) = self.conn.take().expect("present").into_stream() else {
            return Ok(Flow::Close);
        };
        let handshake = acceptor.accept(tcp);
        match tokio::time::timeout(Duration::from_secs(30), handshake).await {
            Ok(Ok(tls)) => {
                self.conn = Some(Connection::new(Stream::from(tls)));
                // RFC 3207: forget everything learnt before TLS.
                self.client.helo = None;
                self.client.auth_user = None;
                self.client.tls = true;
                self.tx = None;
                self.presence = None;
                self.update_presence();
                Ok(Flow::Continue)
            }
            _ => Ok(Flow::Close),
        }
    }
}

/// Runs a write of replies under the command timeout and the shutdown
/// signal: a client that does not read cannot hold its slot.
async fn bounded_write(
    write: impl Future<Output = io::Result<()>>,
    timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    tokio::select! {
        // A reply that fits in the socket buffer goes out even at shutdown.
        biased;
        written = tokio::time::timeout(timeout, write) => match written {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "client does not read its replies")),
        },
        _ = shutdown.wait_for(|stop| *stop) => {
            Err(io::Error::new(io::ErrorKind::Interrupted, "shutdown while writing"))
        }
    }
}

pub(super) fn too_big(max: u64) -> Reply {
    Reply::new(
        552,
        "5.3.4",
        format!("Message too big: the limit is {max} bytes"),
    )
}
