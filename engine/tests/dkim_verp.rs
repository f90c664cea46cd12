//! DKIM and VERP through the real daemon: every message the sink stores is
//! verified by dkimpy (an independent implementation) with the published
//! TXT records, and the envelope sender each recipient got is a VERP
//! address that decodes back to the message and the recipient.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sendengine_dkim::{DkimKey, DnsRecord, KeyAlgorithm};
use support::{Daemon, DaemonConfig, Sink, ctl};

const LONG: Duration = Duration::from_secs(60);

/// Sends each file of `dir` as raw DATA (already dot-stuffed by the script).
const RAW_SEND: &str = r#"
import os, socket, sys
host, port, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def reply(f):
    while True:
        line = f.readline()
        if line[3:4] != b"-":
            return line
s = socket.create_connection((host, port), timeout=30); f = s.makefile("rb")
reply(f); s.sendall(b"EHLO raw.test\r\n"); reply(f)
for name in sorted(os.listdir(folder)):
    data = open(os.path.join(folder, name), "rb").read()
    s.sendall(b"MAIL FROM:<app@example.com>\r\nRCPT TO:<one@example.net>\r\nRCPT TO:<two@example.net>\r\nDATA\r\n")
    for _ in range(4): reply(f)
    lines = data.split(b"\n")
    body = b"\n".join(b"." + l if l.startswith(b".") else l for l in lines)
    # Only CRLF.CRLF ends DATA, whatever the body's own line endings.
    if not body.endswith(b"\r\n"): body += b"\r\n"
    s.sendall(body + b".\r\n")
    r = reply(f)
    print(name, r.decode().strip())
"#;

const VERIFY: &str = r#"
import sys, dkim
records = dict(line.split(" ", 1) for line in open(sys.argv[1]).read().splitlines())
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    return records.get(name.rstrip("."), "").encode()
for path in sys.argv[2:]:
    msg = open(path, "rb").read()
    d = dkim.DKIM(msg)
    sigs = [h for h in d.headers if h[0].lower() == b"dkim-signature"]
    ok = all(d.verify(idx=i, dnsfunc=dnsfunc) for i in range(len(sigs)))
    print(path, len(sigs), "ok" if ok and sigs else "FAIL")
"#;

