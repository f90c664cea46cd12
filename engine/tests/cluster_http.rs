//! HTTP idempotency keys across a fleet: two nodes with `[http_in]`, one
//! real PostgreSQL, one sink, Python's `urllib` as the client. A retry that
//! a load balancer sends to the other node gets the first answer back and
//! queues nothing twice; another request under the same key is 409 there
//! too; a key that another node holds is 503 with Retry-After, naming
//! that node; a try that ended with a 429 lets the key go to any node. And
//! the fleet's record itself: what a try without a final answer queued is
//! handed to the next node that takes the key; a node killed in the middle
//! of a request lets its key go when it is back, and the retry on the
//! other node queues only the rest.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sendengine::cluster::idempotency::{FleetKey, FleetKeys, Holder};
use sendengine::cluster::postgres::Database;
use serde_json::json;
use support::fleet::FleetPlace;
use support::http_api::{Api, recipients, sink_on};
use support::{free_port, services, wait_for};

fn request(key: &str, n: usize) -> String {
    json!({"envelope_sender": "a@example.com", "content": "Subject: s\n\nhi {{ i }}\n",
           "recipients": recipients(n), "sendengine": {"idempotency_key": key}})
    .to_string()
}

/// The fingerprint the daemon keeps of a request body (SHA-256, hex).
fn fingerprint(body: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_retry_that_reaches_another_node_gets_the_first_answer_and_queues_nothing_twice() {
    let Some(place) = FleetPlace::new("http_idem", false) else {
        return;
    };
    let sink_port = free_port();
    // A fleet-wide daily limit of 7 recipients for the tests' user.
    let group = "[[user_group]]\nname = \"default\"\nmarketing = [\"test-sink\"]\n\
        transactional = [\"test-sink\"]\nautoresponder = [\"test-sink\"]\ndaily_limit = 7\n";
    let Some(a) = Api::start_in(&place.node_config("a"), "", group, sink_port, true) else {
        return;
    };
    let Some(b) = Api::start_in(&place.node_config("b"), "", group, sink_port, false) else {
        return;
    };

    // Answered on A, retried on B; and the other way round.
    let order = request("order-1", 3);
    let first = a.post(&order);
    assert_eq!(first["status"], 200, "{first}");
    assert_eq!(first["body"]["success_count"], 3, "{first}");
    let retried = b.post(&order);
    assert_eq!(retried["status"], 200, "{retried}");
    assert_eq!(retried["body"], first["body"], "B gives A's answer back");
    a.delivered(3);
    std::thread::sleep(Duration::from_millis(500));
    let sink = a.sink.as_ref().unwrap();
    assert_eq!(sink.messages().len(), 3, "the retry on B queued nothing");
    let other = request("order-2", 2);
    let first_b = b.post(&other);
    assert_eq!(first_b["body"]["success_count"], 2, "{first_b}");
    assert_eq!(a.post(&other)["body"], first_b["body"]);

    // Another request under a key answered elsewhere.
    let changed = request("order-1", 1);
    let conflict = b.post(&changed);
    assert_eq!(conflict["status"], 409, "{conflict}");
    assert_eq!(
        conflict["body"]["error"]["field"],
        "sendengine.idempotency_key"
    );

    // A key a third node took and never answered (it crashed, say): B
    // cannot know what that node queued, so it queues nothing.
    let held = request("order-3", 2);
    let expires = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_secs(600);
    let db = place.database.rsplit('/').next().unwrap();
    services::psql(
        db,
        &format!(
            "INSERT INTO http_idempotency (tenant, key, fingerprint, node, expires_ms) \
             VALUES ('app', 'order-3', '{}', 'c', {})",
            fingerprint(&held),
            expires.as_millis()
        ),
    );
    let busy = b.post(&held);
    assert_eq!(busy["status"], 503, "{busy}");
    assert_eq!(busy["headers"]["retry-after"], "5", "{busy}");
    let message = busy["body"]["error"]["message"].as_str().unwrap();
    assert!(message.contains("node `c`"), "{message}");

    // Once expired, the key is free again.
    services::psql(
        db,
        "UPDATE http_idempotency SET expires_ms = 0 WHERE key = 'order-3'",
    );
    let taken = b.post(&held);
    assert_eq!(taken["body"]["success_count"], 2, "{taken}");

    // A try that ended without a final answer lets the key go: here a 429
    // on A, nothing queued (7 of 7 used); the retry on B is
    // served (another 429), not turned away as held by A.
    let over = request("order-4", 2);
    let limited = a.post(&over);
    assert_eq!(limited["status"], 429, "{limited}");
    let retried = b.post(&over);
    assert_eq!(retried["status"], 429, "{retried}");
    assert_eq!(retried["body"]["success_count"], 0, "{retried}");

    let delivered = a.delivered(7);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.messages().len(), 7, "nothing was queued twice");
    assert_eq!(delivered.len(), 7);
}

