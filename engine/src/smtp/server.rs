//! The SMTP injection server: one task per client connection.
//!
//! `Session` walks a client through EHLO, MAIL, RCPT and DATA, enforcing
//! the relay rule (authenticated or from a relay network), the numbered
//! limits of `[smtp_in]` and the order of commands. Every refusal carries a
//! code, an enhanced status code and a sentence; the session carries on
//! after it unless the client passed the error limit. A finished DATA goes
//! to `Engine::admit`, whose reply (250 only once the message is on disk)
//! is sent back as is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::auth_limit::AuthLimiter;
use super::command::{self, Command, MailParams};
use super::connection::{Connection, Line, MAX_HEADER_BYTES, MAX_HEADER_LINES, Stream};
use super::reply::{Reply, ehlo_reply};
use crate::config::SmtpInSection;
use crate::engine::{ClientInfo, Engine, Envelope};

/// What every session of one daemon shares.
pub struct ServerContext {
    pub engine: Arc<Engine>,
    pub settings: SmtpInSection,
    pub hostname: String,
    pub tls: Option<TlsAcceptor>,
    /// Failed AUTH attempts per client address, shared by all sessions.
    /// Shared by every context, so a reload keeps the failure counts.
    pub auth_limiter: Arc<AuthLimiter>,
}

struct Transaction {
    mail_from: String,
    params: MailParams,
    rcpts: Vec<String>,
}

enum Flow {
    Continue,
    Close,
}

pub struct Session {
    ctx: Arc<ServerContext>,
    peer: SocketAddr,
    conn: Option<Connection>,
    helo: Option<String>,
    auth_user: Option<String>,
    tx: Option<Transaction>,
    errors: u32,
    shutdown: watch::Receiver<bool>,
}

impl Session {
    pub fn new(
        ctx: Arc<ServerContext>,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Session {
        let _ = stream.set_nodelay(true);
        Session {
            ctx,
            peer,
            conn: Some(Connection::new(Stream::Plain(stream))),
            helo: None,
            auth_user: None,
            tx: None,
            errors: 0,
            shutdown,
        }
    }

    /// Runs the session to its end; I/O errors just end it.
    pub async fn run(mut self) {
        let greeting = format!("220 {} ESMTP sendengine ready\r\n", self.ctx.hostname);
        self.conn().queue_raw(greeting.as_bytes());
        let _ = self.serve().await;
        if let Some(conn) = self.conn.as_mut() {
            let _ = conn.flush().await;
        }
    }

    fn conn(&mut self) -> &mut Connection {
        self.conn
            .as_mut()
            .expect("connection present outside STARTTLS")
    }

    async fn serve(&mut self) -> std::io::Result<()> {
        loop {
            if !self.conn().has_buffered_input() {
                self.conn().flush().await?;
            }
            let line = match self.next_line().await? {
                Some(line) => line,
                None => return Ok(()),
            };
            let flow = match line {
                Line::Closed => return Ok(()),
                Line::TooLong => {
                    let limit = self.ctx.settings.max_line_length;
                    self.refuse(Reply::new(
                        500,
                        "5.5.2",
                        format!("Line too long: the limit is {limit} bytes"),
                    ))
                }
                Line::Complete(bytes) => match command::parse(&bytes) {
                    Ok(cmd) => self.handle(cmd).await?,
                    Err(reply) => self.refuse(reply),
                },
            };
            if let Flow::Close = flow {
                return Ok(());
            }
        }
    }

    /// Waits for the next command line, or says goodbye on idle timeout or shutdown.
    async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        let limit = self.ctx.settings.max_line_length;
        let timeout = self.ctx.settings.command_timeout;
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
    fn refuse(&mut self, reply: Reply) -> Flow {
        self.errors += 1;
        self.conn().queue_reply(&reply);
        if self.errors >= self.ctx.settings.max_errors {
            self.conn().queue_reply(&Reply::new(
                421,
                "4.7.0",
                "Too many errors in this session: closing the connection",
            ));
            return Flow::Close;
        }
        Flow::Continue
    }

    fn reply(&mut self, reply: Reply) -> Flow {
        self.conn().queue_reply(&reply);
        Flow::Continue
    }

    async fn handle(&mut self, cmd: Command) -> std::io::Result<Flow> {
        Ok(match cmd {
            Command::Ehlo(name) => self.ehlo(name, true),
            Command::Helo(name) => self.ehlo(name, false),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to } => self.rcpt(to),
            Command::Data => return self.data().await,
            Command::Rset => {
                self.tx = None;
                self.reply(Reply::new(250, "2.0.0", "Reset OK"))
            }
            Command::Noop => self.reply(Reply::new(250, "2.0.0", "OK")),
            Command::Vrfy => self.reply(Reply::new(
                252,
                "2.5.0",
                "Cannot verify the address, but will accept mail for it",
            )),
            Command::Help => self.reply(Reply::new(
                214,
                "2.0.0",
                "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY STARTTLS AUTH",
            )),
            Command::Quit => {
                self.reply(Reply::new(221, "2.0.0", "Bye"));
                Flow::Close
            }
            Command::StartTls => return self.starttls().await,
            Command::Auth { mechanism, initial } => return self.auth(mechanism, initial).await,
        })
    }

