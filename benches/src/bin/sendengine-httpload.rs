//! `sendengine-httpload`: POSTs N `/api/inject/v1` requests of R
//! personalised recipients over C connections and prints what the answers
//! said (`requests ok=.. recipients queued=.. rate=..` or JSON with --json).
//!
//! Exit code 0 when every recipient was queued, 1 otherwise, 2 on bad
//! arguments.

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use sendengine_benches::args::{ArgError, Args};
use sendengine_benches::httpload::{HttpLoadConfig, run};

const USAGE: &str = "usage: sendengine-httpload --server HOST:PORT --token API_KEY --requests N
    [--rcpts R (1000)] [--connections C (4)] [--size TEMPLATE_BYTES (10240)]
    [--from ADDR (loadgen@example.com)] [--to-domain D (example.net)] [--timeout SECS (300)] [--json]";

/// Most recipients per request (the daemon's default bound is 10,000).
const MAX_RCPTS: usize = 100_000;
/// Most parallel connections.
const MAX_CONNECTIONS: usize = 1_000;

#[tokio::main]
async fn main() -> ExitCode {
    let (config, json) = match parse_args(Args::from_env()) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("sendengine-httpload: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let wanted = config.requests * config.rcpts as u64;
    match run(config).await {
        Ok(summary) => {
            if json {
                println!("{}", serde_json::to_string(&summary).unwrap_or_default());
            } else {
                println!("{}", summary.line());
            }
            if summary.recipients_queued == wanted {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("sendengine-httpload: {err}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(mut args: Args) -> Result<Option<(HttpLoadConfig, bool)>, Box<dyn Error>> {
    let mut config = HttpLoadConfig::default();
    let mut json = false;
    let (mut server, mut requests) = (None, None);
    while let Some(flag) = args.next_flag() {
        match flag.as_str() {
            "--server" => server = Some(args.parsed(&flag)?),
            "--token" => config.token = args.value(&flag)?,
            "--requests" => requests = Some(args.parsed(&flag)?),
            "--rcpts" => config.rcpts = args.parsed(&flag)?,
            "--connections" => config.connections = args.parsed(&flag)?,
            "--size" => config.size = args.parsed(&flag)?,
            "--from" => config.from = args.value(&flag)?,
            "--to-domain" => config.to_domain = args.value(&flag)?,
            "--timeout" => config.timeout = Duration::from_secs(args.parsed(&flag)?),
            "--json" => json = true,
            "--help" | "-h" => return Ok(None),
            _ => return Err(ArgError::Unknown(flag).into()),
        }
    }
    config.server = server.ok_or_else(|| ArgError::Required("--server".to_string()))?;
    config.requests = requests.ok_or_else(|| ArgError::Required("--requests".to_string()))?;
    if config.token.is_empty() {
        return Err(ArgError::Required("--token".to_string()).into());
    }
    if !(1..=MAX_RCPTS).contains(&config.rcpts) {
        return Err(format!("--rcpts must be 1..={MAX_RCPTS}").into());
    }
    if !(1..=MAX_CONNECTIONS).contains(&config.connections) {
        return Err(format!("--connections must be 1..={MAX_CONNECTIONS}").into());
    }
    Ok(Some((config, json)))
}
