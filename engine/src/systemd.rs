//! Talking to systemd (`Type=notify`): the sd_notify protocol without libsystemd.
//!
//! systemd passes a datagram socket in `$NOTIFY_SOCKET` (a path, or an
//! abstract name written with a leading `@`); each state is one datagram of
//! `KEY=value` lines. We send `READY=1` once listeners are bound and the
//! spool is open, `STATUS=` with the queue size, `WATCHDOG=1` from the
//! scheduler loop (so a stuck loop stops the pings and systemd restarts
//! the service), `RELOADING=1` then `READY=1` around SIGHUP and `STOPPING=1` at SIGTERM.
//! Without `$NOTIFY_SOCKET` (not under systemd) every call does nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often `STATUS=` is refreshed with the queue size.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Where notifications go, read once from the environment.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Half of `$WATCHDOG_USEC`: how often `WATCHDOG=1` is due.
    watchdog_every: Option<Duration>,
    last_ping: Mutex<Option<Instant>>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let addr = socket_addr(path.to_str()?)?;
            let socket = UnixDatagram::unbound().ok()?;
            Some((socket, addr))
        });
        let watchdog_every = watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
        );
        Notifier {
            target,
            watchdog_every,
            last_ping: Mutex::new(None),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one datagram of `KEY=value` lines; failures are not errors
    /// (systemd may be gone, and the daemon runs on regardless).
    pub fn notify(&self, state: &str) {
        if let Some((socket, addr)) = &self.target
            && let Err(e) = socket.send_to_addr(state.as_bytes(), addr)
        {
            log::debug!("sd_notify {state:?} failed: {e}");
        }
    }

    pub fn ready(&self) {
        self.notify("READY=1");
    }

    pub fn status(&self, text: &str) {
        // A status is one line.
        self.notify(&format!("STATUS={}", text.replace('\n', " ")));
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1");
    }

    /// Tells systemd a reload started; `READY=1` says it ended. (The unit
    /// is `Type=notify` with `ExecReload=kill -HUP`, so no `MONOTONIC_USEC`
    /// is needed, which `Type=notify-reload` would require.)
    pub fn reloading(&self) {
        self.notify("RELOADING=1");
    }

    /// Sends `WATCHDOG=1` if half the watchdog period passed since the last
    /// one. Called from the scheduler loop, once per round.
    pub fn watchdog_ping(&self) {
        let Some(every) = self.watchdog_every else {
            return;
        };
        let mut last = self.last_ping.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        *last = Some(Instant::now());
        self.notify("WATCHDOG=1");
    }
}

/// The process-wide notifier: the environment is process-wide too.
pub fn notifier() -> &'static Notifier {
    static NOTIFIER: OnceLock<Notifier> = OnceLock::new();
    NOTIFIER.get_or_init(Notifier::from_env)
}

/// `/run/systemd/notify` or `@abstract-name`.
fn socket_addr(text: &str) -> Option<SocketAddr> {
    match text.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes()).ok()
        }
        None if text.starts_with('/') => SocketAddr::from_pathname(text).ok(),
        None => None,
    }
}

/// Half the period systemd expects pings in, if the watchdog is meant for
/// this process (`WATCHDOG_PID` unset or ours).
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

/// The `STATUS=` text for a queue of this size.
pub fn queue_status(messages: u64, recipients: u64) -> String {
    format!("running; queue: {messages} messages, {recipients} recipients")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half_and_respects_the_pid() {
        let me = std::process::id().to_string();
        assert_eq!(
            watchdog_interval(Some("30000000"), None),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval(Some("1000000"), Some(&me)),
            Some(Duration::from_millis(500))
        );
        assert_eq!(watchdog_interval(Some("1000000"), Some("1")), None);
        assert_eq!(watchdog_interval(Some("0"), None), None);
        assert_eq!(watchdog_interval(None, None), None);
    }

    #[test]
    fn notifies_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                socket_addr(path.to_str().unwrap()).unwrap(),
            )),
            watchdog_every: Some(Duration::from_secs(3600)),
            last_ping: Mutex::new(None),
        };
        notifier.ready();
        notifier.watchdog_ping();
        // Within the period: no second ping.
        notifier.watchdog_ping();
        notifier.status("queue: 1");
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        for _ in 0..3 {
            let n = receiver.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(got, ["READY=1", "WATCHDOG=1", "STATUS=queue: 1"]);
    }

    #[test]
    fn notifies_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("sendengine-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        let notifier = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                socket_addr(&format!("@{name}")).unwrap(),
            )),
            watchdog_every: None,
            last_ping: Mutex::new(None),
        };
        notifier.stopping();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn relative_paths_are_not_sockets() {
        assert!(socket_addr("notify.sock").is_none());
    }
}
