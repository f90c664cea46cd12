//! Admission's message transforms, applied once before DKIM: the user
//! group's plain-text and HTML header/footer go into the message's text
//! parts (MIME-aware, see `body`), X-Mailer is set and the From header is
//! replaced when the delivery server enforces one. Then `seven_bit`
//! re-encodes what a relay without 8BITMIME could not take (`transport`).
//!
//! The transforms edit the original bytes in place (by offsets from
//! `header` and `mime`) so that every header, boundary and part they do not
//! touch is kept byte-for-byte. Input and output use CRLF line endings.
//!
//! This is the transform step of admission (`admit`), but it stays a
//! top-level module: it depends on no other module of the crate, while
//! the configuration (`tenancy`) holds a `Decoration` and delivery and
//! bounce intake read header fields with `header`; under `admit/` each of
//! those would be an import cycle.

mod body;
mod codec;
pub(crate) mod header;
mod header_words;
mod mime;
mod transport;

use std::ops::Range;

use base64::Engine as _;

use body::{Insertion, replaced_field_value};
pub use header::header_value;
use header::{HeaderBlock, parse_header_block};
use mime::{Part, parse_message};
pub use transport::seven_bit;

/// Longest X-Mailer or From value accepted, so the field stays well under
/// the 998-octet line limit.
pub const MAX_HEADER_VALUE_LEN: usize = 900;
/// Soft header line length (RFC 5322 §2.1.1) past which a new From is folded.
const FOLD_LINE_LEN: usize = 78;
/// Bytes of UTF-8 per RFC 2047 encoded-word: 45 bytes give 60 base64
/// characters, under the 75-character encoded-word limit.
const ENCODED_WORD_BYTES: usize = 45;

/// What a user group and delivery server add to each message.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Decoration {
    pub text_header: String,
    pub text_footer: String,
    pub html_header: String,
    pub html_footer: String,
    /// Value for X-Mailer; `None` or empty leaves the header alone.
    pub x_mailer: Option<String>,
    /// Full From value to enforce, e.g. `News <news@example.com>`; `None` or
    /// empty leaves the header alone.
    pub from: Option<String>,
}

impl Decoration {
    /// True when `decorate` would change nothing.
    pub fn is_empty(&self) -> bool {
        self.text_header.is_empty()
            && self.text_footer.is_empty()
            && self.html_header.is_empty()
            && self.html_footer.is_empty()
            && non_empty(&self.x_mailer).is_none()
            && non_empty(&self.from).is_none()
    }

    /// Checks the header values; `decorate` does the same, this lets
    /// configuration be refused when it is loaded rather than per message.
    pub fn validate(&self) -> Result<(), TransformError> {
        if let Some(value) = non_empty(&self.x_mailer) {
            check_header_value("X-Mailer", value)?;
        }
        if let Some(value) = non_empty(&self.from) {
            check_header_value("From", value)?;
        }
        Ok(())
    }
}

/// Why a message cannot be transformed. The caller refuses the message with
/// 554 5.6.0 and this text, so each says what is wrong with the message.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error(
        "multipart/{subtype} part at byte {offset} has no boundary parameter, so its parts cannot be found"
    )]
    MissingBoundary { subtype: String, offset: usize },
    #[error("multipart body has no delimiter line \"--{boundary}\" for its declared boundary")]
    NoDelimiter { boundary: String },
    #[error("MIME parts are nested more than {limit} levels deep")]
    TooDeep { limit: usize },
    #[error("message has more than {limit} MIME parts")]
    TooManyParts { limit: usize },
    #[error(
        "a text part declares Content-Transfer-Encoding base64 but its body is not valid base64"
    )]
    InvalidBase64,
    #[error(
        "a text part uses Content-Transfer-Encoding \"{encoding}\"; only 7bit, 8bit, binary, quoted-printable and base64 can carry the added header/footer"
    )]
    UnsupportedTransferEncoding { encoding: String },
    #[error(
        "a text part uses charset \"{charset}\", which cannot be converted to UTF-8 for the non-ASCII header/footer"
    )]
    UnsupportedCharset { charset: String },
    #[error("a header field contains a NUL byte, which RFC 5322 does not allow; remove it")]
    NulInHeader,
    #[error("the configured {header} value cannot be used: {reason}")]
    InvalidDecoration {
        header: &'static str,
        reason: String,
    },
}