fn messages(dir: &Path) {
    let multipart = "From: News <app@example.com>\r\nTo: one@example.net\r\nSubject: multipart\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"a.pdf\"\r\n\r\nJVBERi0xLjQKJcfsj6IKMSAwIG9iago8PC9UeXBlL0NhdGFsb2c+PgplbmRvYmoK\r\n--b1--\r\n";
    let cases: Vec<(&str, String)> = vec![
        ("01-plain", "From: app@example.com\r\nTo: one@example.net\r\nSubject: plain\r\n\r\nHello.\r\n".into()),
        ("02-html", "From: app@example.com\r\nTo: one@example.net\r\nSubject: html\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>Hi</p></body></html>\r\n".into()),
        ("03-multipart", multipart.into()),
        ("04-folded", "From: app@example.com\r\nTo: one@example.net,\r\n\ttwo@example.net\r\nSubject: a folded\r\n   subject line\r\n\r\nx\r\n".into()),
        ("05-utf8-subject", "From: app@example.com\r\nTo: one@example.net\r\nSubject: =?UTF-8?B?SMOpbGxv?=\r\n\r\nbody\r\n".into()),
        ("06-long-line", format!("From: app@example.com\r\nSubject: long\r\n\r\n{}\r\n", "y".repeat(990))),
        ("07-dot-line", "From: app@example.com\r\nSubject: dots\r\n\r\n.leading dot\r\n..two dots\r\n".into()),
        ("08-empty-body", "From: app@example.com\r\nSubject: empty\r\n\r\n".into()),
        ("09-bare-lf", "From: app@example.com\nSubject: bare lf\n\nline one\nline two\n".into()),
    ];
    for (name, text) in cases {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

fn venv_python() -> Option<PathBuf> {
    if Command::new("python3").arg("--version").output().is_err() {
        support::missing_peer(
            "python3",
            "dkimpy verifies with it: scripts/install-test-deps.sh",
        );
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python-venv.sh");
    let out = Command::new("bash").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()))
}

#[test]
fn dual_signed_messages_verify_with_dkimpy_and_carry_verp_return_paths() {
    let Some(python) = venv_python() else { return };
    let work = tempfile::tempdir().unwrap();
    let rsa = DkimKey::generate(KeyAlgorithm::Rsa).unwrap();
    let ed = DkimKey::generate(KeyAlgorithm::Ed25519).unwrap();
    std::fs::write(work.path().join("rsa.pem"), rsa.to_pem()).unwrap();
    std::fs::write(work.path().join("ed.pem"), ed.to_pem()).unwrap();
    let records: Vec<String> = [("s1", &rsa), ("e1", &ed)]
        .iter()
        .map(|(selector, key)| {
            let r = DnsRecord::new("example.com", selector, key).unwrap();
            format!("{} {}", r.name, r.value)
        })
        .collect();
    std::fs::write(work.path().join("records"), records.join("\n")).unwrap();

    let store = work.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let sink = Sink::start(&["--store-dir", store.to_str().unwrap()]);
    let config = format!(
        "[smtp_in]\nlisten = [\"127.0.0.1:0\"]\nrelay_networks = [\"127.0.0.0/8\"]\n[secrets]\nkey_file = \"{dir}/secret.key\"\n[[delivery_server]]\nname = \"s\"\nhost = \"127.0.0.1\"\nport = {port}\nmail_from_domain = \"bounce.example.net\"\n[[dkim_key]]\ndomain = \"example.com\"\nselector = \"s1\"\nprivate_key_file = \"{dir}/rsa.pem\"\n[[dkim_key]]\ndomain = \"example.com\"\nselector = \"e1\"\nprivate_key_file = \"{dir}/ed.pem\"\n",
        dir = work.path().display(),
        port = sink.addr.port()
    );
    let daemon = Daemon::start(DaemonConfig::custom(&config));

    let inbox = work.path().join("in");
    std::fs::create_dir_all(&inbox).unwrap();
    messages(&inbox);
    let sent = support::python(
        RAW_SEND,
        &[
            daemon.addr.ip().to_string(),
            daemon.addr.port().to_string(),
            inbox.display().to_string(),
        ],
    )
    .unwrap();
    let sent = String::from_utf8_lossy(&sent.stdout).into_owned();
    assert_eq!(sent.matches(" 250 ").count(), 9, "{sent}");

    // VERP: one transaction per recipient, so 18 arrive.
    let got = sink.wait_messages(18, LONG);
    let files: Vec<String> = got
        .iter()
        .map(|m| {
            store
                .join(format!("{}.eml", m["seq"]))
                .display()
                .to_string()
        })
        .collect();
    let out = Command::new(&python)
        .arg("-c")
        .arg(VERIFY)
        .arg(work.path().join("records"))
        .args(&files)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        report.matches(" 2 ok").count(),
        18,
        "every message, both signatures:\n{report}"
    );

    // The return path decodes back to the message and the recipient.
    let key = std::fs::read_to_string(work.path().join("secret.key")).unwrap();
    let secrets = sendengine::secrets::Secrets::from_key(base64_32(key.trim()));
    let verp_key = secrets.derived("verp");
    let receptions = daemon.events_of("reception");
    for m in &got {
        let from = m["mail_from"].as_str().unwrap();
        assert!(
            from.starts_with("bounces+") && from.ends_with("@bounce.example.net"),
            "{from}"
        );
        let (id, rcpt) = sendengine_bounces::verp::decode_address(from, &verp_key).unwrap();
        let rcpts = m["rcpts"].as_array().unwrap();
        assert_eq!(rcpts.len(), 1);
        let reception = receptions
            .iter()
            .find(|e| {
                e["message_id"] == sendengine_queue::format_id(id) && e["recipient"] == rcpts[0]
            })
            .unwrap_or_else(|| {
                panic!("{from} decodes to message {id:x} recipient {rcpt}, which was not received")
            });
        assert_eq!(reception["dkim"], "signed d=example.com s=s1,e1");
    }
}

