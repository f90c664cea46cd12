//! `sendctl`: the command line client of the admin socket.
//!
//! `sendctl [--socket PATH] [--json] NOUN VERB [ARGS]` turns the arguments
//! into one JSON request, sends it over the Unix socket and prints the
//! result: human tables by default, the raw JSON with `--json`. Exit code
//! 0 on success, 1 when the daemon answered with an error (or could not be
//! reached), 2 on a usage error. Objects for `put` come from `--file F`,
//! stdin, or flags for the common fields.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Map, Value, json};

/// Largest response accepted from the daemon.
const MAX_RESPONSE_BYTES: u64 = 256 * 1024 * 1024;
/// Largest object file or stdin read for `put`.
const MAX_OBJECT_BYTES: u64 = 1024 * 1024;
const DEFAULT_SOCKET: &str = "var/admin.sock";

const USAGE: &str = "usage: sendctl [--socket PATH] [--json] NOUN VERB [ARGS]

  status | hello
  server|group|user|template|domain list | get NAME | delete NAME
  server|group|user|template put [--file F.json | < F.json | flags]
      server flags: --name --host --port --encryption --username --password --max-connections
      group flags:  --name --servers a,b (all channels)
      user flags:   --name --group --password --sender-email
  server test NAME [--to ADDR] [--from ADDR]
  domain put NAME --owner USER | verify NAME | records NAME
  bounce parse FILE... [--json]     (offline: no daemon needed)
  dkim list | get DOMAIN | generate DOMAIN [--selector S] [--algorithm rsa|ed25519] [--inactive true]
       | import DOMAIN --selector S --pem-file FILE | activate DOMAIN --selector S | retire DOMAIN --selector S
  queue summary | list [--limit N] | inspect ID
  queue flush | suspend | resume | delete | bounce   (delete/bounce: a filter or --all)
      filters: --route R --domain D --tenant T --campaign C --channel CH --older-than 2h --id ID
  suppression list [--tenant T] [--limit N] | add ADDRESS [--tenant T] [--reason R]
      | remove ADDRESS [--tenant T] | check ADDRESS [--tenant T]   (no --tenant: the global list)

The socket is $SENDENGINE_SOCKET, else var/admin.sock.";

/// A usage error: the message goes to stderr with the usage, exit 2.
struct Usage(String);

/// What the command line asks for.
struct Invocation {
    socket: PathBuf,
    json: bool,
    cmd: String,
    args: Map<String, Value>,
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) = bounce_parse(&argv) {
        return code;
    }
    let invocation = match parse(&argv) {
        Ok(i) => i,
        Err(Usage(message)) => {
            eprintln!("sendctl: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let response = match call(&invocation) {
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
        print!("{}", render(&invocation.cmd, result));
    }
    ExitCode::SUCCESS
}

// ---- arguments ---------------------------------------------------------------

fn parse(argv: &[String]) -> Result<Invocation, Usage> {
    let mut socket = std::env::var_os("SENDENGINE_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let mut json = false;
    let mut positional = Vec::new();
    let mut flags: Vec<(String, Option<String>)> = Vec::new();
    let mut rest = argv.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--socket" => socket = PathBuf::from(value(&mut rest, arg)?),
            "--json" => json = true,
            "-h" | "--help" => return Err(Usage("help".into())),
            "--all" => flags.push(("all".into(), None)),
            flag if flag.starts_with("--") => {
                let v = value(&mut rest, flag)?;
                flags.push((flag.trim_start_matches("--").replace('-', "_"), Some(v)));
            }
            _ => positional.push(arg.clone()),
        }
    }
    let (cmd, args) = request_for(&positional, flags)?;
    Ok(Invocation {
        socket,
        json,
        cmd,
        args,
    })
}

fn value<'a>(rest: &mut impl Iterator<Item = &'a String>, flag: &str) -> Result<String, Usage> {
    rest.next()
        .cloned()
        .ok_or_else(|| Usage(format!("{flag} needs a value")))
}

type Flags = Vec<(String, Option<String>)>;

