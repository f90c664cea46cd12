//! The HTTP load generator: POSTs KumoMTA-style `/api/inject/v1` requests
//! of R personalised recipients over C keep-alive connections and counts
//! the recipients the answers say are queued.
//!
//! The content is one raw RFC 5322 template of about `size` bytes with
//! `{{ name }}`, `{{ email }}` and `{{ code }}` in it: the daemon renders
//! one message per recipient, the work the benchmark weighs against SMTP.
//! A tiny HTTP/1.1 client of its own (no hyper): the instruments stay
//! independent of what they measure.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer header accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest answer body accepted (a failed request names its recipients).
const MAX_BODY: usize = 64 << 20;

#[derive(Debug, Error)]
pub enum HttpLoadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad answer from the server: {0}")]
    Protocol(String),
}

#[derive(Debug, Clone)]
pub struct HttpLoadConfig {
    pub server: SocketAddr,
    pub token: String,
    pub requests: u64,
    pub rcpts: usize,
    pub connections: usize,
    /// Bytes of the content template.
    pub size: usize,
    pub from: String,
    pub to_domain: String,
    /// Longest wait for one answer.
    pub timeout: Duration,
}

impl Default for HttpLoadConfig {
    fn default() -> Self {
        HttpLoadConfig {
            server: SocketAddr::from(([127, 0, 0, 1], 8025)),
            token: String::new(),
            requests: 10,
            rcpts: 1000,
            connections: 4,
            size: 10 * 1024,
            from: "loadgen@example.com".into(),
            to_domain: "example.net".into(),
            timeout: Duration::from_secs(300),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct HttpLoadSummary {
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub recipients_queued: u64,
    pub recipients_failed: u64,
    pub elapsed_s: f64,
    pub rcpts_per_s: f64,
}

impl HttpLoadSummary {
    pub fn line(&self) -> String {
        format!(
            "requests ok={} failed={} recipients queued={} failed={} elapsed={:.3}s rate={:.0} rcpts/s",
            self.requests_ok,
            self.requests_failed,
            self.recipients_queued,
            self.recipients_failed,
            self.elapsed_s,
            self.rcpts_per_s
        )
    }
}

/// Runs the load and returns what the answers said.
pub async fn run(config: HttpLoadConfig) -> Result<HttpLoadSummary, HttpLoadError> {
    let config = Arc::new(config);
    let next = Arc::new(AtomicU64::new(0));
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..config.connections.max(1) {
        let (config, next, counts) = (config.clone(), next.clone(), counts.clone());
        workers.push(tokio::spawn(async move {
            worker(&config, &next, &counts).await
        }));
    }
    for w in workers {
        w.await
            .map_err(|e| HttpLoadError::Protocol(format!("a worker failed: {e}")))??;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let queued = counts.queued.load(Ordering::SeqCst);
    Ok(HttpLoadSummary {
        requests_ok: counts.ok.load(Ordering::SeqCst),
        requests_failed: counts.failed.load(Ordering::SeqCst),
        recipients_queued: queued,
        recipients_failed: counts.rcpt_failed.load(Ordering::SeqCst),
        elapsed_s,
        rcpts_per_s: if elapsed_s > 0.0 {
            queued as f64 / elapsed_s
        } else {
            0.0
        },
    })
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    queued: AtomicU64,
    rcpt_failed: AtomicU64,
}

/// One connection: takes request numbers until all are sent.
async fn worker(
    config: &HttpLoadConfig,
    next: &AtomicU64,
    counts: &Counts,
) -> Result<(), HttpLoadError> {
    let mut stream: Option<TcpStream> = None;
    loop {
        let n = next.fetch_add(1, Ordering::SeqCst);
        if n >= config.requests {
            return Ok(());
        }
        let body = request_body(config, n);
        let conn = match stream.take() {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(config.server).await?;
                s.set_nodelay(true)?;
                s
            }
        };
        let (conn, status, answer) =
            tokio::time::timeout(config.timeout, exchange(conn, config, &body))
                .await
                .map_err(|_| HttpLoadError::Protocol("no answer within the timeout".into()))??;
        stream = Some(conn);
        let json: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
        let queued = json["success_count"].as_u64().unwrap_or(0);
        counts.queued.fetch_add(queued, Ordering::SeqCst);
        counts.rcpt_failed.fetch_add(
            config.rcpts as u64 - queued.min(config.rcpts as u64),
            Ordering::SeqCst,
        );
        if status == 200 {
            counts.ok.fetch_add(1, Ordering::SeqCst);
        } else {
            counts.failed.fetch_add(1, Ordering::SeqCst);
            eprintln!(
                "sendengine-httpload: HTTP {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
    }
}

/// Writes one request and reads its answer: (the connection, status, body).
async fn exchange(
    mut conn: TcpStream,
    config: &HttpLoadConfig,
    body: &[u8],
) -> Result<(TcpStream, u16, Vec<u8>), HttpLoadError> {
    let head = format!(
        "POST /api/inject/v1 HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        config.server,
        config.token,
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body).await?;
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(HttpLoadError::Protocol("answer header too long".into()));
        }
        read_more(&mut conn, &mut buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpLoadError::Protocol(format!("no status line: {head:?}")))?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .ok_or_else(|| HttpLoadError::Protocol("no Content-Length in the answer".into()))?;
    if length > MAX_BODY {
        return Err(HttpLoadError::Protocol(format!(
            "an answer of {length} bytes"
        )));
    }
    while buf.len() < head_end + length {
        read_more(&mut conn, &mut buf).await?;
    }
    Ok((conn, status, buf[head_end..head_end + length].to_vec()))
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), HttpLoadError> {
    let mut chunk = [0u8; 16 * 1024];
    let n = conn.read(&mut chunk).await?;
    if n == 0 {
        return Err(HttpLoadError::Protocol(
            "the server closed the connection".into(),
        ));
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Request `n`: the template and `rcpts` recipients with their own
/// name and code.
pub fn request_body(config: &HttpLoadConfig, n: u64) -> Vec<u8> {
    let recipients: Vec<serde_json::Value> = (0..config.rcpts)
        .map(|i| {
            serde_json::json!({
                "email": format!("h{n}-{i}@{}", config.to_domain),
                "name": format!("Reader {n}-{i}"),
                "substitutions": {"code": format!("C{n}X{i}")}
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "envelope_sender": config.from,
        "content": template(config.size, &config.from),
        "recipients": recipients,
    }))
    .unwrap_or_default()
}

/// A message template of about `size` bytes: headers, a greeting with the
/// variables, then filler lines.
pub fn template(size: usize, from: &str) -> String {
    let mut text = format!(
        "From: {from}\nTo: \"{{{{ name }}}}\" <{{{{ email }}}}>\nSubject: Your offer, {{{{ name }}}}\n\nHello {{{{ name }}}}, your code is {{{{ code }}}}.\n"
    );
    let line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\n";
    while text.len() + line.len() <= size {
        text.push_str(line);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_has_the_size_and_the_variables() {
        let t = template(10 * 1024, "a@b.c");
        assert!(
            t.len() <= 10 * 1024 && t.len() > 10 * 1024 - 100,
            "{}",
            t.len()
        );
        assert!(t.contains("{{ name }}") && t.contains("{{ code }}"));
        let config = HttpLoadConfig {
            rcpts: 3,
            ..HttpLoadConfig::default()
        };
        let body: serde_json::Value = serde_json::from_slice(&request_body(&config, 7)).unwrap();
        assert_eq!(body["recipients"].as_array().unwrap().len(), 3);
        assert_eq!(body["recipients"][2]["email"], "h7-2@example.net");
    }
}
