//! STARTTLS and implicit TLS: the loadgen against the sink, and Python's
//! smtplib (a real independent client) against the sink.

mod common;

use std::process::Command;

use common::{SinkProcess, loadgen, run_guarded};

#[test]
fn loadgen_starttls_with_auth() {
    let sink = SinkProcess::start(&["--tls", "starttls", "--auth", "user:secret"]);
    let run = loadgen(
        &sink,
        &[
            "--messages",
            "50",
            "--connections",
            "5",
            "--starttls",
            "--auth",
            "user:secret",
        ],
    );
    assert!(run.success, "{} {}", run.stdout, run.stderr);
    let log = sink.log();
    assert_eq!(log.len(), 50);
    assert!(
        log.iter()
            .all(|entry| entry["tls"] == true && entry["auth"] == "user")
    );
}

#[test]
fn loadgen_starttls_needs_the_extension() {
    let sink = SinkProcess::start(&[]);
    let run = loadgen(
        &sink,
        &["--messages", "2", "--connections", "1", "--starttls"],
    );
    assert!(!run.success);
    assert_eq!(run.field("conn_errors"), 1);
    assert!(run.stderr.contains("STARTTLS"), "{}", run.stderr);
}

/// Sends one message with smtplib over STARTTLS or implicit TLS, with AUTH.
const PYTHON_CLIENT: &str = r#"
import smtplib, ssl, sys
port, mode = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
msg = ("From: a@example.com\r\nTo: b@example.net\r\nSubject: py\r\n"
       "Message-ID: <py-%s@test>\r\n\r\n.leading dot\r\nbody\r\n" % mode)
if mode == "implicit":
    s = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=30)
else:
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    s.ehlo()
    s.starttls(context=ctx)
s.ehlo()
s.login("user", "secret")
s.sendmail("a@example.com", ["b@example.net"], msg)
s.quit()
"#;

/// Runs the Python client; false (with a printed reason) when python3 is missing.
fn python_sends(sink: &SinkProcess, mode: &str) -> bool {
    if Command::new("python3").arg("--version").output().is_err() {
        println!("skipped: python3 is not installed");
        return false;
    }
    let output = run_guarded(Command::new("python3").args([
        "-c",
        PYTHON_CLIENT,
        &sink.port().to_string(),
        mode,
    ]));
    assert!(
        output.status.success(),
        "python smtplib failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    true
}

fn assert_python_message_logged(sink: &SinkProcess, mode: &str) {
    let log = sink.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["message_id"], format!("<py-{mode}@test>"));
    assert_eq!(log[0]["tls"], true);
    assert_eq!(log[0]["auth"], "user");
    let stored = String::from_utf8(sink.stored(1)).unwrap();
    assert!(
        stored.ends_with("\r\n\r\n.leading dot\r\nbody\r\n"),
        "{stored:?}"
    );
}

#[test]
fn python_smtplib_starttls() {
    let sink = SinkProcess::start(&["--tls", "starttls", "--auth", "user:secret"]);
    if python_sends(&sink, "starttls") {
        assert_python_message_logged(&sink, "starttls");
    }
}

#[test]
fn python_smtplib_implicit_tls() {
    let sink = SinkProcess::start(&["--tls", "implicit", "--auth", "user:secret"]);
    if python_sends(&sink, "implicit") {
        assert_python_message_logged(&sink, "implicit");
    }
}
