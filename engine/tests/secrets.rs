//! Secrets stay secret: relay passwords and DKIM private keys are sealed
//! (AES-256-GCM) in the spool, and neither they nor user passwords show up
//! in the daemon's log (at debug level), the event log, `sendctl` output
//! (tables and --json) or error messages, including the errors of a relay
//! that refuses the password. Each test greps every byte it can reach.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sendengine::secrets::Secrets;
use sendengine_dkim::{DkimKey, KeyAlgorithm};
use serde_json::json;
use support::{Daemon, DaemonConfig, Sink, sendctl, sendctl_in};

const LONG: Duration = Duration::from_secs(60);
const RELAY_PASSWORD: &str = "Relay-Pa55-q8Zt1xWv";
const SEED_RELAY_PASSWORD: &str = "Seed-Relay-Pa55-k2Jm9";
const USER_PASSWORD: &str = "User-Pa55-c4Hn7";

/// Every form a password could leak in: as is, and as AUTH PLAIN / LOGIN
/// would encode it.
fn password_forms(user: &str, password: &str) -> Vec<String> {
    vec![
        password.to_owned(),
        B64.encode(password),
        B64.encode(format!("\0{user}\0{password}")),
    ]
}

/// The PEM's base64 body lines: any one of them would be a leak.
fn pem_body_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 40)
        .map(str::to_owned)
        .collect()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn assert_absent(haystack: &[u8], secrets: &[String], where_: &str) {
    for secret in secrets {
        assert!(
            memchr::memmem::find(haystack, secret.as_bytes()).is_none(),
            "a secret ({}...) appears in {where_}",
            &secret[..6.min(secret.len())]
        );
    }
}

fn output_text(out: &std::process::Output) -> Vec<u8> {
    let mut all = out.stdout.clone();
    all.extend_from_slice(&out.stderr);
    all
}

