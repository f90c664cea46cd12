//! A worker's run of transactions on one connection.
//!
//! `Route::deliver` takes a job, a pooled connection (or opens one) and
//! delivers the job; while the next job may go at once (it is queued, the
//! rate lets it go, the connection has room for it), it goes too, its
//! envelope written behind the previous message's end of data. RFC 2920 3.1
//! lets message content open a pipelined group, so the final reply of one
//! message and the envelope replies of the next come back together: one
//! write, one read and one wake-up per message fewer than in lockstep.
//!
//! Failures keep the meaning they have one message at a time:
//! - a job that is the first on a fresh connection fails at connection level
//!   (the route goes down, the job to the next server);
//! - a job on a connection that worked a moment ago, which the server closed
//!   before answering anything of it (I/O error or 421 at MAIL, or while
//!   the job before was being answered), goes again on a fresh connection,
//!   with no attempt counted;
//! - any other failure defers the job's recipients;
//! - a message whose body went out is never sent again on its own: if its
//!   final reply is lost, its recipients wait for a retry, as they would in
//!   lockstep.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::server_limits::ConnectionLease;
use super::{ConnectFailure, Job, Route, RouteStats, mail_from, recipients, tls_label};
use crate::smtp::client::{
    AwaitingFinal, Connection, ContentNeeds, Envelope, Opened, Reply, Sent, SessionError,
};

/// How long a worker waits on the server before the jobs queued behind it
/// may wake another worker: longer than a transaction with a relay nearby
/// takes, short against a slow server's.
const PATIENCE: Duration = Duration::from_millis(10);

/// A worker's open connection and the transactions it has carried.
pub(super) struct Pooled {
    pub(super) connection: Connection,
    transactions: usize,
}

/// A job in a worker's hands, counted as in flight (`RouteStats`) until
/// its outcome went to the recorder or to failover and it is dropped.
pub(super) struct InHand<'a> {
    job: Job,
    stats: &'a RouteStats,
}

impl<'a> InHand<'a> {
    pub(super) fn start(stats: &'a RouteStats, job: Job) -> InHand<'a> {
        stats.started(&job.message.meta.campaign);
        InHand { job, stats }
    }
}

impl Drop for InHand<'_> {
    fn drop(&mut self) {
        self.stats.finished(&self.job.message.meta.campaign);
    }
}

/// A job whose message went out up to its end of data, its final reply
/// not read yet.
struct Unanswered<'a> {
    hand: InHand<'a>,
    awaiting: AwaitingFinal,
    started: Instant,
    /// The connection had carried a transaction before this one.
    used: bool,
}

/// Counts a worker that left its queue's takers in again when dropped.
struct Rejoin<'a>(&'a super::ready::ReadyQueue);

impl Drop for Rejoin<'_> {
    fn drop(&mut self) {
        self.0.rejoin();
    }
}

/// How a run of transactions on one connection ended.
enum RunEnd<'a> {
    /// Every job's outcome was recorded: the connection may be kept.
    Keep,
    /// The connection failed and is dropped; the failed job was handed on.
    Dropped,
    /// The connection failed before anything of this job was answered:
    /// it goes again on a fresh connection.
    Again(InHand<'a>),
}

impl Route {
    /// Delivers a job (and the jobs that can follow it at once), on the
    /// pooled connection when the server has not closed it meanwhile, and
    /// returns the connection to keep, if any.
    ///
    /// Relays close idle connections (Postfix after a few seconds) and
    /// restart; that is no failure of theirs. So a pooled connection the
    /// server closed is dropped before use, and one that turns out closed at
    /// the first command costs one reconnect (see the module's comment).
    /// Only failures of fresh connections mark the route down.
    pub(super) async fn deliver(
        self: &Arc<Self>,
        hand: InHand<'_>,
        pooled: Option<Pooled>,
        lease: &Option<ConnectionLease>,
    ) -> Option<Pooled> {
        let mut pooled = pooled.and_then(|mut p| (!p.connection.closed_by_server()).then_some(p));
        let mut hand = hand;
        loop {
            let reused = pooled.is_some();
            let mut current = match pooled.take() {
                Some(pooled) => pooled,
                None => self.patiently(self.fresh_connection(&hand.job)).await?,
            };
            match self.run(&mut current, hand, reused, lease).await {
                RunEnd::Keep => return self.patiently(self.keep(current)).await,
                RunEnd::Dropped => return None,
                // The failure of the job before may have marked the route
                // down: then this one goes the way of the queued jobs.
                RunEnd::Again(again) if !self.is_available() => {
                    self.pass_on_while_down(again.job.clone());
                    return None;
                }
                RunEnd::Again(again) => {
                    log::debug!(
                        "route {}: connection to {} was closed by the server; reconnecting",
                        self.name,
                        current.connection.remote()
                    );
                    hand = again;
                }
            }
        }
    }

