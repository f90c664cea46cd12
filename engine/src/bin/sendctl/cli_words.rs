//! The daemon's error messages in the CLI's words.
//!
//! The admin socket names JSON fields (`id: ...`, `all: true`,
//! `queue.delete`); a person at the command line typed `ID`, `--all` and
//! `queue delete`. The translation uses the same command table as the
//! parser, so each field becomes the word or flag that sets it.

use sendengine::admin::commands::{ArgFields, arg_fields, command};

use crate::args::{flag_spelling, words_of};

/// `message` from the daemon about `cmd`, with fields named as typed.
pub fn message(cmd: &str, message: &str) -> String {
    let mut text = message
        .replace("`all: true`", "--all")
        .replace(cmd, &words_of(cmd));
    if let Some((field, rest)) = text.split_once(": ")
        && let Some(word) = cli_word(cmd, field.trim_matches('`'))
    {
        text = format!("{word}: {rest}");
    }
    text
}

/// How the command line sets `field` of `cmd`: its operand word or flag.
fn cli_word(cmd: &str, field: &str) -> Option<String> {
    let info = command(cmd)?;
    if let Some(operand) = info.operand.filter(|o| o.field == field) {
        return Some(operand.shown.to_owned());
    }
    let Some(ArgFields::Fields(fields)) = arg_fields(cmd) else {
        return None;
    };
    if !fields.contains(&field) {
        return None;
    }
    Some(match field {
        "private_key" => "--pem-file".to_owned(),
        "server" => "--file".to_owned(),
        f => flag_spelling(f),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_become_words_and_flags() {
        assert_eq!(
            message(
                "queue.inspect",
                "id: `zz` is not a queue id (16 hex digits)"
            ),
            "ID: `zz` is not a queue id (16 hex digits)"
        );
        let m = message(
            "queue.delete",
            "all: `queue delete` without a filter acts on the whole queue; give a filter, or `all: true` to mean it",
        );
        assert_eq!(
            m,
            "--all: `queue delete` without a filter acts on the whole queue; give a filter, or --all to mean it"
        );
        assert_eq!(
            message("queue.list", "older_than: no unit"),
            "--older-than: no unit"
        );
        assert_eq!(message("status", "the spool: x"), "the spool: x");
    }
}
