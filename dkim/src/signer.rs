//! Signing a message: a [`Signer`] holds one parsed key with its domain and
//! selector, and produces the DKIM-Signature header field to prepend.
//! Relaxed/relaxed canonicalisation, rsa-sha256 or ed25519-sha256, over the
//! headers in [`SIGNED_HEADERS`] that the message has, with From signed
//! twice so a second From cannot be added after signing.

use mail_auth::common::crypto::{
    self as mail_crypto, Algorithm, Ed25519Key, RsaKey, Sha256, SigningKey,
};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner};

use crate::dns::{checked_domain, checked_selector};
use crate::error::{KeyError, SignError};
use crate::key::{DkimKey, Fingerprint, KeyAlgorithm};
use crate::normalize::normalize_crlf;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// The header fields signed when present, in the usual order. From is always
/// required; the extra From in `h=` is added by [`Signer::sign`].
pub(crate) const SIGNED_HEADERS: [&str; 12] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
];

/// Signs messages for one domain with one key. Build it once per key and
/// reuse it (the daemon keeps them per domain): parsing an RSA key costs more than
/// a signature. `Send + Sync`, so one signer serves every thread.
pub struct Signer {
    domain: String,
    selector: String,
    algorithm: KeyAlgorithm,
    fingerprint: Fingerprint,
    key: mail_crypto::DkimKey,
}

impl Signer {
    /// Parses `key` for signing as `d=domain`, `s=selector`.
    pub fn new(key: &DkimKey, domain: &str, selector: &str) -> Result<Signer, KeyError> {
        let domain = checked_domain(domain)?;
        let selector = checked_selector(selector)?;
        let library_error = |error: mail_auth::Error| KeyError::Library(error.to_string());
        let parsed = match key.algorithm() {
            KeyAlgorithm::Rsa => mail_crypto::DkimKey::Rsa(
                RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                    key.pkcs8_der(),
                )))
                .map_err(library_error)?,
            ),
            KeyAlgorithm::Ed25519 => mail_crypto::DkimKey::Ed25519(
                Ed25519Key::from_pkcs8_der(key.pkcs8_der()).map_err(library_error)?,
            ),
        };
        Ok(Signer {
            domain,
            selector,
            algorithm: key.algorithm(),
            fingerprint: key.fingerprint(),
            key: parsed,
        })
    }

    /// The selector (`s=`), lowercase.
    pub fn selector(&self) -> &str {
        &self.selector
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// Signs `message` and returns the `DKIM-Signature:` header field,
    /// folded and CRLF-terminated, to prepend to the message.
    ///
    /// The signature covers the message with bare LF turned into CRLF
    /// ([`normalize_crlf`]); that normalised form is what must be sent.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let message = normalize_crlf(message);
        let headers = headers_to_sign(&message)?;
        let signature = DkimSigner::from_key(BorrowedKey(&self.key))
            .domain(self.domain.as_str())
            .selector(self.selector.as_str())
            .headers(headers)
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed)
            .sign(&message)
            .map_err(|error| SignError::Crypto(error.to_string()))?;
        Ok(signature.to_header().into_bytes())
    }
}

