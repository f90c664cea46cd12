//! DKIM and VERP through the real daemon: every message the sink stores is
//! verified by dkimpy (an independent implementation) with the published
//! TXT records, and the envelope sender each recipient got is a VERP
//! address that decodes back to the message and the recipient.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sendengine_dkim::{DkimKey, DnsRecord, KeyAlgorithm};
use support::{Daemon, DaemonConfig, Sink, ctl, venv_python};

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
        let tagged = sendengine_bounces::verp::decode_address(from, &verp_key).unwrap();
        let (id, rcpt) = (tagged.id, tagged.rcpt);
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

/// An RSA key per domain (selector `s1`), as `[[dkim_key]]` lines; the
/// public records go to `work/records` for the checking scripts.
fn rsa_keys(work: &Path, domains: &[&str]) -> String {
    let mut config = String::new();
    let mut records = Vec::new();
    for domain in domains {
        let key = DkimKey::generate(KeyAlgorithm::Rsa).unwrap();
        let pem = work.join(format!("{domain}.pem"));
        std::fs::write(&pem, key.to_pem()).unwrap();
        let record = DnsRecord::new(domain, "s1", &key).unwrap();
        records.push(format!("{} {}", record.name, record.value));
        config += &format!(
            "[[dkim_key]]\ndomain = \"{domain}\"\nselector = \"s1\"\nprivate_key_file = \"{}\"\n",
            pem.display()
        );
    }
    std::fs::write(work.join("records"), records.join("\n")).unwrap();
    config
}

/// For each delivered file: dkimpy's verdict, DMARC alignment of every
/// signature's d= with the From domain (relaxed), whether the message is
/// 7-bit with lines of at most 998 octets, and whether each leaf part
/// decodes (Python's email package) to the same bytes as in the message
/// that was sent (found by Message-ID in `originals`), Subject included.
const CHECK_DELIVERED: &str = r#"
import os, re, sys, dkim, email
from email.header import decode_header, make_header
records = dict(line.split(" ", 1) for line in open(sys.argv[1]).read().splitlines())
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    return records.get(name.rstrip("."), "").encode()
originals = {}
for name in os.listdir(sys.argv[2]):
    raw = open(os.path.join(sys.argv[2], name), "rb").read()
    originals[email.message_from_bytes(raw)["Message-ID"].strip()] = raw
def leaves(raw):
    msg = email.message_from_bytes(raw)
    out = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        data = part.get_payload(decode=True)
        if part.get_content_maintype() == "text":
            data = data.replace(b"\r\n", b"\n")
        out.append(data)
    return out
def subject(raw):
    folded = re.search(rb"^Subject:(.*(?:\r\n[ \t].*)*)\r\n", raw, re.M).group(1)
    value = folded.replace(b"\r\n", b"").strip().decode("utf-8")
    return str(make_header(decode_header(value)))
for path in sys.argv[3:]:
    raw = open(path, "rb").read()
    d = dkim.DKIM(raw)
    sigs = [h for h in d.headers if h[0].lower() == b"dkim-signature"]
    ok = bool(sigs) and all(d.verify(idx=i, dnsfunc=dnsfunc) for i in range(len(sigs)))
    from_domain = email.utils.parseaddr(email.message_from_bytes(raw)["From"])[1].rsplit("@", 1)[1].lower()
    ds = [re.search(rb"\bd=([^;\s]+)", v).group(1).decode().lower() for _, v in sigs]
    aligned = bool(ds) and all(from_domain == x or from_domain.endswith("." + x) for x in ds)
    lines = raw.split(b"\r\n")
    seven_bit = all(b < 0x80 and b != 0 for b in raw) and all(len(l) <= 998 for l in lines)
    original = originals[email.message_from_bytes(raw)["Message-ID"].strip()]
    same = leaves(original) == leaves(raw) and subject(original) == subject(raw)
    print(os.path.basename(path), "dkim=" + ("ok" if ok else "FAIL"), "d=" + ",".join(ds),
          "from=" + from_domain, "aligned=" + ("yes" if aligned else "no"),
          "7bit=" + ("yes" if seven_bit else "no"), "decoded=" + ("same" if same else "differs"))
    if not same:
        print("  sent:", subject(original), [x[:60] + x[-20:] for x in leaves(original)])
        print("  got: ", subject(raw), [x[:60] + x[-20:] for x in leaves(raw)])
"#;

