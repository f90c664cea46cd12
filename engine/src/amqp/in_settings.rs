//! `[[amqp_in]]` in `config.toml`: a RabbitMQ queue this node consumes
//! messages from. Checked here, by the owner, so `config` only parses.

use serde::Deserialize;

use super::{check_name, check_url, redacted};

/// Unacknowledged deliveries per consumer when not configured.
const DEFAULT_PREFETCH: u16 = 200;
/// Most unacknowledged deliveries per consumer: each may hold a message of
/// up to `smtp_in.max_message_size` in memory.
pub const MAX_PREFETCH: u16 = 10_000;

/// `[[amqp_in]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAmqpIn {
    url: String,
    queue: String,
    prefetch: Option<u16>,
    dead_letter_exchange: Option<String>,
    declare: Option<bool>,
}

/// One checked `[[amqp_in]]` entry.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpInSettings {
    /// `amqp://` or `amqps://` URL, vhost included (`%2f` is `/`).
    pub url: String,
    /// The queue the application publishes to.
    pub queue: String,
    /// Deliveries in flight (RabbitMQ's `basic.qos` prefetch count).
    pub prefetch: u16,
    /// Where refused messages go, with the reason in headers; default
    /// `<queue>.dead`.
    pub dead_letter_exchange: String,
    /// Declare the queue, the dead-letter exchange and the queue
    /// `<queue>.dead` bound to it (durable) when they are missing.
    pub declare: bool,
}

impl std::fmt::Debug for AmqpInSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpInSettings")
            .field("url", &redacted(&self.url))
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("dead_letter_exchange", &self.dead_letter_exchange)
            .field("declare", &self.declare)
            .finish()
    }
}

/// Checks every `[[amqp_in]]` entry; errors name the entry and key.
pub fn validate_in(raw: Vec<RawAmqpIn>) -> Result<Vec<AmqpInSettings>, String> {
    let checked: Vec<AmqpInSettings> = raw
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.check(i))
        .collect::<Result<_, _>>()?;
    for (i, a) in checked.iter().enumerate() {
        if checked[..i]
            .iter()
            .any(|b| b.url == a.url && b.queue == a.queue)
        {
            return Err(format!(
                "amqp_in[{i}]: queue {:?} at this URL is already consumed by an earlier entry",
                a.queue
            ));
        }
    }
    Ok(checked)
}

impl RawAmqpIn {
    fn check(self, index: usize) -> Result<AmqpInSettings, String> {
        let key = |k: &str| format!("amqp_in[{index}].{k}");
        check_url(&self.url).map_err(|e| format!("{}: {e}", key("url")))?;
        let queue = self.queue.trim().to_owned();
        check_name(&queue).map_err(|e| format!("{}: {e}", key("queue")))?;
        let prefetch = self.prefetch.unwrap_or(DEFAULT_PREFETCH);
        if prefetch == 0 || prefetch > MAX_PREFETCH {
            return Err(format!(
                "{}: {prefetch} is out of range: give 1 to {MAX_PREFETCH} (default {DEFAULT_PREFETCH})",
                key("prefetch")
            ));
        }
        let dead_letter_exchange = self
            .dead_letter_exchange
            .map(|d| d.trim().to_owned())
            .unwrap_or_else(|| format!("{queue}.dead"));
        check_name(&dead_letter_exchange)
            .map_err(|e| format!("{}: {e}", key("dead_letter_exchange")))?;
        Ok(AmqpInSettings {
            url: self.url,
            queue,
            prefetch,
            dead_letter_exchange,
            declare: self.declare.unwrap_or(true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Result<Vec<AmqpInSettings>, String> {
        #[derive(Deserialize)]
        struct File {
            amqp_in: Vec<RawAmqpIn>,
        }
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        validate_in(file.amqp_in)
    }

    #[test]
    fn defaults_and_the_issue_shape() {
        let s = raw(
            "[[amqp_in]]\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\nqueue = \"sendengine.inject\"\nprefetch = 200\n",
        )
        .unwrap();
        assert_eq!(s[0].queue, "sendengine.inject");
        assert_eq!(s[0].prefetch, 200);
        assert_eq!(s[0].dead_letter_exchange, "sendengine.inject.dead");
        assert!(s[0].declare);
        assert!(!format!("{:?}", s[0]).contains("guest:guest"));
    }

    #[test]
    fn refusals_name_the_key() {
        let e = raw("[[amqp_in]]\nurl = \"http://x\"\nqueue = \"q\"\n").unwrap_err();
        assert!(e.contains("amqp_in[0].url"), "{e}");
        let e =
            raw("[[amqp_in]]\nurl = \"amqp://h/%2f\"\nqueue = \"q\"\nprefetch = 0\n").unwrap_err();
        assert!(e.contains("prefetch"), "{e}");
        let e = raw("[[amqp_in]]\nurl = \"amqp://h/%2f\"\nqueue = \"\"\n").unwrap_err();
        assert!(e.contains("queue"), "{e}");
        let e =
            raw("[[amqp_in]]\nurl = \"amqp://h/%2f\"\nqueue = \"q\"\nprefech = 3\n").unwrap_err();
        assert!(e.contains("prefech"), "{e}");
        let twice = "[[amqp_in]]\nurl = \"amqp://h/%2f\"\nqueue = \"q\"\n";
        let e = raw(&format!("{twice}{twice}")).unwrap_err();
        assert!(e.contains("amqp_in[1]"), "{e}");
    }
}
