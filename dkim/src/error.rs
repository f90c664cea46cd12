//! The errors of this crate: a key that cannot be loaded or made, and a
//! message that cannot be signed. Key problems surface when a key is loaded,
//! never per message.

/// Why a key could not be generated, imported or turned into a signer.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no private key found in the PEM text: expected a \"BEGIN PRIVATE KEY\" (PKCS#8) \
         or \"BEGIN RSA PRIVATE KEY\" (PKCS#1) block"
    )]
    NoPemKey,
    #[error(
        "the PEM private key is encrypted; decrypt it first \
         (openssl pkey -in KEY.pem -out PLAIN.pem)"
    )]
    EncryptedPem,
    #[error("the PEM text is malformed: {0}")]
    MalformedPem(String),
    #[error("{0} keys cannot sign DKIM here; use an RSA (2048 to 8192 bits) or Ed25519 key")]
    UnsupportedAlgorithm(&'static str),
    #[error(
        "the RSA key was rejected ({0}); DKIM needs an unencrypted RSA key of 2048 to 8192 bits"
    )]
    InvalidRsaKey(String),
    #[error("the Ed25519 key was rejected ({0})")]
    InvalidEd25519Key(String),
    #[error("generating a {0} key failed in the crypto library")]
    GenerationFailed(&'static str),
    #[error(
        "invalid signing domain {0:?}: use the ASCII (punycode) form, letters, digits, \
         '-' and '.', at most 253 bytes"
    )]
    InvalidDomain(String),
    #[error("invalid selector {0:?}: use letters, digits, '-' and '.', at most 63 bytes per label")]
    InvalidSelector(String),
    #[error("the crypto library refused the key: {0}")]
    Library(String),
}

/// Why a message could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the message has no From header; DKIM always signs From")]
    NoFromHeader,
    #[error("signing failed in the crypto library: {0}")]
    Crypto(String),
}
