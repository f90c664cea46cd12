//! The injecting clients connected now, and the writer's wait for their
//! inserts (`SpoolConfig::commit_delay`).
//!
//! At full load a group commit gathers what arrived during the one before
//! it. At a steady half load commits are short, so each carried 2 messages
//! and its fixed cost (redb's commit, the fdatasync, the writer's wake-up)
//! was paid again and again. So a commit holding inserts from fewer than
//! half of the connected clients waits, up to `commit_delay` after its
//! oldest insert arrived, for more. Half, not all: while one half's
//! fdatasync runs the other half's messages are received, so the CPU and
//! the disk keep working side by side (waiting for every client made the
//! whole fleet of clients one wave, and cost 19% of the throughput at full
//! load). A lone client, or two, never wait. At full load batches reach
//! half by themselves or their oldest insert has already waited behind the
//! commit before, so the waits are short (there it measured 5–9% less CPU
//! per message, not a loss: BENCHMARKS.md, issue 20, session 12).
//!
//! The waiting writer is woken once, by the insert that completes its
//! half, not by each: a wake-up per message cost as much CPU as the
//! commits it saved.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, Thread};
use std::time::Instant;

use crate::writer::Shared;

/// One connected client in the count, until dropped
/// ([`crate::Spool::client_connected`]).
pub struct ClientPresence {
    shared: Arc<Shared>,
}

impl ClientPresence {
    pub(crate) fn new(shared: Arc<Shared>) -> ClientPresence {
        shared.connected_clients.fetch_add(1, Ordering::AcqRel);
        ClientPresence { shared }
    }
}

impl Drop for ClientPresence {
    fn drop(&mut self) {
        self.shared.connected_clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How many inserts the writer waits for, at least, before it commits:
/// enough to hold half of the connected clients' (rounded down, so one or
/// two clients alone never wait).
pub(crate) fn inserts_wanted(clients: usize) -> usize {
    clients / 2
}

/// Inserts handed to the writer's channel, counted so that the writer can
/// sleep until a given number has been sent.
#[derive(Default)]
pub(crate) struct InsertArrivals {
    sent: AtomicU64,
    /// The count the sleeping writer waits for; 0 while none sleeps.
    wake_at: AtomicU64,
    writer: OnceLock<Thread>,
}

impl InsertArrivals {
    /// One more insert is in the channel.
    pub(crate) fn sent(&self) {
        let sent = self.sent.fetch_add(1, Ordering::SeqCst) + 1;
        let wake_at = self.wake_at.load(Ordering::SeqCst);
        if wake_at != 0
            && sent >= wake_at
            && let Some(writer) = self.writer.get()
        {
            writer.unpark();
        }
    }

    /// Sleeps until `count` inserts have been sent in all, or `until`.
    /// Only ever called by one thread, the writer.
    pub(crate) fn sleep_until_sent(&self, count: u64, until: Instant) {
        self.writer.get_or_init(thread::current);
        self.wake_at.store(count.max(1), Ordering::SeqCst);
        while self.sent.load(Ordering::SeqCst) < count {
            let now = Instant::now();
            if now >= until {
                break;
            }
            thread::park_timeout(until - now);
        }
        self.wake_at.store(0, Ordering::SeqCst);
    }
}
