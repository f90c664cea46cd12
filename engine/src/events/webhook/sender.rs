//! The senders: one task per webhook posts the oldest events of its backlog,
//! signed, and deletes them after a 2xx answer; otherwise it backs off and
//! posts them again.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use sendengine_queue::{BacklogEntry, Spool};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::super::http::HttpClient;
use super::WebhookSettings;

/// A sender with nothing to post looks at its backlog at least this often
/// (wake-ups are the normal path; this covers a backlog written elsewhere).
const IDLE_POLL: Duration = Duration::from_secs(5);

/// The signature header's value: `sha256=<hex HMAC-SHA256(secret,
/// "<timestamp>." + body)>`, with the `X-Sendengine-Timestamp` value. The
/// timestamp is signed so that a receiver that refuses old timestamps
/// cannot be fed a captured request again later.
fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    hmac_hex(secret, &[timestamp.to_string().as_bytes(), b".", body])
}

/// `sha256=` and the hex HMAC-SHA256 of the parts, in order.
fn hmac_hex(secret: &[u8], parts: &[&[u8]]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut context = hmac::Context::with_key(&key);
    for part in parts {
        context.update(part);
    }
    let tag = context.sign();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for byte in tag.as_ref() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// The running sender tasks, one per webhook.
pub struct WebhookSenders {
    pub(super) stop: watch::Sender<bool>,
    pub(super) tasks: Vec<JoinHandle<()>>,
}

impl WebhookSenders {
    /// Lets each sender finish the POST it is making (bounded by its
    /// timeout) and record the answer, then ends them.
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

pub(super) struct Sender {
    pub(super) spool: Spool,
    pub(super) settings: WebhookSettings,
    pub(super) client: HttpClient,
    pub(super) wake: Arc<Notify>,
    pub(super) stop: watch::Receiver<bool>,
}

impl Sender {
    pub(super) async fn run(mut self) {
        let mut backoff = self.settings.retry_initial;
        while !*self.stop.borrow() {
            let batch = match self.oldest().await {
                Ok(batch) => batch,
                Err(e) => {
                    log::warn!(
                        "webhook {}: cannot read the backlog: {e}",
                        self.settings.name
                    );
                    self.pause(self.settings.retry_max).await;
                    continue;
                }
            };
            if batch.is_empty() {
                self.idle().await;
                continue;
            }
            match self.post(&batch).await {
                Ok(()) => backoff = self.settings.retry_initial,
                Err(why) => {
                    log::warn!(
                        "webhook {}: {} events not delivered ({why}); retrying in {backoff:?}",
                        self.settings.name,
                        batch.len()
                    );
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(self.settings.retry_max);
                }
            }
        }
    }

    async fn oldest(&self) -> Result<Vec<BacklogEntry>, String> {
        let spool = self.spool.clone();
        let name = self.settings.name.clone();
        let limit = self.settings.batch_size;
        tokio::task::spawn_blocking(move || spool.backlog_peek(&name, limit))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Posts one batch; on a 2xx answer deletes it from the backlog.
    async fn post(&self, batch: &[BacklogEntry]) -> Result<(), String> {
        let body = json_array(batch);
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let headers = [
            (
                "X-Sendengine-Signature",
                signature(&self.settings.secret.0, timestamp, &body),
            ),
            ("X-Sendengine-Timestamp", timestamp.to_string()),
        ];
        let status = self
            .client
            .post(&self.settings.url, &headers, &body, self.settings.timeout)
            .await
            .map_err(|e| e.to_string())?;
        if !(200..300).contains(&status) {
            return Err(format!("the receiver answered {status}"));
        }
        let Some(last) = batch.last().map(|e| e.seq) else {
            return Ok(());
        };
        let spool = self.spool.clone();
        let name = self.settings.name.clone();
        tokio::task::spawn_blocking(move || spool.backlog_delete_through(&name, last))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("posted, but not removed from the backlog: {e}"))?;
        Ok(())
    }

    /// Waits for new events, a stop request, or the idle poll.
    async fn idle(&mut self) {
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = self.stop.changed() => {}
            _ = tokio::time::sleep(IDLE_POLL) => {}
        }
    }

    /// Waits `how_long` unless asked to stop.
    async fn pause(&mut self, how_long: Duration) {
        tokio::select! {
            _ = self.stop.changed() => {}
            _ = tokio::time::sleep(how_long) => {}
        }
    }
}

/// `[e1,e2,...]` from events already serialized as JSON.
fn json_array(batch: &[BacklogEntry]) -> Vec<u8> {
    let size: usize = batch.iter().map(|e| e.event.len() + 1).sum();
    let mut body = Vec::with_capacity(size + 2);
    body.push(b'[');
    for (i, entry) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&entry.event);
    }
    body.push(b']');
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hmac_is_hex_hmac_sha256_of_the_parts_in_order() {
        // RFC 4231 test case 2, fed in two parts.
        assert_eq!(
            hmac_hex(b"Jefe", &[b"what do ya want ", b"for nothing?"]),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_signature_covers_the_timestamp_and_the_body() {
        let signed = signature(b"secret", 1_700_000_000, b"[{}]");
        assert_eq!(signed, hmac_hex(b"secret", &[b"1700000000.[{}]"]));
        assert_ne!(signed, signature(b"secret", 1_700_000_001, b"[{}]"));
        assert_ne!(signed, hmac_hex(b"secret", &[b"[{}]"]));
    }
}
