//! Header/footer insertion into the text and HTML body parts of a message.
//!
//! Which parts: the body of a single-part text message; both the plain and
//! the HTML alternative of multipart/alternative; in other multiparts the
//! first part that holds a text body. Never attachments, message/rfc822
//! parts, or signed/encrypted multiparts (changing those breaks the
//! signature). Each chosen part is decoded (transfer encoding, and charset
//! when a non-ASCII text must go into a non-UTF-8 part), edited and encoded
//! again the same way.

use mail_parser::decoders::charsets::map::charset_decoder;

use super::codec::{
    RAW_LINE_LIMIT, decode_base64, decode_quoted_printable, encode_base64, encode_quoted_printable,
    has_line_longer_than,
};
use super::header::Field;
use super::mime::{Part, parse_media_type};
use super::{Edits, TransformError};

/// The texts to add to one kind of part, with CRLF line breaks.
pub(super) struct Insertion {
    header: String,
    footer: String,
}

impl Insertion {
    /// Configured texts may use LF or CRLF; the message needs CRLF.
    pub fn new(header: &str, footer: &str) -> Self {
        Insertion {
            header: to_crlf(header),
            footer: to_crlf(footer),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.header.is_empty() && self.footer.is_empty()
    }

    fn is_ascii(&self) -> bool {
        self.header.is_ascii() && self.footer.is_ascii()
    }
}

fn to_crlf(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace('\r', "\n")
        .replace('\n', "\r\n")
}

/// Adds `text` to the plain parts and `html` to the HTML parts of `root`.
pub(super) fn decorate_bodies(
    data: &[u8],
    root: &Part,
    text: &Insertion,
    html: &Insertion,
    edits: &mut Edits,
) -> Result<(), TransformError> {
    let mut targets = Vec::new();
    collect_targets(root, &mut targets);
    for part in targets {
        let is_html = part.media_type.sub == "html";
        let insertion = if is_html { html } else { text };
        if insertion.is_empty() {
            continue;
        }
        let is_root = std::ptr::eq(part, root);
        let mut insert = |content: &[u8]| {
            if is_html {
                insert_into_html(content, insertion)
            } else {
                insert_into_plain(content, insertion)
            }
        };
        let content_edit = ContentEdit {
            ascii_only: insertion.is_ascii(),
            edit: &mut insert,
        };
        edit_part(data, part, content_edit, is_root, edits)?;
    }
    Ok(())
}

/// Applies `edit` to the decoded content of every HTML part that
/// `decorate_bodies` would decorate (the alternative, or the first text
/// part of a mixed message; never attachments or signed parts). The edit
/// inserts ASCII only. Returns how many parts were edited.
pub(super) fn edit_html_bodies(
    data: &[u8],
    root: &Part,
    edit: &mut dyn FnMut(&[u8]) -> Vec<u8>,
    edits: &mut Edits,
) -> Result<usize, TransformError> {
    let mut targets = Vec::new();
    collect_targets(root, &mut targets);
    let mut edited = 0;
    for part in targets.into_iter().filter(|p| p.media_type.sub == "html") {
        let is_root = std::ptr::eq(part, root);
        let content_edit = ContentEdit {
            ascii_only: true,
            edit: &mut *edit,
        };
        edit_part(data, part, content_edit, is_root, edits)?;
        edited += 1;
    }
    Ok(edited)
}

/// A change to a part's decoded content, and whether it adds only ASCII
/// (then an ASCII-compatible charset needs no conversion).
struct ContentEdit<'e> {
    ascii_only: bool,
    edit: &'e mut dyn FnMut(&[u8]) -> Vec<u8>,
}

fn collect_targets<'p>(part: &'p Part, targets: &mut Vec<&'p Part>) {
    if part.is_attachment {
        return;
    }
    let media_type = &part.media_type;
    match (media_type.main.as_str(), media_type.sub.as_str()) {
        ("text", "plain" | "html") => targets.push(part),
        ("multipart", "alternative") => {
            for child in &part.children {
                collect_targets(child, targets);
            }
        }
        ("multipart", "signed" | "encrypted") => {}
        ("multipart", _) => {
            for child in &part.children {
                let found_before = targets.len();
                collect_targets(child, targets);
                if targets.len() > found_before {
                    break;
                }
            }
        }
        _ => {}
    }
}

