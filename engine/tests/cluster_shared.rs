//! Shared configuration objects and suppressions (issue 17) with the real
//! binary, several nodes and one real PostgreSQL: a change made with
//! sendctl on node A is seen on node C within a second; a suppression made
//! on A (by the operator or by a hard bounce) applies on C; a node started
//! later takes the fleet's set over its own seeds; with PostgreSQL out of
//! reach an admin change fails clearly, admission goes on from the local
//! copy (also after a start without it), and the node recovers without a
//! restart.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sendengine::cluster::objects::{self, Put};
use sendengine::cluster::postgres::Database;
use sendengine::cluster::suppressions::{self, Entry};
use sendengine::tenancy::replica::ObjectRow;
use support::fleet::FleetPlace;
use support::{Daemon, DaemonConfig, Sink, ctl, sendctl, sendctl_in, services};

/// The acceptance bound: a change on one node takes effect on another.
const WITHIN: Duration = Duration::from_secs(1);
const LONG: Duration = Duration::from_secs(30);

fn node(place: &FleetPlace, name: &str, sink: u16, extra_server: &str) -> Daemon {
    let mut config = DaemonConfig::new(sink);
    config.extra_top = place.node_config(name);
    config.extra_server = extra_server.to_owned();
    Daemon::start(config)
}

fn db_name(url: &str) -> &str {
    url.rsplit('/').next().expect("database name")
}

/// Waits until the first node has given the fleet its objects.
fn wait_published(place: &FleetPlace) {
    support::wait_for(LONG, "the first node's objects in PostgreSQL", || {
        let n = services::psql(
            db_name(&place.database),
            "SELECT count(*) FROM pg_tables WHERE tablename = 'objects'",
        );
        if n.trim() != "1" {
            return None;
        }
        let rows = services::psql(db_name(&place.database), "SELECT count(*) FROM objects");
        (rows.trim() != "0").then_some(())
    })
}

