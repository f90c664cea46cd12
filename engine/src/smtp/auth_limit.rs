//! Per-address limit on failed SMTP AUTH attempts, against password guessing.
//!
//! Each client address (an IPv6 client by its /64, since one host commonly
//! holds the whole prefix) gets a window of `FAILURE_WINDOW` from its first
//! failure; once it has `max_failures` failures inside that window, every
//! further AUTH from it is refused with 421 until the window ends. The
//! count is checked where the password is verified, not before the
//! credentials are read: a verification in progress counts as a failure
//! until it ends, so 100 parallel guesses against a limit of 5 get at most
//! 5 verified (the others wait for those to end, then are refused). The
//! table holds at most `MAX_TRACKED` addresses: when full, expired windows
//! go first, then the oldest, so many addresses cannot grow memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long failures are remembered, from the first one of a window.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Addresses tracked at once (about 40 bytes each).
pub const MAX_TRACKED: usize = 10_000;

/// How often a verification waiting for others of its address looks again.
const ATTEMPT_POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
    /// Verifications running now; each may become a failure.
    in_flight: u32,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            started: now,
            failures: 0,
            in_flight: 0,
        }
    }
}

/// One password verification in progress; ends as a success (drop) or
/// a failure (`failed`).
#[derive(Debug)]
pub struct Attempt {
    limiter: Arc<AuthLimiter>,
    ip: IpAddr,
    counted: bool,
}

impl Attempt {
    /// The password was wrong; returns whether the address is now blocked.
    pub fn failed(mut self) -> bool {
        self.counted = true;
        let key = client_key(self.ip);
        let now = Instant::now();
        let mut windows = self.limiter.lock();
        let window = windows.entry(key).or_insert(Window::new(now));
        window.in_flight = window.in_flight.saturating_sub(1);
        window.failures = window.failures.saturating_add(1);
        window.failures >= self.limiter.max_failures()
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.counted {
            let key = client_key(self.ip);
            if let Some(window) = self.limiter.lock().get_mut(&key) {
                window.in_flight = window.in_flight.saturating_sub(1);
            }
        }
    }
}

/// Shared by all sessions of one daemon.
#[derive(Debug)]
pub struct AuthLimiter {
    /// Changes on reload; the counts themselves survive it.
    max_failures: AtomicU32,
    windows: Mutex<HashMap<IpAddr, Window>>,
}

impl AuthLimiter {
    pub fn new(max_failures: u32) -> AuthLimiter {
        AuthLimiter {
            max_failures: AtomicU32::new(max_failures.max(1)),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// A reload's new limit applies to failures already counted.
    pub fn set_max_failures(&self, max_failures: u32) {
        self.max_failures
            .store(max_failures.max(1), Ordering::Relaxed);
    }

    fn max_failures(&self) -> u32 {
        self.max_failures.load(Ordering::Relaxed)
    }

    /// Whether `ip` has used up its failures for now.
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        self.is_blocked_at(ip, Instant::now())
    }

    /// Starts a password verification for `ip`, atomically with the check
    /// of its failures: waits while verifications in flight could still
    /// use up the limit, and returns `None` once it is used up.
    pub async fn begin_attempt(self: &Arc<Self>, ip: IpAddr) -> Option<Attempt> {
        loop {
            match self.try_begin_at(ip, Instant::now()) {
                Admission::Blocked => return None,
                Admission::Started => {
                    return Some(Attempt {
                        limiter: self.clone(),
                        ip,
                        counted: false,
                    });
                }
                Admission::Wait => tokio::time::sleep(ATTEMPT_POLL).await,
            }
        }
    }

    fn try_begin_at(&self, ip: IpAddr, now: Instant) -> Admission {
        let key = client_key(ip);
        let max = self.max_failures();
        let mut windows = self.lock();
        if !windows.contains_key(&key) && windows.len() >= MAX_TRACKED {
            make_room(&mut windows, now);
        }
        let window = windows.entry(key).or_insert(Window::new(now));
        if expired(window, now) && window.in_flight == 0 {
            *window = Window::new(now);
        }
        if window.failures >= max {
            Admission::Blocked
        } else if window.failures + window.in_flight >= max {
            Admission::Wait
        } else {
            window.in_flight += 1;
            Admission::Started
        }
    }

    /// How many addresses are tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn is_blocked_at(&self, ip: IpAddr, now: Instant) -> bool {
        self.lock()
            .get(&client_key(ip))
            .is_some_and(|w| !expired(w, now) && w.failures >= self.max_failures())
    }

