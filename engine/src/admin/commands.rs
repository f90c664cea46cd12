//! The catalogue of admin commands and the argument fields each takes.
//!
//! A field a command does not know is refused before the command runs:
//! a misspelled filter (`campain`) must never widen a queue action to the
//! whole queue. `sendctl` builds its words, flags and `--help` from the
//! same table, so the CLI and the socket cannot drift apart.

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

/// The arguments of `log`: paging, following, and the filters.
pub const LOG_FIELDS: &[&str] = &[
    "limit",
    "before",
    "after",
    "type",
    "recipient",
    "sender",
    "tenant",
    "campaign",
    "route",
    "message",
    "since",
];

/// What a command's `args` may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgFields {
    /// Exactly these fields (each optional or required by the handler).
    Fields(Vec<&'static str>),
    /// A whole object (`server.put`, ...): its type refuses unknown fields.
    Object,
}

/// The word after a command's name, and the field it fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operand {
    pub field: &'static str,
    /// How usage shows it: `NAME`, `ID`, `DOMAIN`, `ADDRESS`.
    pub shown: &'static str,
    /// Whether the command can do without it (`server test --file F`).
    pub optional: bool,
}

/// How a command's arguments are made up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takes {
    Fields(&'static [&'static str]),
    /// The queue filters and these fields.
    Filters(&'static [&'static str]),
    Object,
}

/// One admin command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandInfo {
    /// As on the socket (`queue.list`); sendctl's words are its parts.
    pub cmd: &'static str,
    pub operand: Option<Operand>,
    pub takes: Takes,
    /// One line for `sendctl --help`.
    pub about: &'static str,
}

const fn op(field: &'static str, shown: &'static str) -> Option<Operand> {
    Some(Operand {
        field,
        shown,
        optional: false,
    })
}

const fn cmd(
    cmd: &'static str,
    operand: Option<Operand>,
    takes: Takes,
    about: &'static str,
) -> CommandInfo {
    CommandInfo {
        cmd,
        operand,
        takes,
        about,
    }
}

const NONE: Takes = Takes::Fields(&[]);
const NAME: Option<Operand> = op("name", "NAME");
const DOMAIN: Option<Operand> = op("domain", "DOMAIN");
const ADDRESS: Option<Operand> = op("address", "ADDRESS");
const BY_NAME: Takes = Takes::Fields(&["name"]);
const BY_DOMAIN: Takes = Takes::Fields(&["domain"]);
const FLEET_SELECTOR: Takes = Takes::Fields(&["campaign", "tenant"]);