/// How long until `check` holds, counted from `since`; panics after LONG.
fn seen_after(since: Instant, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    while !check() {
        assert!(since.elapsed() < LONG, "{what}: not seen after {LONG:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    since.elapsed()
}

/// The acceptance check, with the time shown (`--nocapture`) for the record.
fn within_a_second(what: &str, took: Duration) {
    eprintln!("{what} reached C in {took:?}");
    assert!(took < WITHIN, "{what} took {took:?} to reach C");
}

fn put(daemon: &Daemon, noun: &str, object: serde_json::Value) -> std::process::Output {
    sendctl_in(daemon, &[noun, "put"], Some(&object.to_string()))
}

fn put_ok(daemon: &Daemon, noun: &str, object: serde_json::Value) {
    let out = put(daemon, noun, object);
    assert!(
        out.status.success(),
        "{noun} put: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn get(daemon: &Daemon, noun: &str, name: &str) -> Option<serde_json::Value> {
    let out = sendctl(daemon, &["--json", noun, "get", name]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("JSON"))
}

fn suppressed(daemon: &Daemon, address: &str) -> bool {
    ctl(daemon, &["suppression", "check", address])["suppressed"] == true
}

#[test]
fn a_change_on_a_takes_effect_on_c_within_a_second() {
    let Some(place) = FleetPlace::new("shared", false) else {
        return;
    };
    let sink = Sink::start(&["--fault", "rcpt~hard=550 5.1.1 no such user"]);
    let a = node(&place, "a", sink.addr.port(), "");
    wait_published(&place);
    let _b = node(&place, "b", sink.addr.port(), "");
    let c = node(&place, "c", sink.addr.port(), "");
    // C is listening once it has applied a change made after it started.
    support::wait_for(LONG, "A in sync with the fleet", || {
        put(
            &a,
            "template",
            serde_json::json!({"name": "warmup", "records": []}),
        )
        .status
        .success()
        .then_some(())
    });
    seen_after(Instant::now(), "warm-up on C", || {
        get(&c, "template", "warmup").is_some()
    });

    // A suppression added on A: C drops that recipient within a second.
    let t = Instant::now();
    ctl(&a, &["suppression", "add", "gone@example.net"]);
    let took = seen_after(t, "suppression on C", || suppressed(&c, "gone@example.net"));
    within_a_second("the suppression", took);
    let refused = support::smtplib_try(c.addr, "app@example.com", &["gone@example.net"], "");
    assert!(refused.starts_with("550 5.7.1"), "{refused}");
    // ... and removed on A: C takes the address again within a second.
    let t = Instant::now();
    ctl(&a, &["suppression", "remove", "gone@example.net"]);
    let took = seen_after(t, "removal on C", || !suppressed(&c, "gone@example.net"));
    within_a_second("the removal", took);
    let sent = support::smtplib_try(c.addr, "app@example.com", &["gone@example.net"], "");
    assert_eq!(sent, "250");

    // A hard bounce on A suppresses on C too (the background feed).
    let sent = support::smtplib_try(a.addr, "app@example.com", &["hard@example.net"], "");
    assert_eq!(sent, "250");
    a.wait_events("suppression", 1, LONG);
    seen_after(Instant::now(), "the bounce's suppression on C", || {
        suppressed(&c, "hard@example.net")
    });

    // A delivery server, then a group and a user in it, put on A.
    let t = Instant::now();
    put_ok(
        &a,
        "server",
        serde_json::json!({"name": "relay2", "host": "127.0.0.1", "port": 2525}),
    );
    let took = seen_after(t, "server on C", || get(&c, "server", "relay2").is_some());
    within_a_second("the server", took);
    let t = Instant::now();
    put_ok(
        &a,
        "server",
        serde_json::json!({"name": "relay2", "host": "127.0.0.1", "port": 2526}),
    );
    let took = seen_after(t, "server change on C", || {
        get(&c, "server", "relay2").is_some_and(|s| s["port"] == 2526)
    });
    within_a_second("the server change", took);
    let t = Instant::now();
    put_ok(
        &a,
        "group",
        serde_json::json!({"name": "g", "marketing": ["relay2"],
        "transactional": ["relay2"], "autoresponder": ["relay2"], "daily_limit": 7}),
    );
    put_ok(
        &a,
        "user",
        serde_json::json!({"name": "alice", "group": "g", "password": "pw"}),
    );
    let took = seen_after(t, "group and user on C", || {
        get(&c, "user", "alice").is_some_and(|u| u["group"] == "g")
    });
    within_a_second("the group and user", took);
    assert_eq!(get(&c, "group", "g").expect("group on C")["daily_limit"], 7);
    // Deleted on A: gone from C.
    let t = Instant::now();
    let out = sendctl(&a, &["template", "delete", "warmup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = seen_after(t, "deletion on C", || {
        get(&c, "template", "warmup").is_none()
    });
    within_a_second("the deletion", took);

    // A node started after all this gets the fleet's set; the fleet wins
    // over what its own config.toml seeds (`rate_per_hour` here).
    let d = node(&place, "d", sink.addr.port(), "rate_per_hour = 999\n");
    seen_after(Instant::now(), "the fleet's objects on D", || {
        get(&d, "user", "alice").is_some()
    });
    assert_eq!(
        get(&d, "server", "relay2").expect("relay2 on D")["port"],
        2526
    );
    assert!(get(&d, "template", "warmup").is_none());
    let seeded = get(&d, "server", "test-sink").expect("test-sink on D");
    assert!(seeded["rate_per_hour"].is_null(), "{seeded}");
    seen_after(Instant::now(), "suppressions on D", || {
        suppressed(&d, "hard@example.net")
    });
    assert!(!suppressed(&d, "gone@example.net"));
}

/// A TCP relay to PostgreSQL that the test can cut (closing every
/// connection, as a database restart or a network failure would) and
/// restore on the same port.
struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(port: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (stop, streams) = (stop.clone(), streams.clone());
            std::thread::spawn(move || accept(listener, &stop, &streams))
        };
        Proxy {
            port,
            stop,
            streams,
            acceptor: Some(acceptor),
        }
    }

    fn cut(mut self) -> u16 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.join().expect("acceptor");
        }
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        self.port
    }
}

fn accept(listener: TcpListener, stop: &AtomicBool, streams: &Mutex<Vec<TcpStream>>) {
    while !stop.load(Ordering::SeqCst) {
        let Ok((client, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = client.set_nonblocking(false);
        let Ok(server) = TcpStream::connect(services::POSTGRES) else {
            continue;
        };
        let mut held = streams.lock().unwrap();
        for (from, to) in [(&client, &server), (&server, &client)] {
            let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n @ 1..) = from.read(&mut buf) {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(Shutdown::Both);
            });
        }
        held.push(client);
        held.push(server);
    }
}

