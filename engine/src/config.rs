//! The daemon's boot configuration, read from `config.toml`.
//!
//! Parsing is strict (unknown keys are errors, so a typo never silently
//! falls back to a default) and every error names the key and says what a
//! valid value looks like. `Config::load` is what `--check-config` runs.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::domains::DnsTemplate;
use crate::tenancy::{DIRECT, DeliveryServerSpec, Seeds, User as TenancyUser, UserGroup};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Name used in the SMTP greeting, in EHLO to relays and in Received headers.
    pub hostname: String,
    pub spool: SpoolSection,
    pub smtp_in: SmtpInSection,
    pub delivery: DeliverySection,
    pub admin: AdminSection,
    pub metrics: MetricsSection,
    pub events: EventsSection,
    pub secrets: SecretsSection,
    pub dns: DnsSection,
    pub direct: DirectSection,
    pub log: LogSection,
    pub bounce_in: BounceInSection,
    pub suppression: SuppressionSection,
    /// Objects declared in the file; see `tenancy`.
    pub seeds: Seeds,
}

#[derive(Debug, Clone)]
pub struct SecretsSection {
    /// The master key (created on first start); default `<spool dir>/secret.key`.
    pub key_file: PathBuf,
    /// `key_file` was set in the file; if not, a systemd credential
    /// (`$CREDENTIALS_DIRECTORY/secret.key`) takes precedence over the default.
    pub key_file_set: bool,
}

/// The daemon's own log on stderr (see `logging`).
#[derive(Debug, Clone)]
pub struct LogSection {
    /// `RUST_LOG`-style filter; `RUST_LOG` in the environment wins over it.
    pub filter: Option<String>,
}

/// The listener for asynchronous bounces and complaints (see `bounce_in`).
#[derive(Debug, Clone)]
pub struct BounceInSection {
    /// Empty: no listener (the delivered index is still kept).
    pub listen: Vec<SocketAddr>,
    /// Return-path domains accepted in RCPT (lowercase). Empty: any domain;
    /// the HMAC of the VERP tag is what keeps strangers out either way.
    pub domains: Vec<String>,
    pub max_message_size: u64,
    pub max_connections: usize,
    /// How long the delivered index keeps a finished recipient, counted
    /// from the message's reception: bounces after that are not tied.
    pub retain: Duration,
}

/// What happens to addresses that bounce hard or complain.
#[derive(Debug, Clone)]
pub struct SuppressionSection {
    /// Hard bounces (synchronous and asynchronous) and complaints put the
    /// address on its tenant's suppression list.
    pub auto_suppress: bool,
}

