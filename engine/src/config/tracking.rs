//! `[tracking]`: the click and open listener and how links are rewritten
//! (see `crate::tracking`). Without the section nothing is rewritten and
//! nothing listens: a rewritten link must always have a listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::values::{duration_or, keyed, parse_socket_addr, positive};

/// Longest `retain` accepted: ten years.
const MAX_RETAIN_DAYS: u64 = 3650;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTracking {
    listen: Option<String>,
    scheme: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    retain: Option<String>,
    max_connections: Option<usize>,
    header_timeout: Option<String>,
    connection_timeout: Option<String>,
}

/// The checked `[tracking]` section.
#[derive(Debug, Clone)]
pub struct TrackingSection {
    pub listen: SocketAddr,
    /// `http` or `https`: the scheme of the rewritten links (`https`
    /// when the listener has TLS, or behind a TLS proxy).
    pub scheme: &'static str,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// How long a message's links keep working (default 90 days).
    pub retain: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// How long a request's header may take to arrive (10 s).
    pub header_timeout: Duration,
    /// How long one connection may live, keep-alive included (60 s).
    pub connection_timeout: Duration,
}

impl RawTracking {
    pub(super) fn validate(self) -> Result<TrackingSection, String> {
        let listen = match &self.listen {
            Some(a) => keyed("tracking.listen", parse_socket_addr(a))?,
            None => {
                return Err(
                    "tracking.listen: required (e.g. \"0.0.0.0:80\"); leave the section out for no tracking"
                        .into(),
                );
            }
        };
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err("tracking.tls_cert and tracking.tls_key: give both or neither".into()),
        };
        let scheme = match self.scheme.as_deref() {
            Some("https") => "https",
            Some("http") => "http",
            None if tls.is_some() => "https",
            None => "http",
            Some(other) => {
                return Err(format!(
                    "tracking.scheme: `{other}` is not one of http, https"
                ));
            }
        };
        let retain = duration_or(
            "tracking.retain",
            self.retain.as_ref(),
            Duration::from_secs(90 * 86_400),
        )?;
        if retain < Duration::from_secs(86_400) || retain.as_secs() > MAX_RETAIN_DAYS * 86_400 {
            return Err(format!("tracking.retain: must be 1d to {MAX_RETAIN_DAYS}d"));
        }
        let (tls_cert, tls_key) = tls.unzip();
        Ok(TrackingSection {
            listen,
            scheme,
            tls_cert,
            tls_key,
            retain,
            max_connections: positive("tracking.max_connections", self.max_connections, 1000)?,
            header_timeout: nonzero(
                duration_or(
                    "tracking.header_timeout",
                    self.header_timeout.as_ref(),
                    Duration::from_secs(10),
                )?,
                "tracking.header_timeout",
            )?,
            connection_timeout: nonzero(
                duration_or(
                    "tracking.connection_timeout",
                    self.connection_timeout.as_ref(),
                    Duration::from_secs(60),
                )?,
                "tracking.connection_timeout",
            )?,
        })
    }
}

fn nonzero(value: Duration, key: &str) -> Result<Duration, String> {
    if value.is_zero() {
        Err(format!("{key}: must be longer than 0s"))
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TrackingSection, String> {
        let raw: RawTracking = toml::from_str(text).map_err(|e| e.to_string())?;
        raw.validate()
    }

    #[test]
    fn defaults_and_scheme_follow_tls() {
        let plain = parse("listen = \"127.0.0.1:8080\"").unwrap();
        assert_eq!(plain.scheme, "http");
        assert_eq!(plain.retain, Duration::from_secs(90 * 86_400));
        let tls = parse("listen = \"127.0.0.1:8443\"\ntls_cert = \"c\"\ntls_key = \"k\"").unwrap();
        assert_eq!(tls.scheme, "https");
        let proxied = parse("listen = \"127.0.0.1:8080\"\nscheme = \"https\"").unwrap();
        assert_eq!(proxied.scheme, "https");
    }

    #[test]
    fn mistakes_name_the_key() {
        for (text, key) in [
            ("scheme = \"http\"", "tracking.listen"),
            ("listen = \"nope\"", "tracking.listen"),
            (
                "listen = \"127.0.0.1:1\"\nscheme = \"ftp\"",
                "tracking.scheme",
            ),
            (
                "listen = \"127.0.0.1:1\"\nretain = \"90\"",
                "tracking.retain",
            ),
            (
                "listen = \"127.0.0.1:1\"\nretain = \"1h\"",
                "tracking.retain",
            ),
            (
                "listen = \"127.0.0.1:1\"\ntls_cert = \"c\"",
                "tracking.tls_cert",
            ),
            (
                "listen = \"127.0.0.1:1\"\nmax_connections = 0",
                "tracking.max_connections",
            ),
            (
                "listen = \"127.0.0.1:1\"\nheader_timeout = \"0s\"",
                "tracking.header_timeout",
            ),
            ("listen = \"127.0.0.1:1\"\nlisten_on = \"x\"", "listen_on"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
