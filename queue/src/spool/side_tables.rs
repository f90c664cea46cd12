//! The `Spool` handle's side tables: configuration objects, suppression
//! lists, webhook backlogs, HTTP idempotency rows and the daily report
//! counters. They share the queue's database, writer and group commits;
//! `spool.rs` keeps the queue itself (messages, recipients, schedule).

use super::Spool;
use crate::backlog::{self, BacklogEntry, BacklogRequest, BacklogWritten};
use crate::daily::{self, DailyRequest, DailyRow};
use crate::error::SpoolError;
use crate::idempotency::{self, IdempotencyRequest, IdempotencyRow};
use crate::requests::{ObjectWrite, Request, SuppressRequest};
use crate::select::MAX_PAGE;
use crate::store;
use crate::suppress::{self, Suppression};

impl Spool {
    /// Stores a configuration object (durably); returns whether it replaced one.
    pub fn put_object(&self, kind: &str, name: &str, value: Vec<u8>) -> Result<bool, SpoolError> {
        self.write_object(kind, name, Some(value))
    }

    /// Deletes a configuration object; returns whether it existed.
    pub fn delete_object(&self, kind: &str, name: &str) -> Result<bool, SpoolError> {
        self.write_object(kind, name, None)
    }

    fn write_object(
        &self,
        kind: &str,
        name: &str,
        value: Option<Vec<u8>>,
    ) -> Result<bool, SpoolError> {
        self.wait_for(|done| {
            self.submit(Request::Object(ObjectWrite {
                kind: kind.to_owned(),
                name: name.to_owned(),
                value,
                done,
            }))
        })
    }

    /// Every configuration object of `kind`, as (name, value), by name.
    pub fn objects(&self, kind: &str) -> Result<Vec<(String, Vec<u8>)>, SpoolError> {
        self.inner.shared.read(|db| store::objects(db, kind))
    }

    /// Adds `address` to `tenant`'s suppression list ("" = the global
    /// list), durably; returns whether it is new there (an entry already
    /// present gets the new reason, source and time).
    pub fn suppress(
        &self,
        tenant: &str,
        address: &str,
        reason: &str,
        source: &str,
    ) -> Result<bool, SpoolError> {
        self.wait_for(|done| self.suppress_then(tenant, address, reason, source, done))
            .map(|existed| !existed)
    }

    /// [`Spool::suppress`] without waiting: `done` runs on the writer thread
    /// after the commit with whether the address was listed before. Usable
    /// from a completion callback, where the blocking form is refused.
    pub fn suppress_then(
        &self,
        tenant: &str,
        address: &str,
        reason: &str,
        source: &str,
        done: Box<dyn FnOnce(Result<bool, SpoolError>) + Send>,
    ) {
        let address = match suppress::normalize(address) {
            Ok(a) => a,
            Err(err) => return done(Err(err)),
        };
        let entry = (
            suppress::clip(reason).to_owned(),
            suppress::clip(source).to_owned(),
        );
        self.submit(Request::Suppress(SuppressRequest {
            tenant: tenant.to_owned(),
            address,
            entry: Some(entry),
            done,
        }));
    }

    /// Takes `address` off `tenant`'s list (only that one: removing from
    /// a tenant's list leaves the global list alone); returns whether it
    /// was there.
    pub fn unsuppress(&self, tenant: &str, address: &str) -> Result<bool, SpoolError> {
        let address = suppress::normalize(address)?;
        self.wait_for(|done| {
            self.submit(Request::Suppress(SuppressRequest {
                tenant: tenant.to_owned(),
                address,
                entry: None,
                done,
            }))
        })
    }

    /// Per address, whether it is on `tenant`'s list or the global one.
    /// Case does not matter; an address too long or empty to be listed is
    /// reported as not suppressed.
    pub fn suppressed(&self, tenant: &str, addresses: &[String]) -> Result<Vec<bool>, SpoolError> {
        let keys: Vec<String> = addresses
            .iter()
            .map(|a| suppress::normalize(a).unwrap_or_default())
            .collect();
        self.inner
            .shared
            .read(|db| store::suppressed(db, tenant, &keys))
    }

    /// The entry for `address` on `tenant`'s own list ("" = the global
    /// list), if any.
    pub fn suppression(
        &self,
        tenant: &str,
        address: &str,
    ) -> Result<Option<Suppression>, SpoolError> {
        let address = suppress::normalize(address)?;
        self.inner
            .shared
            .read(|db| store::suppression(db, tenant, &address))
    }

    /// Up to `limit` (at most `MAX_PAGE`) entries of `tenant`'s own list
    /// ("" = the global list), by address.
    pub fn suppressions(&self, tenant: &str, limit: usize) -> Result<Vec<Suppression>, SpoolError> {
        let limit = limit.min(MAX_PAGE);
        self.inner
            .shared
            .read(|db| store::suppressions(db, tenant, limit))
    }

    /// Appends events to the backlog `sink` in the next group commit and,
    /// if it then holds more than `max_entries`, deletes the oldest (the
    /// result says how many). `done` runs on the writer thread after the
    /// commit; keep it cheap.
    pub fn backlog_append(
        &self,
        sink: &str,
        events: Vec<Vec<u8>>,
        max_entries: u64,
        done: Box<dyn FnOnce(Result<BacklogWritten, SpoolError>) + Send>,
    ) {
        self.backlog_write(sink, events, max_entries, None, done);
    }

