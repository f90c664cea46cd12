//! The DKIM signing threads: one per CPU, fed by one queue.
//!
//! An RSA-2048 signature costs about a third of a millisecond of CPU. On the
//! async workers it would stall every session they serve. On tokio's
//! blocking pool each admission waiting for its signature got a thread of
//! its own: twenty clients made twenty runnable signing threads, which on
//! two cores crowded out the async worker that answers those clients
//! (RSA-2048 −4% msgs/s with one async worker; with this pool +13%,
//! BENCHMARKS.md, issue 20, session 13). A fixed pool keeps the runnable
//! threads to what the cores can run; a message waits in the queue instead.
//!
//! The queue has no bound of its own, and needs none: each job is an
//! admission in progress, whose body the SMTP and HTTP data budgets already
//! count and whose number their connection and request limits bound.

use std::panic::{self, AssertUnwindSafe};

use crossbeam::channel::{self, Sender};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// Threads that run CPU-heavy work for async tasks.
pub struct SigningPool {
    jobs: Sender<Job>,
    threads: usize,
}

impl SigningPool {
    /// Starts `threads` threads (at least one). They end when the pool is
    /// dropped and the queue is empty.
    pub fn start(threads: usize) -> std::io::Result<SigningPool> {
        let threads = threads.max(1);
        let (jobs, queue) = channel::unbounded::<Job>();
        for _ in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("dkim-signer".into())
                .spawn(move || {
                    for job in queue {
                        // A panicking job drops its reply: its caller learns
                        // that it failed, and the thread goes on.
                        let _ = panic::catch_unwind(AssertUnwindSafe(job));
                    }
                })?;
        }
        Ok(SigningPool { jobs, threads })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `work` on a pool thread and returns its result; `None` if it
    /// panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (reply, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(work());
        });
        self.jobs.send(job).ok()?;
        result.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_work_on_its_own_threads_and_survives_a_panic() {
        let pool = SigningPool::start(2).unwrap();
        let name = pool
            .run(|| std::thread::current().name().map(str::to_owned))
            .await;
        assert_eq!(name, Some(Some("dkim-signer".to_owned())));
        assert_eq!(pool.run(|| panic!("a failed signature")).await, None::<()>);
        let sums = tokio::join!(pool.run(|| 1), pool.run(|| 2), pool.run(|| 3));
        assert_eq!(sums, (Some(1), Some(2), Some(3)));
    }
}
