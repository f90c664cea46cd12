//! Integration tests of the outbound SMTP client against real servers on
//! 127.0.0.1: our `sendengine-sink` (built on demand from the benches crate,
//! with its fault modes, log and message store), Postfix's `smtp-sink` when it
//! is installed, and small hand-written peers for the protocol corners no real
//! server produces on demand (split packets, over-long replies, a broken TLS
//! handshake, data injected after STARTTLS).

#[path = "../../test-support/peers.rs"]
mod peers;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use sendengine::smtp::client::{
    ClientSettings, Connection, Credentials, Encryption, Envelope, Phase, Reply, Sent,
    SessionError, Timeouts, TlsState,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

/// Deadlock guard for every wait in these tests; never reached when all is well.
const GUARD: Duration = Duration::from_secs(30);
/// The short timeout of the stall tests: long enough for a busy machine to
/// answer everything before the stalled step.
const SHORT: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------- helpers

fn settings(port: u16, encryption: Encryption) -> ClientSettings {
    ClientSettings {
        host: "127.0.0.1".to_string(),
        port,
        encryption,
        helo_name: "client.test".to_string(),
        auth: None,
        timeouts: Timeouts::uniform(GUARD),
        tls_verify: false,
    }
}

fn message(id: &str, body: &str) -> Vec<u8> {
    format!(
        "From: sender@example.com\r\nTo: rcpt@example.net\r\nMessage-ID: <{id}@example.com>\r\n\
         Subject: test {id}\r\n\r\n{body}"
    )
    .into_bytes()
}

async fn connect(settings: &ClientSettings) -> Connection {
    match Connection::connect(settings).await {
        Ok(connection) => connection,
        Err(error) => panic!("connect failed: {error}"),
    }
}

async fn send(
    connection: &mut Connection,
    from: &str,
    recipients: &[&str],
    body: &[u8],
) -> Vec<Reply> {
    let envelope = Envelope {
        mail_from: from,
        recipients,
    };
    match connection.send(&envelope, body).await {
        Ok(replies) => replies,
        Err(error) => panic!("send failed: {error}"),
    }
}

async fn send_err(connection: &mut Connection, recipients: &[&str], body: &[u8]) -> SessionError {
    let envelope = Envelope {
        mail_from: "sender@example.com",
        recipients,
    };
    match connection.send(&envelope, body).await {
        Ok(replies) => panic!("expected a session error, got {replies:?}"),
        Err(error) => error,
    }
}

async fn connect_err(settings: &ClientSettings) -> SessionError {
    match Connection::connect(settings).await {
        Ok(connection) => panic!(
            "expected a session error, connected with {:?}",
            connection.tls()
        ),
        Err(error) => error,
    }
}

fn assert_delivered(replies: &[Reply], count: usize) {
    assert_eq!(replies.len(), count, "{replies:?}");
    for reply in replies {
        assert!(reply.is_positive() && reply.code == 250, "{reply}");
    }
}

// ------------------------------------------------------- sendengine-sink

/// Builds the benches crate's binaries once per test process and returns the
/// sink's path, next to this test binary's target/debug directory.
fn sink_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "-p", "sendengine-benches", "--bins"]);
        // The sink must sit in the same profile directory as this test binary.
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        let status = build
            .current_dir(&workspace)
            .status()
            .expect("run cargo build for the sink");
        assert!(
            status.success(),
            "cargo build -p sendengine-benches --bins failed"
        );
        // target/debug/deps/smtp_client-HASH -> target/debug
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/debug");
        let binary = profile_dir.join("sendengine-sink");
        assert!(
            binary.exists(),
            "{} missing after the build",
            binary.display()
        );
        binary
    })
}

/// A running `sendengine-sink` with its log and message store in a tempdir.
struct Sink {
    port: u16,
    dir: tempfile::TempDir,
    _child: Child,
}

impl Sink {
    async fn start(args: &[&str]) -> Sink {
        Sink::spawn(args, true).await
    }

    /// `record`: keep a log and a copy of each message (off for throughput).
    async fn spawn(args: &[&str], record: bool) -> Sink {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut command = Command::new(sink_binary());
        command.args(["--listen", "127.0.0.1:0"]);
        if record {
            command.arg("--log").arg(dir.path().join("log.jsonl"));
            command.arg("--store-dir").arg(dir.path().join("store"));
        }
        let mut child = command
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start sendengine-sink");
        let stdout = child.stdout.take().expect("sink stdout");
        let mut first_line = String::new();
        let mut stdout = BufReader::new(stdout);
        let read = stdout.read_line(&mut first_line);
        tokio::time::timeout(GUARD, read)
            .await
            .expect("sink start")
            .expect("sink stdout");
        let port = first_line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("unexpected sink banner {first_line:?}"));
        Sink {
            port,
            dir,
            _child: child,
        }
    }

    fn settings(&self, encryption: Encryption) -> ClientSettings {
        settings(self.port, encryption)
    }

    /// The log lines of accepted messages, in acceptance order.
    fn log(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("log.jsonl")).unwrap_or_default();
        text.lines()
            .map(|line| serde_json::from_str(line).expect("log line is JSON"))
            .collect()
    }

    fn stored(&self, seq: u64) -> Vec<u8> {
        std::fs::read(self.dir.path().join("store").join(format!("{seq}.eml")))
            .expect("stored message")
    }
}

fn rcpts(entry: &serde_json::Value) -> Vec<&str> {
    entry["rcpts"]
        .as_array()
        .expect("rcpts")
        .iter()
        .map(|rcpt| rcpt.as_str().expect("rcpt"))
        .collect()
}

// ------------------------------------------------------ plain delivery

#[tokio::test]
async fn several_messages_on_one_connection_pipelined_and_lockstep() {
    for (args, pipelining) in [(&[][..], true), (&["--no-pipelining"][..], false)] {
        let sink = Sink::start(args).await;
        let mut connection = connect(&sink.settings(Encryption::None)).await;
        assert_eq!(connection.capabilities().pipelining, pipelining);
        assert_eq!(connection.tls(), TlsState::Plain);
        assert_eq!(connection.remote(), format!("127.0.0.1:{}", sink.port));
        assert!(connection.greeting().contains("ESMTP sendengine-sink"));
        for number in 0..5 {
            let body = message(&format!("m{number}"), "hello\r\n");
            let recipients = ["a@example.net", "b@example.net"];
            let replies = send(&mut connection, "sender@example.com", &recipients, &body).await;
            assert_delivered(&replies, 2);
            assert_eq!(replies[0].enhanced.as_deref(), Some("2.0.0"));
        }
        connection.quit().await;
        let log = sink.log();
        assert_eq!(log.len(), 5, "pipelining={pipelining}");
        for (seq, entry) in log.iter().enumerate() {
            assert_eq!(entry["mail_from"], "sender@example.com");
            assert_eq!(rcpts(entry), ["a@example.net", "b@example.net"]);
            let id = format!("m{seq}@example.com");
            assert!(
                entry["message_id"]
                    .as_str()
                    .is_some_and(|m| m.contains(&id)),
                "{entry}"
            );
            assert_eq!(
                sink.stored(seq as u64 + 1),
                message(&format!("m{seq}"), "hello\r\n")
            );
        }
    }
}

#[tokio::test]
async fn null_sender_is_sent_as_empty_path() {
    let sink = Sink::start(&[]).await;
    let mut connection = connect(&sink.settings(Encryption::None)).await;
    let replies = send(
        &mut connection,
        "",
        &["a@example.net"],
        &message("bounce", "dsn\r\n"),
    )
    .await;
    assert_delivered(&replies, 1);
    assert_eq!(sink.log()[0]["mail_from"], "");
}

