//! Classification of SMTP replies and bounce diagnostics into a [`Category`].
//!
//! The rules are data: an ordered list of case-insensitive regexes in TOML
//! (the built-in list is `rules.toml`, embedded at build time), tested against
//! the line `CODE ENHANCED TEXT`; the first match wins. Operators can put
//! their own rules in front of the built-in ones, so a new provider message
//! needs no release.

use std::sync::{LazyLock, OnceLock};

use regex::{Regex, RegexBuilder};
use serde::Deserialize;

use crate::category::{Category, Classification};

/// The built-in rules, tried after any operator rules.
const BUILTIN_RULES: &str = include_str!("rules.toml");

/// Longest text (in bytes) the rules look at: provider messages put the
/// useful words first, and a bound keeps matching cheap on huge diagnostics.
pub(crate) const MAX_CLASSIFIED_TEXT: usize = 4096;

/// Limit on the compiled size of one rule, so an operator file cannot make
/// the daemon allocate without bound.
const MAX_COMPILED_RULE_BYTES: usize = 4 * 1024 * 1024;

/// Why a rules file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("bounce rules are not valid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    #[error(
        "bounce rule {index} has unknown category {category:?}; known: bad-mailbox, inactive-mailbox, bad-domain, quota-issues, ... other"
    )]
    UnknownCategory { index: usize, category: String },
    #[error("a bounce rule pattern does not compile: {0}")]
    Regex(#[from] regex::Error),
}

#[derive(Deserialize)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<RuleEntry>,
}

#[derive(Deserialize)]
struct RuleEntry {
    category: String,
    pattern: String,
}

/// An ordered list of rules, compiled once.
///
/// Each rule is its own regex, tried in order until one matches: a
/// `RegexSet` must report every match, which forced its slowest engine on
/// long diagnostics (three quarters of the parse time of the corpus).
#[derive(Debug, Clone)]
pub struct Classifier {
    patterns: Vec<Regex>,
    categories: Vec<Category>,
}

impl Classifier {
    /// The built-in rules only.
    fn builtin() -> Classifier {
        // The built-in file is part of the binary and covered by tests.
        Classifier::with_operator_rules("").unwrap_or_else(|err| {
            panic!("the embedded rules.toml is broken: {err}");
        })
    }

    /// Operator rules (TOML, same format as `rules.toml`) tried before the
    /// built-in ones.
    pub fn with_operator_rules(operator_toml: &str) -> Result<Classifier, RulesError> {
        let mut entries = parse_rules(operator_toml)?;
        entries.extend(parse_rules(BUILTIN_RULES)?);
        let mut categories = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let category = Category::from_name(&entry.category).ok_or_else(|| {
                RulesError::UnknownCategory {
                    index,
                    category: entry.category.clone(),
                }
            })?;
            categories.push(category);
        }
        let patterns = entries
            .iter()
            .map(|entry| {
                RegexBuilder::new(&entry.pattern)
                    .case_insensitive(true)
                    .size_limit(MAX_COMPILED_RULE_BYTES)
                    .build()
            })
            .collect::<Result<Vec<Regex>, regex::Error>>()?;
        Ok(Classifier {
            patterns,
            categories,
        })
    }

    /// Classifies one reply: `code` is the SMTP reply code (0 when unknown),
    /// `enhanced` the RFC 3463 status such as "5.1.1".
    pub fn classify(&self, code: u16, enhanced: Option<&str>, text: &str) -> Classification {
        let category = self.category(code, enhanced, text);
        Classification {
            permanent: is_permanent(code, enhanced),
            category,
            hard: category.is_hard(),
        }
    }

    /// The category alone, by the first matching rule.
    pub fn category(&self, code: u16, enhanced: Option<&str>, text: &str) -> Category {
        let line = rule_input(code, enhanced, text);
        self.patterns
            .iter()
            .position(|pattern| pattern.is_match(&line))
            .and_then(|index| self.categories.get(index).copied())
            .unwrap_or(Category::Other)
    }
}

fn parse_rules(toml_text: &str) -> Result<Vec<RuleEntry>, RulesError> {
    Ok(toml::from_str::<RulesFile>(toml_text)?.rule)
}

/// The line rules are tested against: "550 5.1.1 text", with "000" and "-"
/// standing for a missing code and enhanced status.
fn rule_input(code: u16, enhanced: Option<&str>, text: &str) -> String {
    let enhanced = enhanced.filter(|e| !e.is_empty()).unwrap_or("-");
    let text = truncate_at_char_boundary(text, MAX_CLASSIFIED_TEXT);
    let text = without_repeated_reply_prefixes(text);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("{code:03} {enhanced} {text}")
}

/// "550-5.7.1 Messages with multiple" + "550 5.7.1 addresses in From:": a
/// multi-line reply repeats its code and status on every line, which splits
/// the words the rules look for. The first prefix is kept, later ones go.
fn without_repeated_reply_prefixes(text: &str) -> String {
    static REPLY_PREFIX: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"\b[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}\b")
            .unwrap_or_else(|err| panic!("reply prefix regex: {err}"))
    });
    let mut kept = String::with_capacity(text.len());
    let mut last_end = 0;
    for (index, prefix) in REPLY_PREFIX.find_iter(text).enumerate() {
        if index > 0 {
            kept.push_str(&text[last_end..prefix.start()]);
            last_end = prefix.end();
        }
    }
    kept.push_str(&text[last_end..]);
    kept
}

