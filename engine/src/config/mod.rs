//! The daemon's boot configuration, read from `config.toml`.
//!
//! Parsing is strict (unknown keys are errors, so a typo never silently
//! falls back to a default) and every error names the key and says what a
//! valid value looks like. `Config::load` is what `--check-config` runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod http_in;
mod runtime;
mod sections;
mod tracking;
mod values;

pub use crate::values::{parse_duration, parse_size};
pub use http_in::{HttpInSettings, RawHttpIn};
pub use runtime::{RuntimeSection, available_cpus};
pub use sections::*;
pub use tracking::TrackingSection;
pub use values::IpNetwork;
use values::{duration_or, keyed, parse_mode, parse_socket_addr, positive};

use crate::domains::DnsTemplate;
use crate::tenancy::{DIRECT, DeliveryServerSpec, Seeds, User as TenancyUser, UserGroup};

/// Jobs (with their bodies) waiting in memory per route. Measured with a
/// 100,000-message backlog draining: 10,000 peaked at 332 MiB of RSS and
/// drained 10,960 msgs/s, 1,000 at 90 MiB and 11,386 msgs/s (BENCHMARKS.md).
const DEFAULT_READY_QUEUE_SIZE: usize = 1_000;

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
    /// X-Mailer of mail whose user group sets none (Octeth's "leave empty
    /// to use the system default"); empty: no X-Mailer is added.
    pub x_mailer: String,
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
    /// `[runtime]`: the async runtime's threads.
    pub runtime: RuntimeSection,
    pub bounce_in: BounceInSection,
    pub suppression: SuppressionSection,
    /// `[cluster]`: none, a standalone node (see `cluster`).
    pub cluster: Option<crate::cluster::ClusterSettings>,
    /// `[[amqp_in]]`: RabbitMQ queues this node consumes (see `amqp_in`).
    pub amqp_in: Vec<crate::amqp::AmqpInSettings>,
    /// `[[amqp_out]]`: exchanges events are published to (see `amqp_out`).
    pub amqp_out: Vec<crate::amqp::AmqpOutSettings>,
    /// `[tracking]`: none, no link rewriting and no listener.
    pub tracking: Option<TrackingSection>,
    /// `[http_in]`: the HTTP injection API (see `http_in`).
    pub http_in: HttpInSettings,
    /// Objects declared in the file; see `tenancy`.
    pub seeds: Seeds,
}

/// The master key's file name when `[secrets] key_file` is not set: in
/// the configuration's folder.
pub const DEFAULT_KEY_FILE: &str = "secret.key";

/// The X-Mailer when neither the group nor the file sets one.
pub const DEFAULT_X_MAILER: &str = "sendengine";

// ---- the file format (serde) -------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    hostname: Option<String>,
    x_mailer: Option<String>,
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
    runtime: runtime::RawRuntime,
    #[serde(default)]
    bounce_in: RawBounceIn,
    #[serde(default)]
    suppression: RawSuppression,
    cluster: Option<crate::cluster::RawCluster>,
    #[serde(default)]
    amqp_in: Vec<crate::amqp::RawAmqpIn>,
    #[serde(default)]
    amqp_out: Vec<crate::amqp::RawAmqpOut>,
    tracking: Option<tracking::RawTracking>,
    #[serde(default)]
    http_in: RawHttpIn,
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
    segment_bodies_from: Option<u64>,
    commit_delay: Option<String>,
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
    max_connections_per_ip: Option<usize>,
    max_idle_commands: Option<u32>,
    max_data_in_flight: Option<String>,
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
    command_timeout: Option<String>,
    data_timeout: Option<String>,
    max_connections_per_ip: Option<usize>,
    max_idle_commands: Option<u32>,
    max_data_in_flight: Option<String>,
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
        let mut config = Config::parse(&text).map_err(|e| match e {
            ParseFailure::Syntax(message) => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            ParseFailure::Invalid(message) => ConfigError::Invalid {
                path: path.to_owned(),
                message,
            },
        })?;
        if !config.secrets.key_file_set
            && let Some(dir) = path.parent()
        {
            config.secrets.key_file = dir.join(DEFAULT_KEY_FILE);
        }
        Ok(config)
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
                None => sendengine_queue::DEFAULT_CACHE_BYTES as u64,
            },
            sync: self.spool.sync.unwrap_or(true),
            min_free_bytes: match &self.spool.min_free_space {
                Some(s) => keyed("spool.min_free_space", parse_size(s))?,
                None => smtp_in.max_message_size.saturating_mul(2),
            },
            segment_bodies_from: self
                .spool
                .segment_bodies_from
                .unwrap_or(sendengine_queue::DEFAULT_SEGMENT_BODIES_FROM),
            commit_delay: commit_delay(self.spool.commit_delay.as_ref())?,
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
        // Beside the configuration (`load` puts it in the file's folder),
        // not in the spool: a spool backup must not carry the key that
        // opens the secrets stored in it.
        let key_file = self
            .secrets
            .key_file
            .unwrap_or_else(|| PathBuf::from(DEFAULT_KEY_FILE));
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
            x_mailer: self.x_mailer.unwrap_or_else(|| DEFAULT_X_MAILER.into()),
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
            runtime: self.runtime.check()?,
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
            cluster: self
                .cluster
                .map(crate::cluster::RawCluster::check)
                .transpose()?,
            amqp_in: crate::amqp::validate_in(self.amqp_in)?,
            amqp_out: crate::amqp::validate_out(self.amqp_out)?,
            tracking: self
                .tracking
                .map(tracking::RawTracking::validate)
                .transpose()?,
            http_in: self.http_in.check()?,
            seeds,
        })
    }
}

