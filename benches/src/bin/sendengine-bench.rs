//! `sendengine-bench`: runs one end-to-end scenario on loopback (sink,
//! daemon, load generator), repeated, and prints each repetition and the
//! median [min..max] of every figure; with `--peer postfix` it also runs the
//! Postfix peer for the same message size and prints the ratios ours/Postfix.
//! `--backlog` measures a queue built while the delivery server is down.
//! `--cluster-database URL [--cluster-redis URL]` runs the daemon as one
//! node of a fleet (issue #17); `--tenant` gives standalone the same tenant.
//! `--http` compares recipients/s injected over the HTTP API (requests of
//! `--http-rcpts` personalised recipients) with the same messages over SMTP.
//! `--connection-per-message` runs each repetition twice, on reused
//! connections and then with a fresh connection per message, and prints the
//! daemon's CPU per message of both and their ratio (issue #20).
//!
//! Exit code 0 on success, 1 when a run failed, 2 on bad arguments.

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;

use sendengine_benches::args::{ArgError, Args};
use sendengine_benches::runner::backlog::{BacklogOptions, BacklogResult, run_backlog};
use sendengine_benches::runner::cluster::ClusterTarget;
use sendengine_benches::runner::http::{CompareResult, HttpSide, run_compare};
use sendengine_benches::runner::peer::{self, PeerResult, PeerRun};
use sendengine_benches::runner::procs::Binaries;
use sendengine_benches::runner::stats::Spread;
use sendengine_benches::runner::{Dkim, RepOptions, RepResult, Scenario, proc, run_rep};

