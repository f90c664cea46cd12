//! The backlog measure: N messages queued while the delivery server is
//! down, then a restart (after SIGTERM, or SIGKILL with `crash`) with the
//! server back. It reports the daemon's memory
//! as the queue grows, how long the restart takes until the first delivery,
//! and the drain rate (to compare with a small queue's, run it twice).
//!
//! While the sink is down every first attempt fails to connect and the
//! recipient is deferred for an hour; after the restart `sendctl queue
//! flush` makes them all due, as the retry would once the hour is over.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::procs::{self, Binaries, Daemon, Loadgen, Sink};
use super::sinkwatch::SinkWatch;
use super::{
    Generator, RunError, Scenario, daemon_config, fresh_dir, injection_for, proc, start_perf,
    stop_perf, unix_us,
};

/// How often the daemon's RSS and the free disk space are sampled.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// After an early stop the drain is over when nothing arrived for this long.
const DRAIN_QUIET: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default)]
pub struct BacklogResult {
    pub inject_rate: f64,
    /// Messages delivered after the restart (all of them, or those queued
    /// before a disk-space stop).
    pub delivered: u64,
    /// The injection was stopped early to keep `min_free` bytes free.
    pub stopped_for_disk: bool,
    /// (seconds since the injection started, spool bytes, VmRSS KiB).
    pub rss_trend: Vec<(f64, u64, u64)>,
    pub peak_rss_inject_kib: u64,
    pub spool_bytes: u64,
    pub stop_s: f64,
    pub restart_ready_s: f64,
    pub restart_first_delivery_s: f64,
    pub drain_s: f64,
    pub drain_rate: f64,
    pub peak_rss_drain_kib: u64,
    pub drain_cpu_ms_per_msg: f64,
}

/// How the backlog measure runs.
#[derive(Debug, Clone, Default)]
pub struct BacklogOptions {
    /// The injection stops early when the disk would have less than this
    /// many bytes free.
    pub min_free: u64,
    /// SIGKILL instead of SIGTERM before the restart.
    pub crash: bool,
    /// Record the restarted daemon with `perf record -g` while it drains.
    pub perf_data: Option<PathBuf>,
}

/// Runs the measure in `dir` (emptied first). Progress goes to stderr.
pub fn run_backlog(
    bins: &Binaries,
    scenario: &Scenario,
    dir: &Path,
    options: &BacklogOptions,
) -> Result<BacklogResult, RunError> {
    let (min_free, crash) = (options.min_free, options.crash);
    let dir = fresh_dir(dir)?;
    let sink_port = procs::unused_port()?;
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        daemon_config(scenario, &dir, sink_port, "1h", None),
    )
    .map_err(|source| RunError::Io {
        what: format!("cannot write {}", config.display()),
        source,
    })?;
    let mut result = BacklogResult::default();
    let log = dir.join("daemon.log");

    let mut daemon = Daemon::start(bins, &config, &log)?;
    let injection = injection_for(scenario, daemon.addr);
    let started = Instant::now();
    let mut generator = Generator::Running(Loadgen::start(bins, &injection)?);
    let mut next_sample = Instant::now();
    while !generator.settle(scenario.messages)? {
        if Instant::now() >= next_sample {
            sample(&mut result, &daemon, &dir, started);
            next_sample += SAMPLE_INTERVAL;
            if procs::free_bytes(&dir).is_some_and(|free| free < min_free) {
                eprintln!("backlog: disk nearly full, stopping the injection here");
                generator.abort();
                result.stopped_for_disk = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    sample(&mut result, &daemon, &dir, started);
    let inject_s = started.elapsed().as_secs_f64();
    result.inject_rate = generator.summary().map_or(0.0, |s| s.msgs_per_s);
    result.peak_rss_inject_kib = proc::status_kib(daemon.pid, "VmHWM:").unwrap_or(0);
    let stop_started = Instant::now();
    if crash {
        daemon.kill9();
    } else {
        daemon.stop();
    }
    result.stop_s = stop_started.elapsed().as_secs_f64();
    result.spool_bytes = proc::dir_bytes(&dir.join("spool"));
    eprintln!(
        "backlog: injection over after {inject_s:.0} s, spool {:.2} GiB, daemon stopped in {:.1} s; restarting with the sink up",
        result.spool_bytes as f64 / (1u64 << 30) as f64,
        result.stop_s
    );

    let mut sink = Sink::start(bins, sink_port, &dir.join("sink.jsonl"))?;
    let mut watch = SinkWatch::open(&sink.log, false)?;
    let spawned_us = unix_us();
    let daemon = Daemon::start(bins, &config, &log)?;
    result.restart_ready_s = daemon.ready.duration_since(daemon.spawned).as_secs_f64();
    let cpu_before = proc::cpu_seconds(daemon.pid).unwrap_or(0.0);
    let mut perf = match &options.perf_data {
        Some(path) => Some(start_perf(daemon.pid, path)?),
        None => None,
    };
    procs::sendctl(bins, &dir.join("admin.sock"), &["queue", "flush"])?;
    let target = scenario.messages * scenario.rcpts as u64;
    let drain_started = Instant::now();
    let mut next_sample = Instant::now();
    let mut last_progress = (Instant::now(), 0);
    loop {
        watch.poll()?;
        if watch.recipients >= target {
            break;
        }
        if watch.recipients != last_progress.1 {
            last_progress = (Instant::now(), watch.recipients);
        }
        if result.stopped_for_disk
            && watch.recipients > 0
            && last_progress.0.elapsed() > DRAIN_QUIET
        {
            break;
        }
        if Instant::now() >= next_sample {
            sample(&mut result, &daemon, &dir, started);
            next_sample += SAMPLE_INTERVAL;
        }
        if drain_started.elapsed() > super::STALL_TIMEOUT && watch.recipients == 0 {
            return Err(RunError::Failed(
                "nothing reached the sink after the restart".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu_after = proc::cpu_seconds(daemon.pid).unwrap_or(0.0);
    if let Some(perf) = perf.as_mut() {
        stop_perf(perf);
    }
    let first_us = watch.first_us.unwrap_or(spawned_us);
    result.restart_first_delivery_s = first_us.saturating_sub(spawned_us) as f64 / 1e6;
    result.drain_s = watch.last_us.saturating_sub(first_us) as f64 / 1e6;
    result.delivered = watch.messages;
    if result.stopped_for_disk {
        // The killed generator printed no summary: every message it got
        // acknowledged was delivered, so the sink's count stands in for it.
        result.inject_rate = watch.messages as f64 / inject_s.max(1e-6);
    }
    result.drain_rate = watch.messages as f64 / result.drain_s.max(1e-6);
    result.peak_rss_drain_kib = proc::status_kib(daemon.pid, "VmHWM:").unwrap_or(0);
    result.drain_cpu_ms_per_msg = 1000.0 * (cpu_after - cpu_before) / watch.messages.max(1) as f64;
    drop(daemon);
    sink.stop();
    Ok(result)
}

/// Records (elapsed, spool bytes, RSS) and prints it.
fn sample(result: &mut BacklogResult, daemon: &Daemon, dir: &Path, started: Instant) {
    let rss = proc::status_kib(daemon.pid, "VmRSS:").unwrap_or(0);
    let spool = proc::dir_bytes(&dir.join("spool"));
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "backlog: t={elapsed:.0}s spool={:.2} GiB rss={:.1} MiB",
        spool as f64 / (1u64 << 30) as f64,
        rss as f64 / 1024.0
    );
    result.rss_trend.push((elapsed, spool, rss));
}
