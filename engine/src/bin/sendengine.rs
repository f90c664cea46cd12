//! `sendengine`: the daemon binary, a thin shell over the library.
//!
//!     sendengine --config PATH          run in the foreground
//!     sendengine --check-config PATH    validate the configuration and exit

use std::path::PathBuf;
use std::process::ExitCode;

use sendengine::config::Config;

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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sendengine: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(sendengine::daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sendengine: {e}");
            ExitCode::from(1)
        }
    }
}
