//! Which event log lines `sendctl log` wants: by type, recipient, sender,
//! tenant, campaign, route, message and time.
//!
//! A scan over a gigabyte of JSON lines must not parse every line. Each
//! filter therefore also gives a byte pattern that a matching line must
//! contain: its value exactly as serde_json writes it (`"acme"`, escapes
//! and all); only lines holding every pattern are parsed, and the parsed
//! fields decide. Recipient and
//! sender compare without regard to ASCII case (`Bob@Example.com` is the
//! same mailbox to an operator); a value starting with `@` matches the
//! domain.

use std::borrow::Cow;

use aho_corasick::AhoCorasick;
use serde::Deserialize;
use serde_json::Value;

use super::EventKind;

/// How far out of time order lines of the log may be. The writer appends
/// in queue order, and a producer stamps an event before it queues it,
/// sometimes a spool commit earlier: a few seconds at most. A backward
/// scan for `since` stops at the first line older than `since` by this.
const SINCE_SLACK_MS: u64 = 5 * 60 * 1000;

/// A filter the caller got wrong; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FilterError {
    pub field: &'static str,
    pub message: String,
}

/// The filters as given (by the admin socket); `None` or empty: any.
#[derive(Debug, Clone, Default)]
pub struct FilterSpec {
    /// Comma-separated event types (`bounce,async_bounce`).
    pub types: Option<String>,
    pub recipient: Option<String>,
    pub sender: Option<String>,
    pub tenant: Option<String>,
    pub campaign: Option<String>,
    pub route: Option<String>,
    /// A message's queue id as `sendctl` shows it (16 hex digits).
    pub message: Option<String>,
    /// An RFC 3339 time, or a duration back from `now_ms` (`1h`, `30m`).
    pub since: Option<String>,
}

/// The fields a filter looks at, borrowed from the line where possible.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    sender: Cow<'a, str>,
    #[serde(borrow)]
    recipient: Cow<'a, str>,
    #[serde(borrow)]
    tenant: Option<Cow<'a, str>>,
    #[serde(borrow)]
    campaign: Option<Cow<'a, str>>,
    #[serde(borrow)]
    route: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message_id: Option<Cow<'a, str>>,
}

/// An address filter: the whole address, or `@domain`; ASCII case ignored.
#[derive(Debug, Clone)]
struct Address(String);

impl Address {
    fn matches(&self, value: &str) -> bool {
        if self.0.starts_with('@') {
            value.len() >= self.0.len()
                && value.is_char_boundary(value.len() - self.0.len())
                && value[value.len() - self.0.len()..].eq_ignore_ascii_case(&self.0)
        } else {
            value.eq_ignore_ascii_case(&self.0)
        }
    }
}

/// The compiled filters of one request.
#[derive(Debug, Clone)]
pub struct LogFilter {
    types: Vec<&'static str>,
    recipient: Option<Address>,
    sender: Option<Address>,
    tenant: Option<String>,
    campaign: Option<String>,
    route: Option<String>,
    message: Option<String>,
    /// Events at or after this time (the log's RFC 3339 form, which sorts
    /// as text).
    since: Option<String>,
    /// `since` less `SINCE_SLACK_MS`, in the same form, and in ms.
    since_floor: Option<(String, u64)>,
    /// Byte patterns a matching line contains: all of them (each entry
    /// may hold alternatives, e.g. several types).
    patterns: Vec<AhoCorasick>,
}

impl LogFilter {
    pub fn new(spec: &FilterSpec, now_ms: u64) -> Result<LogFilter, FilterError> {
        let since_ms = given(&spec.since)
            .map(|s| parse_since(s, now_ms))
            .transpose()?;
        let mut filter = LogFilter {
            types: Vec::new(),
            recipient: given(&spec.recipient).map(|v| Address(v.to_owned())),
            sender: given(&spec.sender).map(|v| Address(v.to_owned())),
            tenant: given(&spec.tenant).map(str::to_owned),
            campaign: given(&spec.campaign).map(str::to_owned),
            route: given(&spec.route).map(str::to_owned),
            message: given(&spec.message).map(message_id).transpose()?,
            since: since_ms.map(crate::timefmt::rfc3339),
            since_floor: since_ms.map(|ms| {
                let floor = ms.saturating_sub(SINCE_SLACK_MS);
                (crate::timefmt::rfc3339(floor), floor)
            }),
            patterns: Vec::new(),
        };
        if let Some(types) = given(&spec.types) {
            filter.types = parse_types(types)?;
        }
        filter.patterns = filter.compile_patterns()?;
        Ok(filter)
    }

