//! The fleet's quota counters in PostgreSQL: the tables and every statement
//! the ledger (`cluster::quota`) runs on them.
//!
//! `quota_usage.used` counts, per quota key, what the fleet accepted plus
//! what is leased and not yet spent; `quota_leases` says which node holds
//! how much of that unspent and until when. Spending is recorded in the
//! lease row before the message is committed ([`spend`]), so the row never
//! holds what was acknowledged: `used <= limit` is the invariant, and a
//! lease that expires (a killed node) is subtracted back by whoever sees it
//! expired without giving back anything that was accepted.

use sendengine_queue::{Quota, Window};
use tokio_postgres::Client;

use super::postgres::{DbError, timed};

/// How long a lease lives in PostgreSQL without being renewed. A node stops
/// spending a lease [`LEASE_MARGIN_SECS`] before this, by its own clock
/// started before asking, so no node spends what another may reclaim.
pub const LEASE_TTL_SECS: u64 = 10;
pub const LEASE_MARGIN_SECS: u64 = 2;

/// The tables; idempotent, run under the schema lock by every node at start.
pub const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS quota_usage (
  name text NOT NULL, quota_window smallint NOT NULL, period integer NOT NULL,
  used bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (name, quota_window, period));
CREATE TABLE IF NOT EXISTS quota_leases (
  node text NOT NULL, name text NOT NULL, quota_window smallint NOT NULL,
  period integer NOT NULL, amount bigint NOT NULL, expires_at timestamptz NOT NULL,
  PRIMARY KEY (node, name, quota_window, period));
CREATE INDEX IF NOT EXISTS quota_leases_expiry ON quota_leases (expires_at);
CREATE INDEX IF NOT EXISTS quota_leases_key ON quota_leases (name, quota_window, period)";

/// The channel a node NOTIFYs when it is refused while others hold leases
/// of the same key: they give back what they do not use.
pub const RETURN_CHANNEL: &str = "sendengine_quota_return";

/// One counter: a quota name in one window's period (day number, month
/// number, 0 for lifetime). `window` codes: 0 daily, 1 monthly, 2 rolling
/// 30-day (one row per day, summed over 30), 3 lifetime.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub name: String,
    pub window: i16,
    pub period: i32,
}

impl Key {
    /// The NOTIFY payload naming this key.
    pub fn payload(&self) -> String {
        format!("{}:{}:{}", self.window, self.period, self.name)
    }

    pub fn from_payload(payload: &str) -> Option<Key> {
        let mut parts = payload.splitn(3, ':');
        let window = parts.next()?.parse().ok()?;
        let period = parts.next()?.parse().ok()?;
        let name = parts.next()?.to_owned();
        Some(Key {
            name,
            window,
            period,
        })
    }
}

/// The counter key and first summed period of `q` at `now_ms`.
pub fn key_of(q: &Quota, now_ms: u64) -> (Key, i32) {
    let window = match q.window {
        Window::Day => 0,
        Window::Month => 1,
        Window::Rolling30Days => 2,
        Window::Lifetime => 3,
    };
    let buckets = q.window.buckets(now_ms);
    let key = Key {
        name: q.name.clone(),
        window,
        period: *buckets.end() as i32,
    };
    (key, *buckets.start() as i32)
}

/// A block a node asks for: at least `need` more of `key`, whose usage is
/// the sum of periods `first..=key.period`, within `limit`.
#[derive(Clone, Debug)]
pub struct Ask {
    pub key: Key,
    pub first: i32,
    pub limit: u64,
    pub need: u64,
}

/// What a lease transaction did.
#[derive(Debug)]
pub enum Leased {
    /// Every ask was granted: (key, block granted, this node's lease row
    /// amount after it).
    Granted(Vec<(Key, u64, u64)>),
    /// `key` has not `need` left: its usage, and how much other nodes hold
    /// unspent (which may come back). Nothing was taken.
    Refused { key: Key, used: u64, others: u64 },
}

