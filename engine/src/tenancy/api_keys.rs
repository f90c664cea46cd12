//! API keys of the HTTP injection API: per user, sent as a bearer token,
//! naming the tenant as AUTH does for SMTP.
//!
//! A token is `se_<id>_<secret>`: the id (12 hex digits) finds the key, the
//! secret (32 random bytes, base64url) proves it. Only the SHA-256 of the
//! secret is stored, in the user object, so keys replicate with users in
//! cluster mode and a stolen spool does not give working tokens. A fast hash
//! is enough for 256 random bits (no dictionary to guess from); the compare
//! is constant-time.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

const TOKEN_PREFIX: &str = "se_";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;
/// Keys one user may hold (rotation needs two; more is a leak waiting).
pub const MAX_KEYS_PER_USER: usize = 20;

/// One stored key: never the secret, only its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub id: String,
    /// SHA-256 of the secret, hex. Empty in what the admin socket shows.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
    /// When it was made (RFC 3339).
    #[serde(default)]
    pub created: String,
}

/// A key just made: the token is shown once, to the operator who made it.
pub struct NewApiKey {
    pub token: String,
    pub key: ApiKey,
}

/// Makes a key. `created` is the time to record (RFC 3339).
pub fn generate(created: String) -> NewApiKey {
    let rng = SystemRandom::new();
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    // The system RNG does not fail on Linux once booted; an all-zero key
    // would still be unique by id and is never produced in practice.
    let _ = rng.fill(&mut id);
    let _ = rng.fill(&mut secret);
    let id = hex(&id);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    NewApiKey {
        token: format!("{TOKEN_PREFIX}{id}_{secret}"),
        key: ApiKey {
            id,
            hash: hash_secret(&secret),
            created,
        },
    }
}

/// (id, secret) of a token shaped like ours.
pub fn split_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex_id = id.len() == ID_BYTES * 2 && id.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_id && !secret.is_empty() && secret.len() <= 128).then_some((id, secret))
}

/// Whether `secret` is the one whose hash is stored (constant time).
pub fn verify(stored_hash: &str, secret: &str) -> bool {
    let given = hash_secret(secret);
    aws_lc_rs::constant_time::verify_slices_are_equal(given.as_bytes(), stored_hash.as_bytes())
        .is_ok()
}

fn hash_secret(secret: &str) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_against_its_key_only() {
        let new = generate("2026-01-01T00:00:00Z".into());
        let (id, secret) = split_token(&new.token).unwrap();
        assert_eq!(id, new.key.id);
        assert!(verify(&new.key.hash, secret));
        assert!(!verify(&new.key.hash, "not-the-secret"));
        let other = generate(String::new());
        assert_ne!(other.key.id, new.key.id);
        assert!(!verify(&other.key.hash, secret));
    }

    #[test]
    fn tokens_of_another_shape_are_not_split() {
        assert_eq!(split_token("Bearer x"), None);
        assert_eq!(split_token("se_0123456789ab_"), None);
        assert_eq!(split_token("se_0123_secret"), None);
        assert_eq!(split_token("se_0123456789zz_secret"), None);
        assert!(split_token("se_0123456789ab_secret").is_some());
    }
}
