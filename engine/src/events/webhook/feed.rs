//! The event log's side: appending each webhook's events to its backlog in
//! the spool, then waking its sender.

use std::sync::Arc;

use sendengine_queue::Spool;
use tokio::sync::Notify;

use super::super::EventKind;

/// One webhook's appender, owned by the event log's thread.
pub(super) struct Feed {
    pub(super) name: String,
    pub(super) kinds: Option<Vec<EventKind>>,
    pub(super) max_backlog: u64,
    pub(super) wake: Arc<Notify>,
    pub(super) pending: Vec<Vec<u8>>,
    /// Appends submitted since the last confirmed commit.
    pub(super) unconfirmed: bool,
}

/// Collects each webhook's events and appends them to its backlog.
pub struct WebhookFeeds {
    pub(super) spool: Spool,
    pub(super) feeds: Vec<Feed>,
}

impl WebhookFeeds {
    pub(crate) fn is_empty(&self) -> bool {
        self.feeds.is_empty()
    }

    /// Adds a feed for another outlet (`[[amqp_out]]`): the same durable
    /// backlog, named `backlog`; the returned `Notify` wakes its sender.
    pub(crate) fn add_outlet(
        &mut self,
        backlog: &str,
        kinds: Option<Vec<EventKind>>,
        max_backlog: u64,
    ) -> Arc<Notify> {
        let wake = Arc::new(Notify::new());
        self.feeds.push(Feed {
            name: backlog.to_owned(),
            kinds,
            max_backlog,
            wake: wake.clone(),
            pending: Vec::new(),
            unconfirmed: false,
        });
        wake
    }

    /// Takes an event (its JSON) for the webhooks that want its kind.
    pub(crate) fn add(&mut self, kind: EventKind, json: &[u8]) {
        for feed in &mut self.feeds {
            if feed.kinds.as_ref().is_none_or(|k| k.contains(&kind)) {
                feed.pending.push(json.to_vec());
            }
        }
    }

    /// Appends what was added, in the spool's next group commit, without
    /// waiting; the sender is woken once it is committed.
    pub(crate) fn submit(&mut self) {
        for feed in &mut self.feeds {
            if feed.pending.is_empty() {
                continue;
            }
            let events = std::mem::take(&mut feed.pending);
            feed.unconfirmed = true;
            let count = events.len() as u64;
            let name = feed.name.clone();
            let wake = feed.wake.clone();
            self.spool.backlog_append(
                &feed.name,
                events,
                feed.max_backlog,
                Box::new(move |result| {
                    match result {
                        Ok(written) => count_dropped(&name, written.dropped, "the backlog is full"),
                        Err(e) => {
                            count_dropped(&name, count, &format!("the spool refused them: {e}"))
                        }
                    }
                    wake.notify_one();
                }),
            );
        }
    }

    /// [`WebhookFeeds::submit`], then waits until the spool has committed
    /// everything submitted so far.
    pub(crate) fn submit_and_wait(&mut self) {
        self.submit();
        for feed in self.feeds.iter_mut().filter(|f| f.unconfirmed) {
            feed.unconfirmed = false;
            if let Err(e) =
                self.spool
                    .backlog_append_blocking(&feed.name, Vec::new(), feed.max_backlog)
            {
                log::warn!("webhook {}: backlog not confirmed: {e}", feed.name);
            }
        }
    }
}

/// Every drop is counted and said; the oldest events go first.
fn count_dropped(webhook: &str, dropped: u64, why: &str) {
    if dropped == 0 {
        return;
    }
    metrics::counter!("sendengine_webhook_events_dropped_total", "webhook" => webhook.to_owned())
        .increment(dropped);
    log::warn!("webhook {webhook}: dropped {dropped} events: {why}");
}