    fn ehlo(&mut self, name: String, extended: bool) -> Flow {
        self.tx = None;
        self.helo = Some(name);
        let host = self.ctx.hostname.clone();
        if !extended {
            return self.reply(Reply::new(250, "2.0.0", host));
        }
        let mut extra = Vec::new();
        if self.ctx.tls.is_some() && !self.conn().is_tls() {
            extra.push("STARTTLS");
        }
        if self.auth_allowed() {
            extra.push("AUTH PLAIN LOGIN");
        }
        let max_size = self.ctx.settings.max_message_size;
        let text = ehlo_reply(&host, self.peer.ip(), max_size, &extra);
        self.conn().queue_raw(&text);
        Flow::Continue
    }

    /// AUTH is offered over TLS, or in clear text only from loopback.
    fn auth_allowed(&self) -> bool {
        let tls = self.conn.as_ref().is_some_and(Connection::is_tls);
        let has_users = !self.ctx.engine.tenancy.snapshot().users.is_empty();
        has_users && (tls || self.peer.ip().is_loopback())
    }

    fn mail(&mut self, from: String, params: MailParams) -> Flow {
        if self.helo.is_none() {
            return self.refuse(Reply::new(503, "5.5.1", "Send EHLO or HELO first"));
        }
        if self.tx.is_some() {
            return self.refuse(Reply::new(
                503,
                "5.5.1",
                "Sender already given: send RSET to start a new transaction",
            ));
        }
        let max = self.ctx.settings.max_message_size;
        if params.size.is_some_and(|s| s > max) {
            crate::metrics::injection_refused(crate::metrics::Refusal::TooBig);
            return self.refuse(Reply::new(
                552,
                "5.3.4",
                format!("Message too big: the limit is {max} bytes"),
            ));
        }
        self.tx = Some(Transaction {
            mail_from: from,
            params,
            rcpts: Vec::new(),
        });
        self.reply(Reply::new(250, "2.1.0", "Sender OK"))
    }

    fn relay_allowed(&self) -> bool {
        self.auth_user.is_some()
            || self
                .ctx
                .settings
                .relay_networks
                .iter()
                .any(|n| n.contains(self.peer.ip()))
    }

