//! The load generator: N messages over C parallel SMTP connections.
//!
//! Workers share one message counter; each claims the next number, sends that
//! message on its connection and records the outcome. The body is built and
//! dot-stuffed once; only the small header block is written per message, so
//! the generator stays far from being the bottleneck.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::conn::{ConnError, SmtpConn, Stream};
use crate::message::{HeaderFields, build_body, loadgen_message_id, stuff_for_wire, write_headers};
use crate::reply::Reply;
use crate::tls::{TlsSetupError, insecure_client_config};

/// Pause before reconnecting after a connection error (with --keep-going).
pub const RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Default for --timeout: the longest wait for any reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Connection errors printed to stderr; the rest are only counted.
const MAX_ERRORS_PRINTED: u64 = 10;
/// The name the loadgen gives in EHLO.
const EHLO_NAME: &str = "loadgen.invalid";

#[derive(Debug, Clone)]
pub struct LoadgenConfig {
    /// HOST:PORT.
    pub server: String,
    pub messages: u64,
    pub connections: usize,
    /// Body bytes per message.
    pub size: usize,
    pub rcpts: usize,
    pub from: String,
    pub to_domain: String,
    pub ids_file: Option<PathBuf>,
    /// `MESSAGE_ID UNIX_MICROS` per acknowledged message, buffered: for
    /// latency measures (the ids file is the crash-test record).
    pub acks_file: Option<PathBuf>,
    /// Messages per second over all connections; 0 = unlimited.
    pub rate: f64,
    pub auth: Option<(String, String)>,
    pub starttls: bool,
    pub pipelining: bool,
    pub keep_going: bool,
    /// Each message on a fresh connection (connect, greeting, EHLO, the
    /// transaction, QUIT, close), as a PHP mailer or a cron script sends.
    pub connection_per_message: bool,
    pub timeout: Duration,
}

