//! The fleet's quota counters in PostgreSQL: the tables and every statement
//! the ledger (`cluster::quota`) runs on them.
//!
//! `quota_usage.used` counts, per quota key, what the fleet accepted plus
//! what is leased and not yet spent; `quota_leases` says which node holds
//! how much of that unspent and until when. Spending is recorded in the
//! lease row ([`spend`]) before the message is committed, or, for at most
//! the row's `unrecorded_cap`, after it: `used <= limit` is the invariant.
//! A lease that expires (a killed node) is given back by whoever sees it
//! expired, all but its `unrecorded_cap`, which stays in "limbo" because
//! the dead node may have acknowledged that much without recording it. The
//! node settles its limbo when it starts again ([`settle_previous_run`]):
//! its spool counted every message it committed, and `quota_node_spent`
//! says how much of that PostgreSQL already knows.

use sendengine_queue::{Quota, Window};
use tokio_postgres::Client;

use super::postgres::{DbError, Prepared, timed};

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
CREATE INDEX IF NOT EXISTS quota_leases_key ON quota_leases (name, quota_window, period);
ALTER TABLE quota_leases ADD COLUMN IF NOT EXISTS unrecorded_cap bigint NOT NULL DEFAULT 0;
ALTER TABLE quota_leases ADD COLUMN IF NOT EXISTS limbo boolean NOT NULL DEFAULT false;
CREATE TABLE IF NOT EXISTS quota_node_spent (
  node text NOT NULL, name text NOT NULL, quota_window smallint NOT NULL,
  period integer NOT NULL, spent bigint NOT NULL,
  PRIMARY KEY (node, name, quota_window, period))";

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

/// The windows in the order of their codes in `quota_usage.quota_window`
/// (0 daily, 1 monthly, 2 rolling 30-day, 3 lifetime): one table both
/// ways, [`key_of`] and [`window_of`].
const WINDOW_CODES: [Window; 4] = [
    Window::Day,
    Window::Month,
    Window::Rolling30Days,
    Window::Lifetime,
];

/// The spool's window of a key's `window` code.
pub fn window_of(code: i16) -> Window {
    WINDOW_CODES[usize::try_from(code).unwrap_or(3).min(3)]
}

/// The counter key and first summed period of `q` at `now_ms`.
pub fn key_of(q: &Quota, now_ms: u64) -> (Key, i32) {
    let window = WINDOW_CODES
        .iter()
        .position(|w| *w == q.window)
        .unwrap_or(3) as i16;
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

/// One block granted.
#[derive(Debug)]
pub struct Grant {
    pub key: Key,
    pub block: u64,
    /// This node's lease row amount after the grant.
    pub row_after: u64,
    /// How much of the row this node may spend before recording it.
    pub unrecorded_cap: u64,
}

/// How much of a lease of `block` may be spent before PostgreSQL records
/// it: a quarter of a large block (at most [`MAX_UNRECORDED`]), nothing of
/// a small one. It is what a killed node's lease keeps in limbo, so near a
/// limit, where blocks are small, every spend is recorded before its 250.
pub fn unrecorded_cap(block: u64) -> u64 {
    if block < 64 {
        0
    } else {
        (block / 4).min(MAX_UNRECORDED)
    }
}

/// The most of one key a node may have acknowledged and not recorded.
pub const MAX_UNRECORDED: u64 = 128;

/// What a lease transaction did.
#[derive(Debug)]
pub enum Leased {
    /// Every ask was granted.
    Granted(Vec<Grant>),
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
                "INSERT INTO quota_leases \
                   (node, name, quota_window, period, amount, expires_at, unrecorded_cap) \
                 VALUES ($1, $2, $3, $4, $5, now() + interval '{LEASE_TTL_SECS} seconds', $6) \
                 ON CONFLICT (node, name, quota_window, period) DO UPDATE \
                 SET amount = quota_leases.amount + EXCLUDED.amount, expires_at = EXCLUDED.expires_at, \
                   unrecorded_cap = greatest(quota_leases.unrecorded_cap, EXCLUDED.unrecorded_cap), \
                   limbo = false \
                 RETURNING amount, unrecorded_cap"
            ),
            &[&node, &k.name, &k.window, &k.period, &i(block), &i(unrecorded_cap(block))],
        ))
        .await?;
        granted.push(Grant {
            key: k.clone(),
            block,
            row_after: u(row.get(0)),
            unrecorded_cap: u(row.get(1)),
        });
    }
    timed(tx.commit()).await?;
    Ok(Leased::Granted(granted))
}

/// One key's part of a spend flush (`quota_spend`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpendSum {
    /// Taken off this node's lease row: spends recorded before their
    /// commit and those recorded after it.
    pub lease: u64,
    /// Of `lease`, spends of messages already committed (recorded after
    /// the commit): counted as accepted even if the row is gone.
    pub committed: u64,
    /// Spends recorded before their commit whose commit succeeded: only
    /// added to this node's total (`quota_node_spent`).
    pub confirmed: u64,
}