    fn rcpt(&mut self, to: String) -> Flow {
        let max = self.ctx.settings.max_recipients;
        let relay_allowed = self.relay_allowed();
        let Some(tx) = self.tx.as_mut() else {
            return self.refuse(Reply::new(503, "5.5.1", "Send MAIL FROM first"));
        };
        if !relay_allowed {
            crate::metrics::injection_refused(crate::metrics::Refusal::RelayDenied);
            return self.refuse(Reply::new(
                554,
                "5.7.1",
                format!(
                    "Relay access denied for <{to}>: authenticate with AUTH or send from an allowed network"
                ),
            ));
        }
        if !to.is_ascii() && !tx.params.smtputf8 {
            return self.refuse(Reply::new(
                553,
                "5.6.7",
                "Non-ASCII recipient needs SMTPUTF8 on MAIL FROM",
            ));
        }
        if tx.mail_from.is_empty() && !tx.rcpts.is_empty() {
            // A bounce goes to one address; many is a spam pattern.
            return self.refuse(Reply::new(
                550,
                "5.5.3",
                "A message with a null sender (a bounce) has exactly one recipient",
            ));
        }
        if tx.rcpts.len() >= max {
            // Not an error: the client sends the rest in a new transaction.
            return self.reply(Reply::new(
                452,
                "4.5.3",
                format!("Too many recipients: at most {max} per message, send the rest separately"),
            ));
        }
        tx.rcpts.push(to);
        self.reply(Reply::new(250, "2.1.5", "Recipient OK"))
    }

    async fn data(&mut self) -> std::io::Result<Flow> {
        match &self.tx {
            None => return Ok(self.refuse(Reply::new(503, "5.5.1", "Send MAIL FROM first"))),
            Some(tx) if tx.rcpts.is_empty() => {
                return Ok(self.refuse(Reply::new(
                    554,
                    "5.5.1",
                    "No valid recipients: send RCPT TO first",
                )));
            }
            Some(_) => {}
        }
        let max = self.ctx.settings.max_message_size;
        let timeout = self.ctx.settings.data_timeout;
        let conn = self.conn();
        conn.queue_raw(b"354 End data with <CR><LF>.<CR><LF>\r\n");
        conn.flush().await?;
        let section = match tokio::time::timeout(timeout, conn.read_data(max)).await {
            Err(_) => {
                conn.queue_reply(&Reply::new(
                    421,
                    "4.4.2",
                    "Timeout while reading the message: closing the connection",
                ));
                return Ok(Flow::Close);
            }
            Ok(read) => match read? {
                Some(section) => section,
                None => return Ok(Flow::Close),
            },
        };
        let tx = self.tx.take().expect("checked above");
        if section.too_big {
            crate::metrics::injection_refused(crate::metrics::Refusal::TooBig);
            return Ok(self.refuse(Reply::new(
                552,
                "5.3.4",
                format!("Message too big: the limit is {max} bytes"),
            )));
        }
        if section.header_too_big {
            crate::metrics::injection_refused(crate::metrics::Refusal::TooBig);
            return Ok(self.refuse(Reply::new(
                552,
                "5.3.4",
                format!(
                    "Header section too big: at most {MAX_HEADER_LINES} lines and {MAX_HEADER_BYTES} bytes"
                ),
            )));
        }
        let envelope = Envelope {
            mail_from: tx.mail_from,
            recipients: tx.rcpts,
            client: ClientInfo {
                peer: self.peer,
                helo: self.helo.clone().unwrap_or_default(),
                tls: self.conn().is_tls(),
                auth_user: self.auth_user.clone(),
            },
        };
        let reply = self.ctx.engine.admit(envelope, section.body).await;
        Ok(self.reply(reply))
    }

    async fn starttls(&mut self) -> std::io::Result<Flow> {
        let Some(acceptor) = self.ctx.tls.clone() else {
            return Ok(self.refuse(Reply::new(502, "5.5.1", "STARTTLS is not available here")));
        };
        if self.conn().is_tls() {
            return Ok(self.refuse(Reply::new(503, "5.5.1", "TLS is already active")));
        }
        let conn = self.conn();
        conn.queue_reply(&Reply::new(220, "2.0.0", "Ready to start TLS"));
        conn.flush().await?;
        let Stream::Plain(tcp) = self.conn.take().expect("present").into_stream() else {
            return Ok(Flow::Close);
        };
        let handshake = acceptor.accept(tcp);
        match tokio::time::timeout(Duration::from_secs(30), handshake).await {
            Ok(Ok(tls)) => {
                self.conn = Some(Connection::new(Stream::from(tls)));
                // RFC 3207: forget everything learnt before TLS.
                self.helo = None;
                self.auth_user = None;
                self.tx = None;
                Ok(Flow::Continue)
            }
            _ => Ok(Flow::Close),
        }
    }

