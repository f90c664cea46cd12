//! The sections of `config.toml` as the daemon reads them: every value
//! checked and every default filled in (`Config::parse` builds them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::IpNetwork;

#[derive(Debug, Clone)]
pub struct SecretsSection {
    /// The master key (created on first start); default `secret.key` in
    /// the configuration file's folder (older versions kept it in the
    /// spool directory: see `secrets::choose_key_file`).
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
    /// How long a command line, or a write of replies, may take (300 s).
    pub command_timeout: Duration,
    /// How long the whole DATA section may take (600 s).
    pub data_timeout: Duration,
    /// Connections at once from one address, IPv6 by /64 (default 10).
    pub max_connections_per_ip: usize,
    /// NOOP/RSET/VRFY/HELP/EHLO/HELO per session outside a finished
    /// transaction before 421 (default 100).
    pub max_idle_commands: u32,
    /// DATA bytes held in memory by all sessions together (default 64 MiB).
    pub max_data_in_flight: u64,
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
    /// Queued messages from which new bodies go to segment files instead
    /// of the database (`SpoolConfig::segment_bodies_from`).
    pub segment_bodies_from: u64,
    /// How long a commit waits at most for the inserts of the other
    /// connected SMTP clients (`SpoolConfig::commit_delay`).
    pub commit_delay: Duration,
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
    /// Connections at once from one address outside `relay_networks`,
    /// IPv6 by /64 (default 50, Postfix's per-client limit).
    pub max_connections_per_ip: usize,
    /// NOOP/RSET/VRFY/HELP/EHLO/HELO per session outside a finished
    /// transaction before 421 (default 100, Postfix's junk command limit).
    pub max_idle_commands: u32,
    /// DATA bytes held in memory by all sessions together, from the first
    /// byte to the reply (default 512 MiB); read at start only.
    pub max_data_in_flight: u64,
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

impl EventsSection {
    /// What the event log needs of this section. It is built here, not in
    /// `events`, so that `events` does not depend on `config`.
    pub fn log_settings(&self) -> crate::events::EventLogSettings {
        crate::events::EventLogSettings {
            path: self.path.clone(),
            rotation: crate::events::RotationPolicy {
                max_file_bytes: self.max_file_bytes,
                rotate_daily: self.rotate_daily,
                keep_files: self.keep_files,
            },
            queue_size: self.queue_size,
        }
    }
}