const USAGE: &str = "usage: sendengine-bench [--messages N (20000)] [--warmup N (1000)] [--connections C (20)]
    [--size BODY_BYTES (10240)] [--rcpts R (1)] [--dkim off|rsa|ed25519 (off)] [--sync on|off (on)]
    [--rate MSGS_PER_S (0 = unlimited)] [--reps K (3)] [--delivery-connections C (20)] [--ready-queue-size N]
    [--peer postfix] [--peer-messages N (10000)] [--peer-script PATH (../shared/bench/peer-postfix.sh)]
    [--backlog [--crash]] [--min-free-gib G (10)] [--perf FILE] [--dir DIR (/var/tmp/sendengine-bench)]
    [--bin-dir DIR (beside this program)] [--keep]
    [--tenant] [--cluster-database postgres://USER@HOST:PORT/DB [--cluster-redis redis://HOST:PORT]]
    [--http [--http-rcpts R (1000)] [--http-connections C (4)]] [--connection-per-message]
    [--starttls]";

/// Most repetitions.
const MAX_REPS: usize = 20;
/// Most messages per run.
const MAX_MESSAGES: u64 = 10_000_000;

struct Options {
    scenario: Scenario,
    reps: usize,
    peer: bool,
    peer_messages: u64,
    peer_script: Option<PathBuf>,
    backlog: bool,
    /// Backlog: SIGKILL the daemon instead of SIGTERM before the restart.
    crash: bool,
    min_free_gib: u64,
    perf: Option<PathBuf>,
    dir: PathBuf,
    bins: Binaries,
    keep: bool,
    /// `--http`: the HTTP-against-SMTP comparison instead of one scenario.
    http: Option<HttpSide>,
    /// `--connection-per-message`: reused connections against a connection
    /// per message, side by side in each repetition.
    connection_compare: bool,
}

fn main() -> ExitCode {
    let options = match parse_args(Args::from_env()) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("sendengine-bench: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sendengine-bench: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: &Options) -> Result<(), Box<dyn Error>> {
    let load = proc::load_average();
    println!("machine: {}", proc::machine_description());
    println!(
        "load average at start: {:.2} {:.2} {:.2}",
        load[0], load[1], load[2]
    );
    println!("scenario: {}", options.scenario.describe());
    if let Some(http) = &options.http {
        let mut reps = Vec::new();
        for rep in 1..=options.reps {
            let dir = options.dir.join(format!("http-rep-{rep}"));
            let result = run_compare(&options.bins, &options.scenario, http, &dir, rep)?;
            println!("rep {rep}: {}", result.line());
            reps.push(result);
        }
        print_compare(http, &reps);
        return Ok(());
    }
    if options.backlog {
        let result = run_backlog(
            &options.bins,
            &options.scenario,
            &options.dir.join("backlog"),
            &BacklogOptions {
                min_free: options.min_free_gib << 30,
                crash: options.crash,
                perf_data: options.perf.clone(),
            },
        )?;
        print_backlog(&options.scenario, &result);
        return Ok(());
    }
    if options.connection_compare {
        return run_connection_compare(options);
    }
    let mut reps = Vec::new();
    for rep in 1..=options.reps {
        let rep_options = RepOptions {
            perf_data: options.perf.clone().filter(|_| rep == 1),
            keep: options.keep,
        };
        let dir = options.dir.join(format!("rep-{rep}"));
        let result = run_rep(&options.bins, &options.scenario, &dir, &rep_options)?;
        println!("rep {rep}: {}", result.line());
        println!(
            "rep {rep} counters: {}",
            result.counters_line(options.scenario.messages)
        );
        reps.push(result);
    }
    print_summary(&options.scenario, &reps);
    if options.peer {
        let script = options
            .peer_script
            .clone()
            .or_else(peer::default_script)
            .ok_or("the peer script was not found: give --peer-script")?;
        let test = if options.scenario.dkim == Dkim::Off {
            "postfix"
        } else {
            "dkim"
        };
        if options.scenario.rcpts != 1 {
            println!(
                "note: the peer sends 1 recipient per message; ours sent {}",
                options.scenario.rcpts
            );
        }
        let peer_run = PeerRun {
            script,
            out_dir: options.dir.join("peer-postfix"),
            test,
            messages: options.peer_messages,
            size: options.scenario.size,
            reps: options.reps,
        };
        let peer = peer_run.run()?;
        print_ratios(test, &reps, &peer);
    }
    Ok(())
}

/// Each repetition on reused connections, then with a connection per
/// message (the warm-up too), so both see the same machine load; `--perf`
/// records the first connection-per-message run.
fn run_connection_compare(options: &Options) -> Result<(), Box<dyn Error>> {
    let reused = Scenario {
        connection_per_message: false,
        ..options.scenario.clone()
    };
    let per_message = Scenario {
        connection_per_message: true,
        ..options.scenario.clone()
    };
    let (mut reused_reps, mut per_message_reps) = (Vec::new(), Vec::new());
    for rep in 1..=options.reps {
        for (label, scenario, reps) in [
            ("reused", &reused, &mut reused_reps),
            ("conn/msg", &per_message, &mut per_message_reps),
        ] {
            let rep_options = RepOptions {
                perf_data: options
                    .perf
                    .clone()
                    .filter(|_| rep == 1 && scenario.connection_per_message),
                keep: options.keep,
            };
            let dir = options.dir.join(format!("rep-{rep}-{}", reps.len()));
            let result = run_rep(&options.bins, scenario, &dir, &rep_options)?;
            println!("rep {rep} {label}: {}", result.line());
            println!(
                "rep {rep} {label} counters: {}",
                result.counters_line(options.scenario.messages)
            );
            reps.push(result);
        }
    }
    println!("reused connections:");
    print_summary(&reused, &reused_reps);
    println!("a connection per message:");
    print_summary(&per_message, &per_message_reps);
    let ratios: Vec<f64> = per_message_reps
        .iter()
        .zip(&reused_reps)
        .map(|(p, r)| p.cpu_ms_per_msg / r.cpu_ms_per_msg)
        .collect();
    println!(
        "  {:<22} {}",
        "CPU conn/msg ÷ reused",
        Spread::of(&ratios).map_or("-".to_string(), |s| s.to_string())
    );
    Ok(())
}

fn spread_of(reps: &[RepResult], figure: impl Fn(&RepResult) -> Option<f64>) -> String {
    let values: Vec<f64> = reps.iter().filter_map(figure).collect();
    Spread::of(&values).map_or("-".to_string(), |spread| spread.to_string())
}

/// How one figure is read from a repetition.
type Figure = fn(&RepResult) -> Option<f64>;

fn print_summary(scenario: &Scenario, reps: &[RepResult]) {
    println!(
        "summary over {} reps, median [min..max] ±half-spread:",
        reps.len()
    );
    let rows: [(&str, Figure); 9] = [
        ("injection msgs/s", |r| Some(r.inject_rate)),
        ("end-to-end msgs/s", |r| Some(r.e2e_rate)),
        ("latency p50 ms", |r| r.latency_p50_ms),
        ("latency p99 ms", |r| r.latency_p99_ms),
        ("latency max ms", |r| r.latency_max_ms),
        ("daemon CPU ms/msg", |r| Some(r.cpu_ms_per_msg)),
        ("daemon peak RSS MiB", |r| {
            Some(r.peak_rss_kib as f64 / 1024.0)
        }),
        ("load avg before", |r| Some(r.load_before[0])),
        ("load avg after", |r| Some(r.load_after[0])),
    ];
    for (name, figure) in &rows {
        println!("  {name:<22} {}", spread_of(reps, figure));
    }
    println!("  {:<22} {}", "durability", scenario.durability());
    if let Some(dkim) = reps.first().and_then(|r| r.dkim_event.clone()) {
        println!("  {:<22} {dkim}", "dkim (reception event)");
    }
}

fn print_compare(http: &HttpSide, reps: &[CompareResult]) {
    let show = |values: Vec<f64>| Spread::of(&values).map_or("-".to_string(), |s| s.to_string());
    println!(
        "summary over {} reps (HTTP: {} rcpts/request, {} connections), median [min..max] ±half-spread:",
        reps.len(),
        http.rcpts,
        http.connections
    );
    println!(
        "  {:<22} {}",
        "SMTP rcpts/s",
        show(reps.iter().map(|r| r.smtp_rcpts_per_s).collect())
    );
    println!(
        "  {:<22} {}",
        "HTTP rcpts/s",
        show(reps.iter().map(|r| r.http_rcpts_per_s).collect())
    );
    println!(
        "  {:<22} {}",
        "HTTP/SMTP",
        show(reps.iter().map(CompareResult::ratio).collect())
    );
    println!(
        "  {:<22} {}",
        "load avg before",
        show(reps.iter().map(|r| r.load_before[0]).collect())
    );
    println!(
        "  {:<22} {}",
        "load avg after",
        show(reps.iter().map(|r| r.load_after[0]).collect())
    );
}

fn print_ratios(test: &str, ours: &[RepResult], peer: &PeerResult) {
    let ours_e2e = Spread::of(&ours.iter().map(|r| r.e2e_rate).collect::<Vec<_>>());
    let ours_inject = Spread::of(&ours.iter().map(|r| r.inject_rate).collect::<Vec<_>>());
    let ours_cpu = Spread::of(&ours.iter().map(|r| r.cpu_ms_per_msg).collect::<Vec<_>>());
    let peer_e2e = Spread::of(&peer.e2e_rate);
    let peer_inject = Spread::of(&peer.inject_rate);
    let peer_cpu = Spread::of(&peer.cpu_ms_per_msg);
    let label = if test == "dkim" {
        "Postfix+opendkim"
    } else {
        "Postfix"
    };
    println!("peer {label} ({} kept reps):", peer.e2e_rate.len());
    let show = |s: Option<Spread>| s.map_or("-".to_string(), |s| s.to_string());
    println!("  {:<22} {}", "injection msgs/s", show(peer_inject));
    println!("  {:<22} {}", "end-to-end msgs/s", show(peer_e2e));
    println!("  {:<22} {}", "CPU ms/msg", show(peer_cpu));
    for flagged in &peer.flagged {
        println!("  flagged by the script: {flagged}");
    }
    let ratio = |ours: Option<Spread>, theirs: Option<Spread>| match (ours, theirs) {
        (Some(o), Some(t)) if t.median > 0.0 => format!(
            "{:.2}x (range {:.2}..{:.2})",
            o.median / t.median,
            o.min / t.max,
            o.max / t.min.max(f64::MIN_POSITIVE)
        ),
        _ => "-".to_string(),
    };
    println!("ratios ours/{label}:");
    println!("  {:<22} {}", "end-to-end", ratio(ours_e2e, peer_e2e));
    println!("  {:<22} {}", "injection", ratio(ours_inject, peer_inject));
    println!(
        "  {:<22} {}",
        "CPU per msg (theirs/ours)",
        ratio(peer_cpu, ours_cpu)
    );
}

fn print_backlog(scenario: &Scenario, result: &BacklogResult) {
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!("backlog result ({}):", scenario.durability());
    if result.stopped_for_disk {
        println!("  injection stopped early to keep the disk's free space");
    }
    println!(
        "  queued with the sink down: {:.0} msgs/s; spool {:.2} GiB; peak RSS {:.1} MiB",
        result.inject_rate,
        gib(result.spool_bytes),
        mib(result.peak_rss_inject_kib)
    );
    println!("  RSS trend (s, spool GiB, RSS MiB):");
    let step = (result.rss_trend.len() / 12).max(1);
    for (i, (t, spool, rss)) in result.rss_trend.iter().enumerate() {
        if i % step == 0 || i + 1 == result.rss_trend.len() {
            println!("    {t:>7.0} {:>7.2} {:>8.1}", gib(*spool), mib(*rss));
        }
    }
    println!("  stop took {:.1} s", result.stop_s);
    println!(
        "  restart: ready after {:.2} s, first delivery after {:.2} s",
        result.restart_ready_s, result.restart_first_delivery_s
    );
    println!(
        "  drain: {} msgs in {:.1} s = {:.0} msgs/s, CPU {:.3} ms/msg, peak RSS {:.1} MiB",
        result.delivered,
        result.drain_s,
        result.drain_rate,
        result.drain_cpu_ms_per_msg,
        mib(result.peak_rss_drain_kib)
    );
}

/// Reads the command line; None means --help.
fn parse_args(mut args: Args) -> Result<Option<Options>, Box<dyn Error>> {
    let mut options = Options {
        scenario: Scenario {
            messages: 20_000,
            warmup: 1_000,
            connections: 20,
            size: 10_240,
            rcpts: 1,
            dkim: Dkim::Off,
            sync: true,
            rate: 0.0,
            delivery_connections: 20,
            ready_queue_size: None,
            tenant: false,
            cluster: None,
            connection_per_message: false,
            starttls: false,
        },
        reps: 3,
        peer: false,
        peer_messages: 10_000,
        peer_script: None,
        backlog: false,
        crash: false,
        min_free_gib: 10,
        perf: None,
        dir: PathBuf::from("/var/tmp/sendengine-bench"),
        bins: Binaries::beside_self(),
        keep: false,
        http: None,
        connection_compare: false,
    };
    let scenario = &mut options.scenario;
    let mut cluster_redis = None;
    while let Some(flag) = args.next_flag() {
        match flag.as_str() {
            "--messages" => scenario.messages = args.parsed(&flag)?,
            "--warmup" => scenario.warmup = args.parsed(&flag)?,
            "--connections" => scenario.connections = args.parsed(&flag)?,
            "--size" => scenario.size = args.parsed(&flag)?,
            "--rcpts" => scenario.rcpts = args.parsed(&flag)?,
            "--dkim" => {
                let value = args.value(&flag)?;
                scenario.dkim =
                    Dkim::parse(&value).ok_or_else(|| bad(&flag, &value, "off, rsa or ed25519"))?;
            }
            "--sync" => {
                let value = args.value(&flag)?;
                scenario.sync = match value.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => return Err(bad(&flag, &value, "on or off").into()),
                };
            }
            "--rate" => scenario.rate = args.parsed(&flag)?,
            "--delivery-connections" => scenario.delivery_connections = args.parsed(&flag)?,
            "--ready-queue-size" => scenario.ready_queue_size = Some(args.parsed(&flag)?),
            "--reps" => options.reps = args.parsed(&flag)?,
            "--peer" => {
                let value = args.value(&flag)?;
                if value != "postfix" {
                    return Err(bad(&flag, &value, "the only peer is postfix").into());
                }
                options.peer = true;
            }
            "--peer-messages" => options.peer_messages = args.parsed(&flag)?,
            "--peer-script" => options.peer_script = Some(args.value(&flag)?.into()),
            "--backlog" => {
                // The backlog measure has no warm-up injection.
                options.backlog = true;
                scenario.warmup = 0;
            }
            "--crash" => options.crash = true,
            "--min-free-gib" => options.min_free_gib = args.parsed(&flag)?,
            "--perf" => options.perf = Some(args.value(&flag)?.into()),
            "--dir" => options.dir = args.value(&flag)?.into(),
            "--bin-dir" => options.bins.dir = args.value(&flag)?.into(),
            "--keep" => options.keep = true,
            "--http" => {
                options.http.get_or_insert(HttpSide {
                    rcpts: 1000,
                    connections: 4,
                });
            }
            "--http-rcpts" => {
                let rcpts = args.parsed(&flag)?;
                options
                    .http
                    .get_or_insert(HttpSide {
                        rcpts,
                        connections: 4,
                    })
                    .rcpts = rcpts;
            }
            "--http-connections" => {
                let connections = args.parsed(&flag)?;
                options
                    .http
                    .get_or_insert(HttpSide {
                        rcpts: 1000,
                        connections,
                    })
                    .connections = connections;
            }
            "--tenant" => scenario.tenant = true,
            "--connection-per-message" => options.connection_compare = true,
            "--starttls" => scenario.starttls = true,
            "--cluster-database" => {
                scenario.tenant = true;
                scenario.cluster = Some(ClusterTarget {
                    database: args.value(&flag)?,
                    redis: None,
                });
            }
            "--cluster-redis" => cluster_redis = Some(args.value(&flag)?),
            "--help" | "-h" => return Ok(None),
            _ => return Err(ArgError::Unknown(flag).into()),
        }
    }
    check_cluster(&mut options, cluster_redis)?;
    check_ranges(&options)?;
    if options.scenario.starttls && (options.backlog || options.http.is_some() || options.peer) {
        return Err(bad(
            "--starttls",
            "with --backlog, --http or --peer",
            "STARTTLS is measured in plain repetitions and --connection-per-message only",
        )
        .into());
    }
    Ok(Some(options))
}

fn bad(flag: &str, value: &str, reason: &str) -> ArgError {
    ArgError::BadValue {
        flag: flag.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// `--cluster-redis` belongs to `--cluster-database`; the backlog measure
/// runs standalone only.
fn check_cluster(options: &mut Options, redis: Option<String>) -> Result<(), ArgError> {
    let Some(cluster) = options.scenario.cluster.as_mut() else {
        return match redis {
            Some(url) => Err(bad("--cluster-redis", &url, "needs --cluster-database")),
            None => Ok(()),
        };
    };
    cluster.redis = redis;
    cluster.check().map_err(|reason| {
        bad(
            "--cluster-database/--cluster-redis",
            &cluster.database,
            &reason,
        )
    })?;
    if options.backlog {
        return Err(bad(
            "--backlog",
            "with --cluster-database",
            "the backlog measure runs standalone only",
        ));
    }
    Ok(())
}

fn check_ranges(options: &Options) -> Result<(), ArgError> {
    let s = &options.scenario;
    if s.messages == 0 || s.messages > MAX_MESSAGES {
        return Err(bad(
            "--messages",
            &s.messages.to_string(),
            "1 to 10,000,000",
        ));
    }
    if options.reps == 0 || options.reps > MAX_REPS {
        return Err(bad("--reps", &options.reps.to_string(), "1 to 20"));
    }
    if s.connections == 0 || s.rcpts == 0 || s.delivery_connections == 0 {
        return Err(bad(
            "--connections/--rcpts/--delivery-connections",
            "0",
            "at least 1",
        ));
    }
    if s.rate < 0.0 {
        return Err(bad("--rate", &s.rate.to_string(), "0 or more"));
    }
    Ok(())
}
