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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use sendengine_queue::{BacklogEntry, Spool};
use serde::Deserialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::EventKind;
use super::http::{HttpClient, HttpUrl};

/// Events per POST when not configured.
const DEFAULT_BATCH_SIZE: usize = 100;
/// Events kept per webhook while its receiver is down, when not configured.
const DEFAULT_MAX_BACKLOG: u64 = 100_000;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(1);
const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(300);
/// Largest batch accepted in the configuration.
const MAX_BATCH_SIZE: usize = 10_000;
/// A sender with nothing to post looks at its backlog at least this often
/// (wake-ups are the normal path; this covers a backlog written elsewhere).
const IDLE_POLL: Duration = Duration::from_secs(5);

/// The shared secret; never printed.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// One `[[webhook]]` of the configuration.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Names the backlog in the spool; defaults to the URL.
    pub name: String,
    pub url: HttpUrl,
    pub secret: WebhookSecret,
    pub batch_size: usize,
    pub max_backlog: u64,
    /// Only these kinds are posted; `None`: all.
    pub kinds: Option<Vec<EventKind>>,
    pub timeout: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

/// `[[webhook]]` as written in `config.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    name: Option<String>,
    url: String,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    batch_size: Option<usize>,
    max_backlog: Option<u64>,
    kinds: Option<Vec<EventKind>>,
    timeout: Option<String>,
    retry_initial: Option<String>,
    retry_max: Option<String>,
}

impl RawWebhook {
    /// Checks one entry; errors name the key (`webhook[0].url: ...`).
    pub fn validate(self, index: usize) -> Result<WebhookSettings, String> {
        let key = |k: &str| format!("webhook[{index}].{k}");
        let url = HttpUrl::parse(&self.url).map_err(|e| format!("{}: {e}", key("url")))?;
        let secret = match (self.secret, &self.secret_file) {
            (Some(s), None) => s.into_bytes(),
            (None, Some(path)) => {
                read_secret_file(path).map_err(|e| format!("{}: {e}", key("secret_file")))?
            }
            _ => {
                return Err(format!(
                    "{}: set exactly one of `secret` and `secret_file`",
                    key("secret")
                ));
            }
        };
        if secret.is_empty() {
            return Err(format!("{}: the secret is empty", key("secret")));
        }
        let batch_size = self.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
        if !(1..=MAX_BATCH_SIZE).contains(&batch_size) {
            return Err(format!(
                "{}: must be 1 to {MAX_BATCH_SIZE}",
                key("batch_size")
            ));
        }
        let max_backlog = self.max_backlog.unwrap_or(DEFAULT_MAX_BACKLOG);
        if max_backlog == 0 {
            return Err(format!("{}: must be at least 1", key("max_backlog")));
        }
        let duration = |k: &str, v: &Option<String>, default: Duration| match v {
            Some(text) => crate::config::parse_duration(text)
                .map_err(|e| format!("{}: {e}", key(k)))
                .and_then(|d| {
                    if d.is_zero() {
                        Err(format!("{}: must be more than 0", key(k)))
                    } else {
                        Ok(d)
                    }
                }),
            None => Ok(default),
        };
        let retry_initial = duration("retry_initial", &self.retry_initial, DEFAULT_RETRY_INITIAL)?;
        let retry_max = duration("retry_max", &self.retry_max, DEFAULT_RETRY_MAX)?;
        if retry_max < retry_initial {
            return Err(format!(
                "{}: must not be less than retry_initial",
                key("retry_max")
            ));
        }
        Ok(WebhookSettings {
            name: self.name.unwrap_or_else(|| self.url.clone()),
            url,
            secret: WebhookSecret(secret),
            batch_size,
            max_backlog,
            kinds: self.kinds,
            timeout: duration("timeout", &self.timeout, DEFAULT_TIMEOUT)?,
            retry_initial,
            retry_max,
        })
    }
}

