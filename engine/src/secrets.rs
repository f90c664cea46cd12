//! Secrets at rest: the host's master key, sealed values and password hashes.
//!
//! The master key is 32 random bytes in a file (`[secrets] key_file`, made
//! with mode 0600 on first start, or given by systemd's `LoadCredential=`).
//! Relay passwords and other secrets in stored objects are sealed with
//! AES-256-GCM under it, so a copy of the spool alone does not leak them.
//! Keys for other jobs (VERP tags, domain ownership hashes) are derived from
//! it, so one file is all there is to back up. User passwords are not
//! sealed but hashed (PBKDF2-HMAC-SHA256), since they only need checking.

use std::io::Write;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::{hmac, pbkdf2};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;

const SEALED_PREFIX: &str = "sealed:v1:";
const HASH_PREFIX: &str = "$pbkdf2-sha256$";
const PBKDF2_ROUNDS: u32 = 60_000;

/// The systemd credential that holds the master key
/// (`LoadCredential=secret.key:/etc/sendengine/secret.key`).
pub const CREDENTIAL_NAME: &str = "secret.key";

/// The key file systemd passed as a credential, if the service has one.
fn credential_key_file() -> Option<PathBuf> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let path = Path::new(&dir).join(CREDENTIAL_NAME);
    path.is_file().then_some(path)
}

/// The master key as configured. `[secrets] key_file` when the file sets
/// it; else the systemd credential when the service has one; else
/// `key_file`'s default (beside config.toml), made on first start.
///
/// Older versions kept the default key in the spool directory, so a spool
/// backup carried the key that opens the secrets stored in it. Such a key
/// is still used (a new one could not open the stored secrets), with a
/// warning saying how to move it; if both files exist they must hold the
/// same key.
pub fn load_configured(
    key_file: &Path,
    key_file_set: bool,
    spool_dir: &Path,
) -> Result<Secrets, SecretError> {
    if key_file_set {
        return Secrets::load_or_create(key_file);
    }
    if let Some(credential) = credential_key_file() {
        return Secrets::load(&credential);
    }
    let old = spool_dir.join(CREDENTIAL_NAME);
    if !old.is_file() {
        return Secrets::load_or_create(key_file);
    }
    let (old_shown, new_shown) = (old.display(), key_file.display());
    if !key_file.exists() {
        log::warn!(
            "the master key is read from {old_shown}, in the spool directory: a spool backup \
             carries the key that opens the secrets stored in it. Move it beside the \
             configuration (`mv {old_shown} {new_shown}`, or set [secrets] key_file) and back \
             it up apart from the spool"
        );
        return Secrets::load(&old);
    }
    let (older, newer) = (Secrets::load(&old)?, Secrets::load(key_file)?);
    if older.master != newer.master {
        return Err(SecretError::KeyFile {
            path: key_file.display().to_string(),
            reason: format!(
                "differs from the key an older version kept in {old_shown}; the stored secrets \
                 were sealed with one of them: keep that one as {new_shown} and remove the other"
            ),
        });
    }
    log::warn!("{old_shown} is a copy of the master key {new_shown}: remove it from the spool");
    Ok(newer)
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error(
        "a sealed secret could not be opened: it was sealed with another key file, or is damaged"
    )]
    Unseal,
}

/// The host's master key and what is derived from it.
#[derive(Clone)]
pub struct Secrets {
    sealing: std::sync::Arc<LessSafeKey>,
    master: [u8; 32],
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

impl Secrets {
    /// Reads the key file, creating it (0600) with a fresh key if missing.
    pub fn load_or_create(path: &Path) -> Result<Secrets, SecretError> {
        let err = |reason: String| SecretError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        if !path.exists() {
            let mut key = [0u8; 32];
            SystemRandom::new()
                .fill(&mut key)
                .map_err(|_| err("no randomness available".into()))?;
            write_private(path, &B64.encode(key)).map_err(|e| err(e.to_string()))?;
        }
        Secrets::load(path)
    }

    /// Reads an existing key file, such as a read-only systemd credential.
    pub fn load(path: &Path) -> Result<Secrets, SecretError> {
        let err = |reason: String| SecretError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| err("not base64: expected the 32-byte key this daemon wrote".into()))?;
        let master: [u8; 32] = bytes
            .try_into()
            .map_err(|_| err("wrong length: expected a 32-byte key".into()))?;
        Ok(Secrets::from_key(master))
    }

    pub fn from_key(master: [u8; 32]) -> Secrets {
        let sealing_key = derive(&master, b"sendengine sealing v1");
        let unbound = UnboundKey::new(&AES_256_GCM, &sealing_key).expect("32-byte AES key");
        Secrets {
            sealing: std::sync::Arc::new(LessSafeKey::new(unbound)),
            master,
        }
    }

    /// A key for one purpose, derived from the master key.
    pub fn derived(&self, purpose: &str) -> [u8; 32] {
        derive(&self.master, purpose.as_bytes())
    }

