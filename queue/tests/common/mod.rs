//! Helpers shared by the spool's integration tests: message builders whose
//! bodies can be recomputed for checking, and spool setup in temp dirs.

#![allow(dead_code)]

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

#[path = "../../../test-support/peers.rs"]
mod peers;
#[allow(unused_imports)] // not every test file has an optional peer
pub use peers::missing_peer;

use sendengine_queue::{MessageId, MessageMeta, NewMessage, Spool, SpoolConfig, SpoolError};

/// Guards every wait in the tests against a deadlock; never reached normally.
pub const DEADLOCK_GUARD: Duration = Duration::from_secs(120);

/// A body of `len` bytes: a header naming `seed`, then CRLF lines holding
/// 8-bit bytes and NULs. The same arguments give the same bytes.
pub fn body(seed: u64, len: usize) -> Vec<u8> {
    let mut out = format!("X-Seed: {seed}\r\n\r\n").into_bytes();
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.push(state as u8);
        if out.len() % 78 == 0 {
            out.extend_from_slice(b"\r\n");
        }
    }
    out.truncate(len.max(1));
    out
}

pub fn message(seed: u64, recipients: usize, body_len: usize) -> NewMessage {
    NewMessage {
        mail_from: format!("sender-{seed}@example.com"),
        recipients: (0..recipients)
            .map(|i| format!("rcpt{i}-{seed}@example.net"))
            .collect(),
        body: body(seed, body_len).into(),
        meta: MessageMeta {
            tenant: "acme".into(),
            group: "newsletters".into(),
            channel: "marketing".into(),
            campaign: format!("campaign-{seed}"),
            route: "relay-eu".into(),
            received_at_ms: 1_700_000_000_000 + seed,
            client: "192.0.2.1 client.example".into(),
            return_path_domain: "sl.example.com".into(),
            metadata: String::new(),
        },
        quotas: Vec::new(),
        tracking: None,
        idempotency: None,
    }
}

pub fn config(dir: &Path) -> SpoolConfig {
    let mut cfg = SpoolConfig::new(dir);
    // Small caches: several spools may be open at once in one test process.
    cfg.cache_bytes = 8 * 1024 * 1024;
    cfg
}

pub fn open(dir: &Path) -> Spool {
    Spool::open(config(dir)).expect("open spool")
}

/// [`config`] with every body in segment files, however short the queue.
pub fn config_in_segments(dir: &Path) -> SpoolConfig {
    let mut cfg = config(dir);
    cfg.segment_bodies_from = 0;
    cfg
}

pub fn open_in_segments(dir: &Path) -> Spool {
    Spool::open(config_in_segments(dir)).expect("open spool")
}

/// Starts an insert and returns where its result will arrive.
pub fn insert_async(
    spool: &Spool,
    msg: NewMessage,
    claimed: bool,
) -> mpsc::Receiver<Result<MessageId, SpoolError>> {
    let (tx, rx) = mpsc::channel();
    spool.insert(
        msg,
        claimed,
        Box::new(move |result| {
            let _ = tx.send(result);
        }),
    );
    rx
}

pub fn wait<T>(rx: &mpsc::Receiver<T>) -> T {
    rx.recv_timeout(DEADLOCK_GUARD).expect("completion arrived")
}

/// Checks that `id` is stored with exactly what `message(seed, ..)` built.
pub fn assert_stored(spool: &Spool, id: MessageId, expected: &NewMessage) {
    let stored = spool
        .load(id)
        .expect("load")
        .unwrap_or_else(|| panic!("message {id:016x} is missing"));
    assert_eq!(stored.id, id);
    assert_eq!(stored.mail_from, expected.mail_from);
    assert_eq!(stored.recipients, expected.recipients);
    assert_eq!(stored.meta, expected.meta);
    assert!(*stored.body == *expected.body, "body of {id:016x} differs");
}
