//! Where each message's body is, inside a write transaction: its place in
//! a segment file (`body_refs`), the live bodies and bytes per segment
//! (`segment_usage`, which says when a segment file can be deleted), and
//! the `bodies` table of spools written before segments, still read and
//! emptied as their messages leave.
//!
//! Also the open-time check of the bodies the last commit before a crash
//! may not have synced (see `segments/mod.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::WriteTables;
use crate::error::SpoolError;
use crate::id::MessageId;
use crate::segments::{BodyRef, ReadError};

/// id -> (segment, record offset, body length).
pub(super) const BODY_REFS: TableDefinition<u64, (u32, u64, u32)> =
    TableDefinition::new("body_refs");
/// segment -> (live bodies, live record bytes).
pub(super) const SEGMENT_USAGE: TableDefinition<u32, (u64, u64)> =
    TableDefinition::new("segment_usage");

/// Counters holding where the latest batch of bodies starts: every record
/// before it was fdatasynced before that batch was committed.
const SYNCED_SEGMENT: &str = "segment_synced_before_segment";
const SYNCED_OFFSET: &str = "segment_synced_before_offset";

pub(super) fn to_ref((segment, offset, len): (u32, u64, u32)) -> BodyRef {
    BodyRef {
        segment,
        offset,
        len,
    }
}

/// Changes of live bodies and bytes per segment made by one transaction.
pub(crate) type UsageChanges = BTreeMap<u32, (i64, i64)>;

impl WriteTables<'_> {
    /// Records where message `id`'s body was appended.
    pub(crate) fn put_body_ref(&mut self, id: MessageId, at: BodyRef) -> Result<(), SpoolError> {
        self.body_refs.insert(id, (at.segment, at.offset, at.len))?;
        self.count_usage(at, 1);
        Ok(())
    }

    /// Notes where the batch being committed starts appending (see
    /// `SYNCED_SEGMENT`).
    pub(crate) fn store_synced_before(
        &mut self,
        (segment, offset): (u32, u64),
    ) -> Result<(), SpoolError> {
        self.counters.insert(SYNCED_SEGMENT, u64::from(segment))?;
        self.counters.insert(SYNCED_OFFSET, offset)?;
        Ok(())
    }

    /// Forgets message `id`'s body; returns its segment place, if it had one.
    pub(super) fn remove_body(&mut self, id: MessageId) -> Result<Option<BodyRef>, SpoolError> {
        self.bodies.remove(id)?;
        let Some(at) = self.body_refs.remove(id)?.map(|v| to_ref(v.value())) else {
            return Ok(None);
        };
        self.count_usage(at, -1);
        Ok(Some(at))
    }

    /// Takes message `id`'s body out of the spool for the quarantine: its
    /// bytes as they are (a segment record's raw bytes, header included,
    /// as far as they can be read).
    pub(super) fn remove_body_for_quarantine(
        &mut self,
        id: MessageId,
    ) -> Result<Option<Vec<u8>>, SpoolError> {
        if let Some(old) = self.bodies.remove(id)? {
            return Ok(Some(old.value().to_vec()));
        }
        let Some(at) = self.remove_body(id)? else {
            return Ok(None);
        };
        Ok(Some(self.segments.read_raw(at).unwrap_or_default()))
    }

    fn count_usage(&mut self, at: BodyRef, sign: i64) {
        let entry = self.usage_changes.entry(at.segment).or_default();
        entry.0 += sign;
        entry.1 += sign * at.record_bytes() as i64;
    }

    /// Writes this transaction's usage changes to `segment_usage`; returns
    /// the change of live bodies per segment, for the appender once the
    /// commit is done.
    pub(crate) fn flush_usage(&mut self) -> Result<Vec<(u32, i64)>, SpoolError> {
        let changes = std::mem::take(&mut self.usage_changes);
        let mut out = Vec::with_capacity(changes.len());
        for (segment, (bodies, bytes)) in changes {
            if bodies == 0 && bytes == 0 {
                continue;
            }
            let (live, live_bytes) = self
                .segment_usage
                .get(segment)?
                .map_or((0, 0), |v| v.value());
            let live = live.saturating_add_signed(bodies);
            let live_bytes = live_bytes.saturating_add_signed(bytes);
            if live == 0 {
                self.segment_usage.remove(segment)?;
            } else {
                self.segment_usage.insert(segment, (live, live_bytes))?;
            }
            out.push((segment, bodies));
        }
        Ok(out)
    }

    /// Whether this transaction removed bodies from segments (their files
    /// are deleted after the commit, so it must be durable).
    pub(crate) fn frees_segment_space(&self) -> bool {
        self.usage_changes.values().any(|&(bodies, _)| bodies < 0)
    }

    /// At open: the bodies of the last batch committed before the process
    /// stopped were synced concurrently with that commit, so a crash may
    /// have left them unwritten. Each is read and checked; the messages
    /// whose body fails (never acknowledged) are quarantined. Returns how
    /// many were.
    pub(super) fn check_unsynced_bodies(&mut self, now_ms: u64) -> Result<u64, SpoolError> {
        let synced_before = (
            self.counters.get(SYNCED_SEGMENT)?.map_or(0, |v| v.value()),
            self.counters.get(SYNCED_OFFSET)?.map_or(0, |v| v.value()),
        );
        let mut bad = Vec::new();
        for entry in self.body_refs.iter()?.rev() {
            let (key, value) = entry?;
            let (id, at) = (key.value(), to_ref(value.value()));
            if (u64::from(at.segment), at.offset) < synced_before {
                break;
            }
            match self.segments.read(id, at) {
                Ok(_) => {}
                Err(ReadError::Damaged(reason)) => bad.push((id, reason)),
                Err(ReadError::Missing) => bad.push((id, "its segment file is missing".into())),
                // Left for the load that meets it, which retries or quarantines.
                Err(ReadError::Io(err)) => log::warn!(
                    "spool: cannot read the body of message {id:016x} to check it: {err}"
                ),
            }
        }
        for (id, reason) in &bad {
            log::warn!(
                "spool: message {id:016x} was committed but {reason}: the process stopped \
                 before its body was on disk, so it was never acknowledged; quarantined"
            );
            self.quarantine_undeliverable(*id, reason, now_ms)?;
        }
        Ok(bad.len() as u64)
    }
}