impl Default for LoadgenConfig {
    fn default() -> Self {
        LoadgenConfig {
            server: String::new(),
            messages: 0,
            connections: 10,
            size: 10_240,
            rcpts: 1,
            from: "loadgen@example.com".to_string(),
            to_domain: "example.net".to_string(),
            ids_file: None,
            acks_file: None,
            rate: 0.0,
            auth: None,
            starttls: false,
            pipelining: true,
            keep_going: false,
            connection_per_message: false,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

#[derive(Debug, Error)]
pub enum LoadgenError {
    #[error("cannot open the ids file {path}: {source}")]
    IdsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// Why a connection could not be set up or was lost.
#[derive(Debug, Error)]
enum SessionError {
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("{step} refused: {reply}")]
    Refused { step: &'static str, reply: Reply },
    #[error("the server does not offer STARTTLS")]
    NoStartTls,
}

/// What happened to the messages of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub attempted: u64,
    pub acked: u64,
    pub tempfail: u64,
    pub permfail: u64,
    pub conn_errors: u64,
    pub elapsed: Duration,
    /// Dot-to-reply time of acknowledged messages, in milliseconds.
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

impl Summary {
    pub fn msgs_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.acked as f64 / secs
        } else {
            0.0
        }
    }

    pub fn line(&self) -> String {
        format!(
            "attempted={} acked={} tempfail={} permfail={} conn_errors={} elapsed_s={:.3} msgs_per_s={:.1}",
            self.attempted,
            self.acked,
            self.tempfail,
            self.permfail,
            self.conn_errors,
            self.elapsed.as_secs_f64(),
            self.msgs_per_s()
        )
    }

    pub fn json(&self) -> String {
        serde_json::json!({
            "attempted": self.attempted,
            "acked": self.acked,
            "tempfail": self.tempfail,
            "permfail": self.permfail,
            "conn_errors": self.conn_errors,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "msgs_per_s": self.msgs_per_s(),
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p99_ms": self.latency_p99_ms,
        })
        .to_string()
    }
}

/// Everything the workers share.
struct Shared {
    config: LoadgenConfig,
    pid: u32,
    started: Instant,
    /// Messages claimed so far; message numbers start at 1.
    claimed: AtomicU64,
    /// Dot-stuffed body with the final ".\r\n".
    body_on_wire: Vec<u8>,
    recipients: Vec<String>,
    /// MAIL, RCPTs and DATA as one pipelined write.
    pipelined_envelope: Vec<u8>,
    ids_file: Option<Mutex<File>>,
    acks_file: Option<Mutex<BufWriter<File>>>,
    tls: Option<TlsConnector>,
    acked: AtomicU64,
    tempfail: AtomicU64,
    permfail: AtomicU64,
    conn_errors: AtomicU64,
}

impl Shared {
    fn new(config: LoadgenConfig) -> Result<Self, LoadgenError> {
        let ids_file = match &config.ids_file {
            Some(path) => Some(Mutex::new(open_ids_file(path)?)),
            None => None,
        };
        let acks_file = match &config.acks_file {
            Some(path) => Some(Mutex::new(BufWriter::new(open_ids_file(path)?))),
            None => None,
        };
        let tls = if config.starttls {
            Some(TlsConnector::from(Arc::new(insecure_client_config()?)))
        } else {
            None
        };
        let recipients: Vec<String> = (1..=config.rcpts)
            .map(|k| format!("rcpt{k}@{}", config.to_domain))
            .collect();
        let mut pipelined_envelope = format!("MAIL FROM:<{}>\r\n", config.from).into_bytes();
        for rcpt in &recipients {
            pipelined_envelope.extend_from_slice(format!("RCPT TO:<{rcpt}>\r\n").as_bytes());
        }
        pipelined_envelope.extend_from_slice(b"DATA\r\n");
        Ok(Shared {
            body_on_wire: stuff_for_wire(&build_body(config.size)),
            pid: std::process::id(),
            started: Instant::now(),
            claimed: AtomicU64::new(0),
            recipients,
            pipelined_envelope,
            ids_file,
            acks_file,
            tls,
            acked: AtomicU64::new(0),
            tempfail: AtomicU64::new(0),
            permfail: AtomicU64::new(0),
            conn_errors: AtomicU64::new(0),
            config,
        })
    }

    /// The next message number, or None when all N are taken.
    fn claim(&self) -> Option<u64> {
        self.claimed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |claimed| {
                (claimed < self.config.messages).then_some(claimed + 1)
            })
            .ok()
            .map(|previous| previous + 1)
    }

    /// Waits until message `seq` is due under --rate.
    async fn pace(&self, seq: u64) {
        if self.config.rate > 0.0 {
            let offset = Duration::from_secs_f64((seq - 1) as f64 / self.config.rate);
            tokio::time::sleep_until((self.started + offset).into()).await;
        }
    }

    fn count_rejection(&self, reply: &Reply) {
        let counter = if reply.is_transient() {
            &self.tempfail
        } else {
            &self.permfail
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }

    /// Records an acknowledged message; its id reaches the file before the
    /// next message is sent.
    fn record_ack(&self, message_id: &str) {
        self.acked.fetch_add(1, Ordering::SeqCst);
        if let Some(file) = &self.acks_file {
            let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
            let now_us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros());
            if let Err(err) = writeln!(file, "{message_id} {now_us}") {
                eprintln!("sendengine-loadgen: cannot write the acks file: {err}");
            }
        }
        let Some(file) = &self.ids_file else { return };
        let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
        // One write call per line: the line is in the kernel at once, whole.
        if let Err(err) = file.write_all(format!("{message_id}\n").as_bytes()) {
            eprintln!("sendengine-loadgen: cannot write the ids file: {err}");
        }
    }

    /// Counts a lost connection; returns whether the worker goes on.
    fn connection_lost(&self, err: &SessionError) -> bool {
        let count = self.conn_errors.fetch_add(1, Ordering::SeqCst) + 1;
        if count <= MAX_ERRORS_PRINTED {
            eprintln!("sendengine-loadgen: connection error: {err}");
        }
        self.config.keep_going
    }
}

fn open_ids_file(path: &std::path::Path) -> Result<File, LoadgenError> {
    crate::open_append(path).map_err(|source| LoadgenError::IdsFile {
        path: path.to_path_buf(),
        source,
    })
}

/// Sends the configured messages and reports what happened.
pub async fn run(config: LoadgenConfig) -> Result<Summary, LoadgenError> {
    let connections = config.connections.max(1);
    let shared = Arc::new(Shared::new(config)?);
    let workers: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(worker(Arc::clone(&shared))))
        .collect();
    let mut latencies_us = Vec::new();
    for worker in workers {
        if let Ok(latencies) = worker.await {
            latencies_us.extend(latencies);
        }
    }
    let elapsed = shared.started.elapsed();
    if let Some(file) = &shared.acks_file {
        let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(err) = file.flush() {
            eprintln!("sendengine-loadgen: cannot write the acks file: {err}");
        }
    }
    latencies_us.sort_unstable();
    Ok(Summary {
        attempted: shared.claimed.load(Ordering::SeqCst),
        acked: shared.acked.load(Ordering::SeqCst),
        tempfail: shared.tempfail.load(Ordering::SeqCst),
        permfail: shared.permfail.load(Ordering::SeqCst),
        conn_errors: shared.conn_errors.load(Ordering::SeqCst),
        elapsed,
        latency_p50_ms: percentile_ms(&latencies_us, 0.50),
        latency_p99_ms: percentile_ms(&latencies_us, 0.99),
    })
}

