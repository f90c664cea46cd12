//! The sink: an ESMTP server that accepts messages, logs one JSON line per
//! message, optionally stores them, and misbehaves on demand (fault rules).
//!
//! One task per connection. Replies are queued and leave in one write just
//! before the session would wait for input, so pipelined commands are
//! answered in order and in as few packets as possible.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;
use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::conn::{ConnError, DataEnd, SmtpConn, Stream};
use crate::fault::{FaultAction, FaultRules, Phase};
use crate::message::find_message_id;
use crate::tls::{TlsSetupError, self_signed_server_config};

/// Default for `--max-size`: 100 MB.
pub const DEFAULT_MAX_SIZE: usize = 100 * 1024 * 1024;
/// Recipients accepted per transaction; more get 452.
pub const MAX_RECIPIENTS: usize = 1000;
/// Connections served at once; further clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Listen backlog, so bursts of new connections (smtp-source without -d) are not refused.
const LISTEN_BACKLOG: u32 = 1024;
/// A client silent for this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Wait after a failed accept (e.g. out of file descriptors) before the next.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Off,
    StartTls,
    Implicit,
}

#[derive(Debug)]
pub struct SinkConfig {
    pub hostname: String,
    pub tls: TlsMode,
    /// USER and PASS; when set, MAIL needs a successful AUTH first.
    pub auth: Option<(String, String)>,
    pub log_path: Option<PathBuf>,
    pub store_dir: Option<PathBuf>,
    pub pipelining: bool,
    pub max_size: usize,
    pub faults: FaultRules,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            hostname: "localhost".to_string(),
            tls: TlsMode::Off,
            auth: None,
            log_path: None,
            store_dir: None,
            pipelining: true,
            max_size: DEFAULT_MAX_SIZE,
            faults: FaultRules::default(),
        }
    }
}

#[derive(Debug, Error)]
pub enum SinkError {
    #[error("cannot open the log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the store directory {path}: {source}")]
    StoreDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Creates a listening socket with a large backlog.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, SinkError> {
    let listen = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|source| SinkError::Listen { addr, source })
}

/// The server state shared by all connections.
pub struct Sink {
    config: SinkConfig,
    tls: Option<TlsAcceptor>,
    journal: Mutex<Journal>,
    messages: AtomicU64,
    recipients: AtomicU64,
    connection_slots: Arc<Semaphore>,
    /// Connections open now, and the most ever open at once.
    sessions: AtomicU64,
    peak_sessions: AtomicU64,
}

/// Counts a connection as open until it is dropped (closed).
struct OpenSession<'a>(&'a AtomicU64);

impl Drop for OpenSession<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Numbers accepted messages and writes them down, one at a time, so the
/// log's order is the sequence order.
struct Journal {
    last_seq: u64,
    log: Option<BufWriter<File>>,
}

/// One line of the `--log` file.
#[derive(Serialize)]
struct LogLine<'a> {
    seq: u64,
    time_ms: u64,
    /// The same instant in microseconds: latency figures need finer steps.
    time_us: u64,
    mail_from: &'a str,
    rcpts: &'a [String],
    message_id: Option<&'a str>,
    size: usize,
    tls: bool,
    auth: Option<&'a str>,
    /// The client's address and port: one connection's messages share it.
    peer: SocketAddr,
    /// Connections open when the message was accepted, and the most that
    /// were ever open at once (connection limits are checked with these).
    sessions: u64,
    peak_sessions: u64,
    /// When the sink accepted the message's connection: a client that
    /// restarts cannot carry a message over a connection opened before.
    connected_us: u64,
}

