//! The end-to-end benchmark runner behind `sendengine-bench`: one scenario
//! on loopback, sink → daemon → load generator, measured from outside the
//! daemon (its /proc entries, the sink's log, the generator's acks).
//!
//! Each repetition starts from nothing: a fresh folder, sink, spool and
//! daemon, a warm-up injection, then the measured one. The daemon is only
//! run as a process; nothing here links the engine.

pub mod backlog;
pub mod cluster;
pub mod http;
pub mod peer;
pub mod proc;
pub mod procs;
pub mod scrape;
pub mod sinkwatch;
pub mod stats;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use cluster::{ClusterRun, ClusterTarget};
use procs::{Binaries, Daemon, Injection, InjectionSummary, Loadgen, Sink};
use sinkwatch::SinkWatch;

/// A run gives up when the sink has seen no new message for this long.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the sink's log is read while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Debug, Error)]
pub enum RunError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

/// DKIM signing in the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dkim {
    Off,
    Rsa,
    Ed25519,
}

impl Dkim {
    pub fn parse(text: &str) -> Option<Dkim> {
        match text {
            "off" => Some(Dkim::Off),
            "rsa" | "rsa2048" | "rsa-2048" => Some(Dkim::Rsa),
            "ed25519" => Some(Dkim::Ed25519),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Dkim::Off => "off",
            Dkim::Rsa => "rsa-2048",
            Dkim::Ed25519 => "ed25519",
        }
    }
}

/// What one run measures.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub messages: u64,
    /// Unmeasured messages first (connections opened, caches warm).
    pub warmup: u64,
    pub connections: usize,
    /// Body bytes per message.
    pub size: usize,
    pub rcpts: usize,
    pub dkim: Dkim,
    /// fdatasync before 250 (the production setting).
    pub sync: bool,
    /// Injection rate limit in messages/s; 0 = as fast as it goes.
    pub rate: f64,
    /// Connections from the daemon to the sink.
    pub delivery_connections: usize,
    /// `[delivery] ready_queue_size`; None = the daemon's default.
    pub ready_queue_size: Option<usize>,
    /// Mail has a tenant with a daily limit, and the sink a
    /// `rate_per_second` (see `cluster`); implied by `cluster`.
    pub tenant: bool,
    /// Run the daemon as one node of a fleet (`[cluster]`).
    pub cluster: Option<ClusterTarget>,
    /// The load generator opens a connection per message (issue #20).
    pub connection_per_message: bool,
    /// The load generator starts TLS on each connection (STARTTLS).
    pub starttls: bool,
}

/// The load generator's options for the measured injection of `scenario`.
fn injection_for(scenario: &Scenario, server: std::net::SocketAddr) -> Injection {
    Injection {
        server,
        messages: scenario.messages,
        connections: scenario.connections,
        size: scenario.size,
        rcpts: scenario.rcpts,
        rate: scenario.rate,
        acks_file: None,
        connection_per_message: scenario.connection_per_message,
        starttls: scenario.starttls,
    }
}

impl Scenario {
    pub fn durability(&self) -> &'static str {
        if self.sync {
            "sync on (fdatasync before 250)"
        } else {
            "sync OFF (no fdatasync: not durable)"
        }
    }

    pub fn describe(&self) -> String {
        let rate = if self.rate > 0.0 {
            format!("{} msgs/s", self.rate)
        } else {
            "unlimited".to_string()
        };
        let mode = match (&self.cluster, self.tenant) {
            (Some(c), _) => format!(
                ", tenant with daily limit, CLUSTER node (PostgreSQL {}, Redis {})",
                c.database,
                c.redis.as_deref().unwrap_or("none")
            ),
            (None, true) => ", tenant with daily limit, standalone".to_string(),
            (None, false) => String::new(),
        };
        let connections = match (self.connection_per_message, self.starttls) {
            (true, false) => "a connection per message",
            (true, true) => "a connection per message, STARTTLS",
            (false, false) => "reused connections",
            (false, true) => "reused connections, STARTTLS",
        };
        format!(
            "{} msgs (+{} warm-up), body {} B, {} rcpt/msg, {} injection conns ({connections}), DKIM {}, {}, rate {}{mode}",
            self.messages,
            self.warmup,
            self.size,
            self.rcpts,
            self.connections,
            self.dkim.label(),
            self.durability(),
            rate
        )
    }
}