    /// Delivers `first` on `current`, then, while the next job may go at
    /// once, that job with its envelope behind the end of the message
    /// before. `reused`: the connection carried a transaction before.
    async fn run<'a>(
        self: &Arc<Self>,
        current: &mut Pooled,
        first: InHand<'a>,
        reused: bool,
        lease: &Option<ConnectionLease>,
    ) -> RunEnd<'a> {
        let hand_stats = first.stats;
        let mut used = reused;
        let mut waiting: Option<Unanswered<'a>> = None;
        let mut next = Some(first);
        while let Some(hand) = next.take() {
            let started = Instant::now();
            let sender = self.sender(&hand.job);
            let rcpts = recipients(&hand.job);
            let envelope = Envelope {
                mail_from: &sender,
                recipients: &rcpts,
            };
            let body = &hand.job.message.body;
            let opened = self.open(current, &hand.job, &envelope).await;
            // The message before is answered first: its final reply comes
            // back ahead of this envelope's replies.
            let opened = match (opened, waiting.take()) {
                (Err(error), Some(before)) => {
                    crate::metrics::transaction_time(&self.name, before.started);
                    self.unanswered_failed(current, before.hand, error, before.used);
                    return RunEnd::Again(hand);
                }
                (Err(error), None) => {
                    crate::metrics::transaction_time(&self.name, started);
                    return self.failed(current, hand, error, used);
                }
                (Ok(opened), Some(before)) => {
                    if !self.finish(current, before).await {
                        return RunEnd::Again(hand);
                    }
                    opened
                }
                (Ok(opened), None) => opened,
            };
            let Some(opened) = opened else {
                // Not for this server: handed on without a word sent.
                continue;
            };
            let sent = current.connection.proceed(opened, &envelope, body, true);
            match self.patiently(sent).await {
                Ok(Sent::Done(replies)) => self.answered(current, &hand.job, &replies, started),
                Ok(Sent::AwaitingFinal(awaiting)) => {
                    waiting = Some(Unanswered {
                        hand,
                        awaiting,
                        started,
                        used,
                    });
                }
                Err(error) => {
                    crate::metrics::transaction_time(&self.name, started);
                    return self.failed(current, hand, error, used);
                }
            }
            used = true;
            if waiting.is_some() {
                next = self
                    .next_job_now(current, lease)
                    .map(|job| InHand::start(hand_stats, job));
            }
        }
        if let Some(before) = waiting
            && !self.finish(current, before).await
        {
            return RunEnd::Dropped;
        }
        RunEnd::Keep
    }

    fn sender(&self, job: &Job) -> String {
        let node = self.ctx.verp_node.as_ref().and_then(|n| n.node());
        mail_from(job, &self.ctx.verp_secret, node)
    }

    /// Opens the job's transaction; None when the message is not for this
    /// server (it lacks an extension the message needs) and was handed on.
    async fn open(
        &self,
        current: &mut Pooled,
        job: &Job,
        envelope: &Envelope<'_>,
    ) -> Result<Option<Opened>, SessionError> {
        let connection = &mut current.connection;
        let needs = ContentNeeds::of(envelope, &job.message.body);
        if let Some(refusal) = connection.content_refusal(&needs) {
            let remote = Some(connection.remote().to_owned());
            self.content_not_supported(job.clone(), refusal, remote);
            return Ok(None);
        }
        connection.open(envelope, &job.message.body).await.map(Some)
    }

    /// Awaits `work`, a wait on the server. Once it has taken `PATIENCE`
    /// this worker stops counting as one about to take the next job, so a
    /// queued job gets another worker (and connection) rather than waiting
    /// on a slow server.
    async fn patiently<T>(self: &Arc<Self>, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        tokio::select! {
            biased;
            done = &mut work => return done,
            () = tokio::time::sleep(PATIENCE) => {}
        }
        self.ready.leave();
        self.start_worker_if_needed();
        // Rejoins however the wait ends: a panic in it must not leave this
        // worker uncounted (see `WorkerPlace`).
        let _rejoin = Rejoin(&self.ready);
        work.await
    }

    /// Reads and records the final reply of a message; false when the
    /// connection failed instead (the job was handed on).
    async fn finish(self: &Arc<Self>, current: &mut Pooled, before: Unanswered<'_>) -> bool {
        let Unanswered {
            hand,
            awaiting,
            started,
            used,
        } = before;
        match self.patiently(current.connection.finish(awaiting)).await {
            Ok(replies) => {
                self.answered(current, &hand.job, &replies, started);
                true
            }
            Err(error) => {
                crate::metrics::transaction_time(&self.name, started);
                self.unanswered_failed(current, hand, error, used);
                false
            }
        }
    }

    /// The next job, when it may go on this connection at once, with no
    /// wait: the connection has room for another transaction, delivery is
    /// not paused, the lease holds, a job is queued and the rate lets it go.
    fn next_job_now(&self, current: &Pooled, lease: &Option<ConnectionLease>) -> Option<Job> {
        // The transaction whose final reply is unread counts already.
        let room = current.transactions + 1 < self.max_messages_per_connection;
        let go = room
            && !self.stopping.load(std::sync::atomic::Ordering::Relaxed)
            && self.ctx.recorder.unrecorded.may_start()
            && !lease.as_ref().is_some_and(ConnectionLease::is_lost)
            && !self.ready.is_empty()
            && self.throttle.try_acquire();
        if go { self.pop_with_paid_place() } else { None }
    }

    /// Records the replies of a transaction the server answered.
    fn answered(&self, current: &mut Pooled, job: &Job, replies: &[Reply], started: Instant) {
        crate::metrics::transaction_time(&self.name, started);
        self.mark_up();
        let connection = &current.connection;
        let remote = Some(connection.remote().to_owned());
        let at = self.attempt_context(remote, Some(tls_label(&connection.tls())));
        self.ctx.recorder.replies(job, replies, &at);
        self.stats
            .delivered(replies.iter().filter(|r| r.is_positive()).count());
        current.transactions += 1;
    }

    /// A job's own transaction failed at connection level.
    fn failed<'a>(
        &self,
        current: &Pooled,
        hand: InHand<'a>,
        error: SessionError,
        used: bool,
    ) -> RunEnd<'a> {
        if used && error.closed_while_idle() {
            return RunEnd::Again(hand);
        }
        self.unanswered_failed(current, hand, error, used);
        RunEnd::Dropped
    }

    /// Hands on a job that cannot go again at once: a fresh connection's
    /// failure says the server is down; on a connection that worked a
    /// moment ago it says nothing about the server's health, so the route
    /// stays up and the recipients wait.
    fn unanswered_failed(
        &self,
        current: &Pooled,
        hand: InHand<'_>,
        error: SessionError,
        used: bool,
    ) {
        let remote = Some(current.connection.remote().to_owned());
        if used {
            let at = self.attempt_context(remote, None);
            self.ctx.recorder.session_failed(&hand.job, &error, &at);
        } else {
            self.connection_failed(hand.job.clone(), error, remote);
        }
    }

    /// A new connection; when there is none to be had the job is handed on
    /// (failover, deferral or bounce) and None returned.
    async fn fresh_connection(&self, job: &Job) -> Option<Pooled> {
        match self.connect().await {
            Ok(connection) => Some(Pooled {
                connection,
                transactions: 0,
            }),
            Err(ConnectFailure::Session(e)) => {
                self.connection_failed(job.clone(), e, None);
                None
            }
            Err(ConnectFailure::Permanent(reply)) => {
                let replies = vec![reply; job.rcpts.len()];
                let at = self.attempt_context(None, None);
                self.ctx.recorder.replies(job, &replies, &at);
                None
            }
        }
    }

    /// The connection back to the pool, or closed once it has carried
    /// `max_messages_per_connection` transactions.
    async fn keep(&self, pooled: Pooled) -> Option<Pooled> {
        if pooled.transactions >= self.max_messages_per_connection {
            pooled.connection.quit().await;
            return None;
        }
        Some(pooled)
    }

    /// The server lacks an extension the message needs: the next server of
    /// the group may have it; without one the recipients bounce with
    /// `refusal`. The route stays up: it is fine for other mail.
    fn content_not_supported(&self, mut job: Job, refusal: Reply, remote_host: Option<String>) {
        if self.mx.is_some() {
            let replies = vec![refusal; job.rcpts.len()];
            let at = self.attempt_context(remote_host, None);
            self.ctx.recorder.replies(&job, &replies, &at);
            return;
        }
        job.tried.push(self.name.clone());
        let _ = self.ctx.failover.send(super::Failover {
            job,
            error: SessionError::Rejected {
                phase: crate::smtp::client::Phase::Mail,
                reply: refusal.clone(),
            },
            remote_host,
            unsupported: Some(refusal),
            untried_until_ms: None,
        });
    }
}