/// The command and its arguments from the positional words and the flags.
fn request_for(words: &[String], flags: Flags) -> Result<(String, Map<String, Value>), Usage> {
    let word = |i: usize| words.get(i).map(String::as_str);
    let name = |field: &str| -> Result<Map<String, Value>, Usage> {
        let n = word(2)
            .ok_or_else(|| Usage(format!("give the {field}: {} {} NAME", words[0], words[1])))?;
        let mut m = Map::new();
        m.insert(field.into(), Value::String(n.into()));
        Ok(m)
    };
    let extra_words = |n: usize| -> Result<(), Usage> {
        match words.get(n) {
            Some(w) => Err(Usage(format!("unexpected argument `{w}`"))),
            None => Ok(()),
        }
    };
    let noun = word(0).ok_or_else(|| Usage("give a command".into()))?;
    let (cmd, mut args) = match (noun, word(1)) {
        ("status" | "hello", None) => (noun.to_owned(), Map::new()),
        ("server" | "group" | "user" | "template" | "domain", Some("list")) => {
            extra_words(2)?;
            (format!("{noun}.list"), Map::new())
        }
        ("domain", Some(verb @ ("get" | "delete" | "verify" | "records"))) => {
            extra_words(3)?;
            (format!("domain.{verb}"), name("domain")?)
        }
        ("domain", Some("put")) => {
            extra_words(3)?;
            (String::from("domain.put"), name("domain")?)
        }
        ("server" | "group" | "user" | "template", Some(verb @ ("get" | "delete"))) => {
            extra_words(3)?;
            (format!("{noun}.{verb}"), name("name")?)
        }
        ("server", Some("test")) => {
            extra_words(3)?;
            (String::from("server.test"), name("name")?)
        }
        ("server" | "group" | "user" | "template", Some("put")) => {
            extra_words(2)?;
            (format!("{noun}.put"), Map::new())
        }
        ("dkim", Some("list")) => {
            extra_words(2)?;
            (String::from("dkim.list"), Map::new())
        }
        ("dkim", Some(verb @ ("get" | "generate" | "import" | "activate" | "retire"))) => {
            extra_words(3)?;
            (format!("dkim.{verb}"), name("domain")?)
        }
        ("suppression", Some("list")) => {
            extra_words(2)?;
            (String::from("suppression.list"), Map::new())
        }
        ("suppression", Some(verb @ ("add" | "remove" | "check"))) => {
            extra_words(3)?;
            (format!("suppression.{verb}"), name("address")?)
        }
        ("queue", Some("inspect")) => {
            extra_words(3)?;
            (String::from("queue.inspect"), name("id")?)
        }
        (
            "queue",
            Some(
                verb @ ("summary" | "list" | "flush" | "suspend" | "resume" | "delete" | "bounce"),
            ),
        ) => {
            extra_words(2)?;
            (format!("queue.{verb}"), Map::new())
        }
        (noun, verb) => {
            return Err(Usage(format!(
                "unknown command `{noun}{}`",
                verb.map(|v| format!(" {v}")).unwrap_or_default()
            )));
        }
    };
    let is_put = cmd.ends_with(".put") && cmd != "domain.put";
    if is_put {
        args = object_for_put(&cmd, flags)?;
    } else {
        for (flag, v) in flags {
            args.insert(flag.clone(), flag_value(&flag, v)?);
        }
    }
    // The key travels as PEM text: the daemon may not be able to read the file.
    if let Some(Value::String(path)) = args.remove("pem_file") {
        let pem =
            std::fs::read_to_string(&path).map_err(|e| Usage(format!("--pem-file {path}: {e}")))?;
        args.insert("private_key".into(), Value::String(pem));
    }
    Ok((cmd, args))
}

/// A flag's JSON value: numbers where the daemon wants numbers.
fn flag_value(flag: &str, v: Option<String>) -> Result<Value, Usage> {
    let Some(v) = v else {
        return Ok(Value::Bool(true));
    };
    if matches!(flag, "limit" | "port" | "max_connections") {
        return v.parse::<u64>().map(Value::from).map_err(|_| {
            Usage(format!(
                "--{}: `{v}` is not a number",
                flag.replace('_', "-")
            ))
        });
    }
    Ok(Value::String(v))
}

/// The object to put: `--file`, else stdin when it is not a terminal and
/// no field flags are given, else empty; field flags are laid over it.
fn object_for_put(cmd: &str, flags: Flags) -> Result<Map<String, Value>, Usage> {
    let file = flags
        .iter()
        .find(|(f, _)| f == "file")
        .and_then(|(_, v)| v.clone());
    let fields: Flags = flags.into_iter().filter(|(f, _)| f != "file").collect();
    let text = match file {
        Some(path) if path == "-" => Some(read_limited(std::io::stdin(), "stdin")?),
        Some(path) => {
            let f = std::fs::File::open(&path).map_err(|e| Usage(format!("--file {path}: {e}")))?;
            Some(read_limited(f, &path)?)
        }
        None if fields.is_empty() && !std::io::stdin().is_terminal() => {
            Some(read_limited(std::io::stdin(), "stdin")?)
        }
        None => None,
    };
    let mut object = match text {
        Some(text) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(o)) => o,
            Ok(_) => return Err(Usage("the object must be a JSON object".into())),
            Err(e) => return Err(Usage(format!("the object is not valid JSON: {e}"))),
        },
        None => Map::new(),
    };
    for (flag, v) in fields {
        set_field(cmd, &mut object, &flag, v)?;
    }
    if object.is_empty() {
        return Err(Usage(format!(
            "`{cmd}` needs an object: --file F.json, stdin, or flags"
        )));
    }
    Ok(object)
}

