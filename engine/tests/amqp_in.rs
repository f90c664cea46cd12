//! RabbitMQ injection (`[[amqp_in]]`) against the real RabbitMQ and the
//! real binary: messages published as JSON reach the sink; a malformed and
//! an over-quota message land in the dead-letter queue with their reasons;
//! 10,000 messages consumed by three nodes while one is killed with SIGKILL
//! and restarted are all delivered, duplicates only from in-flight work.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use support::{Daemon, DaemonConfig, Sink};

const QUEUE: &str = "sendengine.inject";
const DEAD: &str = "sendengine.inject.dead";

/// The test's own AMQP client (publisher confirms on), on its own runtime.
struct Broker {
    rt: tokio::runtime::Runtime,
    _connection: Connection,
    channel: Channel,
}

impl Broker {
    fn connect(url: &str) -> Broker {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (connection, channel) = rt.block_on(async {
            let c = Connection::connect(url, ConnectionProperties::default())
                .await
                .expect("connect to RabbitMQ");
            let ch = c.create_channel().await.expect("channel");
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .expect("confirms");
            // As the daemon declares it: publishing before it connects
            // must not lose anything.
            let durable = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            for q in [QUEUE, DEAD] {
                ch.queue_declare(q.into(), durable, FieldTable::default())
                    .await
                    .expect("declare");
            }
            (c, ch)
        });
        Broker {
            rt,
            _connection: connection,
            channel,
        }
    }

    /// Publishes `bodies` to `queue`, persistent, and waits for every confirm.
    fn publish(&self, queue: &str, bodies: impl IntoIterator<Item = Vec<u8>>) {
        self.rt.block_on(async {
            let mut confirms = Vec::new();
            for body in bodies {
                let confirm = self
                    .channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .expect("publish");
                confirms.push(confirm);
                if confirms.len() >= 500 {
                    for c in confirms.drain(..) {
                        assert!(matches!(c.await, Ok(Confirmation::Ack(_))));
                    }
                }
            }
            for c in confirms {
                assert!(matches!(c.await, Ok(Confirmation::Ack(_))));
            }
        });
    }

    /// Takes one message off `queue`: its body and its headers as text.
    fn get(&self, queue: &str) -> Option<(Vec<u8>, HashMap<String, String>)> {
        self.rt.block_on(async {
            let got = self
                .channel
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .expect("basic.get")?;
            got.delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
            let mut headers = HashMap::new();
            if let Some(table) = got.delivery.properties.headers() {
                for (k, v) in table.inner() {
                    if let AMQPValue::LongString(s) = v {
                        headers.insert(k.to_string(), s.to_string());
                    }
                }
            }
            Some((got.delivery.data, headers))
        })
    }

    /// A durable topic exchange and a queue bound to it with `pattern`.
    fn bind_topic(&self, exchange: &str, queue: &str, pattern: &str) {
        self.rt.block_on(async {
            let durable = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            let ch = &self.channel;
            ch.exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .expect("exchange.declare");
            ch.queue_declare(
                queue.into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("queue.declare");
            ch.queue_bind(
                queue.into(),
                exchange.into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("queue.bind");
        })
    }

    /// Takes one message off `queue`: its routing key and its body as JSON.
    fn get_json(&self, queue: &str) -> Option<(String, serde_json::Value)> {
        self.rt.block_on(async {
            let got = self
                .channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get")?;
            let body = serde_json::from_slice(&got.delivery.data).expect("an event is JSON");
            Some((got.delivery.routing_key.to_string(), body))
        })
    }

    /// Messages ready in `queue`.
    fn ready(&self, queue: &str) -> u32 {
        self.rt.block_on(async {
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            self.channel
                .queue_declare(queue.into(), passive, FieldTable::default())
                .await
                .expect("passive declare")
                .message_count()
        })
    }
}

fn injection(user: &str, id: &str, extra: &str) -> Vec<u8> {
    format!(
        r#"{{"user":"{user}","mail_from":"news@example.com","recipients":["r-{id}@example.net"]{extra},
"message":"From: news@example.com\nTo: r-{id}@example.net\nSubject: amqp {id}\nMessage-ID: <{id}@amqp.test>\n\nHello {id}\n"}}"#
    )
    .into_bytes()
}

/// A node consuming `url`'s queue, with an unlimited user `app` and a user
/// `capped` whose group allows 1 recipient a day.
fn node(sink: &Sink, url: &str, prefetch: u16) -> Daemon {
    node_with(sink, url, prefetch, "")
}

fn node_with(sink: &Sink, url: &str, prefetch: u16, top: &str) -> Daemon {
    let mut config = DaemonConfig::new(sink.addr.port());
    config.extra_smtp_in = "default_user = \"app\"\n".into();
    config.extra_top =
        format!("[[amqp_in]]\nurl = {url:?}\nqueue = \"{QUEUE}\"\nprefetch = {prefetch}\n{top}");
    config.extra_server = "[[user_group]]\nname = \"default\"\nmarketing = [\"test-sink\"]\n\
        transactional = [\"test-sink\"]\nautoresponder = [\"test-sink\"]\n\
        [[user_group]]\nname = \"capped\"\nmarketing = [\"test-sink\"]\n\
        transactional = [\"test-sink\"]\nautoresponder = [\"test-sink\"]\ndaily_limit = 1\n\
        [[user]]\nname = \"app\"\n[[user]]\nname = \"capped\"\ngroup = \"capped\"\n"
        .into();
    Daemon::start(config)
}

