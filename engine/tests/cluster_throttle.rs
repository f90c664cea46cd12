//! Cluster mode, fleet-wide throttles of delivery servers in Redis (#17):
//! the Lua scripts against a real Redis, and three real nodes sharing one
//! delivery server (`rate_per_second = 50`, `max_connections = 4`) in
//! front of the real sink, through a Redis outage and back. The test's
//! Redis is a private `redis-server` on a free port, so stopping it stops
//! nobody else's.

mod support;

use std::collections::HashMap;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sendengine::deliver::{FleetSettings, FleetThrottles, RateGrant};
use serde_json::Value;
use support::fleet::FleetPlace;
use support::{Daemon, DaemonConfig, Sink, free_port, services};

const RATE: f64 = 50.0;
const MAX_CONNECTIONS: u64 = 4;
const NODES: [&str; 3] = ["a", "b", "c"];
/// Messages queued on each node: more than the whole run delivers.
const PER_NODE: usize = 1000;

fn throttles(url: &str, prefix: &str, node: &str) -> Arc<FleetThrottles> {
    FleetThrottles::new(FleetSettings {
        redis: url.to_owned(),
        prefix: format!("{prefix}:"),
        node: node.to_owned(),
        live_nodes: Arc::new(|| 1),
    })
    .expect("a Redis client")
}

#[tokio::test]
async fn lua_scripts_share_a_rate_and_lease_connections() {
    let Some((url, prefix)) = services::fresh_redis("throttle_lua") else {
        return;
    };
    let (a, b) = (throttles(&url, &prefix, "a"), throttles(&url, &prefix, "b"));
    // 10 per second, as `Throttle` computes it: a burst of 10, then 100 ms apart.
    let limits = vec![(
        a.key("relay", "per_second"),
        Duration::from_millis(100),
        Duration::from_millis(900),
    )];
    for i in 0..6 {
        let node = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            node.take(&limits, 1).await,
            Some(RateGrant::Go(1)),
            "message {i}"
        );
    }
    assert_eq!(
        a.take(&limits, 3).await,
        Some(RateGrant::Go(3)),
        "a block of three, as three asks for one"
    );
    assert_eq!(
        b.take(&limits, 5).await,
        Some(RateGrant::Go(1)),
        "a block is cut to the burst's room"
    );
    match b.take(&limits, 5).await.expect("Redis answers") {
        RateGrant::Wait(wait) => assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "the 11th waits for the next emission interval, whichever node asks: {wait:?}"
        ),
        grant => panic!("the burst of 10 is spent, yet Redis granted {grant:?}"),
    }

    let key = a.key("relay", "connections");
    assert_eq!(a.lease(&key, "a:1", 2).await, Some(true));
    assert_eq!(b.lease(&key, "b:1", 2).await, Some(true));
    assert_eq!(b.lease(&key, "b:2", 2).await, Some(false), "two at most");
    assert_eq!(
        a.lease(&key, "a:1", 2).await,
        Some(true),
        "a renewal is no new lease"
    );
    a.release(&key, "a:1").await;
    assert_eq!(
        b.lease(&key, "b:2", 2).await,
        Some(true),
        "a's place was given back"
    );

    // A node killed with its leases: they expire, and their places with them.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("ZADD")
        .arg(&key)
        .arg("XX")
        .arg(1)
        .arg("b:1")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(a.lease(&key, "a:2", 2).await, Some(true), "b:1 expired");
    let mut live: Vec<String> = redis::cmd("ZRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    live.sort();
    assert_eq!(live, ["a:2", "b:2"]);
    assert_eq!(
        b.lease(&key, "b:1", 2).await,
        Some(false),
        "a lease renewed after its place was taken is lost"
    );
    assert!(a.is_up() && b.is_up());
}

/// A `redis-server` of this test's own, stopped and started at will.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> Option<PrivateRedis> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !installed {
            support::missing_peer(
                "redis-server",
                "install Redis (apt-get install redis-server)",
            );
            return None;
        }
        let mut redis = PrivateRedis {
            port: free_port(),
            child: None,
        };
        redis.restart();
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        support::wait_for(Duration::from_secs(10), "the private Redis", || {
            TcpStream::connect(("127.0.0.1", self.port)).ok()
        });
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn zcard(&self, key: &str) -> u64 {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "ZCARD", key])
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn node_config(place: &FleetPlace, node: &str, sink_port: u16, metrics_port: u16) -> String {
    format!(
        r#"{cluster}
[smtp_in]
listen = ["127.0.0.1:0"]
relay_networks = ["127.0.0.0/8"]
default_user = "app"
[delivery]
retry_schedule = ["1s"]
[metrics]
listen = "127.0.0.1:{metrics_port}"
[[delivery_server]]
name = "shared-relay"
host = "127.0.0.1"
port = {sink_port}
encryption = "none"
timeout = "5s"
max_connections = {MAX_CONNECTIONS}
max_messages_per_connection = 100
rate_per_second = {RATE}
# VERP: a transaction per recipient, so a few messages queue many.
mail_from_domain = "bounce.example.net"
[[user_group]]
name = "default"
marketing = ["shared-relay"]
transactional = ["shared-relay"]
autoresponder = ["shared-relay"]
[[user]]
name = "app"
"#,
        cluster = place.node_config(node),
    )
}