    /// `sealed:v1:<base64(nonce | ciphertext | tag)>`
    pub fn seal(&self, plaintext: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        // The OS random source does not fail once the process runs.
        let _ = SystemRandom::new().fill(&mut nonce);
        let mut data = plaintext.as_bytes().to_vec();
        self.sealing
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .expect("AES-GCM sealing of an in-memory buffer");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!("{SEALED_PREFIX}{}", B64.encode(out))
    }

    pub fn is_sealed(value: &str) -> bool {
        value.starts_with(SEALED_PREFIX)
    }

    pub fn open(&self, sealed: &str) -> Result<String, SecretError> {
        let bytes = sealed
            .strip_prefix(SEALED_PREFIX)
            .and_then(|b| B64.decode(b).ok())
            .filter(|b| b.len() > NONCE_LEN)
            .ok_or(SecretError::Unseal)?;
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Unseal)?;
        let mut data = data.to_vec();
        let plain = self
            .sealing
            .open_in_place(nonce, Aad::empty(), &mut data)
            .map_err(|_| SecretError::Unseal)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretError::Unseal)
    }
}

fn derive(master: &[u8; 32], purpose: &[u8]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, master);
    let tag = hmac::sign(&key, purpose);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{text}")?;
    file.sync_all()
}

/// `$pbkdf2-sha256$<rounds>$<salt>$<hash>`
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    let _ = SystemRandom::new().fill(&mut salt);
    let mut hash = [0u8; 32];
    let rounds = NonZeroU32::new(PBKDF2_ROUNDS).expect("non-zero");
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &salt,
        password.as_bytes(),
        &mut hash,
    );
    format!(
        "{HASH_PREFIX}{PBKDF2_ROUNDS}${}${}",
        B64.encode(salt),
        B64.encode(hash)
    )
}

pub fn is_password_hash(value: &str) -> bool {
    value.starts_with(HASH_PREFIX)
}

/// Checks a password against a hash made by `hash_password` (constant time).
pub fn verify_password(hash: &str, password: &str) -> bool {
    let Some(rest) = hash.strip_prefix(HASH_PREFIX) else {
        return false;
    };
    let mut parts = rest.split('$');
    let (Some(rounds), Some(salt), Some(expected), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Some(rounds), Ok(salt), Ok(expected)) = (
        rounds.parse().ok().and_then(NonZeroU32::new),
        B64.decode(salt),
        B64.decode(expected),
    ) else {
        return false;
    };
    pbkdf2::verify(
        pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &salt,
        password.as_bytes(),
        &expected,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both the old key in the spool and one beside the config: the same
    /// key is fine, two different ones stop the start (never guess which
    /// one sealed the stored secrets); a new install makes its key beside
    /// the config, not in the spool.
    #[test]
    fn an_old_key_in_the_spool_is_used_and_never_silently_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, key_file) = (dir.path().join("spool"), dir.path().join("secret.key"));
        std::fs::create_dir_all(&spool).unwrap();
        let made = load_configured(&key_file, false, &spool).unwrap();
        assert!(key_file.is_file() && !spool.join(CREDENTIAL_NAME).exists());

        std::fs::rename(&key_file, spool.join(CREDENTIAL_NAME)).unwrap();
        let old = load_configured(&key_file, false, &spool).unwrap();
        assert_eq!(old.master, made.master);
        assert!(!key_file.exists(), "no new key beside the old one");

        std::fs::copy(spool.join(CREDENTIAL_NAME), &key_file).unwrap();
        assert!(load_configured(&key_file, false, &spool).is_ok());
        std::fs::remove_file(&key_file).unwrap();
        write_private(&key_file, &B64.encode([9u8; 32])).unwrap();
        let e = load_configured(&key_file, false, &spool).unwrap_err();
        assert!(e.to_string().contains("differs"), "{e}");
    }

    #[test]
    fn sealing_round_trips_and_needs_the_same_key() {
        let a = Secrets::from_key([7; 32]);
        let sealed = a.seal("relay-password");
        assert!(Secrets::is_sealed(&sealed));
        assert!(!sealed.contains("relay-password"));
        assert_eq!(a.open(&sealed).unwrap(), "relay-password");
        assert_ne!(a.seal("x"), a.seal("x"), "fresh nonce each time");
        let b = Secrets::from_key([8; 32]);
        assert!(b.open(&sealed).is_err());
        assert!(a.open("sealed:v1:AAAA").is_err());
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/secret.key");
        let a = Secrets::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Secrets::load_or_create(&path).unwrap();
        assert_eq!(b.open(&a.seal("same")).unwrap(), "same");
        assert_eq!(a.derived("verp"), b.derived("verp"));
        assert_ne!(a.derived("verp"), a.derived("domain-hash"));
        std::fs::write(&path, "short").unwrap();
        assert!(Secrets::load_or_create(&path).is_err());
    }

    #[test]
    fn password_hashes() {
        let h = hash_password("s3cret");
        assert!(is_password_hash(&h));
        assert!(verify_password(&h, "s3cret"));
        assert!(!verify_password(&h, "s3cret!"));
        assert!(!verify_password("$pbkdf2-sha256$x$y$z", "s3cret"));
        assert_ne!(hash_password("s3cret"), h, "salted");
    }
}
