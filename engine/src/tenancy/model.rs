//! The objects an operator configures: delivery servers, user groups and
//! users (DNS templates and sender domains are in `crate::domains`).
//!
//! Each has one serde form, used alike in `config.toml`, in the spool's
//! object table and (later) on the admin socket, and a `validate` that
//! names the field at fault. Delivery servers also have a checked form,
//! `DeliveryServer`, with parsed durations and the TLS mode.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::values::parse_duration;
use crate::values::relay::{Credentials, Encryption, Timeouts};

/// The built-in route that delivers to the recipients' MX hosts; a group
/// may list it like a delivery server.
pub const DIRECT: &str = "direct";

/// The channels mail is sent on; marketing when the message does not say.
pub const CHANNELS: [&str; 3] = ["marketing", "transactional", "autoresponder"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryServerSpec {
    pub name: String,
    pub host: String,
    pub port: Option<u16>,
    pub encryption: Option<String>,
    /// TCP connect and TLS handshake timeout (default 10s).
    pub timeout: Option<String>,
    /// Per-phase SMTP timeouts; each left out keeps its RFC 5321 default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<PhaseTimeoutsSpec>,
    pub max_connections: Option<usize>,
    pub max_messages_per_connection: Option<usize>,
    pub auth: Option<AuthSpec>,
    pub tls_verify: Option<bool>,
    /// Messages per second, per hour and per day; mail over them waits.
    pub rate_per_second: Option<f64>,
    pub rate_per_hour: Option<u64>,
    pub rate_per_day: Option<u64>,
    pub link_tracking_domain: Option<String>,
    pub open_tracking_domain: Option<String>,
    /// The return-path domain used for bounces (MFROM).
    pub mail_from_domain: Option<String>,
    /// Every message through this server gets this From (full header value).
    pub enforced_from: Option<String>,
    #[serde(default)]
    pub sender_info_as_mfrom: bool,
    #[serde(default)]
    pub sender_info_as_from: bool,
    /// Whether groups send through it. Left out: enabled for a server in
    /// config.toml (and for one stored before this switch existed),
    /// disabled for one added through the admin socket, so an untested
    /// relay gets no mail until an operator enables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The result of the last `server test` (set by the admin socket).
    #[serde(default)]
    pub last_test: Option<ServerTest>,
}

/// `timeouts = { greeting = "5m", mail = "5m", rcpt = "5m", data = "2m",
/// data_block = "3m", final_dot = "10m" }` on a delivery server: the waits
/// of an SMTP session after the connection is up (RFC 5321 4.5.3.2 names
/// and defaults; `ehlo` also bounds the STARTTLS and AUTH replies).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseTimeoutsSpec {
    pub greeting: Option<String>,
    pub ehlo: Option<String>,
    pub mail: Option<String>,
    pub rcpt: Option<String>,
    pub data: Option<String>,
    pub data_block: Option<String>,
    pub final_dot: Option<String>,
}

impl PhaseTimeoutsSpec {
    /// The session timeouts: `connection` for connect and TLS, each phase
    /// given here, the RFC 5321 default for the rest.
    fn resolve(&self, connection: Duration) -> Result<Timeouts, String> {
        let mut timeouts = Timeouts::with_connection_timeout(connection);
        let phases = [
            ("greeting", &self.greeting, &mut timeouts.greeting),
            ("ehlo", &self.ehlo, &mut timeouts.ehlo),
            ("mail", &self.mail, &mut timeouts.mail),
            ("rcpt", &self.rcpt, &mut timeouts.rcpt),
            ("data", &self.data, &mut timeouts.data),
            ("data_block", &self.data_block, &mut timeouts.data_block),
            ("final_dot", &self.final_dot, &mut timeouts.final_dot),
        ];
        for (key, text, slot) in phases {
            let Some(text) = text else { continue };
            let value = parse_duration(text).map_err(|e| format!("timeouts.{key}: {e}"))?;
            if value.is_zero() {
                return Err(format!("timeouts.{key}: must be longer than 0s"));
            }
            *slot = value;
        }
        timeouts.auth = timeouts.ehlo;
        Ok(timeouts)
    }
}

