//! Independent checks of what this crate produces: every signature is
//! verified by dkimpy (a separate DKIM implementation, installed into the
//! project's venv by scripts/python-venv.sh), fed the TXT record exactly as
//! the zone-file form publishes it; keys made by OpenSSL are imported, and
//! keys exported here are read back by OpenSSL.

#[path = "../../test-support/peers.rs"]
mod peers;
use peers::missing_peer;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sendengine_dkim::{
    DkimKey, DnsRecord, KeyAlgorithm, KeyError, Signer, normalize_crlf, sign_message,
};

/// Verifies message files with dkimpy. Arguments: a file of DNS records, one
/// `name<TAB>TXT value` a line, then pairs of (message file, expectation) where the
/// expectation is `pass:N` (exactly N signatures, all valid) or `fail`.
const VERIFY_PY: &str = r#"
import io, logging, sys
import dkim

records = dict(line.rstrip("\n").split("\t", 1) for line in open(sys.argv[1]))

def dnsfunc(name, timeout=5):
    value = records.get(name.decode().rstrip(".").lower())
    return value.encode() if value is not None else None

failures = 0
args = sys.argv[2:]
for path, expected in zip(args[0::2], args[1::2]):
    log = io.StringIO()
    logger = logging.getLogger(path)
    logger.addHandler(logging.StreamHandler(log))
    logger.setLevel(logging.DEBUG)
    message = open(path, "rb").read()
    checker = dkim.DKIM(message, logger=logger)
    count = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
    results = []
    for index in range(count):
        try:
            results.append(checker.verify(idx=index, dnsfunc=dnsfunc))
        except Exception as error:
            log.write("exception: %r\n" % error)
            results.append(False)
    passed = count > 0 and all(results)
    if expected == "fail":
        ok = not passed
    else:
        ok = passed and count == int(expected.split(":")[1])
    print("%s %s expected=%s signatures=%d results=%s" % ("ok" if ok else "FAIL", path, expected, count, results))
    if not ok:
        failures += 1
        print(log.getvalue())
sys.exit(1 if failures else 0)
"#;

