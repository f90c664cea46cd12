//! End to end: clients we did not write (Python's smtplib, the mail-send
//! crate) inject into the real `sendengine` binary, which relays to the real
//! `sendengine-sink`. Checks what arrives and what the event log says.

mod support;

use std::time::Duration;

use support::{Daemon, DaemonConfig, Sink, free_port, smtplib_send, wait_for};

const LONG: Duration = Duration::from_secs(60);

#[test]
fn single_message_is_relayed_and_logged() {
    let sink = Sink::start(&[]);
    let daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    let out = smtplib_send(
        daemon.addr,
        "app@example.com",
        &["one@example.net"],
        "<single@test>",
    );
    assert!(out.contains("refused=0"), "{out}");

    let got = sink.wait_messages(1, LONG);
    assert_eq!(got[0]["message_id"], "<single@test>");
    assert_eq!(got[0]["rcpts"][0], "one@example.net");
    assert_eq!(got[0]["mail_from"], "app@example.com");

    let delivered = daemon.wait_events("delivery", 1, LONG);
    let received = daemon.events_of("reception");
    assert_eq!(received.len(), 1);
    let d = &delivered[0];
    assert_eq!(d["recipient"], "one@example.net");
    assert_eq!(d["header_message_id"], "<single@test>");
    assert_eq!(d["message_id"], received[0]["message_id"]);
    assert_eq!(d["route"], "test-sink");
    assert_eq!(d["channel"], "marketing");
    assert_eq!(d["attempt"], 1);
    assert_eq!(d["reply"]["code"], 250);
    assert!(d["time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn the_relayed_message_keeps_its_content() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().to_str().unwrap().to_owned();
    let sink = Sink::start(&["--store-dir", &store]);
    let daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    smtplib_send(
        daemon.addr,
        "app@example.com",
        &["one@example.net"],
        "<content@test>",
    );
    let got = sink.wait_messages(1, LONG);
    let seq = got[0]["seq"].as_u64().unwrap();
    let stored = std::fs::read_to_string(dir.path().join(format!("{seq}.eml"))).unwrap();
    assert!(
        stored.starts_with("Received: from client.test ([127.0.0.1])"),
        "{stored}"
    );
    assert!(stored.contains("by mta.test (sendengine) with ESMTP;"));
    assert!(stored.contains("Message-ID: <content@test>\r\n"));
    assert!(
        stored.contains("\r\nHello from smtplib.\r\n.leading dot line\r\n"),
        "{stored:?}"
    );
}

#[test]
fn a_thousand_messages_over_ten_connections() {
    let sink = Sink::start(&[]);
    let daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    let script = r#"
import smtplib, sys, threading
host, port = sys.argv[1], int(sys.argv[2])
errors = []
def worker(w):
    try:
        with smtplib.SMTP(host, port, timeout=60) as s:
            s.ehlo("client%d.test" % w)
            for i in range(100):
                mid = "<bulk-%d-%d@test>" % (w, i)
                msg = "From: a@example.com\r\nTo: b@example.net\r\nMessage-ID: %s\r\nSubject: bulk\r\n\r\n%s\r\n" % (mid, "x" * 2000)
                s.sendmail("a@example.com", ["rcpt%d@example.net" % i], msg)
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=worker, args=(w,)) for w in range(10)]
[t.start() for t in threads]
[t.join() for t in threads]
print("errors=%d %s" % (len(errors), errors[:3]))
"#;
    let out = support::python(
        script,
        &[daemon.addr.ip().to_string(), daemon.addr.port().to_string()],
    )
    .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("errors=0"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let got = sink.wait_messages(1000, Duration::from_secs(120));
    let mut ids: Vec<String> = got
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1000, "every message exactly once");
    daemon.wait_events("delivery", 1000, LONG);
    assert_eq!(daemon.events_of("reception").len(), 1000);
}

#[test]
fn one_refused_recipient_bounces_the_others_are_delivered() {
    let sink = Sink::start(&["--fault", "rcpt~refuse=550 5.1.1 no such user here"]);
    let daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    smtplib_send(
        daemon.addr,
        "app@example.com",
        &[
            "ok1@example.net",
            "refuse-me@example.net",
            "ok2@example.net",
        ],
        "<multi@test>",
    );
    let got = sink.wait_messages(1, LONG);
    assert_eq!(
        got[0]["rcpts"],
        serde_json::json!(["ok1@example.net", "ok2@example.net"])
    );
    let delivered = daemon.wait_events("delivery", 2, LONG);
    let bounced = daemon.wait_events("bounce", 1, LONG);
    assert_eq!(bounced[0]["recipient"], "refuse-me@example.net");
    assert_eq!(bounced[0]["reply"]["code"], 550);
    assert_eq!(bounced[0]["reply"]["enhanced"], "5.1.1");
    assert_eq!(bounced[0]["reply"]["text"], "no such user here");
    let mut rcpts: Vec<&str> = delivered
        .iter()
        .map(|e| e["recipient"].as_str().unwrap())
        .collect();
    rcpts.sort();
    assert_eq!(rcpts, ["ok1@example.net", "ok2@example.net"]);
    // Nothing is retried: the spool empties.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(daemon.events_of("transient_failure").is_empty());
    assert_eq!(sink.messages().len(), 1);
}

