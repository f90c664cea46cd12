//! Sending quotas: counters checked and bumped in the same write transaction
//! as the message they count.
//!
//! A `Quota` travels with a `NewMessage`. The writer thread, which applies
//! inserts one after another, reads the counter, refuses the insert if it
//! would pass the limit, and otherwise adds the amount; a failed commit
//! rolls the counter back with the message. So counts are exact under any
//! concurrency and survive restarts, without a lock of their own.
//!
//! Counters live in the `usage` table, keyed by (name, window kind, bucket):
//! a UTC day number for `Day` and `Rolling30Days` (the rolling window sums
//! the last 30 days' buckets), year*12+month for `Month`, 0 for `Lifetime`.

const DAY_MS: u64 = 86_400_000;
pub(crate) const ROLLING_DAYS: u32 = 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The current UTC day.
    Day,
    /// The current UTC calendar month.
    Month,
    /// The last 30 UTC days, today included.
    Rolling30Days,
    Lifetime,
}

impl Window {
    pub fn name(self) -> &'static str {
        match self {
            Window::Day => "daily",
            Window::Month => "monthly",
            Window::Rolling30Days => "rolling 30-day",
            Window::Lifetime => "lifetime",
        }
    }

    /// The key space of this window in the `usage` table.
    pub(crate) fn kind(self) -> u8 {
        match self {
            Window::Day | Window::Rolling30Days => 0,
            Window::Month => 1,
            Window::Lifetime => 2,
        }
    }

    /// The bucket `now_ms` falls in.
    pub fn bucket(self, now_ms: u64) -> u32 {
        match self {
            Window::Day | Window::Rolling30Days => day_number(now_ms),
            Window::Month => {
                let (year, month) = year_month(day_number(now_ms));
                year * 12 + (month - 1)
            }
            Window::Lifetime => 0,
        }
    }

    /// The buckets whose sum is the current usage.
    pub fn buckets(self, now_ms: u64) -> std::ops::RangeInclusive<u32> {
        let b = self.bucket(now_ms);
        match self {
            Window::Rolling30Days => b.saturating_sub(ROLLING_DAYS - 1)..=b,
            _ => b..=b,
        }
    }

    /// The usage now and when it next goes down, from the counts of the
    /// buckets in `buckets(now_ms)` as (bucket, count), in any order.
    /// Daily and monthly usage goes to zero at the end of the UTC day or
    /// month; a rolling window's goes down when its oldest counted day
    /// leaves it, by that day's count; a lifetime's never does.
    pub fn standing(self, counts: &[(u32, u64)], now_ms: u64) -> Standing {
        let used = counts.iter().map(|&(_, n)| n).sum();
        let next_release = match self {
            Window::Day | Window::Month => self.resets_at_ms(now_ms).map(|at_ms| Release {
                at_ms,
                amount: used,
            }),
            Window::Rolling30Days => counts
                .iter()
                .filter(|&&(_, n)| n > 0)
                .min_by_key(|&&(bucket, _)| bucket)
                .map(|&(bucket, amount)| Release {
                    at_ms: (u64::from(bucket) + u64::from(ROLLING_DAYS)) * DAY_MS,
                    amount,
                }),
            Window::Lifetime => None,
        };
        Standing { used, next_release }
    }

    /// When the usage of a daily or monthly window next goes down (to
    /// zero). `None` for a lifetime limit, and for a rolling window, whose
    /// usage goes down when a counted day leaves it: see [`Window::standing`].
    pub fn resets_at_ms(self, now_ms: u64) -> Option<u64> {
        let day = u64::from(day_number(now_ms));
        match self {
            Window::Day => Some((day + 1) * DAY_MS),
            Window::Month => {
                let (year, month) = year_month(day as u32);
                let (ny, nm) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                Some(u64::from(days_from_civil(ny, nm, 1)) * DAY_MS)
            }
            Window::Lifetime | Window::Rolling30Days => None,
        }
    }
}

/// How much of a window is used and when some of it frees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    pub used: u64,
    /// `None`: nothing will free (a lifetime limit, or an unused rolling window).
    pub next_release: Option<Release>,
}

/// `amount` of the usage leaves the window at `at_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Release {
    pub at_ms: u64,
    pub amount: u64,
}

/// A limit to enforce on an insert: `amount` more must keep the usage of
/// `name` in `window` at most `limit`. A `limit` of 0 only counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    pub name: String,
    pub window: Window,
    pub limit: u64,
    pub amount: u64,
}

/// Why an insert was refused by a quota; the spool stored nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub name: String,
    pub window: Window,
    pub limit: u64,
    pub used: u64,
    pub resets_at_ms: Option<u64>,
}

fn day_number(now_ms: u64) -> u32 {
    (now_ms / DAY_MS) as u32
}

/// (year, month 1-12) of a day number (Howard Hinnant's civil_from_days).
fn year_month(day: u32) -> (u32, u32) {
    let z = i64::from(day) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as u32, month as u32)
}

/// Day number of a civil date (days_from_civil).
fn days_from_civil(year: u32, month: u32, day: u32) -> u32 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-21 10:30 UTC
    const NOW: u64 = 1_795_257_000_000;

    #[test]
    fn buckets_and_resets() {
        assert_eq!(Window::Day.resets_at_ms(NOW), Some(1_795_305_600_000)); // 2026-11-22
        assert_eq!(Window::Month.resets_at_ms(NOW), Some(1_796_083_200_000)); // 2026-12-01
        assert_eq!(Window::Lifetime.resets_at_ms(NOW), None);
        assert_eq!(Window::Month.bucket(NOW), 2026 * 12 + 10);
        let r = Window::Rolling30Days.buckets(NOW);
        assert_eq!(r.end() - r.start(), 29);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(year_month(days_from_civil(2024, 2, 29)), (2024, 2));
    }

    #[test]
    fn a_rolling_window_frees_its_oldest_counted_day() {
        let today = day_number(NOW);
        let counts = [
            (today, 4),
            (today - 29, 0),
            (today - 20, 3),
            (today - 25, 2),
        ];
        let s = Window::Rolling30Days.standing(&counts, NOW);
        assert_eq!(s.used, 9);
        let release = s.next_release.unwrap();
        // The day 25 days ago leaves the window 5 days from today's start.
        assert_eq!(release.at_ms, u64::from(today + 5) * DAY_MS);
        assert_eq!(release.amount, 2);
        assert_eq!(Window::Rolling30Days.standing(&[], NOW).next_release, None);
        let day = Window::Day.standing(&[(today, 7)], NOW);
        assert_eq!(
            day.next_release.map(|r| (r.at_ms, r.amount)),
            Some((1_795_305_600_000, 7))
        );
        assert_eq!(Window::Lifetime.standing(&[(0, 7)], NOW).next_release, None);
    }

    #[test]
    fn december_rolls_into_the_next_year() {
        let dec = u64::from(days_from_civil(2026, 12, 15)) * DAY_MS;
        let jan = u64::from(days_from_civil(2027, 1, 1)) * DAY_MS;
        assert_eq!(Window::Month.resets_at_ms(dec), Some(jan));
    }
}