/// What `sendctl server test` found, kept on the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTest {
    pub ok: bool,
    /// When it ran (RFC 3339).
    pub time: String,
    /// The first step that failed, e.g. "AUTH" or "RCPT TO".
    pub failed_step: Option<String>,
    pub steps: Vec<ServerTestStep>,
}

/// One step of a server test with the server's reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTestStep {
    pub step: String,
    pub ok: bool,
    /// The server's reply, or what went wrong when there was none.
    pub reply: String,
    pub millis: u64,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    pub username: String,
    /// Plain in config.toml; sealed (`sealed:v1:...`) once stored.
    pub password: String,
}

impl std::fmt::Debug for AuthSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSpec")
            .field("username", &self.username)
            .field("password", &"(set)")
            .finish()
    }
}

/// A delivery server with its settings checked.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryServer {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub encryption: Encryption,
    /// The connection (TCP connect + TLS handshake) timeout.
    pub timeout: Duration,
    /// Every wait of a session, `timeout` included as connect and TLS.
    pub timeouts: Timeouts,
    pub max_connections: usize,
    pub max_messages_per_connection: usize,
    pub auth: Option<Credentials>,
    pub tls_verify: bool,
    pub rate_per_second: Option<f64>,
    pub rate_per_hour: Option<u64>,
    pub rate_per_day: Option<u64>,
    pub mail_from_domain: Option<String>,
    pub enforced_from: Option<String>,
    pub sender_info_as_mfrom: bool,
    pub sender_info_as_from: bool,
    /// Host (and port, if not the scheme's) of rewritten links, lowercase.
    pub link_tracking_domain: Option<String>,
    /// Host (and port) of the open pixel, lowercase.
    pub open_tracking_domain: Option<String>,
    /// A disabled server stays configured (and testable) but carries no mail.
    pub enabled: bool,
}

fn positive(key: &str, value: Option<usize>, default: usize) -> Result<usize, String> {
    match value.unwrap_or(default) {
        0 => Err(format!("{key}: must be at least 1")),
        n => Ok(n),
    }
}

impl DeliveryServerSpec {
    /// Checks the spec; `password` is the relay password in clear.
    pub fn validate(&self, password: Option<String>) -> Result<DeliveryServer, String> {
        valid_name("name", &self.name)?;
        if self.name == DIRECT {
            return Err(format!(
                "name: `{DIRECT}` is the built-in direct-to-MX route"
            ));
        }
        let host = relay_host(&self.host)?;
        if self.port == Some(0) {
            return Err(
                "port: must be 1 to 65535 (leave out for 25, or 465 with encryption = \"tls\")"
                    .into(),
            );
        }
        let encryption = match self.encryption.as_deref().unwrap_or("none") {
            "none" => Encryption::None,
            "starttls" => Encryption::StartTls,
            "starttls-opportunistic" => Encryption::StartTlsOpportunistic,
            "tls" => Encryption::Tls,
            other => {
                return Err(format!(
                    "encryption: `{other}` is not one of none, starttls, starttls-opportunistic, tls"
                ));
            }
        };
        let default_port = if encryption == Encryption::Tls {
            465
        } else {
            25
        };
        let timeout = match &self.timeout {
            Some(t) => parse_duration(t).map_err(|e| format!("timeout: {e}"))?,
            None => Duration::from_secs(10),
        };
        // A zero timeout ends every connection attempt at once: the server
        // could never be reached, and each try would count as a failure.
        if timeout.is_zero() {
            return Err("timeout: must be longer than 0s (leave out for 10s)".into());
        }
        if let Some(r) = self.rate_per_second
            && !(r > 0.0 && r.is_finite())
        {
            return Err("rate_per_second: must be a positive number".into());
        }
        if self.rate_per_hour == Some(0) || self.rate_per_day == Some(0) {
            return Err(
                "rate_per_hour / rate_per_day: leave out for no limit, or give at least 1".into(),
            );
        }
        Ok(DeliveryServer {
            name: self.name.clone(),
            host: host.to_owned(),
            port: self.port.unwrap_or(default_port),
            encryption,
            timeout,
            timeouts: self.timeouts.clone().unwrap_or_default().resolve(timeout)?,
            max_connections: positive("max_connections", self.max_connections, 10)?,
            max_messages_per_connection: positive(
                "max_messages_per_connection",
                self.max_messages_per_connection,
                1000,
            )?,
            auth: match (&self.auth, password) {
                (Some(a), Some(p)) => Some(Credentials {
                    username: a.username.clone(),
                    password: p,
                }),
                _ => None,
            },
            tls_verify: self.tls_verify.unwrap_or(true),
            rate_per_second: self.rate_per_second,
            rate_per_hour: self.rate_per_hour,
            rate_per_day: self.rate_per_day,
            mail_from_domain: self.mail_from_domain.clone(),
            enforced_from: self.enforced_from.clone(),
            sender_info_as_mfrom: self.sender_info_as_mfrom,
            sender_info_as_from: self.sender_info_as_from,
            link_tracking_domain: tracking_host(
                "link_tracking_domain",
                self.link_tracking_domain.as_deref(),
            )?,
            open_tracking_domain: tracking_host(
                "open_tracking_domain",
                self.open_tracking_domain.as_deref(),
            )?,
            enabled: self.enabled.unwrap_or(true),
        })
    }
}

