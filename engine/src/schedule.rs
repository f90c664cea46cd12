//! The scheduler: moves due recipients from the spool's schedule index
//! into the routes' ready queues.
//!
//! Retries and any backlog larger than the ready queues wait on disk; this
//! loop claims as many due entries as the queues have room for, groups them
//! by message so that a message's recipients share one transaction, and
//! sleeps until the next entry is due (at most `MAX_SLEEP`, so that room
//! freed by the workers is noticed). When the spool has emptied it is
//! compacted, giving disk space back after a burst.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sendengine_queue::{Claimed, MessageId};
use tokio::sync::watch;

use crate::deliver::job_for;
use crate::engine::Engine;
use crate::timefmt::now_ms;

const MAX_SLEEP: Duration = Duration::from_millis(500);
/// Most recipients claimed at once, so one claim never holds the spool's
/// writer (and with it every SMTP session's commit) for long.
const CLAIM_BATCH: usize = 2_000;

pub async fn run(engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) {
    let mut compactor = Compactor {
        needed: true,
        last: None,
    };
    loop {
        // From this loop, so that a stuck scheduler stops the pings and
        // systemd restarts the daemon (`WatchdogSec=`).
        crate::systemd::notifier().watchdog_ping();
        let room = engine.router.room().min(CLAIM_BATCH);
        let claimed = if room > 0 {
            claim(&engine, room).await
        } else {
            0
        };
        let wait = if claimed == room && room > 0 {
            // More may be due right now.
            Duration::from_millis(1)
        } else {
            compactor.run_if_idle(&engine).await;
            next_wait(&engine).await
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Claims up to `limit` due recipients and queues them; returns how many.
async fn claim(engine: &Arc<Engine>, limit: usize) -> usize {
    let spool = engine.spool.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let claimed = spool.claim_due(now_ms(), limit)?;
        let count = claimed.len();
        let mut jobs = Vec::new();
        for (id, rcpts) in group_by_message(claimed) {
            // A message deleted meanwhile simply has nothing left to do.
            if let Some(message) = spool.load(id)? {
                jobs.push(job_for(Arc::new(message), rcpts));
            }
        }
        Ok::<_, sendengine_queue::SpoolError>((count, jobs))
    })
    .await;
    match loaded {
        Ok(Ok((count, jobs))) => {
            jobs.into_iter().for_each(|job| engine.router.dispatch(job));
            count
        }
        Ok(Err(e)) => {
            log::error!("scheduler could not read the spool: {e}");
            0
        }
        Err(_) => 0,
    }
}

/// Groups claimed recipients by message, keeping the order of first sight.
fn group_by_message(claimed: Vec<Claimed>) -> Vec<(MessageId, Vec<(u32, u32)>)> {
    let mut order: Vec<(MessageId, Vec<(u32, u32)>)> = Vec::new();
    let mut index: HashMap<MessageId, usize> = HashMap::new();
    for c in claimed {
        let slot = *index.entry(c.id).or_insert_with(|| {
            order.push((c.id, Vec::new()));
            order.len() - 1
        });
        order[slot].1.push((c.rcpt, c.attempts));
    }
    order
}

async fn next_wait(engine: &Arc<Engine>) -> Duration {
    let spool = engine.spool.clone();
    let next = tokio::task::spawn_blocking(move || spool.next_due_ms())
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    match next {
        Some(due) => Duration::from_millis(due.saturating_sub(now_ms())).min(MAX_SLEEP),
        None => MAX_SLEEP,
    }
}

/// Gives disk space back once each time the spool has emptied, at most
/// every `COMPACT_INTERVAL` (compaction holds up the spool's writer).
struct Compactor {
    needed: bool,
    last: Option<tokio::time::Instant>,
}

const COMPACT_INTERVAL: Duration = Duration::from_secs(60);

impl Compactor {
    async fn run_if_idle(&mut self, engine: &Arc<Engine>) {
        let spool = engine.spool.clone();
        let Ok(Ok(stats)) = tokio::task::spawn_blocking(move || spool.stats()).await else {
            return;
        };
        if stats.messages > 0 {
            self.needed = true;
            return;
        }
        let recent = self.last.is_some_and(|t| t.elapsed() < COMPACT_INTERVAL);
        if !self.needed || recent {
            return;
        }
        let spool = engine.spool.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || spool.compact()).await {
            log::error!("spool compaction failed: {e}");
        }
        self.needed = false;
        self.last = Some(tokio::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_grouped_by_message_in_order() {
        let c = |id, rcpt| Claimed {
            id,
            rcpt,
            attempts: 1,
        };
        let groups = group_by_message(vec![c(7, 0), c(3, 0), c(7, 2), c(3, 1)]);
        assert_eq!(
            groups,
            vec![(7, vec![(0, 1), (2, 1)]), (3, vec![(0, 1), (1, 1)])]
        );
    }
}