/// Records a batch of spends in one statement: each of this node's lease
/// rows loses its `lease` sum, which stays in `used` (accepted); committed
/// spends whose row is gone are added to `used` directly; this node's
/// total of committed spends grows. Returns the keys whose row was found
/// (a missing one expired and was reclaimed: nothing was spent from it).
pub async fn spend(
    client: &Client,
    prepared: &mut Prepared,
    node: &str,
    spends: &[(Key, SpendSum)],
) -> Result<Vec<Key>, DbError> {
    let names: Vec<&str> = spends.iter().map(|(k, _)| k.name.as_str()).collect();
    let windows: Vec<i16> = spends.iter().map(|(k, _)| k.window).collect();
    let periods: Vec<i32> = spends.iter().map(|(k, _)| k.period).collect();
    let lease: Vec<i64> = spends.iter().map(|(_, s)| i(s.lease)).collect();
    let committed: Vec<i64> = spends.iter().map(|(_, s)| i(s.committed)).collect();
    let confirmed: Vec<i64> = spends.iter().map(|(_, s)| i(s.confirmed)).collect();
    let statement = prepared.get(client, SPEND).await?;
    let rows = timed(client.query(
        &statement,
        &[
            &node, &names, &windows, &periods, &lease, &committed, &confirmed,
        ],
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

/// The statement of [`spend`], prepared once per connection: a busy node
/// runs it hundreds of times a second.
const SPEND: &str = "WITH v AS (SELECT * FROM unnest($2::text[], $3::int2[], $4::int4[], $5::int8[], \
         $6::int8[], $7::int8[]) AS v(name, w, p, lease, committed, confirmed)), \
     l AS (UPDATE quota_leases q SET amount = q.amount - v.lease FROM v \
       WHERE v.lease > 0 AND q.node = $1 AND q.name = v.name AND q.quota_window = v.w \
       AND q.period = v.p RETURNING q.name, q.quota_window, q.period), \
     c AS (INSERT INTO quota_usage (name, quota_window, period, used) \
       SELECT name, w, p, committed FROM v WHERE committed > 0 AND NOT EXISTS \
         (SELECT 1 FROM l WHERE l.name = v.name AND l.quota_window = v.w AND l.period = v.p) \
       ON CONFLICT (name, quota_window, period) \
       DO UPDATE SET used = quota_usage.used + EXCLUDED.used), \
     t AS (INSERT INTO quota_node_spent (node, name, quota_window, period, spent) \
       SELECT $1, name, w, p, committed + confirmed FROM v WHERE committed + confirmed > 0 \
       ON CONFLICT (node, name, quota_window, period) \
       DO UPDATE SET spent = quota_node_spent.spent + EXCLUDED.spent) \
     SELECT name, quota_window, period FROM l";

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
               AND NOT limbo RETURNING amount), \
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

/// Adds `n` to the usage of `key` directly (counts of unlimited quotas,
/// committed), and to this node's total.
pub async fn count(client: &Client, node: &str, key: &Key, n: u64) -> Result<(), DbError> {
    timed(client.execute(
        "WITH c AS (INSERT INTO quota_usage (name, quota_window, period, used) \
           VALUES ($1, $2, $3, $4) ON CONFLICT (name, quota_window, period) \
           DO UPDATE SET used = quota_usage.used + EXCLUDED.used) \
         INSERT INTO quota_node_spent (node, name, quota_window, period, spent) \
         VALUES ($5, $1, $2, $3, $4) ON CONFLICT (node, name, quota_window, period) \
         DO UPDATE SET spent = quota_node_spent.spent + EXCLUDED.spent",
        &[&key.name, &key.window, &key.period, &i(n), &node],
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

/// Gives back the leases that expired (a killed node's), all but their
/// `unrecorded_cap`, which stays in limbo until that node starts again.
/// Returns how many leases were reclaimed.
pub async fn reclaim_expired(client: &Client) -> Result<u64, DbError> {
    let row = timed(client.query_one(
        "WITH old AS (SELECT node, name, quota_window, period, amount, \
             least(amount, unrecorded_cap) AS kept \
           FROM quota_leases WHERE expires_at < now() AND NOT limbo FOR UPDATE), \
         gone AS (DELETE FROM quota_leases q USING old WHERE old.kept = 0 AND q.node = old.node \
           AND q.name = old.name AND q.quota_window = old.quota_window AND q.period = old.period), \
         kept AS (UPDATE quota_leases q SET amount = old.kept, limbo = true FROM old \
           WHERE old.kept > 0 AND q.node = old.node AND q.name = old.name \
           AND q.quota_window = old.quota_window AND q.period = old.period), \
         s AS (SELECT name, quota_window, period, sum(amount - kept)::bigint AS back, \
             count(*) AS n FROM old GROUP BY 1, 2, 3), \
         u AS (UPDATE quota_usage q SET used = greatest(q.used - s.back, 0) FROM s \
           WHERE s.back > 0 AND q.name = s.name AND q.quota_window = s.quota_window \
           AND q.period = s.period) \
         SELECT coalesce(sum(n), 0)::bigint FROM s",
        &[],
    ))
    .await?;
    Ok(u(row.get(0)))
}

/// One of this node's lease rows left by its previous run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousLease {
    pub key: Key,
    /// What PostgreSQL holds as unspent.
    pub amount: u64,
    /// What PostgreSQL knows this node committed of the key.
    pub recorded: u64,
}

/// Settles what this node's previous run left (at start, before the node
/// takes any quota): `committed(key)` is what the spool counted of each
/// key; what PostgreSQL does not know of it was spent unrecorded (at most
/// the lease's amount), the rest of each lease goes back. Old daily totals
/// (before `oldest_day`) are dropped. Returns how many leases were settled.
pub async fn settle_previous_run(
    client: &mut Client,
    node: &str,
    oldest_day: i32,
    committed: impl Fn(&Key) -> u64,
) -> Result<u64, DbError> {
    let tx = timed(client.transaction()).await?;
    let rows = timed(tx.query(
        "SELECT l.name, l.quota_window, l.period, l.amount, coalesce(s.spent, 0) \
         FROM quota_leases l LEFT JOIN quota_node_spent s ON s.node = l.node \
           AND s.name = l.name AND s.quota_window = l.quota_window AND s.period = l.period \
         WHERE l.node = $1 FOR UPDATE OF l",
        &[&node],
    ))
    .await?;
    let previous: Vec<PreviousLease> = rows
        .iter()
        .map(|r| PreviousLease {
            key: Key {
                name: r.get(0),
                window: r.get(1),
                period: r.get(2),
            },
            amount: u(r.get(3)),
            recorded: u(r.get(4)),
        })
        .collect();
    for lease in &previous {
        let counted = committed(&lease.key);
        let give_back = lease.amount - unrecorded_spend(lease, counted);
        timed(tx.execute(
            "WITH d AS (DELETE FROM quota_leases WHERE node = $1 AND name = $2 \
               AND quota_window = $3 AND period = $4), \
             u AS (UPDATE quota_usage SET used = greatest(used - $5, 0) \
               WHERE name = $2 AND quota_window = $3 AND period = $4) \
             INSERT INTO quota_node_spent (node, name, quota_window, period, spent) \
             VALUES ($1, $2, $3, $4, $6) ON CONFLICT (node, name, quota_window, period) \
             DO UPDATE SET spent = greatest(quota_node_spent.spent, EXCLUDED.spent)",
            &[
                &node,
                &lease.key.name,
                &lease.key.window,
                &lease.key.period,
                &i(give_back),
                &i(counted.max(lease.recorded)),
            ],
        ))
        .await?;
    }
    timed(tx.execute(
        "DELETE FROM quota_node_spent WHERE node = $1 AND quota_window IN (0, 2) AND period < $2",
        &[&node, &oldest_day],
    ))
    .await?;
    timed(tx.commit()).await?;
    Ok(previous.len() as u64)
}

/// What of `lease` was spent without being recorded: what the spool
/// counted beyond what PostgreSQL knows, never more than the lease holds
/// (counts from before cluster mode make it larger: fewer accepted).
pub fn unrecorded_spend(lease: &PreviousLease, counted: u64) -> u64 {
    counted.saturating_sub(lease.recorded).min(lease.amount)
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
        for (key, window) in [
            (&day, Window::Day),
            (&rolling, Window::Rolling30Days),
            (&life, Window::Lifetime),
        ] {
            assert_eq!(window_of(key.window), window, "codes go both ways");
        }
        assert_eq!(Key::from_payload(&day.payload()), Some(day));
    }

    #[test]
    fn only_a_large_lease_is_spent_unrecorded_and_a_restart_settles_what_the_spool_counted() {
        assert_eq!(
            unrecorded_cap(12),
            0,
            "near a limit every spend is recorded first"
        );
        assert_eq!(unrecorded_cap(100), 25);
        assert_eq!(unrecorded_cap(500), 125);
        assert_eq!(
            unrecorded_cap(2000),
            MAX_UNRECORDED,
            "a big message's lease"
        );
        let lease = PreviousLease {
            key: Key {
                name: "user:a".into(),
                window: 0,
                period: 1,
            },
            amount: 30,
            recorded: 100,
        };
        assert_eq!(
            unrecorded_spend(&lease, 107),
            7,
            "7 committed, not recorded"
        );
        assert_eq!(unrecorded_spend(&lease, 100), 0);
        assert_eq!(unrecorded_spend(&lease, 95), 0, "recorded, then refused");
        assert_eq!(
            unrecorded_spend(&lease, 500),
            30,
            "never more than the lease"
        );
    }
}
