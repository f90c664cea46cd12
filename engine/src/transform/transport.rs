//! Making a message safe for any relay, once at admission and before DKIM:
//! no 8-bit byte, no NUL and no line over 998 octets may reach a relay that
//! did not offer 8BITMIME (RFC 6152, RFC 5322 §2.1.1).
//!
//! Postfix converts 8bit to 7bit at delivery time, per relay; we cannot,
//! because the DKIM signature covers the body and nothing is changed after
//! signing. So every leaf part that needs it is re-encoded here, whatever
//! the route: text parts as quoted-printable, other parts as base64. The
//! decoded content stays byte-for-byte the same; multipart structure and
//! boundaries are kept, only the changed parts and their
//! Content-Transfer-Encoding fields are rewritten.

use std::ops::Range;

use super::codec::{
    RAW_LINE_LIMIT, decode_base64, decode_quoted_printable, encode_base64, encode_quoted_printable,
};
use super::header::HeaderBlock;
use super::mime::{MAX_MIME_DEPTH, Part, parse_embedded, parse_message};
use super::{Edits, TransformError, header_words};

/// Returns the message re-encoded for 7-bit transport, or `None` when it
/// already is (the common case, decided without parsing). `keep_utf8_headers`
/// leaves 8-bit header fields alone: the message needs SMTPUTF8 anyway
/// (UTF-8 addresses), so encoding its Subject would gain nothing.
pub fn seven_bit(
    message: &[u8],
    keep_utf8_headers: bool,
) -> Result<Option<Vec<u8>>, TransformError> {
    if is_seven_bit_safe(message) {
        return Ok(None);
    }
    let root = parse_message(message)?;
    let mut edits = Edits::default();
    encode_part(message, &root, true, 0, &mut edits)?;
    if !keep_utf8_headers && !header_words::has_utf8_address(message, &root.header) {
        header_words::encode_fields(message, &root.header, &mut edits);
    }
    Ok(Some(edits.apply(message)))
}

/// True when every byte is 7-bit, none is NUL and no line is over 998.
fn is_seven_bit_safe(data: &[u8]) -> bool {
    data.is_ascii() && memchr::memchr(0, data).is_none() && !has_long_line(data)
}

fn has_long_line(data: &[u8]) -> bool {
    let mut line_start = 0;
    for newline in memchr::memchr_iter(b'\n', data) {
        let line = &data[line_start..newline];
        if line.strip_suffix(b"\r").unwrap_or(line).len() > RAW_LINE_LIMIT {
            return true;
        }
        line_start = newline + 1;
    }
    data.len() - line_start > RAW_LINE_LIMIT
}

/// Re-encodes `part` (recursively) where its body is not 7-bit safe.
/// `is_message` is true for a whole message (the top or an embedded one).
fn encode_part(
    data: &[u8],
    part: &Part,
    is_message: bool,
    depth: usize,
    edits: &mut Edits,
) -> Result<(), TransformError> {
    if depth > MAX_MIME_DEPTH {
        return Err(TransformError::TooDeep {
            limit: MAX_MIME_DEPTH,
        });
    }
    if memchr::memchr(0, &data[header_span(&part.header)]).is_some() {
        return Err(TransformError::NulInHeader);
    }
    let media = &part.media_type;
    let body = part.header.body_start..part.body_end;
    if media.main == "multipart" {
        for child in &part.children {
            encode_part(data, child, false, depth + 1, edits)?;
        }
        label_seven_bit(data, part, edits);
        return Ok(());
    }
    if media.main == "message" && matches!(media.sub.as_str(), "rfc822" | "global") {
        // RFC 2046 §5.2.1: an embedded message may not be encoded itself,
        // so its own parts are.
        let inner = parse_embedded(data, body)?;
        encode_part(data, &inner, true, depth + 1, edits)?;
        label_seven_bit(data, part, edits);
        return Ok(());
    }
    if is_seven_bit_safe(&data[body.clone()]) {
        return Ok(());
    }
    encode_leaf(data, part, is_message, edits)
}

/// The bytes of a header block's fields.
fn header_span(header: &HeaderBlock) -> Range<usize> {
    header.fields.first().map_or(0, |f| f.start)..header.fields_end
}

fn encode_leaf(
    data: &[u8],
    part: &Part,
    is_message: bool,
    edits: &mut Edits,
) -> Result<(), TransformError> {
    let raw = &data[part.header.body_start..part.body_end];
    // The message's last CRLF ends its last line; it is not content.
    let (content, tail) = match raw.strip_suffix(b"\r\n") {
        Some(content) if is_message => (content, &b"\r\n"[..]),
        _ => (raw, &b""[..]),
    };
    let is_text = part.media_type.main == "text";
    let (mut encoded, new_encoding) = match part.transfer_encoding.as_str() {
        // Already encoded but broken (8-bit bytes or long lines in it):
        // encoded again the same way, which keeps the decoded content.
        "quoted-printable" => (
            encode_quoted_printable(&decode_quoted_printable(content)),
            None,
        ),
        "base64" => {
            let decoded = decode_base64(content).ok_or(TransformError::InvalidBase64)?;
            (encode_base64(&decoded), None)
        }
        _ if is_text => (encode_quoted_printable(content), Some("quoted-printable")),
        _ => (encode_base64(content), Some("base64")),
    };
    encoded.extend_from_slice(tail);
    if let Some(encoding) = new_encoding {
        set_transfer_encoding(data, part, encoding, is_message, raw, edits);
    }
    edits.replace(part.header.body_start..part.body_end, encoded);
    Ok(())
}

