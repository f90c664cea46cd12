//! RabbitMQ injection (`[[amqp_in]]`): the node consumes a queue the
//! application publishes to, one JSON message per mail (`message`), and
//! admits each exactly as the SMTP listener would (`handle`).
//!
//! Durability: a delivery is acknowledged only after the spool's commit;
//! a refused one is published to the dead-letter exchange (publisher
//! confirms) before the original is acknowledged. Prefetch bounds what is
//! in flight (and in memory) per consumer.
//!
//! When RabbitMQ is down or the connection drops: no mail is lost (what
//! was not acknowledged is delivered again, here or to another node), the
//! consumer reconnects with a bounded backoff (1 s doubling to 30 s), the
//! loss is logged once and `sendengine_amqp_in_connected` is 0 until it is
//! back. SMTP injection and delivery are not affected.
//!
//! Shutdown: stop consuming, finish the admissions in flight (their acks
//! go out), then close; deliveries not started go back to the queue.

mod handle;
pub mod message;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

pub use crate::amqp::{AmqpInSettings, RawAmqpIn};
pub use handle::{CODE_HEADER, QUEUE_HEADER, REASON_HEADER};
pub use message::Limits;

use crate::amqp::{BROKER_TIMEOUT, redacted, timed};
use crate::engine::Engine;
use handle::Context;

pub(crate) const METRIC_TOTAL: &str = "sendengine_amqp_in_total";
pub(crate) const METRIC_REDELIVERED: &str = "sendengine_amqp_in_redelivered_total";
const METRIC_CONNECTED: &str = "sendengine_amqp_in_connected";
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often a consumer looks at its connection's state between deliveries.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

/// Starts one consumer task per `[[amqp_in]]` entry (none: nothing runs,
/// nothing is contacted). The tasks end after `shutdown` is set.
pub fn start(
    engine: &Arc<Engine>,
    settings: &[AmqpInSettings],
    limits: Limits,
    shutdown: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    if !settings.is_empty() {
        metrics::describe_counter!(
            METRIC_TOTAL,
            "Deliveries from [[amqp_in]] queues by outcome (accepted, dead_lettered, requeued, unsettled)"
        );
        metrics::describe_counter!(
            METRIC_REDELIVERED,
            "Deliveries RabbitMQ marked as redelivered: in flight when a consumer went away, \
             possibly admitted already (a duplicate)"
        );
        metrics::describe_gauge!(
            METRIC_CONNECTED,
            "1 while the [[amqp_in]] consumer of a queue is connected to RabbitMQ"
        );
    }
    settings
        .iter()
        .map(|s| {
            let consumer = Consumer {
                engine: engine.clone(),
                settings: s.clone(),
                limits,
                shutdown: shutdown.clone(),
            };
            tokio::spawn(consumer.run())
        })
        .collect()
}

struct Consumer {
    engine: Arc<Engine>,
    settings: AmqpInSettings,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
}

/// An open connection, consuming.
struct Session {
    connection: Connection,
    ctx: Arc<Context>,
    channel: Channel,
    consumer_tag: lapin::types::ShortString,
    rx: mpsc::Receiver<lapin::message::DeliveryResult>,
}

/// Why a session with the broker ended.
enum Ended {
    Shutdown,
    Lost(String),
}

