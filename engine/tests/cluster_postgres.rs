//! The cluster's database plumbing against a real PostgreSQL: schema
//! creation by several nodes at once, LISTEN/NOTIFY as change notices, and
//! a statement repeated when its connection dies under it.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sendengine::cluster::postgres::{Database, Notice, listen, timed};
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

/// A statement that meets a connection PostgreSQL has just ended (a
/// restart, a terminated backend) runs again on a new one, once: the first
/// `fleet status` after a database restart answers instead of failing.
/// A statement that fails for any other reason is not repeated.
#[tokio::test]
async fn a_read_whose_connection_dies_under_it_runs_again_on_a_new_one() {
    let Some(url) = support::services::fresh_database("pg_repeat") else {
        return;
    };
    let db = Database::new(&url);
    let calls = AtomicUsize::new(0);
    let pid = db
        .repeatable(|client| {
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                // The first run's backend ends under it, as in a restart.
                let sql = if first {
                    "SELECT pg_terminate_backend(pg_backend_pid())::int4"
                } else {
                    "SELECT pg_backend_pid()"
                };
                Ok(timed(client.query_one(sql, &[])).await?.get::<_, i32>(0))
            }
        })
        .await
        .expect("the read runs again on a new connection");
    assert!(pid > 0);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    calls.store(0, Ordering::SeqCst);
    let wrong = db
        .repeatable(|client| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { timed(client.query_one("SELECT * FROM no_such_table", &[])).await }
        })
        .await;
    assert!(wrong.is_err());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "an SQL error is not repeated"
    );
}