#[tokio::test]
async fn partial_acceptance_gives_each_recipient_its_reply() {
    let fault = "rcpt~unknown=550 5.1.1 no such user";
    for extra in [&[][..], &["--no-pipelining"][..]] {
        let args: Vec<&str> = ["--fault", fault].iter().chain(extra).copied().collect();
        let sink = Sink::start(&args).await;
        let mut connection = connect(&sink.settings(Encryption::None)).await;
        let recipients = ["one@example.net", "unknown@example.net", "two@example.net"];
        let replies = send(
            &mut connection,
            "s@example.com",
            &recipients,
            &message("p", "x\r\n"),
        )
        .await;
        assert_eq!(replies.len(), 3);
        assert_eq!(replies[1].to_string(), "550 5.1.1 no such user");
        assert!(replies[1].is_permanent());
        for index in [0, 2] {
            assert_eq!(replies[index].code, 250);
            assert!(
                replies[index].text.contains("queued as 1"),
                "{}",
                replies[index]
            );
        }
        let log = sink.log();
        assert_eq!(log.len(), 1);
        assert_eq!(rcpts(&log[0]), ["one@example.net", "two@example.net"]);
    }
}

#[tokio::test]
async fn all_recipients_refused_sends_no_message_and_keeps_the_connection() {
    let fault = "rcpt~unknown=550 5.1.1 no such user";
    for extra in [&[][..], &["--no-pipelining"][..]] {
        let args: Vec<&str> = ["--fault", fault].iter().chain(extra).copied().collect();
        let sink = Sink::start(&args).await;
        let mut connection = connect(&sink.settings(Encryption::None)).await;
        let refused = ["unknown1@example.net", "unknown2@example.net"];
        let replies = send(
            &mut connection,
            "s@example.com",
            &refused,
            &message("r", "x\r\n"),
        )
        .await;
        assert_eq!(replies.len(), 2);
        assert!(replies.iter().all(|reply| reply.code == 550), "{replies:?}");
        assert!(sink.log().is_empty());

        let replies = send(
            &mut connection,
            "s@example.com",
            &["ok@example.net"],
            &message("n", "x\r\n"),
        )
        .await;
        assert_delivered(&replies, 1);
        let log = sink.log();
        assert_eq!(log.len(), 1);
        assert_eq!(rcpts(&log[0]), ["ok@example.net"]);
    }
}

#[tokio::test]
async fn transient_refusal_of_mail_decides_every_recipient() {
    for extra in [&[][..], &["--no-pipelining"][..]] {
        let args: Vec<&str> = ["--fault", "mail~busy=451 4.3.0 try again later"]
            .iter()
            .chain(extra)
            .copied()
            .collect();
        let sink = Sink::start(&args).await;
        let mut connection = connect(&sink.settings(Encryption::None)).await;
        let recipients = ["a@example.net", "b@example.net"];
        let replies = send(
            &mut connection,
            "busy@example.com",
            &recipients,
            &message("t", "x\r\n"),
        )
        .await;
        assert_eq!(replies.len(), 2);
        for reply in &replies {
            assert_eq!(reply.to_string(), "451 4.3.0 try again later");
            assert!(reply.is_transient());
        }
        let replies = send(
            &mut connection,
            "fine@example.com",
            &recipients,
            &message("u", "x\r\n"),
        )
        .await;
        assert_delivered(&replies, 2);
        assert_eq!(sink.log().len(), 1);
    }
}

#[tokio::test]
async fn refused_data_decides_the_accepted_recipients() {
    let sink = Sink::start(&["--fault", "data=554 5.7.1 content refused"]).await;
    let mut connection = connect(&sink.settings(Encryption::None)).await;
    let replies = send(
        &mut connection,
        "s@example.com",
        &["a@example.net"],
        &message("d", "x\r\n"),
    )
    .await;
    assert_eq!(replies[0].to_string(), "554 5.7.1 content refused");
    assert!(sink.log().is_empty());
}

#[tokio::test]
async fn refused_final_dot_is_a_per_recipient_reply() {
    let sink = Sink::start(&["--fault", "dot~spam=550 5.7.1 looks like spam"]).await;
    let mut connection = connect(&sink.settings(Encryption::None)).await;
    let replies = send(
        &mut connection,
        "s@example.com",
        &["a@example.net"],
        &message("spam", "x\r\n"),
    )
    .await;
    assert_eq!(replies[0].to_string(), "550 5.7.1 looks like spam");
    let replies = send(
        &mut connection,
        "s@example.com",
        &["a@example.net"],
        &message("ham", "x\r\n"),
    )
    .await;
    assert_delivered(&replies, 1);
}

// --------------------------------------------------- body on the wire

#[tokio::test]
async fn dot_stuffing_delivers_the_body_intact() {
    let sink = Sink::start(&[]).await;
    let mut connection = connect(&sink.settings(Encryption::None)).await;
    let body = message(
        "dots",
        ".leading dot\r\n..two dots\r\n.\r\nmiddle . dot\r\n...\r\n. \r\n",
    );
    let replies = send(&mut connection, "s@example.com", &["a@example.net"], &body).await;
    assert_delivered(&replies, 1);
    assert_eq!(sink.stored(1), body);
    assert_eq!(sink.log()[0]["size"], body.len());
}

#[tokio::test]
async fn body_without_final_crlf_gets_one() {
    let sink = Sink::start(&[]).await;
    let mut connection = connect(&sink.settings(Encryption::None)).await;
    let body = message("nocrlf", "last line without newline\r\n.starts with dot");
    let replies = send(&mut connection, "s@example.com", &["a@example.net"], &body).await;
    assert_delivered(&replies, 1);
    let mut expected = body.clone();
    expected.extend_from_slice(b"\r\n");
    assert_eq!(sink.stored(1), expected);
}

#[tokio::test]
async fn large_body_and_eight_bit_and_utf8_addresses() {
    let sink = Sink::start(&[]).await;
    let mut connection = connect(&sink.settings(Encryption::None)).await;
    assert!(connection.capabilities().smtp_utf8 && connection.capabilities().eight_bit_mime);
    let line = "é 8-bit line ".repeat(6) + "\r\n";
    let body = message("big", &(line.repeat(20_000) + ".end\r\n"));
    assert!(body.len() > 1_000_000);
    let replies = send(
        &mut connection,
        "sender@example.com",
        &["josé@exemple.fr"],
        &body,
    )
    .await;
    assert_delivered(&replies, 1);
    assert_eq!(rcpts(&sink.log()[0]), ["josé@exemple.fr"]);
    assert_eq!(sink.stored(1), body);
}

#[tokio::test]
async fn body_over_the_advertised_size_is_refused_without_sending() {
    let sink = Sink::start(&["--max-size", "1000"]).await;
    let mut connection = connect(&sink.settings(Encryption::None)).await;
    assert_eq!(connection.capabilities().size_limit(), Some(1000));
    let big = message("big", &"x".repeat(2000));
    let replies = send(
        &mut connection,
        "s@example.com",
        &["a@example.net", "b@example.net"],
        &big,
    )
    .await;
    assert_eq!(replies.len(), 2);
    for reply in &replies {
        assert_eq!(
            (reply.code, reply.enhanced.as_deref()),
            (552, Some("5.3.4"))
        );
    }
    let replies = send(
        &mut connection,
        "s@example.com",
        &["a@example.net"],
        &message("small", "x\r\n"),
    )
    .await;
    assert_delivered(&replies, 1);
    assert_eq!(sink.log().len(), 1);
}

