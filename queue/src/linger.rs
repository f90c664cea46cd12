//! The writer's commit linger at a moderate rate (issue #20, goal 3).
//!
//! At full load the group commit fills itself: requests pile up while a
//! commit runs. At half that rate a commit is often over before the next
//! request arrives, so each message pays a commit of its own (redb's commit
//! work, the fdatasync, the wake-ups). When requests are flowing (the last
//! commit ended a moment ago) and the batch is small, the writer waits a
//! bounded time for a few more: PostgreSQL's `commit_delay`, with its test
//! "other transactions are active" read as "the writer was just busy". After
//! an idle spell it does not wait, so a lone message is committed at once.

use std::time::{Duration, Instant};

/// Longest wait for more requests before a commit.
pub(crate) const LINGER: Duration = Duration::from_micros(500);
/// A batch of this many requests is committed without waiting.
pub(crate) const ENOUGH: usize = 4;
/// Requests count as flowing when the last commit ended this recently.
pub(crate) const FLOWING: Duration = Duration::from_millis(2);

#[derive(Debug, Default)]
pub(crate) struct Linger {
    last_commit_end: Option<Instant>,
}

impl Linger {
    /// Until when a batch of `len` requests waits for more, if at all;
    /// `durable`: the batch will fdatasync (other commits are cheap).
    pub(crate) fn deadline(&self, len: usize, durable: bool, now: Instant) -> Option<Instant> {
        let flowing = self
            .last_commit_end
            .is_some_and(|end| now.saturating_duration_since(end) < FLOWING);
        (durable && flowing && len < ENOUGH).then(|| now + LINGER)
    }

    pub(crate) fn committed(&mut self, at: Instant) {
        self.last_commit_end = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_only_for_small_durable_batches_while_requests_flow() {
        let start = Instant::now();
        let mut linger = Linger::default();
        assert_eq!(linger.deadline(1, true, start), None, "no commit yet");
        linger.committed(start);
        let soon = start + Duration::from_micros(300);
        assert_eq!(linger.deadline(1, true, soon), Some(soon + LINGER));
        assert_eq!(
            linger.deadline(ENOUGH, true, soon),
            None,
            "batch big enough"
        );
        assert_eq!(
            linger.deadline(1, false, soon),
            None,
            "no fdatasync to share"
        );
        let idle = start + FLOWING;
        assert_eq!(linger.deadline(1, true, idle), None, "after an idle spell");
    }
}
