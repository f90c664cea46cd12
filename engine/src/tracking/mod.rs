//! Click and open tracking (`[tracking]`), after Octeth's delivery server
//! "Domains" tab: a server's `link_tracking_domain` and
//! `open_tracking_domain` carry the rewritten links and the open pixel of
//! the mail routed to it.
//!
//! - At admission (`admit/track.rs`), before DKIM: the HTML parts' links
//!   become `<scheme>://<link domain>/c/<token>` (`rewrite`) and a pixel
//!   `<scheme>://<open domain>/o/<token>.gif` goes before `</body>`. The
//!   original URLs are written to the spool's tracked-links table in the
//!   message's own commit.
//! - The listener (`listener`, `handlers`) answers `/c/<token>` with a
//!   302 to the original URL and `/o/<token>.gif` with a 1×1 GIF, only
//!   for tokens whose HMAC checks (`token`) and whose row exists, and
//!   records a `click` or `open` event (file, webhooks, AMQP) and metric.
//!
//! This module knows nothing of the engine: the listener gets the spool
//! and the event log, admission gets a `Tracker`.

mod handlers;
mod listener;
pub mod rewrite;
pub mod token;

use std::time::Duration;

pub use listener::{TrackingListener, bind, serve};
use sendengine_queue::TrackingKey;
use token::TokenKey;

/// The purpose the HMAC key is derived for (`Secrets::derived`).
pub const KEY_PURPOSE: &str = "tracking";

/// What admission needs to rewrite a message: the token key, the scheme
/// of the links and how long they work.
pub struct Tracker {
    pub tokens: TokenKey,
    pub scheme: &'static str,
    pub retain: Duration,
    /// `[cluster] node`: links start with `/<node>` so that a proxy can
    /// route them to the node whose spool holds their URLs.
    pub node: Option<String>,
}

impl Tracker {
    /// The URL that replaces link `link` of the message with `key`.
    pub fn click_url(&self, domain: &str, key: TrackingKey, link: u32) -> String {
        format!("{}/c/{}", self.base(domain), self.tokens.click(key, link))
    }

    /// The open pixel's `<img>` tag for the message with `key`.
    pub fn pixel(&self, domain: &str, key: TrackingKey) -> String {
        format!(
            "<img src=\"{}/o/{}.gif\" width=\"1\" height=\"1\" alt=\"\" style=\"border:0;width:1px;height:1px\" />",
            self.base(domain),
            self.tokens.open(key)
        )
    }

    fn base(&self, domain: &str) -> String {
        match &self.node {
            Some(node) => format!("{}://{domain}/{node}", self.scheme),
            None => format!("{}://{domain}", self.scheme),
        }
    }
}

/// A fresh key for a message admitted at `time_ms`.
pub fn new_key(time_ms: u64) -> TrackingKey {
    let mut nonce = [0u8; 8];
    // The system random source failing leaves nothing sane to do (TLS
    // would fail just the same), and it depends on no input.
    aws_lc_rs::rand::fill(&mut nonce[8 - token::NONCE_BITS as usize / 8..])
        .expect("the system random generator failed");
    TrackingKey {
        time_ms,
        nonce: u64::from_be_bytes(nonce),
    }
}