    async fn auth(&mut self, mechanism: String, initial: Option<String>) -> std::io::Result<Flow> {
        if self.ctx.engine.tenancy.snapshot().users.is_empty() {
            return Ok(self.refuse(Reply::new(502, "5.5.1", "AUTH is not available here")));
        }
        if !self.auth_allowed() {
            return Ok(self.refuse(Reply::new(
                538,
                "5.7.11",
                "Encryption required: use STARTTLS before AUTH",
            )));
        }
        if self.ctx.auth_limiter.is_blocked(self.peer.ip()) {
            return Ok(self.too_many_auth_failures());
        }
        if self.helo.is_none() || self.auth_user.is_some() || self.tx.is_some() {
            return Ok(self.refuse(Reply::new(
                503,
                "5.5.1",
                "AUTH goes after EHLO, once, and outside a mail transaction",
            )));
        }
        let credentials = match mechanism.as_str() {
            "PLAIN" => self.auth_plain(initial).await?,
            "LOGIN" => self.auth_login(initial).await?,
            _ => {
                return Ok(self.refuse(Reply::new(
                    504,
                    "5.5.4",
                    "Unsupported authentication mechanism: use PLAIN or LOGIN",
                )));
            }
        };
        let Some((user, password)) = credentials else {
            return Ok(self.refuse(Reply::new(
                501,
                "5.5.2",
                "Authentication cancelled or not valid base64",
            )));
        };
        if self.check_password(&user, &password).await {
            self.auth_user = Some(user);
            Ok(self.reply(Reply::new(235, "2.7.0", "Authentication successful")))
        } else {
            let blocked = self.ctx.auth_limiter.record_failure(self.peer.ip());
            crate::metrics::injection_refused(crate::metrics::Refusal::AuthFailed);
            let flow = self.refuse(Reply::new(
                535,
                "5.7.8",
                "Authentication credentials invalid: check the user name and password",
            ));
            Ok(if blocked && matches!(flow, Flow::Continue) {
                self.too_many_auth_failures()
            } else {
                flow
            })
        }
    }

    /// The client's address failed AUTH too often: say so and hang up.
    fn too_many_auth_failures(&mut self) -> Flow {
        let minutes = super::auth_limit::FAILURE_WINDOW.as_secs() / 60;
        let limit = self.ctx.settings.auth_failures_per_ip;
        self.conn().queue_reply(&Reply::new(
            421,
            "4.7.0",
            format!(
                "Too many failed AUTH attempts from your address ({limit} in {minutes} minutes): try again later"
            ),
        ));
        Flow::Close
    }

    /// PBKDF2 takes tens of milliseconds: off the async threads.
    async fn check_password(&self, user: &str, password: &str) -> bool {
        let tenancy = self.ctx.engine.tenancy.clone();
        let (user, password) = (user.to_owned(), password.to_owned());
        tokio::task::spawn_blocking(move || tenancy.authenticate(&user, &password))
            .await
            .unwrap_or(false)
    }

    async fn auth_plain(
        &mut self,
        initial: Option<String>,
    ) -> std::io::Result<Option<(String, String)>> {
        let response = match initial {
            Some(r) => Some(r),
            None => self.challenge("").await?,
        };
        let Some(decoded) = response.as_deref().and_then(decode_b64) else {
            return Ok(None);
        };
        // authzid NUL authcid NUL password
        let mut parts = decoded.split(|b| *b == 0);
        let (_authz, user, pass) = (parts.next(), parts.next(), parts.next());
        Ok(match (user, pass) {
            (Some(u), Some(p)) => Some((
                String::from_utf8_lossy(u).into_owned(),
                String::from_utf8_lossy(p).into_owned(),
            )),
            _ => None,
        })
    }

