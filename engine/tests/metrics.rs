//! `GET /metrics` after a known workload: the real daemon delivers to the
//! real sink, whose fault rules bounce three recipients (550) and defer two
//! (451, retried an hour later); one message is refused for its channel and
//! one because its only recipient is suppressed. The scrape (raw HTTP over a
//! TcpStream) must count exactly that, name no recipient, and a daemon
//! without `[metrics] listen` must listen on nothing but SMTP. Recipients an
//! operator bounces or deletes are counted as outcomes as well.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{
    Daemon, DaemonConfig, Sink, ctl, free_port, metric_sum, scrape_metrics, smtplib_send,
    smtplib_try, wait_for,
};

const LONG: Duration = Duration::from_secs(60);

/// Five messages of 21 recipients: 100 accepted by the sink, 3 refused with
/// 550 and 2 with 451.
fn recipients_of(message: usize) -> Vec<String> {
    (0..21)
        .map(|i| {
            let n = message * 21 + i;
            match n {
                7 | 40 | 99 => format!("bounce{n}@example.net"),
                15 | 80 => format!("defer{n}@example.net"),
                _ => format!("user{n}@example.net"),
            }
        })
        .collect()
}

#[test]
fn counters_match_a_known_workload() {
    let sink = Sink::start(&[
        "--fault",
        "rcpt~bounce=550 5.1.1 no such user here",
        "--fault",
        "rcpt~defer=451 4.2.1 mailbox busy, try later",
    ]);
    let metrics_port = free_port();
    let mut config = DaemonConfig::new(sink.addr.port());
    config.extra_top = format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n");
    config.extra_delivery = "retry_schedule = [\"1h\"]\n".into();
    let daemon = Daemon::start(config);
    assert_eq!(listening_sockets(daemon.pid()), 2, "SMTP and metrics");

    ctl(&daemon, &["suppression", "add", "trap@example.net"]);
    ctl(
        &daemon,
        &["dkim", "generate", "example.com", "--selector", "s1"],
    );
    for message in 0..5 {
        let rcpts = recipients_of(message);
        let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        let msgid = format!("<m{message}@client.test>");
        smtplib_send(daemon.addr, "app@example.com", &rcpts, &msgid);
    }
    let refused = smtplib_try(
        daemon.addr,
        "app@example.com",
        &["user1@example.net"],
        "X-Channel: bogus",
    );
    assert!(refused.starts_with("550"), "{refused}");
    let refused = smtplib_try(daemon.addr, "app@example.com", &["trap@example.net"], "");
    assert!(refused.starts_with("550"), "{refused}");

    daemon.wait_events("delivery", 100, LONG);
    daemon.wait_events("bounce", 3, LONG);
    daemon.wait_events("transient_failure", 2, LONG);
    // The queue gauges are refreshed every few seconds.
    let text = wait_for(LONG, "the deferred gauge", || {
        let text = scrape_metrics(metrics_port);
        let deferred = metric_sum(
            &text,
            "sendengine_queue_recipients",
            &[("state", "deferred")],
        );
        let sessions = metric_sum(&text, "sendengine_smtp_sessions_open", &[]);
        (deferred == 2.0 && sessions == 0.0).then_some(text)
    });

    let recipients = |outcome| {
        metric_sum(
            &text,
            "sendengine_recipients_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(recipients("received"), 105.0);
    assert_eq!(recipients("delivered"), 100.0);
    assert_eq!(recipients("bounced"), 3.0);
    assert_eq!(recipients("deferred"), 2.0);
    assert_eq!(recipients("expired"), 0.0);
    assert_eq!(recipients("suppressed"), 1.0);
    let delivered = [
        ("route", "test-sink"),
        ("channel", "marketing"),
        ("outcome", "delivered"),
    ];
    assert_eq!(
        metric_sum(&text, "sendengine_recipients_total", &delivered),
        100.0
    );
    assert_eq!(
        metric_sum(&text, "sendengine_messages_received_total", &[]),
        5.0
    );
    let bad_mailbox = [("route", "test-sink"), ("category", "bad-mailbox")];
    assert_eq!(
        metric_sum(&text, "sendengine_bounces_total", &bad_mailbox),
        3.0
    );
    let refusals = |reason| {
        metric_sum(
            &text,
            "sendengine_injection_refusals_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(refusals("unknown_channel"), 1.0);
    assert_eq!(refusals("all_suppressed"), 1.0);
    assert_eq!(
        metric_sum(&text, "sendengine_injection_refusals_total", &[]),
        2.0
    );
    assert_eq!(
        metric_sum(&text, "sendengine_smtp_sessions_total", &[]),
        7.0
    );

    let count = |name| metric_sum(&text, name, &[]);
    assert_eq!(count("sendengine_delivery_latency_seconds_count"), 100.0);
    let transactions = [("route", "test-sink")];
    assert_eq!(
        metric_sum(
            &text,
            "sendengine_smtp_transaction_seconds_count",
            &transactions
        ),
        5.0
    );
    assert_eq!(
        count("sendengine_dkim_sign_seconds_count"),
        5.0,
        "5 signed messages"
    );
    // 5 inserts and 5 outcome writes at least, in some number of group
    // commits; the two histograms are read a moment apart, so only bounds.
    let commits = count("sendengine_spool_commit_seconds_count");
    assert!(commits >= 1.0, "{commits} commits");
    let batches = count("sendengine_spool_commit_batch_size_count");
    assert!(batches >= 1.0, "{batches} batches");
    let requests = count("sendengine_spool_commit_batch_size_sum");
    assert!(requests >= 10.0, "{requests} requests committed");
    assert!(
        text.contains(
            "sendengine_delivery_latency_seconds_bucket{channel=\"marketing\",le=\"3600\"}"
        ),
        "explicit buckets"
    );

    assert_eq!(
        count("sendengine_queue_recipients"),
        2.0,
        "only the deferred are left"
    );
    assert!(count("sendengine_spool_size_bytes") > 0.0);
    assert_eq!(
        metric_sum(&text, "sendengine_connections_max", &transactions),
        5.0
    );
    assert_eq!(
        metric_sum(&text, "sendengine_ready_queue_depth", &transactions),
        0.0
    );
    assert!(
        text.lines()
            .any(|l| l == "sendengine_outcomes_committing 0"),
        "the outcomes waiting for their commit, all written:\n{text}"
    );
    assert!(text.contains("# HELP sendengine_events_dropped_total"));
    assert!(!text.contains('@'), "no address in the metrics:\n{text}");
    assert!(!text.contains("tenant="), "no tenant label unless enabled");

    // An operator bounces one deferred recipient and deletes the other:
    // both are outcomes too.
    let rows = ctl(&daemon, &["queue", "list"]);
    let ids: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{rows}");
    ctl(&daemon, &["queue", "bounce", "--id", ids[0]]);
    ctl(&daemon, &["queue", "delete", "--id", ids[1]]);
    let text = scrape_metrics(metrics_port);
    let recipients = |outcome| {
        metric_sum(
            &text,
            "sendengine_recipients_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(recipients("bounced"), 4.0);
    assert_eq!(recipients("deleted"), 1.0);
    let by_operator = [("route", "test-sink"), ("category", "admin")];
    assert_eq!(
        metric_sum(&text, "sendengine_bounces_total", &by_operator),
        1.0
    );
}

/// A lone client's message is committed at once; with other clients
/// connected (idle here) that may send, its commit waits a moment for
/// theirs, and says so in `sendengine_spool_commit_wait_seconds`. Clients
/// that may not send (outside the relay networks, no AUTH) do not count.
#[test]
fn a_commit_waits_for_other_connected_clients_only() {
    let sink = Sink::start(&[]);
    let metrics_port = free_port();
    let mut config = DaemonConfig::new(sink.addr.port());
    config.relay_networks = vec!["127.0.0.1/32".into()];
    // The longest delay: the wait must not be over before the writer, slow
    // under a loaded suite, even takes the message.
    config.extra_spool = "commit_delay = \"50ms\"\n".into();
    config.extra_top = format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n");
    let daemon = Daemon::start(config);
    let waits = || {
        metric_sum(
            &scrape_metrics(metrics_port),
            "sendengine_spool_commit_wait_seconds_count",
            &[],
        )
    };

    let strangers = idle_clients_from("127.0.0.2", daemon.addr);
    smtplib_send(
        daemon.addr,
        "app@example.com",
        &["a@example.net"],
        "<alone@t>",
    );
    daemon.wait_events("delivery", 1, LONG);
    assert_eq!(waits(), 0.0, "a lone client never waits");
    drop(strangers);

    let idle = idle_clients_from("127.0.0.1", daemon.addr);
    smtplib_send(
        daemon.addr,
        "app@example.com",
        &["b@example.net"],
        "<crowd@t>",
    );
    daemon.wait_events("delivery", 2, LONG);
    assert!(waits() >= 1.0, "the commit waited for the idle clients");
    drop(idle);
}

/// Three connections from `local`, greeted and left idle.
fn idle_clients_from(local: &str, daemon: std::net::SocketAddr) -> Vec<TcpStream> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    (0..3)
        .map(|_| {
            let stream = runtime.block_on(async {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
                socket.connect(daemon).await.unwrap().into_std().unwrap()
            });
            stream.set_nonblocking(false).unwrap();
            stream.set_read_timeout(Some(LONG)).unwrap();
            let mut greeting = String::new();
            BufReader::new(&stream).read_line(&mut greeting).unwrap();
            assert!(greeting.starts_with("220 "), "{greeting}");
            stream
        })
        .collect()
}

#[test]
fn without_a_metrics_address_nothing_listens() {
    let sink = Sink::start(&[]);
    let daemon = Daemon::start(DaemonConfig::new(sink.addr.port()));
    assert_eq!(listening_sockets(daemon.pid()), 1, "SMTP only");
}

#[test]
fn tenant_labels_appear_only_when_enabled() {
    let sink = Sink::start(&["--fault", "rcpt~bounce=550 5.1.1 no such user here"]);
    let metrics_port = free_port();
    let config = format!(
        "[smtp_in]\nlisten = [\"127.0.0.1:0\"]\nrelay_networks = [\"127.0.0.0/8\"]\ndefault_user = \"acme\"\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\ntenant_labels = true\n\
         [[delivery_server]]\nname = \"s\"\nhost = \"127.0.0.1\"\nport = {}\n\
         [[user]]\nname = \"acme\"\n",
        sink.addr.port()
    );
    let daemon = Daemon::start(DaemonConfig::custom(&config));
    let rcpts = ["one@example.net", "bounce@example.net"];
    smtplib_send(daemon.addr, "app@example.com", &rcpts, "<t1@client.test>");
    daemon.wait_events("delivery", 1, LONG);
    daemon.wait_events("bounce", 1, LONG);

    let text = scrape_metrics(metrics_port);
    let acme = |outcome| {
        let labels = [("route", "s"), ("tenant", "acme"), ("outcome", outcome)];
        metric_sum(&text, "sendengine_recipients_total", &labels)
    };
    assert_eq!(acme("received"), 2.0);
    assert_eq!(acme("delivered"), 1.0);
    assert_eq!(acme("bounced"), 1.0);
    let received = [("tenant", "acme"), ("channel", "marketing")];
    assert_eq!(
        metric_sum(&text, "sendengine_messages_received_total", &received),
        1.0
    );
    assert_eq!(
        metric_sum(&text, "sendengine_bounces_total", &[("tenant", "acme")]),
        1.0
    );
    assert!(!text.contains('@'), "no address in the metrics:\n{text}");
}

/// The Grafana dashboard is importable (a datasource input, a schema
/// version) and queries only metrics the daemon exports.
#[test]
fn the_dashboard_queries_exported_metrics() {
    use sendengine::metrics as m;
    use sendengine_queue::metrics as q;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../contrib/grafana/sendengine.json"
    );
    let text = std::fs::read_to_string(path).expect("the dashboard file");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert!(dashboard["schemaVersion"].as_u64().is_some());
    let exported = [
        m::MESSAGES_RECEIVED,
        m::RECIPIENTS,
        m::BOUNCES,
        m::INJECTION_REFUSALS,
        m::SMTP_SESSIONS_TOTAL,
        m::SMTP_SESSIONS_OPEN,
        m::EVENTS_DROPPED,
        m::WEBHOOK_EVENTS_DROPPED,
        m::QUEUE_RECIPIENTS,
        m::QUEUE_MESSAGES,
        m::SPOOL_SIZE,
        m::READY_DEPTH,
        m::CONNECTIONS_OPEN,
        m::CONNECTIONS_MAX,
        m::DELIVERY_LATENCY,
        m::TRANSACTION_TIME,
        m::DKIM_SIGN_TIME,
        m::TRACKED_MESSAGES,
        m::TRACKED_LINKS,
        m::TRACKING_HITS,
        m::TRACKING_NOT_FOUND,
        q::COMMIT_SECONDS,
        q::COMMIT_BATCH_SIZE,
    ];
    let mut queried = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a query");
            let mut rest = expr;
            while let Some(at) = rest.find("sendengine_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                let base = name.strip_suffix("_bucket").unwrap_or(&name);
                assert!(exported.contains(&base), "{base} in {expr}");
                queried.insert(base.to_owned());
            }
        }
    }
    for name in exported {
        assert!(queried.contains(name), "no panel shows {name}");
    }
}

/// Holds `n` connections to the metrics port, each with a request head
/// that never ends; prints `opened N`, then waits until the daemon closes
/// them (or 60 s pass) and prints `closed N`.
const HALF_OPEN_REQUESTS: &str = r#"
import resource, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft != resource.RLIM_INFINITY and soft < n + 100:
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard == resource.RLIM_INFINITY else min(hard, n + 100), hard))
held = []
for _ in range(n):
    try:
        s = socket.create_connection((host, port), timeout=5)
    except OSError as e:
        print("connect failed:", e, file=sys.stderr)
        break
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: metrics.test\r\n")
    except OSError:
        pass  # closed at once: over the connection limit
    held.append(s)
