//! The cluster's database plumbing against a real PostgreSQL: schema
//! creation by several nodes at once, and LISTEN/NOTIFY as change notices.

mod support;

use std::time::Duration;

use sendengine::cluster::postgres::{Database, Notice, listen};
use tokio::sync::mpsc;

async fn next(rx: &mut mpsc::Receiver<Notice>) -> Notice {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a notice within 10 s")
        .expect("listener running")
}

#[tokio::test]
async fn nodes_starting_at_once_create_the_schema_once() {
    let Some(url) = support::services::fresh_database("pg_migrate") else {
        return;
    };
    let sql = "CREATE TABLE IF NOT EXISTS things (name text PRIMARY KEY); \
               CREATE INDEX IF NOT EXISTS things_name ON things (name)";
    let nodes: Vec<Database> = (0..4).map(|_| Database::new(&url)).collect();
    let (a, b, c, d) = tokio::join!(
        nodes[0].migrate(sql),
        nodes[1].migrate(sql),
        nodes[2].migrate(sql),
        nodes[3].migrate(sql)
    );
    let results = [a, b, c, d];
    for r in results {
        r.expect("every node's migration succeeds");
    }
    let client = nodes[0].client().await.unwrap();
    client
        .execute("INSERT INTO things VALUES ('a')", &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn listen_resyncs_on_connect_and_forwards_notifies() {
    let Some(url) = support::services::fresh_database("pg_listen") else {
        return;
    };
    let (tx, mut rx) = mpsc::channel(8);
    listen(url.clone(), vec!["objects".into()], tx);
    assert_eq!(next(&mut rx).await, Notice::Resync);
    let db = Database::new(&url);
    db.client()
        .await
        .unwrap()
        .batch_execute("NOTIFY objects, 'server:relay1'")
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        Notice::Notify {
            channel: "objects".into(),
            payload: "server:relay1".into()
        }
    );
}

#[tokio::test]
async fn listen_reconnects_after_its_connection_is_killed() {
    let Some(url) = support::services::fresh_database("pg_relisten") else {
        return;
    };
    let (tx, mut rx) = mpsc::channel(8);
    listen(url.clone(), vec!["objects".into()], tx);
    assert_eq!(next(&mut rx).await, Notice::Resync);
    let db_name = url.rsplit('/').next().unwrap();
    // Kill the listener's backend, as a PostgreSQL restart would.
    support::services::psql(
        "test",
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{db_name}' AND query LIKE 'LISTEN%'"
        ),
    );
    assert_eq!(next(&mut rx).await, Notice::Resync, "re-listened");
}
