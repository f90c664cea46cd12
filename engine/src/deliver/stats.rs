//! `RouteStats`: what one route is doing now, for `status`.
//!
//! Jobs in flight (taken by a worker, outcome not yet handed on), the same
//! by campaign, and recipients delivered in the last minute. Workers update
//! it once per transaction, so it is an atomic and two short locks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::timefmt::now_ms;

/// One bucket per second of the last minute.
const WINDOW_SECONDS: usize = 60;

#[derive(Default)]
pub struct RouteStats {
    in_flight: AtomicUsize,
    /// In-flight jobs by campaign; mail without a campaign is not listed.
    campaigns: Mutex<HashMap<String, usize>>,
    delivered: Mutex<SecondBuckets>,
}

impl RouteStats {
    /// A worker took a job of `campaign`.
    pub fn started(&self, campaign: &str) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if !campaign.is_empty() {
            let mut campaigns = self.campaigns.lock().unwrap_or_else(|p| p.into_inner());
            *campaigns.entry(campaign.to_owned()).or_default() += 1;
        }
    }

    /// The job's outcome went to the recorder or to failover.
    pub fn finished(&self, campaign: &str) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !campaign.is_empty() {
            let mut campaigns = self.campaigns.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = campaigns.get_mut(campaign) {
                *n -= 1;
                if *n == 0 {
                    campaigns.remove(campaign);
                }
            }
        }
    }

    /// `recipients` were accepted (2xx) just now.
    pub fn delivered(&self, recipients: usize) {
        if recipients > 0 {
            let second = now_ms() / 1000;
            let mut buckets = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
            buckets.add(second, recipients as u64);
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// In-flight jobs by campaign.
    pub fn campaigns_in_flight(&self) -> Vec<(String, usize)> {
        let campaigns = self.campaigns.lock().unwrap_or_else(|p| p.into_inner());
        campaigns.iter().map(|(c, n)| (c.clone(), *n)).collect()
    }

    /// Recipients delivered in the last 60 seconds.
    pub fn delivered_last_minute(&self) -> u64 {
        let second = now_ms() / 1000;
        let buckets = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
        buckets.sum_since(second.saturating_sub(WINDOW_SECONDS as u64 - 1))
    }
}

/// A ring of (second, count); a bucket is reused when its second comes round again.
struct SecondBuckets {
    buckets: [(u64, u64); WINDOW_SECONDS],
}

impl Default for SecondBuckets {
    fn default() -> Self {
        SecondBuckets {
            buckets: [(0, 0); WINDOW_SECONDS],
        }
    }
}

impl SecondBuckets {
    fn add(&mut self, second: u64, n: u64) {
        let bucket = &mut self.buckets[second as usize % WINDOW_SECONDS];
        if bucket.0 != second {
            *bucket = (second, 0);
        }
        bucket.1 += n;
    }

    /// The counts of `first` and later seconds (a clock set back may leave
    /// "future" buckets; they still count until they age out).
    fn sum_since(&self, first: u64) -> u64 {
        self.buckets
            .iter()
            .filter(|(second, _)| *second >= first && *second != 0)
            .map(|(_, n)| n)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_the_last_minute_only() {
        let mut b = SecondBuckets::default();
        b.add(1000, 2);
        b.add(1000, 1);
        b.add(1030, 4);
        assert_eq!(b.sum_since(1000 - 59), 7);
        assert_eq!(b.sum_since(1001), 4);
        // Second 1060 reuses 1000's bucket.
        b.add(1060, 5);
        assert_eq!(b.sum_since(1001), 9);
    }

    #[test]
    fn campaigns_leave_the_list_when_nothing_is_in_flight() {
        let stats = RouteStats::default();
        stats.started("spring");
        stats.started("spring");
        stats.started("");
        assert_eq!(stats.in_flight(), 3);
        assert_eq!(stats.campaigns_in_flight(), vec![("spring".into(), 2)]);
        stats.finished("spring");
        stats.finished("spring");
        stats.finished("");
        assert_eq!(stats.in_flight(), 0);
        assert!(stats.campaigns_in_flight().is_empty());
    }
}
