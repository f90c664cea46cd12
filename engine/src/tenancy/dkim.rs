//! DKIM keys of sender domains, as stored objects.
//!
//! A `DkimDomain` holds a domain's keys, each sealed at rest (the private
//! key in PEM, AES-GCM under the master key). Signers are built when a
//! configuration change is applied, so a broken key is refused then and
//! never fails a message; a key the change left as it was keeps the signer
//! of the snapshot before (parsing thousands of RSA keys takes seconds).
//! Every active key signs: one RSA and one Ed25519 key active at once is
//! dual signing; a key added inactive is published first and activated
//! later (rotation).

use std::sync::Arc;

use sendengine_dkim::{DkimKey, DnsRecord, KeyAlgorithm, Signer};
use serde::{Deserialize, Serialize};

use crate::secrets::Secrets;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimDomain {
    pub domain: String,
    #[serde(default)]
    pub keys: Vec<StoredKey>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredKey {
    pub selector: String,
    /// `sealed:v1:...` once stored; PEM (PKCS#1 or PKCS#8) when given.
    pub private_key: String,
    #[serde(default = "yes")]
    pub active: bool,
}

/// One change to a domain's DKIM keys.
#[derive(Clone, Debug)]
pub enum KeyEdit {
    /// A new key, refused when its selector is taken.
    Add(StoredKey),
    /// The key with this selector signs from now on.
    Activate(String),
    /// The key with this selector is removed.
    Retire(String),
}

impl KeyEdit {
    /// Makes the edit on `keys`; a refusal says why. "no such object" for a
    /// selector the domain does not have (the admin socket's not_found).
    pub fn apply(self, keys: &mut DkimDomain) -> Result<(), String> {
        let position = |selector: &str| keys.keys.iter().position(|k| k.selector == selector);
        match self {
            KeyEdit::Add(key) => {
                if position(&key.selector).is_some() {
                    return Err(format!(
                        "selector `{}` already has a key: retire it first or pick another",
                        key.selector
                    ));
                }
                keys.keys.push(key);
            }
            KeyEdit::Activate(selector) => {
                let index = position(&selector).ok_or("no such object")?;
                keys.keys[index].active = true;
            }
            KeyEdit::Retire(selector) => {
                let index = position(&selector).ok_or("no such object")?;
                keys.keys.remove(index);
            }
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("selector", &self.selector)
            .field("private_key", &"(set)")
            .field("active", &self.active)
            .finish()
    }
}

/// A key as `config.toml` declares it: imported from a file or generated
/// once (a selector that already has a key keeps it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKeySeed {
    pub domain: String,
    pub selector: Option<String>,
    /// `rsa` (default) or `ed25519`, for a generated key.
    pub algorithm: Option<String>,
    pub private_key_file: Option<std::path::PathBuf>,
}

impl DkimKeySeed {
    pub fn selector(&self) -> String {
        self.selector
            .clone()
            .unwrap_or_else(|| sendengine_dkim::default_selector(std::time::SystemTime::now()))
    }

    /// The key in PEM: read from the file, or generated.
    pub fn private_key_pem(&self) -> Result<String, String> {
        if let Some(path) = &self.private_key_file {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| format!("private_key_file {}: {e}", path.display()))?;
            DkimKey::from_pem(&pem)
                .map_err(|e| format!("private_key_file {}: {e}", path.display()))?;
            return Ok(pem);
        }
        let algorithm = match self.algorithm.as_deref().unwrap_or("rsa") {
            "rsa" => KeyAlgorithm::Rsa,
            "ed25519" => KeyAlgorithm::Ed25519,
            other => return Err(format!("algorithm: `{other}` is not rsa or ed25519")),
        };
        DkimKey::generate(algorithm)
            .map(|k| k.to_pem())
            .map_err(|e| format!("generating a key: {e}"))
    }
}

