//! Content-Transfer-Encoding codecs for text parts: quoted-printable and
//! base64 (RFC 2045 §6.7 and §6.8). Decoding is lenient, as receivers are;
//! encoding is strict: lines of at most 76 characters, CRLF line breaks.

use base64::Engine as _;

/// RFC 2045 line length limit for quoted-printable and base64.
pub(super) const ENCODED_LINE_LIMIT: usize = 76;
/// RFC 5322 line length limit (without CRLF) for unencoded bodies.
pub(super) const RAW_LINE_LIMIT: usize = 998;

/// Decodes quoted-printable. `=XX` is a byte, `=` at the end of a line is a
/// soft break, and a stray `=` not followed by hex is kept as it is.
pub(super) fn decode_quoted_printable(encoded: &[u8]) -> Vec<u8> {
    let mut decoded = Vec::with_capacity(encoded.len());
    let mut lines = encoded.split_inclusive(|b| *b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let (content, line_break) = split_line_break(line);
        // Trailing blanks are transport padding (RFC 2045 §6.7 rule 3).
        let content = trim_trailing_blanks(content);
        let soft_break = content.last() == Some(&b'=');
        let content = if soft_break {
            &content[..content.len() - 1]
        } else {
            content
        };
        decode_qp_line(content, &mut decoded);
        if !soft_break && (!line_break.is_empty() || lines.peek().is_some()) {
            decoded.extend_from_slice(b"\r\n");
        }
    }
    decoded
}

fn decode_qp_line(content: &[u8], decoded: &mut Vec<u8>) {
    let mut i = 0;
    while i < content.len() {
        let byte = content[i];
        let hex = content.get(i + 1..i + 3).and_then(hex_byte);
        match (byte, hex) {
            (b'=', Some(value)) => {
                decoded.push(value);
                i += 3;
            }
            _ => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| char::from(b).to_digit(16);
    let high = digit(*pair.first()?)?;
    let low = digit(*pair.get(1)?)?;
    u8::try_from(high * 16 + low).ok()
}

fn split_line_break(line: &[u8]) -> (&[u8], &[u8]) {
    let content_len = if line.ends_with(b"\r\n") {
        line.len() - 2
    } else if line.ends_with(b"\n") {
        line.len() - 1
    } else {
        line.len()
    };
    line.split_at(content_len)
}

fn trim_trailing_blanks(mut content: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = content {
        content = rest;
    }
    content
}

/// Encodes as quoted-printable: CRLF in `decoded` stays a hard line break,
/// every other line is cut with soft breaks to at most 76 characters.
pub(super) fn encode_quoted_printable(decoded: &[u8]) -> Vec<u8> {
    let mut encoded = Vec::with_capacity(decoded.len() + decoded.len() / 8);
    let mut lines = decoded.split(|b| *b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let is_last = lines.peek().is_none();
        // A CRLF pair is a hard break; a bare CR or LF is data.
        let (content, hard_break) = match line.strip_suffix(b"\r") {
            Some(content) if !is_last => (content, true),
            _ => (line, false),
        };
        encode_qp_line(content, &mut encoded);
        if hard_break {
            encoded.extend_from_slice(b"\r\n");
        } else if !is_last {
            push_qp_token(&mut encoded, b'\n');
        }
    }
    encoded
}

fn encode_qp_line(content: &[u8], encoded: &mut Vec<u8>) {
    let mut line_len = 0;
    for (i, &byte) in content.iter().enumerate() {
        let is_last = i + 1 == content.len();
        let token_len = if needs_qp_escape(byte, is_last) { 3 } else { 1 };
        // Room for the `=` of a soft break, except for the line's last token.
        let limit = if is_last {
            ENCODED_LINE_LIMIT
        } else {
            ENCODED_LINE_LIMIT - 1
        };
        if line_len + token_len > limit {
            encoded.extend_from_slice(b"=\r\n");
            line_len = 0;
        }
        if token_len == 3 {
            push_qp_token(encoded, byte);
        } else {
            encoded.push(byte);
        }
        line_len += token_len;
    }
}

fn needs_qp_escape(byte: u8, is_last_on_line: bool) -> bool {
    match byte {
        b' ' | b'\t' => is_last_on_line,
        b'=' => true,
        33..=126 => false,
        _ => true,
    }
}

fn push_qp_token(encoded: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    encoded.extend_from_slice(&[
        b'=',
        HEX[usize::from(byte >> 4)],
        HEX[usize::from(byte & 0x0f)],
    ]);
}

/// Decodes base64, ignoring line breaks and blanks; `None` if malformed.
pub(super) fn decode_base64(encoded: &[u8]) -> Option<Vec<u8>> {
    mail_parser::decoders::base64::base64_decode(encoded)
}

/// Encodes as base64 in lines of 76 characters separated by CRLF.
pub(super) fn encode_base64(decoded: &[u8]) -> Vec<u8> {
    let flat = base64::engine::general_purpose::STANDARD.encode(decoded);
    let mut encoded = Vec::with_capacity(flat.len() + flat.len() / ENCODED_LINE_LIMIT * 2);
    for (i, chunk) in flat.as_bytes().chunks(ENCODED_LINE_LIMIT).enumerate() {
        if i > 0 {
            encoded.extend_from_slice(b"\r\n");
        }
        encoded.extend_from_slice(chunk);
    }
    encoded
}

/// True when some line of `body` is longer than `limit` (without its break).
pub(super) fn has_line_longer_than(body: &[u8], limit: usize) -> bool {
    body.split(|b| *b == b'\n')
        .any(|line| line.strip_suffix(b"\r").unwrap_or(line).len() > limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_printable_round_trips_and_keeps_lines_short() {
        let text = "Grüße = 100% \t\r\n".repeat(3) + &"x".repeat(300) + "\r\nend ";
        let encoded = encode_quoted_printable(text.as_bytes());
        assert!(!has_line_longer_than(&encoded, ENCODED_LINE_LIMIT));
        assert!(!encoded.iter().any(|b| *b >= 0x80));
        assert_eq!(decode_quoted_printable(&encoded), text.as_bytes());
    }

    #[test]
    fn quoted_printable_line_of_exactly_76_has_no_soft_break() {
        let line = "a".repeat(76);
        assert_eq!(encode_quoted_printable(line.as_bytes()), line.as_bytes());
        let longer = "a".repeat(77);
        let encoded = encode_quoted_printable(longer.as_bytes());
        assert_eq!(encoded, format!("{}=\r\naa", "a".repeat(75)).as_bytes());
    }

    #[test]
    fn quoted_printable_decoding_is_lenient() {
        assert_eq!(
            decode_quoted_printable(b"a=3Db=\r\nc=zz \r\n"),
            b"a=bc=zz\r\n"
        );
        assert_eq!(decode_quoted_printable(b"x=3d"), b"x=");
    }

    #[test]
    fn bare_line_feeds_are_escaped() {
        assert_eq!(encode_quoted_printable(b"a\nb\r\nc"), b"a=0Ab\r\nc");
        assert_eq!(decode_quoted_printable(b"a=0Ab\r\nc"), b"a\nb\r\nc");
    }

    #[test]
    fn base64_lines_are_76_characters() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let encoded = encode_base64(&data);
        let lines: Vec<&[u8]> = encoded.split(|b| *b == b'\n').collect();
        assert!(lines[..lines.len() - 1].iter().all(|l| l.len() == 77));
        assert_eq!(decode_base64(&encoded).unwrap(), data);
    }
}
