//! `sendctl`: the command line client of the admin socket.
//!
//! `sendctl [--socket PATH] [--json] NOUN VERB [ARGS]` turns the arguments
//! into one JSON request, sends it over the Unix socket and prints the
//! result: human tables by default, the raw JSON with `--json`. Exit code
//! 0 on success, 1 when the daemon answered with an error (or could not be
//! reached), 2 on a usage error (an unknown flag, a flag without its
//! value). Objects for `put` come from `--file F`, stdin, or flags for the
//! common fields.

mod args;
mod bounce;
mod fleet;
mod render;

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

const USAGE: &str = "usage: sendctl [--socket PATH] [--json] NOUN VERB [ARGS]

  status | hello
  server|group|user|template|domain list | get NAME | delete NAME
  server|group|user|template put [--file F.json | < F.json | flags]
      server flags: --name --host --port --encryption --username --password --max-connections
      group flags:  --name --servers a,b (all channels)
      user flags:   --name --group --password --sender-email
  server test NAME [--to ADDR] [--from ADDR]
  user usage NAME                   (sending limits used; the fleet's in cluster mode)
  user api-key create NAME | list NAME | revoke NAME --id ID   (HTTP API keys; the token is shown once)
  domain put NAME --owner USER | verify NAME | records NAME
  bounce parse FILE... [--json]     (offline: no daemon needed)
  dkim list | get DOMAIN | generate DOMAIN [--selector S] [--algorithm rsa|ed25519] [--inactive true]
       | import DOMAIN --selector S --pem-file FILE | activate DOMAIN --selector S | retire DOMAIN --selector S
  queue summary | list [--limit N] | inspect ID
  queue flush | suspend | resume | delete | bounce   (delete/bounce: a filter or --all)
      filters: --route R --domain D --tenant T --campaign C --channel CH --older-than 2h --id ID
  suppression list [--tenant T] [--limit N] | add ADDRESS [--tenant T] [--reason R]
      | remove ADDRESS [--tenant T] | check ADDRESS [--tenant T]   (no --tenant: the global list)
  fleet status [--all]              (cluster mode: live nodes; --all adds stopped and lost ones)
  fleet queue suspend | resume | bounce | delete --campaign C and/or --tenant T
      (applied by every node to the mail it received before the order)

Flags take a value (--campaign X or --campaign=X) except --json and --all; a flag
a command does not take is an error (exit 2), never ignored.
The socket is $SENDENGINE_SOCKET, else var/admin.sock.";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let invocation = match args::parse(&argv) {
        Ok(i) => i,
        Err(Usage(message)) => {
            eprintln!("sendctl: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (cmd, args) = match invocation.command {
        Command::BounceParse { files } => return bounce::run(&files, invocation.json),
        Command::Remote { cmd, args } => (cmd, args),
    };
    let response = match call(&invocation.socket, &cmd, &args) {
        Ok(r) => r,
        Err(message) => {
            eprintln!("sendctl: {message}");
            return ExitCode::from(1);
        }
    };
    if response.get("ok") != Some(&Value::Bool(true)) {
        let error = &response["error"];
        eprintln!(
            "sendctl: {}: {}",
            error["code"].as_str().unwrap_or("error"),
            error["message"]
                .as_str()
                .unwrap_or("the daemon gave no reason")
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
    ExitCode::SUCCESS
}

// ---- the socket --------------------------------------------------------------

fn call(socket: &Path, cmd: &str, args: &Map<String, Value>) -> Result<Value, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot connect to {}: {e} (is sendengine running? set --socket or $SENDENGINE_SOCKET)",
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
