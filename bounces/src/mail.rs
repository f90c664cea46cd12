//! Turns raw bytes into what the bounce parser reads: LF-only text, the top
//! headers (unfolded) and the MIME parts as decoded text sections.
//!
//! MIME decoding is mail-parser's job; this module only flattens its tree and
//! marks which sections carry the returned original message, because the
//! addresses and codes in those must not be mistaken for the bounce's own.

use mail_parser::{MessageParser, MimeHeaders, PartType};

/// Largest message read; the rest is ignored (bounces returning a big
/// attachment carry everything useful at the start).
pub(crate) const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// Most MIME parts looked at in one message.
const MAX_SECTIONS: usize = 64;

/// What a section holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SectionKind {
    /// Human-readable text of the bounce itself.
    Text,
    /// A `message/delivery-status` part (RFC 3464 fields).
    DeliveryStatus,
    /// A `message/feedback-report` part (RFC 5965 fields).
    FeedbackReport,
    /// The returned original message or its headers.
    Returned,
}

#[derive(Debug, Clone)]
pub(crate) struct Section {
    pub kind: SectionKind,
    pub text: String,
}

/// A message ready for the bounce parser.
#[derive(Debug, Default)]
pub(crate) struct Mail {
    /// Top-level headers, names lowercased, values unfolded.
    pub headers: Vec<(String, String)>,
    /// Decoded Subject.
    pub subject: String,
    /// Top-level Content-Type, lowercased (with parameters).
    pub content_type: String,
    pub sections: Vec<Section>,
}

impl Mail {
    pub(crate) fn parse(raw: &[u8]) -> Mail {
        let raw = raw.get(..MAX_MESSAGE_BYTES).unwrap_or(raw);
        let text = normalize_newlines(raw);
        let (header_block, body) = split_header_body(&text);
        let headers = parse_header_block(header_block);
        let mut mail = Mail {
            content_type: header_value(&headers, "content-type")
                .unwrap_or_default()
                .to_ascii_lowercase(),
            subject: header_value(&headers, "subject")
                .unwrap_or_default()
                .to_string(),
            headers,
            sections: Vec::new(),
        };
        match mime_sections(&text) {
            Some((subject, sections)) => {
                if let Some(subject) = subject {
                    mail.subject = subject;
                }
                mail.sections = sections;
            }
            None => mail.sections.push(Section {
                kind: SectionKind::Text,
                text: body.to_string(),
            }),
        }
        if mail.sections.is_empty() {
            mail.sections.push(Section {
                kind: SectionKind::Text,
                text: body.to_string(),
            });
        }
        mail
    }

    /// First top-level header of that (lowercase) name.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    /// Text of every section of one kind, joined.
    pub(crate) fn text_of(&self, kind: SectionKind) -> String {
        let mut out = String::new();
        for section in self.sections.iter().filter(|s| s.kind == kind) {
            out.push_str(&section.text);
            out.push('\n');
        }
        out
    }
}

pub(crate) fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// CRLF and lone CR become LF, invalid UTF-8 becomes U+FFFD: the three
/// line-ending variants of one bounce then read the same.
pub(crate) fn normalize_newlines(raw: &[u8]) -> String {
    // Copies the runs between CRs whole: most bounces are LF-only, and a
    // byte-at-a-time loop was a third of the time spent on a 100 KB one.
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.iter().position(|&b| b == b'\r') {
        out.extend_from_slice(&rest[..at]);
        out.push(b'\n');
        rest = &rest[at + 1..];
        if let Some(after_lf) = rest.strip_prefix(b"\n") {
            rest = after_lf;
        }
    }
    out.extend_from_slice(rest);
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Splits at the first empty line.
pub(crate) fn split_header_body(text: &str) -> (&str, &str) {
    match text.find("\n\n") {
        Some(at) => (&text[..at], &text[at + 2..]),
        None => (text, ""),
    }
}

/// Header lines into (lowercase name, unfolded value) pairs; lines that are
/// not headers (mbox "From " lines, garbage) are skipped.
pub(crate) fn parse_header_block(block: &str) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            continue;
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    headers
}

/// The decoded subject and the sections of a MIME message, or None when
/// mail-parser cannot read it.
///
/// mail-parser 0.11.9 reaches a `debug_assert!(false, "Invalid part ID,
/// could not find multipart.")` on some malformed multiparts (found by
/// fuzzing: `tests/fuzz-regressions/`). Release builds compile it out; in
/// builds with debug assertions it panics, and a panic here must not take
/// the caller down: the message is then read as plain text.
fn mime_sections(text: &str) -> Option<(Option<String>, Vec<Section>)> {
    std::panic::catch_unwind(|| {
        let message = MessageParser::default().parse(text.as_bytes())?;
        let mut sections = Vec::new();
        collect_sections(&message, &mut sections);
        Some((message.subject().map(str::to_string), sections))
    })
    .ok()
    .flatten()
}

fn collect_sections(message: &mail_parser::Message<'_>, sections: &mut Vec<Section>) {
    for part in message.parts.iter() {
        if sections.len() >= MAX_SECTIONS {
            return;
        }
        let content_type = part
            .content_type()
            .map(|ct| format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("")))
            .unwrap_or_default()
            .to_ascii_lowercase();
        let section = match &part.body {
            PartType::Text(text) => Some(section_for(&content_type, text.to_string())),
            PartType::Html(html) => Some(section_for(&content_type, strip_html(html))),
            PartType::Binary(bytes) | PartType::InlineBinary(bytes) => is_textual(&content_type)
                .then(|| section_for(&content_type, String::from_utf8_lossy(bytes).into_owned())),
            PartType::Message(inner) => Some(Section {
                kind: SectionKind::Returned,
                text: normalize_newlines(inner.raw_message()),
            }),
            PartType::Multipart(_) => None,
        };
        sections.extend(section);
    }
}

fn section_for(content_type: &str, text: String) -> Section {
    let kind = match content_type {
        "message/delivery-status" | "message/global-delivery-status" => SectionKind::DeliveryStatus,
        "message/feedback-report" => SectionKind::FeedbackReport,
        "text/rfc822-headers"
        | "message/rfc822-headers"
        | "message/global-headers"
        | "message/partial" => SectionKind::Returned,
        _ => SectionKind::Text,
    };
    Section { kind, text }
}

fn is_textual(content_type: &str) -> bool {
    content_type.is_empty()
        || content_type.starts_with("text/")
        || content_type.starts_with("message/")
}

/// Crude tag removal: enough to read the words of an HTML bounce.
fn strip_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines_are_normalized() {
        assert_eq!(normalize_newlines(b"a\r\nb\rc\n\r\n"), "a\nb\nc\n\n");
        assert_eq!(normalize_newlines(b"\xff\r"), "\u{fffd}\n");
    }

    #[test]
    fn headers_are_unfolded_and_lowercased() {
        let headers = parse_header_block("From MAILER-DAEMON x\nSubject: a\n  b\nX-Y: z");
        assert_eq!(
            headers,
            vec![("subject".into(), "a b".into()), ("x-y".into(), "z".into())]
        );
    }
}
