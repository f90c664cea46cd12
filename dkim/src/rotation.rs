//! Key rotation as plain data. A domain's keys move through three states:
//! a new key is `Published` (in DNS, not signing yet, so resolvers can pick
//! it up), then `Active` (signing; at most one per algorithm, so RSA plus
//! Ed25519 is dual signing), and when another key of its algorithm takes
//! over it becomes `Superseded`: still in DNS, so messages it signed earlier
//! keep verifying, until it is explicitly retired and removed.

use crate::dns::{DnsRecord, checked_domain, checked_selector};
use crate::error::KeyError;
use crate::key::{DkimKey, KeyAlgorithm};

/// Where a key is in its rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published in DNS, not signing yet.
    Published,
    /// Signing new messages.
    Active,
    /// Replaced by a newer active key; still published until retired.
    Superseded,
}

/// One key of a domain with its selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainKey {
    pub selector: String,
    pub key: DkimKey,
    pub state: KeyState,
}

/// Why a rotation step was refused.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("selector {selector:?} is already used by another key of {domain}; pick a new one")]
    SelectorInUse { domain: String, selector: String },
    #[error("{domain} has no key with selector {selector:?}")]
    UnknownSelector { domain: String, selector: String },
    #[error(transparent)]
    InvalidName(#[from] KeyError),
}

/// All DKIM keys of one sender domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainKeys {
    domain: String,
    keys: Vec<DomainKey>,
}

impl DomainKeys {
    /// A domain with no keys yet; its mail is sent unsigned.
    pub fn new(domain: &str) -> Result<DomainKeys, KeyError> {
        Ok(DomainKeys {
            domain: checked_domain(domain)?,
            keys: Vec::new(),
        })
    }

    /// The domain, lowercase, as it appears in `d=`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Adds `key` under `selector` as [`KeyState::Published`]: publish its
    /// DNS record, then [`DomainKeys::activate`] it.
    pub fn add(&mut self, selector: &str, key: DkimKey) -> Result<(), RotationError> {
        let selector = checked_selector(selector)?;
        if self.find(&selector).is_some() {
            return Err(RotationError::SelectorInUse {
                domain: self.domain.clone(),
                selector,
            });
        }
        self.keys.push(DomainKey {
            selector,
            key,
            state: KeyState::Published,
        });
        Ok(())
    }

    /// Makes the key under `selector` sign. The key of the same algorithm
    /// that was active becomes [`KeyState::Superseded`]; a key of the other
    /// algorithm keeps signing too (dual signing).
    pub fn activate(&mut self, selector: &str) -> Result<(), RotationError> {
        let index = self.index_of(selector)?;
        let algorithm = self.keys[index].key.algorithm();
        for (other_index, other) in self.keys.iter_mut().enumerate() {
            if other_index != index
                && other.state == KeyState::Active
                && other.key.algorithm() == algorithm
            {
                other.state = KeyState::Superseded;
            }
        }
        self.keys[index].state = KeyState::Active;
        Ok(())
    }

    /// Removes the key under `selector` and returns it; its DNS record can
    /// then be deleted. Retiring an active key is allowed and leaves its
    /// algorithm unsigned for this domain, so callers should normally
    /// activate a successor first.
    pub fn retire(&mut self, selector: &str) -> Result<DomainKey, RotationError> {
        let index = self.index_of(selector)?;
        Ok(self.keys.remove(index))
    }

    /// The keys that sign new messages: the active RSA key first, then the
    /// active Ed25519 key. Empty means the domain's mail goes out unsigned.
    pub fn signing_keys(&self) -> Vec<&DomainKey> {
        let active_of = |algorithm| {
            self.keys
                .iter()
                .find(|entry| entry.state == KeyState::Active && entry.key.algorithm() == algorithm)
        };
        [KeyAlgorithm::Rsa, KeyAlgorithm::Ed25519]
            .into_iter()
            .filter_map(active_of)
            .collect()
    }

    /// Every key, in the order added; all of them belong in DNS.
    pub fn keys(&self) -> &[DomainKey] {
        &self.keys
    }

    /// The DNS records to publish: one per key, whatever its state.
    pub fn dns_records(&self) -> Vec<DnsRecord> {
        self.keys
            .iter()
            .filter_map(|entry| DnsRecord::new(&self.domain, &entry.selector, &entry.key).ok())
            .collect()
    }

    fn find(&self, selector: &str) -> Option<usize> {
        self.keys
            .iter()
            .position(|entry| entry.selector.eq_ignore_ascii_case(selector))
    }

    fn index_of(&self, selector: &str) -> Result<usize, RotationError> {
        self.find(selector)
            .ok_or_else(|| RotationError::UnknownSelector {
                domain: self.domain.clone(),
                selector: selector.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(algorithm: KeyAlgorithm) -> DkimKey {
        DkimKey::generate(algorithm).unwrap()
    }

    fn selectors(keys: &[&DomainKey]) -> Vec<String> {
        keys.iter().map(|entry| entry.selector.clone()).collect()
    }

    #[test]
    fn rotation_keeps_the_old_key_signing_until_the_new_one_is_activated() {
        let mut domain = DomainKeys::new("Example.com").unwrap();
        assert!(domain.signing_keys().is_empty());
        domain.add("s202610", key(KeyAlgorithm::Ed25519)).unwrap();
        domain.activate("s202610").unwrap();

        domain.add("s202611", key(KeyAlgorithm::Ed25519)).unwrap();
        assert_eq!(selectors(&domain.signing_keys()), ["s202610"]);
        assert_eq!(domain.dns_records().len(), 2);

        domain.activate("s202611").unwrap();
        assert_eq!(selectors(&domain.signing_keys()), ["s202611"]);
        assert_eq!(domain.keys()[0].state, KeyState::Superseded);
        assert_eq!(domain.dns_records().len(), 2);

        let retired = domain.retire("s202610").unwrap();
        assert_eq!(retired.selector, "s202610");
        assert_eq!(domain.dns_records().len(), 1);
        assert_eq!(
            domain.dns_records()[0].name,
            "s202611._domainkey.example.com"
        );
    }

    #[test]
    fn one_active_key_per_algorithm_gives_dual_signing() {
        let mut domain = DomainKeys::new("example.com").unwrap();
        domain.add("ed", key(KeyAlgorithm::Ed25519)).unwrap();
        domain.add("rsa", key(KeyAlgorithm::Rsa)).unwrap();
        domain.activate("ed").unwrap();
        domain.activate("rsa").unwrap();
        assert_eq!(selectors(&domain.signing_keys()), ["rsa", "ed"]);
    }

    #[test]
    fn selectors_are_unique_and_must_exist() {
        let mut domain = DomainKeys::new("example.com").unwrap();
        domain.add("s1", key(KeyAlgorithm::Ed25519)).unwrap();
        assert!(matches!(
            domain.add("S1", key(KeyAlgorithm::Ed25519)),
            Err(RotationError::SelectorInUse { .. })
        ));
        assert!(matches!(
            domain.activate("s2"),
            Err(RotationError::UnknownSelector { .. })
        ));
        assert!(domain.retire("s2").is_err());
        assert!(
            domain
                .add("bad selector", key(KeyAlgorithm::Ed25519))
                .is_err()
        );
    }
}
