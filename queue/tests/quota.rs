//! Sending quotas and configuration objects in the spool.

mod common;

use std::sync::Arc;

use sendengine_queue::{Quota, SpoolError, Window};

fn quota(name: &str, window: Window, limit: u64, amount: u64) -> Quota {
    Quota {
        name: name.into(),
        window,
        limit,
        amount,
    }
}

#[test]
fn quota_refuses_what_would_pass_the_limit_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spool = common::open(dir.path());
    let mut msg = common::message(1, 3, 100);
    msg.quotas = vec![quota("user:alice", Window::Day, 5, 3)];
    spool.insert_blocking(msg.clone(), false).unwrap();
    assert_eq!(spool.usage("user:alice", Window::Day).unwrap(), 3);

    // 3 more would make 6 > 5: refused, nothing stored, nothing counted.
    let err = spool.insert_blocking(msg.clone(), false).unwrap_err();
    let SpoolError::QuotaExceeded(refusal) = err else {
        panic!("{err}")
    };
    assert_eq!((refusal.limit, refusal.used), (5, 3));
    assert!(refusal.resets_at_ms.is_some());
    assert_eq!(spool.usage("user:alice", Window::Day).unwrap(), 3);
    assert_eq!(spool.stats().unwrap().messages, 1);

    // Two recipients still fit exactly.
    msg.recipients.truncate(2);
    msg.quotas[0].amount = 2;
    spool.insert_blocking(msg, false).unwrap();
    assert_eq!(spool.usage("user:alice", Window::Day).unwrap(), 5);
}

#[test]
fn quotas_are_exact_under_concurrency_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(common::open(dir.path()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let spool = spool.clone();
            std::thread::spawn(move || {
                let mut accepted = 0;
                for i in 0..50 {
                    let mut msg = common::message(t * 1000 + i, 1, 50);
                    msg.quotas = vec![
                        quota("user:bob", Window::Month, 123, 1),
                        quota("user:bob", Window::Lifetime, 0, 1),
                    ];
                    if spool.insert_blocking(msg, false).is_ok() {
                        accepted += 1;
                    }
                }
                accepted
            })
        })
        .collect();
    let accepted: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(accepted, 123, "exactly the limit, no more, no less");
    assert_eq!(spool.usage("user:bob", Window::Month).unwrap(), 123);
    // A limit of 0 counts without refusing.
    assert_eq!(spool.usage("user:bob", Window::Lifetime).unwrap(), 123);
    spool.shutdown();
    drop(spool);

    let spool = common::open(dir.path());
    assert_eq!(spool.usage("user:bob", Window::Month).unwrap(), 123);
    let mut msg = common::message(9, 1, 50);
    msg.quotas = vec![quota("user:bob", Window::Month, 123, 1)];
    assert!(matches!(
        spool.insert_blocking(msg, false),
        Err(SpoolError::QuotaExceeded(_))
    ));
}

#[test]
fn rolling_window_counts_today() {
    let dir = tempfile::tempdir().unwrap();
    let spool = common::open(dir.path());
    let mut msg = common::message(1, 1, 50);
    msg.quotas = vec![quota("default-domain:carol", Window::Rolling30Days, 2, 1)];
    spool.insert_blocking(msg.clone(), false).unwrap();
    spool.insert_blocking(msg.clone(), false).unwrap();
    assert!(spool.insert_blocking(msg, false).is_err());
    assert_eq!(
        spool
            .usage("default-domain:carol", Window::Rolling30Days)
            .unwrap(),
        2
    );
}

#[test]
fn objects_are_stored_listed_and_deleted_durably() {
    let dir = tempfile::tempdir().unwrap();
    let spool = common::open(dir.path());
    assert!(
        !spool
            .put_object("server", "relay-b", b"{\"b\":1}".to_vec())
            .unwrap()
    );
    assert!(
        !spool
            .put_object("server", "relay-a", b"{\"a\":1}".to_vec())
            .unwrap()
    );
    assert!(!spool.put_object("user", "alice", b"{}".to_vec()).unwrap());
    assert!(
        spool
            .put_object("server", "relay-a", b"{\"a\":2}".to_vec())
            .unwrap()
    );
    let servers = spool.objects("server").unwrap();
    assert_eq!(
        servers,
        vec![
            ("relay-a".into(), b"{\"a\":2}".to_vec()),
            ("relay-b".into(), b"{\"b\":1}".to_vec())
        ]
    );
    assert!(spool.delete_object("server", "relay-b").unwrap());
    assert!(!spool.delete_object("server", "relay-b").unwrap());
    spool.shutdown();
    drop(spool);
    let spool = common::open(dir.path());
    assert_eq!(spool.objects("server").unwrap().len(), 1);
    assert_eq!(spool.objects("user").unwrap().len(), 1);
    assert!(spool.objects("group").unwrap().is_empty());
}
