//! The bounce listener (`[bounce_in]`): a small SMTP server that takes
//! asynchronous bounces (DSNs) and complaints (ARF) addressed to our VERP
//! return paths, and turns them into events and suppressions (`intake`).
//!
//! No AUTH, no relaying, no TLS: it accepts mail only for
//! `local+TAG@domain` where TAG passes its HMAC check (and, if
//! `[bounce_in] domains` is set, the domain is listed); anything else gets
//! 550 5.1.1. Any sender is accepted, the null sender `<>` included (DSNs
//! come from it). A message is answered 250 only once its suppressions are
//! committed and its events handed to the event log. The command and DATA
//! reading is the injection server's (`smtp::connection`, `smtp::command`).

pub mod intake;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sendengine_bounces::verp;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::config::BounceInSection;
use crate::events::EventLog;
use crate::smtp::command::{self, Command};
use crate::smtp::connection::{Connection, Line, Stream};
use crate::smtp::reply::{Reply, ehlo_reply};
pub use intake::{Intake, Target};

/// Longest command line (RFC 5321 asks for at least 512).
const MAX_LINE_BYTES: usize = 2048;
/// Recipients per transaction; a DSN has one.
const MAX_RECIPIENTS: usize = 50;
/// Refused commands before the session is closed.
const MAX_ERRORS: u32 = 10;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
const DATA_TIMEOUT: Duration = Duration::from_secs(600);
/// How long sessions get to finish once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// What every bounce session shares.
pub struct BounceContext {
    pub intake: Intake,
    pub events: EventLog,
    pub settings: BounceInSection,
    pub hostname: String,
}

impl BounceContext {
    pub fn new(engine: &crate::engine::Engine, config: &crate::config::Config) -> BounceContext {
        BounceContext {
            intake: Intake {
                spool: engine.spool.clone(),
                verp_secret: engine.tenancy.secrets().derived("verp"),
                auto_suppress: config.suppression.auto_suppress,
            },
            events: engine.events.clone(),
            settings: config.bounce_in.clone(),
            hostname: config.hostname.clone(),
        }
    }
}

/// Binds every `[bounce_in] listen` address (at start, so a busy port is
/// an error then, not later).
pub async fn bind(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, (SocketAddr, std::io::Error)> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        let listener = TcpListener::bind(addr).await.map_err(|e| (addr, e))?;
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
    let accept_loops: Vec<_> = listeners
        .into_iter()
        .map(|l| tokio::spawn(accept(l, ctx.clone(), slots.clone(), shutdown.clone())))
        .collect();
    for task in accept_loops {
        let _ = task.await;
    }
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(all)).await;
}

async fn accept(
    listener: TcpListener,
    ctx: Arc<BounceContext>,
    slots: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let Ok((stream, peer)) = accepted else {
            // Out of file descriptors and similar: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse_busy(stream));
            continue;
        };
        let session = Session::new(ctx.clone(), stream, peer, shutdown.clone());
        tokio::spawn(async move {
            session.run().await;
            drop(permit);
        });
    }
}

async fn refuse_busy(stream: TcpStream) {
    let mut conn = Connection::new(Stream::Plain(stream));
    conn.queue_reply(&Reply::new(
        421,
        "4.3.2",
        "Too many connections: try again later",
    ));
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.flush()).await;
}

enum Flow {
    Continue,
    Close,
}

struct Transaction {
    /// Tied recipients of ours, one per accepted RCPT.
    targets: Vec<Target>,
}

struct Session {
    ctx: Arc<BounceContext>,
    peer: SocketAddr,
    conn: Connection,
    greeted: bool,
    tx: Option<Transaction>,
    errors: u32,
    shutdown: watch::Receiver<bool>,
}

