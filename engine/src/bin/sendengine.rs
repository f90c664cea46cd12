//! `sendengine`: the daemon binary, a thin shell over the library.
//!
//!     sendengine --config PATH          run in the foreground
//!     sendengine --check-config PATH    validate the configuration and exit
//!
//! Logs go to stderr (journald under systemd); `RUST_LOG` overrides the
//! `[log] filter` of the configuration. Exit status: 0 after a clean stop,
//! 1 for a configuration or start-up error, 2 for bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use sendengine::config::Config;

/// See the `jemalloc` feature in Cargo.toml for why.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (its `malloc_conf`; `_RJEM_MALLOC_CONF` in the
/// environment still overrides them). Freed pages go back to the system
/// after about a second instead of ten: a drain loads and drops a 10 KB
/// body per message, and with the default decay ~30 MiB of freed memory
/// stayed resident (peak RSS after a restart with 200k queued: 176 -> 144
/// MiB), at no measurable CPU cost (BENCHMARKS.md, goal 4).
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static malloc_conf: &[u8; 37] = b"dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// After a stop, how long tasks that outlived the shutdown grace (a
/// delivery stuck on a silent server) may hold up the exit.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(2);

const USAGE: &str = "usage: sendengine --config PATH | --check-config PATH | --version";

enum Mode {
    Run(PathBuf),
    Check(PathBuf),
}

fn parse_args() -> Result<Mode, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, path] if flag == "--config" || flag == "-c" => Ok(Mode::Run(path.into())),
        [flag, path] if flag == "--check-config" => Ok(Mode::Check(path.into())),
        [flag] if flag == "--version" || flag == "-V" => {
            println!("sendengine {}", env!("CARGO_PKG_VERSION"));
            std::process::exit(0)
        }
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{USAGE}");
            std::process::exit(0)
        }
        _ => Err(USAGE.to_owned()),
    }
}

fn main() -> ExitCode {
    let mode = match parse_args() {
        Ok(mode) => mode,
        Err(usage) => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    let (path, check_only) = match mode {
        Mode::Run(p) => (p, false),
        Mode::Check(p) => (p, true),
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sendengine: configuration error: {e}");
            return ExitCode::from(1);
        }
    };
    if check_only {
        println!("{}: configuration OK", path.display());
        return ExitCode::SUCCESS;
    }
    if let Err(e) = sendengine::logging::init(config.log.filter.as_deref()) {
        eprintln!("sendengine: configuration error: {e}");
        return ExitCode::from(1);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime.worker_threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sendengine: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(sendengine::daemon::run(config, path));
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}