/// Every command, in the order `--help` shows them.
pub const COMMANDS: &[CommandInfo] = &[
    cmd(
        "status",
        None,
        NONE,
        "listeners, queue, routes, campaigns in flight",
    ),
    cmd("hello", None, NONE, "the protocol and daemon versions"),
    cmd(
        "log",
        None,
        Takes::Fields(LOG_FIELDS),
        "the event log, newest first, paged and filtered (--follow: like tail -f)",
    ),
    cmd(
        "report",
        Some(Operand {
            field: "date",
            shown: "today|yesterday|YYYY-MM-DD",
            optional: true,
        }),
        Takes::Fields(&["date", "tenant"]),
        "one UTC day on this node: counts, bytes, top senders, domains, bounces (--tenant T)",
    ),
    cmd(
        "server.list",
        None,
        NONE,
        "delivery servers, enabled or not, and the groups and channels using each",
    ),
    cmd(
        "server.get",
        NAME,
        BY_NAME,
        "one delivery server (password shown as (set))",
    ),
    cmd(
        "server.put",
        None,
        Takes::Object,
        "add or change a server (new ones start disabled)",
    ),
    cmd(
        "server.delete",
        NAME,
        BY_NAME,
        "remove a server no group uses",
    ),
    cmd(
        "server.test",
        Some(Operand {
            field: "name",
            shown: "NAME|direct",
            optional: true,
        }),
        Takes::Fields(&["name", "server", "to", "from"]),
        "one SMTP transaction, step by step (--file F.json: a definition not saved yet)",
    ),
    cmd(
        "server.enable",
        NAME,
        BY_NAME,
        "let groups send through the server",
    ),
    cmd(
        "server.disable",
        NAME,
        BY_NAME,
        "stop sending through the server (kept, still testable)",
    ),
    cmd(
        "group.list",
        None,
        NONE,
        "user groups and their servers per channel",
    ),
    cmd("group.get", NAME, BY_NAME, "one user group"),
    cmd(
        "group.put",
        None,
        Takes::Object,
        "add or change a user group",
    ),
    cmd("group.delete", NAME, BY_NAME, "remove a user group"),
    cmd("user.list", None, NONE, "users (tenants)"),
    cmd("user.get", NAME, BY_NAME, "one user"),
    cmd("user.put", None, Takes::Object, "add or change a user"),
    cmd("user.delete", NAME, BY_NAME, "remove a user"),
    cmd(
        "user.usage",
        NAME,
        BY_NAME,
        "sending limits used (the fleet's in cluster mode)",
    ),
    cmd("template.list", None, NONE, "DNS templates"),
    cmd("template.get", NAME, BY_NAME, "one DNS template"),
    cmd(
        "template.put",
        None,
        Takes::Object,
        "add or change a DNS template",
    ),
    cmd("template.delete", NAME, BY_NAME, "remove a DNS template"),
    cmd(
        "user.api_key.create",
        NAME,
        BY_NAME,
        "a new HTTP API key for the user (the token is shown once)",
    ),
    cmd(
        "user.api_key.list",
        NAME,
        BY_NAME,
        "the user's HTTP API keys (ids and creation times, never the tokens)",
    ),
    cmd(
        "user.api_key.revoke",
        NAME,
        Takes::Fields(&["name", "id"]),
        "revoke one of the user's HTTP API keys (--id ID)",
    ),
    cmd(
        "domain.list",
        None,
        NONE,
        "sender domains and their verification",
    ),
    cmd("domain.get", DOMAIN, BY_DOMAIN, "one sender domain"),
    cmd(
        "domain.put",
        DOMAIN,
        Takes::Fields(&["domain", "owner"]),
        "add a sender domain for a user",
    ),
    cmd("domain.delete", DOMAIN, BY_DOMAIN, "remove a sender domain"),
    cmd(
        "domain.verify",
        DOMAIN,
        BY_DOMAIN,
        "look the domain's records up in DNS now",
    ),
    cmd(
        "domain.records",
        DOMAIN,
        BY_DOMAIN,
        "the records to publish, as zone-file lines",
    ),
    cmd("dkim.list", None, NONE, "DKIM keys by domain"),
    cmd("dkim.get", DOMAIN, BY_DOMAIN, "one domain's DKIM keys"),
    cmd(
        "dkim.generate",
        DOMAIN,
        Takes::Fields(&["domain", "selector", "algorithm", "inactive"]),
        "make a key (--algorithm rsa|ed25519)",
    ),
    cmd(
        "dkim.import",
        DOMAIN,
        Takes::Fields(&["domain", "selector", "private_key", "inactive"]),
        "import a PEM key (--pem-file FILE)",
    ),
    cmd(
        "dkim.activate",
        DOMAIN,
        Takes::Fields(&["domain", "selector"]),
        "sign with this selector",
    ),
    cmd(
        "dkim.retire",
        DOMAIN,
        Takes::Fields(&["domain", "selector"]),
        "stop signing with this selector",
    ),
    cmd(
        "queue.summary",
        None,
        Takes::Filters(&[]),
        "queued recipients by status, route, domain, tenant, campaign",
    ),
    cmd(
        "queue.list",
        None,
        Takes::Filters(&["limit"]),
        "queued recipients with their last reply and next attempt",
    ),
    cmd(
        "queue.inspect",
        op("id", "ID"),
        Takes::Fields(&["id"]),
        "one message: headers, recipients; once it has left the queue, its history",
    ),
    cmd(
        "queue.flush",
        None,
        Takes::Filters(&[]),
        "make deferred mail due now",
    ),
    cmd(
        "queue.suspend",
        None,
        Takes::Filters(&[]),
        "hold mail (it does not expire while held)",
    ),
    cmd(
        "queue.resume",
        None,
        Takes::Filters(&[]),
        "release held mail",
    ),
    cmd(
        "queue.delete",
        None,
        Takes::Filters(&["all"]),
        "remove mail (a filter, or --all)",
    ),
    cmd(
        "queue.bounce",
        None,
        Takes::Filters(&["all"]),
        "bounce mail back (a filter, or --all)",
    ),
    cmd(
        "suppression.list",
        None,
        Takes::Fields(&["tenant", "limit"]),
        "suppressed addresses (no --tenant: the global list)",
    ),
    cmd(
        "suppression.add",
        ADDRESS,
        Takes::Fields(&["address", "tenant", "reason"]),
        "suppress an address",
    ),
    cmd(
        "suppression.remove",
        ADDRESS,
        Takes::Fields(&["address", "tenant"]),
        "lift a suppression",
    ),
    cmd(
        "suppression.check",
        ADDRESS,
        Takes::Fields(&["address", "tenant"]),
        "whether an address is suppressed",
    ),
    cmd(
        "fleet.status",
        None,
        Takes::Fields(&["all"]),
        "cluster mode: live nodes (--all: stopped and lost ones too)",
    ),
    cmd(
        "fleet.forget",
        NAME,
        BY_NAME,
        "drop a stopped or lost node's row from fleet status (it comes back if the node runs again)",
    ),
    cmd(
        "fleet.queue.suspend",
        None,
        FLEET_SELECTOR,
        "every node holds the mail it received before the order",
    ),
    cmd(
        "fleet.queue.resume",
        None,
        FLEET_SELECTOR,
        "every node releases it",
    ),
    cmd(
        "fleet.queue.bounce",
        None,
        FLEET_SELECTOR,
        "every node bounces it",
    ),
    cmd(
        "fleet.queue.delete",
        None,
        FLEET_SELECTOR,
        "every node deletes it",
    ),
];

/// The command called `cmd`.
pub fn command(cmd: &str) -> Option<&'static CommandInfo> {
    COMMANDS.iter().find(|c| c.cmd == cmd)
}

/// The fields of `cmd`; `None` when there is no such command.
pub fn arg_fields(cmd: &str) -> Option<ArgFields> {
    Some(match command(cmd)?.takes {
        Takes::Fields(list) => ArgFields::Fields(list.to_vec()),
        Takes::Filters(extra) => {
            ArgFields::Fields(QUEUE_FILTERS.iter().chain(extra).copied().collect())
        }
        Takes::Object => ArgFields::Object,
    })
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

    #[test]
    fn operands_are_fields_of_their_command() {
        for c in COMMANDS {
            let Some(operand) = c.operand else { continue };
            match arg_fields(c.cmd) {
                Some(ArgFields::Fields(f)) => assert!(f.contains(&operand.field), "{}", c.cmd),
                other => panic!("{}: {other:?}", c.cmd),
            }
        }
    }
}