fn truncate_at_char_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Permanent when the enhanced status says 5.x.x, or, without one, when the
/// reply code is 5xx. The enhanced status wins: some servers answer
/// "550 4.2.2" and mean it temporarily.
pub(crate) fn is_permanent(code: u16, enhanced: Option<&str>) -> bool {
    match enhanced.and_then(|e| e.trim().chars().next()) {
        Some('5') => true,
        Some('4') | Some('2') => false,
        _ => (500..600).contains(&code),
    }
}

/// The built-in rules, compiled once per process.
pub(crate) fn builtin_classifier() -> &'static Classifier {
    static BUILTIN: OnceLock<Classifier> = OnceLock::new();
    BUILTIN.get_or_init(Classifier::builtin)
}

/// Classifies with the built-in rules.
pub fn classify(code: u16, enhanced: Option<&str>, text: &str) -> Classification {
    builtin_classifier().classify(code, enhanced, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn category(code: u16, enhanced: &str, text: &str) -> Category {
        let enhanced = (!enhanced.is_empty()).then_some(enhanced);
        classify(code, enhanced, text).category
    }

    #[test]
    fn builtin_rules_compile() {
        let classifier = Classifier::builtin();
        assert!(classifier.categories.len() > 20);
    }

    #[test]
    fn bad_mailbox_gmail_microsoft_yahoo() {
        let gmail = "The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos";
        assert_eq!(category(550, "5.1.1", gmail), Category::BadMailbox);
        let microsoft = "Requested action not taken: mailbox unavailable (S2017062302)";
        assert_eq!(category(550, "5.5.0", microsoft), Category::BadMailbox);
        assert_eq!(
            category(
                554,
                "",
                "delivery error: dd This user doesn't have a yahoo.com account"
            ),
            Category::BadMailbox
        );
        let c = classify(550, Some("5.1.1"), "user unknown");
        assert!(c.permanent && c.hard);
    }

    #[test]
    fn inactive_mailbox() {
        assert_eq!(
            category(
                550,
                "5.2.1",
                "The email account that you tried to reach is disabled"
            ),
            Category::InactiveMailbox
        );
        assert_eq!(category(550, "5.2.1", ""), Category::InactiveMailbox);
    }

    #[test]
    fn bad_domain() {
        assert_eq!(
            category(550, "5.1.2", "Host or domain name not found"),
            Category::BadDomain
        );
        assert_eq!(
            category(556, "5.1.10", "Recipient address has null MX"),
            Category::BadDomain
        );
    }

    #[test]
    fn quota_issues() {
        let gmail = "The email account that you tried to reach is over quota. Please direct the recipient to";
        let c = classify(452, Some("4.2.2"), gmail);
        assert_eq!(c.category, Category::QuotaIssues);
        assert!(!c.permanent && !c.hard);
        assert_eq!(category(552, "", "Mailbox full"), Category::QuotaIssues);
    }

    #[test]
    fn message_expired() {
        assert_eq!(
            category(0, "4.4.7", "Delivery time expired"),
            Category::MessageExpired
        );
        assert_eq!(
            category(0, "", "retry timeout exceeded"),
            Category::MessageExpired
        );
    }

    #[test]
    fn no_answer_bad_connection_routing() {
        assert_eq!(
            category(0, "4.4.1", "Connection timed out"),
            Category::NoAnswerFromHost
        );
        assert_eq!(
            category(0, "", "TLS handshake with the remote host failed"),
            Category::BadConnection
        );
        assert_eq!(
            category(554, "5.4.6", "mail loop detected"),
            Category::RoutingErrors
        );
    }

    #[test]
    fn relaying_policy_spam_virus_content() {
        assert_eq!(
            category(554, "5.7.1", "Relay access denied"),
            Category::RelayingIssues
        );
        assert_eq!(
            category(
                550,
                "5.7.1",
                "Service unavailable; client host [192.0.2.1] blocked using Spamhaus"
            ),
            Category::SpamRelated
        );
        assert_eq!(
            category(
                550,
                "5.7.1",
                "Our system has detected that this message is likely unsolicited mail"
            ),
            Category::SpamRelated
        );
        assert_eq!(
            category(554, "5.7.0", "The message contains a virus"),
            Category::VirusRelated
        );
        assert_eq!(
            category(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size"
            ),
            Category::ContentRelated
        );
        assert_eq!(
            category(
                550,
                "5.7.1",
                "Delivery not authorized, message refused by administrative prohibition"
            ),
            Category::PolicyRelated
        );
    }

    #[test]
    fn protocol_sender_configuration_auth_rate() {
        assert_eq!(
            category(500, "5.5.2", "Syntax error, command unrecognized"),
            Category::ProtocolErrors
        );
        assert_eq!(
            category(553, "5.1.8", "Sender address rejected: Domain not found"),
            Category::InvalidSender
        );
        assert_eq!(
            category(
                550,
                "5.7.25",
                "The IP address sending this message does not have a PTR record setup"
            ),
            Category::BadConfiguration
        );
        assert_eq!(
            category(
                550,
                "5.7.26",
                "Unauthenticated email from example.com is not accepted due to domain's DMARC policy"
            ),
            Category::AuthFailure
        );
        assert_eq!(
            category(
                421,
                "4.7.0",
                "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints"
            ),
            Category::RateLimited
        );
        assert_eq!(
            category(421, "", "Too many concurrent SMTP connections"),
            Category::RateLimited
        );
    }

    #[test]
    fn multiline_reply_prefixes_do_not_split_the_words() {
        let gmail = "550-5.7.1 [192.0.2.1 13] Messages with multiple 550 5.7.1 addresses in From: header are not accepted.";
        assert_eq!(category(550, "5.7.1", gmail), Category::ProtocolErrors);
    }

    #[test]
    fn a_named_cause_wins_over_the_expiry() {
        assert_eq!(
            category(0, "", "mailbox is full: retry timeout exceeded"),
            Category::QuotaIssues
        );
        assert_eq!(
            category(
                0,
                "5.4.312",
                "550 5.4.312 Message expired, DNS query failed"
            ),
            Category::RoutingErrors
        );
        assert_eq!(
            category(0, "", "this message has been in the queue too long"),
            Category::MessageExpired
        );
    }

    #[test]
    fn temporary_dns_failure_is_routing_permanent_one_bad_domain() {
        let nxdomain = "DNS Error: 123 DNS type 'mx' lookup of example.jp responded with code NXDOMAIN Domain name not found: example.jp";
        assert_eq!(category(0, "4.0.0", nxdomain), Category::RoutingErrors);
        assert_eq!(category(0, "5.1.2", nxdomain), Category::BadDomain);
        let null_mx = "DNS Error: DNS type 'mx' lookup of example.org responded with code NOERROR The domain example.org doesn't receive email according to the administrator";
        assert_eq!(category(0, "4.0.0", null_mx), Category::BadDomain);
    }

    #[test]
    fn remote_system_trouble_is_other() {
        let cloudflare = "421 4.3.0 Upstream error, please check https://developers.cloudflare.com/email-routing/postmaster";
        assert_eq!(category(421, "4.3.0", cloudflare), Category::Other);
        assert_eq!(
            category(550, "5.3.5", "Internal System Error"),
            Category::Other
        );
        assert_eq!(category(554, "5.3.0", ""), Category::Other);
    }

    #[test]
    fn provider_block_and_sender_texts() {
        let isp = "SMTP error from remote mail server after MAIL FROM:<a@example.jp>: 550 5.7.0 <a@example.jp>... Please use the smtp server of your ISP.";
        assert_eq!(category(550, "5.7.0", isp), Category::SpamRelated);
        let microsoft = "451 4.7.650 The mail server [192.0.2.25] has been temporarily rate limited due to IP reputation.";
        assert_eq!(category(451, "4.7.650", microsoft), Category::SpamRelated);
        let exim = "SMTP error from remote mail server after MAIL FROM:<a@example.com> SIZE=1024: 550 Unroutable sender address";
        assert_eq!(category(550, "", exim), Category::InvalidSender);
        let groups = "You're sending this from a different address or alias using the 'Send mail as' feature.";
        assert_eq!(category(0, "", groups), Category::InvalidSender);
        let mimecast =
            "554 Host network not allowed - https://community.mimecast.com/docs/DOC-1369#554";
        assert_eq!(category(554, "", mimecast), Category::PolicyRelated);
    }

    #[test]
    fn unknown_text_is_other() {
        assert_eq!(category(250, "", "nothing wrong"), Category::Other);
    }

    #[test]
    fn operator_rules_come_first() {
        let rules = r#"
            [[rule]]
            category = "spam-related"
            pattern = 'user unknown because of acme'
        "#;
        let classifier = Classifier::with_operator_rules(rules).unwrap();
        let c = classifier.classify(550, Some("5.1.1"), "User unknown because of ACME filter");
        assert_eq!(c.category, Category::SpamRelated);
        assert!(!c.hard);
        let c = classifier.classify(550, Some("5.1.1"), "User unknown");
        assert_eq!(c.category, Category::BadMailbox);
    }

    #[test]
    fn operator_rules_errors_are_reported() {
        let bad_category = "[[rule]]\ncategory = \"nope\"\npattern = 'x'\n";
        assert!(matches!(
            Classifier::with_operator_rules(bad_category),
            Err(RulesError::UnknownCategory { .. })
        ));
        let bad_regex = "[[rule]]\ncategory = \"other\"\npattern = '('\n";
        assert!(matches!(
            Classifier::with_operator_rules(bad_regex),
            Err(RulesError::Regex(_))
        ));
    }

    #[test]
    fn enhanced_status_decides_permanence() {
        assert!(!is_permanent(550, Some("4.2.2")));
        assert!(is_permanent(550, None));
        assert!(!is_permanent(0, None));
    }
}
