//! HTTP idempotency keys across a fleet: two nodes with `[http_in]`, one
//! real PostgreSQL, one sink, Python's `urllib` as the client. A retry that
//! a load balancer sends to the other node gets the first answer back and
//! queues nothing twice; another request under the same key is 409 there
//! too; a key that another node took and has not answered is 503 with
//! Retry-After, naming that node.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use support::fleet::FleetPlace;
use support::http_api::{Api, recipients};
use support::{free_port, services};

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
    let Some(a) = Api::start_in(&place.node_config("a"), "", "", sink_port, true) else {
        return;
    };
    let Some(b) = Api::start_in(&place.node_config("b"), "", "", sink_port, false) else {
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
            "INSERT INTO http_idempotency VALUES ('app', 'order-3', '{}', 'c', NULL, {})",
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

    let delivered = a.delivered(7);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.messages().len(), 7, "nothing was queued twice");
    assert_eq!(delivered.len(), 7);
}