/// `n` recipients of node `node` in messages of 100; the Message-ID
/// names the node.
const INJECT: &str = r#"
import smtplib, sys
host, port, n, node = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with smtplib.SMTP(host, port, timeout=60) as s:
    for i in range(n // 100):
        msg = "Message-ID: <%s.%d@test>\r\nSubject: fleet\r\n\r\nHello.\r\n" % (node, i)
        rcpts = ["rcpt%d.%d@example.net" % (i, r) for r in range(100)]
        s.sendmail("sender@example.com", rcpts, msg)
"#;

fn inject(daemon: &Daemon, node: &str) -> std::thread::JoinHandle<()> {
    let args = vec![
        daemon.addr.ip().to_string(),
        daemon.addr.port().to_string(),
        PER_NODE.to_string(),
        node.to_owned(),
    ];
    std::thread::spawn(move || {
        let out = support::python(INJECT, &args).expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
}

/// What the sink logged about one message.
struct Delivered {
    us: u64,
    node: String,
    peer: String,
    peak_sessions: u64,
}

fn delivered(sink: &Sink) -> Vec<Delivered> {
    sink.messages()
        .iter()
        .map(|m: &Value| Delivered {
            us: m["time_us"].as_u64().unwrap(),
            node: m["message_id"]
                .as_str()
                .and_then(|id| id.trim_start_matches('<').split('.').next())
                .unwrap()
                .to_owned(),
            peer: m["peer"].as_str().unwrap().to_owned(),
            peak_sessions: m["peak_sessions"].as_u64().unwrap(),
        })
        .collect()
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Messages per second in [from, to), all nodes and per node.
fn rates(log: &[Delivered], from: u64, to: u64) -> (f64, HashMap<String, f64>) {
    let secs = (to - from) as f64 / 1e6;
    let mut per_node = HashMap::new();
    let mut total = 0.0;
    for d in log.iter().filter(|d| d.us >= from && d.us < to) {
        total += 1.0;
        *per_node.entry(d.node.clone()).or_insert(0.0) += 1.0;
    }
    per_node.values_mut().for_each(|n| *n /= secs);
    (total / secs, per_node)
}

fn per_second(log: &[Delivered], from: u64, to: u64) -> Vec<usize> {
    (from..to)
        .step_by(1_000_000)
        .map(|s| {
            log.iter()
                .filter(|d| d.us >= s && d.us < s + 1_000_000)
                .count()
        })
        .collect()
}

/// The most connections of `node` (any node: "") that carried mail around
/// one instant of [from, to): a connection counts from its first message
/// to its last.
fn connections_of(log: &[Delivered], node: &str, from: u64, to: u64) -> usize {
    let of_node = |d: &&Delivered| node.is_empty() || d.node == node;
    let mut spans: HashMap<&str, (u64, u64)> = HashMap::new();
    for d in log.iter().filter(of_node) {
        let span = spans.entry(&d.peer).or_insert((d.us, d.us));
        span.1 = d.us;
    }
    log.iter()
        .filter(of_node)
        .filter(|d| d.us >= from && d.us < to)
        .map(|d| {
            let open = |s: &&(u64, u64)| s.0 <= d.us && d.us <= s.1;
            spans.values().filter(open).count()
        })
        .max()
        .unwrap_or(0)
}

fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn assert_near(what: &str, value: f64, expected: f64, tolerance: f64) {
    assert!(
        (value - expected).abs() <= expected * tolerance,
        "{what}: {value:.1} msgs/s, expected {expected:.1} ± {:.0}%",
        tolerance * 100.0
    );
}

#[test]
fn three_nodes_share_a_servers_rate_and_connections_through_a_redis_outage() {
    let Some(mut redis) = PrivateRedis::start() else {
        return;
    };
    let Some(mut place) = FleetPlace::new("throttle", false) else {
        return;
    };
    place.redis = Some((redis.url(), services::unique_name("throttle")));
    let prefix = format!("{}:", place.redis.as_ref().unwrap().1);
    let sink = Sink::start(&[]);
    let metrics_ports: Vec<u16> = NODES.iter().map(|_| free_port()).collect();
    let daemons: Vec<Daemon> = NODES
        .iter()
        .zip(&metrics_ports)
        .map(|(node, port)| {
            let text = node_config(&place, node, sink.addr.port(), *port);
            Daemon::start(DaemonConfig::custom(&text))
        })
        .collect();
    let injectors: Vec<_> = daemons
        .iter()
        .zip(NODES)
        .map(|(d, node)| inject(d, node))
        .collect();
    injectors
        .into_iter()
        .for_each(|t| t.join().expect("injection"));

    // Shared: 50 msgs/s over 20 s, at most 4 sessions, all three nodes sending.
    let first = sink.wait_messages(1, Duration::from_secs(30))[0]["time_us"]
        .as_u64()
        .unwrap();
    let from = unix_us().max(first + 2_000_000);
    let to = from + 20_000_000;
    std::thread::sleep(Duration::from_micros(to - unix_us() + 300_000));
    let log = delivered(&sink);
    let (total, per_node) = rates(&log, from, to);
    eprintln!(
        "shared: {total:.1} msgs/s {per_node:?}, {} delivered; per second: {:?}",
        log.len(),
        per_second(&log, from, to)
    );
    assert_near("the fleet's rate with Redis", total, RATE, 0.10);
    assert_eq!(per_node.len(), 3, "every node sent: {per_node:?}");
    let peak = log.last().unwrap().peak_sessions;
    assert!(
        (3..=MAX_CONNECTIONS).contains(&peak),
        "the sink saw at most {MAX_CONNECTIONS} sessions at once, and the fleet used them: {peak}"
    );
    assert!(redis.zcard(&format!("{prefix}throttle:{{shared-relay}}:connections")) <= 4);

    // Redis stopped: each node goes on alone at a third of the rate, with
    // at most 2 of the 4 connections.
    redis.stop();
    for d in &daemons {
        d.wait_stderr("Redis does not answer", Duration::from_secs(10));
    }
    // A node that held more than its share sheds them at the next renewal.
    let from = unix_us() + 3_000_000;
    let to = from + 8_000_000;
    std::thread::sleep(Duration::from_micros(to - unix_us() + 300_000));
    let log = delivered(&sink);
    let (total, per_node) = rates(&log, from, to);
    for node in NODES {
        let rate = per_node.get(node).copied().unwrap_or(0.0);
        assert_near(
            &format!("node {node}'s share without Redis"),
            rate,
            RATE / 3.0,
            0.2,
        );
        let open = connections_of(&log, node, from, to);
        assert!(open <= 2, "node {node} kept to 2 connections: {open}");
    }
    assert_near("the fleet's rate without Redis", total, RATE, 0.15);
    for port in &metrics_ports {
        let text = support::scrape_metrics(*port);
        assert_eq!(
            sample(&text, "sendengine_cluster_redis_up"),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "sendengine_cluster_redis_fallbacks_total"),
            Some(1.0)
        );
    }

    // Redis back: shared again, the leases and rate counted there.
    redis.restart();
    for d in &daemons {
        d.wait_stderr("Redis answers again", Duration::from_secs(10));
    }
    let from = unix_us() + 3_000_000;
    let to = from + 6_000_000;
    std::thread::sleep(Duration::from_micros(to - unix_us() + 300_000));
    let log = delivered(&sink);
    let (total, _) = rates(&log, from, to);
    assert_near("the fleet's rate with Redis back", total, RATE, 0.15);
    let open = connections_of(&log, "", from, to);
    assert!(
        open <= MAX_CONNECTIONS as usize,
        "the fleet is back to {MAX_CONNECTIONS} connections: {open}"
    );
    let leases = redis.zcard(&format!("{prefix}throttle:{{shared-relay}}:connections"));
    assert!(
        (1..=4).contains(&leases),
        "connections leased in Redis again: {leases}"
    );
    for port in &metrics_ports {
        assert_eq!(
            sample(
                &support::scrape_metrics(*port),
                "sendengine_cluster_redis_up"
            ),
            Some(1.0)
        );
    }
    assert!(
        log.len() < NODES.len() * PER_NODE,
        "mail was still queued all along, so the rate measured was the limit's"
    );
}