#[test]
fn without_the_database_changes_fail_clearly_and_admission_goes_on() {
    let Some(place) = FleetPlace::new("shared_down", false) else {
        return;
    };
    let sink = Sink::start(&[]);
    let proxy = Proxy::start(0);
    let via_proxy = place
        .database
        .replace(services::POSTGRES, &format!("127.0.0.1:{}", proxy.port));
    let mut config = DaemonConfig::new(sink.addr.port());
    let metrics_port = support::free_port();
    config.extra_top = format!(
        "{}[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
        place.node_config("a").replace(&place.database, &via_proxy)
    );
    let mut a = Daemon::start(config);
    wait_published(&place);
    // Synced: a change goes through.
    support::wait_for(LONG, "a first change through the proxy", || {
        put(
            &a,
            "template",
            serde_json::json!({"name": "before", "records": []}),
        )
        .status
        .success()
        .then_some(())
    });

    let port = proxy.cut();
    let out = put(
        &a,
        "server",
        serde_json::json!({"name": "relay3", "host": "127.0.0.1"}),
    );
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(error.contains("cluster database is unreachable"), "{error}");
    assert!(error.contains("not applied on any node"), "{error}");
    assert!(
        get(&a, "server", "relay3").is_none(),
        "nothing changed here"
    );
    let out = sendctl(&a, &["suppression", "add", "x@example.net"]);
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(error.contains("not changed on any node"), "{error}");
    assert!(!suppressed(&a, "x@example.net"));
    assert_eq!(database_up(metrics_port), "0");
    // Admission works from the local copy.
    let sent = support::smtplib_try(a.addr, "app@example.com", &["ok@example.net"], "");
    assert_eq!(sent, "250");
    sink.wait_messages(1, LONG);
    a.wait_stderr("cluster database is unreachable", LONG);
    // A start without the database: from the local copy.
    a.stop();
    a.restart();
    let sent = support::smtplib_try(a.addr, "app@example.com", &["ok2@example.net"], "");
    assert_eq!(sent, "250");
    sink.wait_messages(2, LONG);
    assert!(get(&a, "template", "before").is_some(), "the local copy");
    let out = put(
        &a,
        "server",
        serde_json::json!({"name": "relay3", "host": "127.0.0.1"}),
    );
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("not applied on any node"), "{error}");

    // Back: the same node takes changes again, without a restart.
    let _proxy = Proxy::start(port);
    support::wait_for(LONG, "a change once the database is back", || {
        put(
            &a,
            "server",
            serde_json::json!({"name": "relay3", "host": "127.0.0.1"}),
        )
        .status
        .success()
        .then_some(())
    });
    let rows = services::psql(
        db_name(&place.database),
        "SELECT count(*) FROM objects WHERE kind = 'server' AND name = 'relay3' AND NOT deleted",
    );
    assert_eq!(rows.trim(), "1");
    ctl(&a, &["suppression", "add", "x@example.net"]);
    assert!(suppressed(&a, "x@example.net"));
    assert_eq!(database_up(metrics_port), "1");
}

/// The value of `sendengine_cluster_database_up` on the metrics endpoint.
fn database_up(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    text.lines()
        .find_map(|l| l.strip_prefix("sendengine_cluster_database_up{task=\"shared\"} "))
        .unwrap_or_else(|| panic!("no sendengine_cluster_database_up in:\n{text}"))
        .trim()
        .to_owned()
}

/// The writes themselves: a writer behind the fleet's version is refused,
/// and a batch of suppressions keeps the last change of each address.
#[tokio::test]
async fn writes_check_the_version_and_batches_keep_the_last_change() {
    let Some(url) = services::fresh_database("shared_put") else {
        return;
    };
    let db = Database::new(&url);
    db.migrate(&format!("{}; {}", objects::SCHEMA, suppressions::SCHEMA))
        .await
        .expect("schema");
    let row = |name: &str| ObjectRow {
        kind: "template".into(),
        name: name.into(),
        body: Some(format!(r#"{{"name":"{name}","records":[]}}"#).into_bytes()),
    };
    let Put::Committed(v1) = objects::put(&db, "a", 0, &[row("t1")]).await.unwrap() else {
        panic!("the first write of an empty fleet commits");
    };
    // Node b has not seen v1: its write (checked against an old set) is refused.
    assert_eq!(
        objects::put(&db, "b", 0, &[row("t2")]).await.unwrap(),
        Put::Stale
    );
    let Put::Committed(v2) = objects::put(&db, "b", v1, &[row("t2")]).await.unwrap() else {
        panic!("a writer at the latest version commits");
    };
    assert!(v2 > v1);

    let batch = [
        Entry::add("", "A@x.test", "bad-mailbox", "bounce").unwrap(),
        Entry::remove("", "a@x.test").unwrap(),
        Entry::add("acme", "b@x.test", "manual", "operator").unwrap(),
    ];
    suppressions::put(&db, "a", &batch).await.expect("batch");
    let rows = services::psql(
        db_name(&url),
        "SELECT tenant || '|' || address || '|' || deleted FROM suppressions ORDER BY address",
    );
    assert_eq!(rows.trim(), "|a@x.test|true\nacme|b@x.test|false");
}