/// Nearest-rank percentile of sorted microsecond values, in milliseconds.
fn percentile_ms(sorted_us: &[u32], fraction: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let rank = (fraction * sorted_us.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted_us.len()) - 1;
    Some(f64::from(sorted_us[index]) / 1000.0)
}

/// One connection's loop; returns the latencies (µs) of its acknowledged messages.
async fn worker(shared: Arc<Shared>) -> Vec<u32> {
    let mut latencies = Vec::new();
    let mut client: Option<Client> = None;
    let mut headers = Vec::with_capacity(1024);
    while let Some(seq) = shared.claim() {
        shared.pace(seq).await;
        let settled = match attempt(&mut client, &shared, seq, &mut headers).await {
            Ok(Outcome::Acked(latency)) => {
                shared.record_ack(&loadgen_message_id(shared.pid, seq));
                latencies.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
                Ok(())
            }
            Ok(Outcome::Rejected(reply)) => {
                shared.count_rejection(&reply);
                after_rejection(client.as_mut(), &reply).await
            }
            Err(err) => Err(err),
        };
        if settled.is_ok()
            && shared.config.connection_per_message
            && let Some(active) = client.take()
        {
            // QUIT waits for the 221; dropping the session closes the socket.
            active.quit().await;
        }
        if let Err(err) = settled {
            client = None;
            if !shared.connection_lost(&err) {
                break;
            }
            tokio::time::sleep(RECONNECT_DELAY).await;
        }
    }
    if let Some(active) = client {
        active.quit().await;
    }
    latencies
}

/// Sends message `seq`, connecting first when there is no session. The
/// session is put back in `slot` whatever the outcome; the caller drops it
/// on errors.
async fn attempt(
    slot: &mut Option<Client>,
    shared: &Shared,
    seq: u64,
    headers: &mut Vec<u8>,
) -> Result<Outcome, SessionError> {
    let mut client = match slot.take() {
        Some(client) => client,
        None => Client::connect(shared).await?,
    };
    let outcome = client.send(shared, seq, headers).await;
    *slot = Some(client);
    outcome
}

/// Resets the transaction after a rejection; a 421 means the server is
/// closing the connection.
async fn after_rejection(client: Option<&mut Client>, reply: &Reply) -> Result<(), SessionError> {
    if reply.code == 421 {
        return Err(SessionError::Refused {
            step: "transaction",
            reply: reply.clone(),
        });
    }
    match client {
        Some(client) => client.reset().await,
        None => Ok(()),
    }
}

enum Outcome {
    /// 2xx after the dot, with the time from the dot to the reply.
    Acked(Duration),
    /// The first failure reply of the transaction.
    Rejected(Reply),
}

/// One SMTP client session.
struct Client {
    conn: SmtpConn,
    pipelining: bool,
}

