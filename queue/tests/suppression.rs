//! Suppression lists in the spool: per tenant plus the global list,
//! case-insensitive, durable across a reopen, and refused when bad.

mod common;

use sendengine_queue::{GLOBAL_TENANT, MAX_ADDRESS_BYTES, SpoolError};

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_tenant_list_and_the_global_list_both_suppress() {
    let dir = tempfile::tempdir().unwrap();
    let spool = common::open(dir.path());
    assert!(
        spool
            .suppress(
                "acme",
                "Gone@Example.net",
                "bad-mailbox",
                "550 5.1.1 no such user"
            )
            .unwrap(),
        "new entry"
    );
    assert!(
        !spool
            .suppress("acme", "gone@example.net", "manual", "operator")
            .unwrap(),
        "already listed"
    );
    spool
        .suppress(GLOBAL_TENANT, "spamtrap@example.org", "manual", "operator")
        .unwrap();

    let asked = strings(&["GONE@example.net", "ok@example.net", "spamtrap@EXAMPLE.org"]);
    assert_eq!(
        spool.suppressed("acme", &asked).unwrap(),
        [true, false, true]
    );
    // Another tenant sees only the global list.
    assert_eq!(
        spool.suppressed("other", &asked).unwrap(),
        [false, false, true]
    );

    let listed = spool.suppressions("acme", 100).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].address, "gone@example.net");
    assert_eq!(listed[0].reason, "manual", "the latest reason wins");
    assert_eq!(listed[0].source, "operator");
    assert!(listed[0].time_ms > 1_600_000_000_000);
    let one = spool.suppression("acme", "GONE@example.net").unwrap();
    assert_eq!(one.as_ref(), listed.first());
    assert_eq!(
        spool.suppression("other", "gone@example.net").unwrap(),
        None
    );
    let global = spool.suppressions(GLOBAL_TENANT, 100).unwrap();
    assert_eq!(global.len(), 1);
    assert_eq!(global[0].tenant, "");
    spool.shutdown();
}

#[test]
fn unsuppress_removes_only_from_the_named_list() {
    let dir = tempfile::tempdir().unwrap();
    let spool = common::open(dir.path());
    spool.suppress("acme", "a@example.net", "r", "s").unwrap();
    spool
        .suppress(GLOBAL_TENANT, "b@example.net", "r", "s")
        .unwrap();

    assert!(spool.unsuppress("acme", "A@example.net").unwrap());
    assert!(!spool.unsuppress("acme", "a@example.net").unwrap(), "gone");
    assert!(
        !spool.unsuppress("acme", "b@example.net").unwrap(),
        "the global entry is not the tenant's"
    );
    let asked = strings(&["a@example.net", "b@example.net"]);
    assert_eq!(spool.suppressed("acme", &asked).unwrap(), [false, true]);
    spool.shutdown();
}

#[test]
fn the_list_survives_a_reopen_and_listing_honours_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let spool = common::open(dir.path());
    for i in 0..5 {
        spool
            .suppress("acme", &format!("user{i}@example.net"), "r", "s")
            .unwrap();
    }
    spool.suppress("acmf", "zz@example.net", "r", "s").unwrap();
    spool.shutdown();
    drop(spool);

    let spool = common::open(dir.path());
    let all = spool.suppressions("acme", 100).unwrap();
    let addresses: Vec<&str> = all.iter().map(|s| s.address.as_str()).collect();
    assert_eq!(
        addresses,
        [
            "user0@example.net",
            "user1@example.net",
            "user2@example.net",
            "user3@example.net",
            "user4@example.net"
        ],
        "only acme's entries, by address"
    );
    assert_eq!(spool.suppressions("acme", 2).unwrap().len(), 2);
    assert!(spool.suppressions("nobody", 10).unwrap().is_empty());
    spool.shutdown();
}

#[test]
fn a_fresh_spool_suppresses_nothing_and_bad_addresses_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spool = common::open(dir.path());
    assert_eq!(
        spool
            .suppressed("acme", &strings(&["x@example.net", ""]))
            .unwrap(),
        [false, false]
    );
    let too_long = format!("{}@example.net", "a".repeat(MAX_ADDRESS_BYTES));
    for bad in ["", "   ", too_long.as_str()] {
        let err = spool.suppress("acme", bad, "r", "s").unwrap_err();
        assert!(matches!(err, SpoolError::Invalid(_)), "{bad:?}: {err}");
    }
    assert!(spool.suppressions("acme", 10).unwrap().is_empty());
    spool.shutdown();
}