/// `max_idle_commands`: Postfix's `smtpd_junk_command_limit` (100) by default.
fn idle_commands(section: &str, value: Option<u32>) -> Result<u32, String> {
    match value.unwrap_or(100) {
        0 => Err(format!("{section}.max_idle_commands: must be at least 1")),
        n => Ok(n),
    }
}

/// The most `spool.commit_delay` may be: every 250 may wait that long.
const MAX_COMMIT_DELAY: Duration = Duration::from_millis(50);

/// `spool.commit_delay`: `0ms` turns the wait off.
fn commit_delay(value: Option<&String>) -> Result<Duration, String> {
    let delay = duration_or(
        "spool.commit_delay",
        value,
        sendengine_queue::DEFAULT_COMMIT_DELAY,
    )?;
    if delay > MAX_COMMIT_DELAY {
        return Err(format!(
            "spool.commit_delay: at most {}ms: every 250 may wait that long for the other clients' messages",
            MAX_COMMIT_DELAY.as_millis()
        ));
    }
    Ok(delay)
}

/// `max_data_in_flight`: room for at least one message of the largest size.
fn data_in_flight(
    section: &str,
    value: Option<&String>,
    default: u64,
    max_message_size: u64,
) -> Result<u64, String> {
    let key = format!("{section}.max_data_in_flight");
    let budget = match value {
        Some(v) => keyed(&key, parse_size(v))?,
        None => default.max(max_message_size),
    };
    if budget < max_message_size {
        return Err(format!(
            "{key}: must be at least {section}.max_message_size ({max_message_size} bytes), or no message of that size could ever be taken"
        ));
    }
    Ok(budget)
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
        let max_message_size = match &self.max_message_size {
            Some(s) => keyed("bounce_in.max_message_size", parse_size(s))?,
            None => 10 << 20,
        };
        Ok(BounceInSection {
            listen,
            domains,
            max_message_size,
            max_connections: positive("bounce_in.max_connections", self.max_connections, 100)?,
            retain: Duration::from_secs(retain_days * 86_400),
            command_timeout: duration_or(
                "bounce_in.command_timeout",
                self.command_timeout.as_ref(),
                Duration::from_secs(300),
            )?,
            data_timeout: duration_or(
                "bounce_in.data_timeout",
                self.data_timeout.as_ref(),
                Duration::from_secs(600),
            )?,
            // Bounces come from many MTAs; one address needs few at once.
            max_connections_per_ip: positive(
                "bounce_in.max_connections_per_ip",
                self.max_connections_per_ip,
                10,
            )?,
            max_idle_commands: idle_commands("bounce_in", self.max_idle_commands)?,
            max_data_in_flight: data_in_flight(
                "bounce_in",
                self.max_data_in_flight.as_ref(),
                64 << 20,
                max_message_size,
            )?,
        })
    }
}

impl RawConfig {
    /// With user groups, mail from `relay_networks` without AUTH needs a
    /// tenant, or it would escape every group's servers, limits and
    /// sender-domain checks.
    fn check_default_user(&self) -> Result<(), String> {
        let tenantless = !self.user_group.is_empty()
            && !self.smtp_in.relay_networks.is_empty()
            && self.smtp_in.default_user.is_none();
        if tenantless {
            return Err(
                "smtp_in.default_user: user groups are declared and relay_networks lets mail in \
                 without AUTH, so that mail needs a tenant: set default_user to the [[user]] it \
                 is sent as (or empty relay_networks so every client logs in)"
                    .into(),
            );
        }
        Ok(())
    }

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
        let groups: std::collections::BTreeMap<String, ()> = self
            .user_group
            .iter()
            .map(|g| (g.name.clone(), ()))
            .collect();
        for (i, user) in self.user.iter().enumerate() {
            user.validate().map_err(|e| format!("user[{i}].{e}"))?;
            if let Some(e) = crate::tenancy::missing_group(user, &groups) {
                return Err(format!("user[{i}].{e}"));
            }
        }
        self.check_default_user()?;
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
            // Postfix's smtpd_client_connection_count_limit; relay networks
            // are exempt, as Postfix exempts $mynetworks.
            max_connections_per_ip: positive(
                "smtp_in.max_connections_per_ip",
                self.max_connections_per_ip,
                50,
            )?,
            max_idle_commands: idle_commands("smtp_in", self.max_idle_commands)?,
            max_data_in_flight: data_in_flight(
                "smtp_in",
                self.max_data_in_flight.as_ref(),
                512 << 20,
                max_message_size,
            )?,
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
            ready_queue_size: positive(
                "delivery.ready_queue_size",
                self.ready_queue_size,
                DEFAULT_READY_QUEUE_SIZE,
            )?,
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

    const EXAMPLE: &str = include_str!("../../../config.toml");

    #[test]
    fn example_config_is_valid() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.seeds.servers[0].name, "local-sink");
        assert_eq!(c.smtp_in.max_message_size, 25 << 20);
        assert_eq!(c.seeds.servers[0].timeout.as_deref(), Some("10s"));
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
    fn commit_delay_has_a_default_a_unit_and_a_ceiling() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.spool.commit_delay, sendengine_queue::DEFAULT_COMMIT_DELAY);
        let with = |value: &str| {
            let text = EXAMPLE.replace(
                "dir = \"var/spool\"",
                &format!("dir = \"var/spool\"\ncommit_delay = \"{value}\""),
            );
            Config::parse(&text).map(|c| c.spool.commit_delay)
        };
        assert_eq!(with("0ms").unwrap(), Duration::ZERO);
        assert_eq!(with("50ms").unwrap(), Duration::from_millis(50));
        for bad in ["51ms", "2"] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("spool.commit_delay"), "{bad}: {e}");
        }
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
