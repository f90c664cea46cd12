//! `sendctl`: the command line client of the admin socket.
//!
//! `sendctl [--config FILE | --socket PATH] [--json] COMMAND [ARGS]` turns
//! the arguments into one JSON request, sends it over the Unix socket and
//! prints the result: human tables by default, the raw JSON with
//! `--json`. Exit code 0 on success, 1 when the daemon answered with an
//! error, could not be reached, or a `server test` step failed; 2 on a
//! usage error (an unknown command, help topic or flag, a flag without its
//! value, `--socket` with `--config`).
//! `sendctl help` prints the usage, made from the daemon's command table.

mod args;
mod bounce;
mod cli_words;
mod config_socket;
mod fleet;
mod help;
mod log;
mod queue;
mod render;
mod report;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Map, Value, json};

use args::{Command, Usage};

/// Largest response accepted from the daemon.
const MAX_RESPONSE_BYTES: u64 = 256 * 1024 * 1024;
/// How long to wait for the daemon to take the request and to answer it.
/// Generous: a queue action over millions of recipients takes a while.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let invocation = match args::parse(&argv) {
        Ok(i) => i,
        Err(Usage(message)) => {
            eprintln!(
                "sendctl: {message}\n\nusage: sendctl [--config FILE | --socket PATH] [--json] \
                 COMMAND [ARGS]\n(`sendctl help` lists every command)"
            );
            return ExitCode::from(2);
        }
    };
    let (cmd, args) = match invocation.command {
        Command::Help { topic } => {
            print!("{}", help::text(&topic));
            return ExitCode::SUCCESS;
        }
        Command::BounceParse { files } => return bounce::run(&files, invocation.json),
        Command::Log { args, follow } => {
            return match invocation.socket.resolve() {
                Ok(socket) => log::run(&socket, args, invocation.json, follow),
                Err(message) => {
                    eprintln!("sendctl: {message}");
                    ExitCode::from(1)
                }
            };
        }
        Command::Remote { cmd, args } => (cmd, args),
    };
    let response = invocation
        .socket
        .resolve()
        .and_then(|socket| call(&socket, &cmd, &args));
    let response = match response {
        Ok(r) => r,
        Err(message) => {
            eprintln!("sendctl: {message}");
            return ExitCode::from(1);
        }
    };
    if response.get("ok") != Some(&Value::Bool(true)) {
        let error = &response["error"];
        let message = error["message"]
            .as_str()
            .unwrap_or("the daemon gave no reason");
        eprintln!(
            "sendctl: {}: {}",
            error["code"].as_str().unwrap_or("error"),
            cli_words::message(&cmd, message)
        );
        return ExitCode::from(1);
    }
    let result = &response["result"];
    if invocation.json {
        println!(
            "{}",
            serde_json::to_string_pretty(result).unwrap_or_default()
        );
    } else {
        print!("{}", render::render(&cmd, result));
    }
    // Scripts rely on it: a server test with a failed step is a failure.
    if cmd == "server.test" && result["ok"] != Value::Bool(true) {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// The result of an answer, or the daemon's error as `code: message`.
fn result_of(mut response: Value) -> Result<Value, String> {
    if response.get("ok") == Some(&Value::Bool(true)) {
        return Ok(response["result"].take());
    }
    let error = &response["error"];
    Err(format!(
        "{}: {}",
        error["code"].as_str().unwrap_or("error"),
        error["message"]
            .as_str()
            .unwrap_or("the daemon gave no reason")
    ))
}

// ---- the socket --------------------------------------------------------------

fn call(socket: &Path, cmd: &str, args: &Map<String, Value>) -> Result<Value, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot connect to {}: {e} (is sendengine running? point sendctl at it with --config FILE or --socket PATH)",
            socket.display()
        )
    })?;
    let timeouts = stream
        .set_write_timeout(Some(SEND_TIMEOUT))
        .and_then(|()| stream.set_read_timeout(Some(ANSWER_TIMEOUT)));
    timeouts.map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut line =
        serde_json::to_vec(&json!({"cmd": cmd, "args": args})).map_err(|e| e.to_string())?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| format!("sending to {}: {e}", socket.display()))?;
    let mut response = String::new();
    BufReader::new(stream.take(MAX_RESPONSE_BYTES))
        .read_line(&mut response)
        .map_err(|e| format!("reading from {}: {e}", socket.display()))?;
    serde_json::from_str(&response).map_err(|e| format!("the daemon's answer is not JSON: {e}"))
}
