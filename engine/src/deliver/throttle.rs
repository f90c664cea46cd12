//! `Throttle`: a delivery server's message-rate limits (per second, hour,
//! day), as a GCRA (generic cell rate algorithm) per limit.
//!
//! Mail over a limit waits; it is never refused. For a limit of N per
//! period P each message is due `P/N` after the previous one, with a
//! tolerance of `P - P/N`: a quiet server may take a burst of up to N at
//! once, then the pace is even. One "theoretical arrival time" per limit
//! is the whole state, so checking costs a lock and a few additions.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
struct Limit {
    /// `second`, `hour` or `day`: names the limit's key in a fleet.
    name: &'static str,
    period: Duration,
    interval: Duration,
    tolerance: Duration,
}

impl Limit {
    fn new(name: &'static str, count: f64, period: Duration) -> Limit {
        Limit::with_interval(name, period, period.div_f64(count))
    }

    fn with_interval(name: &'static str, period: Duration, interval: Duration) -> Limit {
        Limit {
            name,
            period,
            interval,
            tolerance: period.saturating_sub(interval),
        }
    }
}

pub struct Throttle {
    limits: Vec<Limit>,
    /// Theoretical arrival time of the next message, per limit.
    tat: Mutex<Vec<Instant>>,
}

impl Throttle {
    pub fn new(per_second: Option<f64>, per_hour: Option<u64>, per_day: Option<u64>) -> Throttle {
        let mut limits = Vec::new();
        if let Some(n) = per_second {
            limits.push(Limit::new("second", n, Duration::from_secs(1)));
        }
        if let Some(n) = per_hour {
            limits.push(Limit::new("hour", n as f64, Duration::from_secs(3600)));
        }
        if let Some(n) = per_day {
            limits.push(Limit::new("day", n as f64, Duration::from_secs(86_400)));
        }
        Throttle::from_limits(limits)
    }

    fn from_limits(limits: Vec<Limit>) -> Throttle {
        let now = Instant::now();
        Throttle {
            tat: Mutex::new(vec![now; limits.len()]),
            limits,
        }
    }

    /// The same limits divided by `nodes`: one node's share of a fleet's.
    pub fn share(&self, nodes: usize) -> Throttle {
        let nodes = nodes.max(1) as u32;
        let limits = self
            .limits
            .iter()
            .map(|l| Limit::with_interval(l.name, l.period, l.interval.saturating_mul(nodes)))
            .collect();
        Throttle::from_limits(limits)
    }

    /// Each limit's name, emission interval and tolerance.
    pub fn limits(&self) -> impl Iterator<Item = (&'static str, Duration, Duration)> + '_ {
        self.limits
            .iter()
            .map(|l| (l.name, l.interval, l.tolerance))
    }

    pub fn is_unlimited(&self) -> bool {
        self.limits.is_empty()
    }

    /// Takes one message's place, or says how long to wait before asking again.
    pub fn try_take(&self, now: Instant) -> Result<(), Duration> {
        let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = Duration::ZERO;
        for (limit, t) in self.limits.iter().zip(tat.iter()) {
            let earliest = t.checked_sub(limit.tolerance).unwrap_or(now);
            wait = wait.max(earliest.saturating_duration_since(now));
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        for (limit, t) in self.limits.iter().zip(tat.iter_mut()) {
            *t = (*t).max(now) + limit.interval;
        }
        Ok(())
    }

    /// Gives back a place taken but not used: the next message goes as if
    /// it had never been taken (`try_take` counts from `max(tat, now)`, so
    /// one interval back is exact).
    pub fn give_back(&self) {
        let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        for (limit, t) in self.limits.iter().zip(tat.iter_mut()) {
            *t = t.checked_sub(limit.interval).unwrap_or(*t);
        }
    }

    /// Waits until one more message may go.
    pub async fn acquire(&self) {
        if self.is_unlimited() {
            return;
        }
        while let Err(wait) = self.try_take(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_even_pace() {
        let t = Throttle::new(Some(10.0), None, None);
        let start = Instant::now();
        for _ in 0..10 {
            assert!(t.try_take(start).is_ok(), "a burst of the whole allowance");
        }
        let wait = t.try_take(start).unwrap_err();
        assert!(
            wait > Duration::from_millis(50) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(t.try_take(start + Duration::from_millis(100)).is_ok());
        assert!(t.try_take(start + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn a_place_given_back_is_taken_again_and_no_more() {
        let t = Throttle::new(None, None, Some(3));
        let start = Instant::now();
        for _ in 0..3 {
            assert!(t.try_take(start).is_ok());
        }
        assert!(t.try_take(start).is_err(), "the day's three are spent");
        t.give_back();
        assert!(t.try_take(start).is_ok(), "the place given back");
        assert!(t.try_take(start).is_err(), "one place, not more");
        // Given back after a quiet spell, it is no better than never taken.
        let quiet = Throttle::new(Some(1.0), None, None);
        let later = Instant::now() + Duration::from_secs(10);
        assert!(quiet.try_take(later).is_ok());
        quiet.give_back();
        assert!(quiet.try_take(later).is_ok());
        assert!(quiet.try_take(later).is_err());
    }

    #[test]
    fn the_strictest_limit_decides() {
        let t = Throttle::new(Some(1000.0), Some(2), None);
        let start = Instant::now();
        assert!(t.try_take(start).is_ok());
        assert!(t.try_take(start).is_ok());
        let wait = t.try_take(start).unwrap_err();
        assert!(
            wait > Duration::from_secs(1700),
            "half an hour per message: {wait:?}"
        );
    }

    #[test]
    fn a_share_divides_every_limit() {
        let t = Throttle::new(Some(30.0), Some(3000), None).share(3);
        let start = Instant::now();
        for _ in 0..10 {
            assert!(t.try_take(start).is_ok(), "a third of the burst");
        }
        assert!(t.try_take(start).is_err());
        let limits: Vec<_> = t.limits().collect();
        let close = |d: Duration, secs: f64| (d.as_secs_f64() - secs).abs() < 1e-6;
        assert!(close(limits[0].1, 0.1), "{limits:?}");
        assert!(close(limits[1].1, 3.6), "{limits:?}");
    }

    #[test]
    fn no_limits_never_wait() {
        let t = Throttle::new(None, None, None);
        assert!(t.is_unlimited());
        for _ in 0..1000 {
            assert!(t.try_take(Instant::now()).is_ok());
        }
    }
}
