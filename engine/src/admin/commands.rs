//! The catalogue of admin commands and the argument fields each takes.
//!
//! A field a command does not know is refused before the command runs:
//! a misspelled filter (`campain`) must never widen a queue action to the
//! whole queue. `sendctl` builds its flags from the same table, so the CLI
//! and the socket cannot drift apart.

use serde_json::{Map, Value};

use super::protocol::AdminError;

/// The filters of the queue commands.
pub const QUEUE_FILTERS: &[&str] = &[
    "route",
    "domain",
    "tenant",
    "campaign",
    "channel",
    "older_than",
    "id",
];

/// What a command's `args` may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgFields {
    /// Exactly these fields (each optional or required by the handler).
    Fields(Vec<&'static str>),
    /// A whole object (`server.put`, ...): its type refuses unknown fields.
    Object,
}

/// The fields of `cmd`; `None` when there is no such command.
pub fn arg_fields(cmd: &str) -> Option<ArgFields> {
    let (noun, verb) = cmd.split_once('.').unwrap_or((cmd, ""));
    let fields = |list: &[&'static str]| Some(ArgFields::Fields(list.to_vec()));
    let with_filters = |extra: &[&'static str]| {
        let mut all = QUEUE_FILTERS.to_vec();
        all.extend_from_slice(extra);
        Some(ArgFields::Fields(all))
    };
    match (noun, verb) {
        ("hello" | "status", "") => fields(&[]),
        ("server" | "group" | "user" | "template" | "domain", "list") => fields(&[]),
        ("server" | "group" | "user" | "template", "get" | "delete") => fields(&["name"]),
        ("server" | "group" | "user" | "template", "put") => Some(ArgFields::Object),
        ("server", "test") => fields(&["name", "to", "from"]),
        ("user", "usage" | "api_key.create" | "api_key.list") => fields(&["name"]),
        ("user", "api_key.revoke") => fields(&["name", "id"]),
        ("domain", "get" | "delete" | "verify" | "records") => fields(&["domain"]),
        ("domain", "put") => fields(&["domain", "owner"]),
        ("dkim", "list") => fields(&[]),
        ("dkim", "get") => fields(&["domain"]),
        ("dkim", "generate") => fields(&["domain", "selector", "algorithm", "inactive"]),
        ("dkim", "import") => fields(&["domain", "selector", "private_key", "inactive"]),
        ("dkim", "activate" | "retire") => fields(&["domain", "selector"]),
        ("queue", "summary" | "flush" | "suspend" | "resume") => with_filters(&[]),
        ("queue", "list") => with_filters(&["limit"]),
        ("queue", "delete" | "bounce") => with_filters(&["all"]),
        ("queue", "inspect") => fields(&["id"]),
        ("suppression", "list") => fields(&["tenant", "limit"]),
        ("suppression", "add") => fields(&["address", "tenant", "reason"]),
        ("suppression", "remove" | "check") => fields(&["address", "tenant"]),
        ("fleet", "status") => fields(&["all"]),
        ("fleet", "queue.suspend" | "queue.resume" | "queue.bounce" | "queue.delete") => {
            fields(&["campaign", "tenant"])
        }
        _ => None,
    }
}

/// Refuses an argument `cmd` does not take, naming it and the nearest
/// field it does take. Unknown commands pass: the dispatcher names them.
pub fn check_fields(cmd: &str, args: &Map<String, Value>) -> Result<(), AdminError> {
    let Some(ArgFields::Fields(known)) = arg_fields(cmd) else {
        return Ok(());
    };
    let Some(unknown) = args.keys().find(|k| !known.contains(&k.as_str())) else {
        return Ok(());
    };
    let takes = if known.is_empty() {
        "it takes no arguments".to_owned()
    } else {
        format!("it takes {}", known.join(", "))
    };
    let hint = nearest(unknown, &known)
        .map(|n| format!("did you mean `{n}`? "))
        .unwrap_or_default();
    Err(AdminError::bad_args(format!(
        "{unknown}: unknown field for {cmd}; {hint}{takes}"
    )))
}

/// The candidate closest to `given` in edits, if it is close enough to be
/// a likely typo (at most a third of its length, at least one edit).
pub fn nearest<'a>(given: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (given.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(given, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_misspelled_filter_is_refused_with_the_nearest_field() {
        let e = check_fields("queue.suspend", &args(json!({"campain": "x"}))).unwrap_err();
        assert_eq!(e.code, "bad_args");
        assert!(e.message.starts_with("campain: unknown field"), "{e}");
        assert!(e.message.contains("did you mean `campaign`?"), "{e}");
        let e = check_fields("status", &args(json!({"verbose": true}))).unwrap_err();
        assert!(e.message.contains("takes no arguments"), "{e}");
    }

    #[test]
    fn known_fields_objects_and_unknown_commands_pass() {
        let filters = json!({"campaign": "c", "tenant": "t", "older_than": "2h"});
        assert!(check_fields("queue.suspend", &args(filters)).is_ok());
        assert!(check_fields("server.put", &args(json!({"anything": 1}))).is_ok());
        assert!(check_fields("no.such", &args(json!({"x": 1}))).is_ok());
    }

    #[test]
    fn nearest_finds_typos_not_strangers() {
        let known = ["campaign", "tenant", "channel"];
        assert_eq!(nearest("campain", &known), Some("campaign"));
        assert_eq!(nearest("tenent", &known), Some("tenant"));
        assert_eq!(nearest("zzz", &known), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
