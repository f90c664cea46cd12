//! DKIM keys of sender domains, as stored objects.
//!
//! A `DkimDomain` holds a domain's keys, each sealed at rest (the private
//! key in PEM, AES-GCM under the master key). Signers are built once, when
//! a configuration change is applied, so a broken key is refused then and
//! never fails a message. Every active key signs: one RSA and one Ed25519
//! key active at once is dual signing; a key added inactive is published
//! first and activated later (rotation).

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
}

impl DkimDomain {
    /// Opens and parses every key; active ones become signers.
    pub fn build(&self, secrets: &Secrets) -> Result<DomainSigning, String> {
        let mut out = DomainSigning::default();
        for key in &self.keys {
            let pem = if Secrets::is_sealed(&key.private_key) {
                secrets.open(&key.private_key).map_err(|e| e.to_string())?
            } else {
                key.private_key.clone()
            };
            let parsed =
                DkimKey::from_pem(&pem).map_err(|e| format!("key {}: {e}", key.selector))?;
            out.records.push(
                DnsRecord::new(&self.domain, &key.selector, &parsed)
                    .map_err(|e| format!("key {}: {e}", key.selector))?,
            );
            if key.active {
                let signer = Signer::new(&parsed, &self.domain, &key.selector)
                    .map_err(|e| format!("key {}: {e}", key.selector))?;
                out.signers.push(Arc::new(signer));
            }
        }
        Ok(out)
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
