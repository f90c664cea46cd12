//! One delivery from an `[[amqp_in]]` queue: parse, admit as SMTP would,
//! then settle it with RabbitMQ according to the reply.
//!
//! - 2xx (on disk): `basic.ack`.
//! - A refusal the application must fix (any 5xx, and 4xx other than
//!   4.3.x / 4.4.x: a quota, a sender domain, suppression, malformed JSON):
//!   the message is published to the dead-letter exchange with the reason in
//!   headers, and only once RabbitMQ confirms that publish is the original
//!   acknowledged. Never dropped silently.
//! - A transient local problem (4.3.x / 4.4.x: disk full, queue shutting
//!   down, a shared service down): after a short pause, `basic.nack` with
//!   requeue, so it is tried again (here or on another node).
//!
//! If the node dies before the ack, RabbitMQ delivers the message again:
//! at least once, and a duplicate only for what was in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation};

use super::message::{self, Limits};
use crate::amqp::BROKER_TIMEOUT;
use crate::engine::{ClientInfo, Engine, Envelope};
use crate::values::Reply;

/// Pause before a transient failure is handed back to the queue, so a
/// full disk is not hammered by redeliveries.
const REQUEUE_DELAY: Duration = Duration::from_secs(1);

/// Header names carried by a dead-lettered message.
pub const REASON_HEADER: &str = "x-sendengine-reason";
pub const CODE_HEADER: &str = "x-sendengine-code";
pub const QUEUE_HEADER: &str = "x-sendengine-queue";

/// What one consumer's deliveries share.
pub(super) struct Context {
    pub engine: Arc<Engine>,
    pub limits: Limits,
    pub queue: String,
    pub dead_letter_exchange: String,
    /// A channel in confirm mode for the dead-letter publishes.
    pub dead_letters: Channel,
    /// The broker's address: what the Received line names as the client.
    pub peer: SocketAddr,
    pub tls: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accept,
    DeadLetter,
    Retry,
}

fn verdict(reply: &Reply) -> Verdict {
    if reply.is_positive() {
        Verdict::Accept
    } else if reply.code < 500
        && (reply.enhanced.starts_with("4.3.") || reply.enhanced.starts_with("4.4."))
    {
        Verdict::Retry
    } else {
        Verdict::DeadLetter
    }
}

/// Admits one delivery and settles it with the broker.
pub(super) async fn handle(ctx: Arc<Context>, delivery: Delivery) {
    if delivery.redelivered {
        // Possibly a duplicate: it was in flight when a consumer went away.
        metrics::counter!(super::METRIC_REDELIVERED).increment(1);
    }
    let reply = admit(&ctx, &delivery.data).await;
    let outcome = match verdict(&reply) {
        Verdict::Accept => settle(delivery.acker.ack(BasicAckOptions::default()), "accepted").await,
        Verdict::DeadLetter => match dead_letter(&ctx, &delivery, &reply).await {
            Ok(()) => {
                log::debug!("amqp_in {}: dead-lettered: {reply}", ctx.queue);
                settle(
                    delivery.acker.ack(BasicAckOptions::default()),
                    "dead_lettered",
                )
                .await
            }
            Err(e) => {
                log::warn!(
                    "amqp_in {}: the refused message could not be dead-lettered ({e}); it goes back to the queue",
                    ctx.queue
                );
                requeue(&delivery).await
            }
        },
        Verdict::Retry => requeue(&delivery).await,
    };
    metrics::counter!(super::METRIC_TOTAL, "outcome" => outcome).increment(1);
}

/// The SMTP admission, with the JSON's envelope and the AMQP login as AUTH.
async fn admit(ctx: &Context, body: &[u8]) -> Reply {
    let injection = match message::parse(body, &ctx.limits) {
        Ok(i) => i,
        Err(reply) => return reply,
    };
    let envelope = Envelope {
        smtputf8: Envelope::has_utf8_address(&injection.mail_from, &injection.recipients),
        mail_from: injection.mail_from,
        recipients: injection.recipients,
        client: ClientInfo {
            peer: ctx.peer,
            helo: "amqp".into(),
            tls: ctx.tls,
            auth_user: injection.user,
        },
    };
    crate::admit::admit(&ctx.engine, envelope, injection.data).await
}

async fn requeue(delivery: &Delivery) -> &'static str {
    tokio::time::sleep(REQUEUE_DELAY).await;
    let nack = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    settle(delivery.acker.nack(nack), "requeued").await
}

/// Awaits an ack or nack; a failure (connection lost) leaves the message
/// unacknowledged, and RabbitMQ delivers it again.
async fn settle(
    op: impl std::future::Future<Output = lapin::Result<bool>>,
    outcome: &'static str,
) -> &'static str {
    match tokio::time::timeout(BROKER_TIMEOUT, op).await {
        Ok(Ok(_)) => outcome,
        _ => "unsettled",
    }
}

/// Publishes the message to the dead-letter exchange with the reason and
/// waits for RabbitMQ's confirm.
async fn dead_letter(ctx: &Context, delivery: &Delivery, reply: &Reply) -> Result<(), String> {
    let original = &delivery.properties;
    let mut headers = original.headers().clone().unwrap_or_default();
    add_reason(&mut headers, reply, &ctx.queue);
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(t) = original.content_type() {
        properties = properties.with_content_type(t.clone());
    }
    if let Some(id) = original.message_id() {
        properties = properties.with_message_id(id.clone());
    }
    let publish = async {
        ctx.dead_letters
            .basic_publish(
                ctx.dead_letter_exchange.as_str().into(),
                ctx.queue.as_str().into(),
                // Mandatory: an exchange that routes it nowhere returns it,
                // and it stays in the queue instead of vanishing.
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &delivery.data,
                properties,
            )
            .await?
            .await
    };
    match tokio::time::timeout(BROKER_TIMEOUT, publish).await {
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(_)))) => Err(format!(
            "the exchange {} routes it to no queue",
            ctx.dead_letter_exchange
        )),
        Ok(Ok(other)) => Err(format!("RabbitMQ did not take it: {other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no confirm within {BROKER_TIMEOUT:?}")),
    }
}

fn add_reason(headers: &mut FieldTable, reply: &Reply, queue: &str) {
    let text = |s: String| AMQPValue::LongString(s.into());
    headers.insert(REASON_HEADER.into(), text(reply.text.to_string()));
    headers.insert(
        CODE_HEADER.into(),
        text(format!("{} {}", reply.code, reply.enhanced)),
    );
    headers.insert(QUEUE_HEADER.into(), text(queue.to_owned()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_and_policy_are_dead_lettered_local_trouble_is_retried() {
        let v = |code, enhanced| verdict(&Reply::new(code, enhanced, "x"));
        assert_eq!(v(250, "2.0.0"), Verdict::Accept);
        assert_eq!(v(451, "4.7.1"), Verdict::DeadLetter); // daily quota
        assert_eq!(v(550, "5.7.1"), Verdict::DeadLetter); // domain, suppression
        assert_eq!(v(554, "5.6.0"), Verdict::DeadLetter); // malformed
        assert_eq!(v(451, "4.3.0"), Verdict::Retry); // disk, shutting down
        assert_eq!(v(451, "4.4.3"), Verdict::Retry); // a shared service down
    }
}
