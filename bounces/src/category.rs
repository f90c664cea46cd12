//! The bounce categories operators know from PowerMTA and KumoMTA, and the
//! verdict [`crate::classify`] gives for one SMTP reply.
//!
//! "Hard" means the address will never accept mail: only bad-mailbox,
//! inactive-mailbox and bad-domain are hard, whatever the reply's first digit.

use serde::Serialize;

/// Why a delivery failed, as a category shared by all bounce sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    BadMailbox,
    InactiveMailbox,
    BadDomain,
    QuotaIssues,
    MessageExpired,
    NoAnswerFromHost,
    BadConnection,
    RoutingErrors,
    RelayingIssues,
    PolicyRelated,
    SpamRelated,
    VirusRelated,
    ContentRelated,
    ProtocolErrors,
    InvalidSender,
    BadConfiguration,
    AuthFailure,
    /// Too many connections, or any other rate limit.
    RateLimited,
    Other,
}

impl Category {
    /// Every category, in the order of the issue's list.
    pub(crate) const ALL: [Category; 19] = [
        Category::BadMailbox,
        Category::InactiveMailbox,
        Category::BadDomain,
        Category::QuotaIssues,
        Category::MessageExpired,
        Category::NoAnswerFromHost,
        Category::BadConnection,
        Category::RoutingErrors,
        Category::RelayingIssues,
        Category::PolicyRelated,
        Category::SpamRelated,
        Category::VirusRelated,
        Category::ContentRelated,
        Category::ProtocolErrors,
        Category::InvalidSender,
        Category::BadConfiguration,
        Category::AuthFailure,
        Category::RateLimited,
        Category::Other,
    ];

    /// The name used in rules files, events and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::BadMailbox => "bad-mailbox",
            Category::InactiveMailbox => "inactive-mailbox",
            Category::BadDomain => "bad-domain",
            Category::QuotaIssues => "quota-issues",
            Category::MessageExpired => "message-expired",
            Category::NoAnswerFromHost => "no-answer-from-host",
            Category::BadConnection => "bad-connection",
            Category::RoutingErrors => "routing-errors",
            Category::RelayingIssues => "relaying-issues",
            Category::PolicyRelated => "policy-related",
            Category::SpamRelated => "spam-related",
            Category::VirusRelated => "virus-related",
            Category::ContentRelated => "content-related",
            Category::ProtocolErrors => "protocol-errors",
            Category::InvalidSender => "invalid-sender",
            Category::BadConfiguration => "bad-configuration",
            Category::AuthFailure => "auth-failure",
            Category::RateLimited => "rate-limited",
            Category::Other => "other",
        }
    }

    /// Parses a category name; "too-many-connections" is accepted for
    /// rate-limited.
    pub fn from_name(name: &str) -> Option<Category> {
        if name == "too-many-connections" {
            return Some(Category::RateLimited);
        }
        Category::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// True when the address will never accept mail.
    pub(crate) fn is_hard(self) -> bool {
        matches!(
            self,
            Category::BadMailbox | Category::InactiveMailbox | Category::BadDomain
        )
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict for one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Classification {
    /// 5xx (or enhanced 5.x.x): retrying the same message will not help.
    pub permanent: bool,
    pub category: Category,
    /// The address will never accept mail (see [`Category::is_hard`]).
    pub hard: bool,
}
