//! RabbitMQ settings and plumbing shared by the front door (`amqp_in`)
//! and event publishing (`amqp_out`): the checked `[[amqp_in]]` and
//! `[[amqp_out]]` sections (here, apart from the consumers, so that
//! `config` depends on no running part), URL and name checks, and the
//! timeout every broker call runs under.

mod in_settings;
mod out_settings;

use std::time::Duration;

pub use in_settings::{AmqpInSettings, MAX_PREFETCH, RawAmqpIn, validate_in};
pub use out_settings::{AmqpOutSettings, BATCH, RawAmqpOut, validate_out};

/// Longest wait for RabbitMQ to answer one call (connect, declare, ack,
/// publish confirm): a broker that stops answering never blocks a task.
pub const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// The URL without its password, for logs.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// An AMQP URL lapin can open (checked at start, not at the first connect).
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        return Err(format!(
            "{:?} is not an AMQP URL: write e.g. \"amqp://guest:guest@127.0.0.1:5672/%2f\"",
            redacted(url)
        ));
    }
    url.parse::<lapin::uri::AMQPUri>()
        .map(|_| ())
        .map_err(|e| format!("{:?} does not parse: {e}", redacted(url)))
}

/// A queue or exchange name: 1 to 255 bytes (AMQP short string), printable.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 || name.chars().any(|c| c.is_control()) {
        return Err(format!(
            "{name:?}: give a name of 1 to 255 bytes without control characters"
        ));
    }
    Ok(())
}

/// One broker call under `BROKER_TIMEOUT`, its error as text.
pub async fn timed<T>(
    what: &str,
    op: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(BROKER_TIMEOUT, op).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!(
            "{what}: no answer within {}s",
            BROKER_TIMEOUT.as_secs()
        )),
    }
}
