//! What a message needs from the server it goes to, decided from its actual
//! bytes: 8-bit bytes in the body need 8BITMIME (RFC 6152); 8-bit bytes in
//! the header, or a non-ASCII address, need SMTPUTF8 (RFC 6531, 6532); its
//! size must be within the server's SIZE (RFC 1870).
//! Admission normally re-encodes 8-bit bodies before signing, so this is the
//! last line of defence: a signed message cannot be converted any more, so
//! a server that lacks what it needs gets nothing.

use super::capabilities::Capabilities;
use super::{Envelope, Reply};

/// The SMTP extensions one transaction needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContentNeeds {
    /// A byte >= 0x80 after the header.
    pub eight_bit_body: bool,
    /// A byte >= 0x80 in the header (UTF-8 headers, RFC 6532).
    pub eight_bit_header: bool,
    /// A non-ASCII envelope address.
    pub utf8_address: bool,
    /// The message's size in bytes.
    pub size: usize,
}

impl ContentNeeds {
    /// Scans `message` (CRLF, header then a blank line then the body) and
    /// the envelope. `is_ascii` runs a word at a time, so a clean 10 KB
    /// message costs well under a microsecond.
    pub fn of(envelope: &Envelope<'_>, message: &[u8]) -> ContentNeeds {
        let (header, body) = split_header(message);
        ContentNeeds {
            eight_bit_body: !body.is_ascii(),
            eight_bit_header: !header.is_ascii(),
            size: message.len(),
            utf8_address: !envelope.mail_from.is_ascii()
                || envelope.recipients.iter().any(|r| !r.is_ascii()),
        }
    }

    pub fn smtputf8(&self) -> bool {
        self.eight_bit_header || self.utf8_address
    }

    /// Whether any byte of the message is 8-bit (then MAIL says BODY=8BITMIME
    /// to a server that offers it).
    pub fn eight_bit(&self) -> bool {
        self.eight_bit_body || self.eight_bit_header
    }

    /// The permanent refusal when `capabilities` lack what the message needs,
    /// naming the server (`remote`) and the missing extension. None: it may go.
    pub fn refusal(&self, capabilities: &Capabilities, remote: &str) -> Option<Reply> {
        if self.smtputf8() && !capabilities.smtp_utf8 {
            let what = if self.utf8_address {
                "a non-ASCII address"
            } else {
                "UTF-8 in its header"
            };
            let text = format!(
                "the message has {what}, and the server {remote} does not offer SMTPUTF8 \
                 (RFC 6531); send it through a server that does, or with ASCII addresses \
                 and encoded headers"
            );
            return Some(Reply::local(553, "5.6.7", text));
        }
        if self.eight_bit_body && !capabilities.eight_bit_mime {
            let text = format!(
                "the message body has 8-bit bytes, and the server {remote} does not offer \
                 8BITMIME (RFC 6152); send it through a server that does, or encode the \
                 body as quoted-printable or base64"
            );
            return Some(Reply::local(554, "5.6.3", text));
        }
        if let Some(limit) = capabilities.size_limit()
            && self.size as u64 > limit
        {
            let text = format!(
                "message of {} bytes exceeds the limit of {limit} bytes of the server {remote} \
                 (SIZE, RFC 1870); send it through a server that takes it, or make it smaller",
                self.size
            );
            return Some(Reply::local(552, "5.3.4", text));
        }
        None
    }
}

/// The header (up to and without the blank line) and the body after it. A
/// message without a blank line is all header.
fn split_header(message: &[u8]) -> (&[u8], &[u8]) {
    if message.starts_with(b"\r\n") {
        return (&[], &message[2..]);
    }
    match memchr::memmem::find(message, b"\r\n\r\n") {
        Some(end) => (&message[..end], &message[end + 4..]),
        None => (message, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(recipient: &str, message: &str) -> ContentNeeds {
        let recipients = [recipient];
        let envelope = Envelope {
            mail_from: "a@b.example",
            recipients: &recipients,
        };
        ContentNeeds::of(&envelope, message.as_bytes())
    }

    #[test]
    fn finds_eight_bit_bytes_in_header_and_body_apart() {
        let message = "Subject: x\r\n\r\nplain\r\n";
        assert_eq!(
            needs("d@e.example", message),
            ContentNeeds {
                size: message.len(),
                ..ContentNeeds::default()
            }
        );
        let body = needs("d@e.example", "Subject: x\r\n\r\ncaf\u{e9}\r\n");
        assert!(body.eight_bit_body && !body.eight_bit_header && !body.smtputf8());
        let header = needs("d@e.example", "Subject: caf\u{e9}\r\n\r\nplain\r\n");
        assert!(header.eight_bit_header && !header.eight_bit_body && header.smtputf8());
        let address = needs("jos\u{e9}@e.example", "Subject: x\r\n\r\nplain\r\n");
        assert!(address.utf8_address && address.smtputf8() && !address.eight_bit());
        let no_header = needs("d@e.example", "\r\ncaf\u{e9}");
        assert!(no_header.eight_bit_body && !no_header.eight_bit_header);
    }

    #[test]
    fn refusals_name_the_server_and_the_missing_extension() {
        let plain = Capabilities::from_ehlo_lines(["PIPELINING"]);
        let body = needs("d@e.example", "S: x\r\n\r\n\u{e9}");
        let refusal = body.refusal(&plain, "relay.test:25").unwrap();
        assert_eq!(
            (refusal.code, refusal.enhanced.as_deref()),
            (554, Some("5.6.3"))
        );
        assert!(refusal.text.contains("relay.test:25") && refusal.text.contains("8BITMIME"));
        let header = needs("d@e.example", "S: \u{e9}\r\n\r\nx");
        let refusal = header.refusal(&plain, "relay.test:25").unwrap();
        assert_eq!(refusal.enhanced.as_deref(), Some("5.6.7"));
        assert!(refusal.text.contains("SMTPUTF8"));

        let eight_bit = Capabilities::from_ehlo_lines(["8BITMIME"]);
        assert!(body.refusal(&eight_bit, "r").is_none());
        assert!(header.refusal(&eight_bit, "r").is_some());
        let both = Capabilities::from_ehlo_lines(["8BITMIME", "SMTPUTF8"]);
        assert!(header.refusal(&both, "r").is_none());
    }
}