/// The venv python with dkimpy, or None (with the reason printed) when this
/// machine has no python3 at all.
fn venv_python() -> Option<PathBuf> {
    if Command::new("python3").arg("--version").output().is_err() {
        missing_peer(
            "python3",
            "dkimpy verifies with it: scripts/install-test-deps.sh",
        );
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python-venv.sh");
    let output = Command::new("bash").arg(&script).output().unwrap();
    assert!(
        output.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(PathBuf::from(
        String::from_utf8(output.stdout).unwrap().trim(),
    ))
}

fn openssl_available() -> bool {
    let found = Command::new("openssl").arg("version").output().is_ok();
    if !found {
        missing_peer(
            "openssl",
            "it makes the foreign keys to import: scripts/install-test-deps.sh",
        );
    }
    found
}

/// Collects signed messages and the DNS records they need, then has dkimpy
/// verify them all in one run.
struct Verification {
    dir: tempfile::TempDir,
    records: Vec<(String, String)>,
    cases: Vec<(PathBuf, String)>,
}

impl Verification {
    fn new() -> Verification {
        Verification {
            dir: tempfile::tempdir().unwrap(),
            records: Vec::new(),
            cases: Vec::new(),
        }
    }

    /// Publishes a record the way a resolver would return it: the quoted
    /// strings of the zone-file line, joined.
    fn publish(&mut self, record: &DnsRecord) {
        let line = record.zone_line();
        let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        assert!(strings.iter().all(|part| part.len() <= 255), "{line}");
        let (name, _) = line.split_once(". IN TXT ").unwrap();
        self.records.push((name.to_string(), strings.concat()));
    }

    fn expect(&mut self, label: &str, message: &[u8], expectation: &str) {
        let path = self.dir.path().join(format!("{}.eml", self.cases.len()));
        fs::write(&path, message).unwrap();
        println!("case {}: {label} -> {expectation}", path.display());
        self.cases.push((path, expectation.to_string()));
    }

    fn run(self, python: &Path) {
        let records_path = self.dir.path().join("records.tsv");
        let records: String = self
            .records
            .iter()
            .map(|(name, value)| format!("{name}\t{value}\n"))
            .collect();
        fs::write(&records_path, records).unwrap();
        let script_path = self.dir.path().join("verify.py");
        fs::write(&script_path, VERIFY_PY).unwrap();

        let mut command = Command::new(python);
        command.arg(&script_path).arg(&records_path);
        for (path, expectation) in &self.cases {
            command.arg(path).arg(expectation);
        }
        let output = command.output().unwrap();
        let report = String::from_utf8_lossy(&output.stdout);
        println!("{report}{}", String::from_utf8_lossy(&output.stderr));
        assert!(
            output.status.success(),
            "dkimpy refused some messages:\n{report}"
        );
        assert_eq!(
            report
                .lines()
                .filter(|line| line.starts_with("ok "))
                .count(),
            self.cases.len()
        );
    }
}

/// The messages the acceptance criteria name, as (label, bytes).
fn test_messages() -> Vec<(&'static str, Vec<u8>)> {
    let headers = "From: Sender <news@example.com>\r\n\
                   To: Reader <reader@example.net>\r\n\
                   Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n\
                   Message-ID: <1@example.com>\r\n";
    let attachment: String = (0..4000u32)
        .map(|n| (b'A' + (n * 7 % 26) as u8) as char)
        .collect::<String>()
        .as_bytes()
        .chunks(76)
        .map(|line| format!("{}\r\n", String::from_utf8_lossy(line)))
        .collect();
    let long_line = "x".repeat(998);
    let very_long_line = "word ".repeat(1000);
    vec![
        (
            "plain text",
            format!("{headers}Subject: plain\r\n\r\nHello,\r\n\r\nthis is plain text.\r\n").into_bytes(),
        ),
        (
            "html",
            format!(
                "{headers}Subject: html\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
                 <html><body><p>Hello <b>there</b></p>\r\n<a href=\"https://example.com/?a=1&amp;b=2\">link</a></body></html>\r\n"
            )
            .into_bytes(),
        ),
        (
            "multipart with attachment and every signed header",
            format!(
                "{headers}Cc: other@example.net\r\nReply-To: support@example.com\r\nSubject: report\r\n\
                 MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\
                 List-Unsubscribe: <https://example.com/u/1>, <mailto:u@example.com>\r\n\
                 List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\
                 Feedback-ID: c1:t1:newsletter:esp\r\nX-Campaign: 42\r\n\r\n\
                 --b1\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n\
                 --b1\r\nContent-Type: application/octet-stream; name=\"data.bin\"\r\n\
                 Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment\r\n\r\n\
                 {attachment}--b1--\r\n"
            )
            .into_bytes(),
        ),
        (
            "folded headers and odd whitespace",
            "From: Sender\r\n <news@example.com>\r\nTO:   a@example.net,\r\n\tb@example.net,\r\n   c@example.net  \r\n\
             subject:  a   subject\r\n  folded  over\r\n\tthree lines \r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n\r\n\
             body with trailing spaces   \r\n\tand tabs\t\r\n\r\n\r\n"
                .as_bytes()
                .to_vec(),
        ),
        (
            "utf-8 subject",
            format!(
                "{headers}Subject: Grüße aus Köln 🎉\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
                 Grüße, naïve café — 日本語\r\n"
            )
            .into_bytes(),
        ),
        (
            "encoded-word subject",
            format!("{headers}Subject: =?UTF-8?B?R3LDvMOfZQ==?=\r\n\r\nbody\r\n").into_bytes(),
        ),
        (
            "long lines",
            format!("{headers}Subject: long\r\n\r\n{long_line}\r\n{very_long_line}\r\nend\r\n").into_bytes(),
        ),
        (
            "lines starting with a dot",
            format!("{headers}Subject: dots\r\n\r\n.hidden\r\n..two dots\r\n.\r\nafter the lone dot\r\n")
                .into_bytes(),
        ),
        (
            "empty body",
            format!("{headers}Subject: empty\r\n\r\n").into_bytes(),
        ),
        (
            "body without final line break",
            format!("{headers}Subject: no newline\r\n\r\nlast line").into_bytes(),
        ),
        (
            "bare LF input",
            "From: news@example.com\nTo: reader@example.net\nSubject: bare LF\n folded\n\nline one\nline two\n\n"
                .as_bytes()
                .to_vec(),
        ),
    ]
}

fn signer(key: &DkimKey, selector: &str, verification: &mut Verification) -> Signer {
    verification.publish(&DnsRecord::new("example.com", selector, key).unwrap());
    Signer::new(key, "example.com", selector).unwrap()
}

#[test]
fn dkimpy_verifies_rsa_ed25519_and_dual_signatures() {
    let Some(python) = venv_python() else { return };
    let mut verification = Verification::new();
    let rsa = signer(
        &DkimKey::generate(KeyAlgorithm::Rsa).unwrap(),
        "s202611",
        &mut verification,
    );
    let ed25519 = signer(
        &DkimKey::generate(KeyAlgorithm::Ed25519).unwrap(),
        "ed202611",
        &mut verification,
    );

    for (label, message) in test_messages() {
        for (mode, signers) in [
            ("rsa", vec![&rsa]),
            ("ed25519", vec![&ed25519]),
            ("dual", vec![&rsa, &ed25519]),
        ] {
            let signed = sign_message(&signers, &message).unwrap();
            assert!(!has_bare_lf(&signed), "{label}: bare LF left after signing");
            let expectation = format!("pass:{}", signers.len());
            verification.expect(&format!("{label} ({mode})"), &signed, &expectation);
        }
    }

    // Controls: the verifier must notice a changed body, a changed signed
    // header, and an added second From. (dkimpy refuses a duplicate From even
    // without the extra From in h=, so the oversigning itself is checked by
    // the unit test on h=; this only shows the result stays a failure.)
    let (_, plain) = &test_messages()[0];
    let signed = sign_message(&[&rsa], plain).unwrap();
    verification.expect(
        "changed body",
        &replace(&signed, b"plain text", b"plain test"),
        "fail",
    );
    verification.expect(
        "changed subject",
        &replace(&signed, b"Subject: plain", b"Subject: plan"),
        "fail",
    );
    let mut second_from = signed.clone();
    second_from.splice(0..0, b"From: attacker@example.org\r\n".iter().copied());
    verification.expect("added second From", &second_from, "fail");
    let signed = sign_message(&[&ed25519], plain).unwrap();
    verification.expect(
        "changed body (ed25519)",
        &replace(&signed, b"plain text", b"plain test"),
        "fail",
    );

    verification.run(&python);
}

#[test]
fn keys_made_by_openssl_import_and_sign() {
    if !openssl_available() {
        return;
    }
    let Some(python) = venv_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let rsa_pkcs8 = dir.path().join("rsa8.pem");
    let rsa_pkcs1 = dir.path().join("rsa1.pem");
    let ed25519_pkcs8 = dir.path().join("ed.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        path(&rsa_pkcs8),
    ]);
    openssl(&[
        "rsa",
        "-in",
        path(&rsa_pkcs8),
        "-traditional",
        "-out",
        path(&rsa_pkcs1),
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "ED25519",
        "-out",
        path(&ed25519_pkcs8),
    ]);
    let pkcs1_text = fs::read_to_string(&rsa_pkcs1).unwrap();
    assert!(
        pkcs1_text.contains("BEGIN RSA PRIVATE KEY"),
        "openssl did not write PKCS#1"
    );

    let from_pkcs8 = DkimKey::from_pem(&fs::read_to_string(&rsa_pkcs8).unwrap()).unwrap();
    let from_pkcs1 = DkimKey::from_pem(&pkcs1_text).unwrap();
    let ed25519 = DkimKey::from_pem(&fs::read_to_string(&ed25519_pkcs8).unwrap()).unwrap();
    assert_eq!(from_pkcs8.algorithm(), KeyAlgorithm::Rsa);
    assert_eq!(
        from_pkcs1, from_pkcs8,
        "PKCS#1 and PKCS#8 forms of one key must load alike"
    );
    assert_eq!(ed25519.algorithm(), KeyAlgorithm::Ed25519);

    // Our public halves match OpenSSL's SubjectPublicKeyInfo.
    let rsa_spki = openssl_output(&[
        "pkey",
        "-in",
        path(&rsa_pkcs8),
        "-pubout",
        "-outform",
        "DER",
    ]);
    assert_eq!(from_pkcs8.public_key(), &rsa_spki[..]);
    let ed_spki = openssl_output(&[
        "pkey",
        "-in",
        path(&ed25519_pkcs8),
        "-pubout",
        "-outform",
        "DER",
    ]);
    assert_eq!(ed25519.public_key(), &ed_spki[ed_spki.len() - 32..]);

    // OpenSSL reads back what we export, generated or imported.
    for (name, key) in [
        (
            "generated-rsa",
            DkimKey::generate(KeyAlgorithm::Rsa).unwrap(),
        ),
        (
            "generated-ed25519",
            DkimKey::generate(KeyAlgorithm::Ed25519).unwrap(),
        ),
        ("imported-pkcs1", from_pkcs1.clone()),
    ] {
        let exported = dir.path().join(format!("{name}.pem"));
        fs::write(&exported, key.to_pem()).unwrap();
        openssl(&["pkey", "-in", path(&exported), "-noout"]);
    }

    // Keys DKIM cannot use are refused at load time, saying why.
    let ec = dir.path().join("ec.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        path(&ec),
    ]);
    let error = DkimKey::from_pem(&fs::read_to_string(&ec).unwrap()).unwrap_err();
    assert!(
        matches!(error, KeyError::UnsupportedAlgorithm("EC")),
        "{error}"
    );
    let small = dir.path().join("rsa1024.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:1024",
        "-out",
        path(&small),
    ]);
    let error = DkimKey::from_pem(&fs::read_to_string(&small).unwrap()).unwrap_err();
    assert!(error.to_string().contains("2048 to 8192 bits"), "{error}");

    let mut verification = Verification::new();
    let (_, message) = &test_messages()[2];
    for (selector, key) in [
        ("pkcs1", &from_pkcs1),
        ("pkcs8", &from_pkcs8),
        ("ed", &ed25519),
    ] {
        let signer = signer(key, selector, &mut verification);
        verification.expect(
            selector,
            &sign_message(&[&signer], message).unwrap(),
            "pass:1",
        );
    }
    verification.run(&python);
}

fn openssl(args: &[&str]) {
    openssl_output(args);
}

fn openssl_output(args: &[&str]) -> Vec<u8> {
    let output = Command::new("openssl").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn has_bare_lf(message: &[u8]) -> bool {
    normalize_crlf(message).len() != message.len()
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = haystack
        .windows(from.len())
        .position(|window| window == from)
        .unwrap();
    [&haystack[..at], to, &haystack[at + from.len()..]].concat()
}
