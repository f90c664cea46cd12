//! Recording what happened to each recipient of a delivery attempt.
//!
//! A reply becomes a verdict (2xx delivered, 5xx bounced, 4xx or a failed
//! connection deferred with backoff, or expired past `max_age`), the
//! verdicts go to the spool in one request, and the events are written
//! only once the spool has committed them, so the event log never reports
//! something a crash could undo. A write the spool refuses (disk full) is
//! held in memory and tried again until it succeeds, and delivery pauses
//! meanwhile (`unrecorded.rs`).
//!
//! Every bounce is classified (`sendengine_bounces`); one whose category
//! says the address will never accept mail (hard) also puts the recipient
//! on its tenant's suppression list, once the outcome is committed.

use std::sync::Arc;
use std::time::Duration;

use sendengine_queue::{Delivered, MessageId, Outcome, Spool, SpoolError};

use super::lease::{Hold, Leases};
use super::ready::Job;
use super::unrecorded::Unrecorded;
use crate::events::{BounceType, Event, EventKind, EventLog, EventReply};
use crate::smtp::client::{Reply, SessionError};
use crate::timefmt::{now_ms, rfc3339};

/// When to try again, and when to give up.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub schedule: Vec<Duration>,
    pub max_age: Duration,
}

impl RetryPolicy {
    /// The wait after the `attempts`-th failed attempt (1-based).
    pub fn delay(&self, attempts: u32) -> Duration {
        let i = (attempts.max(1) - 1) as usize;
        self.schedule[i.min(self.schedule.len() - 1)]
    }

    /// When a message received at `received_at_ms` is too old for another
    /// try.
    pub fn expires_at(&self, received_at_ms: u64) -> u64 {
        received_at_ms + self.max_age.as_millis() as u64
    }
}

/// The retry policy in force, shared by every route's recorder; SIGHUP
/// replaces it with `set` and the next recorded attempt uses the new one.
#[derive(Debug, Clone)]
pub struct SharedRetry(Arc<std::sync::RwLock<Arc<RetryPolicy>>>);

impl SharedRetry {
    pub fn new(policy: RetryPolicy) -> SharedRetry {
        SharedRetry(Arc::new(std::sync::RwLock::new(Arc::new(policy))))
    }

    pub fn get(&self) -> Arc<RetryPolicy> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, policy: RetryPolicy) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
    }
}

/// Where an attempt took place, for the events.
pub struct AttemptContext<'a> {
    pub route: &'a str,
    pub remote_host: Option<String>,
    pub tls: Option<String>,
}

#[derive(Clone)]
pub struct Recorder {
    pub spool: Spool,
    pub events: EventLog,
    pub retry: SharedRetry,
    /// `[suppression] auto_suppress`: hard bounces suppress the address.
    pub auto_suppress: bool,
    /// How long the delivered index keeps finished recipients.
    pub index_retain: Duration,
    /// The claims the delivery side holds; an outcome written ends one.
    pub leases: Arc<Leases>,
    /// Outcomes the spool refused, held until it takes them.
    pub unrecorded: Arc<Unrecorded>,
    /// `[cluster]`: the fleet's delivered index, which gets a copy of every
    /// committed delivered-index row (so any node ties a bounce).
    pub fleet_index: Option<Arc<crate::cluster::delivered::SharedDelivered>>,
}

/// The outcomes of one attempt and what follows once they are written.
pub(super) struct Written {
    pub(super) outcomes: Vec<Outcome>,
    /// Delivered-index rows of the finished recipients, same commit.
    pub(super) delivered: Vec<Delivered>,
    pub(super) events: Vec<Event>,
    pub(super) suppressions: Vec<Event>,
    /// Keeps the claims leased until the outcomes are on disk.
    pub(super) hold: Arc<Hold>,
}

impl Recorder {
    /// Records one reply per recipient of the job, in the job's order.
    pub fn replies(&self, job: &Job, replies: &[Reply], at: &AttemptContext<'_>) {
        let verdicts = job
            .rcpts
            .iter()
            .zip(replies)
            .map(|(&(rcpt, attempts), reply)| (rcpt, attempts, event_reply(reply)))
            .collect();
        self.record(job, verdicts, at);
    }

    /// Records a connection-level failure for every recipient of the job.
    pub fn session_failed(&self, job: &Job, error: &SessionError, at: &AttemptContext<'_>) {
        let reply = connection_failure_reply(error);
        let verdicts = job
            .rcpts
            .iter()
            .map(|&(rcpt, attempts)| (rcpt, attempts, reply.clone()))
            .collect();
        self.record(job, verdicts, at);
    }