    async fn auth_login(
        &mut self,
        initial: Option<String>,
    ) -> std::io::Result<Option<(String, String)>> {
        let user = match initial {
            Some(r) => Some(r),
            None => self.challenge("VXNlcm5hbWU6").await?,
        };
        let Some(user) = user.as_deref().and_then(decode_b64) else {
            return Ok(None);
        };
        let Some(pass) = self
            .challenge("UGFzc3dvcmQ6")
            .await?
            .as_deref()
            .and_then(decode_b64)
        else {
            return Ok(None);
        };
        Ok(Some((
            String::from_utf8_lossy(&user).into_owned(),
            String::from_utf8_lossy(&pass).into_owned(),
        )))
    }

    /// Sends a 334 challenge and reads the client's answer ("*" cancels).
    async fn challenge(&mut self, text: &str) -> std::io::Result<Option<String>> {
        let limit = self.ctx.settings.max_line_length;
        let timeout = self.ctx.settings.command_timeout;
        let conn = self.conn();
        conn.queue_raw(format!("334 {text}\r\n").as_bytes());
        conn.flush().await?;
        match tokio::time::timeout(timeout, conn.read_line(limit)).await {
            Ok(Ok(Line::Complete(line))) if line != b"*" => {
                Ok(Some(String::from_utf8_lossy(&line).into_owned()))
            }
            Ok(Err(e)) => Err(e),
            _ => Ok(None),
        }
    }
}

fn decode_b64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
}

/// What a listener task follows while it runs.
pub struct ListenerControl {
    /// The context new sessions get; SIGHUP sends one with new settings.
    pub context: watch::Receiver<Arc<ServerContext>>,
    /// The `max_connections` limit, shared across all listeners.
    pub slots: Arc<tokio::sync::Semaphore>,
    /// Set at SIGTERM: sessions say goodbye, new connections get 421.
    pub shutdown: watch::Receiver<bool>,
    /// Set once the drain is over: the listener closes.
    pub closed: watch::Receiver<bool>,
}

/// Accepts connections on one listener until shutdown, then refuses them
/// with 421 while the daemon drains (a client retries later instead of
/// seeing "connection refused"), and closes the listener at the end.
pub async fn serve_listener(listener: tokio::net::TcpListener, control: ListenerControl) {
    let ListenerControl {
        context,
        slots,
        mut shutdown,
        mut closed,
    } = control;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let Some((stream, peer)) = accepted_or_pause(accepted).await else {
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            crate::metrics::injection_refused(crate::metrics::Refusal::Busy);
            tokio::spawn(refuse(stream, BUSY));
            continue;
        };
        let ctx = context.borrow().clone();
        let session = Session::new(ctx, stream, peer, shutdown.clone());
        tokio::spawn(async move {
            let _open = crate::metrics::smtp_session();
            session.run().await;
            drop(permit);
        });
    }
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = closed.wait_for(|closed| *closed) => return,
        };
        if let Some((stream, _)) = accepted_or_pause(accepted).await {
            tokio::spawn(refuse(stream, SHUTTING_DOWN));
        }
    }
}

const BUSY: &str = "Too many connections: try again later";
const SHUTTING_DOWN: &str = "Service shutting down: try again later";

/// An accepted connection, or a pause after a failed accept (out of file
/// descriptors and similar) so the loop waits rather than spins.
async fn accepted_or_pause(
    accepted: std::io::Result<(TcpStream, SocketAddr)>,
) -> Option<(TcpStream, SocketAddr)> {
    match accepted {
        Ok(a) => Some(a),
        Err(_) => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// Answers a connection with 421 4.3.2 and closes it.
async fn refuse(mut stream: TcpStream, text: &'static str) {
    use tokio::io::AsyncWriteExt;
    let mut out = Vec::new();
    Reply::new(421, "4.3.2", text).write_to(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&out)).await;
}