/// A domain's signers and the DNS records its keys need.
#[derive(Debug, Default, Clone)]
pub struct DomainSigning {
    pub signers: Vec<Arc<Signer>>,
    pub records: Vec<DnsRecord>,
    /// What each key was built from, so the next snapshot can reuse it.
    built: Vec<BuiltKey>,
}

/// One key as built: parsing a private key (RSA above all) costs far more
/// than a configuration change should, so a key whose stored form did not
/// change keeps its record and signer from one snapshot to the next.
#[derive(Clone)]
struct BuiltKey {
    selector: String,
    /// SHA-256 of the key as stored (sealed): the same digest means the
    /// same private key, hence the same algorithm, record and signer.
    stored_digest: [u8; 32],
    record: DnsRecord,
    /// Set once the key has been active; kept while it is inactive, so
    /// activating it again needs no parse.
    signer: Option<Arc<Signer>>,
}

/// Shows no digest: a key stored before sealing existed is plain PEM.
impl std::fmt::Debug for BuiltKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltKey")
            .field("selector", &self.selector)
            .field("record", &self.record)
            .field("signer", &self.signer)
            .finish()
    }
}

impl DkimDomain {
    /// Opens and parses every key; active ones become signers. A key that
    /// `previous` (this domain's signing in the last snapshot) already
    /// built from the same stored text is reused, not parsed again.
    pub fn build(
        &self,
        secrets: &Secrets,
        previous: Option<&DomainSigning>,
    ) -> Result<DomainSigning, String> {
        let mut out = DomainSigning::default();
        for key in &self.keys {
            let stored_digest = digest(&key.private_key);
            let reused = previous
                .and_then(|p| p.built.iter().find(|b| b.selector == key.selector))
                .filter(|b| b.stored_digest == stored_digest)
                .filter(|b| !key.active || b.signer.is_some());
            let built = match reused {
                Some(built) => built.clone(),
                None => self.build_key(key, stored_digest, secrets)?,
            };
            out.records.push(built.record.clone());
            if key.active {
                out.signers.extend(built.signer.clone());
            }
            out.built.push(built);
        }
        Ok(out)
    }

    /// Opens and parses one key: its record, and its signer if active.
    fn build_key(
        &self,
        key: &StoredKey,
        stored_digest: [u8; 32],
        secrets: &Secrets,
    ) -> Result<BuiltKey, String> {
        let pem = if Secrets::is_sealed(&key.private_key) {
            secrets.open(&key.private_key).map_err(|e| e.to_string())?
        } else {
            key.private_key.clone()
        };
        let parsed = DkimKey::from_pem(&pem).map_err(|e| format!("key {}: {e}", key.selector))?;
        let record = DnsRecord::new(&self.domain, &key.selector, &parsed)
            .map_err(|e| format!("key {}: {e}", key.selector))?;
        let signer = if key.active {
            let signer = Signer::new(&parsed, &self.domain, &key.selector)
                .map_err(|e| format!("key {}: {e}", key.selector))?;
            Some(Arc::new(signer))
        } else {
            None
        };
        Ok(BuiltKey {
            selector: key.selector.clone(),
            stored_digest,
            record,
            signer,
        })
    }

    /// The same domain with every private key sealed.
    pub fn sealed(mut self, secrets: &Secrets) -> DkimDomain {
        for key in &mut self.keys {
            if !Secrets::is_sealed(&key.private_key) {
                key.private_key = secrets.seal(&key.private_key);
            }
        }
        self.domain = self.domain.to_ascii_lowercase();
        self
    }
}

