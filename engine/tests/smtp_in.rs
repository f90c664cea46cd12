//! The injection server against bad input, over a raw TCP connection so
//! that each test controls the exact bytes. Every refusal must carry a
//! code, an enhanced status code and a sentence, and the session (and the
//! daemon) must carry on.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::{Daemon, DaemonConfig, Sink};

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut c = Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let greeting = c.reply();
        assert!(greeting.starts_with("220 "), "{greeting}");
        c
    }

    /// Reads one (possibly multi-line) reply; returns its last line.
    fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read reply");
            assert!(n > 0, "connection closed while waiting for a reply");
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_owned();
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// EHLO, one transaction from a@example.com to b@example.net, DATA:
    /// the message's bytes go next.
    fn start_data(&mut self) {
        self.cmd("EHLO client.test");
        self.cmd("MAIL FROM:<a@example.com>");
        self.cmd("RCPT TO:<b@example.net>");
        let go = self.cmd("DATA");
        assert!(go.starts_with("354"), "{go}");
    }
}

fn assert_reply(reply: &str, code: &str, enhanced: &str) {
    let mut parts = reply.splitn(3, ' ');
    assert_eq!(parts.next(), Some(code), "{reply}");
    assert_eq!(parts.next(), Some(enhanced), "{reply}");
    let text = parts.next().unwrap_or("");
    assert!(text.len() > 10, "refusal without a sentence: {reply}");
}

fn small_daemon(sink: &Sink) -> Daemon {
    let mut cfg = DaemonConfig::new(sink.addr.port());
    cfg.extra_smtp_in = "max_recipients = 3\nmax_errors = 50\n".into();
    Daemon::start(cfg)
}

