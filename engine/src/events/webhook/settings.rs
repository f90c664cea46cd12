//! A webhook's configuration: `[[webhook]]` as written in `config.toml`,
//! checked into [`WebhookSettings`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::super::EventKind;
use super::super::http::HttpUrl;

/// Events per POST when not configured.
const DEFAULT_BATCH_SIZE: usize = 100;
/// Events kept per webhook while its receiver is down, when not configured.
const DEFAULT_MAX_BACKLOG: u64 = 100_000;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(1);
const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(300);
/// Largest batch accepted in the configuration.
const MAX_BATCH_SIZE: usize = 10_000;

/// The shared secret; never printed.
#[derive(Clone)]
pub struct WebhookSecret(pub(super) Vec<u8>);

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
            Some(text) => crate::values::parse_duration(text)
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

#[cfg(test)]
mod tests {
    use super::*;

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
