//! Verifies our signatures with mail-auth's own DKIM verifier, the one the
//! engine would use for inbound checks, with DNS answered from a cache that
//! holds our published records (no network).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};
use sendengine_dkim::{DkimKey, DnsRecord, KeyAlgorithm, Signer, sign_message};

/// A TXT "resolver" that knows only the records we put in it.
#[derive(Default)]
struct Records(Mutex<HashMap<Box<str>, Txt>>);

impl Records {
    fn publish(&self, record: &DnsRecord) {
        let key = DomainKey::parse(record.value.as_bytes()).unwrap();
        let name = format!("{}.", record.name).into_boxed_str();
        self.0
            .lock()
            .unwrap()
            .insert(name, Txt::DomainKey(Arc::new(key)));
    }
}

impl ResolverCache<Box<str>, Txt> for Records {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().get(name).cloned()
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().remove(name)
    }

    fn insert(&self, key: Box<str>, value: Txt, _valid_until: Instant) {
        self.0.lock().unwrap().insert(key, value);
    }
}

fn signer(records: &Records, algorithm: KeyAlgorithm, selector: &str) -> Signer {
    let key = DkimKey::generate(algorithm).unwrap();
    records.publish(&DnsRecord::new("example.com", selector, &key).unwrap());
    Signer::new(&key, "example.com", selector).unwrap()
}

async fn results(
    authenticator: &MessageAuthenticator,
    records: &Records,
    message: &[u8],
) -> Vec<DkimResult> {
    let parsed = AuthenticatedMessage::parse(message).unwrap();
    authenticator
        .verify_dkim(Parameters::new(&parsed).with_txt_cache(records))
        .await
        .iter()
        .map(|output| output.result().clone())
        .collect()
}

#[tokio::test]
async fn mail_auth_verifies_rsa_ed25519_and_dual_signatures() {
    let records = Records::default();
    let rsa = signer(&records, KeyAlgorithm::Rsa, "rsa");
    let ed25519 = signer(&records, KeyAlgorithm::Ed25519, "ed");
    // Never queried: every name the verifier asks for is in `records`.
    let authenticator = MessageAuthenticator::new_cloudflare().unwrap();
    let message = b"From: a@example.com\nTo: b@example.net\nSubject: hi\n\nbody\n.dot\n";

    for signers in [vec![&rsa], vec![&ed25519], vec![&rsa, &ed25519]] {
        let signed = sign_message(&signers, message).unwrap();
        let outcome = results(&authenticator, &records, &signed).await;
        assert_eq!(
            outcome,
            vec![DkimResult::Pass; signers.len()],
            "{}",
            String::from_utf8_lossy(&signed)
        );
    }

    let mut tampered = sign_message(&[&rsa], message).unwrap();
    let last = tampered.len() - 3;
    tampered[last] = b'x';
    let outcome = results(&authenticator, &records, &tampered).await;
    // mail-auth reports a body hash mismatch as neutral (RFC 6376 §6.1.3
    // leaves it to the verifier); either way it is not a pass.
    assert!(
        matches!(
            outcome.as_slice(),
            [DkimResult::Fail(_) | DkimResult::Neutral(_)]
        ),
        "{outcome:?}"
    );
}