/// Sets the part's Content-Transfer-Encoding; a message that had no MIME
/// header at all gets the ones a reader needs to decode it.
fn set_transfer_encoding(
    data: &[u8],
    part: &Part,
    encoding: &str,
    is_message: bool,
    raw: &[u8],
    edits: &mut Edits,
) {
    let header = &part.header;
    if let Some(field) = header.field(data, "content-transfer-encoding") {
        let value = super::body::replaced_field_value(data, field, encoding);
        edits.replace(field.start..field.end, value);
        return;
    }
    let mut fields = Vec::new();
    if is_message && header.field(data, "mime-version").is_none() {
        fields.extend_from_slice(b"MIME-Version: 1.0\r\n");
    }
    if header.field(data, "content-type").is_none() {
        // RFC 2045's default, us-ascii, would be wrong for 8-bit text.
        let charset = if std::str::from_utf8(raw).is_ok() {
            "utf-8"
        } else {
            "unknown-8bit"
        };
        fields.extend_from_slice(
            format!("Content-Type: text/plain; charset={charset}\r\n").as_bytes(),
        );
    }
    fields.extend_from_slice(format!("Content-Transfer-Encoding: {encoding}\r\n").as_bytes());
    if !header.has_separator {
        fields.extend_from_slice(b"\r\n");
    }
    edits.insert_fields(header, fields);
}

/// A container labelled 8bit or binary holds only 7-bit parts now.
fn label_seven_bit(data: &[u8], part: &Part, edits: &mut Edits) {
    if !matches!(part.transfer_encoding.as_str(), "8bit" | "binary") {
        return;
    }
    if let Some(field) = part.header.field(data, "content-transfer-encoding") {
        let value = super::body::replaced_field_value(data, field, "7bit");
        edits.replace(field.start..field.end, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn converted(message: &str) -> String {
        let out = seven_bit(message.as_bytes(), false)
            .unwrap()
            .expect("changed");
        assert!(is_seven_bit_safe(&out), "{}", String::from_utf8_lossy(&out));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn seven_bit_message_is_left_alone() {
        let message = b"Subject: a\r\n\r\nplain ascii\r\n";
        assert!(seven_bit(message, false).unwrap().is_none());
    }

    #[test]
    fn non_mime_8bit_body_gets_mime_headers() {
        let out = converted("Subject: a\r\n\r\nGrüße\r\n");
        assert_eq!(
            out,
            "Subject: a\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe\r\n"
        );
    }

    #[test]
    fn long_html_line_in_multipart_is_quoted_printable_and_boundaries_kept() {
        let long = "<p>".to_string() + &"x".repeat(5000) + "</p>";
        let message = format!(
            "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nshort\r\n\
             --b\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{long}\r\n--b--\r\n"
        );
        let out = converted(&message);
        assert!(out.contains("Content-Transfer-Encoding: 7bit\r\n\r\n--b\r\n"));
        assert!(out.contains("--b\r\nContent-Type: text/plain\r\n\r\nshort\r\n--b\r\n"));
        assert!(out.contains(
            "Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n"
        ));
        assert!(out.ends_with("</p>\r\n--b--\r\n"));
        let (_, html) = out.split_once("quoted-printable\r\n\r\n").unwrap();
        let html = html.strip_suffix("\r\n--b--\r\n").unwrap();
        assert_eq!(decode_quoted_printable(html.as_bytes()), long.as_bytes());
    }

    #[test]
    fn binary_attachment_becomes_base64() {
        let message = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
            Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n\x00\xff\x01\r\n--b--\r\n";
        let out = seven_bit(message, false).unwrap().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("Content-Transfer-Encoding: base64\r\n\r\nAP8B\r\n--b--"),
            "{text}"
        );
    }

    #[test]
    fn nul_in_a_header_is_refused_and_in_a_body_encoded() {
        let err = seven_bit(b"Subject: a\x00b\r\n\r\nx\r\n", false).unwrap_err();
        assert!(matches!(err, TransformError::NulInHeader));
        let out = converted("Subject: a\r\n\r\nx\0y\r\n");
        assert!(out.ends_with("\r\n\r\nx=00y\r\n"), "{out}");
    }

    #[test]
    fn embedded_message_parts_are_encoded_not_the_message_part() {
        let message = "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
                       Subject: inner\r\n\r\ncafé\r\n";
        let out = converted(message);
        assert!(
            out.starts_with("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n")
        );
        assert!(
            out.ends_with("Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n"),
            "{out}"
        );
    }
}
