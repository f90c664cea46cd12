//! Daily report counters: what happened per UTC day and tenant, kept in the
//! spool so that `sendctl report` still knows yesterday after a restart
//! (Prometheus counters start again from zero).
//!
//! One table: (UTC day number, tenant) -> the day's tally as opaque bytes.
//! The engine's counter sink is the only writer: it keeps the rows of the
//! current day in memory and writes each changed row whole, about once a
//! second, in the writer's group commit. The spool neither reads nor merges
//! the bytes; it stores them, reads them back and prunes old days.

use redb::{Database, ReadableDatabase, TableDefinition, WriteTransaction};

use crate::error::SpoolError;
use crate::requests::Completion;
use crate::store::open_if_created;

/// (UTC day number, tenant; "" for mail without one) -> tally bytes.
const DAILY: TableDefinition<(u32, &str), &[u8]> = TableDefinition::new("daily_counters");

/// One day's tally of one tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DailyRow {
    /// Days since 1970-01-01 (UTC).
    pub day: u32,
    pub tenant: String,
    pub tally: Vec<u8>,
}

/// Replaces rows and deletes the days before `prune_before`, in the
/// writer's next group commit.
pub(crate) struct DailyRequest {
    pub(crate) rows: Vec<DailyRow>,
    pub(crate) prune_before: Option<u32>,
    pub(crate) done: Completion<()>,
}

/// Applies one request inside the writer's transaction.
pub(crate) fn apply(txn: &WriteTransaction, request: &DailyRequest) -> Result<(), SpoolError> {
    let mut table = txn.open_table(DAILY)?;
    for row in &request.rows {
        table.insert((row.day, row.tenant.as_str()), row.tally.as_slice())?;
    }
    if let Some(before) = request.prune_before {
        table.retain_in((0, "")..(before, ""), |_, _| false)?;
    }
    Ok(())
}

/// The rows of `day`: every tenant's, or only `tenant`'s.
pub(crate) fn read_day(
    db: &Database,
    day: u32,
    tenant: Option<&str>,
) -> Result<Vec<DailyRow>, SpoolError> {
    let txn = db.begin_read()?;
    let Some(table) = open_if_created(&txn, DAILY)? else {
        return Ok(Vec::new());
    };
    let row = |tenant: &str, tally: &[u8]| DailyRow {
        day,
        tenant: tenant.to_owned(),
        tally: tally.to_vec(),
    };
    if let Some(tenant) = tenant {
        let found = table.get((day, tenant))?;
        return Ok(found.map(|v| row(tenant, v.value())).into_iter().collect());
    }
    let mut rows = Vec::new();
    for entry in table.range((day, "")..(day.saturating_add(1), ""))? {
        let (key, value) = entry?;
        rows.push(row(key.value().1, value.value()));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Spool, SpoolConfig};

    fn row(day: u32, tenant: &str, tally: &[u8]) -> DailyRow {
        DailyRow {
            day,
            tenant: tenant.into(),
            tally: tally.to_vec(),
        }
    }

    #[test]
    fn rows_are_replaced_read_per_day_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(SpoolConfig::new(dir.path())).unwrap();
        assert!(spool.daily_rows(100, None).unwrap().is_empty());
        let rows = vec![
            row(99, "a", b"old"),
            row(100, "", b"none"),
            row(100, "a", b"one"),
            row(101, "a", b"next"),
        ];
        spool.daily_write_blocking(rows, None).unwrap();
        spool
            .daily_write_blocking(vec![row(100, "a", b"two")], None)
            .unwrap();
        let day = spool.daily_rows(100, None).unwrap();
        assert_eq!(day, vec![row(100, "", b"none"), row(100, "a", b"two")]);
        let one = spool.daily_rows(100, Some("a")).unwrap();
        assert_eq!(one, vec![row(100, "a", b"two")]);
        assert!(spool.daily_rows(100, Some("b")).unwrap().is_empty());

        spool.daily_write_blocking(Vec::new(), Some(100)).unwrap();
        assert!(spool.daily_rows(99, None).unwrap().is_empty());
        assert_eq!(spool.daily_rows(100, None).unwrap().len(), 2);
        drop(spool);
        let spool = Spool::open(SpoolConfig::new(dir.path())).unwrap();
        assert_eq!(
            spool.daily_rows(101, None).unwrap(),
            vec![row(101, "a", b"next")]
        );
    }
}
