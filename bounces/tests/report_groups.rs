//! Issue 14 point 10: the recipient groups of an RFC 3464 report are the
//! blank-line separated paragraphs (§2.1), whatever the order of the fields
//! inside a group.

mod support;

use sendengine_bounces::{Kind, parse_message};
use support::report;

/// A multipart/report whose delivery-status part is `status`.
fn dsn(status: &str) -> Vec<u8> {
    report(
        "This is the delivery status of your message.",
        status.trim_start_matches("Reporting-MTA: dns; mx.example.org\r\n\r\n"),
        "someone@example.net",
    )
}

#[test]
fn a_group_that_names_its_recipient_last_is_still_its_own() {
    let status = "Reporting-MTA: dns; mx.example.org\r\n\
\r\n\
Final-Recipient: rfc822; gone@example.net\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\
\r\n\
Action: delivered\r\n\
Status: 2.0.0\r\n\
Diagnostic-Code: smtp; 250 2.0.0 ok\r\n\
Final-Recipient: rfc822; happy@example.net\r\n\
\r\n";
    let records = parse_message(&dsn(status));
    let gone = records
        .iter()
        .find(|r| r.recipient.as_deref() == Some("gone@example.net"))
        .expect("the failed recipient");
    assert_eq!(gone.kind, Kind::Bounce);
    assert!(gone.hard, "{gone:?}");
    assert_eq!(gone.status.as_deref(), Some("5.1.1"));
    for record in records
        .iter()
        .filter(|r| r.recipient.as_deref() == Some("happy@example.net"))
    {
        assert_eq!(record.kind, Kind::NotBounce, "{record:?}");
        assert!(!record.hard);
    }
}

#[test]
fn original_recipient_after_the_status_stays_in_its_group() {
    let status = "Reporting-MTA: dns; mx.example.org\r\n\
\r\n\
Original-Recipient: rfc822; first@example.net\r\n\
Final-Recipient: rfc822; first@example.net\r\n\
Action: delayed\r\n\
Status: 4.2.2\r\n\
\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
Final-Recipient: rfc822; second@example.net\r\n\
Original-Recipient: rfc822; second@example.net\r\n\
\r\n";
    let records = parse_message(&dsn(status));
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0].recipient.as_deref(), Some("first@example.net"));
    assert_eq!(records[0].status.as_deref(), Some("4.2.2"));
    assert!(!records[0].permanent);
    assert_eq!(records[1].recipient.as_deref(), Some("second@example.net"));
    assert_eq!(records[1].status.as_deref(), Some("5.1.1"));
    assert!(records[1].hard);
}

#[test]
fn non_standard_text_with_recipients_in_one_paragraph_still_splits() {
    // Some MTAs print their recipients without blank lines between them.
    let status = "Reporting-MTA: dns; mx.example.org\r\n\
\r\n\
Final-Recipient: rfc822; one@example.net\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
Final-Recipient: rfc822; two@example.net\r\n\
Action: failed\r\n\
Status: 5.2.2\r\n\
\r\n";
    let records = parse_message(&dsn(status));
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0].status.as_deref(), Some("5.1.1"));
    assert_eq!(records[1].recipient.as_deref(), Some("two@example.net"));
    assert_eq!(records[1].status.as_deref(), Some("5.2.2"));
}
