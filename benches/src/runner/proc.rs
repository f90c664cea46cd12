//! What the runner reads about a process and the machine from /proc: CPU
//! time (utime + stime), resident memory (VmRSS, VmHWM) and the load average.
//! Linux only, like the daemon's deployment target.

use std::path::Path;

/// Clock ticks per second of /proc/PID/stat's CPU times (USER_HZ). Linux
/// reports these in 1/100 s on every architecture the daemon runs on.
pub const TICKS_PER_SECOND: u64 = 100;

/// CPU seconds (user + system) the process has used so far, or None when it
/// is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_ticks_of_stat(&stat).map(|ticks| ticks as f64 / TICKS_PER_SECOND as f64)
}

/// utime + stime from the text of /proc/PID/stat. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after the last ')'.
fn cpu_ticks_of_stat(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Vm*:` line of /proc/PID/status in KiB (e.g. "VmHWM:" for the peak RSS).
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_value_kib(&status, key)
}

fn status_value_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut values = text.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [
        values.next().unwrap_or(0.0),
        values.next().unwrap_or(0.0),
        values.next().unwrap_or(0.0),
    ]
}

/// Bytes used by the files under `dir` (the spool's size on disk).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Cores, CPU model and memory, for the results' header.
pub fn machine_description() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split(':').nth(1))
        .map_or("unknown CPU", str::trim)
        .to_string();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = status_value_kib(&meminfo, "MemTotal:").unwrap_or(0) as f64 / 1024.0 / 1024.0;
    format!("{cores} cores ({model}), {mem_gib:.1} GiB RAM")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_after_a_name_with_spaces() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 1 2 3";
        assert_eq!(cpu_ticks_of_stat(stat), Some(325));
    }

    #[test]
    fn reads_status_values() {
        let status = "Name:\tx\nVmHWM:\t  12345 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(status_value_kib(status, "VmHWM:"), Some(12345));
        assert_eq!(status_value_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(status_kib(pid, "VmHWM:").unwrap() > 0);
    }
}