/// The figures of one repetition.
#[derive(Debug, Clone)]
pub struct RepResult {
    pub injection: InjectionSummary,
    pub inject_rate: f64,
    pub e2e_rate: f64,
    pub e2e_s: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    pub cpu_s: f64,
    pub cpu_ms_per_msg: f64,
    pub peak_rss_kib: u64,
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
    /// The `dkim` field of the first reception event (proof of signing).
    pub dkim_event: Option<String>,
    /// The daemon's counters that grew during the measured run
    /// (`scrape::COUNTERS`).
    pub counters: Vec<(String, f64)>,
}

impl RepResult {
    pub fn line(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        format!(
            "inject {:.0} msgs/s, e2e {:.0} msgs/s ({:.2} s), latency 250→sink p50 {} p99 {} max {} ms, daemon CPU {:.3} ms/msg, peak RSS {:.1} MiB, load {:.2}→{:.2}, dkim={}",
            self.inject_rate,
            self.e2e_rate,
            self.e2e_s,
            ms(self.latency_p50_ms),
            ms(self.latency_p99_ms),
            ms(self.latency_max_ms),
            self.cpu_ms_per_msg,
            self.peak_rss_kib as f64 / 1024.0,
            self.load_before[0],
            self.load_after[0],
            self.dkim_event.as_deref().unwrap_or("-")
        )
    }

    /// The counters of the run, per message: what the CPU was spent on
    /// (spool commits, the cluster ledger's trips to PostgreSQL).
    pub fn counters_line(&self, messages: u64) -> String {
        let per_message = |v: f64| v / messages.max(1) as f64;
        let counter = |name: &str| {
            self.counters
                .iter()
                .find(|(k, _)| k == name)
                .map_or(0.0, |(_, v)| *v)
        };
        let commits = counter("sendengine_spool_commit_seconds_count");
        let committing = counter("sendengine_spool_commit_seconds_sum");
        let mut line = format!(
            "msgs per spool commit {:.2}, spool writer committing {:.0}% of the run",
            if commits > 0.0 {
                messages as f64 / commits
            } else {
                0.0
            },
            100.0 * committing / self.e2e_s.max(f64::EPSILON)
        );
        for (name, value) in &self.counters {
            let short = name.trim_start_matches("sendengine_");
            if !short.starts_with("spool_commit") {
                let _ = write!(
                    line,
                    ", {short} {value:.0} ({:.3}/msg)",
                    per_message(*value)
                );
            }
        }
        line
    }
}

pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Where a STARTTLS scenario's certificate and key are, in `dir`.
fn tls_files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("tls-cert.pem"), dir.join("tls-key.pem"))
}

/// The daemon's configuration for a scenario in `dir`, relaying to the sink
/// at `sink_port`; `retry` is the retry schedule's single step; `cluster`
/// the repetition's place in the fleet's services.
pub fn daemon_config(
    scenario: &Scenario,
    dir: &Path,
    sink_port: u16,
    retry: &str,
    cluster: Option<&ClusterRun>,
) -> String {
    let d = dir.display();
    let tenant = scenario.tenant || cluster.is_some();
    let (default_user, rate) = if tenant {
        (
            format!("default_user = \"{}\"", cluster::TENANT),
            format!("rate_per_second = {}", cluster::RATE_PER_SECOND),
        )
    } else {
        (String::new(), String::new())
    };
    let tls = if scenario.starttls {
        let (cert, key) = tls_files(dir);
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            cert.display(),
            key.display()
        )
    } else {
        String::new()
    };
    let mut text = format!(
        r#"hostname = "bench.invalid"
[spool]
dir = "{d}/spool"
sync = {sync}
[smtp_in]
listen = ["127.0.0.1:0"]
relay_networks = ["127.0.0.0/8"]
{default_user}
max_message_size = "25MB"
{tls}
[delivery]
retry_schedule = ["{retry}"]
{ready_queue}
[events]
path = "{d}/events.jsonl"
[admin]
socket = "{d}/admin.sock"
[secrets]
key_file = "{d}/secret.key"
[[delivery_server]]
name = "sink"
host = "127.0.0.1"
port = {sink_port}
encryption = "none"
timeout = "60s"
max_connections = {conns}
max_messages_per_connection = 100000
{rate}
"#,
        sync = scenario.sync,
        conns = scenario.delivery_connections,
        ready_queue = scenario
            .ready_queue_size
            .map_or(String::new(), |n| format!("ready_queue_size = {n}")),
    );
    let algorithm = match scenario.dkim {
        Dkim::Off => None,
        Dkim::Rsa => Some("rsa"),
        Dkim::Ed25519 => Some("ed25519"),
    };
    if let Some(algorithm) = algorithm {
        // The loadgen's From is loadgen@example.com.
        let _ = write!(
            text,
            "[[dkim_key]]\ndomain = \"example.com\"\nselector = \"bench\"\nalgorithm = \"{algorithm}\"\n"
        );
    }
    if tenant {
        let recipients = (scenario.warmup + scenario.messages) * scenario.rcpts as u64;
        text.push_str(&cluster::tenant_section(recipients));
    }
    if let Some(cluster) = cluster {
        text.push_str(&cluster.config_section());
    }
    text
}