/// Applies `decoration` to `message` (CRLF line endings) and returns the new
/// message. An empty decoration returns the input unchanged without parsing.
pub fn decorate(message: &[u8], decoration: &Decoration) -> Result<Vec<u8>, TransformError> {
    if decoration.is_empty() {
        return Ok(message.to_vec());
    }
    decoration.validate()?;
    let top = parse_header_block(message, 0, message.len());
    let mut edits = Edits::default();
    if let Some(from) = non_empty(&decoration.from) {
        set_header(message, &top, "From", &from_field_value(from), &mut edits);
    }
    if let Some(x_mailer) = non_empty(&decoration.x_mailer) {
        set_header(
            message,
            &top,
            "X-Mailer",
            &unstructured_value(x_mailer),
            &mut edits,
        );
    }
    let text = Insertion::new(&decoration.text_header, &decoration.text_footer);
    let html = Insertion::new(&decoration.html_header, &decoration.html_footer);
    if !(text.is_empty() && html.is_empty()) {
        let root = parse_message(message)?;
        body::decorate_bodies(message, &root, &text, &html, &mut edits)?;
    }
    Ok(edits.apply(message))
}

/// Applies `edit` to the decoded HTML of the message's HTML parts (the
/// parts `decorate` puts the HTML footer in) and encodes each again as it
/// was: the tracking rewrite. `edit` must add ASCII only. `None` when the
/// message has no such part, so the caller keeps its bytes.
pub fn edit_html(
    message: &[u8],
    edit: &mut dyn FnMut(&[u8]) -> Vec<u8>,
) -> Result<Option<Vec<u8>>, TransformError> {
    let root = parse_message(message)?;
    let mut edits = Edits::default();
    match body::edit_html_bodies(message, &root, edit, &mut edits)? {
        0 => Ok(None),
        _ => Ok(Some(edits.apply(message))),
    }
}

/// `footer` added to decoded HTML right before `</body>`, or at the end.
pub fn append_to_html(content: &[u8], footer: &str) -> Vec<u8> {
    body::append_to_html(content, footer)
}

/// The address in the From header. `None` when there is no From, more than
/// one From field, or more than one mailbox: a sender-domain check must not
/// pick one of several senders while the reader's client shows another.
pub fn from_address(message: &[u8]) -> Option<String> {
    // Only the From field goes to mail-parser: parsing the whole header
    // (our Received line included) for it was 2% of the daemon's CPU.
    let top = parse_header_block(message, 0, message.len());
    let mut from_fields = top.fields.iter().filter(|f| f.is(message, "From"));
    let from = from_fields.next()?;
    if from_fields.next().is_some() {
        return None;
    }
    let mut field = message[from.start..from.end].to_vec();
    if !field.ends_with(b"\n") {
        field.extend_from_slice(b"\r\n");
    }
    field.extend_from_slice(b"\r\n");
    let headers = mail_parser::MessageParser::new().parse_headers(&field)?;
    let mailboxes: Vec<&mail_parser::Addr> = match headers.from()? {
        mail_parser::Address::List(list) => list.iter().collect(),
        mail_parser::Address::Group(groups) => {
            groups.iter().flat_map(|g| g.addresses.iter()).collect()
        }
    };
    match mailboxes.as_slice() {
        [only] => Some(only.address()?.trim().to_string()),
        _ => None,
    }
}

