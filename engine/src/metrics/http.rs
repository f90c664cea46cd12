//! The `/metrics` HTTP listener. It is ours, not metrics-exporter-prometheus's:
//! that one has no read timeout and no connection limit, so 1,100 requests
//! that never finished their head held 1,100 file descriptors and the
//! daemon, at `nofile` 1024, stopped accepting SMTP (issue 15.6).
//!
//! One request per connection, answered with `Connection: close`, which is
//! all a Prometheus scraper needs. Every connection holds one of
//! `MAX_CONNECTIONS` slots; beyond them a new connection gets a 503 written
//! without waiting and is closed at once. The request head must arrive
//! within `HEAD_TIMEOUT` and fit in `MAX_HEAD_BYTES`; the answer must be
//! taken within `WRITE_TIMEOUT`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// Connections served at once; a scraper needs one, a few dashboards a few.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request line and headers.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to read the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head read; a scraper's is a few hundred bytes.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// After a failed accept (out of descriptors, say), wait before the next one
/// instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds the listener. Synchronous so that a port in use is reported at
/// start, like every other listener's.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// Accepts scrapers until shutdown.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("metrics listener: accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Never wait on this client: a full buffer just loses the 503.
            let _ = stream.try_write(&response(Status::Busy, "").into_bytes());
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            answer(stream, &handle).await;
            drop(slot);
        });
    }
}

/// Reads one request head and writes its answer, each under its timeout.
async fn answer(mut stream: TcpStream, handle: &PrometheusHandle) {
    let status = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Err(_) | Ok(Err(_)) => return,
        Ok(Ok(Head::TooLarge)) => Status::HeadTooLarge,
        Ok(Ok(Head::Complete(head))) => route(&head),
    };
    let body = match status {
        Status::Ok => handle.render(),
        _ => String::new(),
    };
    let bytes = response(status, &body).into_bytes();
    let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&bytes)).await;
}

enum Head {
    Complete(Vec<u8>),
    TooLarge,
}

/// Reads until the blank line that ends the head.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
        if ends_head(&head) {
            return Ok(Head::Complete(head));
        }
        if head.len() > MAX_HEAD_BYTES {
            return Ok(Head::TooLarge);
        }
    }
}

/// The head ends at an empty line (CRLF CRLF, or bare LFs from a lenient
/// client).
fn ends_head(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    HeadTooLarge,
    Busy,
}

/// What a request head gets: only `GET /metrics` (any query) is served.
fn route(head: &[u8]) -> Status {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return Status::BadRequest;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Status::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Status::BadRequest;
    }
    if method != "GET" {
        return Status::MethodNotAllowed;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path == "/metrics" {
        Status::Ok
    } else {
        Status::NotFound
    }
}

fn response(status: Status, body: &str) -> String {
    let (code, text, allow, content_type) = match status {
        Status::Ok => ("200 OK", "", "", "text/plain; version=0.0.4; charset=utf-8"),
        Status::BadRequest => (
            "400 Bad Request",
            "the request line is not `GET /metrics HTTP/1.1`\n",
            "",
            "text/plain",
        ),
        Status::NotFound => (
            "404 Not Found",
            "metrics are served at /metrics\n",
            "",
            "text/plain",
        ),
        Status::MethodNotAllowed => (
            "405 Method Not Allowed",
            "only GET is served here\n",
            "Allow: GET\r\n",
            "text/plain",
        ),
        Status::HeadTooLarge => (
            "431 Request Header Fields Too Large",
            "the request head is over 8 KiB\n",
            "",
            "text/plain",
        ),
        Status::Busy => (
            "503 Service Unavailable",
            "too many metrics clients at once; try again in a few seconds\n",
            "Retry-After: 5\r\n",
            "text/plain",
        ),
    };
    let body = if status == Status::Ok { body } else { text };
    format!(
        "HTTP/1.1 {code}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\n\r\n"), Status::Ok);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Status::Ok);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Status::NotFound);
        assert_eq!(route(b"GET /metricsx HTTP/1.1\r\n\r\n"), Status::NotFound);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Status::MethodNotAllowed
        );
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Status::BadRequest);
        assert_eq!(route(b"GET /metrics SMTP/1.0\r\n\r\n"), Status::BadRequest);
        assert_eq!(route(b"\xff\xfe\r\n\r\n"), Status::BadRequest);
    }

    #[test]
    fn a_head_ends_at_the_first_empty_line() {
        assert!(ends_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(ends_head(b"GET / HTTP/1.1\nHost: x\n\n"));
        assert!(!ends_head(b"GET / HTTP/1.1\r\nHost: x\r\n"));
    }

    #[test]
    fn answers_carry_their_length_and_close() {
        let text = response(Status::Ok, "a 1\n");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 4\r\n"), "{text}");
        assert!(text.ends_with("Connection: close\r\n\r\na 1\n"), "{text}");
        let text = response(Status::MethodNotAllowed, "ignored");
        assert!(text.contains("Allow: GET\r\n"), "{text}");
        assert!(text.ends_with("only GET is served here\n"), "{text}");
    }
}
