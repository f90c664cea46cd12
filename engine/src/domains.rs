//! Sender domains: the DNS records a tenant must publish for a domain it
//! sends from (made from its group's DNS template), and their verification.
//!
//! Template record names and values may use these placeholders:
//!
//! | placeholder            | replaced by                                              |
//! |------------------------|----------------------------------------------------------|
//! | `_SenderDomain_`       | the sender domain, lowercase (`example.com`)             |
//! | `_SenderDomainHash_`   | stable proof of ownership: URL-safe base64 (no padding) of HMAC-SHA256(secret, domain), first 16 characters |
//! | `_SenderDomainRandom_` | 10 random characters `[a-z0-9]`, drawn once when the domain is created |
//! | `_SubDomain_`          | the group's subdomain setting (default `sl`)             |
//! | `_TrackingPrefix_`     | the group's tracking prefix setting (default `track`)    |
//! | `_Separator_`          | the group's separator setting (default `-`)              |
//!
//! After expansion a record name is made absolute like a zone-file name:
//! `@` or an empty name is the sender domain itself, and a name that does
//! not already end with the sender domain gets `.<domain>` appended. The
//! MFROM (return-path) domain of a sender domain is `<subdomain>.<domain>`.
//!
//! A template with no records makes domains enabled at once. Otherwise
//! `verify` resolves every record and the domain is enabled only when all
//! of them are published as generated.

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::dns::{DnsError, Resolver, normalise};

/// Characters of `_SenderDomainHash_`: 96 bits, short enough for a label.
const HASH_CHARS: usize = 16;
/// Length of `_SenderDomainRandom_`.
const RANDOM_CHARS: usize = 10;
/// MX preference of a template MX record that names none.
const DEFAULT_MX_PRIORITY: u16 = 10;
const RANDOM_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// The DNS record types a template may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RecordKind {
    Cname,
    Txt,
    Mx,
    A,
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordKind::Cname => "CNAME",
            RecordKind::Txt => "TXT",
            RecordKind::Mx => "MX",
            RecordKind::A => "A",
        })
    }
}

/// One record of a template, with placeholders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRecord {
    pub kind: RecordKind,
    pub name: String,
    pub value: String,
    /// MX preference; ignored for other kinds.
    #[serde(default)]
    pub priority: Option<u16>,
}

/// A named set of records that every sender domain of a group must publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsTemplate {
    pub name: String,
    #[serde(default)]
    pub records: Vec<TemplateRecord>,
}

/// The group settings that feed the placeholders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DomainSettings {
    pub subdomain: String,
    pub tracking_prefix: String,
    pub separator: String,
}

impl Default for DomainSettings {
    fn default() -> Self {
        DomainSettings {
            subdomain: "sl".into(),
            tracking_prefix: "track".into(),
            separator: "-".into(),
        }
    }
}

/// A concrete record to publish for one sender domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRecord {
    pub kind: RecordKind,
    /// Absolute, lowercase, no trailing dot.
    pub name: String,
    /// TXT values are kept exactly; host names (CNAME, MX) are normalised.
    pub value: String,
    #[serde(default)]
    pub priority: Option<u16>,
}

