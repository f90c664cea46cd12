//! A bounded, thread-safe cache of [`Signer`]s, so the daemon parses each
//! key once rather than once per message. Entries are keyed by domain,
//! selector and key fingerprint: a rotated key under a reused selector gets
//! a new entry instead of the stale signer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::KeyError;
use crate::key::{DkimKey, Fingerprint};
use crate::signer::Signer;

/// Enough for every key of ten thousand sender domains; a signer holds one
/// parsed key (a few KB for RSA).
pub const DEFAULT_CAPACITY: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    domain: String,
    selector: String,
    fingerprint: Fingerprint,
}

#[derive(Debug)]
struct Entry {
    signer: Arc<Signer>,
    /// Tick of the last lookup; the smallest is evicted when full.
    last_used: u64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<CacheKey, Entry>,
    tick: u64,
}

/// Holds at most `capacity` signers; when full, the least recently used
/// one makes room. Share it behind an `Arc`.
#[derive(Debug)]
pub struct SignerCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl Default for SignerCache {
    fn default() -> Self {
        SignerCache::new(DEFAULT_CAPACITY)
    }
}

impl SignerCache {
    /// A cache of at most `capacity` signers (at least one).
    pub fn new(capacity: usize) -> SignerCache {
        SignerCache {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The signer for `key` as `domain`/`selector`, built on first use.
    /// Building happens outside the lock, so a slow RSA parse does not hold
    /// up threads signing for other domains.
    pub fn get_or_build(
        &self,
        key: &DkimKey,
        domain: &str,
        selector: &str,
    ) -> Result<Arc<Signer>, KeyError> {
        let cache_key = CacheKey {
            domain: domain.to_ascii_lowercase(),
            selector: selector.to_ascii_lowercase(),
            fingerprint: key.fingerprint(),
        };
        if let Some(signer) = self.lookup(&cache_key) {
            return Ok(signer);
        }
        let signer = Arc::new(Signer::new(key, domain, selector)?);
        Ok(self.insert(cache_key, signer))
    }

    /// Drops every signer of `domain`, e.g. when its keys are retired.
    pub fn remove_domain(&self, domain: &str) {
        let domain = domain.to_ascii_lowercase();
        self.lock().entries.retain(|key, _| key.domain != domain);
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lookup(&self, cache_key: &CacheKey) -> Option<Arc<Signer>> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let entry = inner.entries.get_mut(cache_key)?;
        entry.last_used = tick;
        Some(entry.signer.clone())
    }

    /// Inserts unless another thread got there first, in which case its
    /// signer wins so every caller shares one.
    fn insert(&self, cache_key: CacheKey, signer: Arc<Signer>) -> Arc<Signer> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        if !inner.entries.contains_key(&cache_key) && inner.entries.len() >= self.capacity {
            evict_least_recently_used(&mut inner.entries);
        }
        let entry = inner.entries.entry(cache_key).or_insert(Entry {
            signer,
            last_used: tick,
        });
        entry.last_used = tick;
        entry.signer.clone()
    }

    /// A panic while holding the lock cannot leave the map inconsistent
    /// (every update is a single map operation), so poisoning is ignored.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A linear scan: eviction only happens when the cache is full, which with a
/// sensible capacity is rare, and it keeps the structure a plain map.
fn evict_least_recently_used(entries: &mut HashMap<CacheKey, Entry>) {
    let oldest = entries
        .iter()
        .min_by_key(|(_, entry)| entry.last_used)
        .map(|(key, _)| key.clone());
    if let Some(oldest) = oldest {
        entries.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyAlgorithm;

    fn ed25519() -> DkimKey {
        DkimKey::generate(KeyAlgorithm::Ed25519).unwrap()
    }

    #[test]
    fn same_key_domain_and_selector_share_one_signer() {
        let cache = SignerCache::new(10);
        let key = ed25519();
        let first = cache.get_or_build(&key, "example.com", "s1").unwrap();
        let second = cache.get_or_build(&key, "EXAMPLE.com", "S1").unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(cache.len(), 1);
        let signed = crate::sign_message(&[first], b"From: a@example.com\r\n\r\nx\r\n").unwrap();
        assert!(signed.starts_with(b"DKIM-Signature:"));
    }

    #[test]
    fn a_new_key_under_the_same_selector_gets_its_own_signer() {
        let cache = SignerCache::new(10);
        let old = cache.get_or_build(&ed25519(), "example.com", "s1").unwrap();
        let new = cache.get_or_build(&ed25519(), "example.com", "s1").unwrap();
        assert_ne!(old.fingerprint(), new.fingerprint());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn full_cache_evicts_the_least_recently_used() {
        let cache = SignerCache::new(2);
        let (a, b, c) = (ed25519(), ed25519(), ed25519());
        let first_a = cache.get_or_build(&a, "a.example", "s").unwrap();
        cache.get_or_build(&b, "b.example", "s").unwrap();
        cache.get_or_build(&a, "a.example", "s").unwrap(); // a is now the newest
        cache.get_or_build(&c, "c.example", "s").unwrap(); // evicts b
        assert_eq!(cache.len(), 2);
        assert!(Arc::ptr_eq(
            &first_a,
            &cache.get_or_build(&a, "a.example", "s").unwrap()
        ));
        let rebuilt_b = cache.get_or_build(&b, "b.example", "s").unwrap();
        assert_eq!(rebuilt_b.domain(), "b.example");
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn invalid_domain_is_an_error_and_not_cached() {
        let cache = SignerCache::new(2);
        assert!(cache.get_or_build(&ed25519(), "not a domain", "s").is_err());
        assert!(cache.is_empty());
    }

    #[test]
    fn remove_domain_drops_only_that_domain() {
        let cache = SignerCache::new(10);
        cache.get_or_build(&ed25519(), "a.example", "s").unwrap();
        cache.get_or_build(&ed25519(), "b.example", "s").unwrap();
        cache.remove_domain("A.example");
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn threads_share_the_cache() {
        let cache = Arc::new(SignerCache::new(10));
        let key = ed25519();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (cache, key) = (cache.clone(), key.clone());
                std::thread::spawn(move || {
                    let signer = cache.get_or_build(&key, "example.com", "s").unwrap();
                    signer.sign(b"From: a@example.com\r\n\r\nx\r\n").unwrap()
                })
            })
            .collect();
        for handle in handles {
            assert!(handle.join().unwrap().starts_with(b"DKIM-Signature:"));
        }
        assert_eq!(cache.len(), 1);
    }
}