    #[cfg(test)]
    fn record_failure_at(&self, ip: IpAddr, now: Instant) -> bool {
        let key = client_key(ip);
        let mut windows = self.lock();
        if !windows.contains_key(&key) && windows.len() >= MAX_TRACKED {
            make_room(&mut windows, now);
        }
        let window = windows.entry(key).or_insert(Window::new(now));
        if expired(window, now) {
            *window = Window::new(now);
        }
        window.failures = window.failures.saturating_add(1);
        window.failures >= self.max_failures()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Window>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Admission {
    Started,
    Wait,
    Blocked,
}

fn expired(window: &Window, now: Instant) -> bool {
    now.duration_since(window.started) >= FAILURE_WINDOW
}

/// Drops expired windows; if none was, drops the oldest one.
fn make_room(windows: &mut HashMap<IpAddr, Window>, now: Instant) {
    windows.retain(|_, w| !expired(w, now));
    if windows.len() < MAX_TRACKED {
        return;
    }
    let oldest = windows
        .iter()
        .min_by_key(|(_, w)| w.started)
        .map(|(ip, _)| *ip);
    if let Some(ip) = oldest {
        windows.remove(&ip);
    }
}

/// IPv4 addresses (also IPv4-mapped IPv6) count one by one, IPv6 by /64.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_after_the_limit_until_the_window_ends() {
        let limiter = AuthLimiter::new(3);
        let t0 = Instant::now();
        let a = ip("192.0.2.7");
        assert!(!limiter.record_failure_at(a, t0));
        assert!(!limiter.record_failure_at(a, t0));
        assert!(!limiter.is_blocked_at(a, t0));
        assert!(limiter.record_failure_at(a, t0));
        assert!(limiter.is_blocked_at(a, t0 + Duration::from_secs(60)));
        assert!(!limiter.is_blocked_at(ip("192.0.2.8"), t0));
        let later = t0 + FAILURE_WINDOW;
        assert!(!limiter.is_blocked_at(a, later));
        assert!(!limiter.record_failure_at(a, later), "a new window starts");
    }

    #[tokio::test]
    async fn verifications_in_flight_count_until_they_end() {
        let limiter = Arc::new(AuthLimiter::new(2));
        let t0 = Instant::now();
        let a = ip("192.0.2.7");
        assert!(matches!(limiter.try_begin_at(a, t0), Admission::Started));
        assert!(matches!(limiter.try_begin_at(a, t0), Admission::Started));
        assert!(matches!(limiter.try_begin_at(a, t0), Admission::Wait));
        let first = limiter.begin_attempt(ip("192.0.2.8")).await.unwrap();
        drop(first); // a success frees its place without a failure
        assert!(!limiter.is_blocked(ip("192.0.2.8")));
        // Two failures land: the waiting third is refused, not verified.
        let attempts: Vec<_> = (0..2)
            .map(|_| Attempt {
                limiter: limiter.clone(),
                ip: a,
                counted: false,
            })
            .collect();
        let blocked: Vec<bool> = attempts.into_iter().map(Attempt::failed).collect();
        assert_eq!(blocked, [false, true]);
        assert!(limiter.begin_attempt(a).await.is_none());
    }

    #[test]
    fn a_new_limit_applies_to_failures_already_counted() {
        let limiter = AuthLimiter::new(5);
        let t0 = Instant::now();
        let a = ip("192.0.2.7");
        limiter.record_failure_at(a, t0);
        limiter.record_failure_at(a, t0);
        assert!(!limiter.is_blocked_at(a, t0));
        limiter.set_max_failures(2);
        assert!(limiter.is_blocked_at(a, t0));
    }

    #[test]
    fn ipv6_counts_by_slash_64() {
        let limiter = AuthLimiter::new(2);
        let t0 = Instant::now();
        limiter.record_failure_at(ip("2001:db8:1:2::1"), t0);
        assert!(limiter.record_failure_at(ip("2001:db8:1:2:ffff::9"), t0));
        assert!(limiter.is_blocked_at(ip("2001:db8:1:2::77"), t0));
        assert!(!limiter.is_blocked_at(ip("2001:db8:1:3::1"), t0));
        limiter.record_failure_at(ip("::ffff:192.0.2.1"), t0);
        assert!(limiter.record_failure_at(ip("192.0.2.1"), t0));
    }

    #[test]
    fn memory_is_bounded() {
        let limiter = AuthLimiter::new(5);
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 500) {
            let addr = IpAddr::V4((0x0a00_0000 + i).into());
            limiter.record_failure_at(addr, t0 + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(limiter.tracked(), MAX_TRACKED);
        // The newest addresses are kept, the oldest went.
        let newest = IpAddr::V4((0x0a00_0000 + MAX_TRACKED as u32 + 499).into());
        assert!(limiter.lock().contains_key(&newest));
        assert!(!limiter.lock().contains_key(&ip("10.0.0.0")));
    }
}
