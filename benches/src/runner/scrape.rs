//! Reads the daemon's Prometheus endpoint around a measured run, so that a
//! repetition can say how its CPU was spent: messages per spool commit
//! (fewer, larger group commits cost less per message) and, in cluster
//! mode, how often admission went to PostgreSQL. Counters only: the delta
//! between two scrapes of the same daemon.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The counters a repetition reports (sums over every label set).
pub const COUNTERS: [&str; 7] = [
    "sendengine_spool_commit_seconds_count",
    "sendengine_spool_commit_seconds_sum",
    "sendengine_cluster_quota_leases_total",
    "sendengine_cluster_quota_lease_waits_total",
    "sendengine_cluster_quota_spends_total",
    "sendengine_cluster_quota_spend_flushes_total",
    "sendengine_cluster_delivered_rows_total",
];

/// One scrape: the value of each counter of [`COUNTERS`] that was present.
#[derive(Debug, Default, Clone)]
pub struct Counters(pub HashMap<String, f64>);

impl Counters {
    /// Scrapes `GET /metrics`; empty when the endpoint does not answer
    /// (the figures are extras, never a reason to fail a run).
    pub fn scrape(addr: SocketAddr) -> Counters {
        fetch(addr).map_or_else(Counters::default, |text| Counters::parse(&text))
    }

    /// Sums the samples of each wanted counter, per label set included.
    pub fn parse(text: &str) -> Counters {
        let mut values = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name_labels, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = name_labels.split('{').next().unwrap_or_default();
            let label = name_labels
                .split_once('{')
                .map(|(_, rest)| rest.trim_end_matches('}'));
            if let (true, Ok(v)) = (COUNTERS.contains(&name), value.parse::<f64>()) {
                *values.entry(name.to_owned()).or_insert(0.0) += v;
                if let Some(label) = label {
                    *values.entry(format!("{name}{{{label}}}")).or_insert(0.0) += v;
                }
            }
        }
        Counters(values)
    }

    /// What grew from `before` to `self`, by name (with labels), sorted.
    pub fn since(&self, before: &Counters) -> Vec<(String, f64)> {
        let mut grown: Vec<(String, f64)> = self
            .0
            .iter()
            .map(|(k, v)| (k.clone(), v - before.0.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, d)| *d > 0.0)
            .collect();
        grown.sort_by(|a, b| a.0.cmp(&b.0));
        grown
    }
}

fn fetch(addr: SocketAddr) -> Option<String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = Vec::new();
    stream.take(64 << 20).read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_label_sets_and_takes_deltas() {
        let before = Counters::parse(
            "# TYPE x counter\nsendengine_spool_commit_seconds_count 10\n\
             sendengine_cluster_quota_spends_total{when=\"after_commit\"} 5\n",
        );
        let after = Counters::parse(
            "sendengine_spool_commit_seconds_count 110\n\
             sendengine_spool_commit_seconds_sum 3.5\n\
             sendengine_unlisted_total 7\n\
             sendengine_cluster_quota_spends_total{when=\"after_commit\"} 25\n\
             sendengine_cluster_quota_spends_total{when=\"before_commit\"} 4\n",
        );
        let grown = after.since(&before);
        let get = |k: &str| grown.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        assert_eq!(get("sendengine_spool_commit_seconds_count"), Some(100.0));
        assert_eq!(get("sendengine_cluster_quota_spends_total"), Some(24.0));
        assert_eq!(
            get("sendengine_cluster_quota_spends_total{when=\"before_commit\"}"),
            Some(4.0)
        );
        assert_eq!(get("sendengine_spool_commit_seconds_sum"), Some(3.5));
        assert_eq!(get("sendengine_unlisted_total"), None);
    }
}