/// Decodes the part (transfer encoding, and charset when the edit cannot
/// be written in it), edits it, and encodes it again the same way.
fn edit_part(
    data: &[u8],
    part: &Part,
    content_edit: ContentEdit<'_>,
    is_root: bool,
    edits: &mut Edits,
) -> Result<(), TransformError> {
    let raw = &data[part.header.body_start..part.body_end];
    let decoded = decode_transfer(raw, &part.transfer_encoding)?;
    let charset = part
        .media_type
        .param("charset")
        .map(|c| c.trim().to_ascii_lowercase());
    let (content, relabel_utf8) =
        to_compatible_charset(decoded, charset.as_deref(), content_edit.ascii_only)?;
    let content = (content_edit.edit)(&content);
    let (body, new_encoding) = encode_transfer(&content, &part.transfer_encoding, raw);

    update_part_fields(data, part, relabel_utf8, new_encoding, is_root, edits);
    edits.replace_body(part, body);
    Ok(())
}

/// Labels the part `charset=utf-8` and/or sets its new transfer encoding,
/// adding the fields when the part has none.
fn update_part_fields(
    data: &[u8],
    part: &Part,
    relabel_utf8: bool,
    new_encoding: Option<&str>,
    is_root: bool,
    edits: &mut Edits,
) {
    let mut new_fields = Vec::new();
    if relabel_utf8 {
        match part.header.field(data, "content-type") {
            Some(field) => edits.replace(field.start..field.end, with_utf8_charset(data, field)),
            None => {
                if is_root && part.header.field(data, "mime-version").is_none() {
                    new_fields.extend_from_slice(b"MIME-Version: 1.0\r\n");
                }
                new_fields.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n");
            }
        }
    }
    if let Some(encoding) = new_encoding {
        match part.header.field(data, "content-transfer-encoding") {
            Some(field) => edits.replace(
                field.start..field.end,
                replaced_field_value(data, field, encoding),
            ),
            None => new_fields
                .extend_from_slice(format!("Content-Transfer-Encoding: {encoding}\r\n").as_bytes()),
        }
    }
    if !new_fields.is_empty() {
        edits.insert_fields(&part.header, new_fields);
    }
}

fn decode_transfer(raw: &[u8], encoding: &str) -> Result<Vec<u8>, TransformError> {
    match encoding {
        "7bit" | "8bit" | "binary" => Ok(raw.to_vec()),
        "quoted-printable" => Ok(decode_quoted_printable(raw)),
        "base64" => decode_base64(raw).ok_or(TransformError::InvalidBase64),
        other => Err(TransformError::UnsupportedTransferEncoding {
            encoding: other.to_string(),
        }),
    }
}

/// Encodes `content` as the `raw` body was. Returns the new transfer
/// encoding when the insertion made the old one unable to carry the content:
/// 8-bit bytes in 7bit, or lines over 998 octets in 7bit/8bit, are sent as
/// quoted-printable. Problems already in `raw` are left as they were.
fn encode_transfer(content: &[u8], encoding: &str, raw: &[u8]) -> (Vec<u8>, Option<&'static str>) {
    match encoding {
        "base64" => {
            let mut body = encode_base64(content);
            // In a single-part message the final CRLF is not base64 data.
            if raw.ends_with(b"\r\n") {
                body.extend_from_slice(b"\r\n");
            }
            (body, None)
        }
        "quoted-printable" => (encode_quoted_printable(content), None),
        "binary" => (content.to_vec(), None),
        _ => {
            let too_long = has_line_longer_than(content, RAW_LINE_LIMIT)
                && !has_line_longer_than(raw, RAW_LINE_LIMIT);
            let eight_bit_in_7bit = encoding == "7bit" && !content.is_ascii() && raw.is_ascii();
            if too_long || eight_bit_in_7bit {
                (encode_quoted_printable(content), Some("quoted-printable"))
            } else {
                (content.to_vec(), None)
            }
        }
    }
}

/// Returns the content in a charset the insertion can be written in, and
/// whether the part must now be labelled `charset=utf-8`.
fn to_compatible_charset(
    content: Vec<u8>,
    charset: Option<&str>,
    insertion_is_ascii: bool,
) -> Result<(Vec<u8>, bool), TransformError> {
    match charset {
        None | Some("us-ascii" | "ascii") => Ok((content, !insertion_is_ascii)),
        Some("utf-8" | "utf8") => Ok((content, false)),
        Some(charset) if insertion_is_ascii && is_ascii_compatible(charset) => Ok((content, false)),
        Some(charset) => {
            let decode = charset_decoder(charset.as_bytes()).ok_or_else(|| {
                TransformError::UnsupportedCharset {
                    charset: charset.to_string(),
                }
            })?;
            Ok((decode(&content).into_bytes(), true))
        }
    }
}

