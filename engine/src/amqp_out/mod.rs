//! Event publishing to RabbitMQ (`[[amqp_out]]`): each event's JSON line
//! is published to an exchange, as webhooks post them.
//!
//! The same feed as webhooks: the event log appends the outlet's events to
//! a durable backlog in the spool, then wakes the outlet's sender. The
//! sender publishes the oldest events (persistent, routing key per event
//! type if `{type}` is in it), waits for RabbitMQ's publisher confirms,
//! and only then deletes them from the backlog. At least once: a kill
//! between the confirm and the delete publishes those events again.
//!
//! When RabbitMQ is down: events wait in the backlog (bounded by
//! `max_backlog`, the oldest dropped and counted beyond it), the sender
//! retries with a backoff (1 s doubling to 60 s), says so once until it
//! is back, and `sendengine_amqp_out_connected` is 0. Nothing else waits.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use sendengine_queue::{BacklogEntry, Spool};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use crate::amqp::{AmqpOutSettings, RawAmqpOut};

use crate::amqp::{BATCH, BROKER_TIMEOUT, redacted, timed};
use crate::events::webhook::WebhookFeeds;

const METRIC_CONNECTED: &str = "sendengine_amqp_out_connected";
const METRIC_PUBLISHED: &str = "sendengine_amqp_out_events_total";
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Longest time for one batch, publish to confirms: a hung broker holds
/// up neither the sender nor a shutdown for longer.
const BATCH_TIMEOUT: Duration = Duration::from_secs(20);
/// A sender with nothing to publish looks at its backlog this often.
const IDLE_POLL: Duration = Duration::from_secs(5);

/// The running publisher tasks.
pub struct AmqpOutSenders {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl AmqpOutSenders {
    /// Lets each sender finish the batch it is publishing, then ends them.
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

/// Adds a feed per `[[amqp_out]]` to the event log's feeds and starts its
/// sender (none configured: nothing runs, nothing is contacted).
pub fn start(
    spool: &Spool,
    outlets: &[AmqpOutSettings],
    feeds: &mut WebhookFeeds,
) -> AmqpOutSenders {
    let (stop, stop_rx) = watch::channel(false);
    let tasks = outlets
        .iter()
        .map(|s| {
            let wake = feeds.add_outlet(&s.backlog(), s.kinds.clone(), s.max_backlog);
            let sender = Sender {
                spool: spool.clone(),
                settings: s.clone(),
                wake,
                stop: stop_rx.clone(),
                link: None,
            };
            tokio::spawn(sender.run())
        })
        .collect();
    AmqpOutSenders { stop, tasks }
}

struct Sender {
    spool: Spool,
    settings: AmqpOutSettings,
    wake: Arc<Notify>,
    stop: watch::Receiver<bool>,
    /// The connection (kept open between batches) and its confirm channel.
    link: Option<(Connection, Channel)>,
}

impl Sender {
    async fn run(mut self) {
        let mut backoff = BACKOFF_FIRST;
        let mut down = false;
        let connected =
            metrics::gauge!(METRIC_CONNECTED, "exchange" => self.settings.exchange.clone());
        while !*self.stop.borrow() {
            let batch = match self.oldest().await {
                Ok(batch) => batch,
                Err(e) => {
                    log::warn!(
                        "amqp_out {}: cannot read the backlog: {e}",
                        self.settings.exchange
                    );
                    self.pause(BACKOFF_MAX).await;
                    continue;
                }
            };
            if batch.is_empty() {
                self.idle().await;
                continue;
            }
            let published = tokio::time::timeout(BATCH_TIMEOUT, self.publish(&batch)).await;
            match published.unwrap_or_else(|_| Err(format!("no confirms within {BATCH_TIMEOUT:?}")))
            {
                Ok(()) => {
                    connected.set(1.0);
                    backoff = BACKOFF_FIRST;
                    if down {
                        log::info!("amqp_out {}: publishing again", self.settings.exchange);
                        down = false;
                    }
                }
                Err(why) => {
                    self.link = None;
                    connected.set(0.0);
                    if !down {
                        log::warn!(
                            "amqp_out {} at {}: {why}; events wait in the backlog, retrying \
                             (said once until it is back)",
                            self.settings.exchange,
                            redacted(&self.settings.url)
                        );
                        down = true;
                    }
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        if let Some((connection, _)) = self.link.take() {
            let _ = tokio::time::timeout(BROKER_TIMEOUT, connection.close(200, "bye".into())).await;
        }
    }

    async fn oldest(&self) -> Result<Vec<BacklogEntry>, String> {
        let spool = self.spool.clone();
        let name = self.settings.backlog();
        tokio::task::spawn_blocking(move || spool.backlog_peek(&name, BATCH))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Publishes a batch, waits for every confirm, then deletes it from
    /// the backlog.
    async fn publish(&mut self, batch: &[BacklogEntry]) -> Result<(), String> {
        let channel = self.channel().await?;
        let mut confirms = Vec::with_capacity(batch.len());
        for entry in batch {
            let key = self.settings.routing_key_for(&event_type(&entry.event));
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into());
            let confirm = timed(
                "basic.publish",
                channel.basic_publish(
                    self.settings.exchange.as_str().into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    &entry.event,
                    properties,
                ),
            )
            .await?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            match timed("confirm", confirm).await? {
                Confirmation::Ack(_) => {}
                other => return Err(format!("RabbitMQ did not take an event: {other:?}")),
            }
        }
        metrics::counter!(METRIC_PUBLISHED, "exchange" => self.settings.exchange.clone())
            .increment(batch.len() as u64);
        let Some(last) = batch.last().map(|e| e.seq) else {
            return Ok(());
        };
        let spool = self.spool.clone();
        let name = self.settings.backlog();
        tokio::task::spawn_blocking(move || spool.backlog_delete_through(&name, last))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("published, but not removed from the backlog: {e}"))?;
        Ok(())
    }

    /// The open confirm channel, connecting (and declaring) if needed.
    async fn channel(&mut self) -> Result<Channel, String> {
        if let Some((connection, channel)) = &self.link
            && connection.status().connected()
        {
            return Ok(channel.clone());
        }
        let s = &self.settings;
        let connection = timed(
            "connect",
            Connection::connect(&s.url, ConnectionProperties::default()),
        )
        .await?;
        let channel = timed("open a channel", connection.create_channel()).await?;
        timed(
            "confirm.select",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        if s.declare {
            let durable = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            timed(
                "exchange.declare",
                channel.exchange_declare(
                    s.exchange.as_str().into(),
                    lapin::ExchangeKind::Topic,
                    durable,
                    FieldTable::default(),
                ),
            )
            .await?;
        }
        self.link = Some((connection, channel.clone()));
        Ok(channel)
    }

    async fn idle(&mut self) {
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = self.stop.changed() => {}
            _ = tokio::time::sleep(IDLE_POLL) => {}
        }
    }

    async fn pause(&mut self, how_long: Duration) {
        tokio::select! {
            _ = self.stop.changed() => {}
            _ = tokio::time::sleep(how_long) => {}
        }
    }
}

/// The `type` of an event's JSON (`delivery`, `bounce`, ...).
fn event_type(json: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::from_slice::<Typed>(json).map_or_else(|_| "event".into(), |t| t.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routing_key_takes_the_event_type() {
        assert_eq!(
            event_type(br#"{"type":"async_bounce","x":1}"#),
            "async_bounce"
        );
        assert_eq!(event_type(b"not json"), "event");
    }
}