    /// Whether every line matches (no filter given).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty() && self.since.is_none()
    }

    /// Whether a matching line may be in `bytes`: each of the filter's
    /// patterns occurs somewhere in them.
    pub fn may_match(&self, bytes: &[u8]) -> bool {
        self.patterns.iter().all(|p| p.is_match(bytes))
    }

    /// Whether a file last written at `modified_ms` (and every older
    /// file) holds only events before `since`.
    pub fn file_before_since(&self, modified_ms: u64) -> bool {
        self.since_floor
            .as_ref()
            .is_some_and(|(_, floor)| modified_ms < *floor)
    }

    /// Whether `line` and every line before it in the log are certainly
    /// older than `since`: its time, the first field, is older than
    /// `since` by more than the slack. Costs no parse.
    pub fn line_before_since(&self, line: &[u8]) -> bool {
        let Some((floor, _)) = &self.since_floor else {
            return false;
        };
        let Some(rest) = line.strip_prefix(b"{\"time\":\"") else {
            return false;
        };
        let time = rest.split(|b| *b == b'"').next().unwrap_or_default();
        time.len() == floor.len() && time < floor.as_bytes()
    }

    /// The event on `line` if it is a valid event that matches; `None` for
    /// a line that does not match, `Err` for one that is not an event.
    pub fn check(&self, line: &[u8]) -> Result<Option<Value>, serde_json::Error> {
        if !self.may_match(line) {
            return Ok(None);
        }
        if !self.is_empty() {
            let fields: Fields = serde_json::from_slice(line)?;
            if !self.matches(&fields) {
                return Ok(None);
            }
        }
        match serde_json::from_slice(line)? {
            event @ Value::Object(_) => Ok(Some(event)),
            _ => Err(serde::de::Error::custom("an event is a JSON object")),
        }
    }

    fn matches(&self, f: &Fields) -> bool {
        let same = |want: &Option<String>, got: &Option<Cow<str>>| match want {
            None => true,
            Some(w) => got.as_deref() == Some(w.as_str()),
        };
        (self.types.is_empty() || self.types.contains(&f.kind.as_ref()))
            && self
                .recipient
                .as_ref()
                .is_none_or(|a| a.matches(&f.recipient))
            && self.sender.as_ref().is_none_or(|a| a.matches(&f.sender))
            && same(&self.tenant, &f.tenant)
            && same(&self.campaign, &f.campaign)
            && same(&self.route, &f.route)
            && same(&self.message, &f.message_id)
            && self.since.as_deref().is_none_or(|s| f.time.as_ref() >= s)
    }

    /// One pattern set per filter: the value as the writer spells it.
    /// Only the value: the field's name is on every line, and a pattern
    /// that starts with it would make every line a candidate.
    fn compile_patterns(&self) -> Result<Vec<AhoCorasick>, FilterError> {
        let mut sets: Vec<(Vec<String>, bool)> = Vec::new();
        if !self.types.is_empty() {
            let names = self.types.iter().map(|t| format!("\"{t}\""));
            sets.push((names.collect(), false));
        }
        for address in [&self.recipient, &self.sender].into_iter().flatten() {
            sets.push((vec![format!("{}\"", json_text(&address.0))], true));
        }
        for value in [&self.tenant, &self.campaign, &self.route, &self.message]
            .into_iter()
            .flatten()
        {
            sets.push((vec![format!("\"{}\"", json_text(value))], false));
        }
        sets.into_iter()
            .map(|(patterns, ignore_case)| {
                AhoCorasick::builder()
                    .ascii_case_insensitive(ignore_case)
                    .build(&patterns)
                    .map_err(|e| FilterError {
                        field: "filter",
                        message: e.to_string(),
                    })
            })
            .collect()
    }
}