fn set_field(
    cmd: &str,
    object: &mut Map<String, Value>,
    flag: &str,
    v: Option<String>,
) -> Result<(), Usage> {
    let v = v.ok_or_else(|| Usage(format!("--{flag} needs a value")))?;
    match (cmd, flag) {
        ("server.put", "username" | "password") => {
            let auth = object.entry("auth").or_insert_with(|| json!({}));
            if let Value::Object(auth) = auth {
                auth.insert(flag.into(), Value::String(v));
            }
        }
        ("group.put", "servers") => {
            let list: Vec<Value> = v
                .split(',')
                .map(|s| Value::String(s.trim().into()))
                .collect();
            for channel in ["marketing", "transactional", "autoresponder"] {
                object.insert(channel.into(), Value::Array(list.clone()));
            }
        }
        _ => {
            object.insert(flag.into(), flag_value(flag, Some(v))?);
        }
    }
    Ok(())
}

fn read_limited(source: impl Read, what: &str) -> Result<String, Usage> {
    let mut text = String::new();
    source
        .take(MAX_OBJECT_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| Usage(format!("reading {what}: {e}")))?;
    if text.len() as u64 > MAX_OBJECT_BYTES {
        return Err(Usage(format!("{what}: over {MAX_OBJECT_BYTES} bytes")));
    }
    Ok(text)
}

// ---- the socket --------------------------------------------------------------

fn call(invocation: &Invocation) -> Result<Value, String> {
    let socket = &invocation.socket;
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot connect to {}: {e} (is sendengine running? set --socket or $SENDENGINE_SOCKET)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_vec(&json!({"cmd": invocation.cmd, "args": invocation.args}))
        .map_err(|e| e.to_string())?;
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

// ---- human output ------------------------------------------------------------

fn render(cmd: &str, result: &Value) -> String {
    match cmd {
        "server.list" => table(
            result,
            &[
                ("NAME", "/name"),
                ("HOST", "/host"),
                ("PORT", "/port"),
                ("ENCRYPTION", "/encryption"),
                ("MAX_CONN", "/max_connections"),
                ("LAST_TEST", "/last_test/ok"),
            ],
        ),
        "group.list" => table(
            result,
            &[
                ("NAME", "/name"),
                ("MARKETING", "/marketing"),
                ("TRANSACTIONAL", "/transactional"),
                ("AUTORESPONDER", "/autoresponder"),
                ("DAILY_LIMIT", "/daily_limit"),
            ],
        ),
        "user.list" => table(
            result,
            &[
                ("NAME", "/name"),
                ("GROUP", "/group"),
                ("PASSWORD", "/password"),
                ("SENDER_EMAIL", "/sender_email"),
            ],
        ),
        "template.list" => table(result, &[("NAME", "/name"), ("RECORDS", "/records")]),
        "domain.list" => table(
            result,
            &[
                ("DOMAIN", "/domain"),
                ("OWNER", "/owner"),
                ("STATUS", "/status"),
                ("LAST_VERIFIED_MS", "/last_verified_ms"),
            ],
        ),
        "queue.list" => table(
            result,
            &[
                ("ID", "/id"),
                ("RCPT", "/rcpt"),
                ("RECIPIENT", "/recipient"),
                ("STATUS", "/status"),
                ("ATTEMPTS", "/attempts"),
                ("NEXT_ATTEMPT", "/next_attempt"),
                ("TENANT", "/tenant"),
                ("CAMPAIGN", "/campaign"),
                ("ROUTE", "/route"),
                ("AGE_S", "/age_seconds"),
            ],
        ),
        "suppression.list" => table(
            result,
            &[
                ("ADDRESS", "/address"),
                ("REASON", "/reason"),
                ("TIME", "/time"),
                ("SOURCE", "/source"),
            ],
        ),
        "domain.records" => lines(&result["zone"]),
        "server.test" => server_test(result),
        "status" => status(result),
        _ => key_values(result, ""),
    }
}

fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Array(items)) => items.len().to_string(),
        Some(other) => other.to_string(),
    }
}

