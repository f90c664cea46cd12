//! The parser on hand-made emails of each kind, through the public API,
//! including the JSON record `sendctl bounce parse --json` prints.

use sendengine_bounces::{Category, Kind, parse_file_records, parse_message, verp};

const SECRET: &[u8] = b"a server secret for the tests....";

fn dsn(tag: &str) -> String {
    format!(
        "Return-Path: <>\r\n\
From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\n\
To: bounces+{tag}@mail.example.com\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"BB\"\r\n\
\r\n\
--BB\r\n\
Content-Type: text/plain\r\n\
\r\n\
<jane@example.net>: host mx.example.net[192.0.2.1] said: 550 5.1.1\r\n\
\x20   <jane@example.net>: Recipient address rejected: User unknown\r\n\
--BB\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; mx.example.org\r\n\
\r\n\
Final-Recipient: rfc822; jane@example.net\r\n\
Original-Recipient: rfc822;jane@example.net\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
Remote-MTA: dns; mx.example.net\r\n\
Diagnostic-Code: smtp; 550 5.1.1 <jane@example.net>: Recipient address\r\n\
\x20   rejected: User unknown\r\n\
\r\n\
Final-Recipient: rfc822; full@example.net\r\n\
Action: delayed\r\n\
Status: 4.2.2\r\n\
Diagnostic-Code: smtp; 452 4.2.2 Mailbox full\r\n\
--BB\r\n\
Content-Type: text/rfc822-headers\r\n\
\r\n\
Return-Path: <bounces+{tag}@mail.example.com>\r\n\
From: news@example.com\r\n\
To: jane@example.net\r\n\
Message-ID: <m1@example.com>\r\n\
--BB--\r\n"
    )
}

#[test]
fn rfc3464_dsn_gives_one_record_per_recipient() {
    let tag = verp::encode(4242, 1, SECRET);
    let records = parse_message(dsn(&tag).as_bytes());
    assert_eq!(records.len(), 2);
    let jane = &records[0];
    assert_eq!(jane.kind, Kind::Bounce);
    assert_eq!(jane.recipient.as_deref(), Some("jane@example.net"));
    assert_eq!(jane.status.as_deref(), Some("5.1.1"));
    assert_eq!(jane.action.as_deref(), Some("failed"));
    assert_eq!(jane.category, Some(Category::BadMailbox));
    assert!(jane.hard && jane.permanent);
    assert_eq!(
        jane.diagnostic.as_deref(),
        Some("550 5.1.1 <jane@example.net>: Recipient address rejected: User unknown")
    );
    assert_eq!(jane.remote_mta.as_deref(), Some("mx.example.net"));
    assert_eq!(
        jane.original_message_id.as_deref(),
        Some("<m1@example.com>")
    );
    assert_eq!(jane.verp_tag.as_deref(), Some(tag.as_str()));
    assert_eq!(
        verp::decode(&tag, SECRET),
        Ok(verp::Tagged::standalone(4242, 1))
    );
    let full = &records[1];
    assert_eq!(full.category, Some(Category::QuotaIssues));
    assert!(!full.hard && !full.permanent);
}

#[test]
fn a_delay_is_never_hard_whatever_its_status() {
    // An MTA that says "delayed" but gives a 5.1.1: not final (RFC 3464
    // 2.3.3), so nothing a suppression may rest on.
    let delayed = dsn("x").replace(
        "Action: failed\r\nStatus: 5.1.1",
        "Action: delayed\r\nStatus: 5.1.1",
    );
    let records = parse_message(delayed.as_bytes());
    let jane = &records[0];
    assert_eq!(jane.action.as_deref(), Some("delayed"));
    assert_eq!(jane.category, Some(Category::BadMailbox));
    assert!(!jane.hard, "{jane:?}");
}

#[test]
fn json_record_has_exactly_the_issue_fields() {
    let tag = verp::encode(1, 0, SECRET);
    let records = parse_message(dsn(&tag).as_bytes());
    let json = serde_json::to_value(&records[0]).unwrap();
    let mut keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "action",
            "category",
            "diagnostic",
            "file",
            "hard",
            "kind",
            "original_message_id",
            "recipient",
            "remote_mta",
            "status",
            "verp_tag"
        ]
    );
    assert_eq!(json["kind"], "bounce");
    assert_eq!(json["category"], "bad-mailbox");
}