#[tokio::test]
async fn bad_recipient_syntax_is_refused_locally_and_the_rest_delivered() {
    let sink = Sink::start(&[]).await;
    let mut connection = connect(&sink.settings(Encryption::None)).await;
    let recipients = ["good@example.net", "evil@example.net>\r\nRSET"];
    let replies = send(
        &mut connection,
        "s@example.com",
        &recipients,
        &message("i", "x\r\n"),
    )
    .await;
    assert_eq!(replies[0].code, 250);
    assert_eq!(
        (replies[1].code, replies[1].enhanced.as_deref()),
        (501, Some("5.1.3"))
    );
    assert_eq!(rcpts(&sink.log()[0]), ["good@example.net"]);
}

// ------------------------------------------------------ session failures

#[tokio::test]
async fn greeting_421_is_rejected_at_greeting() {
    let sink = Sink::start(&["--fault", "greeting=421 4.3.2 too busy"]).await;
    let error = connect_err(&sink.settings(Encryption::None)).await;
    assert_eq!(error.phase(), Phase::Greeting);
    assert!(matches!(error, SessionError::Rejected { .. }), "{error}");
    assert_eq!(error.reply().map(|reply| reply.code), Some(421));
}

#[tokio::test]
async fn greeting_554_is_rejected_at_greeting() {
    let sink = Sink::start(&["--fault", "greeting=554 5.7.1 go away"]).await;
    let error = connect_err(&sink.settings(Encryption::None)).await;
    assert_eq!(error.phase(), Phase::Greeting);
    assert_eq!(error.reply().map(|reply| reply.code), Some(554));
}

#[tokio::test]
async fn ehlo_refusal_that_helo_also_refuses() {
    let sink = Sink::start(&["--fault", "ehlo=550 5.7.1 not you"]).await;
    let error = connect_err(&sink.settings(Encryption::None)).await;
    assert_eq!(error.phase(), Phase::Ehlo);
    assert_eq!(error.reply().map(|reply| reply.code), Some(550));
}

#[tokio::test]
async fn disconnect_after_the_dot_is_a_session_error() {
    let sink = Sink::start(&["--fault", "dot=disconnect"]).await;
    let mut connection = connect(&sink.settings(Encryption::None)).await;
    let error = send_err(&mut connection, &["a@example.net"], &message("x", "x\r\n")).await;
    assert_eq!(error.phase(), Phase::DataEnd);
    assert!(matches!(error, SessionError::Io { .. }), "{error}");
    // The connection refuses further use instead of desynchronising.
    let again = send_err(&mut connection, &["a@example.net"], &message("y", "x\r\n")).await;
    assert!(matches!(again, SessionError::Protocol { .. }), "{again}");
    assert!(sink.log().is_empty());
}

#[tokio::test]
async fn disconnect_at_rcpt_is_a_session_error() {
    let sink = Sink::start(&["--fault", "rcpt=disconnect"]).await;
    let mut connection = connect(&sink.settings(Encryption::None)).await;
    let error = send_err(&mut connection, &["a@example.net"], &message("x", "x\r\n")).await;
    assert_eq!(error.phase(), Phase::Rcpt);
}

#[tokio::test]
async fn service_closing_421_mid_transaction_is_a_session_error() {
    for extra in [&[][..], &["--no-pipelining"][..]] {
        let args: Vec<&str> = ["--fault", "rcpt~second=421 4.3.2 shutting down"]
            .iter()
            .chain(extra)
            .copied()
            .collect();
        let sink = Sink::start(&args).await;
        let mut connection = connect(&sink.settings(Encryption::None)).await;
        let recipients = [
            "first@example.net",
            "second@example.net",
            "third@example.net",
        ];
        let error = send_err(&mut connection, &recipients, &message("x", "x\r\n")).await;
        assert_eq!(error.phase(), Phase::Rcpt);
        assert_eq!(error.reply().map(|reply| reply.code), Some(421));
    }
}

#[tokio::test]
async fn stalls_time_out_in_the_phase_that_stalled() {
    let cases = [
        ("greeting=stall", Phase::Greeting),
        ("ehlo=stall", Phase::Ehlo),
        ("mail=stall", Phase::Mail),
        ("rcpt=stall", Phase::Rcpt),
        ("data=stall", Phase::Data),
        ("dot=stall", Phase::DataEnd),
    ];
    for (fault, phase) in cases {
        let sink = Sink::start(&["--fault", fault]).await;
        let mut settings = sink.settings(Encryption::None);
        // Only the stalled phase gets the short timeout, so a slow machine
        // cannot make an earlier phase time out instead.
        let slot = match phase {
            Phase::Greeting => &mut settings.timeouts.greeting,
            Phase::Ehlo => &mut settings.timeouts.ehlo,
            Phase::Mail => &mut settings.timeouts.mail,
            Phase::Rcpt => &mut settings.timeouts.rcpt,
            Phase::Data => &mut settings.timeouts.data,
            _ => &mut settings.timeouts.final_dot,
        };
        *slot = SHORT;
        let error = match Connection::connect(&settings).await {
            Err(error) => error,
            Ok(mut connection) => {
                send_err(&mut connection, &["a@example.net"], &message("s", "x\r\n")).await
            }
        };
        match error {
            SessionError::Timeout { phase: got, after } => {
                assert_eq!((got, after), (phase, SHORT), "{fault}");
            }
            other => panic!("{fault}: expected a timeout, got {other}"),
        }
    }
}

#[tokio::test]
async fn connection_refused_is_an_io_error_at_connect() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let error = connect_err(&settings(port, Encryption::None)).await;
    assert_eq!(error.phase(), Phase::Connect);
    assert!(matches!(error, SessionError::Io { .. }), "{error}");
}

// ------------------------------------------------------------------ TLS

#[tokio::test]
async fn required_starttls_upgrades_and_delivers() {
    let sink = Sink::start(&["--tls", "starttls"]).await;
    let mut connection = connect(&sink.settings(Encryption::StartTls)).await;
    assert_eq!(connection.tls(), TlsState::StartTls);
    // The EHLO after TLS replaced the first one: STARTTLS is no longer offered.
    assert!(!connection.capabilities().starttls);
    for number in 0..3 {
        let body = message(&format!("tls{number}"), ".dot\r\nbody\r\n");
        assert_delivered(
            &send(&mut connection, "s@example.com", &["a@example.net"], &body).await,
            1,
        );
    }
    connection.quit().await;
    let log = sink.log();
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|entry| entry["tls"] == true));
    assert_eq!(sink.stored(1), message("tls0", ".dot\r\nbody\r\n"));
}

#[tokio::test]
async fn opportunistic_starttls_upgrades_when_offered() {
    let sink = Sink::start(&["--tls", "starttls"]).await;
    let mut settings = sink.settings(Encryption::StartTlsOpportunistic);
    // Opportunistic TLS never verifies, whatever tls_verify says.
    settings.tls_verify = true;
    let mut connection = connect(&settings).await;
    assert_eq!(connection.tls(), TlsState::StartTls);
    assert_delivered(
        &send(
            &mut connection,
            "s@example.com",
            &["a@example.net"],
            &message("o", "x\r\n"),
        )
        .await,
        1,
    );
    assert_eq!(sink.log()[0]["tls"], true);
}