/// SHA-256 of a key as stored, to tell whether it changed.
fn digest(stored: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, stored.as_bytes()).as_ref(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domains::DnsTemplate;
    use crate::tenancy::{Change, Seeds, TenancyStore};

    fn open_store(dir: &std::path::Path) -> TenancyStore {
        let spool = sendengine_queue::Spool::open(sendengine_queue::SpoolConfig::new(dir)).unwrap();
        TenancyStore::open(spool, Secrets::from_key([7; 32]), &Seeds::default()).unwrap()
    }

    fn new_key(selector: &str, algorithm: KeyAlgorithm, active: bool) -> StoredKey {
        StoredKey {
            selector: selector.into(),
            private_key: DkimKey::generate(algorithm).unwrap().to_pem(),
            active,
        }
    }

    fn put_keys(store: &TenancyStore, domain: &str, keys: Vec<StoredKey>) {
        let domain = domain.to_owned();
        store
            .apply(Change::PutDkim(DkimDomain { domain, keys }))
            .unwrap();
    }

    /// The domain's keys as stored now (sealed), as the admin socket edits them.
    fn stored_keys(store: &TenancyStore, domain: &str) -> Vec<StoredKey> {
        store.snapshot().dkim[domain].keys.clone()
    }

    fn signers(store: &TenancyStore, domain: &str) -> Vec<Arc<Signer>> {
        store.snapshot().signing[domain].signers.clone()
    }

    #[test]
    fn a_change_keeps_the_signer_of_every_key_it_leaves_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        put_keys(
            &store,
            "a.example",
            vec![new_key("rsa", KeyAlgorithm::Rsa, true)],
        );
        put_keys(
            &store,
            "b.example",
            vec![new_key("ed", KeyAlgorithm::Ed25519, true)],
        );
        let (a, b) = (signers(&store, "a.example"), signers(&store, "b.example"));

        // Another kind of object: no key is parsed again.
        let template = DnsTemplate {
            name: "plain".into(),
            records: Vec::new(),
        };
        store.apply(Change::PutTemplate(template)).unwrap();
        assert!(Arc::ptr_eq(&signers(&store, "a.example")[0], &a[0]));
        assert!(Arc::ptr_eq(&signers(&store, "b.example")[0], &b[0]));

        // A key added to b: b's first key and a's key are kept.
        let mut keys = stored_keys(&store, "b.example");
        keys.push(new_key("next", KeyAlgorithm::Ed25519, true));
        put_keys(&store, "b.example", keys);
        let b_now = signers(&store, "b.example");
        assert_eq!(b_now.len(), 2);
        assert!(Arc::ptr_eq(&b_now[0], &b[0]));
        assert!(Arc::ptr_eq(&signers(&store, "a.example")[0], &a[0]));
    }

    #[test]
    fn a_new_key_under_the_same_selector_gets_a_new_signer() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        put_keys(
            &store,
            "a.example",
            vec![new_key("s1", KeyAlgorithm::Ed25519, true)],
        );
        let before = signers(&store, "a.example");
        let record_before = store.snapshot().signing["a.example"].records.clone();

        put_keys(
            &store,
            "a.example",
            vec![new_key("s1", KeyAlgorithm::Ed25519, true)],
        );
        let after = signers(&store, "a.example");
        assert_eq!(after.len(), 1);
        assert!(!Arc::ptr_eq(&after[0], &before[0]));
        assert_ne!(store.snapshot().signing["a.example"].records, record_before);
    }

    #[test]
    fn a_key_added_inactive_gets_a_signer_when_activated() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        put_keys(
            &store,
            "a.example",
            vec![new_key("s1", KeyAlgorithm::Ed25519, false)],
        );
        assert!(signers(&store, "a.example").is_empty());
        assert_eq!(store.snapshot().signing["a.example"].records.len(), 1);

        let mut keys = stored_keys(&store, "a.example");
        keys[0].active = true;
        put_keys(&store, "a.example", keys);
        let active = signers(&store, "a.example");
        assert_eq!(active.len(), 1);

        // Deactivated, it stops signing; activated again, it signs with the
        // signer built before.
        let mut keys = stored_keys(&store, "a.example");
        keys[0].active = false;
        put_keys(&store, "a.example", keys.clone());
        assert!(signers(&store, "a.example").is_empty());
        keys[0].active = true;
        put_keys(&store, "a.example", keys);
        assert!(Arc::ptr_eq(&signers(&store, "a.example")[0], &active[0]));
    }
}