#[test]
fn out_of_order_commands_are_refused_and_the_session_goes_on() {
    let sink = Sink::start(&[]);
    let daemon = small_daemon(&sink);
    let mut c = Client::connect(daemon.addr);
    assert_reply(&c.cmd("MAIL FROM:<a@example.com>"), "503", "5.5.1");
    assert!(c.cmd("EHLO client.test").starts_with("250 "));
    assert_reply(&c.cmd("RCPT TO:<b@example.net>"), "503", "5.5.1");
    assert_reply(&c.cmd("DATA"), "503", "5.5.1");
    assert!(c.cmd("MAIL FROM:<a@example.com>").starts_with("250 2.1.0"));
    assert_reply(&c.cmd("MAIL FROM:<a@example.com>"), "503", "5.5.1");
    assert_reply(&c.cmd("DATA"), "554", "5.5.1");
    assert_reply(&c.cmd("BOGUS"), "500", "5.5.1");
    assert_reply(&c.cmd("RCPT TO:<not an address>"), "501", "5.1.3");
    assert_eq!(
        c.cmd("VRFY someone"),
        "252 2.5.0 Cannot verify the address, but will accept mail for it"
    );
    assert!(c.cmd("RCPT TO:<b@example.net>").starts_with("250 2.1.5"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: after errors\r\n\r\nstill fine\r\n.\r\n");
    assert!(c.reply().starts_with("250 2.0.0 Queued as "));
    assert!(c.cmd("QUIT").starts_with("221"));
    sink.wait_messages(1, Duration::from_secs(60));
}

#[test]
fn over_long_command_line() {
    let sink = Sink::start(&[]);
    let daemon = small_daemon(&sink);
    let mut c = Client::connect(daemon.addr);
    c.cmd("EHLO client.test");
    let long = format!("MAIL FROM:<{}@example.com>", "a".repeat(5000));
    let reply = c.cmd(&long);
    assert_reply(&reply, "500", "5.5.2");
    assert!(reply.contains("2048"), "the limit is named: {reply}");
    assert!(c.cmd("NOOP").starts_with("250"));
}

#[test]
fn over_size_message_is_refused_both_ways() {
    let sink = Sink::start(&[]);
    let daemon = small_daemon(&sink);
    let mut c = Client::connect(daemon.addr);
    c.cmd("EHLO client.test");
    // Announced with SIZE: refused at MAIL.
    assert_reply(
        &c.cmd("MAIL FROM:<a@example.com> SIZE=5000000"),
        "552",
        "5.3.4",
    );
    // Not announced: read to the end, then refused.
    c.cmd("MAIL FROM:<a@example.com>");
    c.cmd("RCPT TO:<b@example.net>");
    assert!(c.cmd("DATA").starts_with("354"));
    let line = format!("{}\r\n", "y".repeat(998));
    for _ in 0..1100 {
        c.send(line.as_bytes());
    }
    c.send(b".\r\n");
    assert_reply(&c.reply(), "552", "5.3.4");
    // The session is still usable and nothing was queued.
    assert!(c.cmd("RSET").starts_with("250"));
    assert!(daemon.events_of("reception").is_empty());
}

#[test]
fn too_many_recipients_get_452_and_the_rest_is_sent() {
    let sink = Sink::start(&[]);
    let daemon = small_daemon(&sink);
    let mut c = Client::connect(daemon.addr);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@example.com>");
    for i in 0..3 {
        assert!(
            c.cmd(&format!("RCPT TO:<r{i}@example.net>"))
                .starts_with("250")
        );
    }
    assert_reply(&c.cmd("RCPT TO:<r3@example.net>"), "452", "4.5.3");
    c.cmd("DATA");
    c.send(b"Subject: three\r\n\r\nx\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    let got = sink.wait_messages(1, Duration::from_secs(60));
    assert_eq!(got[0]["rcpts"].as_array().unwrap().len(), 3);
}

#[test]
fn relay_is_refused_outside_relay_networks_unless_authenticated() {
    let sink = Sink::start(&[]);
    let mut cfg = DaemonConfig::new(sink.addr.port());
    cfg.relay_networks = vec!["10.0.0.0/8".into()];
    cfg.extra_top = "[[user]]\nname = \"app\"\npassword = \"s3cret\"\n".into();
    let daemon = Daemon::start(cfg);

    let mut c = Client::connect(daemon.addr);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@example.com>");
    let reply = c.cmd("RCPT TO:<victim@example.net>");
    assert_reply(&reply, "554", "5.7.1");
    assert!(reply.contains("Relay access denied"), "{reply}");
    c.cmd("RSET");
    // Wrong password, then the right one (PLAIN: \0app\0s3cret).
    assert_reply(&c.cmd("AUTH PLAIN AGFwcAB3cm9uZw=="), "535", "5.7.8");
    assert!(
        c.cmd("AUTH PLAIN AGFwcABzM2NyZXQ=")
            .starts_with("235 2.7.0")
    );
    c.cmd("MAIL FROM:<a@example.com>");
    assert!(c.cmd("RCPT TO:<friend@example.net>").starts_with("250"));
    c.cmd("DATA");
    c.send(b"Subject: authed\r\n\r\nx\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    let d = &daemon.wait_events("delivery", 1, Duration::from_secs(60))[0];
    assert_eq!(d["tenant"], "app");
}

#[test]
fn auth_login_and_plain_over_loopback() {
    let sink = Sink::start(&[]);
    let mut cfg = DaemonConfig::new(sink.addr.port());
    cfg.extra_top = "[[user]]\nname = \"app\"\npassword = \"s3cret\"\n".into();
    let daemon = Daemon::start(cfg);
    let mut c = Client::connect(daemon.addr);
    c.cmd("EHLO client.test");
    assert_eq!(c.cmd("AUTH LOGIN"), "334 VXNlcm5hbWU6");
    assert_eq!(c.cmd("YXBw"), "334 UGFzc3dvcmQ6");
    assert!(c.cmd("czNjcmV0").starts_with("235"));
    assert_reply(&c.cmd("AUTH LOGIN"), "503", "5.5.1");

    // PLAIN refuses to act as another identity (RFC 4616 section 2).
    let mut c = Client::connect(daemon.addr);
    c.cmd("EHLO client.test");
    // other\0app\0s3cret: app's password, to act as `other`.
    let refused = c.cmd("AUTH PLAIN b3RoZXIAYXBwAHMzY3JldA==");
    assert_reply(&refused, "535", "5.7.8");
    assert!(refused.contains("authorization identity"), "{refused}");
    // app\0app\0s3cret: the user itself, as RFC 4616 allows.
    assert!(
        c.cmd("AUTH PLAIN YXBwAGFwcABzM2NyZXQ=")
            .starts_with("235 2.7.0")
    );
}

#[test]
fn addresses_rfc_5321_does_not_allow_are_refused_at_rcpt() {
    let sink = Sink::start(&[]);
    let daemon = small_daemon(&sink);
    let mut c = Client::connect(daemon.addr);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@example.com>");
    for bad in [
        "b@@example.net",
        ".b@example.net",
        "b..c@example.net",
        "b(comment)@example.net",
        "user@[300.1.1.1]",
    ] {
        assert_reply(&c.cmd(&format!("RCPT TO:<{bad}>")), "501", "5.1.3");
    }
    assert!(
        c.cmd("RCPT TO:<\"john doe\"@example.net>")
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<user@[127.0.0.1]>").starts_with("250"));
    c.cmd("RSET");
    assert_reply(&c.cmd("MAIL FROM:<a..b@example.com>"), "501", "5.1.3");
}

#[test]
fn refusals_quote_the_client_back_in_printable_ascii_only() {
    let sink = Sink::start(&[]);
    let daemon = small_daemon(&sink);
    let mut c = Client::connect(daemon.addr);
    c.send(b"FO\rO\x1b[2J bar\r\n");
    let mut raw = Vec::new();
    c.reader.read_until(b'\n', &mut raw).unwrap();
    let line = &raw[..raw.len() - 2];
    assert!(
        line.iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    assert_reply(&String::from_utf8_lossy(line), "500", "5.5.1");
    assert!(c.cmd("NOOP").starts_with("250"), "the session goes on");
}

#[test]
fn text_where_the_header_should_be_is_relayed_as_body() {
    let store = tempfile::tempdir().unwrap();
    let sink = Sink::start(&["--store-dir", store.path().to_str().unwrap()]);
    let daemon = small_daemon(&sink);
    let mut c = Client::connect(daemon.addr);
    c.start_data();
    c.send(b"Hello world\r\nsecond line\r\n\r\nthird\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    let got = sink.wait_messages(1, Duration::from_secs(60));
    let seq = got[0]["seq"].as_u64().unwrap();
    let text = std::fs::read_to_string(store.path().join(format!("{seq}.eml"))).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an empty line");
    assert!(!head.contains("Hello"), "{text}");
    assert!(head.contains("Message-ID: <"), "{text}");
    assert!(
        body.starts_with("Hello world\r\nsecond line\r\n\r\nthird\r\n"),
        "{text}"
    );
}

#[test]
fn smuggled_end_of_data_is_not_an_end() {
    let sink = Sink::start(&[]);
    let daemon = small_daemon(&sink);
    let mut c = Client::connect(daemon.addr);
    c.start_data();
    // A bare-LF "end" followed by a smuggled transaction, then the real end.
    c.send(b"Subject: smuggle\r\n\r\nbody\n.\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<x@example.net>\r\nDATA\r\n\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
    let got = sink.wait_messages(1, Duration::from_secs(60));
    assert_eq!(got.len(), 1);
    assert_eq!(
        daemon.events_of("reception").len(),
        1,
        "one message, not two"
    );
}

#[test]
fn pipelined_transaction_gets_all_replies() {
    let sink = Sink::start(&[]);
    let daemon = small_daemon(&sink);
    let mut c = Client::connect(daemon.addr);
    c.cmd("EHLO client.test");
    c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n");
    assert!(c.reply().starts_with("250 2.1.0"));
    assert!(c.reply().starts_with("250 2.1.5"));
    assert!(c.reply().starts_with("250 2.1.5"));
    assert!(c.reply().starts_with("354"));
    c.send(b"Subject: piped\r\n\r\nx\r\n.\r\nQUIT\r\n");
    assert!(c.reply().starts_with("250"));
    assert!(c.reply().starts_with("221"));
}

/// A connection per message, as PHP mailers and cron scripts send: every
/// session ends with QUIT, and its 221 arrives whole, followed by a clean
/// end of stream (the server's FIN travels with the 221). Python's smtplib
/// checks the reply to each QUIT; a raw client checks the bytes and that
/// the stream ends without a reset, also when QUIT is pipelined.
#[test]
fn every_connection_ends_with_its_221_then_a_clean_end() {
    let sink = Sink::start(&[]);
    let daemon = small_daemon(&sink);
    if !support::python3_missing("smtplib, a connection per message") {
        let script = r#"
import smtplib, sys
host, port = sys.argv[1], int(sys.argv[2])
for i in range(20):
    s = smtplib.SMTP(host, port, timeout=30)
    s.sendmail("a@example.com", ["b@example.net"], "Subject: %d\r\n\r\nHello.\r\n" % i)
    code, text = s.quit()
    print(code, text.decode())
"#;
        let args = [daemon.addr.ip().to_string(), daemon.addr.port().to_string()];
        let out = support::python(script, &args).expect("python3 runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout.lines().filter(|l| *l == "221 2.0.0 Bye").count(),
            20,
            "{stdout}"
        );
        sink.wait_messages(20, Duration::from_secs(60));
    }
    // QUIT after the EHLO reply; then EHLO, NOOP and QUIT in one write.
    let mut c = Client::connect(daemon.addr);
    assert!(c.cmd("EHLO client.test").starts_with("250 "));
    c.send(b"QUIT\r\n");
    assert_eq!(read_to_clean_end(c), "221 2.0.0 Bye\r\n");
    let mut c = Client::connect(daemon.addr);
    c.send(b"EHLO client.test\r\nNOOP\r\nQUIT\r\n");
    let rest = read_to_clean_end(c);
    assert!(rest.starts_with("250-"), "{rest:?}");
    assert!(
        rest.ends_with("\r\n250 2.0.0 OK\r\n221 2.0.0 Bye\r\n"),
        "{rest:?}"
    );
}

/// Everything the server still sends; fails on a reset.
fn read_to_clean_end(mut c: Client) -> String {
    let mut rest = String::new();
    c.reader
        .read_to_string(&mut rest)
        .expect("the replies, then the end of stream (not a reset)");
    rest
}

#[test]
fn check_config_reports_errors_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config.toml")).unwrap();
    std::fs::write(
        &path,
        example.replace("max_message_size = \"25MB\"", "max_message_size = \"lots\""),
    )
    .unwrap();
    let out = std::process::Command::new(support::daemon_binary())
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("smtp_in.max_message_size") && err.contains("lots"),
        "{err}"
    );

    let good = std::process::Command::new(support::daemon_binary())
        .arg("--check-config")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../config.toml"))
        .output()
        .unwrap();
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
}

/// Writes a self-signed certificate for localhost; returns (cert, key) paths.
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
    (c, k)
}

#[test]
fn starttls_then_auth_with_smtplib_and_swaks() {
    let sink = Sink::start(&[]);
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path());
    let mut cfg = DaemonConfig::new(sink.addr.port());
    cfg.relay_networks = vec![];
    cfg.extra_top = "[[user]]\nname = \"app\"\npassword = \"s3cret\"\n".into();
    cfg.extra_smtp_in = format!("tls_cert = {:?}\ntls_key = {:?}\n", cert, key);
    let daemon = Daemon::start(cfg);

    // STARTTLS is offered; after it the EHLO state is reset (RFC 3207).
    let mut c = Client::connect(daemon.addr);
    c.send(b"EHLO client.test\r\n");
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        c.reader.read_line(&mut line).unwrap();
        lines.push(line.trim_end().to_owned());
        if line.as_bytes()[3] == b' ' {
            break;
        }
    }
    assert!(lines.iter().any(|l| l == "250-STARTTLS"), "{lines:?}");

    let script = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
with smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=30) as s:
    s.ehlo("tls.test")
    s.starttls(context=ctx)
    s.ehlo("tls.test")
    assert "auth" in s.esmtp_features, s.esmtp_features
    s.login("app", "s3cret")
    s.sendmail("a@example.com", ["tls@example.net"], "Message-ID: <tls@test>\r\nSubject: tls\r\n\r\nsecret\r\n")
print("sent")
"#;
    let out = support::python(
        script,
        &[daemon.addr.ip().to_string(), daemon.addr.port().to_string()],
    )
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("sent"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = sink.wait_messages(1, Duration::from_secs(60));
    assert_eq!(got[0]["message_id"], "<tls@test>");
    let stored_events = daemon.wait_events("delivery", 1, Duration::from_secs(60));
    assert_eq!(stored_events[0]["tenant"], "app");

    let swaks = std::process::Command::new("swaks")
        .args([
            "--server",
            &daemon.addr.to_string(),
            "--tls",
            "--auth",
            "PLAIN",
        ])
        .args(["--auth-user", "app", "--auth-password", "s3cret"])
        .args(["--from", "a@example.com", "--to", "swaks@example.net"])
        .args([
            "--header",
            "Message-ID: <swaks@test>",
            "--header",
            "X-Channel: transactional",
        ])
        .output();
    match swaks {
        Err(_) => support::missing_peer("swaks", "scripts/install-test-deps.sh"),
        Ok(out) => {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            let got = sink.wait_messages(2, Duration::from_secs(60));
            assert!(
                got.iter().any(|m| m["rcpts"][0] == "swaks@example.net"),
                "{got:?}"
            );
            let d = daemon.wait_events("delivery", 2, Duration::from_secs(60));
            assert!(d.iter().any(|e| e["channel"] == "transactional"));
        }
    }
}

#[test]
fn connection_limit_and_idle_timeout() {
    let sink = Sink::start(&[]);
    let mut cfg = DaemonConfig::new(sink.addr.port());
    cfg.extra_smtp_in = "max_connections = 2\ncommand_timeout = \"1s\"\n".into();
    let daemon = Daemon::start(cfg);
    let mut first = Client::connect(daemon.addr);
    let _second = Client::connect(daemon.addr);

    // The third connection is told why and closed.
    let stream = TcpStream::connect(daemon.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    assert_reply(line.trim_end(), "421", "4.3.2");

    // An idle client is told it timed out, then the slot is free again.
    assert_reply(&first.reply(), "421", "4.4.2");
    drop(first);
    let mut again = support::wait_for(Duration::from_secs(30), "a free connection slot", || {
        let stream = TcpStream::connect(daemon.addr).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .ok()?;
        let mut reader = BufReader::new(stream.try_clone().ok()?);
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        line.starts_with("220 ").then_some(Client {
            reader,
            writer: stream,
        })
    });
    assert!(again.cmd("NOOP").starts_with("250"));
}

/// DSN parameters are refused by name (we do not offer DSN), never
/// accepted and dropped. Python's smtplib sends them as it would to any server.
#[test]
fn dsn_parameters_are_refused_with_555() {
    let sink = Sink::start(&[]);
    let daemon = small_daemon(&sink);
    let script = r#"
import smtplib, sys
host, port = sys.argv[1], int(sys.argv[2])
with smtplib.SMTP(host, port, timeout=30) as s:
    s.ehlo("client.test")
    print("dsn" if s.has_extn("dsn") else "no-dsn")
    for mail_opts, rcpt_opts in ((["RET=HDRS"], []), (["ENVID=abc"], []), ([], ["NOTIFY=NEVER"]), ([], ["ORCPT=rfc822;b@example.net"])):
        try:
            s.sendmail("a@example.com", ["b@example.net"], "Subject: x\r\n\r\nx\r\n", mail_opts, rcpt_opts)
            print("accepted")
        except smtplib.SMTPSenderRefused as e:
            print(e.smtp_code, e.smtp_error.decode())
        except smtplib.SMTPRecipientsRefused as e:
            code, text = e.recipients["b@example.net"]
            print(code, text.decode())
        s.rset()
"#;
    let out = support::python(
        script,
        &[daemon.addr.ip().to_string(), daemon.addr.port().to_string()],
    )
    .expect("python3 is required (scripts/install-test-deps.sh)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "no-dsn");
    for (line, name) in lines[1..].iter().zip(["RET", "ENVID", "NOTIFY", "ORCPT"]) {
        assert!(line.starts_with("555 5.5.4 "), "{line}");
        assert!(line.contains(&format!("`{name}`")), "{line}");
    }
    assert_eq!(lines.len(), 5, "{text}");
    assert!(daemon.events_of("reception").is_empty());
}