impl Sink {
    pub fn new(config: SinkConfig) -> Result<Self, SinkError> {
        let log = match &config.log_path {
            Some(path) => Some(open_log(path)?),
            None => None,
        };
        if let Some(dir) = &config.store_dir {
            std::fs::create_dir_all(dir).map_err(|source| SinkError::StoreDir {
                path: dir.clone(),
                source,
            })?;
        }
        let tls = match config.tls {
            TlsMode::Off => None,
            TlsMode::StartTls | TlsMode::Implicit => {
                Some(TlsAcceptor::from(Arc::new(self_signed_server_config()?)))
            }
        };
        Ok(Sink {
            config,
            tls,
            journal: Mutex::new(Journal { last_seq: 0, log }),
            messages: AtomicU64::new(0),
            recipients: AtomicU64::new(0),
            connection_slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            sessions: AtomicU64::new(0),
            peak_sessions: AtomicU64::new(0),
        })
    }

    /// Messages and recipients accepted so far.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.messages.load(Ordering::SeqCst),
            self.recipients.load(Ordering::SeqCst),
        )
    }

    /// Accepts connections forever, one task each.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok(slot) = self.connection_slots.clone().acquire_owned().await else {
                return;
            };
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    let sink = Arc::clone(&self);
                    tokio::spawn(async move {
                        sink.handle_connection(tcp, peer).await;
                        drop(slot);
                    });
                }
                Err(err) => {
                    eprintln!("sendengine-sink: accept failed: {err}");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                }
            }
        }
    }

    async fn handle_connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        // Replies are small and latency-bound; Nagle would hold them back.
        let _ = tcp.set_nodelay(true);
        let connected_us = unix_micros();
        let open = self.sessions.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_sessions.fetch_max(open, Ordering::SeqCst);
        let _open = OpenSession(&self.sessions);
        let (stream, tls): (Box<dyn Stream>, bool) = match (&self.tls, self.config.tls) {
            (Some(acceptor), TlsMode::Implicit) => {
                let handshake = tokio::time::timeout(IDLE_TIMEOUT, acceptor.accept(tcp)).await;
                match handshake {
                    Ok(Ok(stream)) => (Box::new(stream), true),
                    _ => return,
                }
            }
            _ => (Box::new(tcp), false),
        };
        let session = Session {
            conn: SmtpConn::new(stream, Some(IDLE_TIMEOUT)),
            sink: Arc::clone(&self),
            peer,
            connected_us,
            tls,
            refused: false,
            greeted: false,
            auth_user: None,
            mail_from: None,
            rcpts: Vec::new(),
            message: Vec::new(),
        };
        session.run().await;
    }

    /// Numbers an accepted message and writes it to the store and the log.
    fn record(&self, entry: &LogLine<'_>, message: &[u8]) -> std::io::Result<u64> {
        let mut journal = self.journal.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = journal.last_seq + 1;
        journal.last_seq = seq;
        if let Some(dir) = &self.config.store_dir {
            // Written before the log line, so a reader who sees the line finds the file.
            std::fs::write(dir.join(format!("{seq}.eml")), message)?;
        }
        if let Some(log) = &mut journal.log {
            serde_json::to_writer(&mut *log, &LogLine { seq, ..*entry })?;
            log.write_all(b"\n")?;
            log.flush()?;
        }
        self.messages.fetch_add(1, Ordering::SeqCst);
        self.recipients
            .fetch_add(entry.rcpts.len() as u64, Ordering::SeqCst);
        Ok(seq)
    }
}

fn open_log(path: &Path) -> Result<BufWriter<File>, SinkError> {
    crate::open_append(path)
        .map(|file| BufWriter::with_capacity(64 * 1024, file))
        .map_err(|source| SinkError::Log {
            path: path.to_path_buf(),
            source,
        })
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What the session does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    /// Send what is queued, then close.
    Close,
    /// Send what is queued, then never answer again.
    Stall,
}

/// What the fault rules decided for one command.
enum Verdict {
    /// No rule fired: answer normally.
    Normal,
    /// A rule replaced the positive reply; the command succeeds.
    Accept(u16, String),
    /// A rule took over (reply queued, if any); the command fails.
    Refuse(Flow),
}