impl Consumer {
    async fn run(mut self) {
        let mut backoff = BACKOFF_FIRST;
        let mut down = false;
        let queue = self.settings.queue.clone();
        let connected = metrics::gauge!(METRIC_CONNECTED, "queue" => queue.clone());
        while !*self.shutdown.borrow() {
            let (ended, was_up) = self.session(&connected).await;
            connected.set(0.0);
            let why = match ended {
                Ended::Shutdown => break,
                Ended::Lost(why) => why,
            };
            if was_up {
                backoff = BACKOFF_FIRST;
                down = false;
            }
            if !down {
                log::warn!(
                    "amqp_in {queue}: RabbitMQ at {}: {why}; reconnecting every {}s at most \
                     (said once until it is back)",
                    redacted(&self.settings.url),
                    BACKOFF_MAX.as_secs()
                );
                down = true;
            }
            tokio::select! {
                _ = self.shutdown.changed() => {}
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Connects, consumes until the connection is lost or shutdown, and
    /// says whether it got as far as consuming.
    async fn session(&mut self, connected: &metrics::Gauge) -> (Ended, bool) {
        // A broker that hangs mid-handshake must not hold up a shutdown.
        let mut stop = self.shutdown.clone();
        let opened = tokio::select! {
            opened = self.open() => opened,
            _ = stop.wait_for(|&stopping| stopping) => return (Ended::Shutdown, false),
        };
        let mut session = match opened {
            Ok(opened) => opened,
            Err(why) => return (Ended::Lost(why), false),
        };
        connected.set(1.0);
        log::info!(
            "amqp_in {}: consuming (prefetch {})",
            self.settings.queue,
            self.settings.prefetch
        );
        let ended = self.consume(&mut session).await;
        let close = session.connection.close(200, "bye".into());
        let _ = tokio::time::timeout(BROKER_TIMEOUT, close).await;
        (ended, true)
    }

    /// The connection, the channels, the topology and the consumer.
    async fn open(&self) -> Result<Session, String> {
        let s = &self.settings;
        let peer = broker_addr(&s.url).await;
        let connection = timed(
            "connect",
            Connection::connect(&s.url, ConnectionProperties::default()),
        )
        .await?;
        let channel = timed("open a channel", connection.create_channel()).await?;
        let dead_letters = timed("open a channel", connection.create_channel()).await?;
        timed(
            "confirm.select",
            dead_letters.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        if s.declare {
            declare(&channel, s).await?;
        }
        timed(
            "basic.qos",
            channel.basic_qos(s.prefetch, BasicQosOptions::default()),
        )
        .await?;
        let consumer = timed(
            "basic.consume",
            channel.basic_consume(
                s.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        // Into a channel as deep as the prefetch: RabbitMQ sends no more
        // than that unacknowledged, so the delegate never waits long.
        let consumer_tag = consumer.tag();
        let (tx, rx) = mpsc::channel(usize::from(s.prefetch));
        consumer.set_delegate(move |delivery| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(delivery).await;
            }
        });
        let ctx = Arc::new(Context {
            engine: self.engine.clone(),
            limits: self.limits,
            queue: s.queue.clone(),
            dead_letter_exchange: s.dead_letter_exchange.clone(),
            dead_letters,
            peer,
            tls: s.url.starts_with("amqps://"),
        });
        Ok(Session {
            connection,
            ctx,
            channel,
            consumer_tag,
            rx,
        })
    }

    /// Hands each delivery to a task of its own (at most `prefetch` at once,
    /// RabbitMQ's bound) until shutdown or a lost connection, then waits
    /// for those tasks.
    async fn consume(&mut self, session: &mut Session) -> Ended {
        let Session {
            connection,
            ctx,
            channel,
            consumer_tag,
            rx,
        } = session;
        let mut in_flight = JoinSet::new();
        let mut tick = tokio::time::interval(LIVENESS_CHECK);
        let ended = loop {
            tokio::select! {
                _ = self.shutdown.changed() => break Ended::Shutdown,
                delivery = rx.recv() => match delivery {
                    Some(Ok(Some(delivery))) => {
                        in_flight.spawn(handle::handle(ctx.clone(), delivery));
                    }
                    Some(Ok(None)) => break Ended::Lost("the broker cancelled the consumer".into()),
                    Some(Err(e)) => break Ended::Lost(e.to_string()),
                    None => break Ended::Lost("the connection or channel was closed".into()),
                },
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = tick.tick() => {
                    if !connection.status().connected() {
                        break Ended::Lost("the connection was lost".into());
                    }
                    if !ctx.dead_letters.status().connected() {
                        // Closed by the broker (e.g. the exchange is missing).
                        break Ended::Lost("the dead-letter channel was closed".into());
                    }
                }
            }
        };
        if matches!(ended, Ended::Shutdown) {
            // No new deliveries; those prefetched and not started go back
            // to the queue when the connection closes.
            let _ = tokio::time::timeout(
                BROKER_TIMEOUT,
                channel.basic_cancel(consumer_tag.clone(), BasicCancelOptions::default()),
            )
            .await;
        }
        rx.close();
        while in_flight.join_next().await.is_some() {}
        ended
    }
}

/// Declares the queue (durable), the dead-letter exchange (fanout,
/// durable) and the queue `<queue>.dead` bound to it, where they are
/// missing, so no refused message is dropped for want of a route.
async fn declare(channel: &Channel, s: &AmqpInSettings) -> Result<(), String> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let dead_queue = format!("{}.dead", s.queue);
    for queue in [&s.queue, &dead_queue] {
        timed(
            "queue.declare",
            channel.queue_declare(queue.as_str().into(), durable, FieldTable::default()),
        )
        .await?;
    }
    timed(
        "exchange.declare",
        channel.exchange_declare(
            s.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    timed(
        "queue.bind",
        channel.queue_bind(
            dead_queue.as_str().into(),
            s.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

/// The broker's address (the "client" of the Received line); unspecified
/// when the name does not resolve.
async fn broker_addr(url: &str) -> SocketAddr {
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let Ok(uri) = url.parse::<lapin::uri::AMQPUri>() else {
        return unspecified;
    };
    let host = (uri.authority.host.as_str(), uri.authority.port);
    match tokio::time::timeout(BROKER_TIMEOUT, tokio::net::lookup_host(host)).await {
        Ok(Ok(mut addrs)) => addrs.next().unwrap_or(unspecified),
        _ => unspecified,
    }
}
