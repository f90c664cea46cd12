//! Webhooks: events POSTed in batches (a JSON array) to configured URLs.
//!
//! The event log's thread appends each webhook's events to a backlog in the
//! spool (one write per batch of events, in the spool's group commit), then
//! wakes the webhook's sender task. The sender posts the oldest events,
//! signed with HMAC-SHA256 over the timestamp and the body, and deletes
//! them from the backlog only after a 2xx answer; otherwise it waits
//! (exponential backoff) and posts the same events again. A backlog beyond `max_backlog` loses its
//! oldest events, counted in `sendengine_webhook_events_dropped_total`.
//!
//! Guarantee: after a clean stop and start, every event reaches the receiver
//! exactly once. A kill between a 2xx and the backlog delete re-posts that
//! batch (at least once), and events emitted but not yet in the backlog when
//! the process dies are lost, as they are for the event log file.

mod feed;
mod sender;
mod settings;

use std::sync::Arc;

use sendengine_queue::Spool;
use tokio::sync::{Notify, watch};

use super::http::HttpClient;
use feed::Feed;
pub use feed::WebhookFeeds;
use sender::Sender;
pub use sender::WebhookSenders;
pub use settings::{RawWebhook, WebhookSecret, WebhookSettings, validate_all};

/// Starts a sender task per webhook (call inside a tokio runtime) and
/// returns the feeds for the event log.
pub fn start(
    spool: &Spool,
    webhooks: &[WebhookSettings],
) -> Result<(WebhookFeeds, WebhookSenders), String> {
    let (stop, stop_rx) = watch::channel(false);
    let mut feeds = Vec::with_capacity(webhooks.len());
    let mut tasks = Vec::with_capacity(webhooks.len());
    let client = HttpClient::new()?;
    for settings in webhooks {
        let wake = Arc::new(Notify::new());
        feeds.push(Feed {
            name: settings.name.clone(),
            kinds: settings.kinds.clone(),
            max_backlog: settings.max_backlog,
            wake: wake.clone(),
            pending: Vec::new(),
            unconfirmed: false,
        });
        let sender = Sender {
            spool: spool.clone(),
            settings: settings.clone(),
            client: client.clone(),
            wake,
            stop: stop_rx.clone(),
        };
        tasks.push(tokio::spawn(sender.run()));
    }
    let feeds = WebhookFeeds {
        spool: spool.clone(),
        feeds,
    };
    Ok((feeds, WebhookSenders { stop, tasks }))
}