struct Session {
    conn: SmtpConn,
    sink: Arc<Sink>,
    peer: SocketAddr,
    connected_us: u64,
    tls: bool,
    /// The greeting was refused with a 5xx: only QUIT is served.
    refused: bool,
    greeted: bool,
    auth_user: Option<String>,
    mail_from: Option<String>,
    rcpts: Vec<String>,
    /// Reused buffer for the current message.
    message: Vec<u8>,
}

impl Session {
    async fn run(mut self) {
        let mut flow = self.greet();
        while flow == Flow::Continue {
            flow = match self.conn.read_line().await {
                Ok(line) => {
                    let line = String::from_utf8_lossy(line).into_owned();
                    self.handle(&line).await
                }
                Err(ConnError::LineTooLong) => self.reply(500, "5.5.2 Line too long"),
                Err(_) => return,
            };
        }
        if self.conn.flush().await.is_err() {
            return;
        }
        if flow == Flow::Stall {
            self.conn.drain_until_closed().await;
        }
    }

    fn reply(&mut self, code: u16, text: &str) -> Flow {
        self.conn.queue_reply(code, text);
        Flow::Continue
    }

    /// Sends the fault's replacement reply if there is one, else the normal one.
    fn reply_unless_overridden(&mut self, verdict: Verdict, code: u16, text: &str) -> Flow {
        match verdict {
            Verdict::Accept(code, text) => self.reply(code, &text),
            _ => self.reply(code, text),
        }
    }

    fn judge(&mut self, phase: Phase, argument: &str) -> Verdict {
        match self.sink.config.faults.check(phase, argument) {
            None => Verdict::Normal,
            Some(FaultAction::Disconnect) => Verdict::Refuse(Flow::Close),
            Some(FaultAction::Stall) => Verdict::Refuse(Flow::Stall),
            Some(FaultAction::Reply { code, text }) if *code < 400 => {
                Verdict::Accept(*code, text.clone())
            }
            Some(FaultAction::Reply { code, text }) => {
                self.conn.queue_reply(*code, text);
                // 421 means "closing the connection" (RFC 5321 section 3.8).
                Verdict::Refuse(if *code == 421 {
                    Flow::Close
                } else {
                    Flow::Continue
                })
            }
        }
    }

    fn greet(&mut self) -> Flow {
        let ip = self.peer.ip().to_string();
        let verdict = self.judge(Phase::Greeting, &ip);
        if let Verdict::Refuse(flow) = verdict {
            self.refused = true;
            return flow;
        }
        let text = format!("{} ESMTP sendengine-sink", self.sink.config.hostname);
        self.reply_unless_overridden(verdict, 220, &text)
    }

    async fn handle(&mut self, line: &str) -> Flow {
        let (verb, argument) = line.split_once(' ').unwrap_or((line, ""));
        let verb = verb.to_ascii_uppercase();
        if self.refused && verb != "QUIT" {
            return self.reply(503, "5.5.1 No service here, only QUIT");
        }
        match verb.as_str() {
            "EHLO" => self.ehlo(argument.trim(), true),
            "HELO" => self.ehlo(argument.trim(), false),
            "MAIL" => self.mail(argument),
            "RCPT" => self.rcpt(argument),
            "DATA" => self.data().await,
            "RSET" => {
                self.reset_transaction();
                self.reply(250, "2.0.0 Ok")
            }
            "NOOP" => self.reply(250, "2.0.0 Ok"),
            "QUIT" => {
                self.conn.queue_reply(221, "2.0.0 Bye");
                Flow::Close
            }
            "STARTTLS" => self.starttls().await,
            "AUTH" => self.auth(argument.trim()).await,
            "VRFY" => self.reply(252, "2.5.0 Cannot verify, send some mail"),
            "HELP" => self.reply(214, "2.0.0 See RFC 5321"),
            _ => self.reply(500, "5.5.1 Command not recognized"),
        }
    }

    fn reset_transaction(&mut self) {
        self.mail_from = None;
        self.rcpts.clear();
    }

