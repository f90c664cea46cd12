//! `[[amqp_out]]` in `config.toml`: an exchange the node publishes its
//! events to. Checked here, by the owner, so `config` only parses.

use serde::Deserialize;

use super::{check_name, check_url, redacted};
use crate::events::EventKind;

/// Routing key when not configured; `{type}` is replaced by the event type.
const DEFAULT_ROUTING_KEY: &str = "sendengine.events";
/// Events kept while RabbitMQ is unreachable, when not configured.
const DEFAULT_MAX_BACKLOG: u64 = 100_000;
/// Events published before their confirms are awaited.
pub const BATCH: usize = 200;

/// `[[amqp_out]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAmqpOut {
    url: String,
    exchange: String,
    routing_key: Option<String>,
    kinds: Option<Vec<EventKind>>,
    max_backlog: Option<u64>,
    declare: Option<bool>,
}

/// One checked `[[amqp_out]]` entry.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpOutSettings {
    pub url: String,
    pub exchange: String,
    /// `{type}` in it becomes the event's type (`delivery`, `bounce`, ...).
    pub routing_key: String,
    /// Only these kinds are published; `None`: all.
    pub kinds: Option<Vec<EventKind>>,
    pub max_backlog: u64,
    /// Declare the exchange (topic, durable) when it is missing.
    pub declare: bool,
}

impl std::fmt::Debug for AmqpOutSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpOutSettings")
            .field("url", &redacted(&self.url))
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("kinds", &self.kinds)
            .field("max_backlog", &self.max_backlog)
            .field("declare", &self.declare)
            .finish()
    }
}

impl AmqpOutSettings {
    /// The backlog in the spool that holds this outlet's unpublished events.
    pub fn backlog(&self) -> String {
        format!("amqp_out:{}:{}", redacted(&self.url), self.exchange)
    }

    pub fn routing_key_for(&self, kind: &str) -> String {
        self.routing_key.replace("{type}", kind)
    }
}

/// Checks every `[[amqp_out]]` entry; errors name the entry and key.
pub fn validate_out(raw: Vec<RawAmqpOut>) -> Result<Vec<AmqpOutSettings>, String> {
    let mut out: Vec<AmqpOutSettings> = Vec::with_capacity(raw.len());
    for (index, r) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("amqp_out[{index}].{k}");
        check_url(&r.url).map_err(|e| format!("{}: {e}", key("url")))?;
        check_name(&r.exchange).map_err(|e| format!("{}: {e}", key("exchange")))?;
        let routing_key = r.routing_key.unwrap_or_else(|| DEFAULT_ROUTING_KEY.into());
        check_name(&routing_key).map_err(|e| format!("{}: {e}", key("routing_key")))?;
        let max_backlog = r.max_backlog.unwrap_or(DEFAULT_MAX_BACKLOG);
        if max_backlog == 0 {
            return Err(format!("{}: give at least 1", key("max_backlog")));
        }
        let settings = AmqpOutSettings {
            url: r.url,
            exchange: r.exchange,
            routing_key,
            kinds: r.kinds,
            max_backlog,
            declare: r.declare.unwrap_or(true),
        };
        if out.iter().any(|o| o.backlog() == settings.backlog()) {
            return Err(format!(
                "amqp_out[{index}]: exchange {:?} at this URL is already an earlier entry",
                settings.exchange
            ));
        }
        out.push(settings);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Result<Vec<AmqpOutSettings>, String> {
        #[derive(Deserialize)]
        struct File {
            amqp_out: Vec<RawAmqpOut>,
        }
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        validate_out(file.amqp_out)
    }

    #[test]
    fn defaults_and_routing_keys() {
        let s = raw("[[amqp_out]]\nurl = \"amqp://u:p@h/%2f\"\nexchange = \"events\"\n").unwrap();
        assert_eq!(s[0].routing_key_for("delivery"), "sendengine.events");
        assert!(
            !s[0].backlog().contains(":p@"),
            "no password in the backlog name"
        );
        let s = raw(
            "[[amqp_out]]\nurl = \"amqp://h/%2f\"\nexchange = \"e\"\nrouting_key = \"ev.{type}\"\nkinds = [\"bounce\"]\n",
        )
        .unwrap();
        assert_eq!(s[0].routing_key_for("bounce"), "ev.bounce");
        assert_eq!(s[0].kinds, Some(vec![EventKind::Bounce]));
    }

    #[test]
    fn refusals_name_the_key() {
        let e = raw("[[amqp_out]]\nurl = \"amqp://h/%2f\"\nexchange = \"\"\n").unwrap_err();
        assert!(e.contains("amqp_out[0].exchange"), "{e}");
        let e = raw("[[amqp_out]]\nurl = \"amqp://h/%2f\"\nexchange = \"e\"\nkinds = [\"nope\"]\n")
            .unwrap_err();
        assert!(e.contains("nope"), "{e}");
    }
}