/// Direct delivery to recipients' MX hosts (the built-in `direct` route).
#[derive(Debug, Clone)]
pub struct DirectSection {
    /// 25 in production; tests point it at a sink.
    pub port: u16,
    /// Connections at most per destination domain, so no provider is flooded.
    pub max_connections_per_site: usize,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct DnsSection {
    /// Empty: the system resolver. Tests point this at a server they run.
    pub nameservers: Vec<SocketAddr>,
    /// How often sender domains that are not enabled are checked again.
    pub verify_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct SpoolSection {
    pub dir: PathBuf,
    pub cache_bytes: u64,
    /// `false` skips fdatasync: for benchmarks only, never for production.
    pub sync: bool,
    /// Free space injection leaves alone so delivery records always fit
    /// (451 4.3.0 below it); default twice `smtp_in.max_message_size`.
    pub min_free_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct SmtpInSection {
    pub listen: Vec<SocketAddr>,
    pub relay_networks: Vec<IpNetwork>,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_line_length: usize,
    pub max_errors: u32,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The tenant of mail from `relay_networks` without AUTH.
    pub default_user: Option<String>,
    /// Failed AUTH attempts per client address in 10 minutes before AUTH
    /// from it is refused (421) for the rest of those 10 minutes.
    pub auth_failures_per_ip: u32,
}

#[derive(Debug, Clone)]
pub struct DeliverySection {
    pub max_age: Duration,
    /// Wait before attempt n+1 is `retry_schedule[n-1]`; the last entry repeats.
    pub retry_schedule: Vec<Duration>,
    pub idle_timeout: Duration,
    /// Recipients held in memory per route, ready to go; the rest wait on disk.
    pub ready_queue_size: usize,
    /// How long a delivery server that failed at connection level is skipped
    /// in favour of the next one of the group before it is tried again.
    pub failover_backoff: Duration,
    /// At SIGTERM, how long sessions and deliveries in flight get to
    /// finish; what is still in flight then is retried after the restart.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminSection {
    pub socket: Option<PathBuf>,
    /// Permission bits of the socket file (default 0o660).
    pub mode: u32,
    /// User and group of the socket file: names or numeric ids.
    pub owner: Option<String>,
    pub group: Option<String>,
}

#[derive(Debug, Clone)]
pub struct MetricsSection {
    pub listen: Option<SocketAddr>,
    /// Adds a `tenant` label to the received, delivered and bounced counts.
    pub tenant_labels: bool,
}

#[derive(Debug, Clone)]
pub struct EventsSection {
    pub path: Option<PathBuf>,
    /// The file is rotated before it grows beyond this (default 256 MiB).
    pub max_file_bytes: u64,
    /// Rotate at the first event after midnight UTC (default on).
    pub rotate_daily: bool,
    /// Rotated files kept, `events.jsonl.1` (newest) to `.keep_files`.
    pub keep_files: usize,
    /// Events waiting for the writer at most; beyond, dropped and counted.
    pub queue_size: usize,
    /// `[[webhook]]` entries.
    pub webhooks: Vec<crate::events::webhook::WebhookSettings>,
}

/// An IP network in CIDR notation, e.g. `127.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    addr: IpAddr,
    prefix: u8,
}

impl IpNetwork {
    pub fn parse(text: &str) -> Result<IpNetwork, String> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an IP network (expected e.g. 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("`{text}`: the prefix length must be 0 to {max}")),
            },
        };
        Ok(IpNetwork { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_match(
                u32::from(net) as u128,
                u32::from(ip) as u128,
                self.prefix,
                32,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_match(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn prefix_match(net: u128, ip: u128, prefix: u8, bits: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix;
    (net >> shift) == (ip >> shift)
}

/// Parses `25MB`, `64KiB`, `100k`, `1G` or a plain number of bytes.
/// K, M and G are powers of 1024 whatever the spelling, as in most MTAs.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (expected e.g. 25MB, 512KB or 1048576)"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("`{text}`: unknown size unit (use B, KB, MB or GB)")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses `250ms`, `10s`, `5m`, `1h`, `5d` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (expected e.g. 30s, 5m, 1h or 5d)"))?;
    let millis: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "`{text}`: unknown duration unit (use ms, s, m, h or d)"
            ));
        }
    };
    n.checked_mul(millis)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too long"))
}

