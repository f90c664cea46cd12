//! The command line: words and flags into one admin request.
//!
//! Every command takes a known set of flags: the daemon's own list of
//! argument fields (`sendengine::admin::commands`) for the commands that
//! pass flags through, and the object fields for `put`. A flag outside
//! that set, a flag without its value, or a flag given twice is a usage
//! error naming the flag (and the nearest valid one), never something to
//! ignore: `queue suspend --campain x` must not suspend the whole queue.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use sendengine::admin::commands::{ArgFields, arg_fields, nearest};
use serde_json::{Map, Value, json};

/// Largest object file or stdin read for `put`.
const MAX_OBJECT_BYTES: u64 = 1024 * 1024;
const DEFAULT_SOCKET: &str = "var/admin.sock";

/// Flags every command takes.
const GLOBAL_FLAGS: &[&str] = &["socket", "json", "help"];
/// Flags that take no value.
const SWITCHES: &[&str] = &["json", "help", "all"];
/// Flags that must be numbers.
const NUMERIC_FLAGS: &[&str] = &["limit", "port", "max_connections"];

/// A usage error: the message goes to stderr with the usage, exit 2.
pub struct Usage(pub String);

/// What the command line asks for.
pub struct Invocation {
    pub socket: PathBuf,
    pub json: bool,
    pub command: Command,
}

pub enum Command {
    /// One request to the daemon.
    Remote {
        cmd: String,
        args: Map<String, Value>,
    },
    /// `bounce parse FILE...`: no daemon needed.
    BounceParse { files: Vec<String> },
}

/// A flag as given: its name in field form (`older_than`), the spelling
/// the user typed (for messages) and its value, if it has one.
struct Flag {
    name: String,
    typed: String,
    value: Option<String>,
}

