//! The smallest HTTP/1.1 client webhooks need: one POST per connection
//! (`Connection: close`), over TCP or TLS (webpki roots, aws-lc-rs), and the
//! status code of the answer. The rest of the answer is not read.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Longest status line read from a receiver.
const MAX_STATUS_LINE_BYTES: usize = 8 * 1024;

/// A parsed `http://host:port/path` or `https://...` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Starts with '/'; includes any query.
    pub path: String,
}

impl HttpUrl {
    pub fn parse(text: &str) -> Result<HttpUrl, String> {
        let (tls, rest) = if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(format!("`{text}` is not an http:// or https:// URL"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') || path.contains(|c: char| c.is_whitespace() || c == '#') {
            return Err(format!(
                "`{text}`: user info, fragments and spaces are not supported"
            ));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = split_host_port(authority, default_port)
            .ok_or_else(|| format!("`{text}`: expected host or host:port after the scheme"))?;
        Ok(HttpUrl {
            tls,
            host,
            port,
            path: path.to_owned(),
        })
    }

    /// The `Host:` header value.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.tls, self.port) {
            (false, 80) | (true, 443) => host,
            _ => format!("{host}:{}", self.port),
        }
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (authority, default_port),
    };
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the answer is not HTTP: {0:?}")]
    BadAnswer(String),
}

/// Makes TLS connections to receivers; one per webhook, built once.
#[derive(Clone)]
pub struct HttpClient {
    tls: TlsConnector,
}

impl HttpClient {
    pub fn new() -> Result<HttpClient, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(HttpClient {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// POSTs `body` with the given extra headers; returns the status code.
    /// Everything (connect, TLS, send, status line) shares one `timeout`.
    pub async fn post(
        &self,
        url: &HttpUrl,
        headers: &[(&str, String)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<u16, PostError> {
        tokio::time::timeout(timeout, self.post_now(url, headers, body))
            .await
            .map_err(|_| PostError::Timeout(timeout))?
    }

    async fn post_now(
        &self,
        url: &HttpUrl,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<u16, PostError> {
        let tcp = TcpStream::connect((url.host.as_str(), url.port)).await?;
        tcp.set_nodelay(true)?;
        let request = request_bytes(url, headers, body);
        if !url.tls {
            return exchange(tcp, &request).await;
        }
        let name = ServerName::try_from(url.host.clone())
            .map_err(|e| PostError::Tls(format!("{}: {e}", url.host)))?;
        let stream = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| PostError::Tls(e.to_string()))?;
        exchange(stream, &request).await
    }
}

fn request_bytes(url: &HttpUrl, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sendengine\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        url.path,
        url.host_header(),
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
) -> Result<u16, PostError> {
    stream.write_all(request).await?;
    stream.flush().await?;
    let line = read_status_line(&mut stream).await?;
    parse_status(&line)
}

async fn read_status_line<S: AsyncRead + Unpin>(stream: &mut S) -> Result<String, PostError> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            buf.truncate(end);
            break;
        }
        if buf.len() > MAX_STATUS_LINE_BYTES {
            break;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// `HTTP/1.1 204 No Content` -> 204.
fn parse_status(line: &str) -> Result<u16, PostError> {
    let mut parts = line.split(' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(code) if version.starts_with("HTTP/1.") && (100..600).contains(&code) => Ok(code),
        _ => Err(PostError::BadAnswer(line.chars().take(80).collect())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed() {
        let u = HttpUrl::parse("http://127.0.0.1:8080/hook?x=1").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "127.0.0.1", 8080));
        assert_eq!(u.path, "/hook?x=1");
        assert_eq!(u.host_header(), "127.0.0.1:8080");
        let u = HttpUrl::parse("https://hooks.example.com").unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (true, 443, "/"));
        assert_eq!(u.host_header(), "hooks.example.com");
        let u = HttpUrl::parse("http://[::1]:81/x").unwrap();
        assert_eq!(
            (u.host.as_str(), u.host_header()),
            ("::1", "[::1]:81".into())
        );
        assert!(HttpUrl::parse("ftp://x/").is_err());
        assert!(HttpUrl::parse("http://:80/").is_err());
        assert!(HttpUrl::parse("http://u:p@x/").is_err());
        assert!(HttpUrl::parse("http://x:99999/").is_err());
    }

    #[test]
    fn status_lines_are_parsed() {
        assert_eq!(parse_status("HTTP/1.1 204 No Content").unwrap(), 204);
        assert_eq!(parse_status("HTTP/1.0 500").unwrap(), 500);
        assert!(parse_status("SSH-2.0-OpenSSH").is_err());
        assert!(parse_status("").is_err());
    }
}