    fn record(&self, job: &Job, verdicts: Vec<(u32, u32, EventReply)>, at: &AttemptContext<'_>) {
        let now = now_ms();
        let msg = &job.message;
        let retry = self.retry.get();
        let expires_at = retry.expires_at(msg.meta.received_at_ms);
        let mut outcomes = Vec::with_capacity(verdicts.len());
        let mut events = Vec::with_capacity(verdicts.len());
        let mut suppressions = Vec::new();
        let mut delivered = Vec::new();
        for (rcpt, attempts, reply) in verdicts {
            let attempt = attempts + 1;
            let kind = match reply.code {
                200..=399 => EventKind::Delivery,
                500..=599 => EventKind::Bounce,
                _ if now >= expires_at => EventKind::Expiration,
                _ => EventKind::TransientFailure,
            };
            outcomes.push(match kind {
                EventKind::TransientFailure => Outcome::Deferred {
                    id: msg.id,
                    rcpt,
                    next_attempt_ms: (now + retry.delay(attempt).as_millis() as u64)
                        .min(expires_at),
                    reply: reply_line(&reply),
                },
                _ => Outcome::Done { id: msg.id, rcpt },
            });
            if kind != EventKind::TransientFailure {
                delivered.push(delivered_row(job, rcpt, at.route, now));
            }
            let mut event = self.event(job, rcpt, attempt, kind, reply, at, now);
            if kind == EventKind::Bounce && classify_bounce(&mut event) && self.auto_suppress {
                suppressions.push(Event {
                    kind: EventKind::Suppression,
                    ..event.clone()
                });
            }
            events.push(event);
        }
        self.commit(Written {
            outcomes,
            delivered,
            events,
            suppressions,
            hold: job.hold.clone(),
        });
    }

    /// Gives a job's recipients back to the spool untried (due now, no
    /// attempt counted): its route had no room, or the job could not be
    /// queued anywhere. A failed write leaves them to their lease.
    pub fn release(&self, job: Job) {
        self.give_back(job, |id, rcpt| Outcome::Release { id, rcpt });
    }

    /// A job its server never tried (the server is down, and the group
    /// has no other): due again when the server's back-off ends, no
    /// attempt counted, so a short outage does not push untried mail down
    /// the retry schedule. Past `max_age` it expires as a try would.
    pub fn postpone(&self, job: Job, until_ms: u64, error: &SessionError, at: &AttemptContext<'_>) {
        let expires_at = self.retry.get().expires_at(job.message.meta.received_at_ms);
        if now_ms() >= expires_at {
            return self.session_failed(&job, error, at);
        }
        let until_ms = until_ms.min(expires_at);
        self.give_back(job, |id, rcpt| Outcome::Postponed { id, rcpt, until_ms });
    }

    fn give_back(&self, job: Job, outcome: impl Fn(MessageId, u32) -> Outcome) {
        let keys: Vec<(MessageId, u32)> = job
            .rcpts
            .iter()
            .map(|&(r, _)| (job.message.id, r))
            .collect();
        let outcomes = keys.iter().map(|&(id, rcpt)| outcome(id, rcpt)).collect();
        let leases = self.leases.clone();
        let hold = job.hold;
        self.spool.record(
            outcomes,
            Box::new(move |result| {
                if result.is_ok() {
                    leases.finish(&hold, keys);
                }
            }),
        );
    }

    /// Gives back claims whose lease ran out with no job holding them.
    pub fn release_unheld(&self, keys: Vec<(MessageId, u32)>) {
        let outcomes = keys
            .iter()
            .map(|&(id, rcpt)| Outcome::Release { id, rcpt })
            .collect();
        let leases = self.leases.clone();
        self.spool.record(
            outcomes,
            Box::new(move |result| match result {
                Ok(()) => leases.forget_unheld(&keys),
                Err(e) => log::error!(
                    "could not give back {} claims nobody holds: {e}; retried when their lease runs out again",
                    keys.len()
                ),
            }),
        );
    }