/// A relay's host as connections use it: trimmed, and with no space or
/// control character inside. Such a value cannot be a host name or an
/// address, so no connection could reach it, and a CR/LF would be stored
/// and shown as is.
fn relay_host(host: &str) -> Result<&str, String> {
    let trimmed = host.trim();
    if trimmed.is_empty() {
        return Err("host: must not be empty".into());
    }
    if host.chars().any(char::is_control) || trimmed.chars().any(char::is_whitespace) {
        return Err(format!(
            "host: {host:?} has spaces or control characters: give a host name or IP address \
             (e.g. \"smtp.example.com\")"
        ));
    }
    Ok(trimmed)
}

/// A tracking domain as links carry it: a host name, optionally with a
/// port (`track.example.com`, `track.example.com:8080`). Empty is none.
fn tracking_host(key: &str, value: Option<&str>) -> Result<Option<String>, String> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let host = value.trim_end_matches('.').to_ascii_lowercase();
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host.as_str(), None),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if name_ok && port_ok {
        Ok(Some(host))
    } else {
        Err(format!(
            "{key}: `{value}` is not a host name (expected e.g. \"track.example.com\", no scheme or path)"
        ))
    }
}

/// Who may send what, through which servers, and how much.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserGroup {
    pub name: String,
    /// Per channel, delivery servers in priority order (failover).
    #[serde(default)]
    pub marketing: Vec<String>,
    #[serde(default)]
    pub transactional: Vec<String>,
    #[serde(default)]
    pub autoresponder: Vec<String>,
    /// Recipients per user; 0 = unlimited.
    #[serde(default)]
    pub daily_limit: u64,
    #[serde(default)]
    pub monthly_limit: u64,
    #[serde(default)]
    pub lifetime_limit: u64,
    #[serde(default)]
    pub sender_domain_management: bool,
    /// Sender domains each user may own; 0 = unlimited (Octeth's meaning).
    #[serde(default = "default_domains_limit")]
    pub sender_domains_limit: u32,
    /// A shared domain users may send from before verifying their own.
    pub default_sender_domain: Option<String>,
    /// Recipients per user from the default domain over a rolling 30 days.
    #[serde(default = "default_domain_limit")]
    pub default_domain_limit: u64,
    pub dns_template: Option<String>,
    #[serde(default)]
    pub domain_settings: crate::domains::DomainSettings,
    #[serde(default)]
    pub text_header: String,
    #[serde(default)]
    pub text_footer: String,
    #[serde(default)]
    pub html_header: String,
    #[serde(default)]
    pub html_footer: String,
    pub x_mailer: Option<String>,
    /// Rewrite the links of HTML mail to the server's link tracking domain
    /// (when it has one) to count clicks.
    #[serde(default = "enabled")]
    pub link_tracking: bool,
    /// Add an open pixel on the server's open tracking domain (when it
    /// has one) to count opens.
    #[serde(default = "enabled")]
    pub open_tracking: bool,
}

