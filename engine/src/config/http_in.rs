//! `[http_in]` in `config.toml`: the HTTP injection API's listener and
//! its bounds (the API itself is `crate::http_in`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::values::{parse_duration, parse_size};

/// `[http_in]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpIn {
    #[serde(default)]
    listen: Vec<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    max_body_size: Option<String>,
    max_recipients: Option<usize>,
    max_connections: Option<usize>,
    max_requests: Option<usize>,
    admissions_per_request: Option<usize>,
    read_timeout: Option<String>,
    request_timeout: Option<String>,
    idempotency_ttl: Option<String>,
}

/// `[http_in]`, checked, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpInSettings {
    /// Empty: nothing listens.
    pub listen: Vec<SocketAddr>,
    /// Both set: HTTPS only (the same PEM files as `[smtp_in]` take).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Largest request body; beyond it 413 (default 32MB: with `max_requests`
    /// at 16, at most 512MB of bodies are held, as `smtp_in.max_data_in_flight`).
    pub max_body_bytes: u64,
    /// Recipients per request; beyond it 413 (default 10,000).
    pub max_recipients: usize,
    /// Connections open at once; more wait in the kernel's backlog (default 256).
    pub max_connections: usize,
    /// Requests being admitted at once; beyond it 503 (default 16).
    pub max_requests: usize,
    /// Admissions of one request running at once, sharing group commits
    /// (default 256; their bytes are bounded too, `http_in::handler`).
    pub admissions_per_request: usize,
    /// How long one read or write of a connection may wait (default 30s):
    /// bounds a slow header, a stalled body and an idle keep-alive.
    pub read_timeout: Duration,
    /// How long reading a whole request body may take (default 120s).
    pub request_timeout: Duration,
    /// How long an idempotency key is remembered (default 24h).
    pub idempotency_ttl: Duration,
}

impl Default for HttpInSettings {
    fn default() -> Self {
        HttpInSettings {
            listen: Vec::new(),
            tls_cert: None,
            tls_key: None,
            max_body_bytes: 32 << 20,
            max_recipients: 10_000,
            max_connections: 256,
            max_requests: 16,
            admissions_per_request: 256,
            read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(120),
            idempotency_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl RawHttpIn {
    /// Checks every key; errors name it.
    pub fn check(self) -> Result<HttpInSettings, String> {
        let d = HttpInSettings::default();
        let listen = self
            .listen
            .iter()
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|_| {
                    format!(
                        "http_in.listen: `{a}` is not an address (expected e.g. 127.0.0.1:8025)"
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("http_in: tls_cert and tls_key go together; set both or neither".into());
        }
        let size = |key: &str, v: Option<&String>, default: u64| match v {
            Some(v) => parse_size(v).map_err(|e| format!("http_in.{key}: {e}")),
            None => Ok(default),
        };
        let duration = |key: &str, v: Option<&String>, default: Duration| match v {
            Some(v) => match parse_duration(v) {
                Ok(d) if d.is_zero() => Err(format!("http_in.{key}: must be more than 0s")),
                Ok(d) => Ok(d),
                Err(e) => Err(format!("http_in.{key}: {e}")),
            },
            None => Ok(default),
        };
        let count = |key: &str, v: Option<usize>, default: usize| match v.unwrap_or(default) {
            0 => Err(format!("http_in.{key}: must be at least 1")),
            n => Ok(n),
        };
        Ok(HttpInSettings {
            listen,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            max_body_bytes: size(
                "max_body_size",
                self.max_body_size.as_ref(),
                d.max_body_bytes,
            )?,
            max_recipients: count("max_recipients", self.max_recipients, d.max_recipients)?,
            max_connections: count("max_connections", self.max_connections, d.max_connections)?,
            max_requests: count("max_requests", self.max_requests, d.max_requests)?,
            admissions_per_request: count(
                "admissions_per_request",
                self.admissions_per_request,
                d.admissions_per_request,
            )?,
            read_timeout: duration("read_timeout", self.read_timeout.as_ref(), d.read_timeout)?,
            request_timeout: duration(
                "request_timeout",
                self.request_timeout.as_ref(),
                d.request_timeout,
            )?,
            idempotency_ttl: duration(
                "idempotency_ttl",
                self.idempotency_ttl.as_ref(),
                d.idempotency_ttl,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HttpInSettings, String> {
        toml::from_str::<RawHttpIn>(text)
            .map_err(|e| e.to_string())?
            .check()
    }

    #[test]
    fn defaults_and_units() {
        let s = parse("listen = [\"127.0.0.1:8025\"]\nmax_body_size = \"1MB\"").unwrap();
        assert_eq!(s.listen.len(), 1);
        assert_eq!(s.max_body_bytes, 1 << 20);
        assert_eq!(s.max_recipients, 10_000);
        assert_eq!(s.idempotency_ttl, Duration::from_secs(86_400));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("listen = [\"nowhere\"]", "http_in.listen"),
            ("max_body_size = \"12\"", "http_in.max_body_size"),
            ("read_timeout = \"0s\"", "http_in.read_timeout"),
            ("max_recipients = 0", "http_in.max_recipients"),
            ("tls_cert = \"a.pem\"", "tls_key"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
        assert!(parse("lisen = []").is_err(), "unknown keys are refused");
    }
}
