//! The command line: words and flags into one admin request.
//!
//! The words name a command of the daemon's table
//! (`sendengine::admin::commands::COMMANDS`: `queue list` is `queue.list`),
//! the word after them fills the command's operand (`NAME`, `ID`, ...),
//! and each command takes a known set of flags: the table's argument
//! fields, or for `put` the object's fields (`admin::object_fields`). A
//! flag outside that set, a flag without its value, or a flag given twice
//! is a usage error naming the flag (and the nearest valid one), never
//! something to ignore: `queue suspend --campain x` must not suspend the
//! whole queue. An unknown command or help topic is named with the nearest
//! one. `--socket` and `--config` are alternatives: given both, one would
//! be ignored, so that is a usage error too.

use std::io::{IsTerminal, Read};

use sendengine::admin::commands::{ArgFields, COMMANDS, CommandInfo, Takes, arg_fields, nearest};
use sendengine::admin::object_fields::{FieldKind, field_value, put_fields};
use serde_json::{Map, Value, json};

use crate::config_socket::SocketChoice;
use crate::help;

/// Largest object file or stdin read for `put` and `server test --file`.
const MAX_OBJECT_BYTES: u64 = 1024 * 1024;

/// Flags every command takes.
pub const GLOBAL_FLAGS: &[&str] = &["socket", "config", "json", "help"];
/// Flags that take no value.
const SWITCHES: &[&str] = &["json", "help", "all", "follow"];
/// Flags that must be numbers.
const NUMERIC_FLAGS: &[&str] = &["limit"];
/// Fields sendctl fills from a file named by a flag: (field, flag).
const FILE_FIELDS: &[(&str, &str)] = &[("private_key", "pem_file"), ("server", "file")];

/// A usage error: the message goes to stderr with a pointer to the help,
/// exit 2.
pub struct Usage(pub String);

/// What the command line asks for.
pub struct Invocation {
    pub socket: SocketChoice,
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
    /// `help [WORDS]`, `--help`, `-h`: the usage, for the commands that
    /// start with the words.
    Help { topic: Vec<String> },
    /// `log`: requests to the daemon until the page is full, or for ever
    /// with `--follow`.
    Log {
        args: Map<String, Value>,
        follow: bool,
    },
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
    if flags.iter().any(|f| f.name == "help") || words.first().is_some_and(|w| w == "help") {
        let skip = usize::from(words.first().is_some_and(|w| w == "help"));
        let topic = words[skip..].to_vec();
        if !help::is_topic(&topic) {
            return Err(Usage(unknown_words("help topic", &topic, &help_topics())));
        }
        return Ok(Invocation {
            socket: SocketChoice::default(),
            json: false,
            command: Command::Help { topic },
        });
    }
    // The global flags' values first: `sendctl --socket` has no command
    // only because its value is missing, and must be told so.
    for flag in flags
        .iter()
        .filter(|f| GLOBAL_FLAGS.contains(&f.name.as_str()))
    {
        value_given(flag)?;
    }
    let (spec, positional) = command_for(&words)?;
    let allowed = allowed_flags(&spec);
    check_flags(&spec, &flags, &allowed)?;
    let mut socket = SocketChoice::default();
    let mut json = false;
    let mut follow = false;
    let mut fields = Vec::new();
    for flag in flags {
        match flag.name.as_str() {
            "json" => json = true,
            "follow" => follow = true,
            "socket" => socket.socket = flag.value,
            "config" => socket.config = flag.value,
            _ => fields.push(flag),
        }
    }
    if socket.socket.is_some() && socket.config.is_some() {
        // Both name the socket, and --socket would win: the configuration
        // would be ignored unread, even when it does not exist or names
        // another socket. The usage has them as alternatives.
        return Err(Usage(
            "--socket and --config both say which socket to use: give one (--socket PATH, \
             or --config FILE for that configuration's [admin] socket)"
                .into(),
        ));
    }
    let command = match spec {
        Spec::BounceParse => {
            let files: Vec<String> = words[2..].to_vec();
            if files.is_empty() {
                return Err(Usage(
                    "give the bounce files: sendctl bounce parse FILE... [--json]".into(),
                ));
            }
            Command::BounceParse { files }
        }
        Spec::Put(info) => {
            let args = object_for_put(info.cmd, fields)?;
            Command::Remote {
                cmd: info.cmd.into(),
                args,
            }
        }
        Spec::Request(info) if info.cmd == "log" => Command::Log {
            args: request_args(info, positional, fields)?,
            follow,
        },
        Spec::Request(info) => Command::Remote {
            cmd: info.cmd.into(),
            args: request_args(info, positional, fields)?,
        },
    };
    Ok(Invocation {
        socket,
        json,
        command,
    })
}

