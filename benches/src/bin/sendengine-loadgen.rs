//! `sendengine-loadgen`: injects N messages over C SMTP connections and
//! prints what happened (`attempted=.. acked=.. ...` or JSON with --json).
//!
//! Exit code 0 when every message was acknowledged, 1 otherwise, 2 on bad
//! arguments.

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use sendengine_benches::args::{ArgError, Args, parse_credentials};
use sendengine_benches::loadgen::{LoadgenConfig, run};

const USAGE: &str = "usage: sendengine-loadgen --server HOST:PORT --messages N [--connections C (10)]
    [--size BODY_BYTES (10240)] [--rcpts R (1)] [--from ADDR (loadgen@example.com)]
    [--to-domain D (example.net)] [--ids-file FILE] [--acks-file FILE] [--rate MSGS_PER_S (0 = unlimited)]
    [--auth USER:PASS] [--starttls] [--no-pipelining] [--keep-going] [--connection-per-message]
    [--timeout SECS (60)] [--json]";

/// Most recipients per message the generator will send.
const MAX_RCPTS: usize = 1000;
/// Most messages per run (the latency samples are kept in memory).
const MAX_MESSAGES: u64 = 100_000_000;
/// Slowest --rate other than 0, in messages per second.
const MIN_RATE: f64 = 0.001;
/// Longest --timeout, in seconds.
const MAX_TIMEOUT_SECS: f64 = 86_400.0;
/// Most parallel connections.
const MAX_CONNECTIONS: usize = 10_000;

#[tokio::main]
async fn main() -> ExitCode {
    let (config, json) = match parse_args(Args::from_env()) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("sendengine-loadgen: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let messages = config.messages;
    match run(config).await {
        Ok(summary) => {
            println!("{}", if json { summary.json() } else { summary.line() });
            if summary.acked == messages {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("sendengine-loadgen: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the command line; None means --help. Returns the config and --json.
fn parse_args(mut args: Args) -> Result<Option<(LoadgenConfig, bool)>, Box<dyn Error>> {
    let mut config = LoadgenConfig::default();
    let mut json = false;
    let mut messages = None;
    while let Some(flag) = args.next_flag() {
        match flag.as_str() {
            "--server" => config.server = args.value(&flag)?,
            "--messages" => messages = Some(args.parsed(&flag)?),
            "--connections" => config.connections = args.parsed(&flag)?,
            "--size" => config.size = args.parsed(&flag)?,
            "--rcpts" => config.rcpts = args.parsed(&flag)?,
            "--from" => config.from = args.value(&flag)?,
            "--to-domain" => config.to_domain = args.value(&flag)?,
            "--ids-file" => config.ids_file = Some(args.value(&flag)?.into()),
            "--acks-file" => config.acks_file = Some(args.value(&flag)?.into()),
            "--rate" => config.rate = args.parsed(&flag)?,
            "--auth" => config.auth = Some(parse_credentials(&flag, &args.value(&flag)?)?),
            "--starttls" => config.starttls = true,
            "--no-pipelining" => config.pipelining = false,
            "--keep-going" => config.keep_going = true,
            "--connection-per-message" => config.connection_per_message = true,
            "--timeout" => config.timeout = parse_timeout(args.parsed(&flag)?)?,
            "--json" => json = true,
            "--help" | "-h" => return Ok(None),
            _ => return Err(ArgError::Unknown(flag).into()),
        }
    }
    if config.server.is_empty() {
        return Err(ArgError::Required("--server".to_string()).into());
    }
    config.messages = messages.ok_or_else(|| ArgError::Required("--messages".to_string()))?;
    check_ranges(&config)?;
    Ok(Some((config, json)))
}

fn check_ranges(config: &LoadgenConfig) -> Result<(), String> {
    if !(1..=MAX_CONNECTIONS).contains(&config.connections) {
        return Err(format!("--connections must be 1..={MAX_CONNECTIONS}"));
    }
    if !(1..=MAX_RCPTS).contains(&config.rcpts) {
        return Err(format!("--rcpts must be 1..={MAX_RCPTS}"));
    }
    if config.messages > MAX_MESSAGES {
        return Err(format!("--messages must be at most {MAX_MESSAGES}"));
    }
    if !(config.rate == 0.0 || (MIN_RATE..=f64::MAX).contains(&config.rate)) {
        return Err(format!("--rate must be 0 or a number from {MIN_RATE}"));
    }
    Ok(())
}

fn parse_timeout(secs: f64) -> Result<Duration, String> {
    if secs > 0.0 && secs <= MAX_TIMEOUT_SECS {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!(
            "--timeout must be above 0 and at most {MAX_TIMEOUT_SECS} seconds"
        ))
    }
}