impl Session {
    fn new(
        ctx: Arc<BounceContext>,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Session {
        let _ = stream.set_nodelay(true);
        Session {
            ctx,
            peer,
            conn: Connection::new(Stream::Plain(stream)),
            greeted: false,
            tx: None,
            errors: 0,
            shutdown,
        }
    }

    async fn run(mut self) {
        let greeting = format!(
            "220 {} ESMTP sendengine bounce intake\r\n",
            self.ctx.hostname
        );
        self.conn.queue_raw(greeting.as_bytes());
        let _ = self.serve().await;
        let _ = self.conn.flush().await;
    }

    async fn serve(&mut self) -> std::io::Result<()> {
        loop {
            if !self.conn.has_buffered_input() {
                self.conn.flush().await?;
            }
            let flow = match self.next_line().await? {
                None | Some(Line::Closed) => return Ok(()),
                Some(Line::TooLong) => self.refuse(Reply::new(
                    500,
                    "5.5.2",
                    format!("Line too long: the limit is {MAX_LINE_BYTES} bytes"),
                )),
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
    async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            read = tokio::time::timeout(COMMAND_TIMEOUT, self.conn.read_line(MAX_LINE_BYTES)) => match read {
                Ok(line) => line.map(Some),
                Err(_) => {
                    self.conn.queue_reply(&Reply::new(421, "4.4.2", "Idle timeout: closing the connection"));
                    Ok(None)
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => {
                self.conn.queue_reply(&Reply::new(421, "4.3.2", "Service shutting down: try again later"));
                Ok(None)
            }
        }
    }

    fn refuse(&mut self, reply: Reply) -> Flow {
        self.errors += 1;
        self.conn.queue_reply(&reply);
        if self.errors >= MAX_ERRORS {
            self.conn.queue_reply(&Reply::new(
                421,
                "4.7.0",
                "Too many errors in this session: closing the connection",
            ));
            return Flow::Close;
        }
        Flow::Continue
    }

    fn reply(&mut self, reply: Reply) -> Flow {
        self.conn.queue_reply(&reply);
        Flow::Continue
    }

    async fn handle(&mut self, cmd: Command) -> std::io::Result<Flow> {
        Ok(match cmd {
            Command::Ehlo(_) => self.ehlo(true),
            Command::Helo(_) => self.ehlo(false),
            Command::Mail { params, .. } => self.mail(params.size),
            Command::Rcpt { to } => self.rcpt(&to),
            Command::Data => return self.data().await,
            Command::Rset => {
                self.tx = None;
                self.reply(Reply::new(250, "2.0.0", "Reset OK"))
            }
            Command::Noop => self.reply(Reply::new(250, "2.0.0", "OK")),
            Command::Vrfy => self.reply(Reply::new(
                252,
                "2.5.0",
                "Cannot verify the address, but will accept bounces for it",
            )),
            Command::Help => self.reply(Reply::new(
                214,
                "2.0.0",
                "Bounce intake: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT",
            )),
            Command::Quit => {
                self.reply(Reply::new(221, "2.0.0", "Bye"));
                Flow::Close
            }
            Command::StartTls | Command::Auth { .. } => self.refuse(Reply::new(
                502,
                "5.5.1",
                "Not available here: this server only takes bounces",
            )),
        })
    }

    fn ehlo(&mut self, extended: bool) -> Flow {
        self.tx = None;
        self.greeted = true;
        let host = self.ctx.hostname.clone();
        if !extended {
            return self.reply(Reply::new(250, "2.0.0", host));
        }
        let max_size = self.ctx.settings.max_message_size;
        let text = ehlo_reply(&host, self.peer.ip(), max_size, &[]);
        self.conn.queue_raw(&text);
        Flow::Continue
    }

    /// Any sender, the null sender included.
    fn mail(&mut self, size: Option<u64>) -> Flow {
        if !self.greeted {
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
        if size.is_some_and(|s| s > max) {
            return self.refuse(Reply::new(
                552,
                "5.3.4",
                format!("Message too big: the limit is {max} bytes"),
            ));
        }
        self.tx = Some(Transaction {
            targets: Vec::new(),
        });
        self.reply(Reply::new(250, "2.1.0", "Sender OK"))
    }

    fn rcpt(&mut self, to: &str) -> Flow {
        let Some(tx) = self.tx.as_ref() else {
            return self.refuse(Reply::new(503, "5.5.1", "Send MAIL FROM first"));
        };
        if tx.targets.len() >= MAX_RECIPIENTS {
            return self.reply(Reply::new(
                452,
                "4.5.3",
                format!("Too many recipients: at most {MAX_RECIPIENTS} per message"),
            ));
        }
        match self.bounce_target(to) {
            Ok(target) => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.targets.push(target);
                }
                self.reply(Reply::new(250, "2.1.5", "Bounce address OK"))
            }
            Err(reply) => {
                ::metrics::counter!("sendengine_bounce_in_total", "kind" => "refused-rcpt")
                    .increment(1);
                self.refuse(reply)
            }
        }
    }

    /// The recipient of ours a bounce address stands for, or the 550.
    fn bounce_target(&self, to: &str) -> Result<Target, Reply> {
        let domain = to.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
        let domains = &self.ctx.settings.domains;
        if !domains.is_empty() && !domain.is_some_and(|d| domains.contains(&d)) {
            return Err(Reply::new(
                550,
                "5.1.1",
                format!(
                    "No such mailbox <{to}>: this server takes bounces only for its return-path domains"
                ),
            ));
        }
        match verp::decode_address(to, &self.ctx.intake.verp_secret) {
            Ok((id, rcpt)) => Ok(Target {
                id,
                rcpt,
                return_path: to.to_owned(),
            }),
            Err(why) => Err(Reply::new(
                550,
                "5.1.1",
                format!(
                    "No such mailbox <{to}>: this server takes only bounces to the VERP addresses it sent from ({why})"
                ),
            )),
        }
    }

    async fn data(&mut self) -> std::io::Result<Flow> {
        let targets = match self.tx.as_ref() {
            None => return Ok(self.refuse(Reply::new(503, "5.5.1", "Send MAIL FROM first"))),
            Some(tx) if tx.targets.is_empty() => {
                return Ok(self.refuse(Reply::new(
                    554,
                    "5.5.1",
                    "No valid recipients: send RCPT TO a bounce address first",
                )));
            }
            Some(tx) => tx.targets.clone(),
        };
        let max = self.ctx.settings.max_message_size;
        self.conn
            .queue_raw(b"354 End data with <CR><LF>.<CR><LF>\r\n");
        self.conn.flush().await?;
        let section = match tokio::time::timeout(DATA_TIMEOUT, self.conn.read_data(max)).await {
            Err(_) => {
                self.conn.queue_reply(&Reply::new(
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
        self.tx = None;
        if section.too_big {
            return Ok(self.refuse(Reply::new(
                552,
                "5.3.4",
                format!("Message too big: the limit is {max} bytes"),
            )));
        }
        if section.header_too_big {
            return Ok(self.refuse(Reply::new(
                552,
                "5.3.4",
                "Header section too big for a bounce",
            )));
        }
        let reply = self.take(targets, section.body).await;
        Ok(self.reply(reply))
    }

    /// Runs the intake off the async threads; 250 once it is all handed over.
    async fn take(&self, targets: Vec<Target>, body: Vec<u8>) -> Reply {
        let intake = self.ctx.intake.clone();
        let processed = tokio::task::spawn_blocking(move || intake.process(&targets, &body)).await;
        match processed {
            Ok(Ok(events)) => {
                events.into_iter().for_each(|e| self.ctx.events.emit(e));
                Reply::new(250, "2.0.0", "Bounce received")
            }
            Ok(Err(e)) => {
                log::error!("bounce intake failed, answering 451: {e}");
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