#[test]
fn relay_passwords_and_dkim_keys_never_leak() {
    // The relay wants "u:right": the daemon's password is refused there.
    let relay = Sink::start(&["--auth", "u:right"]);
    let work = tempfile::tempdir().unwrap();
    let seeded_key = DkimKey::generate(KeyAlgorithm::Rsa).unwrap().to_pem();
    let imported_key = DkimKey::generate(KeyAlgorithm::Rsa).unwrap().to_pem();
    let seeded_pem = work.path().join("seeded.pem");
    let imported_pem = work.path().join("imported.pem");
    std::fs::write(&seeded_pem, &seeded_key).unwrap();
    std::fs::write(&imported_pem, &imported_key).unwrap();

    let daemon = Daemon::start(DaemonConfig::custom(&format!(
        r#"[log]
filter = "debug"
[smtp_in]
listen = ["127.0.0.1:0"]
relay_networks = ["127.0.0.0/8"]
[delivery]
retry_schedule = ["1s"]
[[delivery_server]]
name = "seeded"
host = "127.0.0.1"
port = {port}
encryption = "none"
auth = {{ username = "u", password = "{SEED_RELAY_PASSWORD}" }}
[[user]]
name = "app"
password = "{USER_PASSWORD}"
[[dkim_key]]
domain = "example.com"
selector = "s1"
private_key_file = "{pem}"
"#,
        port = relay.addr.port(),
        pem = seeded_pem.display(),
    )));

    // A second relay password pushed with sendctl, and a key imported.
    let spec = json!({
        "name": "pushed", "host": "127.0.0.1", "port": relay.addr.port(),
        "timeout": "5s", "auth": {"username": "u", "password": RELAY_PASSWORD},
    });
    let out = sendctl_in(&daemon, &["server", "put"], Some(&spec.to_string()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sendctl(
        &daemon,
        &[
            "dkim",
            "import",
            "example.com",
            "--selector",
            "s2",
            "--pem-file",
            imported_pem.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Errors: mail through the seeded relay fails AUTH (a transient
    // failure with the relay's reply), and so do server tests.
    let sent = support::smtplib_send(daemon.addr, "a@example.com", &["b@example.net"], "<s1@x>");
    assert!(sent.contains("refused=0"), "{sent}");
    let failure = &daemon.wait_events("transient_failure", 1, LONG)[0];
    assert!(failure.to_string().contains("535"), "{failure}");

    let mut secrets = password_forms("u", RELAY_PASSWORD);
    secrets.extend(password_forms("u", SEED_RELAY_PASSWORD));
    secrets.extend(password_forms("app", USER_PASSWORD));
    secrets.extend(pem_body_lines(&seeded_key));
    secrets.extend(pem_body_lines(&imported_key));
    assert!(secrets.len() > 20, "the PEM bodies have lines to look for");

    let commands: &[&[&str]] = &[
        &["server", "list"],
        &["server", "get", "seeded"],
        &["server", "get", "pushed"],
        &["server", "test", "seeded"],
        &["server", "test", "pushed", "--to", "x@example.net"],
        &["user", "list"],
        &["user", "get", "app"],
        &["dkim", "list"],
        &["dkim", "get", "example.com"],
        &["status"],
        &["queue", "list"],
    ];
    for args in commands {
        for json_flag in [false, true] {
            let mut all: Vec<&str> = Vec::new();
            if json_flag {
                all.push("--json");
            }
            all.extend_from_slice(args);
            let out = sendctl(&daemon, &all);
            assert_absent(&output_text(&out), &secrets, &format!("sendctl {all:?}"));
        }
    }
    // The tests did fail at AUTH, so the error path was taken.
    let test = sendctl(&daemon, &["--json", "server", "test", "pushed"]);
    let test: serde_json::Value = serde_json::from_slice(&test.stdout).unwrap();
    assert_eq!(test["failed_step"], "AUTH", "{test}");
    // Wrong arguments name the field, not the value.
    let bad = sendctl_in(
        &daemon,
        &["server", "put"],
        Some(
            &json!({"name": "bad", "host": "127.0.0.1", "port": "x",
                     "auth": {"username": "u", "password": RELAY_PASSWORD}})
            .to_string(),
        ),
    );
    assert!(!bad.status.success());
    assert_absent(&output_text(&bad), &secrets, "a refused server.put");

    // The search works: config.toml holds the seeded password in the clear.
    let config = std::fs::read(&daemon.config_path).unwrap();
    assert!(memchr::memmem::find(&config, SEED_RELAY_PASSWORD.as_bytes()).is_some());

    let mut daemon = daemon;
    let spool = daemon.dir.path().join("spool");
    let events = std::fs::read(daemon.events_path()).unwrap();
    daemon.stop();
    // Every line after start-up, to the end of the stream (the daemon exited).
    let log: Vec<String> = daemon.stderr.iter().collect();
    assert!(log.iter().any(|l| l.contains("stopped")), "{log:?}");
    assert_absent(log.join("\n").as_bytes(), &secrets, "the daemon's log");
    assert_absent(&events, &secrets, "the event log");

    // At rest: every file of the spool, byte for byte.
    let files = files_under(&spool);
    assert!(!files.is_empty());
    let mut sealed_values = 0;
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        assert_absent(&bytes, &secrets, &file.display().to_string());
        sealed_values += memchr::memmem::find_iter(&bytes, b"sealed:v1:").count();
    }
    assert!(sealed_values >= 4, "passwords and keys are stored sealed");
}

/// The master key from systemd's `$CREDENTIALS_DIRECTORY/secret.key`: the
/// daemon uses it (what it sealed opens with that key) and creates no key
/// file of its own.
#[test]
fn the_master_key_comes_from_the_credentials_directory() {
    let work = tempfile::tempdir().unwrap();
    let credentials = work.path().join("credentials");
    std::fs::create_dir_all(&credentials).unwrap();
    let key = [0x5au8; 32];
    let key_text = base64::engine::general_purpose::STANDARD_NO_PAD.encode(key);
    std::fs::write(credentials.join("secret.key"), format!("{key_text}\n")).unwrap();

    let mut daemon = Daemon::start_with_env(
        DaemonConfig::custom(&format!(
            r#"[smtp_in]
listen = ["127.0.0.1:0"]
[[delivery_server]]
name = "relay"
host = "127.0.0.1"
port = 1
auth = {{ username = "u", password = "{RELAY_PASSWORD}" }}
"#
        )),
        &[("CREDENTIALS_DIRECTORY", credentials.to_str().unwrap())],
    );
    let spool = daemon.dir.path().join("spool");
    daemon.stop();
    let log: Vec<String> = daemon.stderr.iter().collect();
    assert_absent(
        log.join("\n").as_bytes(),
        &[key_text.clone(), RELAY_PASSWORD.to_owned()],
        "the daemon's log",
    );
    assert!(
        !spool.join("secret.key").exists(),
        "no key file of its own when the credential is there"
    );

    let secrets = Secrets::from_key(key);
    let mut opened = Vec::new();
    for file in files_under(&spool) {
        let bytes = std::fs::read(&file).unwrap();
        assert_absent(&bytes, &[RELAY_PASSWORD.to_owned()], "the spool");
        for start in memchr::memmem::find_iter(&bytes, b"sealed:v1:") {
            let rest = &bytes[start..];
            let end = rest
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || b"+/:".contains(b)))
                .unwrap_or(rest.len());
            let sealed = String::from_utf8_lossy(&rest[..end]).into_owned();
            if let Ok(plain) = secrets.open(&sealed) {
                opened.push(plain);
            }
        }
    }
    assert!(
        opened.iter().any(|p| p == RELAY_PASSWORD),
        "the relay password is sealed under the credential key"
    );
}

/// A relay written here that accepts any AUTH and keeps every byte a
/// client sends, to see whether a password reached it.
struct CapturingRelay {
    port: u16,
    received: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl CapturingRelay {
    fn start() -> CapturingRelay {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    let _ = writer.write_all(b"220 capture ESMTP\r\n");
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                        log.lock().unwrap().extend_from_slice(line.as_bytes());
                        let reply: &[u8] =
                            match line.get(..4).unwrap_or("").to_ascii_uppercase().as_str() {
                                "EHLO" => b"250-capture\r\n250 AUTH PLAIN LOGIN\r\n",
                                "AUTH" => b"235 2.7.0 ok\r\n",
                                "QUIT" => b"221 bye\r\n",
                                _ => b"250 ok\r\n",
                            };
                        if writer.write_all(reply).is_err() || reply.starts_with(b"221") {
                            break;
                        }
                        line.clear();
                    }
                });
            }
        });
        CapturingRelay { port, received }
    }

    fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }
}

