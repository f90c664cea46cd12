//! Property tests: the parser, the classifier and the VERP decoder never
//! panic, whatever the bytes: arbitrary input, and corpus samples cut,
//! flipped and spliced at random places.

use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;
use sendengine_bounces::{classify, parse_message, verp};

/// A few real samples of different formats (DSN, ARF, qmail, Exim, SES,
/// auto-reply), or a built-in DSN when the corpus is absent.
fn samples() -> &'static Vec<Vec<u8>> {
    static SAMPLES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        let dir = PathBuf::from("/work/shared/corpora/bounces/sisimai/emails/maildir/bsd");
        let names = [
            "rfc3464-01.eml",
            "arf-16.eml",
            "lhost-qmail-08.eml",
            "lhost-exim-01.eml",
            "lhost-amazonses-10.eml",
            "rfc3834-01.eml",
            "lhost-postfix-31.eml",
            "lhost-x5-01.eml",
        ];
        let mut found: Vec<Vec<u8>> = names
            .iter()
            .filter_map(|name| std::fs::read(dir.join(name)).ok())
            .collect();
        if found.is_empty() {
            found.push(BUILT_IN_DSN.to_vec());
        }
        found
    })
}

const BUILT_IN_DSN: &[u8] = b"From: MAILER-DAEMON@example.org\r\nSubject: Undelivered Mail\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n<a@example.com>: 550 5.1.1 user unknown\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nFinal-Recipient: rfc822; a@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n--b--\r\n";

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Flip(at, b)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<usize>(), 0usize..512).prop_map(|(at, len)| Mutation::Delete(at, len)),
    ]
}

fn apply(sample: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = sample.to_vec();
    for m in mutations {
        let len = bytes.len().max(1);
        match m {
            Mutation::Truncate(at) => bytes.truncate(at % len),
            Mutation::Flip(at, b) => {
                if let Some(slot) = bytes.get_mut(at % len) {
                    *slot ^= b;
                }
            }
            Mutation::Insert(at, more) => {
                let at = (at % len).min(bytes.len());
                bytes.splice(at..at, more.iter().copied());
            }
            Mutation::Delete(at, n) => {
                let start = (at % len).min(bytes.len());
                let end = (start + n).min(bytes.len());
                bytes.drain(start..end);
            }
        }
    }
    bytes
}

/// Inputs the fuzzer (`bounces/fuzz`) found crashing the parser, kept so
/// they stay fixed.
#[test]
fn fuzz_regressions_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir)
        .expect("fuzz-regressions dir")
        .flatten()
    {
        let bytes = std::fs::read(entry.path()).expect("read regression input");
        assert!(
            !parse_message(&bytes).is_empty(),
            "{}",
            entry.path().display()
        );
        seen += 1;
    }
    assert!(seen > 0, "no regression inputs in {}", dir.display());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parser_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let records = parse_message(&bytes);
        prop_assert!(!records.is_empty());
    }

    #[test]
    fn parser_never_panics_on_mutated_samples(
        index in any::<usize>(),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let all = samples();
        let sample = &all[index % all.len()];
        let records = parse_message(&apply(sample, &mutations));
        prop_assert!(!records.is_empty());
    }

    #[test]
    fn parser_never_panics_on_header_like_text(text in "([A-Za-z-]{1,12}: [ -~]{0,40}\r?\n){0,20}\r?\n[ -~\n]{0,400}") {
        parse_message(text.as_bytes());
    }

    #[test]
    fn classify_never_panics(code in any::<u16>(), enhanced in proptest::option::of(".{0,12}"), text in ".{0,300}") {
        classify(code, enhanced.as_deref(), &text);
    }

    #[test]
    fn verp_decode_never_panics(tag in ".{0,40}", address in ".{0,80}") {
        let _ = verp::decode(&tag, b"secret");
        let _ = verp::decode_address(&address, b"secret");
        let _ = verp::find_tag(&address);
    }

    #[test]
    fn verp_fleet_tags_round_trip_and_garbage_of_their_length_never_panics(
        node in any::<u32>(), id in any::<u64>(), rcpt in any::<u32>(), junk in "[ -~é]{40}",
    ) {
        let tag = verp::encode_for_node(node, id, rcpt, b"secret");
        let back = verp::decode(&tag, b"secret").unwrap();
        prop_assert_eq!((back.node, back.id, back.rcpt), (Some(node), id, rcpt));
        let _ = verp::decode(&junk, b"secret");
        let _ = verp::find_tag(&format!("+{junk}@x"));
    }
}
