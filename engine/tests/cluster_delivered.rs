//! The fleet's delivered index (`cluster::delivered`) against a real
//! PostgreSQL: node numbers, rows written by one node and found by another,
//! lookups of tags that name no node or a node nobody has, and expired rows
//! pruned when a node starts.

mod support;

use std::sync::Arc;
use std::time::Duration;

use sendengine::cluster::delivered::{Found, SharedDelivered};
use sendengine::cluster::{Cluster, ClusterSettings};
use sendengine_bounces::verp::Tagged;
use sendengine_queue::{Delivered, first_id_at};
use support::services::{fresh_database, psql};

const DAY: Duration = Duration::from_secs(86_400);

fn node(name: &str, url: &str) -> Arc<SharedDelivered> {
    let cluster = Cluster::new(
        ClusterSettings {
            node: name.into(),
            database: url.into(),
            redis: None,
            redis_prefix: "sendengine:".into(),
        },
        Arc::new(|_: &str, _, _| 0),
    );
    SharedDelivered::start(&cluster, DAY)
}

async fn numbered(name: &str, url: &str) -> Arc<SharedDelivered> {
    let shared = node(name, url);
    shared.wait_for_number(Duration::from_secs(10)).await;
    assert!(shared.node().is_some(), "node {name} got no number");
    shared
}

async fn lookup(shared: &Arc<SharedDelivered>, tagged: Tagged) -> Found {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || shared.lookup_blocking(tagged))
        .await
        .unwrap()
        .expect("PostgreSQL answers")
}

fn row(id: u64, tenant: &str, header: &str) -> Delivered {
    Delivered {
        id,
        rcpt: 0,
        tenant: tenant.into(),
        campaign: "spring".into(),
        recipient: "bob@example.net".into(),
        header_message_id: header.into(),
        ..Delivered::default()
    }
}

fn now_ms() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.unwrap().as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_writes_another_finds_and_ambiguity_is_not_guessed() {
    let Some(url) = fresh_database("cluster_delivered") else {
        return;
    };
    let a = numbered("a", &url).await;
    let b = numbered("b", &url).await;
    let (na, nb) = (a.node().unwrap(), b.node().unwrap());
    assert_ne!(na, nb);
    // A restarted node keeps its number.
    assert_eq!(numbered("a", &url).await.node(), Some(na));

    // The same message id on both nodes (ids are unique per node only).
    let id = first_id_at(now_ms()) + 7;
    a.offer(vec![row(id, "acme", "<m\0@a>")]);
    b.offer(vec![row(id, "other", "<m@b>")]);
    let by_node = |node| Tagged {
        node: Some(node),
        id,
        rcpt: 0,
    };
    let Found::Row(at_a) = lookup(&b, by_node(na)).await else {
        panic!("A's row not found from B");
    };
    assert_eq!(at_a.tenant, "acme");
    assert_eq!(at_a.campaign, "spring");
    assert_eq!(at_a.recipient, "bob@example.net");
    assert_eq!(at_a.header_message_id, "<m@a>", "NUL dropped, row kept");
    let Found::Row(at_b) = lookup(&a, by_node(nb)).await else {
        panic!("B's row not found from A");
    };
    assert_eq!(at_b.tenant, "other");
    // A standalone tag names no node: two nodes have the pair, no guess.
    let standalone = Tagged::standalone(id, 0);
    assert_eq!(lookup(&a, standalone).await, Found::Missing);
    assert_eq!(lookup(&a, by_node(4242)).await, Found::UnknownNode(4242));

    // One node has it: a standalone tag ties.
    let single = first_id_at(now_ms()) + 9;
    a.offer(vec![row(single, "acme", "")]);
    let found = lookup(&b, Tagged::standalone(single, 0)).await;
    assert!(
        matches!(found, Found::Row(ref r) if r.tenant == "acme"),
        "{found:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_node_prunes_its_expired_rows_only() {
    let Some(url) = fresh_database("cluster_delivered_prune") else {
        return;
    };
    let a = numbered("a", &url).await;
    let b = numbered("b", &url).await;
    let (na, nb) = (a.node().unwrap(), b.node().unwrap());
    let old = first_id_at(now_ms() - 2 * DAY.as_millis() as u64) as i64;
    let fresh = first_id_at(now_ms()) as i64;
    for (node, id) in [(na, old), (na, fresh), (nb, old)] {
        psql(
            &url,
            &format!(
                "INSERT INTO delivered VALUES ({node}, {id}, 0, 't', '', '', '', 'x@example.net', '', '', 0)"
            ),
        );
    }
    // A again (a restart): its rows older than a day go, B's stay.
    numbered("a", &url).await;
    let left = support::wait_for(Duration::from_secs(20), "A's expired row pruned", || {
        let ids = psql(
            &url,
            "SELECT node, message_id FROM delivered ORDER BY node, message_id",
        );
        (!ids.contains(&format!("{na}|{old}"))).then_some(ids)
    });
    assert_eq!(
        left.lines().collect::<Vec<_>>(),
        [format!("{na}|{fresh}"), format!("{nb}|{old}")],
    );
}

/// What a stopping node does with rows it was just offered: `drain` waits
/// until every one is written (a daemon calls it at shutdown, so that a
/// bounce reaching another node ties even to the last deliveries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_until_every_offered_row_is_written() {
    let Some(url) = fresh_database("cluster_drain") else {
        return;
    };
    let a = numbered("a", &url).await;
    let first = first_id_at(now_ms());
    a.offer((0..600).map(|i| row(first + i, "acme", "<m@a>")).collect());
    let left = a
        .drain(tokio::time::Instant::now() + Duration::from_secs(10))
        .await;
    assert_eq!(left, 0, "rows still pending after the drain");
    // Right after the drain, with no waiting: all 600 are in PostgreSQL.
    let db = url.rsplit('/').next().unwrap();
    assert_eq!(psql(db, "SELECT count(*) FROM delivered").trim(), "600");
}