fn table(rows: &Value, columns: &[(&str, &str)]) -> String {
    let rows = rows.as_array().map(Vec::as_slice).unwrap_or_default();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|(_, p)| cell(r.pointer(p))).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            cells
                .iter()
                .map(|r| r[i].len())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |values: Vec<&str>| {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(columns.iter().map(|(h, _)| *h).collect());
    for row in &cells {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn lines(value: &Value) -> String {
    value
        .as_array()
        .map(|l| l.iter().map(|v| format!("{}\n", cell(Some(v)))).collect())
        .unwrap_or_default()
}

/// Nested objects as `path: value` lines.
fn key_values(value: &Value, prefix: &str) -> String {
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    Value::Object(_) => key_values(v, &path),
                    Value::Array(items) if items.iter().any(Value::is_object) => items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| key_values(item, &format!("{path}[{i}]")))
                        .collect(),
                    _ => format!("{path}: {}\n", cell(Some(v))),
                }
            })
            .collect(),
        Value::Array(items) => items.iter().map(|i| key_values(i, prefix)).collect(),
        other => format!("{}\n", cell(Some(other))),
    }
}

fn server_test(result: &Value) -> String {
    let mut out = table(
        &result["steps"],
        &[
            ("STEP", "/step"),
            ("OK", "/ok"),
            ("MS", "/millis"),
            ("REPLY", "/reply"),
        ],
    );
    match result["failed_step"].as_str() {
        Some(step) => out.push_str(&format!("FAILED at {step}\n")),
        None => out.push_str("OK: every step passed\n"),
    }
    out
}

fn status(result: &Value) -> String {
    let mut out = String::new();
    for key in [
        "version",
        "hostname",
        "uptime_seconds",
        "listeners",
        "spool_bytes",
        "memory_rss_bytes",
    ] {
        out.push_str(&format!("{key}: {}\n", cell(result.get(key))));
    }
    out.push_str(&key_values(&result["queue"], "queue"));
    out.push('\n');
    out.push_str(&table(
        &result["routes"],
        &[
            ("ROUTE", "/name"),
            ("CONNECTIONS", "/connections"),
            ("MAX", "/max_connections"),
            ("READY", "/ready"),
            ("IN_FLIGHT", "/in_flight"),
            ("DELIVERED_1M", "/delivered_last_minute"),
            ("AVAILABLE", "/available"),
        ],
    ));
    let campaigns = &result["active_campaigns"];
    if campaigns.as_array().is_some_and(|c| !c.is_empty()) {
        out.push('\n');
        out.push_str(&table(
            campaigns,
            &[
                ("CAMPAIGN", "/campaign"),
                ("IN_FLIGHT", "/in_flight"),
                ("READY", "/ready"),
            ],
        ));
    }
    out
}

// ---- offline commands ------------------------------------------------------------

/// `sendctl [--json] bounce parse FILE...`: parses bounce emails with the
/// daemon's parser, without a daemon. One record per affected recipient;
/// `None` when the command is something else.
fn bounce_parse(argv: &[String]) -> Option<ExitCode> {
    let json = argv.iter().any(|a| a == "--json");
    // Global flags may come first; --socket takes a value.
    let mut words: Vec<&String> = Vec::new();
    let mut rest = argv.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--json" => {}
            "--socket" => {
                rest.next();
            }
            _ => words.push(arg),
        }
    }
    if words.len() < 2 || words[0] != "bounce" || words[1] != "parse" {
        return None;
    }
    let files = &words[2..];
    if files.is_empty() {
        eprintln!("sendctl: give the bounce files: sendctl bounce parse FILE... [--json]");
        return Some(ExitCode::from(2));
    }
    let mut failed = false;
    let mut rows = Vec::new();
    for file in files {
        match sendengine_bounces::parse_file_records(std::path::Path::new(file.as_str())) {
            Ok(records) => rows.extend(records),
            Err(e) => {
                eprintln!("sendctl: {e}");
                failed = true;
            }
        }
    }
    for record in &rows {
        let value = serde_json::to_value(record).unwrap_or(Value::Null);
        if json {
            println!("{value}");
        } else {
            let field = |k: &str| match &value[k] {
                Value::Null => "-".to_owned(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!(
                "{}\t{}\t{}\t{}\t{}\t{}",
                field("file"),
                field("kind"),
                field("recipient"),
                field("status"),
                field("category"),
                if value["hard"] == Value::Bool(true) {
                    "hard"
                } else {
                    "soft"
                }
            );
        }
    }
    Some(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
