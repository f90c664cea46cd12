//! Suppression lists: addresses a tenant must not send to any more.
//!
//! Each tenant has its own list and tenant "" is the global one, which
//! applies to everybody. Addresses are kept lowercased (whole address,
//! local part included: providers treat it case-insensitively in practice,
//! and a list that misses `Bob@` after a bounce for `bob@` is worse than
//! one that over-matches). The table itself lives in `store/mod.rs`.

use crate::error::SpoolError;

/// The tenant whose list applies to every tenant.
pub const GLOBAL_TENANT: &str = "";
/// Longest address accepted (RFC 5321's path limit, less the brackets).
pub const MAX_ADDRESS_BYTES: usize = 254;
/// Reason and source texts are cut to this many bytes when stored.
pub(crate) const MAX_NOTE_BYTES: usize = 1024;

/// One entry of a suppression list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppression {
    /// "" for the global list.
    pub tenant: String,
    /// Lowercased.
    pub address: String,
    /// Why, in a word or two: `bad-mailbox`, `complaint`, `manual`...
    pub reason: String,
    /// When it was added, in ms since the Unix epoch.
    pub time_ms: u64,
    /// What caused it: the remote reply, the operator...
    pub source: String,
}

/// The key form of an address, or why it cannot be one.
pub fn normalize(address: &str) -> Result<String, SpoolError> {
    let address = address.trim();
    if address.is_empty() {
        return Err(SpoolError::Invalid("the address is empty".into()));
    }
    if address.len() > MAX_ADDRESS_BYTES {
        return Err(SpoolError::Invalid(format!(
            "the address has {} bytes, more than the limit of {MAX_ADDRESS_BYTES}",
            address.len()
        )));
    }
    Ok(address.to_lowercase())
}

/// `text` cut to `MAX_NOTE_BYTES` on a character boundary.
pub(crate) fn clip(text: &str) -> &str {
    if text.len() <= MAX_NOTE_BYTES {
        return text;
    }
    let mut end = MAX_NOTE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_trimmed_and_lowercased() {
        assert_eq!(normalize(" Bob@Example.COM ").unwrap(), "bob@example.com");
        assert!(normalize("  ").is_err());
        assert!(normalize(&"a".repeat(MAX_ADDRESS_BYTES + 1)).is_err());
    }

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        let text = "é".repeat(MAX_NOTE_BYTES);
        let cut = clip(&text);
        assert!(cut.len() <= MAX_NOTE_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(clip("short"), "short");
    }
}