fn i(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn u(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Leases a block for every ask in one transaction (all or nothing), rows
/// locked in key order so that nodes cannot deadlock each other.
pub async fn lease(
    client: &mut Client,
    node: &str,
    asks: &[Ask],
    size: impl Fn(u64, u64, u64) -> Option<u64>,
) -> Result<Leased, DbError> {
    let mut asks = asks.to_vec();
    asks.sort_by(|a, b| a.key.cmp(&b.key));
    let tx = timed(client.transaction()).await?;
    let mut granted = Vec::new();
    for ask in &asks {
        let k = &ask.key;
        let row = timed(tx.query_one(
            "INSERT INTO quota_usage (name, quota_window, period, used) VALUES ($1, $2, $3, 0) \
             ON CONFLICT (name, quota_window, period) DO UPDATE SET used = quota_usage.used \
             RETURNING used",
            &[&k.name, &k.window, &k.period],
        ))
        .await?;
        let mut used = u(row.get(0));
        if ask.first < k.period {
            let row = timed(tx.query_one(
                "SELECT coalesce(sum(used), 0)::bigint FROM quota_usage \
                 WHERE name = $1 AND quota_window = $2 AND period BETWEEN $3 AND $4",
                &[&k.name, &k.window, &ask.first, &k.period],
            ))
            .await?;
            used = u(row.get(0));
        }
        let Some(block) = size(ask.need, ask.limit, used) else {
            let row = timed(tx.query_one(
                "SELECT coalesce(sum(amount), 0)::bigint FROM quota_leases \
                 WHERE name = $1 AND quota_window = $2 AND period = $3 AND node <> $4 \
                 AND expires_at > now()",
                &[&k.name, &k.window, &k.period, &node],
            ))
            .await?;
            let others = u(row.get(0));
            drop(tx);
            return Ok(Leased::Refused {
                key: k.clone(),
                used,
                others,
            });
        };
        timed(tx.execute(
            "UPDATE quota_usage SET used = used + $4 \
             WHERE name = $1 AND quota_window = $2 AND period = $3",
            &[&k.name, &k.window, &k.period, &i(block)],
        ))
        .await?;
        let row = timed(tx.query_one(
            &format!(
                "INSERT INTO quota_leases (node, name, quota_window, period, amount, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, now() + interval '{LEASE_TTL_SECS} seconds') \
                 ON CONFLICT (node, name, quota_window, period) DO UPDATE \
                 SET amount = quota_leases.amount + EXCLUDED.amount, expires_at = EXCLUDED.expires_at \
                 RETURNING amount"
            ),
            &[&node, &k.name, &k.window, &k.period, &i(block)],
        ))
        .await?;
        granted.push((k.clone(), block, u(row.get(0))));
    }
    timed(tx.commit()).await?;
    Ok(Leased::Granted(granted))
}

/// Records spending before the spool commit (`quota_spend`): each of this
/// node's lease rows of `spends` loses what its messages take, which stays
/// in `used` (accepted). One statement for the whole batch. Returns the
/// keys whose row was found (a missing one expired and was reclaimed:
/// nothing was spent from it).
pub async fn spend(
    client: &Client,
    node: &str,
    spends: &[(Key, u64)],
) -> Result<Vec<Key>, DbError> {
    let names: Vec<&str> = spends.iter().map(|(k, _)| k.name.as_str()).collect();
    let windows: Vec<i16> = spends.iter().map(|(k, _)| k.window).collect();
    let periods: Vec<i32> = spends.iter().map(|(k, _)| k.period).collect();
    let amounts: Vec<i64> = spends.iter().map(|(_, n)| i(*n)).collect();
    let rows = timed(client.query(
        "UPDATE quota_leases l SET amount = l.amount - v.n \
         FROM unnest($2::text[], $3::int2[], $4::int4[], $5::int8[]) AS v(name, w, p, n) \
         WHERE l.node = $1 AND l.name = v.name AND l.quota_window = v.w AND l.period = v.p \
         RETURNING l.name, l.quota_window, l.period",
        &[&node, &names, &windows, &periods, &amounts],
    ))
    .await?;
    Ok(rows
        .iter()
        .map(|r| Key {
            name: r.get(0),
            window: r.get(1),
            period: r.get(2),
        })
        .collect())
}

/// Gives back `give_back` of this node's lease of `key` and renews the
/// lease. Returns the lease's amount after, or None if the lease is gone
/// (it expired and was reclaimed: nothing was changed).
pub async fn settle(
    client: &Client,
    node: &str,
    key: &Key,
    give_back: u64,
) -> Result<Option<u64>, DbError> {
    let rows = timed(client.query(
        &format!(
            "WITH l AS (UPDATE quota_leases SET amount = amount - $5, \
               expires_at = now() + interval '{LEASE_TTL_SECS} seconds' \
               WHERE node = $1 AND name = $2 AND quota_window = $3 AND period = $4 \
               RETURNING amount), \
             u AS (UPDATE quota_usage SET used = greatest(used - $5, 0) \
               WHERE name = $2 AND quota_window = $3 AND period = $4 AND EXISTS (SELECT 1 FROM l)) \
             SELECT amount FROM l"
        ),
        &[&node, &key.name, &key.window, &key.period, &i(give_back)],
    ))
    .await?;
    Ok(rows.first().map(|r| u(r.get(0))))
}

/// Takes `n` off the usage of `key`: spending recorded for messages the
/// spool then refused (un-spent).
pub async fn uncount(client: &Client, key: &Key, n: u64) -> Result<(), DbError> {
    timed(client.execute(
        "UPDATE quota_usage SET used = greatest(used - $4, 0) \
         WHERE name = $1 AND quota_window = $2 AND period = $3",
        &[&key.name, &key.window, &key.period, &i(n)],
    ))
    .await?;
    Ok(())
}

/// Adds `n` to the usage of `key` directly: counts of unlimited quotas.
pub async fn count(client: &Client, key: &Key, n: u64) -> Result<(), DbError> {
    timed(client.execute(
        "INSERT INTO quota_usage (name, quota_window, period, used) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name, quota_window, period) DO UPDATE SET used = quota_usage.used + EXCLUDED.used",
        &[&key.name, &key.window, &key.period, &i(n)],
    ))
    .await?;
    Ok(())
}

/// Removes this node's empty lease row of `key`.
pub async fn forget(client: &Client, node: &str, key: &Key) -> Result<(), DbError> {
    timed(client.execute(
        "DELETE FROM quota_leases WHERE node = $1 AND name = $2 AND quota_window = $3 \
         AND period = $4 AND amount = 0",
        &[&node, &key.name, &key.window, &key.period],
    ))
    .await?;
    Ok(())
}

/// Gives back the leases that expired (any node: a killed node's), or all
/// of `own_node`'s (at start: what a previous run of this node held is
/// unknown to it now). Returns how many leases were reclaimed.
pub async fn reclaim(client: &Client, own_node: Option<&str>) -> Result<u64, DbError> {
    let which = match own_node {
        Some(_) => "node = $1",
        None => "expires_at < now() AND $1::text IS NULL",
    };
    let sql = format!(
        "WITH gone AS (DELETE FROM quota_leases WHERE {which} \
           RETURNING name, quota_window, period, amount), \
         s AS (SELECT name, quota_window, period, sum(amount)::bigint AS amount, count(*) AS n \
           FROM gone GROUP BY 1, 2, 3), \
         u AS (UPDATE quota_usage q SET used = greatest(q.used - s.amount, 0) FROM s \
           WHERE q.name = s.name AND q.quota_window = s.quota_window AND q.period = s.period) \
         SELECT coalesce(sum(n), 0)::bigint FROM s"
    );
    let row = timed(client.query_one(&sql, &[&own_node])).await?;
    Ok(u(row.get(0)))
}

/// Asks the other nodes to give back their unspent leases of `key`.
pub async fn ask_return(client: &Client, key: &Key) -> Result<(), DbError> {
    timed(client.execute(
        "SELECT pg_notify($1, $2)",
        &[&RETURN_CHANNEL, &key.payload()],
    ))
    .await?;
    Ok(())
}

/// The fleet's usage of `key` in periods `first..=key.period`: (period,
/// accepted plus leased) per counted period, and the leased and not yet
/// spent summed.
pub async fn usage(
    client: &Client,
    key: &Key,
    first: i32,
) -> Result<(Vec<(i32, u64)>, u64), DbError> {
    // One statement, one snapshot: leases only exist on counted periods.
    let rows = timed(client.query(
        "SELECT period, used, (SELECT coalesce(sum(amount), 0)::bigint FROM quota_leases \
           WHERE name = $1 AND quota_window = $2 AND period BETWEEN $3 AND $4) \
         FROM quota_usage WHERE name = $1 AND quota_window = $2 AND period BETWEEN $3 AND $4",
        &[&key.name, &key.window, &first, &key.period],
    ))
    .await?;
    let leased = rows.first().map_or(0, |row| u(row.get(2)));
    let periods = rows.iter().map(|row| (row.get(0), u(row.get(1)))).collect();
    Ok((periods, leased))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_spools_windows() {
        let q = |window| Quota {
            name: "user:a".into(),
            window,
            limit: 5,
            amount: 1,
        };
        let now = 1_795_257_000_000; // 2026-11-21
        let (day, first) = key_of(&q(Window::Day), now);
        assert_eq!((day.window, day.period, first), (0, 20778, 20778));
        let (rolling, first) = key_of(&q(Window::Rolling30Days), now);
        assert_eq!((rolling.period - first, rolling.window), (29, 2));
        let (life, _) = key_of(&q(Window::Lifetime), now);
        assert_eq!(life.period, 0);
        assert_eq!(Key::from_payload(&day.payload()), Some(day));
    }
}