/// Sends the files of `inbox` (to two recipients), waits for the 2 copies
/// of each (one VERP transaction per recipient) and runs `CHECK_DELIVERED` on them; returns its report.
fn send_and_check(
    python: &Path,
    work: &Path,
    config: &str,
    inbox: &Path,
    store: &Path,
    sink: &Sink,
) -> String {
    let daemon = Daemon::start(DaemonConfig::custom(config));
    let count = std::fs::read_dir(inbox).unwrap().count();
    let sent = support::python(
        RAW_SEND,
        &[
            daemon.addr.ip().to_string(),
            daemon.addr.port().to_string(),
            inbox.display().to_string(),
        ],
    )
    .expect("python3 is required for the integration tests");
    let sent = String::from_utf8_lossy(&sent.stdout).into_owned();
    assert_eq!(sent.matches(" 250 ").count(), count, "{sent}");
    let got = sink.wait_messages(2 * count, LONG);
    let files: Vec<String> = got
        .iter()
        .map(|m| {
            store
                .join(format!("{}.eml", m["seq"]))
                .display()
                .to_string()
        })
        .collect();
    let out = Command::new(python)
        .args(["-c", CHECK_DELIVERED])
        .arg(work.join("records"))
        .arg(inbox)
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn eight_bit_and_long_lines_are_reencoded_before_signing_and_decode_the_same() {
    let Some(python) = venv_python() else { return };
    let work = tempfile::tempdir().unwrap();
    let keys = rsa_keys(work.path(), &["example.com"]);
    let store = work.path().join("store");
    let inbox = work.path().join("in");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::create_dir_all(&inbox).unwrap();
    let sink = Sink::start(&["--store-dir", store.to_str().unwrap()]);
    let config = format!(
        "[smtp_in]\nlisten = [\"127.0.0.1:0\"]\nrelay_networks = [\"127.0.0.0/8\"]\n[[delivery_server]]\nname = \"s\"\nhost = \"127.0.0.1\"\nport = {}\nmail_from_domain = \"bounce.example.net\"\n{keys}",
        sink.addr.port()
    );
    // A template's HTML on one 5,000-character line, beside 8-bit UTF-8.
    let html_line = format!(
        "<table><tr><td>{}</td></tr></table>",
        "Ünïcødé ".repeat(600)
    );
    let multipart = format!(
        "From: Jörg Müller <app@example.com>\r\nTo: one@example.net\r\nSubject: Grüße aus Köln\r\nMessage-ID: <multi@test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n--alt\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße,\r\nda steht: „Straße“ — 10 €.\r\n--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body>{html_line}</body></html>\r\n--alt--\r\n"
    );
    assert!(multipart.lines().any(|l| l.len() > 5000));
    let plain = format!(
        "From: app@example.com\r\nTo: one@example.net\r\nSubject: plain\r\nMessage-ID: <plain@test>\r\n\r\nÜber 8-bit text without MIME headers.\r\n{}\r\n",
        "y".repeat(1500)
    );
    std::fs::write(inbox.join("01-multipart"), multipart).unwrap();
    std::fs::write(inbox.join("02-plain"), plain).unwrap();

    let report = send_and_check(&python, work.path(), &config, &inbox, &store, &sink);
    assert_eq!(report.lines().count(), 4, "{report}");
    for line in report.lines() {
        assert!(
            line.contains("dkim=ok") && line.contains("7bit=yes") && line.contains("decoded=same"),
            "{report}"
        );
    }
}

#[test]
fn a_from_rewritten_by_the_server_is_signed_for_its_own_domain() {
    let Some(python) = venv_python() else { return };
    let work = tempfile::tempdir().unwrap();
    // Both domains have keys: signing for the From that arrived would verify
    // but fail DMARC alignment.
    let keys = rsa_keys(work.path(), &["orig.example", "brand.example"]);
    let store = work.path().join("store");
    let inbox = work.path().join("in");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::create_dir_all(&inbox).unwrap();
    let sink = Sink::start(&["--store-dir", store.to_str().unwrap()]);
    let config = format!(
        "[smtp_in]\nlisten = [\"127.0.0.1:0\"]\nrelay_networks = [\"127.0.0.0/8\"]\n[[delivery_server]]\nname = \"s\"\nhost = \"127.0.0.1\"\nport = {}\nmail_from_domain = \"bounce.example.net\"\nenforced_from = \"News <news@brand.example>\"\n{keys}",
        sink.addr.port()
    );
    std::fs::write(
        inbox.join("01-rewritten"),
        "From: App <app@orig.example>\r\nTo: one@example.net\r\nSubject: news\r\nMessage-ID: <from@test>\r\n\r\nHello.\r\n",
    )
    .unwrap();

    let report = send_and_check(&python, work.path(), &config, &inbox, &store, &sink);
    assert_eq!(report.lines().count(), 2, "{report}");
    for line in report.lines() {
        assert!(
            line.contains("dkim=ok")
                && line.contains("d=brand.example ")
                && line.contains("from=brand.example")
                && line.contains("aligned=yes"),
            "{report}"
        );
    }
}
