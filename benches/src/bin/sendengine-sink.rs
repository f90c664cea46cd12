//! `sendengine-sink`: an SMTP server that accepts, counts and logs messages,
//! with fault modes, for the engine's integration tests and benchmarks.
//!
//! Prints `sendengine-sink listening on IP:PORT` as its first stdout line,
//! and `messages=N recipients=M` when stopped by SIGTERM or SIGINT.

use std::error::Error;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use sendengine_benches::args::{ArgError, Args, parse_credentials};
use sendengine_benches::fault::{FaultRule, FaultRules};
use sendengine_benches::sink::{Sink, SinkConfig, TlsMode, bind};
use tokio::signal::unix::{SignalKind, signal};

const USAGE: &str =
    "usage: sendengine-sink --listen ADDR [--tls starttls|implicit] [--auth USER:PASS]
    [--log FILE] [--store-dir DIR] [--no-pipelining] [--max-size BYTES] [--hostname NAME]
    [--fault PHASE[~SUBSTRING][#COUNT]=ACTION]...
  PHASE (and what ~SUBSTRING is matched against, case-insensitively):
    greeting (client IP) | ehlo (client name) | mail (sender) | rcpt (recipient)
    | data (\"sender rcpt1 rcpt2..\") | dot (\"sender rcpt1 rcpt2.. message-id\")
  #COUNT: only the first COUNT matches of the rule (process-wide)
  ACTION: 'CODE TEXT' (421 also closes) | disconnect | stall";

#[tokio::main]
async fn main() -> ExitCode {
    let (listen, config) = match parse_args(Args::from_env()) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("sendengine-sink: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&listen, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sendengine-sink: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(listen: &str, config: SinkConfig) -> Result<(), Box<dyn Error>> {
    let addr = resolve(listen).await?;
    let sink = Arc::new(Sink::new(config)?);
    let listener = bind(addr)?;
    let local = listener.local_addr()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "sendengine-sink listening on {local}")?;
    stdout.flush()?;
    drop(stdout);

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = Arc::clone(&sink).serve(listener) => {}
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    let (messages, recipients) = sink.totals();
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "messages={messages} recipients={recipients}")?;
    stdout.flush()?;
    // Stalled sessions may still be open: leave without waiting for them.
    std::process::exit(0);
}

async fn resolve(listen: &str) -> Result<SocketAddr, Box<dyn Error>> {
    if let Ok(addr) = listen.parse() {
        return Ok(addr);
    }
    tokio::net::lookup_host(listen)
        .await?
        .next()
        .ok_or_else(|| format!("{listen} resolves to no address").into())
}

/// Reads the command line; None means --help.
fn parse_args(mut args: Args) -> Result<Option<(String, SinkConfig)>, Box<dyn Error>> {
    let mut listen = None;
    let mut config = SinkConfig::default();
    let mut faults = Vec::new();
    while let Some(flag) = args.next_flag() {
        match flag.as_str() {
            "--listen" => listen = Some(args.value(&flag)?),
            "--tls" => config.tls = parse_tls_mode(&flag, &args.value(&flag)?)?,
            "--auth" => config.auth = Some(parse_credentials(&flag, &args.value(&flag)?)?),
            "--log" => config.log_path = Some(args.value(&flag)?.into()),
            "--store-dir" => config.store_dir = Some(args.value(&flag)?.into()),
            "--no-pipelining" => config.pipelining = false,
            "--max-size" => config.max_size = args.parsed(&flag)?,
            "--hostname" => config.hostname = args.value(&flag)?,
            "--fault" => faults.push(args.value(&flag)?.parse::<FaultRule>()?),
            "--help" | "-h" => return Ok(None),
            _ => return Err(ArgError::Unknown(flag).into()),
        }
    }
    config.faults = FaultRules::new(faults);
    let listen = listen.ok_or_else(|| ArgError::Required("--listen".to_string()))?;
    Ok(Some((listen, config)))
}

fn parse_tls_mode(flag: &str, value: &str) -> Result<TlsMode, ArgError> {
    match value {
        "starttls" => Ok(TlsMode::StartTls),
        "implicit" => Ok(TlsMode::Implicit),
        _ => Err(ArgError::BadValue {
            flag: flag.to_string(),
            value: value.to_string(),
            reason: "expected starttls or implicit".to_string(),
        }),
    }
}
