//! fml, the Japanese mailing-list manager, answers a post it refuses with a
//! plain notice from the list's admin address: "You are not a member of this
//! mailing list <list@example.org>." or "Duplicated Message-ID in
//! <list@example.org>.". The address in angle brackets is the list the
//! message did not reach.

use std::sync::LazyLock;

use regex::Regex;

use crate::mail::Mail;
use crate::text::{self, MAX_DIAGNOSTIC_CHARS, TextRecipient};

/// The sentence of a refusal, with the list address it names.
static REFUSAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?im)^\s*(.{0,200}?)<([^<>\s@]+@[^<>\s@]+)>")
        .unwrap_or_else(|e| panic!("fml regex: {e}"))
});

/// The refused list address and the sentence saying why, when the mail
/// comes from fml; nothing otherwise.
pub(crate) fn records(mail: &Mail, own_text: &str) -> Vec<TextRecipient> {
    let from_fml = mail
        .header("x-mlserver")
        .is_some_and(|server| server.trim_start().to_ascii_lowercase().starts_with("fml"));
    if !from_fml {
        return Vec::new();
    }
    REFUSAL
        .captures(own_text)
        .and_then(|found| Some((found.get(1)?, found.get(2)?)))
        .map(|(sentence, address)| TextRecipient {
            address: address.as_str().to_string(),
            diagnostic: text::truncate(&text::squeeze(sentence.as_str()), MAX_DIAGNOSTIC_CHARS),
        })
        .into_iter()
        .collect()
}