    fn ehlo(&mut self, client_name: &str, extended: bool) -> Flow {
        if client_name.is_empty() {
            return self.reply(501, "5.5.4 Syntax: EHLO hostname");
        }
        let verdict = self.judge(Phase::Ehlo, client_name);
        if let Verdict::Refuse(flow) = verdict {
            return flow;
        }
        self.reset_transaction();
        self.greeted = true;
        if let Verdict::Accept(code, text) = verdict {
            return self.reply(code, &text);
        }
        let greeting = format!("{} greets {client_name}", self.sink.config.hostname);
        if !extended {
            return self.reply(250, &greeting);
        }
        let lines = self.ehlo_lines(greeting);
        let last = lines.len() - 1;
        for (index, line) in lines.iter().enumerate() {
            let separator = if index == last { ' ' } else { '-' };
            self.conn
                .queue(format!("250{separator}{line}\r\n").as_bytes());
        }
        Flow::Continue
    }

    fn ehlo_lines(&self, greeting: String) -> Vec<String> {
        let config = &self.sink.config;
        let mut lines = vec![greeting];
        if config.pipelining {
            lines.push("PIPELINING".to_string());
        }
        lines.push("8BITMIME".to_string());
        lines.push("SMTPUTF8".to_string());
        lines.push("ENHANCEDSTATUSCODES".to_string());
        lines.push(format!("SIZE {}", config.max_size));
        if config.tls == TlsMode::StartTls && !self.tls {
            lines.push("STARTTLS".to_string());
        }
        if config.auth.is_some() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        lines
    }

    fn mail(&mut self, argument: &str) -> Flow {
        if !self.greeted {
            return self.reply(503, "5.5.1 Send EHLO or HELO first");
        }
        if self.sink.config.auth.is_some() && self.auth_user.is_none() {
            return self.reply(530, "5.7.0 Authentication required");
        }
        if self.mail_from.is_some() {
            return self.reply(503, "5.5.1 Nested MAIL command");
        }
        let Some((address, params)) = parse_path(argument, "FROM:") else {
            return self.reply(501, "5.5.4 Syntax: MAIL FROM:<address>");
        };
        if declared_size(params).is_some_and(|size| size > self.sink.config.max_size as u64) {
            return self.reply(552, "5.3.4 Message size exceeds fixed limit");
        }
        let verdict = self.judge(Phase::Mail, &address);
        if let Verdict::Refuse(flow) = verdict {
            return flow;
        }
        self.mail_from = Some(address);
        self.reply_unless_overridden(verdict, 250, "2.1.0 Ok")
    }

    fn rcpt(&mut self, argument: &str) -> Flow {
        if self.mail_from.is_none() {
            return self.reply(503, "5.5.1 Need MAIL before RCPT");
        }
        let Some((address, _params)) = parse_path(argument, "TO:") else {
            return self.reply(501, "5.5.4 Syntax: RCPT TO:<address>");
        };
        if self.rcpts.len() >= MAX_RECIPIENTS {
            return self.reply(452, "4.5.3 Too many recipients");
        }
        let verdict = self.judge(Phase::Rcpt, &address);
        if let Verdict::Refuse(flow) = verdict {
            return flow;
        }
        self.rcpts.push(address);
        self.reply_unless_overridden(verdict, 250, "2.1.5 Ok")
    }

    /// "sender rcpt1 rcpt2 ...": what data and dot fault rules match against.
    fn envelope(&self) -> String {
        let mut envelope = self.mail_from.clone().unwrap_or_default();
        for rcpt in &self.rcpts {
            envelope.push(' ');
            envelope.push_str(rcpt);
        }
        envelope
    }