/// The live bodies per segment, as the database holds them.
pub(crate) fn live_segments(db: &Database) -> Result<HashMap<u32, u64>, SpoolError> {
    Ok(segment_usage(db)?
        .into_iter()
        .map(|(segment, (bodies, _))| (segment, bodies))
        .collect())
}

/// segment -> (live bodies, live record bytes).
pub(crate) fn segment_usage(db: &Database) -> Result<HashMap<u32, (u64, u64)>, SpoolError> {
    let txn = db.begin_read()?;
    let Some(table) = super::open_if_created(&txn, SEGMENT_USAGE)? else {
        return Ok(HashMap::new());
    };
    let mut usage = HashMap::new();
    for entry in table.iter()? {
        let (segment, value) = entry?;
        usage.insert(segment.value(), value.value());
    }
    Ok(usage)
}

/// Every (message, body place) whose body is in one of `segments`, by id.
/// Walks the whole `body_refs` table: for compaction, which runs when idle.
pub(crate) fn bodies_in(
    db: &Database,
    segments: &HashSet<u32>,
) -> Result<Vec<(MessageId, BodyRef)>, SpoolError> {
    let txn = db.begin_read()?;
    let Some(table) = super::open_if_created(&txn, BODY_REFS)? else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for entry in table.iter()? {
        let (id, value) = entry?;
        let at = to_ref(value.value());
        if segments.contains(&at.segment) {
            found.push((id.value(), at));
        }
    }
    Ok(found)
}

impl WriteTables<'_> {
    /// Points message `id` at the copy of its body at `to`, if its body is
    /// still at `from` (it may have left the spool meanwhile).
    pub(crate) fn move_body(
        &mut self,
        id: MessageId,
        from: BodyRef,
        to: BodyRef,
    ) -> Result<bool, SpoolError> {
        let current = self.body_refs.get(id)?.map(|v| to_ref(v.value()));
        if current != Some(from) {
            return Ok(false);
        }
        self.body_refs.insert(id, (to.segment, to.offset, to.len))?;
        self.count_usage(from, -1);
        self.count_usage(to, 1);
        Ok(true)
    }
}