#[test]
fn crlf_lf_and_cr_give_the_same_records() {
    let crlf = dsn("none");
    let lf = crlf.replace("\r\n", "\n");
    let cr = crlf.replace("\r\n", "\r");
    let a = parse_message(crlf.as_bytes());
    assert_eq!(a, parse_message(lf.as_bytes()));
    assert_eq!(a, parse_message(cr.as_bytes()));
}

#[test]
fn qmail_text_bounce_is_read_without_a_dsn() {
    let mail = "From: MAILER-DAEMON@mx.example.org\n\
To: bounces@mail.example.com\n\
Subject: failure notice\n\
\n\
Hi. This is the qmail-send program at mx.example.org.\n\
I'm afraid I wasn't able to deliver your message to the following addresses.\n\
\n\
<bob@example.net>:\n\
192.0.2.1 does not like recipient.\n\
Remote host said: 550 5.1.1 <bob@example.net>... User Unknown\n\
Giving up on 192.0.2.1.\n\
\n\
--- Below this line is a copy of the message.\n\
\n\
Return-Path: <news@example.com>\n\
To: bob@example.net\n\
Message-ID: <q1@example.com>\n\
\n\
hello\n";
    let records = parse_message(mail.as_bytes());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].recipient.as_deref(), Some("bob@example.net"));
    assert_eq!(records[0].status.as_deref(), Some("5.1.1"));
    assert_eq!(records[0].category, Some(Category::BadMailbox));
    assert_eq!(
        records[0].original_message_id.as_deref(),
        Some("<q1@example.com>")
    );
}

#[test]
fn arf_complaint_names_the_complainer() {
    let mail = "From: fbl@isp.example\n\
To: fbl@example.com\n\
Subject: complaint\n\
Content-Type: multipart/report; report-type=feedback-report; boundary=\"X\"\n\
\n\
--X\n\
Content-Type: text/plain\n\
\n\
This is an abuse report.\n\
--X\n\
Content-Type: message/feedback-report\n\
\n\
Feedback-Type: abuse\n\
User-Agent: FBL/1.0\n\
Version: 1\n\
Original-Rcpt-To: carol@isp.example\n\
--X\n\
Content-Type: message/rfc822\n\
\n\
From: news@example.com\n\
To: carol@isp.example\n\
Message-ID: <c1@example.com>\n\
\n\
buy now\n\
--X--\n";
    let records = parse_message(mail.as_bytes());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].kind, Kind::Complaint);
    assert_eq!(records[0].recipient.as_deref(), Some("carol@isp.example"));
    assert_eq!(records[0].action.as_deref(), Some("abuse"));
    assert_eq!(
        records[0].original_message_id.as_deref(),
        Some("<c1@example.com>")
    );
    assert!(!records[0].hard);
}

#[test]
fn auto_reply_and_plain_mail_are_not_bounces() {
    let vacation = "From: dave@example.net\nTo: news@example.com\nSubject: Out of Office: hello\nAuto-Submitted: auto-replied\n\nI am away until Monday.\n";
    let records = parse_message(vacation.as_bytes());
    assert_eq!(records[0].kind, Kind::AutoReply);
    assert_eq!(records[0].recipient.as_deref(), Some("dave@example.net"));

    let plain = "From: erin@example.net\nTo: news@example.com\nSubject: lunch?\n\nSee you at noon, erin@example.net\n";
    let records = parse_message(plain.as_bytes());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].kind, Kind::NotBounce);
    assert_eq!(records[0].category, None);
}

#[test]
fn garbage_gives_one_not_bounce_record() {
    for input in [
        &b""[..],
        b"\0\0\0",
        b"\xff\xfe:::\r\r\n--",
        b"Content-Type: multipart/report\n\n--",
    ] {
        let records = parse_message(input);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].kind, Kind::NotBounce);
    }
}

#[test]
fn files_are_read_and_named_in_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bounce.eml");
    std::fs::write(&path, dsn("x")).unwrap();
    let records = parse_file_records(&path).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(
        records[0].file.as_deref(),
        Some(path.display().to_string().as_str())
    );
    let missing = parse_file_records(&dir.path().join("missing.eml")).unwrap_err();
    assert!(missing.to_string().contains("missing.eml"), "{missing}");
}