fn write_file(path: &Path, text: &str) -> Result<(), RunError> {
    std::fs::write(path, text).map_err(|source| RunError::Io {
        what: format!("cannot write {}", path.display()),
        source,
    })
}

/// A fresh, empty folder.
pub fn fresh_dir(path: &Path) -> Result<PathBuf, RunError> {
    let _ = std::fs::remove_dir_all(path);
    std::fs::create_dir_all(path).map_err(|source| RunError::Io {
        what: format!("cannot create {}", path.display()),
        source,
    })?;
    Ok(path.to_path_buf())
}

/// Options of a repetition that are not part of the scenario.
#[derive(Debug, Clone, Default)]
pub struct RepOptions {
    /// Record the daemon with `perf record -g` into this file while measured.
    pub perf_data: Option<PathBuf>,
    /// Keep the repetition's folder (spool, logs) afterwards.
    pub keep: bool,
}

/// Runs one repetition in `dir` (emptied first); in cluster mode with a
/// database of its own, dropped afterwards unless `keep`.
pub fn run_rep(
    bins: &Binaries,
    scenario: &Scenario,
    dir: &Path,
    options: &RepOptions,
) -> Result<RepResult, RunError> {
    let Some(target) = &scenario.cluster else {
        return measure_rep(bins, scenario, dir, options, None);
    };
    let tag: String = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let cluster = target.run_for(&tag);
    cluster.create()?;
    let result = measure_rep(bins, scenario, dir, options, Some(&cluster));
    if !options.keep {
        cluster.drop_database()?;
    }
    result
}

/// Before the measured run: what the setup wrote (a new PostgreSQL
/// database, the warm-up's spool pages, the last repetition's files) goes
/// to disk first, so the kernel's write-back does not compete with the
/// spool's fdatasync while it is measured. A cluster repetition created a
/// database moments ago, which a standalone one does not pay for. (Not
/// shown to move the figures: a precaution for a fair comparison.)
fn settle_disk(cluster: Option<&ClusterRun>) -> Result<(), RunError> {
    if let Some(cluster) = cluster {
        cluster.checkpoint()?;
    }
    let status = Command::new("sync")
        .status()
        .map_err(|source| RunError::Io {
            what: "cannot run sync".into(),
            source,
        })?;
    if !status.success() {
        return Err(RunError::Failed(format!("sync failed: {status}")));
    }
    Ok(())
}

