//! Webhooks end to end: the real daemon posts its events to an HTTP
//! receiver run by the test, which fails for a while (500s and dropped
//! connections) and then recovers. Checked: every event of the event log
//! arrives exactly once (also across a clean restart in the middle of the
//! outage), every signature is valid (checked by Python's hmac), and a
//! backlog beyond its bound drops its oldest events and says so.

mod support;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::{Daemon, DaemonConfig, Sink, smtplib_send, wait_for};

const LONG: Duration = Duration::from_secs(90);
const SECRET: &str = "webhook-test-secret";
/// Largest request the receiver reads.
const MAX_REQUEST_BYTES: usize = 16 << 20;

/// One request as the receiver saw it.
#[derive(Clone)]
struct Seen {
    /// 200, 500, or 0 when the connection was closed without an answer.
    answered: u16,
    signature: String,
    timestamp: String,
    body: Vec<u8>,
}

#[derive(Default)]
struct ReceiverState {
    /// Requests still to fail; `usize::MAX`: down until told otherwise.
    fail_next: usize,
    seen: Vec<Seen>,
}

/// A plain HTTP/1.1 server on a std listener, one request per connection.
struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    fn start(fail_next: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ReceiverState {
            fail_next,
            seen: Vec::new(),
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                handle(stream, &shared);
            }
        });
        Receiver { addr, state }
    }

    fn recover(&self) {
        self.state.lock().unwrap().fail_next = 0;
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    fn failures(&self) -> usize {
        self.seen().iter().filter(|s| s.answered != 200).count()
    }

    /// The events of every request answered 200, in arrival order.
    fn accepted(&self) -> Vec<Value> {
        self.seen()
            .iter()
            .filter(|s| s.answered == 200)
            .flat_map(|s| {
                let batch: Vec<Value> = serde_json::from_slice(&s.body).expect("a JSON array");
                batch
            })
            .collect()
    }
}

fn handle(mut stream: TcpStream, state: &Mutex<ReceiverState>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let Some((headers, body)) = read_request(&mut stream) else {
        return;
    };
    let header = |name: &str| {
        headers
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let mut state = state.lock().unwrap();
    let answered = if state.fail_next > 0 {
        if state.fail_next != usize::MAX {
            state.fail_next -= 1;
        }
        // Alternate the two ways a receiver fails.
        if state.seen.len().is_multiple_of(2) {
            500
        } else {
            0
        }
    } else {
        200
    };
    state.seen.push(Seen {
        answered,
        signature: header("x-sendengine-signature"),
        timestamp: header("x-sendengine-timestamp"),
        body,
    });
    drop(state);
    let reply = match answered {
        200 => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        500 => {
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        }
        _ => return,
    };
    let _ = stream.write_all(reply.as_bytes());
}

/// Head (as text) and body, read by Content-Length.
fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 || data.len() > MAX_REQUEST_BYTES {
            return None;
        }
        data.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    assert!(head.starts_with("POST /hook HTTP/1.1\r\n"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("Content-Length");
    while data.len() < head_end + length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&chunk[..n]);
    }
    Some((head, data[head_end..head_end + length].to_vec()))
}

fn config(sink: &Sink, receiver: &Receiver, extra: &str) -> DaemonConfig {
    let mut config = DaemonConfig::new(sink.addr.port());
    config.extra_top = format!(
        "[[webhook]]\nurl = \"http://{}/hook\"\nsecret = \"{SECRET}\"\nretry_initial = \"50ms\"\nretry_max = \"500ms\"\n{extra}\n",
        receiver.addr
    );
    config
}

type Key = (String, String, String);

fn key(event: &Value) -> Key {
    let field = |name: &str| event[name].as_str().unwrap_or_default().to_owned();
    (field("message_id"), field("recipient"), field("type"))
}

/// Waits until the receiver has accepted as many events as the log holds,
/// then checks they are the same events, each once.
fn assert_exactly_once(daemon: &Daemon, receiver: &Receiver) {
    let log = daemon.events();
    let log_keys: HashSet<Key> = log.iter().map(key).collect();
    assert_eq!(
        log_keys.len(),
        log.len(),
        "the event log itself has duplicates"
    );
    let accepted = wait_for(LONG, "every event accepted by the receiver", || {
        let accepted = receiver.accepted();
        (accepted.len() >= log.len()).then_some(accepted)
    });
    let accepted_keys: HashSet<Key> = accepted.iter().map(key).collect();
    assert_eq!(
        accepted_keys.len(),
        accepted.len(),
        "an event arrived twice"
    );
    let missing: Vec<&Key> = log_keys.difference(&accepted_keys).collect();
    let unknown: Vec<&Key> = accepted_keys.difference(&log_keys).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "missing {missing:?}, not in the log {unknown:?}"
    );
    // What was posted is what the log says, field for field.
    for event in &accepted {
        assert!(log.contains(event), "{event} differs from the event log");
    }
}