#[tokio::test]
async fn opportunistic_starttls_stays_plain_when_not_offered() {
    let sink = Sink::start(&[]).await;
    let mut connection = connect(&sink.settings(Encryption::StartTlsOpportunistic)).await;
    assert_eq!(connection.tls(), TlsState::Plain);
    assert_delivered(
        &send(
            &mut connection,
            "s@example.com",
            &["a@example.net"],
            &message("p", "x\r\n"),
        )
        .await,
        1,
    );
    assert_eq!(sink.log()[0]["tls"], false);
}

#[tokio::test]
async fn required_starttls_not_offered_is_an_error() {
    let sink = Sink::start(&[]).await;
    let error = connect_err(&sink.settings(Encryption::StartTls)).await;
    assert_eq!(error.phase(), Phase::StartTls);
    assert!(matches!(error, SessionError::Tls { .. }), "{error}");
}

#[tokio::test]
async fn required_starttls_with_verification_refuses_a_self_signed_certificate() {
    let sink = Sink::start(&["--tls", "starttls"]).await;
    let mut settings = sink.settings(Encryption::StartTls);
    settings.tls_verify = true;
    let error = connect_err(&settings).await;
    assert_eq!(error.phase(), Phase::Tls);
    assert!(matches!(error, SessionError::Tls { .. }), "{error}");
}

#[tokio::test]
async fn implicit_tls_delivers() {
    let sink = Sink::start(&["--tls", "implicit"]).await;
    let mut connection = connect(&sink.settings(Encryption::Tls)).await;
    assert_eq!(connection.tls(), TlsState::Implicit);
    assert!(!connection.greeting().is_empty());
    assert_delivered(
        &send(
            &mut connection,
            "s@example.com",
            &["a@example.net"],
            &message("i", "x\r\n"),
        )
        .await,
        1,
    );
    connection.quit().await;
    assert_eq!(sink.log()[0]["tls"], true);
}

#[tokio::test]
async fn implicit_tls_against_a_plain_server_fails_in_tls() {
    let sink = Sink::start(&[]).await;
    let mut settings = sink.settings(Encryption::Tls);
    settings.timeouts.tls = Duration::from_secs(5);
    let error = connect_err(&settings).await;
    assert_eq!(error.phase(), Phase::Tls);
}

// ----------------------------------------------------------------- AUTH

#[tokio::test]
async fn auth_plain_succeeds_and_is_used_for_mail() {
    let sink = Sink::start(&["--tls", "starttls", "--auth", "relayuser:s3cret"]).await;
    let mut settings = sink.settings(Encryption::StartTls);
    settings.auth = Some(Credentials {
        username: "relayuser".to_string(),
        password: "s3cret".to_string(),
    });
    assert!(
        !format!("{settings:?}").contains("s3cret"),
        "Debug must hide the password"
    );
    let mut connection = connect(&settings).await;
    assert!(connection.capabilities().offers_auth("PLAIN"));
    assert_delivered(
        &send(
            &mut connection,
            "s@example.com",
            &["a@example.net"],
            &message("a", "x\r\n"),
        )
        .await,
        1,
    );
    assert_eq!(sink.log()[0]["auth"], "relayuser");
}

#[tokio::test]
async fn auth_with_a_wrong_password_is_rejected() {
    let sink = Sink::start(&["--auth", "relayuser:s3cret"]).await;
    let mut settings = sink.settings(Encryption::None);
    settings.auth = Some(Credentials {
        username: "relayuser".to_string(),
        password: "wrong".to_string(),
    });
    let error = connect_err(&settings).await;
    assert_eq!(error.phase(), Phase::Auth);
    assert!(
        error.reply().is_some_and(|reply| reply.is_permanent()),
        "{error}"
    );
}

#[tokio::test]
async fn credentials_for_a_server_without_auth_are_an_error() {
    let sink = Sink::start(&[]).await;
    let mut settings = sink.settings(Encryption::None);
    settings.auth = Some(Credentials {
        username: "u".to_string(),
        password: "p".to_string(),
    });
    let error = connect_err(&settings).await;
    assert_eq!(error.phase(), Phase::Auth);
}

#[tokio::test]
async fn auth_login_when_plain_is_not_offered() {
    let port = scripted::serve(1, |_, mut peer| async move {
        peer.write("220 scripted ESMTP\r\n").await;
        peer.expect("EHLO client.test").await;
        peer.write("250-scripted\r\n250-AUTH LOGIN\r\n250 PIPELINING\r\n")
            .await;
        peer.expect("AUTH LOGIN").await;
        peer.write("334 VXNlcm5hbWU6\r\n").await;
        peer.expect("dXNlcg==").await; // "user"
        peer.write("334 UGFzc3dvcmQ6\r\n").await;
        let password = peer.read_line().await;
        if password == "cGFzcw==" {
            // "pass"
            peer.write("235 2.7.0 ok\r\n").await;
            peer.expect("QUIT").await;
            peer.write("221 bye\r\n").await;
        } else {
            peer.write("535 5.7.8 bad credentials\r\n").await;
        }
    })
    .await;
    let mut settings = settings(port, Encryption::None);
    settings.auth = Some(Credentials {
        username: "user".to_string(),
        password: "pass".to_string(),
    });
    connect(&settings).await.quit().await;

    let port = scripted::serve(1, |_, mut peer| async move {
        peer.write("220 scripted ESMTP\r\n").await;
        peer.expect("EHLO").await;
        peer.write("250-scripted\r\n250 AUTH=LOGIN\r\n").await;
        peer.expect("AUTH LOGIN").await;
        peer.write("334 VXNlcm5hbWU6\r\n").await;
        peer.read_line().await;
        peer.write("334 UGFzc3dvcmQ6\r\n").await;
        peer.read_line().await;
        peer.write("535 5.7.8 bad credentials\r\n").await;
    })
    .await;
    let mut wrong = settings.clone();
    wrong.port = port;
    let error = connect_err(&wrong).await;
    assert_eq!(error.phase(), Phase::Auth);
    assert_eq!(error.reply().map(|reply| reply.code), Some(535));
}

// ------------------------------------------- hand-written peers: corners

/// A peer that greets, answers EHLO with `capabilities` (the lines after
/// `250-name`), then plays `rest`.
async fn greeted<F, Fut>(capabilities: &'static str, rest: F) -> u16
where
    F: Fn(scripted::Peer) -> Fut + Send + Sync + Copy + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    scripted::serve(1, move |_, mut peer| async move {
        peer.write("220 scripted ESMTP\r\n").await;
        peer.expect("EHLO").await;
        peer.write(&format!("250-scripted\r\n{capabilities}")).await;
        rest(peer).await;
    })
    .await
}

#[tokio::test]
async fn a_reply_sent_before_the_message_stops_the_message() {
    let port = greeted("250 PIPELINING\r\n", |mut peer| async move {
        peer.expect("MAIL").await;
        peer.expect("RCPT").await;
        peer.expect("DATA").await;
        // The stray 250 would be read as the reply to the dot.
        peer.write("250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 stray\r\n")
            .await;
        let next = peer.read_line_or_eof().await;
        assert_eq!(next, None, "the client sent the message: {next:?}");
    })
    .await;
    let mut connection = connect(&settings(port, Encryption::None)).await;
    let error = send_err(&mut connection, &["a@example.net"], b"x\r\n").await;
    assert_eq!(error.phase(), Phase::Data, "{error}");
}