pub fn parse(argv: &[String]) -> Result<Invocation, Usage> {
    let (words, flags) = split(argv);
    if flags.iter().any(|f| f.name == "help") {
        return Err(Usage("help".into()));
    }
    let (command, positional) = command_for(&words)?;
    let allowed = allowed_flags(&command, &positional);
    check_flags(&command, &flags, &allowed)?;
    let mut socket = std::env::var_os("SENDENGINE_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let mut json = false;
    let mut fields = Vec::new();
    for flag in flags {
        match flag.name.as_str() {
            "json" => json = true,
            "socket" => socket = PathBuf::from(flag.value.unwrap_or_default()),
            _ => fields.push(flag),
        }
    }
    let command = match command {
        Spec::BounceParse => {
            let files: Vec<String> = words[2..].to_vec();
            if files.is_empty() {
                return Err(Usage(
                    "give the bounce files: sendctl bounce parse FILE... [--json]".into(),
                ));
            }
            Command::BounceParse { files }
        }
        Spec::Put(cmd) => {
            let args = object_for_put(&cmd, fields)?;
            Command::Remote { cmd, args }
        }
        Spec::Request(cmd) => {
            let mut args = positional;
            for flag in fields {
                args.insert(flag.name.clone(), flag_value(&flag.name, flag.value)?);
            }
            // The key travels as PEM text: the daemon may not be able to read the file.
            if let Some(Value::String(path)) = args.remove("pem_file") {
                let pem = std::fs::read_to_string(&path)
                    .map_err(|e| Usage(format!("--pem-file {path}: {e}")))?;
                args.insert("private_key".into(), Value::String(pem));
            }
            Command::Remote { cmd, args }
        }
    };
    Ok(Invocation {
        socket,
        json,
        command,
    })
}

/// Positional words and flags, in order. `--flag=value` and `--flag value`
/// both work; a word starting with `--` is never taken as a value.
fn split(argv: &[String]) -> (Vec<String>, Vec<Flag>) {
    let mut words = Vec::new();
    let mut flags = Vec::new();
    let mut rest = argv.iter().peekable();
    while let Some(arg) = rest.next() {
        let Some(body) = arg.strip_prefix("--").or((arg == "-h").then_some("help")) else {
            words.push(arg.clone());
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        let name = name.replace('-', "_");
        let value = match inline {
            Some(v) => Some(v),
            None if SWITCHES.contains(&name.as_str()) => None,
            None => rest.next_if(|next| !next.starts_with("--")).cloned(),
        };
        let typed = arg.split('=').next().unwrap_or(arg).to_owned();
        flags.push(Flag { name, typed, value });
    }
    (words, flags)
}

/// What kind of command the words name.
enum Spec {
    Request(String),
    Put(String),
    BounceParse,
}

/// The command the positional words name and the arguments they carry
/// (the NAME / DOMAIN / ADDRESS / ID word).
fn command_for(words: &[String]) -> Result<(Spec, Map<String, Value>), Usage> {
    let word = |i: usize| words.get(i).map(String::as_str);
    let keyed = |field: &str| -> Result<Map<String, Value>, Usage> {
        let n = word(2)
            .ok_or_else(|| Usage(format!("give the {field}: {} {} NAME", words[0], words[1])))?;
        if let Some(extra) = words.get(3) {
            return Err(Usage(format!("unexpected argument `{extra}`")));
        }
        let mut m = Map::new();
        m.insert(field.into(), Value::String(n.into()));
        Ok(m)
    };
    let bare = |cmd: String| -> Result<(Spec, Map<String, Value>), Usage> {
        match words.get(cmd.split('.').count()) {
            Some(w) => Err(Usage(format!("unexpected argument `{w}`"))),
            None => Ok((Spec::Request(cmd), Map::new())),
        }
    };
    let noun = word(0).ok_or_else(|| Usage("give a command".into()))?;
    let request = |verb: &str, field: &str| -> Result<(Spec, Map<String, Value>), Usage> {
        Ok((Spec::Request(format!("{noun}.{verb}")), keyed(field)?))
    };
    match (noun, word(1)) {
        ("status" | "hello", _) => bare(noun.to_owned()),
        ("bounce", Some("parse")) => Ok((Spec::BounceParse, Map::new())),
        (
            "server" | "group" | "user" | "template" | "domain" | "dkim" | "suppression",
            Some("list"),
        ) => bare(format!("{noun}.list")),
        ("domain", Some(verb @ ("get" | "delete" | "verify" | "records" | "put"))) => {
            request(verb, "domain")
        }
        ("server" | "group" | "user" | "template", Some(verb @ ("get" | "delete"))) => {
            request(verb, "name")
        }
        ("server", Some("test")) => request("test", "name"),
        ("user", Some("usage")) => request("usage", "name"),
        ("user", Some("api-key")) => api_key(words),
        ("server" | "group" | "user" | "template", Some("put")) => match words.get(2) {
            Some(w) => Err(Usage(format!("unexpected argument `{w}`"))),
            None => Ok((Spec::Put(format!("{noun}.put")), Map::new())),
        },
        ("dkim", Some(verb @ ("get" | "generate" | "import" | "activate" | "retire"))) => {
            request(verb, "domain")
        }
        ("suppression", Some(verb @ ("add" | "remove" | "check"))) => request(verb, "address"),
        ("queue", Some("inspect")) => request("inspect", "id"),
        ("fleet", Some("status")) => bare("fleet.status".into()),
        ("fleet", Some("queue")) => match word(2) {
            Some(verb @ ("suspend" | "resume" | "bounce" | "delete")) => {
                bare(format!("fleet.queue.{verb}"))
            }
            _ => Err(Usage(
                "give the action: sendctl fleet queue suspend|resume|bounce|delete \
                 --campaign C and/or --tenant T"
                    .into(),
            )),
        },
        (
            "queue",
            Some(
                verb @ ("summary" | "list" | "flush" | "suspend" | "resume" | "delete" | "bounce"),
            ),
        ) => bare(format!("queue.{verb}")),
        (noun, verb) => Err(Usage(format!(
            "unknown command `{noun}{}`",
            verb.map(|v| format!(" {v}")).unwrap_or_default()
        ))),
    }
}

/// `user api-key create|list|revoke NAME` (revoke: `--id ID`).
fn api_key(words: &[String]) -> Result<(Spec, Map<String, Value>), Usage> {
    let verb = match words.get(2).map(String::as_str) {
        Some(verb @ ("create" | "list" | "revoke")) => verb,
        _ => {
            return Err(Usage(
                "give the action: sendctl user api-key create|list NAME, or revoke NAME --id ID"
                    .into(),
            ));
        }
    };
    let name = words
        .get(3)
        .ok_or_else(|| Usage(format!("give the user: user api-key {verb} NAME")))?;
    if let Some(extra) = words.get(4) {
        return Err(Usage(format!("unexpected argument `{extra}`")));
    }
    let mut args = Map::new();
    args.insert("name".into(), Value::String(name.clone()));
    Ok((Spec::Request(format!("user.api_key.{verb}")), args))
}

/// The object fields `put` takes as flags (besides `--file`).
fn put_flags(cmd: &str) -> &'static [&'static str] {
    match cmd {
        "server.put" => &[
            "name",
            "host",
            "port",
            "encryption",
            "username",
            "password",
            "max_connections",
        ],
        "group.put" => &["name", "servers"],
        "user.put" => &["name", "group", "password", "sender_email"],
        _ => &[],
    }
}

/// Every flag the command takes, in field form.
fn allowed_flags(spec: &Spec, positional: &Map<String, Value>) -> Vec<&'static str> {
    let mut allowed = GLOBAL_FLAGS.to_vec();
    match spec {
        Spec::BounceParse => {}
        Spec::Put(cmd) => {
            allowed.push("file");
            allowed.extend_from_slice(put_flags(cmd));
        }
        Spec::Request(cmd) => {
            if let Some(ArgFields::Fields(fields)) = arg_fields(cmd) {
                let flags = fields
                    .into_iter()
                    .filter(|f| !positional.contains_key(*f))
                    .map(|f| if f == "private_key" { "pem_file" } else { f });
                allowed.extend(flags);
            }
        }
    }
    allowed
}