impl Client {
    async fn connect(shared: &Shared) -> Result<Client, SessionError> {
        let config = &shared.config;
        let tcp = tokio::time::timeout(config.timeout, TcpStream::connect(&config.server))
            .await
            .map_err(|_| SessionError::ConnectTimeout)?
            .map_err(SessionError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let mut client = Client {
            conn: SmtpConn::new(Box::new(tcp), Some(config.timeout)),
            pipelining: false,
        };
        client.expect("greeting", None, 220).await?;
        let mut ehlo = client.ehlo().await?;
        if let Some(connector) = &shared.tls {
            client
                .start_tls(connector.clone(), &config.server, &ehlo)
                .await?;
            ehlo = client.ehlo().await?;
        }
        if let Some((user, pass)) = &config.auth {
            let token = BASE64.encode(format!("\0{user}\0{pass}"));
            let command = format!("AUTH PLAIN {token}");
            client.expect("AUTH", Some(&command), 235).await?;
        }
        client.pipelining = config.pipelining && ehlo.has_extension("PIPELINING");
        Ok(client)
    }

    /// Sends `command` (if any) and requires reply `code`.
    async fn expect(
        &mut self,
        step: &'static str,
        command: Option<&str>,
        code: u16,
    ) -> Result<Reply, SessionError> {
        if let Some(command) = command {
            self.conn.queue(command.as_bytes());
            self.conn.queue(b"\r\n");
        }
        let reply = self.conn.read_reply().await?;
        if reply.code != code {
            return Err(SessionError::Refused { step, reply });
        }
        Ok(reply)
    }

    async fn ehlo(&mut self) -> Result<Reply, SessionError> {
        self.expect("EHLO", Some(&format!("EHLO {EHLO_NAME}")), 250)
            .await
    }

    async fn start_tls(
        &mut self,
        connector: TlsConnector,
        server: &str,
        ehlo: &Reply,
    ) -> Result<(), SessionError> {
        if !ehlo.has_extension("STARTTLS") {
            return Err(SessionError::NoStartTls);
        }
        self.expect("STARTTLS", Some("STARTTLS"), 220).await?;
        let name = server_name(server);
        self.conn
            .start_tls(|plain| async move {
                let tls = connector.connect(name, plain).await?;
                Ok(Box::new(tls) as Box<dyn Stream>)
            })
            .await?;
        Ok(())
    }

    /// Sends message `seq`: envelope, then (after 354) headers and body.
    async fn send(
        &mut self,
        shared: &Shared,
        seq: u64,
        headers: &mut Vec<u8>,
    ) -> Result<Outcome, SessionError> {
        let envelope = if self.pipelining {
            self.send_envelope_pipelined(shared).await?
        } else {
            self.send_envelope_stepwise(shared).await?
        };
        if let Some(rejection) = envelope {
            return Ok(Outcome::Rejected(rejection));
        }
        let message_id = loadgen_message_id(shared.pid, seq);
        headers.clear();
        write_headers(
            headers,
            &HeaderFields {
                from: &shared.config.from,
                to: shared.recipients.first().map_or("", String::as_str),
                message_id: &message_id,
                seq,
            },
        );
        self.conn.queue(headers);
        self.conn.queue(&shared.body_on_wire);
        self.conn.flush().await?;
        let dot_sent = Instant::now();
        let reply = self.conn.read_reply().await?;
        Ok(match reply.code {
            200..=299 => Outcome::Acked(dot_sent.elapsed()),
            _ => Outcome::Rejected(reply),
        })
    }

    /// MAIL, RCPTs and DATA in one write (RFC 2920). Returns the first
    /// failure, or None when DATA got its 354.
    async fn send_envelope_pipelined(
        &mut self,
        shared: &Shared,
    ) -> Result<Option<Reply>, SessionError> {
        self.conn.queue(&shared.pipelined_envelope);
        let mut first_failure = None;
        for _ in 0..shared.recipients.len() + 1 {
            let reply = self.conn.read_reply().await?;
            if reply.code == 421 {
                // The server is closing: no further replies will come.
                return Ok(Some(reply));
            }
            if !reply.is_positive() && first_failure.is_none() {
                first_failure = Some(reply);
            }
        }
        let data_reply = self.conn.read_reply().await?;
        if data_reply.code == 354 {
            // The server takes the message even if it refused something
            // above (e.g. some recipients): send it.
            return Ok(None);
        }
        Ok(Some(first_failure.unwrap_or(data_reply)))
    }

    /// MAIL, each RCPT, DATA, waiting for each reply.
    async fn send_envelope_stepwise(
        &mut self,
        shared: &Shared,
    ) -> Result<Option<Reply>, SessionError> {
        let mail = format!("MAIL FROM:<{}>", shared.config.from);
        let reply = self.command(&mail).await?;
        if !reply.is_positive() {
            return Ok(Some(reply));
        }
        let mut first_failure = None;
        let mut accepted = 0;
        for rcpt in &shared.recipients {
            let reply = self.command(&format!("RCPT TO:<{rcpt}>")).await?;
            if reply.is_positive() {
                accepted += 1;
            } else if first_failure.is_none() {
                first_failure = Some(reply);
            }
        }
        if accepted == 0 {
            return Ok(first_failure);
        }
        let reply = self.command("DATA").await?;
        Ok((reply.code != 354).then_some(reply))
    }

    async fn command(&mut self, command: &str) -> Result<Reply, ConnError> {
        self.conn.queue(command.as_bytes());
        self.conn.queue(b"\r\n");
        self.conn.read_reply().await
    }

    async fn reset(&mut self) -> Result<(), SessionError> {
        self.expect("RSET", Some("RSET"), 250).await.map(|_| ())
    }

    async fn quit(mut self) {
        let _ = self.command("QUIT").await;
    }
}

/// The TLS server name for "HOST:PORT". Certificates are not checked, so any
/// valid name will do when HOST is not one.
fn server_name(server: &str) -> ServerName<'static> {
    let host = server.rsplit_once(':').map_or(server, |(host, _port)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).unwrap_or_else(|_| {
        ServerName::try_from("localhost").expect("\"localhost\" is a valid name")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let values: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile_ms(&values, 0.50), Some(50.0));
        assert_eq!(percentile_ms(&values, 0.99), Some(99.0));
        assert_eq!(percentile_ms(&[7000], 0.99), Some(7.0));
        assert_eq!(percentile_ms(&[], 0.5), None);
    }

