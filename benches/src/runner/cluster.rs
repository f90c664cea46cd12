//! Cluster mode for `sendengine-bench` (issue #17): the same scenario with
//! a `[cluster]` section, so one node in a fleet can be measured against the
//! same node standalone.
//!
//! Each repetition gets a fresh PostgreSQL database (created with `psql`
//! through the database URL the user gives, dropped afterwards) and a Redis
//! key prefix of its own, as it gets a fresh spool: nothing carries over
//! from one repetition to the next. The runner only writes configuration
//! text and runs `psql`; it links neither the engine nor a database client.
//!
//! The tenant (`--tenant`, implied by cluster mode) is what makes cluster
//! mode pay for what it does in production: a user with a daily limit, so
//! the quota ledger leases blocks from PostgreSQL, and a delivery server
//! with a `rate_per_second` far above the run's rate, so the throttle (in
//! Redis, fleet-wide) is consulted before every transaction.

use std::fmt::Write as _;
use std::process::Command;

use super::RunError;

/// The tenant's user and group name.
pub const TENANT: &str = "bench";
/// The delivery server's `rate_per_second`: checked per message, never reached.
pub const RATE_PER_SECOND: u64 = 1_000_000;
/// The daily limit is this many times the run's recipients: far from the
/// limit, so the ledger leases its largest blocks, as for a busy user.
pub const DAILY_LIMIT_FACTOR: u64 = 100;

/// Where the fleet's services are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTarget {
    /// `postgres://` URL of an existing database `psql` can connect to
    /// (e.g. `postgres://postgres@127.0.0.1:5432/test`); each repetition's
    /// database is created from there, on the same server.
    pub database: String,
    /// `redis://` URL; none: the node throttles alone (no Redis).
    pub redis: Option<String>,
}

/// One repetition's place in the fleet's services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRun {
    /// The admin URL `psql` creates and drops the database through.
    admin_url: String,
    /// The fresh database's name.
    pub database_name: String,
    /// The daemon's `[cluster] database`.
    pub database_url: String,
    pub redis: Option<String>,
    pub redis_prefix: String,
}

impl ClusterTarget {
    /// Checks the URLs as the daemon will.
    pub fn check(&self) -> Result<(), String> {
        if !(self.database.starts_with("postgres://") || self.database.starts_with("postgresql://"))
        {
            return Err(format!(
                "expected a URL such as postgres://postgres@127.0.0.1:5432/test, got {:?}",
                self.database
            ));
        }
        if let Some(redis) = &self.redis
            && !(redis.starts_with("redis://") || redis.starts_with("rediss://"))
        {
            return Err(format!(
                "expected a URL such as redis://127.0.0.1:6379, got {redis:?}"
            ));
        }
        Ok(())
    }

    /// The names of repetition `tag` (unique per runner process).
    pub fn run_for(&self, tag: &str) -> ClusterRun {
        let database_name = format!("sendengine_bench_{}_{tag}", std::process::id());
        ClusterRun {
            admin_url: self.database.clone(),
            database_url: with_database(&self.database, &database_name),
            redis_prefix: format!("sendengine-bench:{}:{tag}:", std::process::id()),
            redis: self.redis.clone(),
            database_name,
        }
    }
}

impl ClusterRun {
    /// Creates the repetition's database (dropping a leftover of that name).
    pub fn create(&self) -> Result<(), RunError> {
        self.drop_database()?;
        self.psql(&format!("CREATE DATABASE {}", self.database_name))
    }

    /// Writes PostgreSQL's dirty buffers to disk (the database just created
    /// and the daemon's schema), so that it does not happen during the
    /// measured run and slow the spool's fdatasync.
    pub fn checkpoint(&self) -> Result<(), RunError> {
        self.psql("CHECKPOINT")
    }

    /// Drops the repetition's database, even with the daemon's connections
    /// still closing.
    pub fn drop_database(&self) -> Result<(), RunError> {
        self.psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.database_name
        ))
    }

    fn psql(&self, sql: &str) -> Result<(), RunError> {
        let output = Command::new("psql")
            .args([self.admin_url.as_str(), "-v", "ON_ERROR_STOP=1", "-qc", sql])
            .output()
            .map_err(|source| RunError::Io {
                what: "cannot run psql (is the PostgreSQL client installed?)".into(),
                source,
            })?;
        if output.status.success() {
            return Ok(());
        }
        Err(RunError::Failed(format!(
            "psql {} -c '{sql}' failed: {}",
            self.admin_url,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }

    /// The `[cluster]` section (the `[secrets] key_file` is in every config).
    pub fn config_section(&self) -> String {
        let mut text = format!(
            "[cluster]\nnode = \"bench\"\ndatabase = \"{}\"\nredis_prefix = \"{}\"\n",
            self.database_url, self.redis_prefix
        );
        if let Some(redis) = &self.redis {
            let _ = writeln!(text, "redis = \"{redis}\"");
        }
        text
    }
}

/// `url` with its database (the path) replaced by `name`; a query string
/// (`?sslmode=...`) is kept.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        let _ = write!(out, "?{query}");
    }
    out
}

/// The tenant's group and user: a daily limit of `DAILY_LIMIT_FACTOR`
/// times `recipients`, every channel through the sink.
pub fn tenant_section(recipients: u64) -> String {
    let limit = recipients.max(1) * DAILY_LIMIT_FACTOR;
    format!(
        "[[user_group]]\nname = \"{TENANT}\"\nmarketing = [\"sink\"]\ntransactional = [\"sink\"]\n\
         autoresponder = [\"sink\"]\ndaily_limit = {limit}\n[[user]]\nname = \"{TENANT}\"\n\
         group = \"{TENANT}\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_of_the_url_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "b"),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            with_database("postgresql://u:p@h/test?sslmode=disable", "b"),
            "postgresql://u:p@h/b?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "b"),
            "postgres://h:5432/b"
        );
    }

    #[test]
    fn each_run_has_its_own_database_and_prefix() {
        let target = ClusterTarget {
            database: "postgres://postgres@127.0.0.1/test".into(),
            redis: Some("redis://127.0.0.1:6379".into()),
        };
        let (one, two) = (target.run_for("r1"), target.run_for("r2"));
        assert_ne!(one.database_name, two.database_name);
        assert_ne!(one.redis_prefix, two.redis_prefix);
        let section = one.config_section();
        assert!(section.contains(&format!("database = \"{}\"", one.database_url)));
        assert!(section.contains("redis = \"redis://127.0.0.1:6379\""));
        assert!(one.database_url.ends_with(&one.database_name));
    }

    #[test]
    fn bad_urls_are_refused() {
        let target = |database: &str, redis: Option<&str>| ClusterTarget {
            database: database.into(),
            redis: redis.map(Into::into),
        };
        assert!(target("mysql://x/y", None).check().is_err());
        assert!(target("postgres://x/y", Some("http://r")).check().is_err());
        assert!(target("postgres://x/y", Some("redis://r")).check().is_ok());
    }

    #[test]
    fn the_limit_is_far_above_the_run() {
        assert!(tenant_section(21_000).contains("daily_limit = 2100000\n"));
    }
}