/// The lowercased domain of the From address, for the sender-domain check.
pub fn from_domain(message: &[u8]) -> Option<String> {
    let address = from_address(message)?;
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    (!domain.is_empty()).then_some(domain)
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

fn check_header_value(header: &'static str, value: &str) -> Result<(), TransformError> {
    let reason = if value.contains(['\r', '\n']) {
        "it contains a line break".to_string()
    } else if value.len() > MAX_HEADER_VALUE_LEN {
        format!("it is longer than {MAX_HEADER_VALUE_LEN} bytes")
    } else if value.chars().any(|c| c.is_control() && c != '\t') {
        "it contains a control character".to_string()
    } else {
        return Ok(());
    };
    Err(TransformError::InvalidDecoration { header, reason })
}

/// Replaces the first `name` field with `value` and removes any others, or
/// adds the field at the end of the header when there is none.
fn set_header(data: &[u8], top: &HeaderBlock, name: &str, value: &str, edits: &mut Edits) {
    let mut existing = top.fields.iter().filter(|f| f.is(data, name));
    match existing.next() {
        Some(first) => {
            edits.replace(
                first.start..first.end,
                replaced_field_value(data, first, value),
            );
            for duplicate in existing {
                edits.replace(duplicate.start..duplicate.end, Vec::new());
            }
        }
        None => edits.insert_fields(top, format!("{name}: {value}\r\n").into_bytes()),
    }
}

/// The From value to write: a non-ASCII display name becomes RFC 2047
/// encoded-words, and a long value is folded before the `<address>`.
fn from_field_value(from: &str) -> String {
    let value = match from.rsplit_once('<') {
        Some((name, address)) if !name.is_ascii() => {
            let name = name.trim().trim_matches('"');
            format!("{} <{address}", encoded_words(name))
        }
        _ => from.to_string(),
    };
    let too_long = "From: ".len() + value.len() > FOLD_LINE_LEN;
    match value.rsplit_once(" <") {
        Some((name, address)) if too_long && !name.is_empty() => format!("{name}\r\n <{address}"),
        _ => value,
    }
}

/// An unstructured header value, RFC 2047-encoded when not ASCII.
fn unstructured_value(value: &str) -> String {
    if value.is_ascii() {
        value.to_string()
    } else {
        encoded_words(value)
    }
}

/// `=?utf-8?b?...?=` words, cut at character boundaries and folded.
fn encoded_words(text: &str) -> String {
    let mut words = Vec::new();
    let mut chunk_start = 0;
    let mut chunk_end = 0;
    for (at, c) in text.char_indices() {
        if at + c.len_utf8() - chunk_start > ENCODED_WORD_BYTES {
            words.push(encoded_word(&text[chunk_start..chunk_end]));
            chunk_start = chunk_end;
        }
        chunk_end = at + c.len_utf8();
    }
    if chunk_end > chunk_start {
        words.push(encoded_word(&text[chunk_start..chunk_end]));
    }
    words.join("\r\n ")
}

fn encoded_word(text: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(text);
    format!("=?utf-8?b?{encoded}?=")
}

/// Byte-range replacements on the original message, applied in one pass.
#[derive(Default)]
struct Edits {
    edits: Vec<(Range<usize>, Vec<u8>)>,
    /// Header blocks (by `fields_end`) whose open last line got its CRLF.
    closed_lines: Vec<usize>,
}

impl Edits {
    fn replace(&mut self, range: Range<usize>, bytes: Vec<u8>) {
        self.edits.push((range, bytes));
    }

    /// Adds complete fields (each ending in CRLF) after the block's fields.
    fn insert_fields(&mut self, block: &HeaderBlock, fields: Vec<u8>) {
        let mut bytes = self.close_last_line(block);
        bytes.extend_from_slice(&fields);
        self.replace(block.fields_end..block.fields_end, bytes);
    }

    /// Replaces a part's body; adds the empty line a header-only part lacks.
    fn replace_body(&mut self, part: &Part, body: Vec<u8>) {
        let mut bytes = Vec::new();
        if !part.header.has_separator {
            bytes = self.close_last_line(&part.header);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(&body);
        self.replace(part.header.body_start..part.body_end, bytes);
    }

    /// A CRLF if the block's last field has no line break yet (once).
    fn close_last_line(&mut self, block: &HeaderBlock) -> Vec<u8> {
        if !block.last_line_open || self.closed_lines.contains(&block.fields_end) {
            return Vec::new();
        }
        self.closed_lines.push(block.fields_end);
        b"\r\n".to_vec()
    }

    /// The message with all edits applied. Edits at the same position keep
    /// the order they were made in (fields before the body that follows).
    fn apply(mut self, data: &[u8]) -> Vec<u8> {
        self.edits.sort_by_key(|(range, _)| range.start);
        let added: usize = self.edits.iter().map(|(_, bytes)| bytes.len()).sum();
        let mut out = Vec::with_capacity(data.len() + added);
        let mut copied_to = 0;
        for (range, bytes) in self.edits {
            debug_assert!(range.start >= copied_to, "overlapping transform edits");
            if range.start < copied_to {
                continue;
            }
            out.extend_from_slice(&data[copied_to..range.start]);
            out.extend_from_slice(&bytes);
            copied_to = range.end;
        }
        out.extend_from_slice(&data[copied_to..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_from_name_is_encoded_and_long_from_folded() {
        assert_eq!(
            from_field_value("News <n@example.com>"),
            "News <n@example.com>"
        );
        let value = from_field_value("Café <n@example.com>");
        assert_eq!(value, "=?utf-8?b?Q2Fmw6k=?= <n@example.com>");
        let long = format!("{} <n@example.com>", "N".repeat(80));
        assert_eq!(
            from_field_value(&long),
            format!("{}\r\n <n@example.com>", "N".repeat(80))
        );
    }

    #[test]
    fn encoded_words_stay_short_and_split_on_characters() {
        let words = encoded_words(&"é".repeat(100));
        for word in words.split("\r\n ") {
            assert!(word.len() <= 75, "{word}");
        }
        assert_eq!(words.split("\r\n ").count(), 5);
    }

    #[test]
    fn header_injection_is_refused() {
        let decoration = Decoration {
            x_mailer: Some("x\r\nBcc: victim@example.com".into()),
            ..Decoration::default()
        };
        let err = decorate(b"Subject: a\r\n\r\nb", &decoration).unwrap_err();
        assert!(err.to_string().contains("line break"), "{err}");
    }

    #[test]
    fn html_edits_keep_lines_under_998_octets() {
        let line = format!("<a href=\"https://x.example/\">{}</a>", "y".repeat(950));
        let message = format!(
            "Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nplain {line}\r\n--b\r\nContent-Type: text/html\r\n\r\n{line}\r\n--b--\r\n"
        );
        let longer = |html: &[u8]| {
            String::from_utf8_lossy(html)
                .replace(
                    "https://x.example/",
                    &format!("https://t.example/c/{}", "z".repeat(60)),
                )
                .into_bytes()
        };
        let out = edit_html(message.as_bytes(), &mut { longer })
            .unwrap()
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.lines().all(|l| l.len() <= 998), "{text}");
        assert!(text.contains(
            "Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n"
        ));
        assert!(
            text.contains(&format!("plain {line}")),
            "the plain part is not edited"
        );
        assert_eq!(
            edit_html(b"Subject: x\r\n\r\nplain\r\n", &mut |h: &[u8]| h.to_vec()).unwrap(),
            None
        );
    }

    #[test]
    fn header_only_message_gets_separator_before_new_body() {
        let decoration = Decoration {
            text_footer: "FOOT".into(),
            x_mailer: Some("M".into()),
            ..Decoration::default()
        };
        let out = decorate(b"Subject: a", &decoration).unwrap();
        assert_eq!(out, b"Subject: a\r\nX-Mailer: M\r\n\r\nFOOT");
    }
}
