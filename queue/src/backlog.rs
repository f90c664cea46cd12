//! Webhook backlogs: events waiting to be posted, kept in the spool so that
//! a receiver's outage (or a restart of the daemon) loses nothing.
//!
//! One table holds every backlog: (sink name, sequence number) -> the event
//! as JSON bytes. Sequence numbers grow per sink, so a backlog is always one
//! contiguous run of keys: appends go at the end, and the only deletions are
//! of a prefix (posted events, or the oldest ones beyond the bound). That is
//! what lets its length be `last - first + 1` instead of a scan.

use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::error::SpoolError;
use crate::requests::Completion;
use crate::store::open_if_created;

/// (sink name, sequence number) -> one event, as JSON.
const BACKLOG: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("webhook_backlog");

/// Longest sink name accepted (sink names come from the configuration).
pub const MAX_SINK_NAME_BYTES: usize = 1024;

/// One event waiting in a backlog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BacklogEntry {
    pub seq: u64,
    pub event: Vec<u8>,
}

/// What one backlog write did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BacklogWritten {
    /// Oldest events deleted because the backlog went beyond its bound.
    pub dropped: u64,
    /// Events in the backlog after the write.
    pub len: u64,
}

/// Appends events to one sink's backlog and/or deletes its events up to a
/// sequence number, in the writer's next group commit.
pub(crate) struct BacklogRequest {
    pub(crate) sink: String,
    pub(crate) append: Vec<Vec<u8>>,
    /// At most this many events are kept; the oldest go first.
    pub(crate) max_entries: u64,
    pub(crate) delete_through: Option<u64>,
    pub(crate) done: Completion<BacklogWritten>,
}

pub(crate) fn check_sink_name(sink: &str) -> Result<(), SpoolError> {
    if sink.is_empty() || sink.len() > MAX_SINK_NAME_BYTES {
        return Err(SpoolError::Invalid(format!(
            "a backlog name must have 1 to {MAX_SINK_NAME_BYTES} bytes, not {}",
            sink.len()
        )));
    }
    Ok(())
}

/// Applies one request inside the writer's transaction.
pub(crate) fn apply(
    txn: &WriteTransaction,
    request: &BacklogRequest,
) -> Result<BacklogWritten, SpoolError> {
    let mut table = txn.open_table(BACKLOG)?;
    let sink = request.sink.as_str();
    if let Some(through) = request.delete_through {
        delete_through(&mut table, sink, through)?;
    }
    let mut next = match bounds(&table, sink)? {
        Some((_, last)) => last.saturating_add(1),
        None => 0,
    };
    for event in &request.append {
        table.insert((sink, next), event.as_slice())?;
        next = next.saturating_add(1);
    }
    let Some((first, last)) = bounds(&table, sink)? else {
        return Ok(BacklogWritten::default());
    };
    let len = last - first + 1;
    if len <= request.max_entries {
        return Ok(BacklogWritten { dropped: 0, len });
    }
    let dropped = len - request.max_entries;
    delete_through(&mut table, sink, first + dropped - 1)?;
    Ok(BacklogWritten {
        dropped,
        len: request.max_entries,
    })
}

fn delete_through(
    table: &mut Table<'_, (&'static str, u64), &'static [u8]>,
    sink: &str,
    through: u64,
) -> Result<(), SpoolError> {
    table.retain_in((sink, 0)..=(sink, through), |_, _| false)?;
    Ok(())
}

/// First and last sequence number in the sink's backlog.
fn bounds(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    sink: &str,
) -> Result<Option<(u64, u64)>, SpoolError> {
    let mut range = table.range((sink, 0)..=(sink, u64::MAX))?;
    let first = match range.next().transpose()? {
        Some((key, _)) => key.value().1,
        None => return Ok(None),
    };
    let last = match range.next_back().transpose()? {
        Some((key, _)) => key.value().1,
        None => first,
    };
    Ok(Some((first, last)))
}

/// The oldest `limit` events of the sink's backlog.
pub(crate) fn peek(
    db: &Database,
    sink: &str,
    limit: usize,
) -> Result<Vec<BacklogEntry>, SpoolError> {
    let txn = db.begin_read()?;
    let Some(table) = open_if_created(&txn, BACKLOG)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in table.range((sink, 0)..=(sink, u64::MAX))?.take(limit) {
        let (key, value) = entry?;
        out.push(BacklogEntry {
            seq: key.value().1,
            event: value.value().to_vec(),
        });
    }
    Ok(out)
}

/// How many events the sink's backlog holds.
#[cfg(test)]
pub(crate) fn len(db: &Database, sink: &str) -> Result<u64, SpoolError> {
    let txn = db.begin_read()?;
    let Some(table) = open_if_created(&txn, BACKLOG)? else {
        return Ok(0);
    };
    Ok(bounds(&table, sink)?.map_or(0, |(first, last)| last - first + 1))
}

#[cfg(test)]
mod tests {
    use crate::{Spool, SpoolConfig};

    fn events(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
        range
            .map(|i| format!("{{\"n\":{i}}}").into_bytes())
            .collect()
    }

    #[test]
    fn appends_peeks_deletes_and_keeps_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(SpoolConfig::new(dir.path().to_owned())).unwrap();
        let written = spool.backlog_append_blocking("a", events(0..5), 8).unwrap();
        assert_eq!(written.len, 5);
        spool.backlog_append_blocking("b", events(0..2), 8).unwrap();
        let written = spool
            .backlog_append_blocking("a", events(5..11), 8)
            .unwrap();
        assert_eq!((written.dropped, written.len), (3, 8));
        let first = spool.backlog_peek("a", 2).unwrap();
        assert_eq!(first[0].seq, 3);
        assert_eq!(first[0].event, b"{\"n\":3}");
        assert_eq!(first[1].seq, 4);
        spool.backlog_delete_through("a", 4).unwrap();
        assert_eq!(spool.backlog_len("a").unwrap(), 6);
        assert_eq!(spool.backlog_len("b").unwrap(), 2);
        assert_eq!(spool.backlog_peek("a", 1).unwrap()[0].seq, 5);
        assert!(spool.backlog_append_blocking("", Vec::new(), 1).is_err());
    }

    #[test]
    fn a_backlog_survives_reopening_and_keeps_its_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(SpoolConfig::new(dir.path().to_owned())).unwrap();
        spool
            .backlog_append_blocking("a", events(0..3), 100)
            .unwrap();
        spool.backlog_delete_through("a", 0).unwrap();
        spool.shutdown();
        drop(spool);
        let spool = Spool::open(SpoolConfig::new(dir.path().to_owned())).unwrap();
        assert_eq!(spool.backlog_len("a").unwrap(), 2);
        spool
            .backlog_append_blocking("a", events(3..4), 100)
            .unwrap();
        let seqs: Vec<u64> = spool
            .backlog_peek("a", 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        spool.backlog_delete_through("a", 3).unwrap();
        assert_eq!(spool.backlog_len("a").unwrap(), 0);
        // Emptied, numbering restarts at 0: harmless, nothing refers to old numbers.
        assert!(spool.backlog_peek("a", 10).unwrap().is_empty());
    }
}