// ---- the file format (serde) -------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    hostname: Option<String>,
    spool: RawSpool,
    smtp_in: RawSmtpIn,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    events: RawEvents,
    #[serde(default)]
    webhook: Vec<crate::events::webhook::RawWebhook>,
    #[serde(default)]
    secrets: RawSecrets,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    direct: RawDirect,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    bounce_in: RawBounceIn,
    #[serde(default)]
    suppression: RawSuppression,
    #[serde(default)]
    delivery_server: Vec<DeliveryServerSpec>,
    #[serde(default)]
    user_group: Vec<UserGroup>,
    #[serde(default)]
    user: Vec<TenancyUser>,
    #[serde(default)]
    dns_template: Vec<DnsTemplate>,
    #[serde(default)]
    sender_domain: Vec<RawDomainSeed>,
    #[serde(default)]
    dkim_key: Vec<crate::tenancy::dkim::DkimKeySeed>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpool {
    dir: PathBuf,
    cache_size: Option<String>,
    sync: Option<bool>,
    min_free_space: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtpIn {
    listen: Vec<String>,
    #[serde(default)]
    relay_networks: Vec<String>,
    max_message_size: Option<String>,
    max_recipients: Option<usize>,
    max_connections: Option<usize>,
    max_line_length: Option<usize>,
    max_errors: Option<u32>,
    command_timeout: Option<String>,
    data_timeout: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    default_user: Option<String>,
    auth_failures_per_ip: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    max_age: Option<String>,
    retry_schedule: Option<Vec<String>>,
    idle_timeout: Option<String>,
    ready_queue_size: Option<usize>,
    failover_backoff: Option<String>,
    shutdown_grace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    socket: Option<PathBuf>,
    mode: Option<String>,
    owner: Option<String>,
    group: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
    tenant_labels: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    path: Option<PathBuf>,
    max_file_size: Option<String>,
    rotate_daily: Option<bool>,
    keep_files: Option<usize>,
    queue_size: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    filter: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBounceIn {
    #[serde(default)]
    listen: Vec<String>,
    #[serde(default)]
    domains: Vec<String>,
    max_message_size: Option<String>,
    max_connections: Option<usize>,
    retain_days: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSuppression {
    auto_suppress: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    key_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(default)]
    nameservers: Vec<String>,
    verify_interval: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDirect {
    port: Option<u16>,
    max_connections_per_site: Option<usize>,
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomainSeed {
    domain: String,
    owner: String,
}

impl Config {
    /// Reads and validates a configuration file. Relative paths inside it
    /// are taken relative to the current directory, like the quick start's.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ParseFailure::Syntax(message) => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            ParseFailure::Invalid(message) => ConfigError::Invalid {
                path: path.to_owned(),
                message,
            },
        })
    }

    pub fn parse(text: &str) -> Result<Config, ParseFailure> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ParseFailure::Syntax(e.to_string()))?;
        raw.validate().map_err(ParseFailure::Invalid)
    }
}

#[derive(Debug)]
pub enum ParseFailure {
    Syntax(String),
    Invalid(String),
}

impl std::fmt::Display for ParseFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseFailure::Syntax(m) | ParseFailure::Invalid(m) => f.write_str(m),
        }
    }
}

/// Octal permission bits such as "0660".
fn parse_mode(text: &str) -> Result<u32, String> {
    match u32::from_str_radix(text.trim(), 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!(
            "`{text}` is not a file mode (expected octal, e.g. \"0660\")"
        )),
    }
}

fn keyed<T>(key: &str, r: Result<T, String>) -> Result<T, String> {
    r.map_err(|e| format!("{key}: {e}"))
}

fn duration_or(key: &str, value: Option<&String>, default: Duration) -> Result<Duration, String> {
    match value {
        Some(v) => keyed(key, parse_duration(v)),
        None => Ok(default),
    }
}

