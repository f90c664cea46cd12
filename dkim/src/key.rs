//! DKIM private keys: generation, PEM import and export, and the public key
//! as DNS publishes it. Every key is checked by the crypto library when it is
//! made or loaded, so a broken key is reported there and never per message.
//! Keys are stored as PKCS#8 whatever form they were imported in.

use std::fmt;

use aws_lc_rs::digest;
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, pem};

use crate::error::KeyError;

/// Bytes of the algorithm OIDs as they appear DER-encoded in a PKCS#8
/// AlgorithmIdentifier; used to name the algorithm of a key we cannot use.
const RSA_OID: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const ED25519_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
const EC_OID: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const ED448_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x71];
/// The AlgorithmIdentifier sits within the first few dozen bytes of PKCS#8.
const PKCS8_HEADER_SCAN: usize = 32;
/// Base64 characters per PEM line (RFC 7468).
const PEM_LINE_LEN: usize = 64;

/// The signature algorithm of a key, as DKIM names it in `k=` and `a=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// RSA with SHA-256 (`k=rsa`, `a=rsa-sha256`); generated at 2048 bits.
    Rsa,
    /// Ed25519 with SHA-256 (`k=ed25519`, `a=ed25519-sha256`, RFC 8463).
    Ed25519,
}

impl KeyAlgorithm {
    /// The `k=` tag value of the DNS record.
    pub(crate) fn dns_name(self) -> &'static str {
        match self {
            KeyAlgorithm::Rsa => "rsa",
            KeyAlgorithm::Ed25519 => "ed25519",
        }
    }
}

/// SHA-256 of a key's public half: names a key without revealing it, and
/// tells two keys published under the same selector apart.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Fingerprint([u8; 32]);

impl Fingerprint {
    fn of(public_key: &[u8]) -> Fingerprint {
        let hash = digest::digest(&digest::SHA256, public_key);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(hash.as_ref());
        Fingerprint(bytes)
    }
}

impl fmt::Display for Fingerprint {
    /// Lowercase hex, 64 characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A DKIM private key that the crypto library has accepted.
///
/// `Debug` shows the algorithm and fingerprint only, never the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct DkimKey {
    algorithm: KeyAlgorithm,
    pkcs8_der: Vec<u8>,
    /// What DNS publishes in `p=`: SubjectPublicKeyInfo DER for RSA, the raw
    /// 32-byte key for Ed25519 (RFC 8463).
    public_key: Vec<u8>,
    fingerprint: Fingerprint,
}