/// Python's hmac module checks every request's signature.
fn assert_signatures_valid(receiver: &Receiver) {
    let seen = receiver.seen();
    assert!(!seen.is_empty());
    for s in &seen {
        assert!(s.signature.starts_with("sha256="), "{}", s.signature);
        assert!(s.timestamp.parse::<u64>().is_ok(), "{}", s.timestamp);
    }
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("requests.json");
    let records: Vec<Value> = seen
        .iter()
        .map(|s| {
            serde_json::json!({
                "signature": s.signature,
                "timestamp": s.timestamp,
                "body_hex": s.body.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            })
        })
        .collect();
    std::fs::write(&list, serde_json::to_vec(&records).unwrap()).unwrap();
    let script = r#"
import hashlib, hmac, json, sys
secret, path = sys.argv[1].encode(), sys.argv[2]
bad = 0
requests = json.load(open(path))
for r in requests:
    body = bytes.fromhex(r["body_hex"])
    signed = r["timestamp"].encode() + b"." + body
    want = "sha256=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, r["signature"]):
        bad += 1
print("checked=%d bad=%d" % (len(requests), bad))
"#;
    let Some(out) = support::python(script, &[SECRET.into(), list.display().to_string()]) else {
        support::missing_peer(
            "python3",
            "it checks the signature: scripts/install-test-deps.sh",
        );
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        format!("checked={} bad=0", seen.len()),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn send(daemon: &Daemon, name: &str, rcpts: &[&str]) {
    let out = smtplib_send(
        daemon.addr,
        "app@example.com",
        rcpts,
        &format!("<{name}@test>"),
    );
    assert!(out.contains("refused=0"), "{out}");
}

#[test]
fn a_receiver_that_fails_then_recovers_gets_every_event_once() {
    let sink = Sink::start(&[]);
    let receiver = Receiver::start(6);
    let daemon = Daemon::start(config(&sink, &receiver, "batch_size = 7"));
    for i in 0..8 {
        send(
            &daemon,
            &format!("wh{i}"),
            &["a@example.net", "b@example.net", "c@example.org"],
        );
    }
    daemon.wait_events("delivery", 24, LONG);
    assert_exactly_once(&daemon, &receiver);
    assert_eq!(receiver.failures(), 6);
    assert!(
        receiver
            .seen()
            .iter()
            .all(|s| serde_json::from_slice::<Vec<Value>>(&s.body).unwrap().len() <= 7),
        "batches are at most batch_size events"
    );
    assert_signatures_valid(&receiver);
}

#[test]
fn a_clean_restart_during_an_outage_loses_and_repeats_nothing() {
    let sink = Sink::start(&[]);
    let receiver = Receiver::start(usize::MAX);
    let mut daemon = Daemon::start(config(&sink, &receiver, ""));
    for i in 0..4 {
        send(
            &daemon,
            &format!("before{i}"),
            &["a@example.net", "b@example.net"],
        );
    }
    daemon.wait_events("delivery", 8, LONG);
    wait_for(LONG, "failed posts", || {
        (receiver.failures() >= 2).then_some(())
    });
    assert!(daemon.stop().success());

    daemon.restart();
    for i in 0..3 {
        send(
            &daemon,
            &format!("after{i}"),
            &["a@example.net", "b@example.net"],
        );
    }
    daemon.wait_events("delivery", 14, LONG);
    receiver.recover();
    assert_exactly_once(&daemon, &receiver);
    assert_signatures_valid(&receiver);
}

#[test]
fn a_full_backlog_drops_its_oldest_events_and_says_so() {
    let sink = Sink::start(&[]);
    let receiver = Receiver::start(usize::MAX);
    let daemon = Daemon::start(config(
        &sink,
        &receiver,
        "max_backlog = 6\nkinds = [\"delivery\"]",
    ));
    for i in 0..5 {
        send(
            &daemon,
            &format!("full{i}"),
            &["a@example.net", "b@example.net"],
        );
    }
    daemon.wait_events("delivery", 10, LONG);
    // 10 delivery events (receptions are filtered out), 6 kept: 4 dropped.
    let mut dropped = 0;
    wait_for(LONG, "4 dropped events reported", || {
        while let Ok(line) = daemon.stderr.try_recv() {
            if let Some(n) = line
                .split_once("dropped ")
                .and_then(|(_, rest)| rest.split(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|_| line.contains("webhook"))
            {
                dropped += n;
            }
        }
        (dropped >= 4).then_some(())
    });
    assert_eq!(dropped, 4);
    receiver.recover();
    let newest: Vec<Key> = daemon
        .events_of("delivery")
        .iter()
        .rev()
        .take(6)
        .rev()
        .map(key)
        .collect();
    let accepted = wait_for(LONG, "6 events accepted", || {
        let a = receiver.accepted();
        (a.len() >= 6).then_some(a)
    });
    assert_eq!(accepted.iter().map(key).collect::<Vec<_>>(), newest);
}
