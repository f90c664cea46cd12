//! Kinds of bounce the labelled corpus lacks, found by running the parser
//! on other bounce-handling projects' sample emails: old Exchange summaries
//! that quote the message's To, a label read as a cause, display names in
//! feedback reports, human replies with alarming subjects, Amazon SES's
//! other notification forms, delay wording, other languages, Sendmail's
//! stock "User unknown", senders named in the text, repeated blocks. Each
//! email here is written for the test, in the shape those samples have.

use sendengine_bounces::{Category, Kind, Record, parse_message};

fn records(email: &str) -> Vec<Record> {
    parse_message(email.replace('\n', "\r\n").as_bytes())
}

fn only(email: &str) -> Record {
    let mut all = records(email);
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

#[test]
fn an_exchange_summary_of_the_message_names_its_to_line_as_no_recipient() {
    let email = "From: System Administrator <postmaster@ex.example.edu>
To: owner-list@lists.example.org
Subject: Undeliverable: weekly digest
MIME-Version: 1.0
Content-Type: text/plain

Your message

  To:      list@lists.example.org
  Subject: weekly digest
  Sent:    Mon, 2 Jul 2001 08:53:08 -0700

did not reach the following recipient(s):

pat@example.edu on Mon, 2 Jul 2001 11:08:59 -0700
    The recipient name is not recognized
";
    let pat = only(email);
    assert_eq!(pat.recipient.as_deref(), Some("pat@example.edu"));
    assert!(pat.hard);
    // With nothing else naming a recipient, the To line still does.
    let to_only = email.replace("pat@example.edu on", "The user on");
    let named = only(&to_only);
    assert_eq!(named.recipient.as_deref(), Some("list@lists.example.org"));
}

#[test]
fn a_label_is_no_cause_and_a_full_mailbox_in_words_is_soft() {
    let email = "From: postmaster@pop.example.com
To: owner@lists.example.org
Subject: Undeliverable mail
Content-Type: text/plain

Undeliverable Address: kim@example.com

Reason: the message was returned because the recipient is over disk quota.
";
    let kim = only(email);
    assert_eq!(kim.recipient.as_deref(), Some("kim@example.com"));
    assert_eq!(kim.category, Some(Category::QuotaIssues));
    assert!(!kim.hard);
}

#[test]
fn a_feedback_report_names_the_address_behind_a_display_name_once() {
    let email = "From: feedback@fbl.example.net
To: abuse@example.com
Subject: FW: report
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary=\"R\"

--R
Content-Type: text/plain

A user marked this as spam.
--R
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: ExampleFBL/1.0
Version: 1
Original-Rcpt-To: undisclosed example recipient <Lee@Example.net>
Removal-Recipient: lee@example.net
--R
Content-Type: message/rfc822

From: news@example.com
To: lee@example.net
Subject: offers

Hello.
--R--
";
    let lee = only(email);
    assert_eq!(lee.kind, Kind::Complaint);
    assert_eq!(lee.recipient.as_deref(), Some("Lee@Example.net"));
}

#[test]
fn a_human_reply_with_an_alarming_subject_is_no_bounce() {
    let email = "From: Jo Park <jo@client.example>
To: billing@shop.example
Subject: Re: Your payment failed
In-Reply-To: <order-1@shop.example>

It failed again. Please send the invoice to my colleague
sam@client.example instead.
";
    assert_eq!(only(email).kind, Kind::NotBounce);
    // Without the reply prefix, the same words still make a bounce.
    let notice = email.replace("Subject: Re: ", "Subject: ");
    assert_eq!(only(&notice).kind, Kind::Bounce);
}

fn ses_email(json: &str) -> String {
    format!(
        "From: no-reply@sns.amazonaws.com\nTo: bounces@example.com\nSubject: AWS Notification Message\nContent-Type: text/plain\n\n{json}\n"
    )
}

#[test]
fn ses_notifications_pretty_printed_or_published_as_events_are_read() {
    let pretty = r#"{
  "notificationType": "Bounce",
  "bounce": {
    "bounceType": "Permanent",
    "bounceSubType": "General",
    "bouncedRecipients": [{
      "emailAddress": "gone@example.net",
      "action": "failed",
      "status": "5.1.1",
      "diagnosticCode": "smtp; 550 5.1.1 user unknown"
    }]
  }
}"#;
    let event = r#"{"eventType":"Bounce","bounce":{"bounceType":"Permanent","bounceSubType":"General","bouncedRecipients":[{"emailAddress":"gone@example.net","action":"failed","status":"5.1.1","diagnosticCode":"smtp; 550 5.1.1 user unknown"}]},"mail":{"destination":["gone@example.net"]}}"#;
    for json in [pretty, event] {
        let gone = only(&ses_email(json));
        assert_eq!(gone.kind, Kind::Bounce, "{json}");
        assert_eq!(gone.recipient.as_deref(), Some("gone@example.net"));
        assert!(gone.hard, "{json}");
    }
}

