//! The bytes of DATA one listener holds in memory at once, for all its
//! sessions together (`max_data_in_flight`).
//!
//! A per-message size limit alone lets 1,000 connections hold 1,000
//! messages; the budget bounds the total. A session reserves room before
//! its message buffer grows (all of a declared SIZE at once, else chunk by
//! chunk as the message arrives) and gives it back when the reply to DATA
//! is sent, so the bytes admission works on count too. Counted in KiB so
//! that one reservation of any size fits a semaphore request.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a session waits for room before it answers 451 4.3.1.
pub const BUDGET_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct DataBudget {
    kib: Arc<Semaphore>,
    total_kib: usize,
}

/// Room one message holds; returned to the budget on drop.
#[derive(Debug, Default)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    held_kib: usize,
}

impl DataBudget {
    pub fn new(total_bytes: u64) -> DataBudget {
        let total_kib = usize::try_from(total_bytes.div_ceil(1024))
            .unwrap_or(usize::MAX)
            .clamp(1, Semaphore::MAX_PERMITS);
        DataBudget {
            kib: Arc::new(Semaphore::new(total_kib)),
            total_kib,
        }
    }

    /// Grows `reservation` to cover `bytes`, waiting at most `wait` for
    /// room; false if it could not (the reservation is then unchanged).
    pub async fn reserve(
        &self,
        reservation: &mut Reservation,
        bytes: usize,
        wait: Duration,
    ) -> bool {
        let wanted_kib = bytes.div_ceil(1024);
        if wanted_kib <= reservation.held_kib {
            return true;
        }
        if wanted_kib > self.total_kib {
            return false;
        }
        let more = u32::try_from(wanted_kib - reservation.held_kib).unwrap_or(u32::MAX);
        let acquire = self.kib.clone().acquire_many_owned(more);
        let Ok(Ok(permit)) = tokio::time::timeout(wait, acquire).await else {
            return false;
        };
        match reservation.permit.as_mut() {
            Some(held) => held.merge(permit),
            None => reservation.permit = Some(permit),
        }
        reservation.held_kib += more as usize;
        true
    }

    /// KiB not reserved right now (for tests).
    pub fn available_kib(&self) -> usize {
        self.kib.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_room_and_give_it_back() {
        let budget = DataBudget::new(100 * 1024);
        let short = Duration::from_millis(50);
        let mut first = Reservation::default();
        assert!(budget.reserve(&mut first, 60 * 1024, short).await);
        assert!(
            budget.reserve(&mut first, 10, short).await,
            "already covered"
        );
        let mut second = Reservation::default();
        assert!(!budget.reserve(&mut second, 50 * 1024, short).await);
        assert!(budget.reserve(&mut second, 40 * 1024, short).await);
        assert!(
            !budget.reserve(&mut first, 1 << 30, short).await,
            "beyond the total"
        );
        assert_eq!(budget.available_kib(), 0);
        drop(first);
        assert_eq!(budget.available_kib(), 60);
        assert!(
            budget.reserve(&mut second, 90 * 1024, short).await,
            "grows in place"
        );
        drop(second);
        assert_eq!(budget.available_kib(), 100);
    }
}