impl DomainRecord {
    /// The value as `verify` compares and reports it (`10 mx.example.net` for MX).
    pub fn expected(&self) -> String {
        match (self.kind, self.priority) {
            (RecordKind::Mx, Some(priority)) => format!("{priority} {}", self.value),
            _ => self.value.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainStatus {
    /// Created, not verified yet.
    Pending,
    /// Every record was found as generated (or the template had none).
    Enabled,
    /// The last verification found at least one record missing or wrong.
    Failed,
}

/// The outcome of verifying one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordCheck {
    pub name: String,
    pub kind: RecordKind,
    pub expected: String,
    /// What DNS returned for that name and kind (empty when nothing).
    pub found: Vec<String>,
    pub ok: bool,
    /// Why it failed: missing, wrong value, or a DNS error.
    pub problem: Option<String>,
}

/// A domain a tenant sends from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderDomain {
    pub domain: String,
    pub owner: String,
    pub status: DomainStatus,
    pub records: Vec<DomainRecord>,
    #[serde(default)]
    pub checks: Vec<RecordCheck>,
    #[serde(default)]
    pub last_verified_ms: Option<u64>,
    pub created_ms: u64,
}

impl SenderDomain {
    /// A new domain of `owner`, with its records generated now (and so its
    /// `_SenderDomainRandom_` drawn now). No records → enabled at once.
    pub fn new(
        domain: &str,
        owner: &str,
        template: &DnsTemplate,
        settings: &DomainSettings,
        secret: &[u8],
        now_ms: u64,
    ) -> SenderDomain {
        let records = generate_records(template, domain, settings, secret);
        let status = if records.is_empty() {
            DomainStatus::Enabled
        } else {
            DomainStatus::Pending
        };
        SenderDomain {
            domain: normalise(domain),
            owner: owner.to_owned(),
            status,
            records,
            checks: Vec::new(),
            last_verified_ms: None,
            created_ms: now_ms,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.status == DomainStatus::Enabled
    }

    /// The checks that failed at the last verification.
    pub fn failed_checks(&self) -> impl Iterator<Item = &RecordCheck> {
        self.checks.iter().filter(|check| !check.ok)
    }

    /// One line naming each failed record and why, for people and logs.
    pub fn failure_summary(&self) -> String {
        self.failed_checks()
            .map(|check| {
                format!(
                    "{} {}: {}",
                    check.kind,
                    check.name,
                    check.problem.as_deref().unwrap_or("failed")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The MFROM (return-path) domain of `domain`: `<subdomain>.<domain>`.
pub fn mail_from_domain(domain: &str, settings: &DomainSettings) -> String {
    let domain = normalise(domain);
    let subdomain = normalise(&settings.subdomain);
    if subdomain.is_empty() {
        domain
    } else {
        format!("{subdomain}.{domain}")
    }
}

/// `_SenderDomainHash_` of `domain`: stable for a given secret.
pub fn domain_hash(domain: &str, secret: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, normalise(domain).as_bytes());
    let mut encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref());
    encoded.truncate(HASH_CHARS);
    encoded
}

/// A fresh `_SenderDomainRandom_` value.
pub fn random_token() -> String {
    let mut token = String::with_capacity(RANDOM_CHARS);
    // Rejection sampling keeps every character equally likely: 252 = 7 × 36.
    let limit = (256 / RANDOM_ALPHABET.len() * RANDOM_ALPHABET.len()) as u8;
    while token.len() < RANDOM_CHARS {
        let mut bytes = [0u8; 16];
        // The system random source failing leaves nothing sane to do (TLS
        // would fail just the same), and it depends on no input.
        aws_lc_rs::rand::fill(&mut bytes).expect("the system random generator failed");
        for byte in bytes {
            if byte < limit && token.len() < RANDOM_CHARS {
                token.push(RANDOM_ALPHABET[usize::from(byte) % RANDOM_ALPHABET.len()] as char);
            }
        }
    }
    token
}

/// The values the placeholders stand for, for one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholders {
    pub domain: String,
    pub hash: String,
    pub random: String,
    pub settings: DomainSettings,
}

impl Placeholders {
    /// Placeholders for `domain`, drawing a fresh random token.
    pub fn new(domain: &str, settings: &DomainSettings, secret: &[u8]) -> Placeholders {
        Placeholders {
            domain: normalise(domain),
            hash: domain_hash(domain, secret),
            random: random_token(),
            settings: settings.clone(),
        }
    }

    /// `text` with every placeholder replaced, in one pass (a replaced value
    /// is never expanded again).
    pub fn expand(&self, text: &str) -> String {
        let table: [(&str, &str); 6] = [
            ("_SenderDomain_", &self.domain),
            ("_SenderDomainHash_", &self.hash),
            ("_SenderDomainRandom_", &self.random),
            ("_SubDomain_", &self.settings.subdomain),
            ("_TrackingPrefix_", &self.settings.tracking_prefix),
            ("_Separator_", &self.settings.separator),
        ];
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find('_') {
            out.push_str(&rest[..at]);
            rest = &rest[at..];
            match table.iter().find(|(key, _)| rest.starts_with(key)) {
                Some((key, value)) => {
                    out.push_str(value);
                    rest = &rest[key.len()..];
                }
                None => {
                    out.push('_');
                    rest = &rest[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// The concrete record for one template record.
    pub fn render(&self, record: &TemplateRecord) -> DomainRecord {
        let name = absolute_name(&self.expand(&record.name), &self.domain);
        let value = self.expand(&record.value);
        let value = match record.kind {
            RecordKind::Txt => value,
            RecordKind::Cname | RecordKind::Mx | RecordKind::A => normalise(&value),
        };
        let priority = match record.kind {
            RecordKind::Mx => Some(record.priority.unwrap_or(DEFAULT_MX_PRIORITY)),
            _ => None,
        };
        DomainRecord {
            kind: record.kind,
            name,
            value,
            priority,
        }
    }
}

/// The records `domain` must publish under `template`. Draws a new
/// `_SenderDomainRandom_` on each call: call it once per domain.
pub fn generate_records(
    template: &DnsTemplate,
    domain: &str,
    settings: &DomainSettings,
    secret: &[u8],
) -> Vec<DomainRecord> {
    let placeholders = Placeholders::new(domain, settings, secret);
    template
        .records
        .iter()
        .map(|record| placeholders.render(record))
        .collect()
}

/// Zone-file style: `@`/empty is the domain, relative names get it appended.
fn absolute_name(name: &str, domain: &str) -> String {
    let name = normalise(name);
    if name.is_empty() || name == "@" {
        return domain.to_owned();
    }
    if name == domain || name.ends_with(&format!(".{domain}")) {
        name
    } else {
        format!("{name}.{domain}")
    }
}

/// Resolves every record of `domain` and records the outcome: enabled when
/// all are published as generated, failed otherwise (with each check saying
/// what was found).
pub async fn verify(resolver: &Resolver, domain: &mut SenderDomain, now_ms: u64) {
    let mut checks = Vec::with_capacity(domain.records.len());
    for record in &domain.records {
        checks.push(check_record(resolver, record).await);
    }
    domain.status = if checks.iter().all(|check| check.ok) {
        DomainStatus::Enabled
    } else {
        DomainStatus::Failed
    };
    domain.checks = checks;
    domain.last_verified_ms = Some(now_ms);
}

async fn check_record(resolver: &Resolver, record: &DomainRecord) -> RecordCheck {
    let looked_up = match record.kind {
        RecordKind::Cname => resolver.cname(&record.name).await,
        RecordKind::Txt => resolver.txt(&record.name).await,
        RecordKind::Mx => resolver.mx_records(&record.name).await.map(|hosts| {
            hosts
                .iter()
                .map(|host| format!("{} {}", host.preference, display_host(&host.exchange)))
                .collect()
        }),
        RecordKind::A => resolver.addresses(&record.name).await.map(|addresses| {
            addresses
                .iter()
                .map(|address| address.to_string())
                .collect()
        }),
    };
    let expected = record.expected();
    let (found, problem) = match looked_up {
        Ok(found) if found.iter().any(|value| matches(record, value)) => (found, None),
        Ok(found) => {
            let problem = format!(
                "wrong value: expected {expected:?}, found {}",
                quoted_list(&found)
            );
            (found, Some(problem))
        }
        Err(error) => (Vec::new(), Some(describe_failure(record, &error))),
    };
    RecordCheck {
        name: record.name.clone(),
        kind: record.kind,
        expected,
        ok: problem.is_none(),
        found,
        problem,
    }
}

/// Compares one published value with the generated record.
fn matches(record: &DomainRecord, found: &str) -> bool {
    match record.kind {
        // TXT values prove ownership: exact, after joining the strings.
        RecordKind::Txt => found == record.value,
        RecordKind::Cname => normalise(found) == record.value,
        RecordKind::Mx => match record.priority {
            Some(_) => found.eq_ignore_ascii_case(&record.expected()),
            None => found
                .split_once(' ')
                .is_some_and(|(_, exchange)| exchange.eq_ignore_ascii_case(&record.value)),
        },
        RecordKind::A => match (
            found.parse::<std::net::IpAddr>(),
            record.value.parse::<std::net::IpAddr>(),
        ) {
            (Ok(found), Ok(expected)) => found == expected,
            _ => false,
        },
    }
}

fn describe_failure(record: &DomainRecord, error: &DnsError) -> String {
    match error {
        DnsError::NxDomain { .. } | DnsError::NoRecords { .. } => {
            format!(
                "missing: no {} record at {} ({error})",
                record.kind, record.name
            )
        }
        DnsError::Temporary { .. } => format!("DNS error: {error}"),
    }
}

/// A null MX has an empty exchange; show it as DNS does.
fn display_host(exchange: &str) -> &str {
    if exchange.is_empty() { "." } else { exchange }
}

fn quoted_list(values: &[String]) -> String {
    values
        .iter()
        .map(|value| format!("{value:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placeholders() -> Placeholders {
        Placeholders {
            domain: "example.com".into(),
            hash: "HASH".into(),
            random: "rand0mtok1".into(),
            settings: DomainSettings::default(),
        }
    }

    #[test]
    fn expands_every_placeholder_once() {
        let text = "_TrackingPrefix__Separator__SenderDomainRandom_._SubDomain_._SenderDomain_ \
                    v=_SenderDomainHash_ _unknown_ _";
        assert_eq!(
            placeholders().expand(text),
            "track-rand0mtok1.sl.example.com v=HASH _unknown_ _"
        );
        // A value that looks like a placeholder is not expanded again.
        let mut tricky = placeholders();
        tricky.domain = "_SenderDomainHash_".into();
        assert_eq!(tricky.expand("_SenderDomain_"), "_SenderDomainHash_");
    }

    #[test]
    fn names_are_made_absolute() {
        assert_eq!(absolute_name("@", "example.com"), "example.com");
        assert_eq!(absolute_name("", "example.com"), "example.com");
        assert_eq!(absolute_name("_dmarc", "example.com"), "_dmarc.example.com");
        assert_eq!(
            absolute_name("SL.Example.com.", "example.com"),
            "sl.example.com"
        );
        assert_eq!(
            absolute_name("notexample.com", "example.com"),
            "notexample.com.example.com"
        );
    }

    #[test]
    fn random_tokens_are_ten_lowercase_alphanumerics() {
        let token = random_token();
        assert_eq!(token.len(), RANDOM_CHARS);
        assert!(token.bytes().all(|b| RANDOM_ALPHABET.contains(&b)));
        assert_ne!(token, random_token());
    }

    #[test]
    fn mail_from_domain_is_the_subdomain() {
        let settings = DomainSettings::default();
        assert_eq!(
            mail_from_domain("Example.COM.", &settings),
            "sl.example.com"
        );
        let none = DomainSettings {
            subdomain: String::new(),
            ..DomainSettings::default()
        };
        assert_eq!(mail_from_domain("example.com", &none), "example.com");
    }
}