impl AsRef<Signer> for Signer {
    fn as_ref(&self) -> &Signer {
        self
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Signs `message` with every signer (none, one, or RSA plus Ed25519 for
/// dual signing) and returns the message to send: normalised to CRLF with the
/// signature header fields in front, in the order of `signers`. Takes
/// `&[&Signer]` as well as the `&[Arc<Signer>]` the daemon keeps.
pub fn sign_message<S: AsRef<Signer>>(signers: &[S], message: &[u8]) -> Result<Vec<u8>, SignError> {
    let message = normalize_crlf(message);
    let mut signed = Vec::new();
    for signer in signers {
        // DKIM-Signature is not among the signed headers, so each signature
        // stays valid whatever the others prepend.
        signed.extend_from_slice(&signer.as_ref().sign(&message)?);
    }
    signed.extend_from_slice(&message);
    Ok(signed)
}

/// The `h=` list for this message: the [`SIGNED_HEADERS`] it has, plus one
/// more From. mail-auth signs every instance of a listed name present and
/// appends each listed name it found no instance for, which is how the
/// extra From becomes the "oversigned" null entry.
fn headers_to_sign(message: &[u8]) -> Result<Vec<&'static str>, SignError> {
    let mut present: Vec<&'static str> = Vec::with_capacity(SIGNED_HEADERS.len() + 1);
    for name in header_names(message) {
        if let Some(listed) = SIGNED_HEADERS
            .iter()
            .find(|listed| listed.as_bytes().eq_ignore_ascii_case(name))
            && !present.contains(listed)
        {
            present.push(listed);
        }
    }
    if !present.contains(&"From") {
        return Err(SignError::NoFromHeader);
    }
    present.push("From");
    Ok(present)
}

/// The field names of the header section (up to the first empty line), as
/// written before the colon; continuation lines and lines without a colon
/// carry no name.
fn header_names(message: &[u8]) -> impl Iterator<Item = &[u8]> {
    message
        .split(|&byte| byte == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .take_while(|line| !line.is_empty())
        .filter(|line| !line.starts_with(b" ") && !line.starts_with(b"\t"))
        .filter_map(|line| {
            let colon = line.iter().position(|&byte| byte == b':')?;
            Some(&line[..colon])
        })
}

/// Lets each message's mail-auth signer borrow the parsed key instead of
/// owning (and re-parsing) it.
struct BorrowedKey<'a>(&'a mail_crypto::DkimKey);

impl SigningKey for BorrowedKey<'_> {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"From: Sender <a@example.com>\r\n\
        to: b@example.net\r\n\
        X-Other: not signed\r\n\
        Subject: hello\r\n\
        \tfolded\r\n\
        \r\n\
        Body\r\n";

    fn tag(header: &str, name: &str) -> String {
        let unfolded: String = header.split(['\r', '\n', '\t', ' ']).collect();
        let start = unfolded.find(&format!(";{name}=")).unwrap() + name.len() + 2;
        unfolded[start..].split(';').next().unwrap().to_string()
    }

    #[test]
    fn signs_present_headers_and_from_twice() {
        let key = DkimKey::generate(KeyAlgorithm::Ed25519).unwrap();
        let signer = Signer::new(&key, "Example.com", "S1").unwrap();
        let header = String::from_utf8(signer.sign(MESSAGE).unwrap()).unwrap();
        assert!(header.starts_with(
            "DKIM-Signature: v=1; a=ed25519-sha256; s=s1; d=example.com; c=relaxed/relaxed;"
        ));
        assert!(header.ends_with("\r\n"));
        let mut signed: Vec<String> = tag(&header, "h")
            .split(':')
            .map(|name| name.to_ascii_lowercase())
            .collect();
        signed.sort();
        assert_eq!(signed, ["from", "from", "subject", "to"]);
    }

    #[test]
    fn header_names_stop_at_the_body() {
        let names: Vec<&[u8]> = header_names(b"A: 1\r\n B\r\nC:2\r\n\r\nD: 3\r\n").collect();
        assert_eq!(names, [&b"A"[..], &b"C"[..]]);
    }

    #[test]
    fn message_without_from_is_refused() {
        let key = DkimKey::generate(KeyAlgorithm::Ed25519).unwrap();
        let signer = Signer::new(&key, "example.com", "s1").unwrap();
        let error = signer
            .sign(b"To: b@example.net\r\n\r\nbody\r\n")
            .unwrap_err();
        assert!(matches!(error, SignError::NoFromHeader));
    }

    #[test]
    fn sign_message_prepends_each_signature_to_the_crlf_message() {
        let rsa = Signer::new(
            &DkimKey::generate(KeyAlgorithm::Rsa).unwrap(),
            "example.com",
            "r",
        )
        .unwrap();
        let ed = Signer::new(
            &DkimKey::generate(KeyAlgorithm::Ed25519).unwrap(),
            "example.com",
            "e",
        )
        .unwrap();
        let signed = sign_message(&[&rsa, &ed], b"From: a@example.com\n\nbody\n").unwrap();
        let text = String::from_utf8(signed).unwrap();
        assert!(text.starts_with("DKIM-Signature: v=1; a=rsa-sha256; s=r;"));
        assert!(text.contains("\r\nDKIM-Signature: v=1; a=ed25519-sha256; s=e;"));
        assert!(text.ends_with("\r\nFrom: a@example.com\r\n\r\nbody\r\n"));
    }

    #[test]
    fn signer_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Signer>();
    }
}