fn enabled() -> bool {
    true
}

/// Sender domains a user may own when its group does not say.
pub const DEFAULT_SENDER_DOMAINS_LIMIT: u32 = 10;

fn default_domains_limit() -> u32 {
    DEFAULT_SENDER_DOMAINS_LIMIT
}

fn default_domain_limit() -> u64 {
    200
}

impl UserGroup {
    /// The group of a configuration that declares none (single-tenant,
    /// as the quick start): all servers, no limits.
    pub fn single_tenant(servers: &[String]) -> UserGroup {
        UserGroup {
            name: "default".into(),
            marketing: servers.to_vec(),
            transactional: servers.to_vec(),
            autoresponder: servers.to_vec(),
            daily_limit: 0,
            monthly_limit: 0,
            lifetime_limit: 0,
            sender_domain_management: false,
            sender_domains_limit: default_domains_limit(),
            default_sender_domain: None,
            default_domain_limit: default_domain_limit(),
            dns_template: None,
            domain_settings: Default::default(),
            text_header: String::new(),
            text_footer: String::new(),
            html_header: String::new(),
            html_footer: String::new(),
            x_mailer: None,
            link_tracking: true,
            open_tracking: true,
        }
    }

    /// This group with each channel's list cut to the servers `keep`
    /// takes (the enabled ones): what routing uses.
    pub fn with_servers_only(&self, keep: impl Fn(&str) -> bool) -> UserGroup {
        let cut = |list: &[String]| list.iter().filter(|s| keep(s)).cloned().collect();
        UserGroup {
            marketing: cut(&self.marketing),
            transactional: cut(&self.transactional),
            autoresponder: cut(&self.autoresponder),
            ..self.clone()
        }
    }

    pub fn servers_for(&self, channel: &str) -> &[String] {
        match channel {
            "transactional" => &self.transactional,
            "autoresponder" => &self.autoresponder,
            _ => &self.marketing,
        }
    }

    /// Checks names; `server_exists` says whether a server name is known.
    pub fn validate(&self, server_exists: impl Fn(&str) -> bool) -> Result<(), String> {
        valid_name("name", &self.name)?;
        for channel in CHANNELS {
            let list = self.servers_for(channel);
            if list.is_empty() {
                return Err(format!("{channel}: name at least one delivery server"));
            }
            if let Some(unknown) = list.iter().find(|s| !server_exists(s)) {
                return Err(format!(
                    "{channel}: no delivery server is called `{unknown}`"
                ));
            }
        }
        Ok(())
    }

    pub fn decoration(&self) -> crate::transform::Decoration {
        crate::transform::Decoration {
            text_header: self.text_header.clone(),
            text_footer: self.text_footer.clone(),
            html_header: self.html_header.clone(),
            html_footer: self.html_footer.clone(),
            x_mailer: self.x_mailer.clone(),
            from: None,
        }
    }
}

/// A tenant: who injects, in which group, with which credentials.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    #[serde(default = "default_group")]
    pub group: String,
    /// Given in clear in config.toml; only its hash is stored.
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    pub password_hash: Option<String>,
    pub sender_name: Option<String>,
    pub sender_email: Option<String>,
    /// Keys of the HTTP injection API (hashes only). Managed with
    /// `sendctl user api-key`; `user put` keeps the stored ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<super::api_keys::ApiKey>,
}

fn default_group() -> String {
    "default".into()
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("group", &self.group)
            .field("password", &self.password_hash.as_ref().map(|_| "(set)"))
            .finish()
    }
}

impl User {
    pub fn validate(&self) -> Result<(), String> {
        valid_name("name", &self.name)?;
        if let Some(email) = &self.sender_email
            && !email.contains('@')
        {
            return Err(format!("sender_email: `{email}` is not an address"));
        }
        Ok(())
    }