/// Checks every `[[webhook]]`; names (the URL by default) must be unique,
/// since each names a backlog.
pub fn validate_all(raw: Vec<RawWebhook>) -> Result<Vec<WebhookSettings>, String> {
    let mut out: Vec<WebhookSettings> = Vec::with_capacity(raw.len());
    for (index, webhook) in raw.into_iter().enumerate() {
        let settings = webhook.validate(index)?;
        if out.iter().any(|w| w.name == settings.name) {
            return Err(format!(
                "webhook[{index}].name: `{}` is used twice (give each webhook its own name)",
                settings.name
            ));
        }
        if settings.name.len() > sendengine_queue::MAX_SINK_NAME_BYTES {
            return Err(format!(
                "webhook[{index}].name: longer than {} bytes",
                sendengine_queue::MAX_SINK_NAME_BYTES
            ));
        }
        out.push(settings);
    }
    Ok(out)
}

/// The file's content without the trailing newline an editor adds.
fn read_secret_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Ok(bytes)
}

/// The signature header's value: `sha256=<hex HMAC-SHA256(secret,
/// "<timestamp>." + body)>`, with the `X-Sendengine-Timestamp` value. The
/// timestamp is signed so that a receiver that refuses old timestamps
/// cannot be fed a captured request again later.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
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

// ---- the event log's side: appending to the backlogs -------------------------

/// One webhook's appender, owned by the event log's thread.
struct Feed {
    name: String,
    kinds: Option<Vec<EventKind>>,
    max_backlog: u64,
    wake: Arc<Notify>,
    pending: Vec<Vec<u8>>,
    /// Appends submitted since the last confirmed commit.
    unconfirmed: bool,
}

/// Collects each webhook's events and appends them to its backlog.
pub struct WebhookFeeds {
    spool: Spool,
    feeds: Vec<Feed>,
}

impl WebhookFeeds {
    pub(crate) fn is_empty(&self) -> bool {
        self.feeds.is_empty()
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

// ---- the senders ----------------------------------------------------------------

/// The running sender tasks, one per webhook.
pub struct WebhookSenders {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
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

struct Sender {
    spool: Spool,
    settings: WebhookSettings,
    client: HttpClient,
    wake: Arc<Notify>,
    stop: watch::Receiver<bool>,
}

impl Sender {
    async fn run(mut self) {
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

    #[test]
    fn a_secret_file_loses_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        let text = format!(
            "url = \"http://x/\"\nsecret_file = {:?}",
            path.display().to_string()
        );
        let raw: RawWebhook = toml::from_str(&text).unwrap();
        assert_eq!(raw.validate(0).unwrap().secret.0, b"s3cret");
        let text = format!(
            "url = \"http://x/\"\nsecret = \"a\"\nsecret_file = {:?}",
            path.display().to_string()
        );
        let raw: RawWebhook = toml::from_str(&text).unwrap();
        assert!(raw.validate(0).is_err(), "not both");
    }

    #[test]
    fn settings_are_checked_and_name_the_key() {
        let raw: RawWebhook =
            toml::from_str("url = \"http://127.0.0.1:1/x\"\nsecret = \"s\"").unwrap();
        let s = raw.validate(0).unwrap();
        assert_eq!((s.batch_size, s.max_backlog), (100, 100_000));
        assert_eq!(s.name, "http://127.0.0.1:1/x");
        assert!(!format!("{s:?}").contains("\"s\""));
        let raw: RawWebhook = toml::from_str("url = \"http://x/\"").unwrap();
        assert!(
            raw.validate(2)
                .unwrap_err()
                .starts_with("webhook[2].secret")
        );
        let raw: RawWebhook = toml::from_str("url = \"x\"\nsecret = \"s\"").unwrap();
        assert!(raw.validate(0).unwrap_err().starts_with("webhook[0].url"));
        let raw: RawWebhook =
            toml::from_str("url = \"http://x/\"\nsecret = \"s\"\nbatch_size = 0").unwrap();
        assert!(
            raw.validate(0)
                .unwrap_err()
                .starts_with("webhook[0].batch_size")
        );
        assert!(toml::from_str::<RawWebhook>("url = \"http://x/\"\nsecert = \"s\"").is_err());
        assert!(
            toml::from_str::<RawWebhook>("url = \"http://x/\"\nsecret = \"s\"\nkinds = [\"nope\"]")
                .is_err()
        );
    }
}