fn measure_rep(
    bins: &Binaries,
    scenario: &Scenario,
    dir: &Path,
    options: &RepOptions,
    cluster: Option<&ClusterRun>,
) -> Result<RepResult, RunError> {
    let dir = fresh_dir(dir)?;
    let mut sink = Sink::start(bins, 0, &dir.join("sink.jsonl"))?;
    let config = dir.join("config.toml");
    if scenario.starttls {
        let (cert, key) = tls_files(&dir);
        crate::tls::write_self_signed_pem(&cert, &key)
            .map_err(|e| RunError::Failed(format!("STARTTLS: {e}")))?;
    }
    let mut text = daemon_config(scenario, &dir, sink.port, "5s", cluster);
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], procs::unused_port()?));
    let _ = write!(text, "\n[metrics]\nlisten = \"{metrics}\"\n");
    write_file(&config, &text)?;
    let mut daemon = Daemon::start(bins, &config, &dir.join("daemon.log"))?;
    let mut watch = SinkWatch::open(&sink.log, true)?;

    if scenario.warmup > 0 {
        let warmup = Injection {
            messages: scenario.warmup,
            rate: 0.0,
            ..injection_for(scenario, daemon.addr)
        };
        let mut generator = Generator::Running(Loadgen::start(bins, &warmup)?);
        let target = scenario.warmup * scenario.rcpts as u64;
        wait_for_recipients(&mut watch, target, Some((&mut generator, scenario.warmup)))?;
        watch.reset();
    }
    settle_disk(cluster)?;

    let acks_path = dir.join("acks.txt");
    let injection = Injection {
        acks_file: Some(acks_path.clone()),
        ..injection_for(scenario, daemon.addr)
    };
    let load_before = proc::load_average();
    let counters_before = scrape::Counters::scrape(metrics);
    let cpu_before = proc::cpu_seconds(daemon.pid).unwrap_or(0.0);
    let mut perf = match &options.perf_data {
        Some(path) => Some(start_perf(daemon.pid, path)?),
        None => None,
    };
    let started_us = unix_us();
    let mut generator = Generator::Running(Loadgen::start(bins, &injection)?);
    let target = scenario.messages * scenario.rcpts as u64;
    wait_for_recipients(
        &mut watch,
        target,
        Some((&mut generator, scenario.messages)),
    )?;
    let cpu_after = proc::cpu_seconds(daemon.pid).unwrap_or(0.0);
    let counters = scrape::Counters::scrape(metrics).since(&counters_before);
    let load_after = proc::load_average();
    if let Some(perf) = perf.as_mut() {
        stop_perf(perf);
    }
    let injection_summary = generator.summary().unwrap_or_default();
    let peak_rss_kib = proc::status_kib(daemon.pid, "VmHWM:").unwrap_or(0);
    daemon.stop();
    sink.stop();

    let latencies = join_latencies(&acks_path, &watch)?;
    let e2e_s = watch.last_us.saturating_sub(started_us) as f64 / 1e6;
    let cpu_s = cpu_after - cpu_before;
    let result = RepResult {
        inject_rate: injection_summary.msgs_per_s,
        e2e_rate: if e2e_s > 0.0 {
            scenario.messages as f64 / e2e_s
        } else {
            0.0
        },
        e2e_s,
        latency_p50_ms: stats::percentile(&latencies, 0.50),
        latency_p99_ms: stats::percentile(&latencies, 0.99),
        latency_max_ms: latencies.last().copied(),
        cpu_s,
        cpu_ms_per_msg: 1000.0 * cpu_s / scenario.messages.max(1) as f64,
        peak_rss_kib,
        load_before,
        load_after,
        dkim_event: first_reception_dkim(&dir.join("events.jsonl")),
        injection: injection_summary,
        counters,
    };
    if !options.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(result)
}

/// A load generator while it runs, then its summary.
pub enum Generator {
    Running(Loadgen),
    Done(InjectionSummary),
}

impl Generator {
    /// Collects the summary once the process has exited; a generator that
    /// could not get all `messages` acknowledged fails the run.
    fn settle(&mut self, messages: u64) -> Result<bool, RunError> {
        let Generator::Running(running) = self else {
            return Ok(true);
        };
        if !running.finished() {
            return Ok(false);
        }
        let placeholder = Generator::Done(InjectionSummary::default());
        let Generator::Running(finished) = std::mem::replace(self, placeholder) else {
            return Ok(true);
        };
        let summary = finished.finish()?;
        if summary.acked < messages {
            return Err(RunError::Failed(format!(
                "the load generator got {} of {messages} messages acknowledged: {summary:?}",
                summary.acked
            )));
        }
        *self = Generator::Done(summary);
        Ok(true)
    }

    /// Stops a running generator early.
    pub fn abort(&mut self) {
        let placeholder = Generator::Done(InjectionSummary::default());
        if let Generator::Running(running) = std::mem::replace(self, placeholder) {
            running.kill();
        }
    }

