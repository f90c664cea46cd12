//! SIGHUP: what a new `config.toml` changes, and what of that applies live.
//!
//! `plan` compares the running configuration with the one just read and
//! sorts every changed key into "applied now" or "needs a restart"; the
//! daemon (`Daemon::reload`) then applies the first kind: the `[smtp_in]`
//! limits (new sessions get them), the TLS certificate (re-read even when
//! its path is unchanged, for renewals), the retry schedule and maximum
//! age, the shutdown grace, the spool's free-space reserve and the log
//! filter; and it reopens the event
//! log for logrotate. Listen addresses, the spool and anything built into
//! running components at start stay as they are until a restart. The
//! objects declared in the file (delivery servers, users, ...) are seeds
//! read at the first start; `sendctl` changes them while running.

use std::fmt::Debug;

use crate::config::Config;

/// The outcome of comparing two configurations, by key name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Changed keys the running daemon takes over.
    pub applied: Vec<&'static str>,
    /// Changed keys that only a restart puts into effect.
    pub needs_restart: Vec<&'static str>,
}

/// Reads one key of a configuration, rendered for comparison. The
/// sections derive `Debug` (the declared objects included) but not
/// `PartialEq`; their renderings are equal exactly when the values are.
type Read = fn(&Config) -> String;

fn show<T: Debug>(value: &T) -> String {
    format!("{value:?}")
}

/// Keys the running daemon takes over.
const LIVE: &[(&str, Read)] = &[
    ("smtp_in.relay_networks", |c| {
        show(&c.smtp_in.relay_networks)
    }),
    ("smtp_in.max_message_size", |c| {
        show(&c.smtp_in.max_message_size)
    }),
    ("smtp_in.max_recipients", |c| {
        show(&c.smtp_in.max_recipients)
    }),
    ("smtp_in.max_line_length", |c| {
        show(&c.smtp_in.max_line_length)
    }),
    ("smtp_in.max_errors", |c| show(&c.smtp_in.max_errors)),
    ("smtp_in.command_timeout", |c| {
        show(&c.smtp_in.command_timeout)
    }),
    ("smtp_in.data_timeout", |c| show(&c.smtp_in.data_timeout)),
    ("smtp_in.tls_cert", |c| show(&c.smtp_in.tls_cert)),
    ("smtp_in.tls_key", |c| show(&c.smtp_in.tls_key)),
    ("smtp_in.auth_failures_per_ip", |c| {
        show(&c.smtp_in.auth_failures_per_ip)
    }),
    ("delivery.retry_schedule", |c| {
        show(&c.delivery.retry_schedule)
    }),
    ("delivery.max_age", |c| show(&c.delivery.max_age)),
    ("delivery.shutdown_grace", |c| {
        show(&c.delivery.shutdown_grace)
    }),
    ("log.filter", |c| show(&c.log.filter)),
    ("spool.min_free_space", |c| show(&c.spool.min_free_bytes)),
];

/// Keys built into running components at start.
const RESTART: &[(&str, Read)] = &[
    ("hostname", |c| show(&c.hostname)),
    ("x_mailer", |c| show(&c.x_mailer)),
    ("spool.dir", |c| show(&c.spool.dir)),
    ("spool.cache_size", |c| show(&c.spool.cache_bytes)),
    ("spool.sync", |c| show(&c.spool.sync)),
    ("smtp_in.listen", |c| show(&c.smtp_in.listen)),
    ("smtp_in.max_connections", |c| {
        show(&c.smtp_in.max_connections)
    }),
    ("smtp_in.default_user", |c| show(&c.smtp_in.default_user)),
    ("delivery.idle_timeout", |c| show(&c.delivery.idle_timeout)),
    ("delivery.ready_queue_size", |c| {
        show(&c.delivery.ready_queue_size)
    }),
    ("delivery.failover_backoff", |c| {
        show(&c.delivery.failover_backoff)
    }),
    ("admin", |c| show(&c.admin)),
    ("metrics", |c| show(&c.metrics)),
    ("events.path", |c| show(&c.events.path)),
    ("secrets.key_file", |c| show(&c.secrets.key_file)),
    ("dns", |c| show(&c.dns)),
    ("direct", |c| show(&c.direct)),
    ("tracking", |c| show(&c.tracking)),
    ("http_in", |c| show(&c.http_in)),
    ("runtime.worker_threads", |c| {
        show(&c.runtime.worker_threads)
    }),
    (
        "declared objects (delivery_server, user_group, user, ...: use sendctl)",
        |c| show(&c.seeds),
    ),
];

/// Sorts the keys that differ between `old` and `new`.
pub fn plan(old: &Config, new: &Config) -> ReloadPlan {
    let changed = |keys: &[(&'static str, Read)]| -> Vec<&'static str> {
        keys.iter()
            .filter(|(_, read)| read(old) != read(new))
            .map(|(name, _)| *name)
            .collect()
    };
    let mut needs_restart = changed(RESTART);
    // A section added later and not listed here is at least reported.
    if unlisted_change(old, new) {
        needs_restart.push("other settings");
    }
    ReloadPlan {
        applied: changed(LIVE),
        needs_restart,
    }
}

/// Whether something outside the sections compared above differs.
fn unlisted_change(old: &Config, new: &Config) -> bool {
    let mut aligned = new.clone();
    aligned.hostname = old.hostname.clone();
    aligned.spool = old.spool.clone();
    aligned.smtp_in = old.smtp_in.clone();
    aligned.delivery = old.delivery.clone();
    aligned.admin = old.admin.clone();
    aligned.metrics = old.metrics.clone();
    aligned.events = old.events.clone();
    aligned.secrets = old.secrets.clone();
    aligned.dns = old.dns.clone();
    aligned.direct = old.direct.clone();
    aligned.tracking = old.tracking.clone();
    aligned.http_in = old.http_in.clone();
    aligned.log = old.log.clone();
    aligned.seeds = old.seeds.clone();
    show(old) != show(&aligned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../config.toml");

    fn config(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    #[test]
    fn unchanged_file_changes_nothing() {
        let c = config(EXAMPLE);
        assert_eq!(plan(&c, &c.clone()), ReloadPlan::default());
    }

    #[test]
    fn live_and_restart_keys_are_told_apart() {
        let old = config(EXAMPLE);
        let mut new = old.clone();
        new.smtp_in.max_message_size = 1024;
        new.delivery.retry_schedule = vec![std::time::Duration::from_secs(1)];
        new.log.filter = Some("debug".into());
        new.smtp_in.listen = vec!["127.0.0.1:1".parse().unwrap()];
        new.spool.dir = "/elsewhere".into();
        let p = plan(&old, &new);
        assert_eq!(
            p.applied,
            [
                "smtp_in.max_message_size",
                "delivery.retry_schedule",
                "log.filter"
            ]
        );
        assert_eq!(p.needs_restart, ["spool.dir", "smtp_in.listen"]);
    }
}