fn positive(key: &str, value: Option<usize>, default: usize) -> Result<usize, String> {
    match value.unwrap_or(default) {
        0 => Err(format!("{key}: must be at least 1")),
        n => Ok(n),
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, String> {
        let seeds = self.seeds()?;
        let hostname = match self.hostname {
            Some(h) if !h.trim().is_empty() => h.trim().to_owned(),
            Some(_) => return Err("hostname: must not be empty".into()),
            None => system_hostname(),
        };
        let smtp_in = self.smtp_in.validate()?;
        let spool = SpoolSection {
            dir: self.spool.dir,
            cache_bytes: match &self.spool.cache_size {
                Some(s) => keyed("spool.cache_size", parse_size(s))?,
                None => 64 << 20,
            },
            sync: self.spool.sync.unwrap_or(true),
            min_free_bytes: match &self.spool.min_free_space {
                Some(s) => keyed("spool.min_free_space", parse_size(s))?,
                None => smtp_in.max_message_size.saturating_mul(2),
            },
        };
        let delivery = self.delivery.validate()?;
        let metrics = MetricsSection {
            listen: match &self.metrics.listen {
                Some(a) => Some(keyed("metrics.listen", parse_socket_addr(a))?),
                None => None,
            },
            tenant_labels: self.metrics.tenant_labels.unwrap_or(false),
        };
        let key_file_set = self.secrets.key_file.is_some();
        let key_file = self
            .secrets
            .key_file
            .unwrap_or_else(|| spool.dir.join("secret.key"));
        if let Some(filter) = &self.log.filter {
            keyed("log.filter", crate::logging::Filter::parse(filter))?;
        }
        let nameservers = self
            .dns
            .nameservers
            .iter()
            .map(|a| keyed("dns.nameservers", parse_socket_addr(a)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            hostname,
            spool,
            smtp_in,
            delivery,
            admin: AdminSection {
                socket: self.admin.socket,
                mode: match &self.admin.mode {
                    Some(m) => keyed("admin.mode", parse_mode(m))?,
                    None => 0o660,
                },
                owner: self.admin.owner,
                group: self.admin.group,
            },
            metrics,
            events: EventsSection {
                path: self.events.path,
                max_file_bytes: match &self.events.max_file_size {
                    Some(s) => keyed("events.max_file_size", parse_size(s))?,
                    None => 256 << 20,
                },
                rotate_daily: self.events.rotate_daily.unwrap_or(true),
                keep_files: positive("events.keep_files", self.events.keep_files, 14)?,
                queue_size: crate::events::checked_queue_size(self.events.queue_size)?,
                webhooks: crate::events::webhook::validate_all(self.webhook)?,
            },
            secrets: SecretsSection {
                key_file,
                key_file_set,
            },
            log: LogSection {
                filter: self.log.filter,
            },
            dns: DnsSection {
                nameservers,
                verify_interval: duration_or(
                    "dns.verify_interval",
                    self.dns.verify_interval.as_ref(),
                    Duration::from_secs(600),
                )?,
            },
            direct: DirectSection {
                port: self.direct.port.unwrap_or(25),
                max_connections_per_site: positive(
                    "direct.max_connections_per_site",
                    self.direct.max_connections_per_site,
                    10,
                )?,
                timeout: duration_or(
                    "direct.timeout",
                    self.direct.timeout.as_ref(),
                    Duration::from_secs(30),
                )?,
            },
            bounce_in: self.bounce_in.validate()?,
            suppression: SuppressionSection {
                auto_suppress: self.suppression.auto_suppress.unwrap_or(true),
            },
            seeds,
        })
    }
}

impl RawBounceIn {
    fn validate(self) -> Result<BounceInSection, String> {
        let listen = self
            .listen
            .iter()
            .map(|a| keyed("bounce_in.listen", parse_socket_addr(a)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut domains = Vec::with_capacity(self.domains.len());
        for domain in &self.domains {
            let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
            if domain.is_empty() || domain.contains(['@', ' ']) {
                return Err(format!(
                    "bounce_in.domains: `{domain}` is not a domain (expected e.g. \"sl.example.com\")"
                ));
            }
            domains.push(domain);
        }
        let retain_days = self.retain_days.unwrap_or(30);
        if !(1..=3650).contains(&retain_days) {
            return Err("bounce_in.retain_days: must be 1 to 3650".into());
        }
        Ok(BounceInSection {
            listen,
            domains,
            max_message_size: match &self.max_message_size {
                Some(s) => keyed("bounce_in.max_message_size", parse_size(s))?,
                None => 10 << 20,
            },
            max_connections: positive("bounce_in.max_connections", self.max_connections, 100)?,
            retain: Duration::from_secs(retain_days * 86_400),
        })
    }
}

impl RawConfig {
    /// Checks the declared objects against each other, naming the culprit.
    fn seeds(&self) -> Result<Seeds, String> {
        let mut names: Vec<&str> = Vec::new();
        for (i, spec) in self.delivery_server.iter().enumerate() {
            let password = spec.auth.as_ref().map(|a| a.password.clone());
            spec.validate(password)
                .map_err(|e| format!("delivery_server[{i}].{e}"))?;
            if names.contains(&spec.name.as_str()) {
                return Err(format!(
                    "delivery_server[{i}].name: `{}` is used twice; names must be unique",
                    spec.name
                ));
            }
            names.push(&spec.name);
        }
        if names.is_empty() {
            return Err("no [[delivery_server]]: add at least one relay to deliver to".into());
        }
        for (i, group) in self.user_group.iter().enumerate() {
            group
                .validate(|s| s == DIRECT || names.contains(&s))
                .map_err(|e| format!("user_group[{i}] `{}`: {e}", group.name))?;
        }
        for (i, user) in self.user.iter().enumerate() {
            user.validate().map_err(|e| format!("user[{i}].{e}"))?;
            let group_known =
                user.group == "default" || self.user_group.iter().any(|g| g.name == user.group);
            if !group_known {
                return Err(format!(
                    "user[{i}].group: no user_group is called `{}`",
                    user.group
                ));
            }
        }
        Ok(Seeds {
            servers: self.delivery_server.clone(),
            groups: self.user_group.clone(),
            users: self.user.clone(),
            templates: self.dns_template.clone(),
            domains: self
                .sender_domain
                .iter()
                .map(|d| (d.domain.clone(), d.owner.clone()))
                .collect(),
            dkim_keys: self.dkim_key.clone(),
        })
    }
}

impl RawSmtpIn {
    fn validate(self) -> Result<SmtpInSection, String> {
        if self.listen.is_empty() {
            return Err(
                "smtp_in.listen: give at least one address, e.g. [\"127.0.0.1:2525\"]".into(),
            );
        }
        let listen = self
            .listen
            .iter()
            .map(|a| keyed("smtp_in.listen", parse_socket_addr(a)))
            .collect::<Result<Vec<_>, _>>()?;
        let relay_networks = self
            .relay_networks
            .iter()
            .map(|n| keyed("smtp_in.relay_networks", IpNetwork::parse(n)))
            .collect::<Result<Vec<_>, _>>()?;
        let max_message_size = match &self.max_message_size {
            Some(s) => keyed("smtp_in.max_message_size", parse_size(s))?,
            None => 25 << 20,
        };
        let max_line_length = self.max_line_length.unwrap_or(2048);
        if max_line_length < 512 {
            return Err("smtp_in.max_line_length: RFC 5321 requires at least 512".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("smtp_in: tls_cert and tls_key go together; set both or neither".into());
        }
        Ok(SmtpInSection {
            listen,
            relay_networks,
            max_message_size,
            max_recipients: positive("smtp_in.max_recipients", self.max_recipients, 1000)?,
            max_connections: positive("smtp_in.max_connections", self.max_connections, 1000)?,
            max_line_length,
            max_errors: self.max_errors.unwrap_or(20).max(1),
            command_timeout: duration_or(
                "smtp_in.command_timeout",
                self.command_timeout.as_ref(),
                Duration::from_secs(300),
            )?,
            data_timeout: duration_or(
                "smtp_in.data_timeout",
                self.data_timeout.as_ref(),
                Duration::from_secs(600),
            )?,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            default_user: self.default_user,
            auth_failures_per_ip: positive(
                "smtp_in.auth_failures_per_ip",
                self.auth_failures_per_ip,
                5,
            )?
            .try_into()
            .map_err(|_| "smtp_in.auth_failures_per_ip: at most 4294967295".to_owned())?,
        })
    }
}

impl RawDelivery {
    fn validate(self) -> Result<DeliverySection, String> {
        let retry_schedule = match &self.retry_schedule {
            Some(list) if list.is_empty() => {
                return Err("delivery.retry_schedule: give at least one interval".into());
            }
            Some(list) => list
                .iter()
                .map(|d| keyed("delivery.retry_schedule", parse_duration(d)))
                .collect::<Result<Vec<_>, _>>()?,
            None => [5, 10, 20, 40, 60]
                .iter()
                .map(|m| Duration::from_secs(m * 60))
                .collect(),
        };
        Ok(DeliverySection {
            max_age: duration_or(
                "delivery.max_age",
                self.max_age.as_ref(),
                Duration::from_secs(5 * 86_400),
            )?,
            retry_schedule,
            idle_timeout: duration_or(
                "delivery.idle_timeout",
                self.idle_timeout.as_ref(),
                Duration::from_secs(30),
            )?,
            ready_queue_size: positive("delivery.ready_queue_size", self.ready_queue_size, 10_000)?,
            failover_backoff: duration_or(
                "delivery.failover_backoff",
                self.failover_backoff.as_ref(),
                Duration::from_secs(30),
            )?,
            shutdown_grace: duration_or(
                "delivery.shutdown_grace",
                self.shutdown_grace.as_ref(),
                Duration::from_secs(15),
            )?,
        })
    }
}

fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("`{text}` is not an address:port (expected e.g. 127.0.0.1:2525)"))
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../config.toml");

    #[test]
    fn example_config_is_valid() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.seeds.servers[0].name, "local-sink");
        assert_eq!(c.smtp_in.max_message_size, 25 << 20);
        assert_eq!(c.seeds.servers[0].timeout.as_deref(), Some("10s"));
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("25MB").unwrap(), 25 << 20);
        assert_eq!(parse_size("512 kb").unwrap(), 512 << 10);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("10TB").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5d").unwrap(), Duration::from_secs(432_000));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("5 years").is_err());
    }

    #[test]
    fn networks() {
        let lo = IpNetwork::parse("127.0.0.0/8").unwrap();
        assert!(lo.contains("127.1.2.3".parse().unwrap()));
        assert!(lo.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!lo.contains("10.0.0.1".parse().unwrap()));
        let any = IpNetwork::parse("0.0.0.0/0").unwrap();
        assert!(any.contains("8.8.8.8".parse().unwrap()));
        let v6 = IpNetwork::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(IpNetwork::parse("10.0.0.0/33").is_err());
        assert!(IpNetwork::parse("example.com").is_err());
    }

    #[test]
    fn errors_name_the_key() {
        let bad = EXAMPLE.replace("encryption = \"none\"", "encryption = \"ssl\"");
        let e = Config::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("delivery_server[0].encryption"), "{e}");
        let typo = EXAMPLE.replace("[smtp_in]", "[smtp_in]\nmax_mesage_size = 1");
        let e = Config::parse(&typo).unwrap_err().to_string();
        assert!(e.contains("max_mesage_size"), "{e}");
    }

    #[test]
    fn bounce_in_and_suppression_sections() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert!(c.bounce_in.listen.is_empty(), "no listener unless set");
        assert_eq!(c.bounce_in.retain, Duration::from_secs(30 * 86_400));
        assert!(c.suppression.auto_suppress);
        let set = format!(
            "{EXAMPLE}\n[bounce_in]\nlisten = [\"127.0.0.1:2527\"]\ndomains = [\"SL.Example.com.\"]\nretain_days = 7\n[suppression]\nauto_suppress = false\n"
        );
        let c = Config::parse(&set).unwrap();
        assert_eq!(c.bounce_in.domains, ["sl.example.com"]);
        assert_eq!(c.bounce_in.retain, Duration::from_secs(7 * 86_400));
        assert!(!c.suppression.auto_suppress);
        for (bad, key) in [
            ("[bounce_in]\nretain_days = 0", "bounce_in.retain_days"),
            ("[bounce_in]\nlisten = [\"nowhere\"]", "bounce_in.listen"),
            ("[bounce_in]\ndomains = [\"a@b\"]", "bounce_in.domains"),
            ("[suppression]\nauto = true", "auto"),
        ] {
            let e = Config::parse(&format!("{EXAMPLE}\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }
}