#[test]
fn operator_rules_apply_to_parsed_bounces() {
    let rules = "[[rule]]\ncategory = \"policy-related\"\npattern = 'recipient address rejected: user unknown'\n";
    let classifier = sendengine_bounces::Classifier::with_operator_rules(rules).unwrap();
    let records = sendengine_bounces::parse_message_with(dsn("x").as_bytes(), &classifier);
    assert_eq!(
        records[0].category,
        Some(Category::PolicyRelated),
        "{:?}",
        records[0]
    );
    assert!(!records[0].hard);
}

#[test]
fn fml_refusal_names_the_list() {
    let mail = "From: neko-admin@example.org\nTo: sironeko@example.net\nSubject: You sironeko@example.net are not member (neko ML)\nX-MLServer: fml [fml 4.0.3 release (20011202/4.0.3)]\n\nYou are not a member of this mailing list <neko@example.org>.\n\nIf you know the general guide of this list, please send mail.\n";
    let records = parse_message(mail.as_bytes());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].kind, Kind::Bounce);
    assert_eq!(records[0].recipient.as_deref(), Some("neko@example.org"));
    assert_eq!(records[0].category, Some(Category::InvalidSender));
    // The same text without fml's header is someone's mail, not a bounce.
    let plain = mail.replace("X-MLServer: fml", "X-Mailer: mutt");
    assert_eq!(parse_message(plain.as_bytes())[0].kind, Kind::NotBounce);
}

#[test]
fn notice_with_a_bland_subject_is_read_from_its_body() {
    // KDDI (au) says it in the body only: "Subject: Mail" from no-reply@.
    let mail = "From: no-reply@example.ne.jp\nTo: <sender@example.jp>\nSubject: Mail\n\nYour mail sent on: Thu, 29 Apr 2013 00:00:00 +0900\n     Could not be delivered to: <kijitora@example.ne.jp>\n     As their mailbox is full.\n";
    let records = parse_message(mail.as_bytes());
    assert_eq!(records[0].kind, Kind::Bounce);
    assert_eq!(
        records[0].recipient.as_deref(),
        Some("kijitora@example.ne.jp")
    );
    assert_eq!(records[0].category, Some(Category::QuotaIssues));
}

#[test]
fn post_master_notice_is_a_bounce() {
    // Verizon and Apache James sign as post_master and reply "Re:".
    let mail = "From: post_master@vtext.example.com\nTo: kijitora@example.com\nSubject: Re:Test message\n\nError: Invalid user address\n\nError message below:\n550 - Requested action not taken: no such user here\n\nMessage details:\n  MAIL FROM: kijitora@example.com\n  RCPT TO: 5550100@vtext.example.com\n";
    let records = parse_message(mail.as_bytes());
    assert_eq!(records[0].kind, Kind::Bounce);
    assert_eq!(
        records[0].recipient.as_deref(),
        Some("5550100@vtext.example.com")
    );
    assert_eq!(records[0].category, Some(Category::BadMailbox));
}

#[test]
fn postfix_transcript_reports_the_failure_after_the_successes() {
    let mail = "From: MAILER-DAEMON@mx.example.org\nSubject: Postfix SMTP server: errors from example.net\n\nTranscript of session follows.\n\n Out: 220 mx ESMTP\n In:  RCPT TO:<kijitora@example.org>\n Out: 250 2.1.5 Ok\n In:  DATA\n Out: 354 End data with <CR><LF>.<CR><LF>\n Out: 451 4.3.0 Error: queue file write error\n In:  QUIT\n Out: 221 2.0.0 Bye\n";
    let records = parse_message(mail.as_bytes());
    assert_eq!(records[0].kind, Kind::Bounce);
    assert_eq!(records[0].status.as_deref(), Some("4.3.0"));
    assert_eq!(records[0].category, Some(Category::Other));
}

#[test]
fn expired_action_means_an_expired_message() {
    let mail = dsn("x").replace(
        "Action: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.example.net\r\nDiagnostic-Code: smtp; 550 5.1.1 <jane@example.net>: Recipient address\r\n\x20   rejected: User unknown",
        "Action: expired\r\nStatus:\r\nDiagnostic-Code: Connection timed out",
    );
    let records = parse_message(mail.as_bytes());
    assert_eq!(records[0].recipient.as_deref(), Some("jane@example.net"));
    assert_eq!(records[0].category, Some(Category::MessageExpired));
}
