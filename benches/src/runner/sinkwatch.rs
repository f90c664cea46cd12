//! Follows the sink's `--log` file while a run is going: counts messages and
//! recipients as they arrive and, when asked, keeps the arrival time of each
//! Message-ID (its last recipient's) so latencies can be joined with the
//! load generator's acknowledgement times.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::Deserialize;

use super::RunError;

/// The fields of a sink log line the runner uses.
#[derive(Deserialize)]
struct SinkLine {
    time_ms: u64,
    #[serde(default)]
    time_us: Option<u64>,
    #[serde(default)]
    rcpts: Vec<String>,
    #[serde(default)]
    message_id: Option<String>,
}

pub struct SinkWatch {
    reader: BufReader<File>,
    /// A line the sink has not finished writing yet.
    partial: String,
    pub messages: u64,
    pub recipients: u64,
    /// Unix microseconds of the first and the latest arrival.
    pub first_us: Option<u64>,
    pub last_us: u64,
    /// Message-ID → arrival of its latest recipient, when tracked.
    arrivals: Option<HashMap<String, u64>>,
}

impl SinkWatch {
    /// Watches `path` from its current start; `track_ids` keeps per-message
    /// arrival times (memory grows with the message count).
    pub fn open(path: &Path, track_ids: bool) -> Result<SinkWatch, RunError> {
        let file = crate::open_append(path)
            .and_then(|_| File::open(path))
            .map_err(|source| RunError::Io {
                what: format!("cannot read the sink log {}", path.display()),
                source,
            })?;
        Ok(SinkWatch {
            reader: BufReader::new(file),
            partial: String::new(),
            messages: 0,
            recipients: 0,
            first_us: None,
            last_us: 0,
            arrivals: track_ids.then(HashMap::new),
        })
    }

    /// Reads every complete line written since the last call.
    pub fn poll(&mut self) -> Result<(), RunError> {
        loop {
            let read = self
                .reader
                .read_line(&mut self.partial)
                .map_err(|source| RunError::Io {
                    what: "cannot read the sink log".into(),
                    source,
                })?;
            if read == 0 || !self.partial.ends_with('\n') {
                return Ok(());
            }
            let line = std::mem::take(&mut self.partial);
            self.record(&line);
        }
    }

    fn record(&mut self, line: &str) {
        let Ok(entry) = serde_json::from_str::<SinkLine>(line) else {
            return;
        };
        let at_us = entry.time_us.unwrap_or(entry.time_ms * 1000);
        self.messages += 1;
        self.recipients += entry.rcpts.len() as u64;
        self.first_us.get_or_insert(at_us);
        self.last_us = self.last_us.max(at_us);
        if let (Some(arrivals), Some(id)) = (self.arrivals.as_mut(), entry.message_id) {
            let latest = arrivals.entry(id).or_insert(at_us);
            *latest = (*latest).max(at_us);
        }
    }

    /// Starts a new measured interval: counters and arrival times from zero.
    pub fn reset(&mut self) {
        self.messages = 0;
        self.recipients = 0;
        self.first_us = None;
        self.last_us = 0;
        if let Some(arrivals) = self.arrivals.as_mut() {
            arrivals.clear();
        }
    }

    /// When the message's last recipient arrived, if it did.
    pub fn arrival_us(&self, message_id: &str) -> Option<u64> {
        self.arrivals.as_ref()?.get(message_id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn counts_complete_lines_and_keeps_latest_arrival() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sink.jsonl");
        let mut watch = SinkWatch::open(&path, true).unwrap();
        let mut log = crate::open_append(&path).unwrap();
        write!(
            log,
            "{{\"seq\":1,\"time_ms\":5,\"time_us\":5000,\"rcpts\":[\"a@x\"],\"message_id\":\"<m1>\"}}\n\
             {{\"seq\":2,\"time_ms\":7,\"rcpts\":[\"b@x\"],\"message_id\":\"<m1>\"}}\n\
             {{\"seq\":3,\"time_ms\":9,\"rcpts\":[\"c@x\""
        )
        .unwrap();
        watch.poll().unwrap();
        assert_eq!((watch.messages, watch.recipients), (2, 2));
        assert_eq!(watch.arrival_us("<m1>"), Some(7000));
        writeln!(log, ",\"d@x\"],\"message_id\":null}}").unwrap();
        watch.poll().unwrap();
        assert_eq!((watch.messages, watch.recipients), (3, 4));
        assert_eq!((watch.first_us, watch.last_us), (Some(5000), 9000));
    }
}