    /// Writes outcomes (with the delivered-index rows of the finished
    /// recipients, same commit) to the spool, then their events, then the
    /// hard bounces' suppressions. A refused write is held back and
    /// delivery pauses until it is written (`unrecorded.rs`): the
    /// recipients are claimed, so nothing else would pick them up.
    pub(super) fn commit(&self, written: Written) {
        let runtime = tokio::runtime::Handle::try_current().ok();
        if self.unrecorded.is_paused() {
            // Behind the ones already waiting, in order.
            return self.hold_back(written, None, runtime);
        }
        let recorder = self.clone();
        // The spool encodes them at once; the originals stay for a retry.
        let outcomes = written.outcomes.clone();
        let rows = written.delivered.clone();
        let committing = self.unrecorded.committing();
        self.spool.record_with_index(
            outcomes,
            &rows,
            self.index_retain,
            Box::new(move |result| {
                drop(committing);
                match result {
                    Ok(()) => recorder.written(written),
                    // Shutting down: recovery reschedules them at the next start.
                    Err(SpoolError::Closed) => {}
                    Err(e) => recorder.hold_back(written, Some(&e), runtime),
                }
            }),
        );
    }

    /// What follows a committed write: metrics, events, suppressions, and
    /// the end of the claims' leases.
    pub(super) fn written(&self, written: Written) {
        crate::metrics::outcomes(&written.events);
        let keys = written.outcomes.iter().map(|o| match *o {
            Outcome::Done { id, rcpt }
            | Outcome::Deferred { id, rcpt, .. }
            | Outcome::Release { id, rcpt }
            | Outcome::Postponed { id, rcpt, .. } => (id, rcpt),
        });
        self.leases.finish(&written.hold, keys);
        if let Some(fleet) = &self.fleet_index {
            fleet.offer(written.delivered);
        }
        written.events.into_iter().for_each(|e| self.events.emit(e));
        written
            .suppressions
            .into_iter()
            .for_each(|e| self.suppress(e));
    }