impl DkimKey {
    /// Generates a new key: RSA-2048 or Ed25519.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<DkimKey, KeyError> {
        match algorithm {
            KeyAlgorithm::Rsa => {
                let key_pair = RsaKeyPair::generate(KeySize::Rsa2048)
                    .map_err(|_| KeyError::GenerationFailed("RSA-2048"))?;
                DkimKey::from_rsa_key_pair(&key_pair)
            }
            KeyAlgorithm::Ed25519 => {
                let key_pair = Ed25519KeyPair::generate()
                    .map_err(|_| KeyError::GenerationFailed("Ed25519"))?;
                DkimKey::from_ed25519_key_pair(&key_pair)
            }
        }
    }

    /// Loads a key from PEM text: PKCS#8 (`BEGIN PRIVATE KEY`, RSA or
    /// Ed25519) or PKCS#1 (`BEGIN RSA PRIVATE KEY`). Text around the PEM
    /// block, such as a certificate, is ignored.
    pub fn from_pem(pem_text: &str) -> Result<DkimKey, KeyError> {
        if pem_text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            return Err(KeyError::EncryptedPem);
        }
        match PrivateKeyDer::from_pem_slice(pem_text.as_bytes()) {
            Ok(PrivateKeyDer::Pkcs1(der)) => DkimKey::from_pkcs1_der(der.secret_pkcs1_der()),
            Ok(PrivateKeyDer::Pkcs8(der)) => DkimKey::from_pkcs8_der(der.secret_pkcs8_der()),
            Ok(PrivateKeyDer::Sec1(_)) => Err(KeyError::UnsupportedAlgorithm("EC (SEC1)")),
            Ok(_) => Err(KeyError::UnsupportedAlgorithm("unrecognised")),
            Err(pem::Error::NoItemsFound) => Err(KeyError::NoPemKey),
            Err(error) => Err(KeyError::MalformedPem(error.to_string())),
        }
    }

    /// Loads an RSA key from PKCS#1 `RSAPrivateKey` DER.
    pub(crate) fn from_pkcs1_der(der: &[u8]) -> Result<DkimKey, KeyError> {
        let key_pair = RsaKeyPair::from_der(der)
            .map_err(|error| KeyError::InvalidRsaKey(error.to_string()))?;
        DkimKey::from_rsa_key_pair(&key_pair)
    }

    /// Loads an RSA or Ed25519 key from PKCS#8 DER (v1 or v2).
    pub(crate) fn from_pkcs8_der(der: &[u8]) -> Result<DkimKey, KeyError> {
        match pkcs8_algorithm(der)? {
            KeyAlgorithm::Rsa => {
                let key_pair = RsaKeyPair::from_pkcs8(der)
                    .map_err(|error| KeyError::InvalidRsaKey(error.to_string()))?;
                DkimKey::from_rsa_key_pair(&key_pair)
            }
            KeyAlgorithm::Ed25519 => {
                let key_pair = Ed25519KeyPair::from_pkcs8(der)
                    .map_err(|error| KeyError::InvalidEd25519Key(error.to_string()))?;
                DkimKey::from_ed25519_key_pair(&key_pair)
            }
        }
    }

    fn from_rsa_key_pair(key_pair: &RsaKeyPair) -> Result<DkimKey, KeyError> {
        let pkcs8: Pkcs8V1Der<'static> = key_pair
            .as_der()
            .map_err(|_| KeyError::Library("cannot encode the RSA key as PKCS#8".into()))?;
        let public: PublicKeyX509Der<'static> = key_pair
            .public_key()
            .as_der()
            .map_err(|_| KeyError::Library("cannot encode the RSA public key".into()))?;
        Ok(DkimKey::new(
            KeyAlgorithm::Rsa,
            pkcs8.as_ref().to_vec(),
            public.as_ref().to_vec(),
        ))
    }

    fn from_ed25519_key_pair(key_pair: &Ed25519KeyPair) -> Result<DkimKey, KeyError> {
        let pkcs8: Pkcs8V1Der<'static> = key_pair
            .as_der()
            .map_err(|_| KeyError::Library("cannot encode the Ed25519 key as PKCS#8".into()))?;
        Ok(DkimKey::new(
            KeyAlgorithm::Ed25519,
            pkcs8.as_ref().to_vec(),
            key_pair.public_key().as_ref().to_vec(),
        ))
    }

    fn new(algorithm: KeyAlgorithm, pkcs8_der: Vec<u8>, public_key: Vec<u8>) -> DkimKey {
        DkimKey {
            algorithm,
            pkcs8_der,
            fingerprint: Fingerprint::of(&public_key),
            public_key,
        }
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    pub(crate) fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The public key bytes DNS publishes (before base64).
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// The `p=` value of the DNS record: the public key in base64.
    pub(crate) fn public_key_base64(&self) -> String {
        BASE64.encode(&self.public_key)
    }

    /// The private key as PKCS#8 DER. Secret: store it, never log it.
    pub(crate) fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8_der
    }

    /// The private key as PKCS#8 PEM (`BEGIN PRIVATE KEY`), the form to
    /// store; [`DkimKey::from_pem`] reads it back. Secret: never log it.
    pub fn to_pem(&self) -> String {
        let encoded = BASE64.encode(&self.pkcs8_der);
        let mut pem_text = String::with_capacity(encoded.len() + encoded.len() / PEM_LINE_LEN + 64);
        pem_text.push_str("-----BEGIN PRIVATE KEY-----\n");
        for line in encoded.as_bytes().chunks(PEM_LINE_LEN) {
            // Base64 output is ASCII, so every chunk is valid UTF-8.
            pem_text.push_str(&String::from_utf8_lossy(line));
            pem_text.push('\n');
        }
        pem_text.push_str("-----END PRIVATE KEY-----\n");
        pem_text
    }
}

