//! Emails the tests build.

/// A multipart/report with `text` as its human part and `status` as its
/// delivery-status part, returning headers To: `returned_to`.
pub fn report(text: &str, status: &str, returned_to: &str) -> Vec<u8> {
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\n\
To: bounces+x@mail.example.com\r\n\
Subject: Delivery Status Notification (Failure)\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"BB\"\r\n\
\r\n\
--BB\r\n\
Content-Type: text/plain\r\n\
\r\n\
{text}\r\n\
--BB\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; mx.example.org\r\n\
\r\n\
{status}\
--BB\r\n\
Content-Type: text/rfc822-headers\r\n\
\r\n\
From: news@mail.example.com\r\n\
To: {returned_to}\r\n\
Subject: Our news\r\n\
--BB--\r\n"
    )
    .into_bytes()
}