/// Charsets in which ASCII text can be inserted as ASCII bytes.
fn is_ascii_compatible(charset: &str) -> bool {
    !["utf-16", "utf16", "utf-32", "utf32", "utf-7", "utf7"]
        .iter()
        .any(|prefix| charset.starts_with(prefix))
}

fn insert_into_plain(content: &[u8], insertion: &Insertion) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(content.len() + insertion.header.len() + insertion.footer.len() + 4);
    out.extend_from_slice(insertion.header.as_bytes());
    if !insertion.header.is_empty() && !insertion.header.ends_with('\n') {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(content);
    if !insertion.footer.is_empty() {
        let ended_with_break = content.ends_with(b"\n");
        if !content.is_empty() && !ended_with_break {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(insertion.footer.as_bytes());
        // Keep the body's shape: it ended with a line break, so does the result.
        if ended_with_break && !insertion.footer.ends_with('\n') {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// `footer` right before `</body>` (at the end without one): where the
/// tracking pixel goes.
pub(super) fn append_to_html(content: &[u8], footer: &str) -> Vec<u8> {
    insert_into_html(
        content,
        &Insertion {
            header: String::new(),
            footer: footer.to_owned(),
        },
    )
}

/// Header right after `<body ...>`, footer right before `</body>`; without
/// those tags, at the very start and end (before a final line break).
fn insert_into_html(content: &[u8], insertion: &Insertion) -> Vec<u8> {
    let header_at = find_body_open_tag_end(content).unwrap_or(0);
    let footer_at = rfind_ignore_case(content, b"</body")
        .filter(|at| *at >= header_at)
        .unwrap_or_else(|| content.len() - trailing_line_break_len(content));
    let footer_at = footer_at.max(header_at);
    let mut out =
        Vec::with_capacity(content.len() + insertion.header.len() + insertion.footer.len());
    out.extend_from_slice(&content[..header_at]);
    out.extend_from_slice(insertion.header.as_bytes());
    out.extend_from_slice(&content[header_at..footer_at]);
    out.extend_from_slice(insertion.footer.as_bytes());
    out.extend_from_slice(&content[footer_at..]);
    out
}

fn trailing_line_break_len(content: &[u8]) -> usize {
    if content.ends_with(b"\r\n") {
        2
    } else if content.ends_with(b"\n") {
        1
    } else {
        0
    }
}

/// The position just after the `>` of the first `<body` tag.
fn find_body_open_tag_end(content: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = find_ignore_case(&content[from..], b"<body") {
        let tag_start = from + found;
        let after_name = tag_start + b"<body".len();
        // `<bodyx` is another tag; `<body>` or `<body attr...>` is the one.
        match content.get(after_name) {
            Some(b'>' | b' ' | b'\t' | b'\r' | b'\n' | b'/') => {
                let close = memchr::memchr(b'>', &content[after_name..])?;
                return Some(after_name + close + 1);
            }
            _ => from = after_name,
        }
    }
    None
}

fn find_ignore_case(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

fn rfind_ignore_case(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .rposition(|w| w.eq_ignore_ascii_case(needle))
}

/// The Content-Type field with its charset parameter set to `utf-8`, all
/// else kept as written. An unreadable Content-Type becomes text/plain.
fn with_utf8_charset(data: &[u8], field: &Field) -> Vec<u8> {
    let bytes = &data[field.start..field.end];
    if parse_media_type(&field.unfolded_value(data)).is_none() {
        return replaced_field_value(data, field, "text/plain; charset=utf-8");
    }
    let value_offset = field.value_start - field.start;
    match find_param_value(bytes, value_offset, b"charset") {
        Some(range) => [&bytes[..range.start], b"utf-8", &bytes[range.end..]].concat(),
        None => {
            let line_break = trailing_line_break_len(bytes);
            let (value, ending) = bytes.split_at(bytes.len() - line_break);
            let value = trim_end_blanks(value);
            [value, b"; charset=utf-8", ending].concat()
        }
    }
}

fn trim_end_blanks(mut bytes: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// The byte range of the value of parameter `name` in a header field.
fn find_param_value(
    field: &[u8],
    value_offset: usize,
    name: &[u8],
) -> Option<std::ops::Range<usize>> {
    let mut in_quotes = false;
    let mut i = value_offset;
    while i < field.len() {
        match field[i] {
            b'\\' if in_quotes => i += 1,
            b'"' => in_quotes = !in_quotes,
            b';' if !in_quotes => {
                if let Some(range) = param_value_at(field, i + 1, name) {
                    return Some(range);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// If the parameter starting at `start` (after a `;`) is `name`, its value range.
fn param_value_at(field: &[u8], start: usize, name: &[u8]) -> Option<std::ops::Range<usize>> {
    let is_blank = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let name_start = start + field[start..].iter().take_while(|b| is_blank(b)).count();
    let name_end = name_start + name.len();
    if !field.get(name_start..name_end)?.eq_ignore_ascii_case(name) {
        return None;
    }
    let equals = name_end + field[name_end..].iter().take_while(|b| is_blank(b)).count();
    if field.get(equals) != Some(&b'=') {
        return None;
    }
    let value_start = equals
        + 1
        + field[equals + 1..]
            .iter()
            .take_while(|b| is_blank(b))
            .count();
    let value_len = if field.get(value_start) == Some(&b'"') {
        quoted_string_len(&field[value_start..])
    } else {
        field[value_start..]
            .iter()
            .take_while(|b| !is_blank(b) && **b != b';')
            .count()
    };
    Some(value_start..value_start + value_len)
}

/// Length of the quoted string at the start of `bytes`, quotes included.
fn quoted_string_len(bytes: &[u8]) -> usize {
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'"' => return i + 1,
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

/// `field` rewritten as `Name: value`, keeping its name and line ending.
pub(super) fn replaced_field_value(data: &[u8], field: &Field, value: &str) -> Vec<u8> {
    let ending = trailing_line_break_len(&data[field.start..field.end]);
    let mut out = data[field.name.clone()].to_vec();
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(&data[field.end - ending..field.end]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ins(header: &str, footer: &str) -> Insertion {
        Insertion::new(header, footer)
    }

    #[test]
    fn line_endings_of_configured_texts_become_crlf() {
        assert_eq!(ins("a\nb\r\nc\rd", "").header, "a\r\nb\r\nc\r\nd");
    }

    #[test]
    fn html_insertion_respects_body_tags_in_any_case() {
        let html = b"<html><BODY class=\"x\"><p>hi</p></Body></html>";
        let out = insert_into_html(html, &ins("<h>", "<f>"));
        assert_eq!(
            out,
            b"<html><BODY class=\"x\"><h><p>hi</p><f></Body></html>"
        );
    }

    #[test]
    fn html_without_body_gets_prepended_and_appended() {
        let out = insert_into_html(b"<p>hi</p>\r\n", &ins("<h>", "<f>"));
        assert_eq!(out, b"<h><p>hi</p><f>\r\n");
        let out = insert_into_html(b"<bodyguard>", &ins("<h>", ""));
        assert_eq!(out, b"<h><bodyguard>");
    }

    #[test]
    fn plain_insertion_keeps_line_structure() {
        let out = insert_into_plain(b"body", &ins("HEAD", "FOOT"));
        assert_eq!(out, b"HEAD\r\nbody\r\nFOOT");
        let out = insert_into_plain(b"body\r\n", &ins("", "FOOT"));
        assert_eq!(out, b"body\r\nFOOT\r\n");
    }

    #[test]
    fn charset_parameter_is_replaced_or_added() {
        let data = b"Content-Type: text/plain;\r\n charset=\"iso-8859-1\"; format=flowed\r\n";
        let field = Field {
            name: 0..12,
            start: 0,
            value_start: 13,
            end: data.len(),
        };
        assert_eq!(
            with_utf8_charset(data, &field),
            b"Content-Type: text/plain;\r\n charset=utf-8; format=flowed\r\n"
        );
        let data = b"Content-Type: text/plain; name=\"a;charset=x\"\r\n";
        let field = Field {
            name: 0..12,
            start: 0,
            value_start: 13,
            end: data.len(),
        };
        assert_eq!(
            with_utf8_charset(data, &field),
            b"Content-Type: text/plain; name=\"a;charset=x\"; charset=utf-8\r\n"
        );
    }

    #[test]
    fn seven_bit_part_with_8bit_content_becomes_quoted_printable() {
        let (body, encoding) = encode_transfer("é".as_bytes(), "7bit", b"");
        assert_eq!(encoding, Some("quoted-printable"));
        assert_eq!(body, b"=C3=A9");
        let (_, encoding) = encode_transfer("é".as_bytes(), "8bit", b"");
        assert_eq!(encoding, None);
        // 8-bit data the sender already put in a 7bit part is left alone.
        let (_, encoding) = encode_transfer("é!".as_bytes(), "7bit", "é".as_bytes());
        assert_eq!(encoding, None);
    }
}