#[test]
fn ses_bounce_types_decide_when_the_recipient_has_no_status() {
    let permanent = r#"{"notificationType":"Bounce","bounce":{"bounceType":"Permanent","bounceSubType":"General","bouncedRecipients":[{"emailAddress":"a@example.net"},{"emailAddress":"b@example.net"}]}}"#;
    let both = records(&ses_email(permanent));
    assert_eq!(both.len(), 2);
    assert!(both.iter().all(|r| r.hard && r.permanent), "{both:?}");
    let full = r#"{"notificationType":"Bounce","bounce":{"bounceType":"Transient","bounceSubType":"MailboxFull","bouncedRecipients":[{"emailAddress":"full@example.net"}]}}"#;
    let full = only(&ses_email(full));
    assert_eq!(full.category, Some(Category::QuotaIssues));
    assert!(!full.hard && !full.permanent);
    // Transient is never hard, whatever the receiver said.
    let transient = r#"{"notificationType":"Bounce","bounce":{"bounceType":"Transient","bounceSubType":"General","bouncedRecipients":[{"emailAddress":"t@example.net","status":"5.1.1","diagnosticCode":"smtp; 550 5.1.1 user unknown"}]}}"#;
    assert!(!only(&ses_email(transient)).hard);
}

#[test]
fn delay_wording_without_a_report_is_a_delay() {
    for words in [
        "Delivery to the following recipient has been delayed:\n\n     wait@example.net\n\nMessage will be retried for 2 more day(s)",
        "Your message to wait@example.net could not be delivered yet.\nDelivery attempts will continue to be made for 5 day(s).",
    ] {
        let email = format!(
            "From: Mail Delivery Subsystem <mailer-daemon@mx.example.org>\nTo: news@example.com\nSubject: Delivery Status Notification (Delay)\nContent-Type: text/plain\n\n{words}\n"
        );
        let wait = only(&email);
        assert_eq!(wait.recipient.as_deref(), Some("wait@example.net"));
        assert_eq!(wait.action.as_deref(), Some("delayed"), "{words}");
        assert!(!wait.hard);
    }
}

#[test]
fn hard_causes_in_other_languages() {
    for (words, category) in [
        (
            "Esta casilla ha expirado por falta de uso.",
            Category::InactiveMailbox,
        ),
        (
            "L'adresse de messagerie ci-dessus n'existe pas.",
            Category::BadMailbox,
        ),
        (
            "El usuario no existe en este servidor.",
            Category::BadMailbox,
        ),
        ("Der Empfänger ist unbekannt.", Category::BadMailbox),
        ("O endereço não existe.", Category::BadMailbox),
        ("L'indirizzo non esiste.", Category::BadMailbox),
        ("Le domaine n'existe pas.", Category::BadDomain),
    ] {
        let email = format!(
            "From: MAILER-DAEMON@mx.example.org\nTo: news@example.com\nSubject: Mail delivery failed\nContent-Type: text/plain; charset=utf-8\n\n<ana@example.net>:\n{words}\n"
        );
        let ana = only(&email);
        assert_eq!(ana.recipient.as_deref(), Some("ana@example.net"), "{words}");
        assert_eq!(ana.category, Some(category), "{words}");
        assert!(ana.hard, "{words}");
    }
    // A route that does not exist is no mailbox that does not.
    let route = "From: MAILER-DAEMON@mx.example.org\nTo: news@example.com\nSubject: Mail delivery failed\nContent-Type: text/plain\n\n<ana@example.net>:\nNo existe ruta al servidor.\n";
    assert!(!only(route).hard);
}

