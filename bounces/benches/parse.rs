//! Throughput of the bounce parser: parse + classify per message, for a
//! standard DSN, a plain-text qmail bounce, an ARF complaint and a DSN
//! returning a 100 KB message, plus the classifier alone. Run with
//! `cargo bench -p sendengine-bounces`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sendengine_bounces::{classify, parse_message};

const DSN: &str = "From: MAILER-DAEMON@mx.example.org\nTo: bounces+abcdefghijklmnopqrstuvwxyz234567@mail.example.com\nSubject: Undelivered Mail Returned to Sender\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"BB\"\n\n--BB\nContent-Type: text/plain\n\n<jane@example.net>: host mx.example.net[192.0.2.1] said: 550 5.1.1 User unknown\n--BB\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.org\n\nFinal-Recipient: rfc822; jane@example.net\nAction: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 <jane@example.net>: Recipient address rejected: User unknown\n--BB\nContent-Type: text/rfc822-headers\n\nFrom: news@example.com\nTo: jane@example.net\nMessage-ID: <m1@example.com>\n--BB--\n";

const QMAIL: &str = "From: MAILER-DAEMON@mx.example.org\nSubject: failure notice\n\nHi. This is the qmail-send program at mx.example.org.\n\n<bob@example.net>:\n192.0.2.1 does not like recipient.\nRemote host said: 550 5.1.1 <bob@example.net>... User Unknown\nGiving up on 192.0.2.1.\n\n--- Below this line is a copy of the message.\n\nReturn-Path: <news@example.com>\nTo: bob@example.net\n\nhello\n";

const ARF: &str = "From: fbl@isp.example\nSubject: complaint\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"X\"\n\n--X\nContent-Type: text/plain\n\nabuse report\n--X\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\nOriginal-Rcpt-To: carol@isp.example\n--X\nContent-Type: message/rfc822\n\nFrom: news@example.com\nTo: carol@isp.example\n\nbuy\n--X--\n";

/// Size of the returned message in the large bounce: providers return the
/// whole message, and 100 KB is a common newsletter.
const LARGE_BODY_BYTES: usize = 100 * 1024;

/// A DSN returning a 100 KB message (message/rfc822, quoted-printable HTML).
fn large_dsn() -> String {
    let head = DSN.trim_end_matches("--BB--\n");
    let line =
        "<p style=3D\"margin:0\">Our spring collection is here, with twenty new colours.</p>\n";
    let body = line.repeat(LARGE_BODY_BYTES / line.len() + 1);
    format!(
        "{head}--BB\nContent-Type: message/rfc822\n\nFrom: news@example.com\nTo: jane@example.net\nMessage-ID: <m1@example.com>\nContent-Type: text/html\nContent-Transfer-Encoding: quoted-printable\n\n{body}--BB--\n"
    )
}

fn parse(c: &mut Criterion) {
    let large = large_dsn();
    let mut group = c.benchmark_group("parse_and_classify");
    for (name, mail) in [
        ("rfc3464_dsn", DSN),
        ("qmail_text", QMAIL),
        ("arf_complaint", ARF),
        ("large_dsn_100k", large.as_str()),
    ] {
        group.throughput(Throughput::Elements(1));
        group.bench_function(name, |b| {
            b.iter(|| parse_message(std::hint::black_box(mail.as_bytes())))
        });
    }
    group.finish();
    c.bench_function("classify_reply", |b| {
        b.iter(|| {
            classify(
                550,
                Some("5.1.1"),
                std::hint::black_box("The email account that you tried to reach does not exist."),
            )
        })
    });
}

criterion_group!(benches, parse);
criterion_main!(benches);