/// The operand and the flags as the request's fields; files named by a
/// flag are read here, since the daemon may not be able to read them.
fn request_args(
    info: &CommandInfo,
    mut args: Map<String, Value>,
    fields: Vec<Flag>,
) -> Result<Map<String, Value>, Usage> {
    for flag in fields {
        let file_field = FILE_FIELDS.iter().find(|(_, f)| *f == flag.name);
        if file_field.is_none() {
            if args.contains_key(&flag.name) {
                // `report today --date D`: the operand given twice.
                return Err(Usage(format!(
                    "{} repeats the word after `{}`: give one or the other",
                    flag.typed,
                    words_of(info.cmd)
                )));
            }
            let value = flag_value(&flag.name, flag.value)?;
            args.insert(flag.name, value);
            continue;
        }
        let value = flag.value.unwrap_or_default();
        match file_field {
            Some(("private_key", _)) => {
                let pem = std::fs::read_to_string(&value)
                    .map_err(|e| Usage(format!("{} {value}: {e}", flag.typed)))?;
                args.insert("private_key".into(), Value::String(pem));
            }
            Some((field, _)) => {
                let object = read_object(&value)?;
                args.insert((*field).into(), Value::Object(object));
            }
            None => {}
        }
    }
    let missing = info
        .operand
        .filter(|o| !o.optional && !args.contains_key(o.field));
    if let Some(operand) = missing {
        return Err(Usage(format!(
            "give the {}: sendctl {} {}",
            operand.shown,
            words_of(info.cmd),
            operand.shown
        )));
    }
    Ok(args)
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
    Request(&'static CommandInfo),
    Put(&'static CommandInfo),
    BounceParse,
}

/// `queue.list` as typed: `queue list`.
pub fn words_of(cmd: &str) -> String {
    cmd.replace('.', " ").replace('_', "-")
}

/// The command the words name (the longest one of the table they start
/// with) and its operand, from the word after it.
fn command_for(words: &[String]) -> Result<(Spec, Map<String, Value>), Usage> {
    if words.is_empty() {
        return Err(Usage("give a command".into()));
    }
    if words.len() >= 2 && words[0] == "bounce" && words[1] == "parse" {
        return Ok((Spec::BounceParse, Map::new()));
    }
    let named = COMMANDS
        .iter()
        .filter(|c| {
            let parts: Vec<&str> = c.cmd.split('.').collect();
            words.len() >= parts.len()
                && parts
                    .iter()
                    .zip(words)
                    .all(|(p, w)| *p == w.replace('-', "_"))
        })
        .max_by_key(|c| c.cmd.split('.').count());
    let Some(info) = named else {
        return Err(Usage(unknown_command(words)));
    };
    let rest = &words[info.cmd.split('.').count()..];
    let mut positional = Map::new();
    let mut rest = rest.iter();
    if let (Some(operand), Some(word)) = (info.operand, rest.clone().next()) {
        positional.insert(operand.field.into(), Value::String(word.clone()));
        rest.next();
    }
    if let Some(extra) = rest.next() {
        return Err(Usage(format!(
            "unexpected argument `{extra}` for `{}`",
            words_of(info.cmd)
        )));
    }
    let spec = match info.takes {
        Takes::Object => Spec::Put(info),
        _ => Spec::Request(info),
    };
    Ok((spec, positional))
}

/// Every command as typed (`queue list`), `bounce parse` included.
pub fn command_words() -> Vec<String> {
    COMMANDS
        .iter()
        .map(|c| words_of(c.cmd))
        .chain(["bounce parse".to_owned()])
        .collect()
}

/// What `sendctl help` takes: every command and every run of its leading
/// words (`queue`, `fleet queue`).
fn help_topics() -> Vec<String> {
    let mut topics: Vec<String> = command_words()
        .iter()
        .flat_map(|c| {
            let words: Vec<&str> = c.split(' ').collect();
            (1..=words.len()).map(move |n| words[..n].join(" "))
        })
        .collect();
    topics.sort();
    topics.dedup();
    topics
}

fn unknown_command(words: &[String]) -> String {
    unknown_words("command", words, &command_words())
}

/// "unknown command" (or help topic) as typed, with the nearest of
/// `candidates` and what the known leading words take.
fn unknown_words(what: &str, words: &[String], candidates: &[String]) -> String {
    let candidates: Vec<&str> = candidates.iter().map(String::as_str).collect();
    // As many words as the candidate commands have, at most three.
    let typed = words[..words.len().min(3)].join(" ");
    let typed_short = words[..words.len().min(2)].join(" ");
    let hint = nearest(&typed, &candidates)
        .or_else(|| nearest(&typed_short, &candidates))
        .map(|n| format!("; did you mean `{n}`?"))
        .unwrap_or_default();
    let mut message = format!("unknown {what} `{typed}`{hint}");
    // The longest known prefix of the words, and the words that may follow
    // it; with none known, the words a command starts with.
    let all = command_words();
    for depth in (1..=words.len().min(2)).rev() {
        let prefix = words[..depth].join(" ");
        let next: Vec<&str> = all
            .iter()
            .filter_map(|c| c.strip_prefix(&format!("{prefix} ")))
            .map(|rest| rest.split(' ').next().unwrap_or(rest))
            .collect();
        if !next.is_empty() {
            let mut next = next;
            next.dedup();
            message.push_str(&format!(" (`{prefix}` takes {})", next.join("|")));
            return message;
        }
    }
    if hint.is_empty() {
        let mut first: Vec<&str> = all.iter().filter_map(|c| c.split(' ').next()).collect();
        first.sort_unstable();
        first.dedup();
        message.push_str(&format!(" (a command starts with {})", first.join("|")));
    }
    message
}

/// Every flag the command takes, in field form.
fn allowed_flags(spec: &Spec) -> Vec<&'static str> {
    let mut allowed = GLOBAL_FLAGS.to_vec();
    match spec {
        Spec::BounceParse => {}
        Spec::Put(info) => {
            allowed.push("file");
            allowed.extend(put_fields(info.cmd).iter().map(|(f, _)| *f));
        }
        Spec::Request(info) => {
            if let Some(ArgFields::Fields(fields)) = arg_fields(info.cmd) {
                // An optional operand may be given as a flag too (`report --date D`).
                let operand = info.operand.filter(|o| !o.optional).map(|o| o.field);
                let flags = fields.into_iter().filter(|f| Some(*f) != operand).map(|f| {
                    FILE_FIELDS
                        .iter()
                        .find(|(field, _)| *field == f)
                        .map_or(f, |(_, flag)| flag)
                });
                allowed.extend(flags);
            }
            if info.cmd == "log" {
                allowed.push("follow");
            }
        }
    }
    allowed
}

pub fn flag_spelling(field: &str) -> String {
    format!("--{}", field.replace('_', "-"))
}

/// Refuses unknown, repeated and value-less flags, naming them.
fn check_flags(spec: &Spec, flags: &[Flag], allowed: &[&str]) -> Result<(), Usage> {
    let command = match spec {
        Spec::Request(info) | Spec::Put(info) => words_of(info.cmd),
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
        value_given(flag)?;
        if flags[..i].iter().any(|f| f.name == flag.name) {
            return Err(Usage(format!("{} is given twice", flag.typed)));
        }
    }
    Ok(())
}

/// Refuses a flag that needs a value given without one, and a switch
/// given one.
fn value_given(flag: &Flag) -> Result<(), Usage> {
    match (&flag.value, SWITCHES.contains(&flag.name.as_str())) {
        (None, false) => Err(Usage(format!("{} needs a value", flag.typed))),
        (Some(_), true) => Err(Usage(format!("{} takes no value", flag.typed))),
        _ => Ok(()),
    }
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
    let mut object = match file {
        Some(path) => read_object(&path)?,
        None if fields.is_empty() && !std::io::stdin().is_terminal() => read_object("-")?,
        None => Map::new(),
    };
    for flag in fields {
        set_field(
            cmd,
            &mut object,
            &flag.name,
            &flag.value.unwrap_or_default(),
        )?;
    }
    if object.is_empty() {
        return Err(Usage(format!(
            "`{}` needs an object: --file F.json, stdin, or flags (sendctl help {})",
            words_of(cmd),
            words_of(cmd)
        )));
    }
    Ok(object)
}

fn set_field(cmd: &str, object: &mut Map<String, Value>, flag: &str, v: &str) -> Result<(), Usage> {
    let kind = put_fields(cmd)
        .iter()
        .find(|(f, _)| *f == flag)
        .map_or(FieldKind::Text, |(_, k)| *k);
    let value = field_value(kind, v).map_err(|e| Usage(format!("{}: {e}", flag_spelling(flag))))?;
    match (cmd, flag) {
        ("server.put", "username" | "password") => {
            let auth = object.entry("auth").or_insert_with(|| json!({}));
            if let Value::Object(auth) = auth {
                auth.insert(flag.into(), value);
            }
        }
        ("group.put", "servers") => {
            for channel in ["marketing", "transactional", "autoresponder"] {
                object.insert(channel.into(), value.clone());
            }
        }
        _ => {
            object.insert(flag.into(), value);
        }
    }
    Ok(())
}

/// A JSON object from a file, or from stdin for `-`.
fn read_object(path: &str) -> Result<Map<String, Value>, Usage> {
    let text = match path {
        "-" => read_limited(std::io::stdin(), "stdin")?,
        path => {
            let f = std::fs::File::open(path).map_err(|e| Usage(format!("--file {path}: {e}")))?;
            read_limited(f, path)?
        }
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(Usage(format!("{path}: the object must be a JSON object"))),
        Err(e) => Err(Usage(format!("{path}: not valid JSON: {e}"))),
    }
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
#[path = "args_tests.rs"]
mod tests;