impl fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DkimKey")
            .field("algorithm", &self.algorithm)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Reads the algorithm from a PKCS#8 AlgorithmIdentifier, so an EC or other
/// key gets a message that names it instead of a generic parse failure.
fn pkcs8_algorithm(der: &[u8]) -> Result<KeyAlgorithm, KeyError> {
    let header = &der[..der.len().min(PKCS8_HEADER_SCAN)];
    let contains = |oid: &[u8]| header.windows(oid.len()).any(|window| window == oid);
    if contains(RSA_OID) {
        Ok(KeyAlgorithm::Rsa)
    } else if contains(ED25519_OID) {
        Ok(KeyAlgorithm::Ed25519)
    } else if contains(EC_OID) {
        Err(KeyError::UnsupportedAlgorithm("EC"))
    } else if contains(ED448_OID) {
        Err(KeyError::UnsupportedAlgorithm("Ed448"))
    } else {
        Err(KeyError::UnsupportedAlgorithm(
            "unknown or malformed PKCS#8",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_through_pem() {
        for algorithm in [KeyAlgorithm::Rsa, KeyAlgorithm::Ed25519] {
            let key = DkimKey::generate(algorithm).unwrap();
            let pem_text = key.to_pem();
            assert!(pem_text.starts_with("-----BEGIN PRIVATE KEY-----\n"));
            assert!(pem_text.lines().all(|line| line.len() <= PEM_LINE_LEN));
            let loaded = DkimKey::from_pem(&pem_text).unwrap();
            assert_eq!(loaded, key);
            assert_eq!(loaded.algorithm(), algorithm);
        }
    }

    #[test]
    fn public_key_has_the_dns_form() {
        let rsa = DkimKey::generate(KeyAlgorithm::Rsa).unwrap();
        // SubjectPublicKeyInfo of RSA-2048 is 294 bytes and starts "MIIBIjAN".
        assert_eq!(rsa.public_key().len(), 294);
        assert!(rsa.public_key_base64().starts_with("MIIBIjAN"));
        let ed25519 = DkimKey::generate(KeyAlgorithm::Ed25519).unwrap();
        assert_eq!(ed25519.public_key().len(), 32);
    }

    #[test]
    fn two_generated_keys_differ() {
        let first = DkimKey::generate(KeyAlgorithm::Ed25519).unwrap();
        let second = DkimKey::generate(KeyAlgorithm::Ed25519).unwrap();
        assert_ne!(first.fingerprint(), second.fingerprint());
        assert_eq!(first.fingerprint().to_string().len(), 64);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = DkimKey::generate(KeyAlgorithm::Ed25519).unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains("Ed25519"));
        assert!(!shown.contains(&BASE64.encode(key.pkcs8_der())));
    }

    #[test]
    fn broken_keys_are_refused_with_a_reason() {
        assert!(matches!(
            DkimKey::from_pem("hello"),
            Err(KeyError::NoPemKey)
        ));
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(matches!(
            DkimKey::from_pem(encrypted),
            Err(KeyError::EncryptedPem)
        ));
        let garbage = "-----BEGIN PRIVATE KEY-----\nAAAAAAAA\n-----END PRIVATE KEY-----\n";
        assert!(DkimKey::from_pem(garbage).is_err());

        // A real key with its middle damaged.
        let pem_text = DkimKey::generate(KeyAlgorithm::Rsa).unwrap().to_pem();
        let mut der = PrivateKeyDer::from_pem_slice(pem_text.as_bytes())
            .unwrap()
            .secret_der()
            .to_vec();
        let middle = der.len() / 2;
        der[middle..middle + 16].fill(0);
        let error = DkimKey::from_pkcs8_der(&der).unwrap_err();
        assert!(matches!(error, KeyError::InvalidRsaKey(_)), "{error}");
        assert!(error.to_string().contains("2048 to 8192 bits"));
    }

    #[test]
    fn truncated_pem_is_malformed() {
        let pem_text = DkimKey::generate(KeyAlgorithm::Ed25519).unwrap().to_pem();
        let truncated = &pem_text[..pem_text.len() - 10];
        assert!(matches!(
            DkimKey::from_pem(truncated),
            Err(KeyError::MalformedPem(_))
        ));
    }
}
