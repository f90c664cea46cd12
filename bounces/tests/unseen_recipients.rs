//! Issue 14 point 11: the classes of bounce where the recipient used to be
//! read wrong. Each test is a synthetic email of its class, not a copy of
//! a corpus sample. Wrong addresses are wrongful suppressions, so where the
//! email names no usable address the record must name none.

mod support;

use sendengine_bounces::{Kind, Record, parse_message};
use support::report;

/// A bounce without a delivery-status part: text, then the returned message.
fn text_bounce(text: &str, returned_to: &str) -> Vec<u8> {
    format!(
        "From: MAILER-DAEMON@mx.example.org\r\n\
To: bounces+x@mail.example.com\r\n\
Subject: Undeliverable: Our news\r\n\
\r\n\
{text}\r\n\
\r\n\
------ This is a copy of the message, including all the headers. ------\r\n\
Return-Path: <bounces+x@mail.example.com>\r\n\
From: news@mail.example.com\r\n\
To: {returned_to}\r\n\
Subject: Our news\r\n\
\r\n\
Hello.\r\n"
    )
    .into_bytes()
}

fn only_bounce(records: &[Record]) -> &Record {
    let bounces: Vec<&Record> = records.iter().filter(|r| r.kind == Kind::Bounce).collect();
    assert_eq!(bounces.len(), 1, "{records:?}");
    bounces[0]
}

#[test]
fn an_x400_final_recipient_gives_way_to_the_original_recipient() {
    let status = "Original-Recipient: rfc822; kim@example.net\r\n\
Final-Recipient: x400; /S=Kim/O=Example/PRMD=Example/ADMD=Telemail/C=US/\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\r\n";
    let records = parse_message(&report(
        "Your message could not be delivered.",
        status,
        "kim@example.net",
    ));
    let record = only_bounce(&records);
    assert_eq!(record.recipient.as_deref(), Some("kim@example.net"));
    assert_eq!(record.status.as_deref(), Some("5.1.1"));
}

#[test]
fn a_local_host_name_gives_way_to_the_address_the_text_names() {
    let status = "Final-Recipient: rfc822; lee@mailhost\r\n\
Action: failed\r\n\
Status: 5.2.2\r\n\
Diagnostic-Code: smtp; 552 5.2.2 Over quota\r\n\r\n";
    let text =
        "Delivery to the following recipient failed permanently:\r\n\r\n     lee@example.net\r\n";
    let records = parse_message(&report(text, status, "lee@example.net"));
    assert_eq!(
        only_bounce(&records).recipient.as_deref(),
        Some("lee@example.net")
    );
}

#[test]
fn no_internet_address_anywhere_means_no_recipient_not_a_wrong_one() {
    for final_recipient in [
        "x400; /S=Kim/ADMD=Telemail/C=US/",
        "rfc822; kim@mailhost",
        "unknown; @relay.example.net:kim@mailhost",
        "|/usr/local/bin/deliver",
        "/var/spool/mail/kim",
    ] {
        let status = format!(
            "Final-Recipient: {final_recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        );
        let records = parse_message(&report(
            "Your message could not be delivered.",
            &status,
            "list@lists.example.org",
        ));
        let record = only_bounce(&records);
        assert_eq!(record.recipient, None, "{final_recipient}: {record:?}");
        assert_eq!(record.status.as_deref(), Some("5.1.1"));
    }
}

#[test]
fn exchange_prefixes_are_not_part_of_the_address() {
    let status = "Final-Recipient: rfc822;SMTP:Pat@Example.net\r\n\
Action: failed\r\n\
Status: 5.1.10\r\n\r\n";
    let records = parse_message(&report("Delivery has failed.", status, "pat@example.net"));
    assert_eq!(
        only_bounce(&records).recipient.as_deref(),
        Some("Pat@Example.net")
    );

    let text = "Delivery has failed to these recipients or groups:\r\n\r\n\
smtp=sam@example.net\r\n\
The e-mail address you entered couldn't be found. 550 5.1.1 RESOLVER.ADR.RecipNotFound\r\n";
    let records = parse_message(&text_bounce(text, "sam@example.net"));
    assert_eq!(
        only_bounce(&records).recipient.as_deref(),
        Some("sam@example.net")
    );
}

#[test]
fn addresses_offered_in_prose_are_not_recipients() {
    let text = "I'm sorry to have to inform you that your message could not be delivered.\r\n\r\n\
<gone@example.net>: 550 5.1.1 mailbox unavailable\r\n\r\n\
This person has left. Please try gone.new@example.org instead, or contact\r\n\
helpdesk@example.net for help. You can also write to: office@example.net\r\n";
    let records = parse_message(&text_bounce(text, "gone@example.net"));
    assert_eq!(
        only_bounce(&records).recipient.as_deref(),
        Some("gone@example.net")
    );
}

#[test]
fn a_recipient_named_at_a_local_host_is_not_replaced_by_other_readers() {
    let text = "This is the mail system at mailhost.\r\n\r\n\
<kim@mailhost>: 550 5.1.1 user unknown\r\n";
    // The returned message went to a list and a colleague: neither failed.
    let records = parse_message(&text_bounce(
        text,
        "team@lists.example.org, bob@example.org",
    ));
    let record = only_bounce(&records);
    assert_eq!(record.recipient, None, "{record:?}");
    assert_eq!(record.status.as_deref(), Some("5.1.1"));
    // Its To with the same local part is the address that was meant.
    let records = parse_message(&text_bounce(text, "bob@example.org, Kim@example.net"));
    assert_eq!(
        only_bounce(&records).recipient.as_deref(),
        Some("Kim@example.net")
    );
}

#[test]
fn a_recipient_left_out_as_a_sender_is_not_replaced_by_the_returned_to() {
    // Someone bounced mail they sent themselves (or a forward of it): the
    // failed address is also the returned message's From.
    let text = "This message was created automatically by mail delivery software.\r\n\r\n\
A message that you sent could not be delivered to one or more of its\r\n\
recipients. This is a permanent error. The following address(es) failed:\r\n\r\n\
  pat@example.fr\r\n\
    SMTP error from remote server for TEXT command:\r\n\
    550 5.2.0 Mail rejected\r\n";
    let email = String::from_utf8(text_bounce(text, "pat@example.com"))
        .unwrap()
        .replace("To: bounces+x@mail.example.com", "To: pat@example.fr")
        .replace("From: news@mail.example.com", "From: pat@example.fr");
    let records = parse_message(email.as_bytes());
    let record = only_bounce(&records);
    assert_ne!(
        record.recipient.as_deref(),
        Some("pat@example.com"),
        "{record:?}"
    );
}

#[test]
fn the_returned_headers_do_not_add_recipients_the_report_did_not_name() {
    // The report names one recipient; the returned message went to a list.
    let status = "Final-Recipient: rfc822; ann@example.net\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\r\n";
    let records = parse_message(&report(
        "Your message could not be delivered.",
        status,
        "team@lists.example.org, bob@example.org",
    ));
    assert_eq!(
        only_bounce(&records).recipient.as_deref(),
        Some("ann@example.net")
    );
}