    /// Puts the event's recipient on its tenant's list (no tenant: the
    /// global one) and emits the event once that is committed. Runs on the
    /// spool's writer thread, so it must not wait for the spool.
    fn suppress(&self, event: Event) {
        let tenant = event.tenant.clone().unwrap_or_default();
        let reason = event.bounce_class.clone().unwrap_or_default();
        let source = event.reply.as_ref().map(reply_line).unwrap_or_default();
        let address = event.recipient.clone();
        let events = self.events.clone();
        // Cluster mode: the fleet learns of it in the background.
        let share = {
            let (tenant, reason, source) = (tenant.clone(), reason.clone(), source.clone());
            move |address: &str| {
                crate::cluster::suppressions::share(&tenant, address, &reason, &source)
            }
        };
        self.spool.suppress_then(
            &tenant,
            &event.recipient.clone(),
            &reason,
            &source,
            Box::new(move |result| match result {
                Ok(_) => {
                    share(&address);
                    events.emit(event)
                }
                Err(e) => {
                    log::error!("could not suppress {address} after a hard bounce: {e}")
                }
            }),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        job: &Job,
        rcpt: u32,
        attempt: u32,
        kind: EventKind,
        reply: EventReply,
        at: &AttemptContext<'_>,
        now: u64,
    ) -> Event {
        let msg = &job.message;
        let mut event = base_event(job, rcpt, kind, now);
        event.route = Some(at.route.to_owned());
        event.remote_host = at.remote_host.clone();
        event.tls = at.tls.clone();
        event.attempt = attempt;
        event.queue_time_ms = now.saturating_sub(msg.meta.received_at_ms);
        event.reply = Some(reply);
        event
    }
}

/// The fields every event of this recipient shares.
pub fn base_event(job: &Job, rcpt: u32, kind: EventKind, now: u64) -> Event {
    let msg = &job.message;
    let meta = &msg.meta;
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Event {
        time: rfc3339(now),
        kind,
        message_id: sendengine_queue::format_id(msg.id),
        header_message_id: job.header_message_id.clone(),
        sender: msg.mail_from.clone(),
        recipient: msg
            .recipients
            .get(rcpt as usize)
            .cloned()
            .unwrap_or_default(),
        tenant: opt(&meta.tenant),
        group: opt(&meta.group),
        channel: meta.channel.clone(),
        campaign: opt(&meta.campaign),
        route: opt(&meta.route),
        remote_host: None,
        reply: None,
        bounce_class: None,
        bounce_type: None,
        tls: None,
        dkim: None,
        attempt: 0,
        queue_time_ms: 0,
        size: msg.body.len(),
        url: None,
        user_agent: None,
        metadata: crate::events::metadata_of(meta),
    }
}

/// The delivered-index row of a recipient whose outcome is final.
fn delivered_row(job: &Job, rcpt: u32, route: &str, now: u64) -> Delivered {
    let msg = &job.message;
    let meta = &msg.meta;
    Delivered {
        id: msg.id,
        rcpt,
        tenant: meta.tenant.clone(),
        group: meta.group.clone(),
        channel: meta.channel.clone(),
        campaign: meta.campaign.clone(),
        recipient: msg
            .recipients
            .get(rcpt as usize)
            .cloned()
            .unwrap_or_default(),
        header_message_id: job.header_message_id.clone(),
        route: route.to_owned(),
        time_ms: now,
    }
}

/// Sets the bounce event's `bounce_class` and `bounce_type`; true when the
/// bounce is hard.
fn classify_bounce(event: &mut Event) -> bool {
    let Some(reply) = &event.reply else {
        return false;
    };
    let class = sendengine_bounces::classify(reply.code, reply.enhanced.as_deref(), &reply.text);
    event.bounce_class = Some(class.category.as_str().to_owned());
    event.bounce_type = Some(BounceType::of(class.hard));
    class.hard
}

/// `550 5.1.1 text`: the reply as the remote server sent it.
fn reply_line(reply: &EventReply) -> String {
    match &reply.enhanced {
        Some(enhanced) => format!("{} {enhanced} {}", reply.code, reply.text),
        None => format!("{} {}", reply.code, reply.text),
    }
}

/// What a connection-level failure means for each recipient: always a
/// deferral. A 4xx reply is kept as it came; a 5xx at greeting or EHLO is
/// about the connection, not the recipient, so it is retried, not bounced.
fn connection_failure_reply(error: &SessionError) -> EventReply {
    match error.reply() {
        Some(r) if r.is_transient() => event_reply(r),
        // The error's text quotes the server's reply already.
        Some(_) => EventReply {
            code: 451,
            enhanced: Some("4.4.0".into()),
            text: error.to_string(),
        },
        None => EventReply {
            code: 451,
            enhanced: Some("4.4.1".into()),
            text: error.to_string(),
        },
    }
}

fn event_reply(reply: &Reply) -> EventReply {
    EventReply {
        code: reply.code,
        enhanced: reply.enhanced.clone(),
        text: reply.text.clone(),
    }
}

/// Shared by tests and the scheduler: a job for every listed recipient.
pub fn job_for(message: Arc<sendengine_queue::StoredMessage>, rcpts: Vec<(u32, u32)>) -> Job {
    let header_message_id =
        crate::transform::header_value(&message.body, "Message-ID").unwrap_or_default();
    Job {
        message,
        header_message_id,
        rcpts,
        tried: Vec::new(),
        hold: Arc::default(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use sendengine_queue::{MessageMeta, NewMessage, SpoolConfig};

    use super::*;

    fn reply(code: u16) -> Reply {
        Reply {
            code,
            enhanced: Some("4.3.0".into()),
            text: "later".into(),
        }
    }

    #[test]
    fn connection_failures_always_defer_with_a_consistent_reply() {
        use crate::smtp::client::Phase;
        let rejected = |code, enhanced: &str| SessionError::Rejected {
            phase: Phase::Greeting,
            reply: Reply {
                code,
                enhanced: Some(enhanced.into()),
                text: "busy".into(),
            },
        };
        let busy = connection_failure_reply(&rejected(421, "4.3.2"));
        assert_eq!((busy.code, busy.enhanced.as_deref()), (421, Some("4.3.2")));
        let refused = connection_failure_reply(&rejected(554, "5.7.1"));
        assert_eq!(
            (refused.code, refused.enhanced.as_deref()),
            (451, Some("4.4.0"))
        );
        assert!(refused.text.contains("554 5.7.1 busy"), "{}", refused.text);
        assert_eq!(refused.text.matches("busy").count(), 1, "{}", refused.text);
        let timeout = connection_failure_reply(&SessionError::Timeout {
            phase: Phase::Connect,
            after: Duration::from_secs(1),
        });
        assert_eq!(
            (timeout.code, timeout.enhanced.as_deref()),
            (451, Some("4.4.1"))
        );
    }

    /// A recipient claimed at insert whose outcome cannot be written must
    /// not be stranded: the write is tried again once the spool works.
    #[tokio::test]
    async fn a_refused_outcome_write_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let fail = Arc::new(AtomicBool::new(false));
        let mut config = SpoolConfig::new(dir.path());
        config.fail_commits = Some(fail.clone());
        let spool = Spool::open(config).unwrap();
        let id = spool.insert_blocking(one_recipient(), true).unwrap();
        let stored = Arc::new(spool.load(id).unwrap().unwrap());
        let recorder = recorder_for(&spool);
        let job = job_for(stored, vec![(0, 0)]);
        let at = AttemptContext {
            route: "r",
            remote_host: None,
            tls: None,
        };

        recorder.leases.track(&job, now_ms());
        fail.store(true, Ordering::SeqCst);
        recorder.replies(&job, &[reply(451)], &at);
        drop(job);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stats = spool.stats().unwrap();
        assert_eq!((stats.claimed, stats.scheduled), (1, 0), "the write failed");
        assert!(recorder.unrecorded.is_paused(), "delivery pauses");
        assert_eq!(recorder.unrecorded.len(), 1);
        assert!(
            recorder.leases.expired(now_ms() + 3_600_000).is_empty(),
            "the held-back outcome keeps its claim leased"
        );
        let waiter = recorder.unrecorded.clone();
        let resumed = tokio::spawn(async move { waiter.wait_until_recording().await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!resumed.is_finished(), "workers wait while paused");

        fail.store(false, Ordering::SeqCst);
        let scheduled = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let stats = spool.stats().unwrap();
                if stats.scheduled == 1 {
                    return stats;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the deferral was written after the spool recovered");
        assert_eq!(scheduled.claimed, 0);
        tokio::time::timeout(Duration::from_secs(10), resumed)
            .await
            .expect("delivery resumes once the outcomes are written")
            .unwrap();
        assert!(!recorder.unrecorded.is_paused());
        assert!(recorder.leases.is_empty(), "the lease ended with the write");
        spool.shutdown();
    }

    /// Outcomes a lagging spool has not committed yet hold new
    /// transactions back once `MAX_COMMITTING` of them wait, so a crash
    /// can only send that many again; they go on once one is written.
    #[tokio::test]
    async fn outcomes_waiting_for_a_stalled_writer_hold_new_transactions_back() {
        use super::super::unrecorded::MAX_COMMITTING;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(SpoolConfig::new(dir.path())).unwrap();
        let id = spool.insert_blocking(one_recipient(), true).unwrap();
        let stored = Arc::new(spool.load(id).unwrap().unwrap());
        let recorder = recorder_for(&spool);
        let at = AttemptContext {
            route: "r",
            remote_host: None,
            tls: None,
        };
        // The writer runs a request's callback on its own thread: this
        // one keeps it from committing anything else until released.
        let (release, stalled) = std::sync::mpsc::channel::<()>();
        spool.record(
            Vec::new(),
            Box::new(move |_| {
                let _ = stalled.recv();
            }),
        );
        let job = job_for(stored, vec![(0, 0)]);
        for _ in 1..MAX_COMMITTING {
            recorder.replies(&job, &[reply(451)], &at);
        }
        assert!(recorder.unrecorded.may_start(), "one below the bound");
        recorder.replies(&job, &[reply(451)], &at);
        assert!(!recorder.unrecorded.may_start(), "at the bound");
        assert!(!recorder.unrecorded.is_paused(), "a lag is no refusal");
        let waiter = recorder.unrecorded.clone();
        let resumed = tokio::spawn(async move { waiter.wait_until_recording().await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!resumed.is_finished(), "workers wait for the writer");

        release.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(30), resumed)
            .await
            .expect("a transaction may start once outcomes are committed")
            .unwrap();
        spool.shutdown();
    }

    fn one_recipient() -> NewMessage {
        NewMessage {
            mail_from: "a@example.com".into(),
            recipients: vec!["b@example.net".into()],
            body: b"Subject: x\r\n\r\nx\r\n".to_vec().into(),
            meta: MessageMeta {
                received_at_ms: now_ms(),
                ..MessageMeta::default()
            },
            quotas: Vec::new(),
            tracking: None,
            idempotency: None,
        }
    }

    fn recorder_for(spool: &Spool) -> Recorder {
        Recorder {
            spool: spool.clone(),
            events: EventLog::disabled(),
            retry: SharedRetry::new(RetryPolicy {
                schedule: vec![Duration::from_secs(60)],
                max_age: Duration::from_secs(3600),
            }),
            auto_suppress: true,
            index_retain: Duration::from_secs(86_400),
            leases: Leases::new(super::super::lease::CLAIM_LEASE),
            unrecorded: Arc::default(),
            fleet_index: None,
        }
    }

    /// A claim no job holds any more comes back once its lease runs out;
    /// one a job still holds does not.
    #[tokio::test]
    async fn an_unheld_claim_is_due_again_after_its_lease() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(SpoolConfig::new(dir.path())).unwrap();
        let msg = NewMessage {
            mail_from: "a@example.com".into(),
            recipients: vec!["b@example.net".into(), "c@example.net".into()],
            body: b"Subject: x\r\n\r\nx\r\n".to_vec().into(),
            meta: MessageMeta::default(),
            quotas: Vec::new(),
            tracking: None,
            idempotency: None,
        };
        let id = spool.insert_blocking(msg, false).unwrap();
        let claimed = spool.claim_due(now_ms() + 1_000, 10).unwrap();
        assert_eq!(claimed.len(), 2);
        let recorder = Recorder {
            auto_suppress: false,
            index_retain: Duration::from_secs(60),
            leases: Leases::new(Duration::ZERO),
            ..recorder_for(&spool)
        };
        let stored = Arc::new(spool.load(id).unwrap().unwrap());
        let held = recorder
            .leases
            .take(job_for(stored.clone(), vec![(0, 0)]), now_ms())
            .unwrap();
        let lost = recorder
            .leases
            .take(job_for(stored, vec![(1, 0)]), now_ms());
        drop(lost);
        let expired = recorder.leases.expired(now_ms());
        assert_eq!(expired, vec![(id, 1)]);
        recorder.release_unheld(expired);
        let again = tokio::task::spawn_blocking({
            let spool = spool.clone();
            move || spool.claim_due(now_ms() + 1_000, 10).unwrap()
        })
        .await
        .unwrap();
        let rcpts: Vec<(u32, u32)> = again.iter().map(|c| (c.rcpt, c.attempts)).collect();
        assert_eq!(rcpts, vec![(1, 0)], "due again, no attempt counted");
        assert_eq!(held.rcpts.len(), 1);
        spool.shutdown();
    }

    /// A job its down server never tried waits for the server's back-off
    /// with no attempt counted; past max_age it expires instead.
    #[tokio::test]
    async fn an_untried_job_waits_for_the_back_off_uncounted() {
        use crate::smtp::client::Phase;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(SpoolConfig::new(dir.path())).unwrap();
        let id = spool.insert_blocking(one_recipient(), false).unwrap();
        assert_eq!(spool.claim_due(now_ms() + 1_000, 10).unwrap().len(), 1);
        let recorder = recorder_for(&spool);
        let stored = Arc::new(spool.load(id).unwrap().unwrap());
        let job = recorder
            .leases
            .take(job_for(stored.clone(), vec![(0, 3)]), now_ms())
            .unwrap();
        let error = SessionError::Protocol {
            phase: Phase::Connect,
            message: "delivery server relay is down".into(),
        };
        let at = AttemptContext {
            route: "relay",
            remote_host: None,
            tls: None,
        };
        let until = now_ms() + 30_000;
        recorder.postpone(job, until, &error, &at);
        let spool_read = spool.clone();
        let (now, due, later) = tokio::task::spawn_blocking(move || {
            // A claim goes through the writer, after the postponement.
            let now = spool_read.claim_due(now_ms() + 1_000, 10).unwrap();
            let due = spool_read.next_due_ms().unwrap();
            (now, due, spool_read.claim_due(until + 1, 10).unwrap())
        })
        .await
        .unwrap();
        assert!(now.is_empty(), "not due before the back-off ends");
        assert_eq!(due, Some(until));
        let claimed = later;
        let attempts: Vec<u32> = claimed.iter().map(|c| c.attempts).collect();
        assert_eq!(attempts, vec![0], "no attempt counted");

        // Older than max_age (an hour here): it expires, as a try would.
        let mut old = one_recipient();
        old.meta.received_at_ms = now_ms() - 2 * 3_600_000;
        let old_id = spool.insert_blocking(old, false).unwrap();
        let claimed = spool.claim_due(now_ms() + 1_000, 10).unwrap();
        assert!(claimed.iter().any(|c| c.id == old_id));
        let stored = Arc::new(spool.load(old_id).unwrap().unwrap());
        let job = recorder
            .leases
            .take(job_for(stored, vec![(0, 0)]), now_ms())
            .unwrap();
        recorder.postpone(job, now_ms() + 30_000, &error, &at);
        let spool_read = spool.clone();
        let left = tokio::task::spawn_blocking(move || {
            spool_read.claim_due(now_ms(), 10).unwrap();
            spool_read.load(old_id).unwrap()
        })
        .await
        .unwrap();
        assert!(left.is_none(), "expired and gone");
        spool.shutdown();
    }
}