fn flag_spelling(field: &str) -> String {
    format!("--{}", field.replace('_', "-"))
}

/// Refuses unknown, repeated and value-less flags, naming them.
fn check_flags(spec: &Spec, flags: &[Flag], allowed: &[&str]) -> Result<(), Usage> {
    let command = match spec {
        Spec::Request(cmd) | Spec::Put(cmd) => cmd.replace('.', " "),
        Spec::BounceParse => "bounce parse".into(),
    };
    for (i, flag) in flags.iter().enumerate() {
        let name = flag.name.as_str();
        if !allowed.contains(&name) {
            let hint = nearest(name, allowed)
                .map(|n| format!("; did you mean {}?", flag_spelling(n)))
                .unwrap_or_default();
            let own: Vec<String> = allowed
                .iter()
                .filter(|f| !GLOBAL_FLAGS.contains(f))
                .map(|f| flag_spelling(f))
                .collect();
            let takes = match own.is_empty() {
                true => format!("`{command}` takes no flags"),
                false => format!("`{command}` takes {}", own.join(" ")),
            };
            return Err(Usage(format!(
                "unknown flag {} for `{command}`{hint} ({takes})",
                flag.typed
            )));
        }
        let switch = SWITCHES.contains(&name);
        match (&flag.value, switch) {
            (None, false) => return Err(Usage(format!("{} needs a value", flag.typed))),
            (Some(_), true) => return Err(Usage(format!("{} takes no value", flag.typed))),
            _ => {}
        }
        if flags[..i].iter().any(|f| f.name == flag.name) {
            return Err(Usage(format!("{} is given twice", flag.typed)));
        }
    }
    Ok(())
}

/// A flag's JSON value: numbers where the daemon wants numbers, `true`
/// for a switch.
fn flag_value(flag: &str, v: Option<String>) -> Result<Value, Usage> {
    let Some(v) = v else {
        return Ok(Value::Bool(true));
    };
    if NUMERIC_FLAGS.contains(&flag) {
        return v
            .parse::<u64>()
            .map(Value::from)
            .map_err(|_| Usage(format!("{}: `{v}` is not a number", flag_spelling(flag))));
    }
    Ok(Value::String(v))
}