#[test]
fn sendmails_stated_reason_wins_over_its_stock_user_unknown() {
    let email = "From: Mail Delivery Subsystem <MAILER-DAEMON@relay.example.net>
To: news@example.com
Subject: Returned mail: see transcript for details
Content-Type: text/plain

   ----- The following addresses had permanent fatal errors -----
kai@example.com
    (reason: 554 Message rejected (SPF fail) for policy reasons)
    (expanded from: <kai@example.net>)

   ----- Transcript of session follows -----
... while talking to mx.example.com.:
>>> DATA
<<< 554 Message rejected (SPF fail) for policy reasons
550 5.1.1 kai@example.com... User unknown
";
    let kai = only(email);
    assert_eq!(kai.recipient.as_deref(), Some("kai@example.com"));
    assert!(!kai.hard, "{kai:?}");
    assert_ne!(kai.category, Some(Category::BadMailbox));
    // When the stated reason is a bad mailbox, it still says so.
    let unknown = email.replace(
        "554 Message rejected (SPF fail) for policy reasons",
        "550 5.1.1 <kai@example.com>... No such user",
    );
    assert!(only(&unknown).hard);
}

#[test]
fn senders_named_in_the_text_are_no_recipients() {
    let email = "From: postmaster@mx.example.org
To: news@example.com
Subject: Delivery failure
Content-Type: text/plain

Your mail to the following recipient could not be delivered because
it is not accepting mail from news@example.com:
    rio@example.org: 550 mailbox unavailable

Original message details:
 * From: news@example.com
 * To: rio@example.org, desk@example.org
> (Authenticated sender: agent@example.com)
";
    let rio = only(email);
    assert_eq!(rio.recipient.as_deref(), Some("rio@example.org"));
}

#[test]
fn more_ways_to_say_the_mailbox_does_not_exist() {
    for reply in [
        "550 5.7.1 No mailbox found",
        "554 5.7.1 <ivo@example.net>: Recipient address rejected: Nonexistent user",
        "554 Rcpt <ivo@example.net> does not exist",
        "550 ivo@example.net is not an active address at this host",
        "550 BAD_RECIPIENT",
    ] {
        let email = format!(
            "From: MAILER-DAEMON@mx.example.org\nTo: news@example.com\nSubject: Undelivered Mail Returned to Sender\nContent-Type: text/plain\n\n<ivo@example.net>: host mx.example.net said: {reply}\n"
        );
        let ivo = only(&email);
        assert_eq!(ivo.category, Some(Category::BadMailbox), "{reply}");
        assert!(ivo.hard, "{reply}");
    }
}

#[test]
fn a_block_repeated_word_for_word_is_one_record() {
    let block = "Final-Recipient: rfc822; joe@example.net\nAction: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 unknown user\n";
    let email = format!(
        "From: MAILER-DAEMON@mx.example.org\nTo: news@example.com\nSubject: Delivery Status Notification (Failure)\nMIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\n\n--B\nContent-Type: text/plain\n\nFailed.\n--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.org\n\n{block}\n{block}\n{block}\n--B--\n"
    );
    let joe = only(&email);
    assert_eq!(joe.recipient.as_deref(), Some("joe@example.net"));
}

#[test]
fn internationalized_domains_are_addresses() {
    let email = "From: MAILER-DAEMON@mx.example.org
To: news@example.com
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=global-delivery-status; boundary=\"G\"

--G
Content-Type: text/plain; charset=utf-8

Your message could not be delivered.
--G
Content-Type: message/global-delivery-status

Reporting-MTA: dns; mx.example.org

Final-Recipient: utf-8; 用户@例子.example
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 user unknown
--G--
";
    let user = only(email);
    assert_eq!(user.recipient.as_deref(), Some("用户@例子.example"));
    assert!(user.hard);
}

#[test]
fn auto_replies_titled_in_more_languages() {
    for subject in [
        "自动回复: 您的订单",
        "Respuesta automática: su pedido",
        "Resposta automática: pedido",
        "Odpowiedź automatyczna: zamówienie",
        "Автоматический ответ: заказ",
        "Autosvar: order",
        "Otomatik yanıt: sipariş",
        "Automatická odpověď: objednávka",
    ] {
        let email = format!(
            "From: mei@example.cn\nTo: news@example.com\nSubject: {subject}\nContent-Type: text/plain; charset=utf-8\n\nI am away.\n"
        );
        assert_eq!(only(&email).kind, Kind::AutoReply, "{subject}");
    }
}

#[test]
fn an_account_that_is_unavailable_is_a_bad_mailbox() {
    let email = "From: MAILER-DAEMON@mx.example.org\nTo: news@example.com\nSubject: Undelivered Mail Returned to Sender\nMIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\n\n--B\nContent-Type: text/plain\n\nFailed.\n--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.org\n\nFinal-Recipient: rfc822; old@example.net\nAction: failed\nStatus: 5.0.0\nDiagnostic-Code: smtp; 550 old@example.net...User account is unavailable\n--B--\n";
    let old = only(email);
    assert_eq!(old.category, Some(Category::BadMailbox));
    assert!(old.hard);
}
