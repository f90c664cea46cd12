//! Classification of SMTP replies and bounce diagnostics into a [`Category`].
//!
//! The rules are data: an ordered list of case-insensitive regexes in TOML
//! (the built-in list is `rules.toml`, embedded at build time), tested against
//! the line `CODE ENHANCED TEXT`; the first match wins. Operators can put
//! their own rules in front of the built-in ones, so a new provider message
//! needs no release.

use std::sync::OnceLock;

use regex::{RegexSet, RegexSetBuilder};
use serde::Deserialize;

use crate::category::{Category, Classification};

/// The built-in rules, tried after any operator rules.
pub const BUILTIN_RULES: &str = include_str!("rules.toml");

/// Longest text (in bytes) the rules look at: provider messages put the
/// useful words first, and a bound keeps matching cheap on huge diagnostics.
pub const MAX_CLASSIFIED_TEXT: usize = 4096;

/// Limit on the compiled size of the whole rule set, so an operator file
/// cannot make the daemon allocate without bound.
const MAX_COMPILED_RULES_BYTES: usize = 64 * 1024 * 1024;

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
#[derive(Debug, Clone)]
pub struct Classifier {
    patterns: RegexSet,
    categories: Vec<Category>,
}

impl Classifier {
    /// The built-in rules only.
    pub fn builtin() -> Classifier {
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
        let patterns = RegexSetBuilder::new(entries.iter().map(|e| e.pattern.as_str()))
            .case_insensitive(true)
            .size_limit(MAX_COMPILED_RULES_BYTES)
            .build()?;
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
            .matches(&line)
            .iter()
            .next()
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
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("{code:03} {enhanced} {text}")
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
pub fn is_permanent(code: u16, enhanced: Option<&str>) -> bool {
    match enhanced.and_then(|e| e.trim().chars().next()) {
        Some('5') => true,
        Some('4') | Some('2') => false,
        _ => (500..600).contains(&code),
    }
}

/// The built-in rules, compiled once per process.
pub fn builtin_classifier() -> &'static Classifier {
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