    #[test]
    fn claims_stop_at_n() {
        let shared = Shared::new(LoadgenConfig {
            messages: 3,
            ..LoadgenConfig::default()
        })
        .unwrap();
        let claims: Vec<_> = std::iter::from_fn(|| shared.claim()).collect();
        assert_eq!(claims, vec![1, 2, 3]);
        assert_eq!(shared.claim(), None);
    }

    #[test]
    fn builds_pipelined_envelope() {
        let shared = Shared::new(LoadgenConfig {
            rcpts: 2,
            to_domain: "d.test".to_string(),
            ..LoadgenConfig::default()
        })
        .unwrap();
        assert_eq!(
            shared.pipelined_envelope,
            b"MAIL FROM:<loadgen@example.com>\r\nRCPT TO:<rcpt1@d.test>\r\nRCPT TO:<rcpt2@d.test>\r\nDATA\r\n"
        );
    }

    #[test]
    fn summary_line_has_all_fields() {
        let summary = Summary {
            attempted: 10,
            acked: 8,
            tempfail: 1,
            permfail: 1,
            conn_errors: 0,
            elapsed: Duration::from_secs(2),
            latency_p50_ms: Some(1.5),
            latency_p99_ms: Some(3.0),
        };
        assert_eq!(
            summary.line(),
            "attempted=10 acked=8 tempfail=1 permfail=1 conn_errors=0 elapsed_s=2.000 msgs_per_s=4.0"
        );
        let json: serde_json::Value = serde_json::from_str(&summary.json()).unwrap();
        assert_eq!(json["acked"], 8);
        assert_eq!(json["latency_p99_ms"], 3.0);
    }

    #[test]
    fn server_name_from_host_port() {
        assert_eq!(
            server_name("127.0.0.1:25"),
            ServerName::try_from("127.0.0.1").unwrap()
        );
        assert_eq!(
            server_name("mx.example.net:2525"),
            ServerName::try_from("mx.example.net").unwrap()
        );
    }
}