/// The object to put: `--file`, else stdin when it is not a terminal and
/// no field flags are given, else empty; field flags are laid over it.
fn object_for_put(cmd: &str, flags: Vec<Flag>) -> Result<Map<String, Value>, Usage> {
    let (file, fields): (Vec<Flag>, Vec<Flag>) = flags.into_iter().partition(|f| f.name == "file");
    let file = file.into_iter().next().and_then(|f| f.value);
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
    for flag in fields {
        set_field(cmd, &mut object, &flag.name, flag.value.unwrap_or_default())?;
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
    v: String,
) -> Result<(), Usage> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(line: &str) -> String {
        let argv: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        match parse(&argv) {
            Ok(_) => panic!("`{line}` parsed"),
            Err(Usage(message)) => message,
        }
    }

    fn request(line: &str) -> (String, Map<String, Value>) {
        let argv: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        match parse(&argv).map(|i| i.command) {
            Ok(Command::Remote { cmd, args }) => (cmd, args),
            Ok(Command::BounceParse { .. }) => panic!("`{line}`: bounce parse"),
            Err(Usage(m)) => panic!("`{line}`: {m}"),
        }
    }

    #[test]
    fn unknown_and_valueless_flags_are_usage_errors() {
        let m = usage("queue suspend --campain x");
        assert!(
            m.contains("--campain") && m.contains("did you mean --campaign?"),
            "{m}"
        );
        let m = usage("queue list --tenent x");
        assert!(m.contains("did you mean --tenant?"), "{m}");
        let m = usage("queue suspend --campaign");
        assert_eq!(m, "--campaign needs a value");
        let m = usage("queue suspend --campaign --tenant t");
        assert_eq!(m, "--campaign needs a value");
        let m = usage("queue suspend --campaign a --campaign b");
        assert!(m.contains("given twice"), "{m}");
        let m = usage("status --verbose");
        assert!(m.contains("takes no flags"), "{m}");
        let m = usage("server get x --host h");
        assert!(m.contains("unknown flag --host"), "{m}");
        let m = usage("bounce parse f.eml --jsn");
        assert!(m.contains("did you mean --json?"), "{m}");
        let m = usage("queue delete --all=yes");
        assert!(m.contains("takes no value"), "{m}");
        let m = usage("fleet queue suspend --campain x");
        assert!(m.contains("did you mean --campaign?"), "{m}");
        let m = usage("fleet queue pause --campaign x");
        assert!(m.contains("suspend|resume|bounce|delete"), "{m}");
        let m = usage("fleet status extra");
        assert!(m.contains("unexpected argument `extra`"), "{m}");
    }

    #[test]
    fn known_flags_become_arguments() {
        let (cmd, args) = request("queue suspend --campaign c --older-than=2h");
        assert_eq!(cmd, "queue.suspend");
        assert_eq!(args["campaign"], "c");
        assert_eq!(args["older_than"], "2h");
        let (_, args) = request("queue delete --all");
        assert_eq!(args["all"], true);
        let (_, args) = request("suppression list --limit 5");
        assert_eq!(args["limit"], 5);
        let (_, args) = request("server put --name s --host h --port 25 --password p");
        assert_eq!(args["auth"]["password"], "p");
        assert_eq!(args["port"], 25);
    }

    /// Every command sendctl sends is one the daemon knows, so the flags
    /// drawn from the daemon's table are never empty by mistake.
    #[test]
    fn every_command_is_in_the_daemons_catalogue() {
        for line in [
            "status",
            "hello",
            "server list",
            "server get a",
            "server test a",
            "server put --name a",
            "domain put d.example --owner u",
            "domain records d.example",
            "dkim generate d.example",
            "dkim import d.example --selector s",
            "queue summary",
            "queue inspect 0011223344556677",
            "queue bounce --all",
            "suppression add a@b.example",
            "fleet status --all",
            "fleet queue suspend --campaign c",
            "fleet queue delete --tenant t",
        ] {
            let (cmd, _) = request(line);
            assert!(arg_fields(&cmd).is_some(), "{cmd}");
        }
    }
}