/// The record's rules, straight against PostgreSQL.
#[tokio::test]
async fn the_record_hands_a_try_s_queued_recipients_to_the_next_node() {
    let Some(url) = services::fresh_database("http_idem_record") else {
        return;
    };
    let db = std::sync::Arc::new(Database::new(&url));
    let [a, b, c] = ["a", "b", "c"].map(|node| FleetKeys::new(db.clone(), node));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let key = |fingerprint| FleetKey {
        tenant: "acme",
        key: "k",
        fingerprint,
        expires_ms: now + 60_000,
    };
    let take = |node: &'static str, fingerprint: &'static str| {
        let keys = match node {
            "a" => &a,
            "b" => &b,
            _ => &c,
        };
        async move { keys.take(&key(fingerprint), now).await.unwrap() }
    };
    let nothing = std::collections::HashSet::new;

    assert_eq!(take("a", "f").await, Holder::ThisNode(nothing()));
    assert_eq!(
        take("a", "f").await,
        Holder::ThisNode(nothing()),
        "a retry on a"
    );
    assert_eq!(take("b", "f").await, Holder::OtherNode("a".into()));
    assert_eq!(take("b", "g").await, Holder::OtherRequest);
    // a's try ends with recipients 0 and 2 queued: b takes the key with them.
    a.release(&key("f"), &[0, 2]).await.unwrap();
    assert_eq!(
        take("b", "g").await,
        Holder::OtherRequest,
        "not for another body"
    );
    assert_eq!(
        take("b", "f").await,
        Holder::ThisNode(std::collections::HashSet::from([0, 2]))
    );
    assert_eq!(take("a", "f").await, Holder::OtherNode("b".into()));
    // Only the holder lets go or answers.
    a.release(&key("f"), &[]).await.unwrap();
    assert_eq!(take("a", "f").await, Holder::OtherNode("b".into()));
    b.answered(&key("f"), b"{}").await.unwrap();
    assert_eq!(take("a", "f").await, Holder::Answered(b"{}".to_vec()));
    // An expired row is taken over afresh, whatever it held; expiry
    // deletes it.
    let later = now + 120_000;
    let fresh = FleetKey {
        expires_ms: later + 60_000,
        ..key("g")
    };
    let taken = c.take(&fresh, later).await.unwrap();
    assert_eq!(taken, Holder::ThisNode(nothing()));
    assert_eq!(c.expire(later).await.unwrap(), 0);
    assert_eq!(c.expire(later + 60_001).await.unwrap(), 1);
}

#[test]
fn a_node_killed_mid_request_lets_the_key_go_when_back_and_the_other_node_finishes_it() {
    let Some(place) = FleetPlace::new("http_idem_kill", false) else {
        return;
    };
    let sink_port = free_port();
    // No sink yet: nothing is delivered before the kill, so a copy in the
    // sink later is a recipient queued twice.
    let Some(mut a) = Api::start_in(&place.node_config("a"), "", "", sink_port, false) else {
        return;
    };
    let Some(b) = Api::start_in(&place.node_config("b"), "", "", sink_port, false) else {
        return;
    };
    let n = 3000;
    let body = request("batch-9", n);
    let answered = a.post_and_kill_mid_request(&body);
    assert_ne!(answered["status"], 200, "the kill came first: {answered}");

    // While a is down, b cannot know what a queued.
    let held = b.post(&body);
    assert_eq!(held["status"], 503, "{held}");

    a.sink = Some(sink_on(sink_port, &a.store));
    a.daemon.restart();
    let retry = wait_for(Duration::from_secs(30), "the key let go by a", || {
        let r = b.post(&body);
        (r["status"] != 503).then_some(r)
    });
    assert_eq!(retry["status"], 200, "{retry}");
    assert_eq!(retry["body"]["success_count"], n, "{retry}");
    a.delivered(n);
    std::thread::sleep(Duration::from_millis(1500));
    let all = a.sink.as_ref().unwrap().messages();
    let mut rcpts: Vec<&str> = all
        .iter()
        .map(|m| m["rcpts"][0].as_str().unwrap())
        .collect();
    rcpts.sort_unstable();
    rcpts.dedup();
    assert_eq!(rcpts.len(), n, "every recipient arrived");
    assert_eq!(all.len(), n, "and none twice");
}
