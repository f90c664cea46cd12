//! `[runtime]` in `config.toml`: how many threads run the async tasks (SMTP
//! sessions, deliveries, the admin socket).
//!
//! The default leaves one CPU to the threads of their own: the spool writer
//! (redb, fdatasync: ~40% of the daemon's CPU at full load) and the event
//! log. On two cores a second async worker measured 8% more CPU per message
//! and 4% fewer messages a second (BENCHMARKS.md, issue 20, session 13): it
//! competes for the core the writer needs.
//! DKIM signing has threads of its own (`signing_pool`), one per CPU.

use serde::Deserialize;

/// The most `runtime.worker_threads` may be; far more than any host has cores.
const MAX_WORKER_THREADS: usize = 1024;

/// `[runtime]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    worker_threads: Option<usize>,
}

/// `[runtime]`, checked, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeSection {
    /// Threads of the async runtime (default: one fewer than the CPUs this
    /// process may use, at least one).
    pub worker_threads: usize,
}

impl RawRuntime {
    pub fn check(self) -> Result<RuntimeSection, String> {
        let worker_threads = match self.worker_threads {
            None => default_worker_threads(available_cpus()),
            Some(n @ 1..=MAX_WORKER_THREADS) => n,
            Some(n) => {
                return Err(format!(
                    "runtime.worker_threads: {n} is out of range; give 1 to {MAX_WORKER_THREADS}, \
                     or leave it out for one fewer than the CPUs"
                ));
            }
        };
        Ok(RuntimeSection { worker_threads })
    }
}

/// CPUs this process may run on (its affinity mask and cgroup quota).
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn default_worker_threads(cpus: usize) -> usize {
    cpus.saturating_sub(1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<RuntimeSection, String> {
        toml::from_str::<RawRuntime>(text).unwrap().check()
    }

    #[test]
    fn the_default_leaves_one_cpu_to_the_spool_writer() {
        assert_eq!(default_worker_threads(1), 1);
        assert_eq!(default_worker_threads(2), 1);
        assert_eq!(default_worker_threads(16), 15);
        let expected = default_worker_threads(available_cpus());
        assert_eq!(check("").unwrap().worker_threads, expected);
    }

    #[test]
    fn worker_threads_is_bounded() {
        assert_eq!(check("worker_threads = 3").unwrap().worker_threads, 3);
        for bad in ["worker_threads = 0", "worker_threads = 1025"] {
            let e = check(bad).unwrap_err();
            assert!(e.contains("runtime.worker_threads"), "{bad}: {e}");
        }
    }
}
