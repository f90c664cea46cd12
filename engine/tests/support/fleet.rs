//! Several daemons as one fleet: the `[cluster]` and `[secrets]` lines each
//! node's configuration gets (`DaemonConfig::extra_top`), over a database,
//! Redis prefix and master key of the test's own. Every node of a fleet
//! must share the master key: objects are sealed with it and VERP tags
//! signed with it.

use std::path::PathBuf;

use super::services;

pub struct FleetPlace {
    /// `postgres://` URL of a fresh database.
    pub database: String,
    /// Redis URL and key prefix, when the test asked for Redis.
    pub redis: Option<(String, String)>,
    /// The master key file every node reads.
    pub key_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl FleetPlace {
    /// A fresh database (and Redis prefix when `with_redis`); None when a
    /// service is missing outside CI (the test returns).
    pub fn new(prefix: &str, with_redis: bool) -> Option<FleetPlace> {
        let database = services::fresh_database(prefix)?;
        let redis = if with_redis {
            Some(services::fresh_redis(prefix)?)
        } else {
            None
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("secret.key");
        // 32 bytes, base64 without padding, as the daemon writes its own key
        // ("sendengine-fleet-test-key-32byte").
        std::fs::write(&key_file, "c2VuZGVuZ2luZS1mbGVldC10ZXN0LWtleS0zMmJ5dGU\n")
            .expect("write key");
        Some(FleetPlace {
            database,
            redis,
            key_file,
            _dir: dir,
        })
    }

    /// The top-of-file lines of node `node`'s configuration.
    pub fn node_config(&self, node: &str) -> String {
        let redis = match &self.redis {
            Some((url, prefix)) => format!("redis = {url:?}\nredis_prefix = \"{prefix}:\"\n"),
            None => String::new(),
        };
        format!(
            "[cluster]\nnode = {node:?}\ndatabase = {db:?}\n{redis}\n[secrets]\nkey_file = {key:?}\n",
            db = self.database,
            key = self.key_file.display().to_string(),
        )
    }
}
