//! What the server said it can do in its EHLO reply (RFC 5321 4.1.1.1), reduced
//! to the extensions the client acts on. Pure parsing, no I/O.

/// The server's extensions. All false / empty after a HELO fallback.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// EHLO was accepted (false when we fell back to HELO).
    pub esmtp: bool,
    pub pipelining: bool,
    /// `SIZE` advertised: `Some(limit)`, where 0 means "no fixed limit" (RFC 1870).
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtp_utf8: bool,
    pub starttls: bool,
    pub enhanced_status_codes: bool,
    pub chunking: bool,
    /// SASL mechanisms from `AUTH` (and the old `AUTH=` form), upper-cased.
    pub auth_mechanisms: Vec<String>,
}

impl Capabilities {
    /// Parses the text of the EHLO reply lines after the first one (the first
    /// line is the server's name and greeting). Unknown keywords are ignored.
    pub fn from_ehlo_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Capabilities {
        let mut capabilities = Capabilities {
            esmtp: true,
            ..Capabilities::default()
        };
        for line in lines {
            capabilities.add_line(line);
        }
        capabilities
    }

    fn add_line(&mut self, line: &str) {
        let mut words = line.split_ascii_whitespace();
        let Some(keyword) = words.next() else {
            return;
        };
        let keyword = keyword.to_ascii_uppercase();
        match keyword.as_str() {
            "PIPELINING" => self.pipelining = true,
            // An unparsable size is treated as "no fixed limit": the server
            // still wants SIZE= on MAIL, and will refuse what it cannot take.
            "SIZE" => self.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
            "8BITMIME" => self.eight_bit_mime = true,
            "SMTPUTF8" => self.smtp_utf8 = true,
            "STARTTLS" => self.starttls = true,
            "ENHANCEDSTATUSCODES" => self.enhanced_status_codes = true,
            "CHUNKING" => self.chunking = true,
            "AUTH" => self.add_auth_mechanisms(words),
            _ => {
                if let Some(mechanisms) = keyword.strip_prefix("AUTH=") {
                    self.add_auth_mechanisms(mechanisms.split_ascii_whitespace().chain(words));
                }
            }
        }
    }

    fn add_auth_mechanisms<'a>(&mut self, mechanisms: impl Iterator<Item = &'a str>) {
        for mechanism in mechanisms {
            let mechanism = mechanism.to_ascii_uppercase();
            if !self.auth_mechanisms.contains(&mechanism) {
                self.auth_mechanisms.push(mechanism);
            }
        }
    }

    /// The message size limit, if the server declared a non-zero one.
    pub fn size_limit(&self) -> Option<u64> {
        self.size.filter(|&limit| limit > 0)
    }

    /// Whether the server offers this SASL mechanism (case-insensitive).
    pub fn offers_auth(&self, mechanism: &str) -> bool {
        self.auth_mechanisms
            .iter()
            .any(|offered| offered.eq_ignore_ascii_case(mechanism))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_postfix_like_ehlo() {
        let lines = [
            "PIPELINING",
            "SIZE 10240000",
            "VRFY",
            "ETRN",
            "STARTTLS",
            "AUTH PLAIN LOGIN",
            "AUTH=PLAIN LOGIN",
            "ENHANCEDSTATUSCODES",
            "8BITMIME",
            "DSN",
            "SMTPUTF8",
            "CHUNKING",
        ];
        let caps = Capabilities::from_ehlo_lines(lines);
        assert!(caps.esmtp && caps.pipelining && caps.starttls && caps.eight_bit_mime);
        assert!(caps.smtp_utf8 && caps.enhanced_status_codes && caps.chunking);
        assert_eq!(caps.size, Some(10_240_000));
        assert_eq!(caps.size_limit(), Some(10_240_000));
        assert_eq!(caps.auth_mechanisms, vec!["PLAIN", "LOGIN"]);
        assert!(caps.offers_auth("plain") && caps.offers_auth("LOGIN"));
        assert!(!caps.offers_auth("CRAM-MD5"));
    }

    #[test]
    fn minimal_ehlo_and_odd_forms() {
        let caps = Capabilities::from_ehlo_lines(["size", "", "auth=login", "x-unknown 1 2"]);
        assert!(caps.esmtp && !caps.pipelining && !caps.starttls);
        assert_eq!(caps.size, Some(0));
        assert_eq!(caps.size_limit(), None);
        assert_eq!(caps.auth_mechanisms, vec!["LOGIN"]);

        let caps = Capabilities::from_ehlo_lines(["SIZE not-a-number", "Auth cram-md5 Plain"]);
        assert_eq!(caps.size, Some(0));
        assert_eq!(caps.auth_mechanisms, vec!["CRAM-MD5", "PLAIN"]);
    }

    #[test]
    fn helo_fallback_has_nothing() {
        let caps = Capabilities::default();
        assert!(!caps.esmtp && caps.size.is_none() && caps.auth_mechanisms.is_empty());
    }
}
