//! A minimal MIME structure reader for the transforms: it finds, by byte
//! offset into the original message, each part's header block (read by
//! `header`) and body. It decodes nothing; the transforms splice new
//! bytes into the original at these offsets so that everything they do not
//! touch stays byte-for-byte the same.

use std::ops::Range;

use super::TransformError;
use super::header::{HeaderBlock, line_end, parse_header_block};

/// Deepest multipart nesting accepted; real mail rarely goes past 5.
pub(super) const MAX_MIME_DEPTH: usize = 32;
/// Most MIME parts accepted in one message.
pub(super) const MAX_MIME_PARTS: usize = 10_000;

/// A parsed `Content-Type`-like value: `type/subtype; name=value; ...`.
#[derive(Debug, Clone)]
pub(super) struct MediaType {
    pub main: String,
    pub sub: String,
    /// Parameter names lowercased; values unquoted.
    pub params: Vec<(String, String)>,
}

impl MediaType {
    pub fn text_plain() -> Self {
        MediaType {
            main: "text".into(),
            sub: "plain".into(),
            params: Vec::new(),
        }
    }

    pub fn message_rfc822() -> Self {
        MediaType {
            main: "message".into(),
            sub: "rfc822".into(),
            params: Vec::new(),
        }
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `type/subtype; a=b; c="d"`. Returns `None` when there is no
/// `type/subtype`, so the caller falls back to the MIME default.
pub(super) fn parse_media_type(value: &str) -> Option<MediaType> {
    let mut pieces = split_params(value).into_iter();
    let kind = pieces.next()?;
    let (main, sub) = kind.split_once('/')?;
    let (main, sub) = (
        main.trim().to_ascii_lowercase(),
        sub.trim().to_ascii_lowercase(),
    );
    if main.is_empty() || sub.is_empty() {
        return None;
    }
    let params = pieces.filter_map(|p| parse_param(&p)).collect();
    Some(MediaType { main, sub, params })
}

/// The disposition type (lowercased) and whether a filename is present.
pub(super) fn parse_disposition(value: &str) -> (String, bool) {
    let mut pieces = split_params(value).into_iter();
    let kind = pieces
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let has_filename = pieces
        .filter_map(|p| parse_param(&p))
        .any(|(name, _)| name.starts_with("filename"));
    (kind, has_filename)
}

fn parse_param(piece: &str) -> Option<(String, String)> {
    let (name, value) = piece.split_once('=')?;
    let value = value.trim();
    let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => value.to_string(),
    };
    Some((name.trim().to_ascii_lowercase(), value))
}

/// Splits on `;` outside quoted strings.
fn split_params(value: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut escaped = false;
    for c in value.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            ';' if !in_quotes => {
                pieces.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    pieces.push(current);
    pieces
}

/// A message or body part, by offsets into the original bytes.
#[derive(Debug)]
pub(super) struct Part {
    pub header: HeaderBlock,
    /// End of the body; for a part inside a multipart, the line break before
    /// the next boundary delimiter is not included.
    pub body_end: usize,
    pub media_type: MediaType,
    /// `Content-Transfer-Encoding` lowercased, `7bit` when absent.
    pub transfer_encoding: String,
    /// Declared an attachment or carries a file name.
    pub is_attachment: bool,
    pub children: Vec<Part>,
}

/// Reads the MIME tree of a whole message.
pub(super) fn parse_message(data: &[u8]) -> Result<Part, TransformError> {
    let mut part_count = 0;
    parse_part(
        data,
        0..data.len(),
        MediaType::text_plain(),
        0,
        &mut part_count,
    )
}

/// Reads the MIME tree of a message embedded in a message/rfc822 part.
pub(super) fn parse_embedded(data: &[u8], span: Range<usize>) -> Result<Part, TransformError> {
    let mut part_count = 0;
    parse_part(data, span, MediaType::text_plain(), 0, &mut part_count)
}

fn parse_part(
    data: &[u8],
    span: Range<usize>,
    default_type: MediaType,
    depth: usize,
    part_count: &mut usize,
) -> Result<Part, TransformError> {
    *part_count += 1;
    if *part_count > MAX_MIME_PARTS {
        return Err(TransformError::TooManyParts {
            limit: MAX_MIME_PARTS,
        });
    }
    let header = parse_header_block(data, span.start, span.end);
    let value_of = |name: &str| header.field(data, name).map(|f| f.unfolded_value(data));
    let media_type = value_of("content-type")
        .and_then(|v| parse_media_type(&v))
        .unwrap_or(default_type);
    let transfer_encoding = value_of("content-transfer-encoding")
        .map(|v| v.to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "7bit".into());
    let (disposition, has_filename) = value_of("content-disposition")
        .map(|v| parse_disposition(&v))
        .unwrap_or_default();
    let is_attachment = disposition == "attachment"
        || has_filename
        || media_type.params.iter().any(|(n, _)| n.starts_with("name"));

    let mut part = Part {
        body_end: span.end,
        header,
        media_type,
        transfer_encoding,
        is_attachment,
        children: Vec::new(),
    };
    if part.media_type.main == "multipart" {
        if depth >= MAX_MIME_DEPTH {
            return Err(TransformError::TooDeep {
                limit: MAX_MIME_DEPTH,
            });
        }
        part.children = parse_children(data, &part, depth, part_count)?;
    }
    Ok(part)
}

fn parse_children(
    data: &[u8],
    parent: &Part,
    depth: usize,
    part_count: &mut usize,
) -> Result<Vec<Part>, TransformError> {
    let boundary =
        parent
            .media_type
            .param("boundary")
            .ok_or_else(|| TransformError::MissingBoundary {
                subtype: parent.media_type.sub.clone(),
                offset: parent.header.fields.first().map_or(0, |f| f.start),
            })?;
    if boundary.is_empty() {
        return Err(TransformError::MissingBoundary {
            subtype: parent.media_type.sub.clone(),
            offset: parent.header.fields.first().map_or(0, |f| f.start),
        });
    }
    let spans = child_spans(data, parent.header.body_start..parent.body_end, boundary);
    if spans.is_empty() {
        return Err(TransformError::NoDelimiter {
            boundary: boundary.to_string(),
        });
    }
    let child_default = if parent.media_type.sub == "digest" {
        MediaType::message_rfc822()
    } else {
        MediaType::text_plain()
    };
    spans
        .into_iter()
        .map(|span| parse_part(data, span, child_default.clone(), depth + 1, part_count))
        .collect()
}

/// The byte spans of the parts between `--boundary` delimiter lines. The line
/// break before a delimiter belongs to the delimiter (RFC 2046 §5.1.1). A
/// missing close delimiter is tolerated: the last part runs to the end.
fn child_spans(data: &[u8], body: Range<usize>, boundary: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut open_part: Option<usize> = None;
    let mut pos = body.start;
    while pos < body.end {
        let next = line_end(data, pos, body.end);
        if let Some(is_close) = delimiter_kind(&data[pos..next], boundary.as_bytes()) {
            if let Some(start) = open_part.take() {
                spans.push(start..line_break_start(data, start, pos));
            }
            if is_close {
                return spans;
            }
            open_part = Some(next);
        }
        pos = next;
    }
    if let Some(start) = open_part {
        spans.push(start..body.end);
    }
    spans
}

/// `Some(is_close)` when `line` is a delimiter line for `boundary`.
fn delimiter_kind(line: &[u8], boundary: &[u8]) -> Option<bool> {
    let rest = line.strip_prefix(b"--")?.strip_prefix(boundary)?;
    let (is_close, rest) = match rest.strip_prefix(b"--") {
        Some(after) => (true, after),
        None => (false, rest),
    };
    let only_padding = rest
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
    only_padding.then_some(is_close)
}

/// Where the line break ending the line before `delimiter` starts (never
/// before `part_start`).
fn line_break_start(data: &[u8], part_start: usize, delimiter: usize) -> usize {
    let mut end = delimiter;
    if end > part_start && data[end - 1] == b'\n' {
        end -= 1;
        if end > part_start && data[end - 1] == b'\r' {
            end -= 1;
        }
    }
    end
}