print("opened", len(held), flush=True)
deadline = time.time() + 60
closed = 0
for s in held:
    s.settimeout(max(0.01, deadline - time.time()))
    try:
        while s.recv(4096):
            pass
        closed += 1
    except socket.timeout:
        pass
    except OSError:
        closed += 1
print("closed", closed, flush=True)
"#;

/// Issue 15.6: 1,100 requests that never finish their head, against a
/// daemon limited to 1,024 descriptors, took every descriptor and SMTP
/// stopped. Now the listener closes what is over its connection limit at
/// once and the rest after the head timeout: SMTP keeps working while they
/// are held, a fresh scraper is answered, and every one is closed.
#[test]
fn unfinished_requests_cannot_take_every_descriptor() {
    const HELD: usize = 1_100;
    let sink = Sink::start(&[]);
    let metrics_port = free_port();
    let mut config = DaemonConfig::new(sink.addr.port());
    config.extra_top = format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n");
    let daemon = Daemon::start(config);
    let limited = Command::new("prlimit")
        .args(["--pid", &daemon.pid().to_string(), "--nofile=1024:1024"])
        .status()
        .expect("prlimit (util-linux)");
    assert!(limited.success(), "prlimit --nofile=1024 on the daemon");

    let mut holder = Command::new("python3")
        .args(["-c", HALF_OPEN_REQUESTS, "127.0.0.1"])
        .args([metrics_port.to_string(), HELD.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is required for the integration tests (scripts/install-test-deps.sh)");
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    let opened = lines.next().expect("the holder's first line").unwrap();
    assert_eq!(opened, format!("opened {HELD}"));

    smtplib_send(
        daemon.addr,
        "app@example.com",
        &["one@example.net"],
        "<held@test>",
    );
    sink.wait_messages(1, LONG);
    // The slots free up when the held heads time out (5 s).
    wait_for(LONG, "a fresh scrape", || try_scrape(metrics_port));

    let closed = lines.next().expect("the holder's last line").unwrap();
    assert_eq!(
        closed,
        format!("closed {HELD}"),
        "the daemon closed them all"
    );
    assert!(holder.wait().unwrap().success());
    let descriptors = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .unwrap()
        .count();
    assert!(descriptors < 200, "{descriptors} descriptors still open");
}

/// Only `GET /metrics` is served; the rest gets a status that says why.
#[test]
fn other_paths_methods_and_oversized_heads_are_refused() {
    let sink = Sink::start(&[]);
    let metrics_port = free_port();
    let mut config = DaemonConfig::new(sink.addr.port());
    config.extra_top = format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n");
    let _daemon = Daemon::start(config);
    let status = |request: &[u8]| {
        let response = exchange(metrics_port, request);
        response.lines().next().unwrap_or_default().to_owned()
    };
    assert_eq!(
        status(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        "HTTP/1.1 404 Not Found"
    );
    let post = exchange(metrics_port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{post}"
    );
    assert!(post.contains("\r\nAllow: GET\r\n"), "{post}");
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert_eq!(
        status(huge.as_bytes()),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(status(b"HELO there\r\n\r\n"), "HTTP/1.1 400 Bad Request");
    assert!(try_scrape(metrics_port).is_some());
}

/// Sends `request` and reads the answer until the server closes.
fn exchange(port: u16, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    stream.set_read_timeout(Some(LONG)).unwrap();
    // The server may answer and close before taking a long request whole.
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

/// The body of a 200 to `GET /metrics`, or None for any other outcome.
fn try_scrape(port: u16) -> Option<String> {
    let response = exchange(port, b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// TCP sockets in LISTEN state that the process holds, from /proc.
fn listening_sockets(pid: u32) -> usize {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's fds")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_owned())
        })
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|table| {
            std::fs::read_to_string(table)
                .unwrap_or_default()
                .lines()
                .skip(1)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // st 0A is LISTEN; field 9 is the inode.
            fields.get(3) == Some(&"0A")
                && fields.get(9).is_some_and(|i| inodes.iter().any(|x| x == i))
        })
        .count()
}