    pub fn summary(self) -> Option<InjectionSummary> {
        match self {
            Generator::Done(summary) => Some(summary),
            Generator::Running(_) => None,
        }
    }
}

/// Waits until the sink has `target` recipients and the generator (if any)
/// has exited having had its `messages` acknowledged.
pub fn wait_for_recipients(
    watch: &mut SinkWatch,
    target: u64,
    mut generator: Option<(&mut Generator, u64)>,
) -> Result<(), RunError> {
    let mut last_progress = Instant::now();
    let mut seen = watch.recipients;
    loop {
        watch.poll()?;
        if watch.recipients != seen {
            seen = watch.recipients;
            last_progress = Instant::now();
        }
        let generator_done = match generator.as_mut() {
            Some((running, messages)) => running.settle(*messages)?,
            None => true,
        };
        if watch.recipients >= target && generator_done {
            return Ok(());
        }
        if last_progress.elapsed() > STALL_TIMEOUT && generator_done {
            return Err(RunError::Failed(format!(
                "the sink got {} of {target} recipients and nothing more for {} s",
                watch.recipients,
                STALL_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Latency of each acknowledged message from its 250 to the arrival of its
/// last recipient at the sink, in ms, sorted.
fn join_latencies(acks_path: &Path, watch: &SinkWatch) -> Result<Vec<f64>, RunError> {
    let acks = std::fs::read_to_string(acks_path).map_err(|source| RunError::Io {
        what: format!("cannot read {}", acks_path.display()),
        source,
    })?;
    let mut latencies: Vec<f64> = acks
        .lines()
        .filter_map(|line| {
            let (id, acked_us) = line.rsplit_once(' ')?;
            let acked_us: u64 = acked_us.parse().ok()?;
            let arrived_us = watch.arrival_us(id)?;
            // A message may reach the sink before the 250 reaches the generator.
            Some(arrived_us.saturating_sub(acked_us) as f64 / 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

/// The `dkim` field of the first reception event, if any.
fn first_reception_dkim(events: &Path) -> Option<String> {
    use std::io::BufRead;
    let file = std::fs::File::open(events).ok()?;
    std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .take(1000)
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(&line).ok())
        .find(|event| event["type"] == "reception")
        .map(|event| match &event["dkim"] {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        })
}

/// `perf record -g` on the daemon until stopped.
pub(crate) fn start_perf(pid: u32, output: &Path) -> Result<Child, RunError> {
    Command::new("perf")
        .args(["record", "-g", "-p", &pid.to_string(), "-o"])
        .arg(output)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| RunError::Io {
            what: "cannot start perf (is it installed?)".into(),
            source,
        })
}

/// SIGINT makes perf write its data file and exit.
pub(crate) fn stop_perf(perf: &mut Child) {
    procs::signal(perf.id(), "-INT");
    let _ = perf.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(starttls: bool) -> Scenario {
        Scenario {
            messages: 10,
            warmup: 0,
            connections: 1,
            size: 100,
            rcpts: 1,
            dkim: Dkim::Off,
            sync: true,
            rate: 0.0,
            delivery_connections: 1,
            ready_queue_size: None,
            tenant: false,
            cluster: None,
            connection_per_message: false,
            starttls,
        }
    }

    #[test]
    fn a_starttls_scenario_gives_the_daemon_a_certificate_in_smtp_in() {
        let dir = Path::new("/var/tmp/bench-rep");
        let text = daemon_config(&scenario(true), dir, 2526, "5s", None);
        let smtp_in = text.find("[smtp_in]").unwrap();
        let next = smtp_in + text[smtp_in..].find("\n[").unwrap();
        let section = &text[smtp_in..next];
        assert!(
            section.contains("tls_cert = \"/var/tmp/bench-rep/tls-cert.pem\""),
            "{text}"
        );
        assert!(
            section.contains("tls_key = \"/var/tmp/bench-rep/tls-key.pem\""),
            "{text}"
        );
        let plain = daemon_config(&scenario(false), dir, 2526, "5s", None);
        assert!(!plain.contains("tls_cert"), "{plain}");
        assert!(injection_for(&scenario(true), "127.0.0.1:1".parse().unwrap()).starttls);
    }
}
