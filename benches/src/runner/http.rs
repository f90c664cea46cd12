//! `sendengine-bench --http`: recipients per second injected through the
//! HTTP API (requests of R personalised recipients, one message rendered
//! from a template per recipient) against the same number of messages of
//! the same size over SMTP with the load generator, side by side: each
//! repetition runs both, each on a fresh sink, spool and daemon, and
//! alternates which goes first so that a drifting machine load favours
//! neither.

use std::path::Path;
use std::process::{Command, Stdio};

use super::procs::{Binaries, Daemon, Injection, Loadgen, Sink, sendctl, unused_port};
use super::{RunError, Scenario, daemon_config, fresh_dir, proc, write_file};
use crate::httpload::HttpLoadSummary;

/// The HTTP side of the comparison.
#[derive(Debug, Clone)]
pub struct HttpSide {
    /// Recipients per request.
    pub rcpts: usize,
    pub connections: usize,
}

/// One repetition: both rates and the load around them.
#[derive(Debug, Clone)]
pub struct CompareResult {
    pub smtp_rcpts_per_s: f64,
    pub http_rcpts_per_s: f64,
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
}

impl CompareResult {
    pub fn ratio(&self) -> f64 {
        if self.smtp_rcpts_per_s > 0.0 {
            self.http_rcpts_per_s / self.smtp_rcpts_per_s
        } else {
            0.0
        }
    }

    pub fn line(&self) -> String {
        format!(
            "SMTP {:.0} rcpts/s, HTTP {:.0} rcpts/s, HTTP/SMTP {:.2}, load {:.2}→{:.2}",
            self.smtp_rcpts_per_s,
            self.http_rcpts_per_s,
            self.ratio(),
            self.load_before[0],
            self.load_after[0]
        )
    }
}

/// Runs repetition `rep` in `dir`: SMTP then HTTP, or the other way round.
pub fn run_compare(
    bins: &Binaries,
    scenario: &Scenario,
    http: &HttpSide,
    dir: &Path,
    rep: usize,
) -> Result<CompareResult, RunError> {
    let load_before = proc::load_average();
    let (smtp, http_rate) = if rep % 2 == 1 {
        let smtp = smtp_rate(bins, scenario, &dir.join("smtp"))?;
        (smtp, http_rate(bins, scenario, http, &dir.join("http"))?)
    } else {
        let h = http_rate(bins, scenario, http, &dir.join("http"))?;
        (smtp_rate(bins, scenario, &dir.join("smtp"))?, h)
    };
    Ok(CompareResult {
        smtp_rcpts_per_s: smtp,
        http_rcpts_per_s: http_rate,
        load_before,
        load_after: proc::load_average(),
    })
}

/// The load generator's acknowledged recipients per second.
fn smtp_rate(bins: &Binaries, scenario: &Scenario, dir: &Path) -> Result<f64, RunError> {
    let dir = fresh_dir(dir)?;
    let sink = Sink::start(bins, 0, &dir.join("sink.jsonl"))?;
    let config = dir.join("config.toml");
    write_file(
        &config,
        &daemon_config(scenario, &dir, sink.port, "5s", None),
    )?;
    let daemon = Daemon::start(bins, &config, &dir.join("daemon.log"))?;
    let injection = Injection {
        server: daemon.addr,
        messages: scenario.messages,
        connections: scenario.connections,
        size: scenario.size,
        rcpts: 1,
        rate: 0.0,
        acks_file: None,
        connection_per_message: scenario.connection_per_message,
        starttls: false,
    };
    let summary = Loadgen::start(bins, &injection)?.finish()?;
    if summary.acked != scenario.messages {
        return Err(RunError::Failed(format!(
            "SMTP: {} of {} messages acknowledged",
            summary.acked, scenario.messages
        )));
    }
    drop(daemon);
    drop(sink);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(summary.msgs_per_s)
}

/// `sendengine-httpload`'s queued recipients per second, for the same
/// number of recipients (`scenario.messages`).
fn http_rate(
    bins: &Binaries,
    scenario: &Scenario,
    http: &HttpSide,
    dir: &Path,
) -> Result<f64, RunError> {
    let dir = fresh_dir(dir)?;
    let sink = Sink::start(bins, 0, &dir.join("sink.jsonl"))?;
    let port = unused_port()?;
    let config = dir.join("config.toml");
    let mut text = daemon_config(scenario, &dir, sink.port, "5s", None);
    text.push_str(&format!(
        "[http_in]\nlisten = [\"127.0.0.1:{port}\"]\n[[user]]\nname = \"bench\"\npassword = \"bench\"\n"
    ));
    write_file(&config, &text)?;
    let daemon = Daemon::start(bins, &config, &dir.join("daemon.log"))?;
    let key = sendctl(
        bins,
        &dir.join("admin.sock"),
        &["--json", "user", "api-key", "create", "bench"],
    )?;
    let key: serde_json::Value = serde_json::from_str(&key)
        .map_err(|e| RunError::Failed(format!("sendctl's key is not JSON: {e}")))?;
    let token = key["token"].as_str().unwrap_or_default().to_owned();
    let requests = scenario.messages.div_ceil(http.rcpts as u64);
    let summary = httpload(
        bins,
        daemon.addr.ip(),
        port,
        &token,
        requests,
        http,
        scenario.size,
    )?;
    if summary.recipients_queued != requests * http.rcpts as u64 {
        return Err(RunError::Failed(format!("HTTP: {}", summary.line())));
    }
    drop(daemon);
    drop(sink);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(summary.rcpts_per_s)
}

fn httpload(
    bins: &Binaries,
    ip: std::net::IpAddr,
    port: u16,
    token: &str,
    requests: u64,
    http: &HttpSide,
    size: usize,
) -> Result<HttpLoadSummary, RunError> {
    let program = bins.path("sendengine-httpload")?;
    let output = Command::new(&program)
        .arg("--server")
        .arg(format!("{ip}:{port}"))
        .args(["--token", token, "--json"])
        .args(["--requests", &requests.to_string()])
        .args(["--rcpts", &http.rcpts.to_string()])
        .args(["--connections", &http.connections.to_string()])
        .args(["--size", &size.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| RunError::Io {
            what: format!("cannot run {}", program.display()),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line)
        .map_err(|e| RunError::Failed(format!("unreadable httpload summary {line:?}: {e}")))
}