    async fn data(&mut self) -> Flow {
        if self.mail_from.is_none() {
            return self.reply(503, "5.5.1 Need MAIL before DATA");
        }
        if self.rcpts.is_empty() {
            return self.reply(554, "5.5.1 No valid recipients");
        }
        let verdict = self.judge(Phase::Data, &self.envelope());
        if let Verdict::Refuse(flow) = verdict {
            self.reset_transaction();
            return flow;
        }
        self.reply_unless_overridden(verdict, 354, "End data with <CR><LF>.<CR><LF>");
        let max_size = self.sink.config.max_size;
        match self.conn.read_data(max_size, &mut self.message).await {
            Ok(DataEnd::Complete) => self.finish_message(),
            Ok(DataEnd::TooBig) => {
                self.reset_transaction();
                self.reply(552, "5.3.4 Message too big")
            }
            Err(_) => Flow::Close,
        }
    }

    fn finish_message(&mut self) -> Flow {
        let message_id = find_message_id(&self.message);
        let argument = format!(
            "{} {}",
            self.envelope(),
            message_id.as_deref().unwrap_or("")
        );
        let verdict = self.judge(Phase::Dot, &argument);
        if let Verdict::Refuse(flow) = verdict {
            self.reset_transaction();
            return flow;
        }
        let now_us = unix_micros();
        let entry = LogLine {
            seq: 0,
            time_ms: now_us / 1000,
            time_us: now_us,
            mail_from: self.mail_from.as_deref().unwrap_or(""),
            rcpts: &self.rcpts,
            message_id: message_id.as_deref(),
            size: self.message.len(),
            tls: self.tls,
            auth: self.auth_user.as_deref(),
            peer: self.peer,
            sessions: self.sink.sessions.load(Ordering::SeqCst),
            peak_sessions: self.sink.peak_sessions.load(Ordering::SeqCst),
            connected_us: self.connected_us,
        };
        let recorded = self.sink.record(&entry, &self.message);
        self.reset_transaction();
        match recorded {
            Ok(seq) => {
                let text = format!("2.0.0 Ok: queued as {seq}");
                self.reply_unless_overridden(verdict, 250, &text)
            }
            Err(err) => {
                eprintln!("sendengine-sink: cannot record message: {err}");
                self.reply(451, "4.3.0 Local error writing the message")
            }
        }
    }

    async fn starttls(&mut self) -> Flow {
        let acceptor = match (&self.sink.tls, self.sink.config.tls, self.tls) {
            (Some(acceptor), TlsMode::StartTls, false) => acceptor.clone(),
            _ => return self.reply(502, "5.5.1 STARTTLS not available"),
        };
        self.conn.queue_reply(220, "2.0.0 Ready to start TLS");
        let handshake = self.conn.start_tls(|plain| async move {
            let tls = acceptor.accept(plain).await?;
            Ok(Box::new(tls) as Box<dyn Stream>)
        });
        if handshake.await.is_err() {
            return Flow::Close;
        }
        // RFC 3207 section 4.2: forget everything learned before TLS.
        self.tls = true;
        self.greeted = false;
        self.auth_user = None;
        self.reset_transaction();
        Flow::Continue
    }

    async fn auth(&mut self, argument: &str) -> Flow {
        let Some((user, pass)) = self.sink.config.auth.clone() else {
            return self.reply(502, "5.5.1 AUTH not available");
        };
        if !self.greeted || self.auth_user.is_some() || self.mail_from.is_some() {
            return self.reply(503, "5.5.1 AUTH not allowed now");
        }
        let (mechanism, initial) = argument.split_once(' ').unwrap_or((argument, ""));
        let credentials = match mechanism.to_ascii_uppercase().as_str() {
            "PLAIN" => self.auth_plain(initial).await,
            "LOGIN" => self.auth_login(initial).await,
            _ => return self.reply(504, "5.5.4 Unrecognized authentication mechanism"),
        };
        match credentials {
            Ok((given_user, given_pass)) if given_user == user && given_pass == pass => {
                self.auth_user = Some(given_user);
                self.reply(235, "2.7.0 Authentication successful")
            }
            Ok(_) => self.reply(535, "5.7.8 Authentication credentials invalid"),
            Err(AuthStop::Cancelled) => self.reply(501, "5.0.0 Authentication cancelled"),
            Err(AuthStop::Malformed) => self.reply(501, "5.5.2 Malformed authentication data"),
            Err(AuthStop::Connection) => Flow::Close,
        }
    }