#[tokio::test]
async fn authentication_required_at_mail_fails_the_session_not_the_recipients() {
    let port = greeted("250 PIPELINING\r\n", |mut peer| async move {
        peer.expect("MAIL").await;
        peer.expect("RCPT").await;
        peer.expect("DATA").await;
        peer.write(
            "530 5.7.0 Authentication required\r\n503 5.5.1 MAIL first\r\n503 5.5.1 MAIL first\r\n",
        )
        .await;
        peer.read_line_or_eof().await;
    })
    .await;
    let mut connection = connect(&settings(port, Encryption::None)).await;
    let error = send_err(&mut connection, &["a@example.net"], b"x\r\n").await;
    assert_eq!(error.phase(), Phase::Mail, "{error}");
    assert_eq!(error.reply().map(|r| r.code), Some(530));
}

#[tokio::test]
async fn an_odd_answer_to_opportunistic_starttls_falls_back_to_plain() {
    let port = scripted::serve(2, |index, mut peer| async move {
        peer.write("220 scripted ESMTP\r\n").await;
        peer.expect("EHLO").await;
        if index == 0 {
            peer.write("250-scripted\r\n250 STARTTLS\r\n").await;
            peer.expect("STARTTLS").await;
            peer.write("250 2.0.0 sure\r\n").await;
            peer.read_line_or_eof().await;
        } else {
            peer.write("250-scripted\r\n250 STARTTLS\r\n").await;
            peer.expect("QUIT").await;
            peer.write("221 bye\r\n").await;
        }
    })
    .await;
    let connection = connect(&settings(port, Encryption::StartTlsOpportunistic)).await;
    assert!(
        matches!(connection.tls(), TlsState::PlainAfterTlsFailure(_)),
        "{:?}",
        connection.tls()
    );
    connection.quit().await;
}

#[tokio::test]
async fn refusals_stand_when_the_server_closes_after_them() {
    // Many gateways close after refusing: the RSET that follows fails.
    for (envelope_replies, decided) in [
        (
            "250 ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n",
            "550 5.1.1 no such user",
        ),
        (
            "250 ok\r\n250 ok\r\n554 5.7.1 not from you\r\n",
            "554 5.7.1 not from you",
        ),
    ] {
        let port = greeted("250 PIPELINING\r\n", move |mut peer| async move {
            peer.expect("MAIL").await;
            peer.expect("RCPT").await;
            peer.expect("DATA").await;
            peer.write(envelope_replies).await;
        })
        .await;
        let mut connection = connect(&settings(port, Encryption::None)).await;
        let replies = send(
            &mut connection,
            "s@example.com",
            &["a@example.net"],
            b"x\r\n",
        )
        .await;
        assert_eq!(replies[0].to_string(), decided);
        assert!(connection.closed_by_server(), "the connection is dropped");
    }
}

#[tokio::test]
async fn odd_final_replies_are_read_not_refused() {
    // A 10 KB line, a code that changes within the reply, control bytes:
    // each would otherwise make an accepted message go again at each retry.
    for (final_reply, expected) in [
        (format!("250 2.0.0 {}\r\n", "x".repeat(10_000)), 250),
        (
            "250-2.0.0 queued\r\n550 5.7.1 rejected after all\r\n".to_string(),
            550,
        ),
        (
            "250 2.0.0 ok\x1b[2J\0\rFAKE \u{202e}gnp.exe\u{202c}\r\n".to_string(),
            250,
        ),
    ] {
        let reply_text = final_reply.clone();
        let port = scripted::serve(1, move |_, mut peer| {
            let reply_text = reply_text.clone();
            async move {
                peer.write("220 scripted ESMTP\r\n").await;
                peer.expect("EHLO").await;
                let many: String = (0..1000).map(|n| format!("250-X-EXT{n}\r\n")).collect();
                peer.write(&format!("250-scripted\r\n{many}250 PIPELINING\r\n"))
                    .await;
                peer.expect("MAIL").await;
                peer.expect("RCPT").await;
                peer.expect("DATA").await;
                peer.write("250 ok\r\n250 ok\r\n354 go\r\n").await;
                while peer.read_line().await != "." {}
                peer.write(&reply_text).await;
                peer.expect("QUIT").await;
                peer.write("221 bye\r\n").await;
            }
        })
        .await;
        let mut connection = connect(&settings(port, Encryption::None)).await;
        assert!(
            connection.capabilities().pipelining,
            "the last EHLO line counts"
        );
        let replies = send(
            &mut connection,
            "s@example.com",
            &["a@example.net"],
            b"x\r\n",
        )
        .await;
        let reply = &replies[0];
        assert_eq!(reply.code, expected, "{final_reply:?}");
        assert!(reply.text.len() <= 2000, "{}", reply.text.len());
        assert!(
            !reply
                .text
                .chars()
                .any(|c| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}')),
            "{:?}",
            reply.text
        );
        connection.quit().await;
    }
}

#[tokio::test]
async fn replies_split_across_packets_and_batched_in_one() {
    let port = scripted::serve(1, |_, mut peer| async move {
        for piece in ["2", "20 scripted", " ESMTP\r", "\n"] {
            peer.write_slowly(piece).await;
        }
        peer.expect("EHLO").await;
        for piece in ["250-scripted greets\r\n250-PIPE", "LINING\r\n250-SIZE 5000", "0\r\n250 8BITMIME\r\n"] {
            peer.write_slowly(piece).await;
        }
        // The whole pipelined group arrives before any reply is written.
        peer.expect("MAIL FROM:<s@example.com> SIZE=").await;
        peer.expect("RCPT TO:<a@example.net>").await;
        peer.expect("RCPT TO:<b@example.net>").await;
        peer.expect("DATA").await;
        peer.write("250 2.1.0 ok\r\n250 2.1.5 ok\r\n550-5.1.1 no such\r\n550 5.1.1 user here\r\n354 go\r\n")
            .await;
        loop {
            if peer.read_line().await == "." {
                break;
            }
        }
        peer.write_slowly("250 2.0.0 ").await;
        peer.write_slowly("queued\r\n").await;
        peer.expect("QUIT").await;
        peer.write("221 bye\r\n").await;
    })
    .await;
    let mut connection = connect(&settings(port, Encryption::None)).await;
    assert_eq!(connection.greeting(), "scripted ESMTP");
    let capabilities = connection.capabilities();
    assert!(capabilities.pipelining && capabilities.eight_bit_mime);
    assert_eq!(capabilities.size, Some(50_000));
    let replies = send(
        &mut connection,
        "s@example.com",
        &["a@example.net", "b@example.net"],
        b"x\r\n",
    )
    .await;
    assert_eq!(replies[0].to_string(), "250 2.0.0 queued");
    assert_eq!(replies[1].to_string(), "550 5.1.1 no such user here");
    connection.quit().await;
}

