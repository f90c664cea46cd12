//! The one reader of header fields in the engine: admission's control
//! headers (`admit::control`), the transforms, the MIME reader and the
//! Message-ID that delivery and bounce intake log all use it.
//!
//! It finds each field by byte offset into the original message and decodes
//! nothing, so an edit can splice new bytes in and keep everything else
//! byte-for-byte. It takes CRLF and bare LF line breaks, folded fields, a
//! header with no blank line after it and a last line with no line break;
//! it reads only within the range it is given and never panics on input.

use std::ops::Range;

/// One header field, possibly folded over several lines.
#[derive(Debug)]
pub(crate) struct Field {
    /// The field name as written (without the colon).
    pub name: Range<usize>,
    /// Start of the field's first line.
    pub start: usize,
    /// Just after the colon.
    pub value_start: usize,
    /// Just after the line break ending the field (or the end of the data).
    pub end: usize,
}

impl Field {
    /// Whether the field is called `name` (ASCII case-insensitive). White
    /// space before the colon is not part of the name (RFC 5322 §4.5.8).
    pub fn is(&self, data: &[u8], name: &str) -> bool {
        data[self.name.clone()]
            .trim_ascii_end()
            .eq_ignore_ascii_case(name.as_bytes())
    }

    /// The value with folding line breaks removed, lossily as text.
    pub fn unfolded_value(&self, data: &[u8]) -> String {
        let raw: Vec<u8> = data[self.value_start..self.end]
            .iter()
            .copied()
            .filter(|b| *b != b'\r' && *b != b'\n')
            .collect();
        String::from_utf8_lossy(&raw).trim().to_string()
    }
}

/// The header block of a message or a body part.
#[derive(Debug)]
pub(crate) struct HeaderBlock {
    pub fields: Vec<Field>,
    /// Where new fields are inserted: after the last field.
    pub fields_end: usize,
    /// Start of the body (after the empty line).
    pub body_start: usize,
    /// False when the block runs to the end of its part with no empty line.
    pub has_separator: bool,
    /// True when the last field is not ended by a line break.
    pub last_line_open: bool,
}

impl HeaderBlock {
    pub fn field(&self, data: &[u8], name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.is(data, name))
    }
}

/// The unfolded value of the first header field of `message` called `name`.
pub fn header_value(message: &[u8], name: &str) -> Option<String> {
    let block = parse_header_block(message, 0, message.len());
    block
        .field(message, name)
        .map(|f| f.unfolded_value(message))
}

/// Reads the header fields in `data[start..end]` up to the first empty line.
pub(crate) fn parse_header_block(data: &[u8], start: usize, end: usize) -> HeaderBlock {
    let mut fields: Vec<Field> = Vec::new();
    let mut pos = start;
    while pos < end {
        let line_end = line_end(data, pos, end);
        let line = &data[pos..line_end];
        if line == b"\r\n" || line == b"\n" {
            return HeaderBlock {
                fields,
                fields_end: pos,
                body_start: line_end,
                has_separator: true,
                last_line_open: false,
            };
        }
        let is_continuation = matches!(line[0], b' ' | b'\t');
        match fields.last_mut() {
            Some(last) if is_continuation => last.end = line_end,
            _ => fields.push(new_field(data, pos, line_end)),
        }
        pos = line_end;
    }
    HeaderBlock {
        fields,
        fields_end: end,
        body_start: end,
        has_separator: false,
        last_line_open: end > start && data[end - 1] != b'\n',
    }
}

/// Where the body of `data` starts without the empty line RFC 5322 puts
/// before it: the first line, before any empty line, that neither opens a
/// header field (a name of printable ASCII but `:`, maybe spaces, then
/// `:`) nor continues one. None when the header section is well formed.
/// A client that sends a message without a header section, or with text
/// among its fields, means that text as body, and a receiver would
/// otherwise read it as header (Postfix's cleanup ends the header there
/// too).
pub(crate) fn unseparated_body_start(data: &[u8]) -> Option<usize> {
    let mut pos = 0;
    let mut in_field = false;
    while pos < data.len() {
        let end = line_end(data, pos, data.len());
        let line = &data[pos..end];
        if line == b"\r\n" || line == b"\n" {
            return None;
        }
        let continues = in_field && matches!(line[0], b' ' | b'\t');
        if !continues && !opens_a_field(line) {
            return Some(pos);
        }
        in_field = true;
        pos = end;
    }
    None
}

fn opens_a_field(line: &[u8]) -> bool {
    let name = line
        .iter()
        .take_while(|&&b| b.is_ascii_graphic() && b != b':')
        .count();
    let after = line[name..]
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .map(|i| line[name + i]);
    name > 0 && after == Some(b':')
}

fn new_field(data: &[u8], start: usize, end: usize) -> Field {
    // A line without a colon is junk; it is kept as a nameless field.
    let colon = memchr::memchr(b':', &data[start..end]).map(|i| start + i);
    let name_end = colon.unwrap_or(start);
    Field {
        name: start..name_end,
        start,
        value_start: colon.map_or(end, |c| c + 1),
        end,
    }
}

/// The position just after the next line break at or after `pos`, or `end`.
pub(super) fn line_end(data: &[u8], pos: usize, end: usize) -> usize {
    memchr::memchr(b'\n', &data[pos..end]).map_or(end, |i| pos + i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_values_are_unfolded_and_names_matched_in_any_case() {
        let msg = b"Subject: a\r\n b\r\nmessage-id:  <x@y> \r\n\r\nMessage-ID: <body@y>\r\n";
        assert_eq!(header_value(msg, "subject").as_deref(), Some("a b"));
        assert_eq!(header_value(msg, "Message-ID").as_deref(), Some("<x@y>"));
        assert_eq!(header_value(msg, "To"), None);
    }

    #[test]
    fn the_body_starts_at_the_first_line_that_is_no_header() {
        let at = |m: &[u8]| unseparated_body_start(m);
        assert_eq!(
            at(b"Subject: a\r\n b\r\nX-A : c\r\n\r\nnot: a header\r\n"),
            None
        );
        assert_eq!(at(b"Subject: a\r\n"), None);
        assert_eq!(at(b"Hello world\r\n\r\nthird\r\n"), Some(0));
        assert_eq!(
            at(b"Subject: x\r\nthis is text\r\nFrom: a\r\n\r\nb"),
            Some(12)
        );
        assert_eq!(at(b" folded first\r\nSubject: s\r\n\r\nb"), Some(0));
        assert_eq!(at(b"Subject: x\r\n: no name\r\n"), Some(12));
        assert_eq!(at(b"Subject: x\nbody line\n"), Some(11));
    }

    #[test]
    fn bare_lf_headers_and_space_before_the_colon_are_read() {
        let msg = b"X-Channel : transactional\nSubject: s\n\nbody";
        let block = parse_header_block(msg, 0, msg.len());
        assert_eq!(block.fields.len(), 2);
        assert!(block.has_separator);
        assert_eq!(&msg[block.body_start..], b"body");
        assert_eq!(
            header_value(msg, "x-channel").as_deref(),
            Some("transactional")
        );
    }

    #[test]
    fn header_without_blank_line_or_final_line_break() {
        let msg = b"Subject: hi\r\nJunk line";
        let block = parse_header_block(msg, 0, msg.len());
        assert!(!block.has_separator && block.last_line_open);
        assert_eq!(block.fields_end, msg.len());
        assert_eq!(header_value(msg, "Subject").as_deref(), Some("hi"));
        assert!(parse_header_block(b"", 0, 0).fields.is_empty());
    }
}