    async fn auth_plain(&mut self, initial: &str) -> Result<(String, String), AuthStop> {
        let response = match initial {
            "" => self.challenge("").await?,
            "=" => Vec::new(),
            initial => decode_base64(initial)?,
        };
        // authzid NUL authcid NUL passwd (RFC 4616)
        let mut parts = response.split(|&b| b == 0);
        let (Some(_authzid), Some(user), Some(pass), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthStop::Malformed);
        };
        Ok((utf8(user)?, utf8(pass)?))
    }

    async fn auth_login(&mut self, initial: &str) -> Result<(String, String), AuthStop> {
        let user = match initial {
            "" => self.challenge("Username:").await?,
            initial => decode_base64(initial)?,
        };
        let pass = self.challenge("Password:").await?;
        Ok((utf8(&user)?, utf8(&pass)?))
    }

    /// Sends a 334 challenge and returns the decoded answer.
    async fn challenge(&mut self, prompt: &str) -> Result<Vec<u8>, AuthStop> {
        self.conn.queue_reply(334, &BASE64.encode(prompt));
        let line = match self.conn.read_line().await {
            Ok(line) => line,
            Err(ConnError::LineTooLong) => return Err(AuthStop::Malformed),
            Err(_) => return Err(AuthStop::Connection),
        };
        if line == b"*" {
            return Err(AuthStop::Cancelled);
        }
        let line = std::str::from_utf8(line).map_err(|_| AuthStop::Malformed)?;
        decode_base64(line)
    }
}

/// Why an AUTH exchange ended without credentials.
enum AuthStop {
    Cancelled,
    Malformed,
    Connection,
}

fn decode_base64(text: &str) -> Result<Vec<u8>, AuthStop> {
    BASE64.decode(text.trim()).map_err(|_| AuthStop::Malformed)
}

fn utf8(bytes: &[u8]) -> Result<String, AuthStop> {
    String::from_utf8(bytes.to_vec()).map_err(|_| AuthStop::Malformed)
}

/// Splits "FROM:<address> PARAMS" (or "TO:..."); the brackets are optional.
fn parse_path<'a>(argument: &'a str, keyword: &str) -> Option<(String, &'a str)> {
    let argument = argument.trim_start();
    let head = argument.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = argument[keyword.len()..].trim_start();
    if let Some(inside) = rest.strip_prefix('<') {
        let end = inside.find('>')?;
        return Some((inside[..end].to_string(), inside[end + 1..].trim()));
    }
    let (address, params) = rest.split_once(' ').unwrap_or((rest, ""));
    (!address.is_empty()).then(|| (address.to_string(), params.trim()))
}

/// The SIZE=n parameter of MAIL FROM (RFC 1870), if given.
fn declared_size(params: &str) -> Option<u64> {
    params.split_ascii_whitespace().find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.eq_ignore_ascii_case("SIZE")
            .then(|| value.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths() {
        assert_eq!(
            parse_path("FROM:<a@b.c> SIZE=10 BODY=8BITMIME", "FROM:"),
            Some(("a@b.c".to_string(), "SIZE=10 BODY=8BITMIME"))
        );
        assert_eq!(parse_path("from: <>", "FROM:"), Some((String::new(), "")));
        assert_eq!(parse_path("To:x@y", "TO:"), Some(("x@y".to_string(), "")));
        assert_eq!(parse_path("FROM <a@b>", "FROM:"), None);
        assert_eq!(parse_path("TO:<unclosed", "TO:"), None);
        assert_eq!(parse_path("TO:", "TO:"), None);
    }

    #[test]
    fn reads_declared_size() {
        assert_eq!(declared_size("BODY=8BITMIME size=1234"), Some(1234));
        assert_eq!(declared_size("BODY=8BITMIME"), None);
        assert_eq!(declared_size("SIZE=lots"), None);
    }
}
