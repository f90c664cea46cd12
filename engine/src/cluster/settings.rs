//! `[cluster]` in `config.toml`: which node this is and where the shared
//! services are. Checked here, by the owner, so `config` only parses.

use serde::Deserialize;

/// The `[cluster]` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    node: String,
    database: String,
    redis: Option<String>,
    redis_prefix: Option<String>,
}

/// A checked `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Unique name of this node in the fleet (letters, digits, `-`, `_`, `.`).
    pub node: String,
    /// `postgres://` URL of the shared database.
    pub database: String,
    /// `redis://` URL for fleet-wide throttles; none: each node throttles alone.
    pub redis: Option<String>,
    /// Prefix of every Redis key of this fleet (default `sendengine:`), so
    /// that fleets (or test runs) can share one Redis.
    pub redis_prefix: String,
}

/// Longest node name: it appears in metrics labels, VERP tags and logs.
pub const MAX_NODE_NAME: usize = 63;

impl RawCluster {
    pub fn check(self) -> Result<ClusterSettings, String> {
        let node = self.node.trim().to_owned();
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if node.is_empty() || node.len() > MAX_NODE_NAME || !node.chars().all(valid) {
            return Err(format!(
                "[cluster] node = {:?}: give each node a unique name of 1 to {MAX_NODE_NAME} letters, digits, '-', '_' or '.'",
                self.node
            ));
        }
        if !(self.database.starts_with("postgres://") || self.database.starts_with("postgresql://"))
        {
            return Err(format!(
                "[cluster] database = {:?}: expected a URL such as \"postgres://postgres@127.0.0.1/sendengine\"",
                self.database
            ));
        }
        if let Some(redis) = &self.redis {
            check_redis_url(redis)?;
        }
        Ok(ClusterSettings {
            node,
            database: self.database,
            redis: self.redis,
            redis_prefix: self.redis_prefix.unwrap_or_else(|| "sendengine:".into()),
        })
    }
}

/// The redis client is built without TLS (no `rediss://`): refused here,
/// rather than by every connection attempt once the node runs.
fn check_redis_url(redis: &str) -> Result<(), String> {
    if redis.starts_with("rediss://") {
        return Err(format!(
            "[cluster] redis = {redis:?}: this build cannot reach Redis over TLS; \
             use \"redis://\" on a private network, or a local TLS tunnel (stunnel) to the server"
        ));
    }
    if !redis.starts_with("redis://") {
        return Err(format!(
            "[cluster] redis = {redis:?}: expected a URL such as \"redis://127.0.0.1:6379\""
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(node: &str, database: &str, redis: Option<&str>) -> RawCluster {
        RawCluster {
            node: node.into(),
            database: database.into(),
            redis: redis.map(Into::into),
            redis_prefix: None,
        }
    }

    #[test]
    fn accepts_a_named_node_with_services() {
        let s = raw(
            "a-1",
            "postgres://postgres@127.0.0.1/test",
            Some("redis://127.0.0.1"),
        )
        .check()
        .unwrap();
        assert_eq!(s.node, "a-1");
        assert_eq!(s.redis.as_deref(), Some("redis://127.0.0.1"));
    }

    #[test]
    fn refuses_bad_names_and_urls() {
        for bad in ["", "a b", "ü", &"x".repeat(64)] {
            let e = raw(bad, "postgres://h/db", None).check().unwrap_err();
            assert!(e.contains("node"), "{e}");
        }
        let e = raw("a", "mysql://h/db", None).check().unwrap_err();
        assert!(e.contains("database"), "{e}");
        let e = raw("a", "postgres://h/db", Some("http://r"))
            .check()
            .unwrap_err();
        assert!(e.contains("redis"), "{e}");
        let e = raw("a", "postgres://h/db", Some("rediss://r:6380"))
            .check()
            .unwrap_err();
        assert!(e.contains("cannot reach Redis over TLS"), "{e}");
    }
}