#[test]
fn published_messages_are_delivered_and_refusals_are_dead_lettered_with_reasons() {
    let Some(url) = support::services::fresh_vhost("amqp_in") else {
        return;
    };
    let broker = Broker::connect(&url);
    let sink = Sink::start(&[]);
    let daemon = node(&sink, &url, 20);
    broker.publish(
        QUEUE,
        [
            injection("app", "m1", ""),
            injection(
                "app",
                "m2",
                r#","channel":"transactional","campaign":"spring""#,
            ),
            b"{\"this is\": not json".to_vec(),
            injection("capped", "c1", ""),
        ],
    );
    let delivered = sink.wait_messages(3, Duration::from_secs(30));
    // The second capped message only after the first is in: the limit is
    // then reached for certain.
    broker.publish(QUEUE, [injection("capped", "c2", "")]);
    let mut ids: Vec<String> = delivered
        .iter()
        .map(|m| m["message_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["<c1@amqp.test>", "<m1@amqp.test>", "<m2@amqp.test>"]);
    let receptions = daemon.wait_events("reception", 3, Duration::from_secs(10));
    let m2 = receptions
        .iter()
        .find(|e| e["campaign"] == "spring")
        .expect("the JSON's campaign is the message's");
    assert_eq!(m2["channel"], "transactional");
    assert_eq!(m2["tenant"], "app");

    let mut dead = Vec::new();
    support::wait_for(Duration::from_secs(30), "2 dead letters", || {
        dead.extend(broker.get(DEAD));
        (dead.len() >= 2).then_some(())
    });
    let by_code: HashMap<String, (Vec<u8>, HashMap<String, String>)> = dead
        .into_iter()
        .map(|(body, h)| (h["x-sendengine-code"].clone(), (body, h)))
        .collect();
    let (body, malformed) = &by_code["554 5.6.0"];
    assert_eq!(
        body, b"{\"this is\": not json",
        "the original body, untouched"
    );
    assert!(
        malformed["x-sendengine-reason"].starts_with("Malformed injection:"),
        "{malformed:?}"
    );
    assert_eq!(malformed["x-sendengine-queue"], QUEUE);
    let (body, quota) = &by_code["451 4.7.1"];
    assert!(String::from_utf8_lossy(body).contains("c2@amqp.test"));
    assert!(
        quota["x-sendengine-reason"]
            .starts_with("The daily sending limit of 1 recipients for user capped is reached"),
        "{quota:?}"
    );
    assert_eq!(broker.ready(QUEUE), 0, "nothing left behind");
    assert_eq!(sink.messages().len(), 3, "the refused ones never went out");
}

#[test]
fn ten_thousand_messages_three_nodes_one_killed_and_restarted() {
    let Some(url) = support::services::fresh_vhost("amqp_kill") else {
        return;
    };
    const TOTAL: usize = 10_000;
    const PREFETCH: u16 = 200;
    let broker = Broker::connect(&url);
    let sink = Sink::start(&[]);
    let mut nodes: Vec<Daemon> = (0..3).map(|_| node(&sink, &url, PREFETCH)).collect();
    let started = Instant::now();
    let publisher = std::thread::spawn({
        let url = url.clone();
        move || {
            let broker = Broker::connect(&url);
            let bodies = (0..TOTAL).map(|n| injection("app", &format!("k{n}"), ""));
            broker.publish(QUEUE, bodies);
        }
    });
    let distinct = |messages: &[serde_json::Value]| -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        for m in messages {
            *seen
                .entry(m["message_id"].as_str().unwrap_or_default().to_owned())
                .or_insert(0) += 1;
        }
        seen
    };
    sink.wait_messages(TOTAL / 5, Duration::from_secs(120));
    // Duplicates can only come from the kill: none before it.
    let before = distinct(&sink.messages());
    let duplicates_before: usize = before.values().map(|n| n - 1).sum();
    assert_eq!(duplicates_before, 0, "no duplicate while every node runs");
    nodes[1].kill9();
    let killed_at = sink.messages().len();
    assert!(killed_at < TOTAL, "the kill came while work was in flight");
    std::thread::sleep(Duration::from_secs(1));
    nodes[1].restart();
    publisher.join().expect("publisher");
    let all = support::wait_for(
        Duration::from_secs(180),
        "every message at the sink",
        || {
            let seen = distinct(&sink.messages());
            (seen.len() >= TOTAL).then_some(seen)
        },
    );
    for n in 0..TOTAL {
        assert!(all.contains_key(&format!("<k{n}@amqp.test>")), "k{n} lost");
    }
    let duplicates: usize = all.values().map(|n| n - 1).sum();
    eprintln!(
        "{TOTAL} messages through 3 nodes in {:?}, node 2 killed after {killed_at} deliveries: \
         {duplicates} duplicates",
        started.elapsed()
    );
    // What the killed node had in flight: its prefetch window (admitted,
    // not yet acknowledged), the deliveries whose outcomes wait for their
    // commit (at most 1024: `deliver/unrecorded.rs`), and one message per
    // connection (`max_connections` 5) whose final reply was unread.
    let in_flight = usize::from(PREFETCH) + 1024 + 5;
    assert!(
        duplicates <= in_flight,
        "{duplicates} duplicates: more than the {in_flight} the killed node may have had in flight"
    );
    support::wait_for(Duration::from_secs(10), "the queue drained", || {
        (broker.ready(QUEUE) == 0).then_some(())
    });
    drop(nodes);
}

#[test]
fn events_are_published_to_an_exchange_by_type() {
    let Some(url) = support::services::fresh_vhost("amqp_out") else {
        return;
    };
    let broker = Broker::connect(&url);
    broker.bind_topic("sendengine.events", "events.seen", "ev.#");
    let sink = Sink::start(&[]);
    let out = format!(
        "[[amqp_out]]\nurl = {url:?}\nexchange = \"sendengine.events\"\nrouting_key = \"ev.{{type}}\"\n"
    );
    let daemon = node_with(&sink, &url, 10, &out);
    broker.publish(QUEUE, [injection("app", "e1", r#","campaign":"autumn""#)]);
    sink.wait_messages(1, Duration::from_secs(30));
    daemon.wait_events("delivery", 1, Duration::from_secs(10));
    let mut events = Vec::new();
    support::wait_for(
        Duration::from_secs(30),
        "reception and delivery events",
        || {
            events.extend(broker.get_json("events.seen"));
            (events.len() >= 2).then_some(())
        },
    );
    let (key, reception) = &events[0];
    assert_eq!(key, "ev.reception");
    assert_eq!(reception["type"], "reception");
    assert_eq!(reception["campaign"], "autumn");
    assert_eq!(reception["recipient"], "r-e1@example.net");
    let (key, delivery) = &events[1];
    assert_eq!(key, "ev.delivery");
    assert_eq!(delivery["message_id"], reception["message_id"]);
}

#[test]
fn the_consumer_reconnects_after_the_broker_drops_it_and_stops_cleanly() {
    let Some(url) = support::services::fresh_vhost("amqp_reconnect") else {
        return;
    };
    let vhost = url.rsplit('/').next().expect("vhost").to_owned();
    let broker = Broker::connect(&url);
    let sink = Sink::start(&[]);
    let mut daemon = node(&sink, &url, 10);
    daemon.wait_stderr("consuming", Duration::from_secs(30));
    broker.publish(QUEUE, [injection("app", "before", "")]);
    sink.wait_messages(1, Duration::from_secs(30));
    // As a broker restart would: every connection of the vhost is closed
    // (the test's own too, so it opens a new one).
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "close_all_connections",
            "-p",
            &vhost,
            "test: broker restart",
        ])
        .output()
        .expect("run rabbitmqctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    daemon.wait_stderr("reconnecting", Duration::from_secs(10));
    let broker = Broker::connect(&url);
    broker.publish(QUEUE, [injection("app", "after", "")]);
    let ids: Vec<String> = sink
        .wait_messages(2, Duration::from_secs(60))
        .iter()
        .map(|m| m["message_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids, ["<before@amqp.test>", "<after@amqp.test>"]);
    // The first line was taken by wait_stderr: no second one.
    let again = daemon
        .stderr_so_far()
        .iter()
        .filter(|l| l.contains("reconnecting"))
        .count();
    assert_eq!(again, 0, "the loss is said once");
    assert!(daemon.stop().success(), "a clean stop while consuming");
}

#[test]
fn a_clean_stop_mid_stream_loses_nothing_and_duplicates_nothing() {
    let Some(url) = support::services::fresh_vhost("amqp_stop") else {
        return;
    };
    const TOTAL: usize = 1_000;
    let broker = Broker::connect(&url);
    let sink = Sink::start(&[]);
    let mut daemon = node(&sink, &url, 50);
    broker.publish(
        QUEUE,
        (0..TOTAL).map(|n| injection("app", &format!("s{n}"), "")),
    );
    sink.wait_messages(TOTAL / 10, Duration::from_secs(60));
    // SIGTERM while deliveries are in flight: admissions under way finish
    // and are acknowledged, the rest go back to the queue.
    assert!(daemon.stop().success());
    eprintln!(
        "stopped with {} messages still in the queue",
        broker.ready(QUEUE)
    );
    daemon.restart();
    sink.wait_messages(TOTAL, Duration::from_secs(120));
    // Time for a duplicate, were there one, to arrive.
    std::thread::sleep(Duration::from_secs(2));
    let mut ids: Vec<String> = sink
        .messages()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), TOTAL, "none lost");
    assert_eq!(
        sink.messages().len(),
        TOTAL,
        "no duplicate after a clean stop"
    );
}