    /// `"Name <address>"` (or the bare address) from the sender info.
    pub fn sender_from(&self) -> Option<String> {
        let email = self.sender_email.as_ref()?;
        Some(match &self.sender_name {
            Some(name) if !name.is_empty() => format!("{name} <{email}>"),
            _ => email.clone(),
        })
    }
}

fn valid_name(key: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{key}: `{name}` must be 1-128 characters of letters, digits, - _ . @"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(extra: &str) -> Result<DeliveryServer, String> {
        let text = format!("name = \"relay\"\nhost = \"127.0.0.1\"\n{extra}");
        let spec: DeliveryServerSpec = toml::from_str(&text).map_err(|e| e.to_string())?;
        spec.validate(None)
    }

    #[test]
    fn timeout_is_the_connection_and_phases_keep_rfc_5321_defaults() {
        let checked = server("timeout = \"7s\"\n").unwrap();
        let t = &checked.timeouts;
        assert_eq!(
            (t.connect, t.tls),
            (Duration::from_secs(7), Duration::from_secs(7))
        );
        assert_eq!(t.greeting, Duration::from_secs(300));
        assert_eq!(t.data, Duration::from_secs(120));
        assert_eq!(t.data_block, Duration::from_secs(180));
        assert_eq!(t.final_dot, Duration::from_secs(600));
    }

    #[test]
    fn each_phase_can_be_set_and_mistakes_name_the_key() {
        let checked = server("timeouts = { final_dot = \"20m\", ehlo = \"1m\" }\n").unwrap();
        assert_eq!(checked.timeouts.final_dot, Duration::from_secs(1200));
        assert_eq!(checked.timeouts.auth, Duration::from_secs(60));
        assert_eq!(checked.timeouts.mail, Duration::from_secs(300));
        let zero = server("timeouts = { rcpt = \"0s\" }\n").unwrap_err();
        assert!(zero.contains("timeouts.rcpt"), "{zero}");
        let unknown = server("timeouts = { dot = \"1m\" }\n").unwrap_err();
        assert!(unknown.contains("dot"), "{unknown}");
    }

    #[test]
    fn unusable_host_port_and_timeout_are_refused_naming_the_field() {
        assert_eq!(server("").unwrap().port, 25);
        let spaced = "name = \"relay\"\nhost = \" smtp.example.com \"\n";
        let spec: DeliveryServerSpec = toml::from_str(spaced).unwrap();
        assert_eq!(spec.validate(None).unwrap().host, "smtp.example.com");
        for (extra, field) in [
            ("port = 0\n", "port:"),
            ("timeout = \"0s\"\n", "timeout:"),
            ("timeout = \"0ms\"\n", "timeout:"),
        ] {
            let err = server(extra).unwrap_err();
            assert!(err.starts_with(field), "{extra}: {err}");
        }
        for host in [
            "smtp.example.com\r\nX-Injected: 1",
            "smtp.example.com\n",
            "smtp\u{0}.example.com",
            "smtp\t.example.com",
            "smtp example.com",
            "smtp.example.com\u{a0}x",
        ] {
            let spec = DeliveryServerSpec {
                host: host.into(),
                ..toml::from_str(spaced).unwrap()
            };
            let err = spec.validate(None).unwrap_err();
            assert!(err.starts_with("host:"), "{host:?}: {err}");
        }
    }

    #[test]
    fn tracking_domains_are_host_names() {
        let checked =
            server("link_tracking_domain = \"Track.Example.com.\"\nopen_tracking_domain = \"o.example.com:8080\"\n")
                .unwrap();
        assert_eq!(
            checked.link_tracking_domain.as_deref(),
            Some("track.example.com")
        );
        assert_eq!(
            checked.open_tracking_domain.as_deref(),
            Some("o.example.com:8080")
        );
        assert_eq!(
            server("link_tracking_domain = \"\"\n")
                .unwrap()
                .link_tracking_domain,
            None
        );
        for bad in [
            "https://t.example.com",
            "t.example.com/x",
            "t..example",
            "t.example.com:0",
            "a b",
        ] {
            let err = server(&format!("link_tracking_domain = \"{bad}\"\n")).unwrap_err();
            assert!(err.contains("link_tracking_domain"), "{bad}: {err}");
        }
    }
}