/// A filter's value, trimmed; `None` when absent or empty.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// A queue id as `sendctl` shows it, in the form the log writes it.
fn message_id(text: &str) -> Result<String, FilterError> {
    let id = sendengine_queue::parse_id(&text.to_ascii_lowercase()).ok_or_else(|| FilterError {
        field: "message",
        message: format!(
            "`{text}` is not a queue id (16 hex digits, as `sendctl queue list` shows)"
        ),
    })?;
    Ok(sendengine_queue::format_id(id))
}

/// A string as it appears between the quotes in serde_json's output.
fn json_text(value: &str) -> String {
    let quoted = serde_json::to_string(value).unwrap_or_default();
    quoted
        .get(1..quoted.len().saturating_sub(1))
        .unwrap_or_default()
        .to_owned()
}

fn parse_types(list: &str) -> Result<Vec<&'static str>, FilterError> {
    list.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            EventKind::ALL
                .iter()
                .map(|k| k.name())
                .find(|name| *name == t)
                .ok_or_else(|| FilterError {
                    field: "type",
                    message: format!(
                        "`{t}` is not an event type; the types are {}",
                        EventKind::ALL.map(EventKind::name).join(", ")
                    ),
                })
        })
        .collect()
}

/// `since`: an RFC 3339 time, or a duration with a unit back from now.
pub fn parse_since(text: &str, now_ms: u64) -> Result<u64, FilterError> {
    if let Some(ms) = crate::timefmt::parse_rfc3339(text) {
        return Ok(ms);
    }
    let error = |message: String| FilterError {
        field: "since",
        message,
    };
    if text.contains('-') || text.contains(':') {
        return Err(error(format!(
            "`{text}` is not an RFC 3339 time (e.g. 2026-11-21T10:30:00Z) or a duration (e.g. 1h)"
        )));
    }
    let back = crate::values::parse_duration(text).map_err(error)?;
    Ok(now_ms.saturating_sub(u64::try_from(back.as_millis()).unwrap_or(u64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_795_257_000_000; // 2026-11-21T10:30:00Z

    /// A line as the writer writes it.
    fn line(kind: &str, recipient: &str, tenant: Option<&str>, time: &str) -> String {
        let kind = EventKind::ALL
            .into_iter()
            .find(|k| k.name() == kind)
            .unwrap();
        let mut event = crate::events::test_event(kind, recipient, time);
        event.tenant = tenant.map(str::to_owned);
        serde_json::to_string(&event).unwrap()
    }

    fn filter(spec: FilterSpec) -> LogFilter {
        LogFilter::new(&spec, NOW).unwrap()
    }

    fn hit(f: &LogFilter, l: &str) -> bool {
        f.check(l.as_bytes()).unwrap().is_some()
    }

    #[test]
    fn kind_names_are_the_schemas() {
        for kind in EventKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
        }
    }

    #[test]
    fn each_filter_selects_by_its_field() {
        let a = line(
            "delivery",
            "Bob@Example.NET",
            Some("acme"),
            "2026-11-21T10:00:00.000Z",
        );
        let b = line("bounce", "ann@other.org", None, "2026-11-21T10:20:00.000Z");
        let f = filter(FilterSpec {
            types: Some("bounce, async_bounce".into()),
            ..FilterSpec::default()
        });
        assert!(!hit(&f, &a) && hit(&f, &b));
        let f = filter(FilterSpec {
            recipient: Some("bob@example.net".into()),
            ..FilterSpec::default()
        });
        assert!(hit(&f, &a) && !hit(&f, &b));
        let f = filter(FilterSpec {
            recipient: Some("@EXAMPLE.net".into()),
            ..FilterSpec::default()
        });
        assert!(hit(&f, &a) && !hit(&f, &b));
        let f = filter(FilterSpec {
            sender: Some("app@shop.example".into()),
            tenant: Some("acme".into()),
            ..FilterSpec::default()
        });
        assert!(hit(&f, &a) && !hit(&f, &b));
        let f = filter(FilterSpec {
            campaign: Some("spring \"sale\"".into()),
            route: Some("relay-1".into()),
            ..FilterSpec::default()
        });
        assert!(hit(&f, &a) && hit(&f, &b));
        let f = filter(FilterSpec {
            since: Some("15m".into()),
            ..FilterSpec::default()
        });
        assert!(!hit(&f, &a) && hit(&f, &b));
    }

    #[test]
    fn since_stops_a_scan_only_past_the_slack() {
        let f = filter(FilterSpec {
            since: Some("2026-11-21T10:00:00Z".into()),
            ..FilterSpec::default()
        });
        let at = |t: &str| line("delivery", "a@b.c", None, t);
        assert!(!f.line_before_since(at("2026-11-21T09:58:00.000Z").as_bytes()));
        assert!(f.line_before_since(at("2026-11-21T09:54:59.999Z").as_bytes()));
        assert!(!hit(&f, &at("2026-11-21T09:58:00.000Z")));
        assert!(f.file_before_since(NOW - 3_600_000));
        assert!(!f.file_before_since(NOW - 1_800_000));
        assert!(!filter(FilterSpec::default()).line_before_since(at("1999").as_bytes()));
    }

    #[test]
    fn message_selects_one_messages_events_whatever_the_case_given() {
        let of = |id: &str| {
            let mut event = crate::events::test_event(
                EventKind::Delivery,
                "bob@example.net",
                "2026-11-21T10:00:00.000Z",
            );
            event.message_id = id.into();
            serde_json::to_string(&event).unwrap()
        };
        let f = filter(FilterSpec {
            message: Some("00019A2B3C4D5E6F".into()),
            ..FilterSpec::default()
        });
        assert!(hit(&f, &of("00019a2b3c4d5e6f")));
        assert!(!hit(&f, &of("00019a2b3c4d5e70")));
        // The id elsewhere on the line (a header Message-ID) is not the field.
        let mut event = crate::events::test_event(
            EventKind::Delivery,
            "bob@example.net",
            "2026-11-21T10:00:00.000Z",
        );
        event.header_message_id = "<00019a2b3c4d5e6f@example.net>".into();
        assert!(!hit(&f, &serde_json::to_string(&event).unwrap()));
    }

    #[test]
    fn a_value_in_another_field_does_not_match() {
        // "acme" as the recipient's local part is not the tenant acme.
        let l = line(
            "delivery",
            "acme@example.net",
            None,
            "2026-11-21T10:00:00.000Z",
        );
        let f = filter(FilterSpec {
            tenant: Some("acme".into()),
            ..FilterSpec::default()
        });
        assert!(!hit(&f, &l));
    }

    #[test]
    fn lines_that_are_not_events_are_errors_not_matches() {
        let f = filter(FilterSpec::default());
        assert!(f.check(b"{\"time\":\"2026-11-2").is_err());
        assert!(f.check(b"[1,2]").is_err());
        let f = filter(FilterSpec {
            types: Some("delivery".into()),
            ..FilterSpec::default()
        });
        assert!(f.check(b"{\"type\":\"delivery\"").is_err());
    }

    #[test]
    fn bad_filters_name_the_field() {
        let bad = |spec: FilterSpec| LogFilter::new(&spec, NOW).unwrap_err();
        let e = bad(FilterSpec {
            types: Some("delivered".into()),
            ..FilterSpec::default()
        });
        assert_eq!(e.field, "type");
        assert!(e.message.contains("delivery, transient_failure"), "{e}");
        let e = bad(FilterSpec {
            since: Some("10".into()),
            ..FilterSpec::default()
        });
        assert!(
            e.to_string().starts_with("since:") && e.message.contains("unit"),
            "{e}"
        );
        let e = bad(FilterSpec {
            since: Some("2026-11-21".into()),
            ..FilterSpec::default()
        });
        assert!(e.message.contains("RFC 3339"), "{e}");
        let e = bad(FilterSpec {
            message: Some("42".into()),
            ..FilterSpec::default()
        });
        assert!(
            e.field == "message" && e.message.contains("16 hex digits"),
            "{e}"
        );
        assert_eq!(
            parse_since("2026-11-21T10:00:00Z", NOW),
            Ok(NOW - 1_800_000)
        );
        assert_eq!(parse_since("1h", NOW), Ok(NOW - 3_600_000));
    }
}