    /// Deletes the backlog's events up to sequence number `through`
    /// (posted ones), waiting for the commit.
    pub fn backlog_delete_through(
        &self,
        sink: &str,
        through: u64,
    ) -> Result<BacklogWritten, SpoolError> {
        self.wait_for(|done| self.backlog_write(sink, Vec::new(), u64::MAX, Some(through), done))
    }

    /// [`Spool::backlog_append`], waiting for the commit. With no events,
    /// a barrier: every request submitted before it has completed.
    pub fn backlog_append_blocking(
        &self,
        sink: &str,
        events: Vec<Vec<u8>>,
        max_entries: u64,
    ) -> Result<BacklogWritten, SpoolError> {
        self.wait_for(|done| self.backlog_append(sink, events, max_entries, done))
    }

    fn backlog_write(
        &self,
        sink: &str,
        append: Vec<Vec<u8>>,
        max_entries: u64,
        delete_through: Option<u64>,
        done: Box<dyn FnOnce(Result<BacklogWritten, SpoolError>) + Send>,
    ) {
        if let Err(err) = backlog::check_sink_name(sink) {
            return done(Err(err));
        }
        self.submit(Request::Backlog(BacklogRequest {
            sink: sink.to_owned(),
            append,
            max_entries,
            delete_through,
            done,
        }));
    }

    /// The oldest `limit` events of the backlog `sink`, oldest first.
    pub fn backlog_peek(&self, sink: &str, limit: usize) -> Result<Vec<BacklogEntry>, SpoolError> {
        self.inner.shared.read(|db| backlog::peek(db, sink, limit))
    }

    /// Stores idempotency rows in the next group commit; `done` runs on
    /// the writer thread after the durable commit (keep it cheap).
    pub fn idempotency_put(
        &self,
        rows: Vec<IdempotencyRow>,
        done: Box<dyn FnOnce(Result<u64, SpoolError>) + Send>,
    ) {
        if let Some(err) = rows.iter().find_map(|r| r.check().err()) {
            return done(Err(err));
        }
        self.submit(Request::Idempotency(IdempotencyRequest {
            put: rows,
            expire_before_ms: None,
            done,
        }));
    }

    /// [`Spool::idempotency_put`], waiting for the commit.
    pub fn idempotency_put_blocking(&self, rows: Vec<IdempotencyRow>) -> Result<(), SpoolError> {
        self.wait_for(|done| self.idempotency_put(rows, done))
            .map(|_| ())
    }

    /// Removes the idempotency rows that expired before `now_ms`; returns
    /// how many went.
    pub fn idempotency_expire_blocking(&self, now_ms: u64) -> Result<u64, SpoolError> {
        self.wait_for(|done| {
            self.submit(Request::Idempotency(IdempotencyRequest {
                put: Vec::new(),
                expire_before_ms: Some(now_ms),
                done,
            }))
        })
    }

    /// The idempotency row under `key`, unless it expired before `now_ms`.
    pub fn idempotency_get(
        &self,
        key: &str,
        now_ms: u64,
    ) -> Result<Option<IdempotencyRow>, SpoolError> {
        self.inner
            .shared
            .read(|db| idempotency::get(db, key, now_ms))
    }

    /// The unexpired idempotency rows whose keys start with `prefix`, in
    /// key order, at most `limit`.
    pub fn idempotency_with_prefix(
        &self,
        prefix: &str,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<IdempotencyRow>, SpoolError> {
        self.inner
            .shared
            .read(|db| idempotency::with_prefix(db, prefix, now_ms, limit))
    }

    /// How many events the backlog `sink` holds.
    #[cfg(test)]
    pub(crate) fn backlog_len(&self, sink: &str) -> Result<u64, SpoolError> {
        self.inner.shared.read(|db| backlog::len(db, sink))
    }

    /// Replaces the daily report rows given and deletes the days before
    /// `prune_before`, in the next group commit. `done` runs on the writer
    /// thread after the commit; keep it cheap.
    pub fn daily_write(
        &self,
        rows: Vec<DailyRow>,
        prune_before: Option<u32>,
        done: Box<dyn FnOnce(Result<(), SpoolError>) + Send>,
    ) {
        self.submit(Request::Daily(DailyRequest {
            rows,
            prune_before,
            done,
        }));
    }

    /// [`Spool::daily_write`], waiting for the commit.
    pub fn daily_write_blocking(
        &self,
        rows: Vec<DailyRow>,
        prune_before: Option<u32>,
    ) -> Result<(), SpoolError> {
        self.wait_for(|done| self.daily_write(rows, prune_before, done))
    }

    /// The daily report rows of UTC day `day` (days since 1970-01-01):
    /// every tenant's, or only `tenant`'s.
    pub fn daily_rows(&self, day: u32, tenant: Option<&str>) -> Result<Vec<DailyRow>, SpoolError> {
        self.inner
            .shared
            .read(|db| daily::read_day(db, day, tenant))
    }
}