#[tokio::test]
async fn mail_parameters_follow_the_body_and_the_capabilities() {
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
    let port = scripted::serve(1, move |_, mut peer| {
        let sender = sender.clone();
        async move {
            peer.write("220 scripted\r\n").await;
            peer.expect("EHLO").await;
            peer.write("250-scripted\r\n250-SIZE\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                .await;
            let mail = peer.expect("MAIL FROM:").await;
            peer.write("250 ok\r\n").await;
            peer.expect("RCPT TO:<josé@exemple.fr>").await;
            peer.write("250 ok\r\n").await;
            peer.expect("DATA").await;
            peer.write("354 go\r\n").await;
            while peer.read_line().await != "." {}
            peer.write("250 queued\r\n").await;
            let _ = sender.send(mail);
        }
    })
    .await;
    let mut connection = connect(&settings(port, Encryption::None)).await;
    assert!(!connection.capabilities().pipelining);
    let body = "Subject: é\r\n\r\nbody\r\n".as_bytes();
    let replies = send(&mut connection, "s@example.com", &["josé@exemple.fr"], body).await;
    assert_delivered(&replies, 1);
    let mail = tokio::time::timeout(GUARD, received.recv())
        .await
        .expect("guard")
        .expect("MAIL line");
    assert_eq!(
        mail,
        format!(
            "MAIL FROM:<s@example.com> SIZE={} BODY=8BITMIME SMTPUTF8",
            body.len()
        )
    );
}

#[tokio::test]
async fn utf8_address_without_smtputf8_is_refused_locally() {
    let port = scripted::serve(1, |_, mut peer| async move {
        peer.write("220 scripted\r\n").await;
        peer.expect("EHLO").await;
        peer.write("250 scripted\r\n").await;
        // Nothing else is expected: the next line must be QUIT.
        peer.expect("QUIT").await;
        peer.write("221 bye\r\n").await;
    })
    .await;
    let mut connection = connect(&settings(port, Encryption::None)).await;
    let replies = send(
        &mut connection,
        "s@example.com",
        &["josé@exemple.fr"],
        b"x\r\n",
    )
    .await;
    assert_eq!(
        (replies[0].code, replies[0].enhanced.as_deref()),
        (553, Some("5.6.7"))
    );
    connection.quit().await;
}

/// A server that offers `extensions` and expects nothing after EHLO but
/// QUIT: whatever the client was asked to send must be refused locally.
async fn server_expecting_only_quit(extensions: &'static str) -> u16 {
    scripted::serve(1, move |_, mut peer| async move {
        peer.write("220 scripted\r\n").await;
        peer.expect("EHLO").await;
        peer.write(extensions).await;
        peer.expect("QUIT").await;
        peer.write("221 bye\r\n").await;
    })
    .await
}

#[tokio::test]
async fn content_the_server_cannot_carry_is_refused_locally_naming_the_server() {
    // (extensions offered, message, expected code, enhanced code, extension)
    let cases = [
        (
            "250-scripted\r\n250 SMTPUTF8\r\n",
            "Subject: plain\r\n\r\ncaf\u{e9}\r\n",
            (554, "5.6.3", "8BITMIME"),
        ),
        (
            "250-scripted\r\n250 8BITMIME\r\n",
            "Subject: caf\u{e9}\r\n\r\nplain\r\n",
            (553, "5.6.7", "SMTPUTF8"),
        ),
    ];
    for (extensions, body, (code, enhanced, lacking)) in cases {
        let port = server_expecting_only_quit(extensions).await;
        let mut connection = connect(&settings(port, Encryption::None)).await;
        let replies = send(
            &mut connection,
            "s@example.com",
            &["a@example.net"],
            body.as_bytes(),
        )
        .await;
        let reply = &replies[0];
        assert_eq!(
            (reply.code, reply.enhanced.as_deref()),
            (code, Some(enhanced))
        );
        assert!(reply.text.contains(lacking), "{reply}");
        assert!(reply.text.contains(&format!("127.0.0.1:{port}")), "{reply}");
        connection.quit().await;
    }
}

#[tokio::test]
async fn a_connection_the_server_closed_while_idle_is_seen_before_reuse() {
    let port = scripted::serve(2, |index, mut peer| async move {
        peer.write("220 scripted\r\n").await;
        peer.expect("EHLO").await;
        if index == 0 {
            // An idle timeout: a 421 nobody asked for, then the close.
            peer.write("250 scripted\r\n").await;
            peer.write("421 4.4.2 idle too long\r\n").await;
        } else {
            // Quiet and open: usable. Holds until the client quits.
            peer.write("250 scripted\r\n").await;
            peer.expect("QUIT").await;
            peer.write("221 bye\r\n").await;
        }
    })
    .await;
    let mut closed = connect(&settings(port, Encryption::None)).await;
    let mut open = connect(&settings(port, Encryption::None)).await;
    // The 421 and the close come when the server's task runs: on a busy
    // machine that may take a while, so look until they are seen.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !closed.closed_by_server() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server's close was never seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!open.closed_by_server());
    open.quit().await;
}

/// Plays one message whose dot is answered only once the next envelope
/// has come in behind it (the test fails by timeout if the client waits).
async fn answer_the_dot_behind_the_next_envelope(peer: &mut scripted::Peer) {
    peer.expect("MAIL FROM:<a@example.com>").await;
    peer.expect("RCPT TO:<x@example.net>").await;
    peer.expect("DATA").await;
    peer.write("250 ok\r\n250 ok\r\n354 go ahead\r\n").await;
    while peer.read_line().await != "." {}
    peer.expect("MAIL FROM:<b@example.com>").await;
    peer.expect("RCPT TO:<y@example.net>").await;
    peer.expect("DATA").await;
    peer.write("250 first queued\r\n250 ok\r\n250 ok\r\n354 go ahead\r\n")
        .await;
    while peer.read_line().await != "." {}
    peer.write("250 second queued\r\n").await;
}

#[tokio::test]
async fn the_next_envelope_goes_out_behind_a_message_whose_final_reply_is_unread() {
    let port = scripted::serve(1, |_, mut peer| async move {
        peer.write("220 scripted\r\n").await;
        peer.expect("EHLO").await;
        peer.write("250-scripted\r\n250 PIPELINING\r\n").await;
        answer_the_dot_behind_the_next_envelope(&mut peer).await;
        peer.expect("QUIT").await;
        peer.write("221 bye\r\n").await;
    })
    .await;
    let mut connection = connect(&settings(port, Encryption::None)).await;
    let (first_body, second_body) = (message("p1", "one\r\n"), message("p2", "two\r\n"));
    let first = Envelope {
        mail_from: "a@example.com",
        recipients: &["x@example.net"],
    };
    let second = Envelope {
        mail_from: "b@example.com",
        recipients: &["y@example.net"],
    };
    let opened = connection.open(&first, &first_body).await.unwrap();
    let Sent::AwaitingFinal(awaiting) = connection
        .proceed(opened, &first, &first_body, true)
        .await
        .unwrap()
    else {
        panic!("a pipelining server leaves the final reply to read later");
    };
    let next = connection.open(&second, &second_body).await.unwrap();
    let replies = connection.finish(awaiting).await.unwrap();
    assert_eq!(replies[0].to_string(), "250 first queued");
    let Sent::Done(replies) = connection
        .proceed(next, &second, &second_body, false)
        .await
        .unwrap()
    else {
        panic!("without leave_final the transaction is done");
    };
    assert_eq!(replies[0].to_string(), "250 second queued");
    connection.quit().await;
}

#[tokio::test]
async fn without_pipelining_the_final_reply_is_read_at_once() {
    let port = scripted::serve(1, |_, mut peer| async move {
        peer.write("220 scripted\r\n").await;
        peer.expect("EHLO").await;
        peer.write("250 scripted\r\n").await;
        peer.expect("MAIL").await;
        peer.write("250 ok\r\n").await;
        peer.expect("RCPT").await;
        peer.write("250 ok\r\n").await;
        peer.expect("DATA").await;
        peer.write("354 go ahead\r\n").await;
        while peer.read_line().await != "." {}
        peer.write("250 queued\r\n").await;
        peer.expect("QUIT").await;
        peer.write("221 bye\r\n").await;
    })
    .await;
    let mut connection = connect(&settings(port, Encryption::None)).await;
    let body = message("l1", "lockstep\r\n");
    let envelope = Envelope {
        mail_from: "a@example.com",
        recipients: &["x@example.net"],
    };
    let opened = connection.open(&envelope, &body).await.unwrap();
    let sent = connection.proceed(opened, &envelope, &body, true).await;
    let Ok(Sent::Done(replies)) = sent else {
        panic!("RFC 2920: only a server that offers PIPELINING gets commands behind the dot");
    };
    assert_eq!(replies[0].to_string(), "250 queued");
    connection.quit().await;
}

#[tokio::test]
async fn go_ahead_with_no_valid_recipient_gets_an_empty_message_then_rset() {
    let port = scripted::serve(1, |_, mut peer| async move {
        peer.write("220 scripted\r\n").await;
        peer.expect("EHLO").await;
        peer.write("250-scripted\r\n250 PIPELINING\r\n").await;
        peer.expect("MAIL").await;
        peer.expect("RCPT").await;
        peer.expect("DATA").await;
        // A broken server: it says 354 although it refused the only recipient.
        peer.write("250 ok\r\n550 5.1.1 unknown\r\n354 go ahead\r\n")
            .await;
        peer.expect(".").await;
        peer.write("554 5.5.1 no valid recipients\r\n").await;
        peer.expect("RSET").await;
        peer.write("250 reset\r\n").await;
        peer.expect("QUIT").await;
        peer.write("221 bye\r\n").await;
    })
    .await;
    let mut connection = connect(&settings(port, Encryption::None)).await;
    let replies = send(
        &mut connection,
        "s@example.com",
        &["a@example.net"],
        b"x\r\n",
    )
    .await;
    assert_eq!(replies[0].to_string(), "550 5.1.1 unknown");
    connection.quit().await;
}

#[tokio::test]
async fn ehlo_refused_falls_back_to_helo() {
    let port = scripted::serve(1, |_, mut peer| async move {
        peer.write("220 old server\r\n").await;
        peer.expect("EHLO client.test").await;
        peer.write("502 5.5.2 what?\r\n").await;
        peer.expect("HELO client.test").await;
        peer.write("250 hello\r\n").await;
        // No SIZE, no BODY=8BITMIME after HELO.
        assert_eq!(peer.read_line().await, "MAIL FROM:<s@example.com>");
        peer.write("250 ok\r\n").await;
        peer.expect("RCPT").await;
        peer.write("250 ok\r\n").await;
        peer.expect("DATA").await;
        peer.write("354 go\r\n").await;
        while peer.read_line().await != "." {}
        peer.write("250 done\r\n").await;
    })
    .await;
    let mut connection = connect(&settings(port, Encryption::None)).await;
    assert!(!connection.capabilities().esmtp);
    let replies = send(
        &mut connection,
        "s@example.com",
        &["a@example.net"],
        b"Subject: plain\r\n\r\nascii only\r\n",
    )
    .await;
    assert_delivered(&replies, 1);
}

#[tokio::test]
async fn over_long_replies_are_cut_and_endless_ones_end_the_session() {
    // A line over the limit keeps its start; the rest is read and dropped.
    let port = scripted::serve(1, |_, mut peer| async move {
        peer.write(&format!("220 {}\r\n", "x".repeat(3000))).await;
        peer.expect("EHLO").await;
        peer.write("250 ok\r\n").await;
        peer.read_line_or_eof().await;
    })
    .await;
    let connection = connect(&settings(port, Encryption::None)).await;
    assert!(connection.greeting().len() < 2000);

    // A reply that never ends holds the session only until the server
    // gives up or the phase's timeout: nothing is buffered past the limit.
    let port = scripted::serve(1, |_, mut peer| async move {
        peer.write("220 ok\r\n").await;
        peer.expect("EHLO").await;
        peer.write(&"250-more\r\n".repeat(150)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    let error = connect_err(&settings(port, Encryption::None)).await;
    assert_eq!(error.phase(), Phase::Ehlo, "{error}");

    let port = scripted::serve(1, |_, mut peer| async move {
        peer.write("hello, I am not SMTP\r\n").await;
        peer.read_line_or_eof().await;
    })
    .await;
    let error = connect_err(&settings(port, Encryption::None)).await;
    assert!(
        matches!(
            error,
            SessionError::Protocol {
                phase: Phase::Greeting,
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn failed_opportunistic_handshake_reconnects_in_plain() {
    let port = scripted::serve(2, |connection, mut peer| async move {
        peer.write("220 scripted\r\n").await;
        peer.expect("EHLO").await;
        peer.write("250-scripted\r\n250 STARTTLS\r\n").await;
        if connection == 0 {
            peer.expect("STARTTLS").await;
            peer.write("220 go ahead\r\n").await;
            peer.read_some().await; // the ClientHello
            peer.write("this is not a TLS record\r\n").await;
        } else {
            // The second connection must not try TLS again.
            peer.expect("QUIT").await;
            peer.write("221 bye\r\n").await;
        }
    })
    .await;
    let connection = connect(&settings(port, Encryption::StartTlsOpportunistic)).await;
    match connection.tls() {
        TlsState::PlainAfterTlsFailure(reason) => assert!(!reason.is_empty()),
        other => panic!("expected a plain fallback, got {other:?}"),
    }
    connection.quit().await;

    // Required STARTTLS does not fall back.
    let port = scripted::serve(1, |_, mut peer| async move {
        peer.write("220 scripted\r\n").await;
        peer.expect("EHLO").await;
        peer.write("250-scripted\r\n250 STARTTLS\r\n").await;
        peer.expect("STARTTLS").await;
        peer.write("220 go ahead\r\n").await;
        peer.read_some().await;
        peer.write("this is not a TLS record\r\n").await;
    })
    .await;
    let error = connect_err(&settings(port, Encryption::StartTls)).await;
    assert_eq!(error.phase(), Phase::Tls);
}

#[tokio::test]
async fn opportunistic_starttls_refused_stays_on_the_same_plain_connection() {
    let port = scripted::serve(1, |_, mut peer| async move {
        peer.write("220 scripted\r\n").await;
        peer.expect("EHLO").await;
        peer.write("250-scripted\r\n250 STARTTLS\r\n").await;
        peer.expect("STARTTLS").await;
        peer.write("454 4.7.0 TLS not available\r\n").await;
        peer.expect("QUIT").await;
        peer.write("221 bye\r\n").await;
    })
    .await;
    let connection = connect(&settings(port, Encryption::StartTlsOpportunistic)).await;
    assert_eq!(
        connection.tls(),
        TlsState::PlainAfterTlsFailure("STARTTLS refused: 454 4.7.0 TLS not available".to_string())
    );
    connection.quit().await;
}

#[tokio::test]
async fn bytes_injected_after_the_starttls_reply_are_refused() {
    let port = scripted::serve(1, |_, mut peer| async move {
        peer.write("220 scripted\r\n").await;
        peer.expect("EHLO").await;
        peer.write("250-scripted\r\n250 STARTTLS\r\n").await;
        peer.expect("STARTTLS").await;
        peer.write("220 go ahead\r\n250 injected\r\n").await;
        peer.read_line_or_eof().await;
    })
    .await;
    let error = connect_err(&settings(port, Encryption::StartTls)).await;
    assert!(
        matches!(
            error,
            SessionError::Protocol {
                phase: Phase::StartTls,
                ..
            }
        ),
        "{error}"
    );
}

// ------------------------------------------------- Postfix's smtp-sink

/// Runs Postfix's `smtp-sink` on a free port, or None (with the reason
/// printed) when it is not installed.
async fn postfix_smtp_sink(options: &[&str]) -> Option<(u16, Child)> {
    let Some(binary) = ["/usr/sbin/smtp-sink", "/usr/bin/smtp-sink"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
    else {
        peers::missing_peer(
            "Postfix's smtp-sink",
            "package postfix: scripts/install-test-deps.sh",
        );
        return None;
    };
    // smtp-sink cannot report a port it chose, so pick a free one; retry in
    // the unlikely case another process takes it first.
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let mut command = Command::new(&binary);
        if running_as_root() {
            // As root it insists on dropping privileges.
            command.args(["-u", "nobody"]);
        }
        command
            .args(options)
            .arg(format!("127.0.0.1:{port}"))
            .arg("64");
        let mut child = command
            .kill_on_drop(true)
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Some((port, child));
            }
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    panic!("smtp-sink did not start");
}

fn running_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .is_some_and(|ids| ids.split_whitespace().next() == Some("0"))
}

#[tokio::test]
async fn postfix_smtp_sink_pipelined_lockstep_and_helo_only() {
    for options in [&[][..], &["-p"][..], &["-e"][..]] {
        let Some((port, _child)) = postfix_smtp_sink(options).await else {
            return;
        };
        let mut connection = connect(&settings(port, Encryption::None)).await;
        assert_eq!(
            connection.capabilities().pipelining,
            options.is_empty(),
            "{options:?}"
        );
        assert_eq!(connection.capabilities().esmtp, options != ["-e"]);
        for number in 0..5 {
            let body = message(&format!("pf{number}"), ".dot\r\n");
            let replies = send(
                &mut connection,
                "s@example.com",
                &["a@example.net", "b@example.net"],
                &body,
            )
            .await;
            assert_delivered(&replies, 2);
        }
        connection.quit().await;
    }
}

#[tokio::test]
async fn postfix_smtp_sink_refusals() {
    // -f RCPT: every RCPT gets a hard error; -r MAIL: MAIL gets a soft one.
    let Some((port, _child)) = postfix_smtp_sink(&["-f", "RCPT"]).await else {
        return;
    };
    let mut connection = connect(&settings(port, Encryption::None)).await;
    let replies = send(
        &mut connection,
        "s@example.com",
        &["a@example.net", "b@example.net"],
        b"x\r\n",
    )
    .await;
    assert!(
        replies.iter().all(|reply| reply.is_permanent()),
        "{replies:?}"
    );
    let replies = send(
        &mut connection,
        "s@example.com",
        &["c@example.net"],
        b"x\r\n",
    )
    .await;
    assert!(replies[0].is_permanent());

    let Some((port, _child)) = postfix_smtp_sink(&["-r", "MAIL"]).await else {
        return;
    };
    let mut connection = connect(&settings(port, Encryption::None)).await;
    let replies = send(
        &mut connection,
        "s@example.com",
        &["a@example.net", "b@example.net"],
        b"x\r\n",
    )
    .await;
    assert!(
        replies.iter().all(|reply| reply.is_transient()),
        "{replies:?}"
    );
}

// ------------------------------------------------------ compile checks

/// Compiles only if the client's futures are `Send` with borrowed envelopes,
/// as the delivery workers need to spawn them. A generic iterator held across
/// an await inside `send` once broke this ("one type is more general than the
/// other"), so this pins it down.
#[allow(dead_code)]
fn client_futures_are_send<'a>(
    connection: &'a mut Connection,
    settings: &'a ClientSettings,
    addresses: &'a [String],
    body: &'a [u8],
) -> impl Future<Output = ()> + Send + 'a {
    let recipients: Vec<&'a str> = addresses.iter().map(String::as_str).collect();
    async move {
        let envelope = Envelope {
            mail_from: "",
            recipients: &recipients,
        };
        let _ = connection.send(&envelope, body).await;
        if let Ok(other) = Connection::connect(settings).await {
            other.quit().await;
        }
    }
}

// ---------------------------------------------------------- throughput

/// Not a test: `cargo test -p sendengine --release --test smtp_client -- --ignored --nocapture throughput`
/// prints messages/s over one pipelined connection with 10 KB bodies.
#[tokio::test]
#[ignore]
async fn throughput_one_connection_10kb() {
    let sink = Sink::spawn(&[], false).await;
    let mut connection = connect(&sink.settings(Encryption::None)).await;
    let body = message("bench", &("x".repeat(98) + "\r\n").repeat(100));
    let count = 20_000;
    let started = std::time::Instant::now();
    for _ in 0..count {
        assert_delivered(
            &send(&mut connection, "s@example.com", &["a@example.net"], &body).await,
            1,
        );
    }
    let elapsed = started.elapsed();
    println!(
        "{count} messages of {} bytes in {elapsed:?}: {:.0} messages/s",
        body.len(),
        count as f64 / elapsed.as_secs_f64()
    );
}

/// Hand-written SMTP peers: a loopback listener that plays a script against
/// each accepted connection, for replies no real server sends on demand.
mod scripted {
    use super::*;
    use tokio::net::TcpStream;

    pub struct Peer {
        stream: BufReader<TcpStream>,
    }

    impl Peer {
        pub async fn write(&mut self, text: &str) {
            self.stream
                .get_mut()
                .write_all(text.as_bytes())
                .await
                .expect("peer write");
        }

        /// Writes and waits a little, so the client most likely reads this
        /// piece on its own (the test is correct either way).
        pub async fn write_slowly(&mut self, text: &str) {
            self.write(text).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        /// The next line without CRLF; panics when the client closed.
        pub async fn read_line(&mut self) -> String {
            self.read_line_or_eof()
                .await
                .expect("client closed the connection")
        }

        /// Reads whatever the client sent next (a TLS ClientHello has no lines).
        pub async fn read_some(&mut self) {
            let read = self.stream.fill_buf();
            let length = match tokio::time::timeout(GUARD, read).await {
                Ok(Ok(bytes)) => bytes.len(),
                _ => 0,
            };
            self.stream.consume(length);
        }

        pub async fn read_line_or_eof(&mut self) -> Option<String> {
            let mut line = Vec::new();
            let read = self.stream.read_until(b'\n', &mut line);
            match tokio::time::timeout(GUARD, read).await {
                Ok(Ok(0)) | Ok(Err(_)) => None,
                Ok(Ok(_)) => Some(
                    String::from_utf8_lossy(&line)
                        .trim_end_matches(['\r', '\n'])
                        .to_string(),
                ),
                Err(_) => panic!("peer waited too long for the client"),
            }
        }

        /// Reads a line and checks how it starts; returns it.
        pub async fn expect(&mut self, prefix: &str) -> String {
            let line = self.read_line().await;
            assert!(
                line.starts_with(prefix),
                "expected {prefix:?}, got {line:?}"
            );
            line
        }
    }

    /// Listens on 127.0.0.1:0 and plays `script` on the next `connections`
    /// connections, one after the other. Panics in the script show up as a
    /// failed client call (the peer closes) plus the panic message.
    pub async fn serve<S, F>(connections: usize, script: S) -> u16
    where
        S: Fn(usize, Peer) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        tokio::spawn(async move {
            for index in 0..connections {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                script(
                    index,
                    Peer {
                        stream: BufReader::new(stream),
                    },
                )
                .await;
            }
        });
        port
    }
}
