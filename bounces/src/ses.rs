//! Amazon SES notifications delivered by email through SNS: a JSON document
//! ("notificationType": Bounce, Complaint or Delivery; "eventType" when it
//! comes from a configuration set's event publishing) instead of a DSN.
//! Pretty-printed or not, bare or as the escaped "Message" of an SNS
//! envelope.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use crate::category::Category;

/// Where the notification's JSON starts.
static NOTIFICATION_START: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"\{\s*"(notificationType|eventType)"\s*:"#)
        .unwrap_or_else(|e| panic!("notification regex: {e}"))
});

/// One recipient of an SES notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SesRecipient {
    pub kind: SesKind,
    pub address: String,
    pub status: Option<String>,
    pub action: Option<String>,
    pub diagnostic: Option<String>,
    pub remote_mta: Option<String>,
    pub feedback_type: Option<String>,
    /// SES's verdict: Permanent (remove the address), Transient (it may
    /// work later) or Undetermined, with its sub-type ("NoEmail",
    /// "MailboxFull", ...).
    pub bounce_type: Option<String>,
    pub bounce_sub_type: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SesKind {
    Bounce,
    Complaint,
    Delivery,
}

/// The recipients of the SES notification in `text`, if it holds one.
pub(crate) fn read_notification(text: &str) -> Vec<SesRecipient> {
    let Some(start) = NOTIFICATION_START.find(text).map(|m| m.start()) else {
        return read_sns_envelope(text);
    };
    // SNS wraps long lines by inserting "!\n " into the JSON.
    let json = text[start..].replace("!\n ", "");
    let mut values = serde_json::Deserializer::from_str(&json).into_iter::<Value>();
    match values.next() {
        Some(Ok(notification)) => recipients_of(&notification),
        _ => Vec::new(),
    }
}

/// The notification as the escaped "Message" string of an SNS envelope.
fn read_sns_envelope(text: &str) -> Vec<SesRecipient> {
    if !text.contains("\\\"notificationType\\\"") && !text.contains("\\\"eventType\\\"") {
        return Vec::new();
    }
    let Some(start) = text.find('{') else {
        return Vec::new();
    };
    let json = text[start..].replace("!\n ", "");
    let mut values = serde_json::Deserializer::from_str(&json).into_iter::<Value>();
    match values.next() {
        Some(Ok(envelope)) => envelope["Message"]
            .as_str()
            .and_then(|inner| serde_json::from_str::<Value>(inner).ok())
            .map(|notification| recipients_of(&notification))
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn recipients_of(notification: &Value) -> Vec<SesRecipient> {
    let kind_name = notification["notificationType"]
        .as_str()
        .or_else(|| notification["eventType"].as_str());
    let (kind, section, list) = match kind_name {
        Some("Bounce") => (SesKind::Bounce, "bounce", "bouncedRecipients"),
        Some("Complaint") => (SesKind::Complaint, "complaint", "complainedRecipients"),
        Some("Delivery") => (SesKind::Delivery, "delivery", "recipients"),
        _ => return Vec::new(),
    };
    let body = &notification[section];
    let string = |v: &Value| v.as_str().map(str::to_string);
    let entries = body[list].as_array().cloned().unwrap_or_default();
    entries
        .iter()
        .filter_map(|entry| {
            // Delivery lists plain strings; the others list objects.
            let address = entry
                .as_str()
                .or_else(|| entry["emailAddress"].as_str())?
                .to_string();
            Some(SesRecipient {
                kind,
                address,
                status: string(&entry["status"]),
                action: string(&entry["action"]).or(match kind {
                    SesKind::Delivery => Some("delivered".into()),
                    _ => None,
                }),
                diagnostic: string(&entry["diagnosticCode"])
                    .or_else(|| string(&body["smtpResponse"])),
                remote_mta: string(&body["reportingMTA"]).or_else(|| string(&body["remoteMtaIp"])),
                feedback_type: string(&body["complaintFeedbackType"]),
                bounce_type: string(&body["bounceType"]),
                bounce_sub_type: string(&body["bounceSubType"]),
            })
        })
        .collect()
}

/// What SES's `bounceType` says of a bounced address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SesVerdict {
    /// Transient: it may work later; the sub-type's cause, if it names one.
    Keep(Option<Category>),
    /// Permanent: remove it (SES asks so).
    Remove,
}

impl SesRecipient {
    /// SES's verdict on the address; none when it is Undetermined, or an
    /// unsubscribe (which says nothing of the mailbox).
    pub(crate) fn verdict(&self) -> Option<SesVerdict> {
        let sub_type = self.bounce_sub_type.as_deref().unwrap_or_default();
        match self.bounce_type.as_deref()? {
            "Transient" => Some(SesVerdict::Keep(match sub_type {
                "MailboxFull" => Some(Category::QuotaIssues),
                "MessageTooLarge" | "ContentRejected" | "AttachmentRejected" => {
                    Some(Category::ContentRelated)
                }
                _ => None,
            })),
            "Permanent" if sub_type != "UnsubscribedRecipient" => Some(SesVerdict::Remove),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_wrapped_bounce_notification() {
        let text = "intro\n{\"notificationType\":\"Bounce\",\"bounce\":{\"bouncedRecipients\":[{\"emailAddress\":\"a@exa!\n mple.com\",\"action\":\"failed\",\"status\":\"5.1.1\",\"diagnosticCode\":\"smtp; 550 5.1.1 user unknown\"}]}}\n--\nfooter";
        let found = read_notification(text);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].address, "a@example.com");
        assert_eq!(found[0].status.as_deref(), Some("5.1.1"));
        assert!(read_notification("{\"notificationType\": broken").is_empty());
    }
}