/// A stored relay password stays with the endpoint it was given for
/// (issue 15.7): putting the server back as read, with `(set)`, is
/// refused when the host, port, username or TLS settings change, so
/// `server test` cannot carry the real password to another host; with
/// the endpoint unchanged `(set)` keeps it, and a new endpoint works once
/// the password is given again.
#[test]
fn a_stored_relay_password_only_goes_where_it_was_given_for() {
    let relay = Sink::start(&["--auth", &format!("u:{RELAY_PASSWORD}")]);
    let elsewhere = CapturingRelay::start();
    let daemon = Daemon::start(DaemonConfig::new(relay.addr.port()));
    let put =
        |spec: &serde_json::Value| sendctl_in(&daemon, &["server", "put"], Some(&spec.to_string()));
    let spec = json!({
        "name": "relay", "host": "127.0.0.1", "port": relay.addr.port(), "timeout": "5s",
        "auth": {"username": "u", "password": RELAY_PASSWORD},
    });
    assert!(put(&spec).status.success());
    let shown = support::ctl(&daemon, &["server", "get", "relay"]);
    assert_eq!(shown["auth"]["password"], "(set)");

    // The read-back object, pointed elsewhere: refused, nothing changes.
    let mut moved_port = shown.clone();
    moved_port["port"] = json!(elsewhere.port);
    let mut moved_host = shown.clone();
    moved_host["host"] = json!("127.0.0.2");
    let mut other_user = shown.clone();
    other_user["auth"]["username"] = json!("v");
    let mut no_verify = shown.clone();
    no_verify["tls_verify"] = json!(false);
    for (spec, field) in [
        (&moved_port, "port"),
        (&moved_host, "host"),
        (&other_user, "username"),
        (&no_verify, "tls_verify"),
    ] {
        let out = put(spec);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{field}: {stderr}");
        assert!(
            stderr.contains("auth.password") && stderr.contains(field),
            "{field}: {stderr}"
        );
    }
    // A new server cannot claim a password it never had.
    let mut fresh = moved_port.clone();
    fresh["name"] = json!("fresh");
    let out = put(&fresh);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has none"));

    let test = support::ctl(&daemon, &["server", "test", "relay"]);
    assert_eq!(test["failed_step"], serde_json::Value::Null, "{test}");
    assert!(
        elsewhere.received().is_empty(),
        "nothing reached the other relay"
    );

    // Same endpoint, other settings: (set) keeps the real password.
    let mut tuned = shown.clone();
    tuned["max_connections"] = json!(3);
    assert!(put(&tuned).status.success());
    let test = support::ctl(&daemon, &["server", "test", "relay"]);
    assert_eq!(test["failed_step"], serde_json::Value::Null, "{test}");

    // A new endpoint with the password given again: that password goes.
    let mut moved = moved_port.clone();
    moved["auth"]["password"] = json!("New-Relay-Pa55");
    let out = put(&moved);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The other relay is no SMTP server: the test fails there (exit 1).
    support::sendctl(&daemon, &["server", "test", "relay"]);
    let received = elsewhere.received();
    assert!(!received.is_empty(), "the test went to the new relay");
    assert_absent(
        &received,
        &password_forms("u", RELAY_PASSWORD),
        "the other relay",
    );
    let new_auth = B64.encode("\0u\0New-Relay-Pa55");
    assert!(
        String::from_utf8_lossy(&received).contains(&new_auth),
        "the new password was sent: {}",
        String::from_utf8_lossy(&received)
    );
}
