//! What a sender domain publishes in DNS for a key: the TXT record at
//! `selector._domainkey.domain`, its zone-file form split into the 255-byte
//! character strings DNS allows, and the default selector for a new key.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::KeyError;
use crate::key::DkimKey;

/// The longest character string a TXT record can hold (RFC 1035 §3.3).
pub(crate) const TXT_STRING_MAX: usize = 255;
/// Longest domain name in text form, and longest label (RFC 1035 §2.3.4).
const DOMAIN_MAX: usize = 253;
const LABEL_MAX: usize = 63;
const SECONDS_PER_DAY: u64 = 86_400;

/// The DKIM public-key TXT record of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    /// `selector._domainkey.domain`, without a trailing dot.
    pub name: String,
    /// `v=DKIM1; k=rsa; p=...`, the whole value as resolvers return it.
    pub value: String,
}

impl DnsRecord {
    /// The record publishing `key` for `domain` under `selector`.
    pub fn new(domain: &str, selector: &str, key: &DkimKey) -> Result<DnsRecord, KeyError> {
        let domain = checked_domain(domain)?;
        let selector = checked_selector(selector)?;
        Ok(DnsRecord {
            name: format!("{selector}._domainkey.{domain}"),
            value: format!(
                "v=DKIM1; k={}; p={}",
                key.algorithm().dns_name(),
                key.public_key_base64()
            ),
        })
    }

    /// The value cut into character strings of at most 255 bytes, in order;
    /// a resolver joins them back without separators (RFC 6376 §3.6.2.2).
    pub(crate) fn txt_strings(&self) -> Vec<&str> {
        // The value is ASCII (tags and base64), so any byte is a char boundary.
        self.value
            .as_bytes()
            .chunks(TXT_STRING_MAX)
            .map(|chunk| std::str::from_utf8(chunk).unwrap_or_default())
            .collect()
    }

    /// One zone-file line: `name. IN TXT "..." "..."`, each quoted string at
    /// most 255 bytes, ready to paste into a zone or a DNS provider's form.
    pub fn zone_line(&self) -> String {
        let quoted: Vec<String> = self
            .txt_strings()
            .iter()
            .map(|part| format!("\"{part}\""))
            .collect();
        format!("{}. IN TXT {}", self.name, quoted.join(" "))
    }
}

/// The selector for keys made in a given month: `s` + YYYYMM, e.g. `s202611`.
/// Monthly names let a rotation add a new selector without clashing.
pub(crate) fn selector_for_month(year: i32, month: u32) -> String {
    format!("s{year:04}{month:02}")
}

/// The default selector for a key made at `now` (UTC).
pub fn default_selector(now: SystemTime) -> String {
    let days = now
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs() / SECONDS_PER_DAY)
        .unwrap_or(0);
    let (year, month) = year_month_from_days(days);
    selector_for_month(year, month)
}

/// Civil year and month of a day count since 1970-01-01, after Howard
/// Hinnant's `civil_from_days`; saves a date crate for one conversion.
fn year_month_from_days(days: u64) -> (i32, u32) {
    let shifted = days as i64 + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year as i32, month as u32)
}

/// The signing domain in the form used in `d=` and DNS names: lowercase,
/// no trailing dot. Internationalised names must come as A-labels.
pub(crate) fn checked_domain(domain: &str) -> Result<String, KeyError> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.len() > DOMAIN_MAX || !domain.contains('.') || !valid_labels(domain) {
        return Err(KeyError::InvalidDomain(domain.to_string()));
    }
    Ok(domain.to_ascii_lowercase())
}

/// A selector is one or more DNS labels (RFC 6376 §3.1).
pub(crate) fn checked_selector(selector: &str) -> Result<String, KeyError> {
    if selector.len() > DOMAIN_MAX || !valid_labels(selector) {
        return Err(KeyError::InvalidSelector(selector.to_string()));
    }
    Ok(selector.to_ascii_lowercase())
}

fn valid_labels(name: &str) -> bool {
    name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= LABEL_MAX
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyAlgorithm;
    use std::time::Duration;

    #[test]
    fn selector_is_s_year_month() {
        assert_eq!(selector_for_month(2026, 11), "s202611");
        assert_eq!(selector_for_month(2027, 1), "s202701");
    }

    #[test]
    fn default_selector_follows_the_calendar() {
        let at = |seconds: u64| default_selector(UNIX_EPOCH + Duration::from_secs(seconds));
        assert_eq!(at(0), "s197001");
        assert_eq!(at(951_782_400), "s200002"); // 2000-02-29 00:00:00
        assert_eq!(at(951_868_799), "s200002"); // 2000-02-29 23:59:59
        assert_eq!(at(951_868_800), "s200003"); // 2000-03-01
        assert_eq!(at(1_796_083_199), "s202611"); // 2026-11-30 23:59:59
        assert_eq!(at(1_796_083_200), "s202612"); // 2026-12-01
        assert_eq!(at(1_798_761_600), "s202701"); // 2027-01-01
    }

    #[test]
    fn rsa_record_is_split_into_255_byte_strings() {
        let key = DkimKey::generate(KeyAlgorithm::Rsa).unwrap();
        let record = DnsRecord::new("Example.COM.", "s202611", &key).unwrap();
        assert_eq!(record.name, "s202611._domainkey.example.com");
        assert!(record.value.starts_with("v=DKIM1; k=rsa; p=MIIB"));
        let strings = record.txt_strings();
        assert_eq!(strings.len(), 2);
        assert_eq!(strings[0].len(), TXT_STRING_MAX);
        assert_eq!(strings.concat(), record.value);
        let line = record.zone_line();
        assert!(line.starts_with("s202611._domainkey.example.com. IN TXT \"v=DKIM1; k=rsa; p="));
        assert_eq!(line.matches('"').count(), 4);
    }

    #[test]
    fn ed25519_record_fits_one_string() {
        let key = DkimKey::generate(KeyAlgorithm::Ed25519).unwrap();
        let record = DnsRecord::new("example.com", "ed1", &key).unwrap();
        assert!(record.value.starts_with("v=DKIM1; k=ed25519; p="));
        assert_eq!(record.txt_strings(), vec![record.value.as_str()]);
    }

    #[test]
    fn bad_names_are_refused() {
        let key = DkimKey::generate(KeyAlgorithm::Ed25519).unwrap();
        for domain in [
            "",
            "localhost",
            "exa mple.com",
            "bücher.de",
            "-a.com",
            "a..com",
        ] {
            assert!(DnsRecord::new(domain, "s1", &key).is_err(), "{domain:?}");
        }
        for selector in ["", "a b", "s;1", "a.", &"x".repeat(64)] {
            assert!(
                DnsRecord::new("example.com", selector, &key).is_err(),
                "{selector:?}"
            );
        }
        assert!(DnsRecord::new("xn--bcher-kva.de", "s1.eu", &key).is_ok());
    }
}
