//! `sendctl help [WORDS]` (also `--help`, `-h`): the usage, made from the
//! daemon's command table (`admin::commands::COMMANDS`) and the object
//! fields `put` takes (`admin::object_fields`), so it cannot drift from
//! what the daemon and the parser accept.

use sendengine::admin::commands::{COMMANDS, CommandInfo, QUEUE_FILTERS, Takes};
use sendengine::admin::object_fields::put_fields;

use crate::args::{command_words, flag_spelling, words_of};

const HEAD: &str = "usage: sendctl [--config FILE | --socket PATH] [--json] COMMAND [ARGS]

Talks to a running sendengine over its admin socket: human tables by
default, the daemon's JSON with --json. Exit 0 on success, 1 when the
daemon answered with an error, could not be reached, or (server test) a
step failed; 2 on a usage error.
";

const TAIL: &str = "Flags take a value (--campaign X or --campaign=X) except --json, --all and
--help; a flag a command does not take is an error (exit 2), never ignored.
The socket: --socket PATH, else the [admin] socket of --config FILE (not
both), else
$SENDENGINE_SOCKET, else that of $SENDENGINE_CONFIG, else var/admin.sock
when it exists, else that of /etc/sendengine/config.toml.";

/// Whether `topic` starts the words of some command, so `text` has
/// something to show for it (the parser refuses any other topic).
pub fn is_topic(topic: &[String]) -> bool {
    let topic = topic.join(" ");
    command_words().iter().any(|words| covers(&topic, words))
}

/// Whether the help for `topic` shows the command `words`.
fn covers(topic: &str, words: &str) -> bool {
    topic.is_empty() || words.starts_with(topic)
}

/// The usage of every command whose words start with `topic`; every
/// command for an empty topic (or one that matches none).
pub fn text(topic: &[String]) -> String {
    let topic = topic.join(" ");
    let wanted = |words: &str| covers(&topic, words);
    let mut chosen: Vec<&CommandInfo> = COMMANDS
        .iter()
        .filter(|c| wanted(&words_of(c.cmd)))
        .collect();
    let bounce = wanted("bounce parse");
    if chosen.is_empty() && !bounce {
        chosen = COMMANDS.iter().collect();
    }
    let mut out = format!("{HEAD}\n");
    for info in &chosen {
        out.push_str(&format!(
            "  sendctl {}\n      {}\n",
            synopsis(info),
            info.about
        ));
    }
    if bounce || chosen.len() == COMMANDS.len() {
        out.push_str(
            "  sendctl bounce parse FILE... [--json]\n      \
             classify bounce messages offline (no daemon needed)\n",
        );
    }
    out.push('\n');
    if chosen.iter().any(|c| matches!(c.takes, Takes::Filters(_))) {
        let filters: Vec<String> = QUEUE_FILTERS.iter().map(|f| flag_spelling(f)).collect();
        out.push_str(&format!(
            "FILTERS (queue): {} (--older-than takes a duration: 2h)\n",
            filters.join(" ")
        ));
    }
    for info in chosen.iter().filter(|c| c.takes == Takes::Object) {
        let fields: Vec<String> = put_fields(info.cmd)
            .iter()
            .map(|(f, _)| flag_spelling(f))
            .collect();
        if !fields.is_empty() {
            out.push_str(&format!(
                "FIELDS ({}): {}\n",
                words_of(info.cmd),
                fields.join(" ")
            ));
        }
    }
    out.push_str(TAIL);
    out.push('\n');
    out
}

/// `queue list [FILTERS] [--limit LIMIT]`, `server get NAME`, ...
fn synopsis(info: &CommandInfo) -> String {
    let mut line = words_of(info.cmd);
    if let Some(operand) = info.operand {
        match operand.optional {
            true => line.push_str(&format!(" [{}]", operand.shown)),
            false => line.push_str(&format!(" {}", operand.shown)),
        }
    }
    let operand = info.operand.map(|o| o.field);
    let own: &[&str] = match info.takes {
        Takes::Fields(fields) => fields,
        Takes::Filters(extra) => {
            line.push_str(" [FILTERS]");
            extra
        }
        Takes::Object => {
            line.push_str(" [--file F.json | < F.json | FIELDS]");
            &[]
        }
    };
    for field in own.iter().filter(|f| Some(**f) != operand) {
        let shown = match *field {
            "all" => "--all".to_owned(),
            "private_key" => "--pem-file FILE".to_owned(),
            "server" => "--file F.json".to_owned(),
            f @ ("to" | "from") => format!("{} ADDR", flag_spelling(f)),
            f => format!("{} {}", flag_spelling(f), f.to_ascii_uppercase()),
        };
        line.push_str(&format!(" [{shown}]"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_in_the_help_and_a_topic_narrows_it() {
        let all = text(&[]);
        for info in COMMANDS {
            assert!(
                all.contains(&format!("sendctl {}", words_of(info.cmd))),
                "{}",
                info.cmd
            );
        }
        assert!(all.contains("sendctl queue inspect ID"), "{all}");
        assert!(all.contains("--tls-verify"), "{all}");
        let queue = text(&["queue".to_owned()]);
        assert!(
            queue.contains("queue list [FILTERS] [--limit LIMIT]"),
            "{queue}"
        );
        assert!(!queue.contains("server list"), "{queue}");
    }
}