fn base64_32(text: &str) -> [u8; 32] {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(text)
        .unwrap()
        .try_into()
        .unwrap()
}

/// Verifies with dkimpy using TXT records read from zone-file lines, as
/// `sendctl domain records` prints them (quoted 255-byte strings joined).
const VERIFY_FROM_ZONE: &str = r#"
import re, sys, dkim
records = {}
for line in open(sys.argv[1]).read().splitlines():
    name = line.split()[0].rstrip(".")
    if " TXT " not in line and "\tTXT\t" not in line:
        continue
    data = line[line.index("TXT") + 3:]
    records[name] = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', data))
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    return records.get(name.rstrip("."), "").encode()
msg = open(sys.argv[2], "rb").read()
d = dkim.DKIM(msg)
n = len([h for h in d.headers if h[0].lower() == b"dkim-signature"])
print(n, "ok" if n and all(d.verify(idx=i, dnsfunc=dnsfunc) for i in range(n)) else "FAIL")
"#;

#[test]
fn keys_made_with_sendctl_sign_and_the_printed_records_verify_and_rotate() {
    let Some(python) = venv_python() else { return };
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let sink = Sink::start(&["--store-dir", store.to_str().unwrap()]);
    let config = format!(
        "[smtp_in]\nlisten = [\"127.0.0.1:0\"]\nrelay_networks = [\"127.0.0.0/8\"]\n[[delivery_server]]\nname = \"s\"\nhost = \"127.0.0.1\"\nport = {}\n",
        sink.addr.port()
    );
    let daemon = Daemon::start(DaemonConfig::custom(&config));
    ctl(
        &daemon,
        &["dkim", "generate", "example.com", "--selector", "s2"],
    );
    ctl(
        &daemon,
        &[
            "dkim",
            "generate",
            "example.com",
            "--selector",
            "e2",
            "--algorithm",
            "ed25519",
        ],
    );
    // What `sendctl domain records` prints is what dkimpy gets.
    let zone_file = work.path().join("zone");
    let publish = || -> usize {
        let records = ctl(&daemon, &["domain", "records", "example.com"]);
        let zone: Vec<&str> = records["zone"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        std::fs::write(&zone_file, zone.join("\n")).unwrap();
        zone.len()
    };
    assert_eq!(publish(), 2);

    let dkim_of = |n: usize| -> String {
        support::smtplib_send(
            daemon.addr,
            "app@example.com",
            &["r@example.net"],
            &format!("<rot{n}@test>"),
        );
        let got = sink.wait_messages(n, LONG);
        let path = store.join(format!("{}.eml", got[n - 1]["seq"]));
        let out = Command::new(&python)
            .args(["-c", VERIFY_FROM_ZONE])
            .arg(&zone_file)
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let verdict = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let reception = daemon.wait_events("reception", n, LONG);
        format!("{verdict} | {}", reception[n - 1]["dkim"].as_str().unwrap())
    };
    assert_eq!(dkim_of(1), "2 ok | signed d=example.com s=s2,e2");

    // Rotation: a new key is published first, signs once active, and the
    // old one signs until it is retired.
    ctl(
        &daemon,
        &[
            "dkim",
            "generate",
            "example.com",
            "--selector",
            "s3",
            "--inactive",
            "true",
        ],
    );
    assert_eq!(dkim_of(2), "2 ok | signed d=example.com s=s2,e2");
    ctl(
        &daemon,
        &["dkim", "activate", "example.com", "--selector", "s3"],
    );
    ctl(
        &daemon,
        &["dkim", "retire", "example.com", "--selector", "s2"],
    );
    assert_eq!(publish(), 2);
    assert_eq!(dkim_of(3), "2 ok | signed d=example.com s=e2,s3");
    let listed = ctl(&daemon, &["dkim", "get", "example.com"]).to_string();
    assert!(
        !listed.contains("PRIVATE") && !listed.contains("sealed:"),
        "{listed}"
    );
}