#[test]
fn temporary_failure_is_retried_and_then_delivered() {
    let sink = Sink::start(&["--fault", "dot#1=451 4.3.0 try again later"]);
    let daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    smtplib_send(
        daemon.addr,
        "app@example.com",
        &["later@example.net"],
        "<retry@test>",
    );
    let deferred = daemon.wait_events("transient_failure", 1, LONG);
    assert_eq!(deferred[0]["reply"]["code"], 451);
    assert_eq!(deferred[0]["attempt"], 1);
    let delivered = daemon.wait_events("delivery", 1, LONG);
    assert_eq!(delivered[0]["attempt"], 2);
    assert_eq!(sink.wait_messages(1, LONG)[0]["message_id"], "<retry@test>");
}

#[test]
fn delivery_server_down_then_up() {
    let port = free_port();
    let daemon = Daemon::start(DaemonConfig::new(port));
    smtplib_send(
        daemon.addr,
        "app@example.com",
        &["patient@example.net"],
        "<down@test>",
    );
    let failures = daemon.wait_events("transient_failure", 1, LONG);
    assert!(
        failures[0]["reply"]["text"]
            .as_str()
            .unwrap()
            .contains("onnect"),
        "{}",
        failures[0]
    );
    assert!(daemon.events_of("delivery").is_empty());

    let sink = Sink::start_on(port, &[]);
    let got = sink.wait_messages(1, LONG);
    assert_eq!(got[0]["message_id"], "<down@test>");
    let delivered = daemon.wait_events("delivery", 1, LONG);
    assert!(delivered[0]["attempt"].as_u64().unwrap() >= 2);
}

#[test]
fn mail_send_crate_as_client() {
    let sink = Sink::start(&[]);
    let daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let message = mail_send::smtp::message::Message::empty()
            .from("app@example.com")
            .to("crate@example.net")
            .body(
                &b"From: app@example.com\r\nTo: crate@example.net\r\nMessage-ID: <crate@test>\r\nSubject: hi\r\n\r\nbody\r\n"[..],
            );
        let mut client = mail_send::SmtpClientBuilder::new(daemon.addr.ip().to_string(), daemon.addr.port())
            .expect("client builder")
            .implicit_tls(false)
            .allow_invalid_certs()
            .helo_host("crate.test")
            .connect_plain()
            .await
            .expect("connect with mail-send");
        client.send(message).await.expect("mail-send delivery to sendengine");
    });
    let got = sink.wait_messages(1, LONG);
    assert_eq!(got[0]["message_id"], "<crate@test>");
    wait_for(LONG, "delivery event", || {
        (!daemon.events_of("delivery").is_empty()).then_some(())
    });
}

#[test]
fn channel_and_campaign_headers_are_used_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().to_str().unwrap().to_owned();
    let sink = Sink::start(&["--store-dir", &store]);
    let daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    let script = r#"
import smtplib, sys
msg = "From: a@example.com\r\nTo: b@example.net\r\nX-Channel: transactional\r\nX-Campaign-Id: welcome-2026\r\nSubject: hi\r\n\r\nbody\r\n"
with smtplib.SMTP(sys.argv[1], int(sys.argv[2])) as s:
    s.sendmail("a@example.com", ["b@example.net"], msg)
    try:
        s.sendmail("a@example.com", ["b@example.net"], "X-Channel: carrier-pigeon\r\n\r\nx\r\n")
    except smtplib.SMTPDataError as e:
        print("refused", e.smtp_code, e.smtp_error.decode())
"#;
    let out = support::python(
        script,
        &[daemon.addr.ip().to_string(), daemon.addr.port().to_string()],
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("refused 550 5.6.0 X-Channel `carrier-pigeon` is unknown"),
        "{stdout}"
    );
    let got = sink.wait_messages(1, LONG);
    let stored =
        std::fs::read_to_string(dir.path().join(format!("{}.eml", got[0]["seq"]))).unwrap();
    assert!(
        !stored.contains("X-Channel") && !stored.contains("X-Campaign-Id"),
        "{stored}"
    );
    assert!(stored.contains("Message-ID: <") && stored.contains("\r\nDate: "));
    let d = &daemon.wait_events("delivery", 1, LONG)[0];
    assert_eq!(d["channel"], "transactional");
    assert_eq!(d["campaign"], "welcome-2026");
}

#[test]
fn sigterm_stops_cleanly_and_the_queue_survives_it() {
    let port = free_port();
    let mut daemon = Daemon::start(DaemonConfig::new(port));
    smtplib_send(
        daemon.addr,
        "app@example.com",
        &["kept@example.net"],
        "<kept@test>",
    );
    daemon.wait_events("transient_failure", 1, LONG);
    let status = daemon.stop();
    assert!(status.success(), "clean exit on SIGTERM: {status}");

    let sink = Sink::start_on(port, &[]);
    daemon.restart();
    let got = sink.wait_messages(1, LONG);
    assert_eq!(got[0]["message_id"], "<kept@test>");
}
