//! UTF-8 in header fields, for a message that does not need SMTPUTF8:
//! unstructured fields (Subject, Comments, X-...) and the display names of
//! address fields become RFC 2047 encoded-words, so the header is 7-bit
//! and any relay takes it. A message with a UTF-8 address keeps its header
//! as it is: it needs SMTPUTF8 (RFC 6531) and encoding would not help.

use super::header::{Field, HeaderBlock};
use super::{Edits, encoded_words};

/// Fields holding addresses, whose display names may be encoded.
const ADDRESS_FIELDS: [&str; 10] = [
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
];

/// Structured fields left alone: encoded-words are not allowed in them
/// (RFC 2047 §5), and they do not carry display text.
const STRUCTURED_FIELDS: [&str; 9] = [
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "received",
    "return-path",
    "mime-version",
    "dkim-signature",
    "resent-date",
];

/// True when an address field holds a non-ASCII address (not just name).
pub(super) fn has_utf8_address(data: &[u8], header: &HeaderBlock) -> bool {
    address_fields(data, header).any(|field| {
        parsed_mailboxes(data, field)
            .is_none_or(|mailboxes| mailboxes.iter().any(|(_, address)| !address.is_ascii()))
    })
}

/// Rewrites each non-ASCII field that can carry encoded-words.
pub(super) fn encode_fields(data: &[u8], header: &HeaderBlock, edits: &mut Edits) {
    for field in &header.fields {
        let raw = &data[field.value_start..field.end];
        if raw.is_ascii() || std::str::from_utf8(raw).is_err() {
            continue;
        }
        let name = String::from_utf8_lossy(&data[field.name.clone()]).to_ascii_lowercase();
        let value = if ADDRESS_FIELDS.contains(&name.as_str()) {
            encoded_address_list(data, field)
        } else if STRUCTURED_FIELDS.contains(&name.as_str()) || name.starts_with("content-") {
            None
        } else {
            Some(encoded_words(&field.unfolded_value(data)))
        };
        if let Some(value) = value {
            let line = super::body::replaced_field_value(data, field, &value);
            edits.replace(field.start..field.end, line);
        }
    }
}

fn address_fields<'h>(
    data: &'h [u8],
    header: &'h HeaderBlock,
) -> impl Iterator<Item = &'h Field> + 'h {
    header.fields.iter().filter(move |field| {
        let raw = &data[field.value_start..field.end];
        !raw.is_ascii() && ADDRESS_FIELDS.iter().any(|name| field.is(data, name))
    })
}

/// `(display name, address)` of each mailbox, or `None` when the field
/// cannot be read as a plain list of mailboxes (groups included).
fn parsed_mailboxes(data: &[u8], field: &Field) -> Option<Vec<(String, String)>> {
    let mut text = b"To:".to_vec();
    text.extend_from_slice(&data[field.value_start..field.end]);
    if !text.ends_with(b"\n") {
        text.extend_from_slice(b"\r\n");
    }
    text.extend_from_slice(b"\r\n");
    let headers = mail_parser::MessageParser::new().parse_headers(&text)?;
    let mail_parser::Address::List(list) = headers.to()? else {
        return None;
    };
    list.iter()
        .map(|addr| {
            let address = addr.address.as_deref()?.trim().to_string();
            let name = addr.name.as_deref().unwrap_or_default().trim().to_string();
            Some((name, address))
        })
        .collect()
}

/// The address list with each non-ASCII display name encoded; `None` when
/// the field is not a plain list of mailboxes (left as it is).
fn encoded_address_list(data: &[u8], field: &Field) -> Option<String> {
    let mailboxes = parsed_mailboxes(data, field)?;
    let rendered: Vec<String> = mailboxes
        .iter()
        .map(|(name, address)| match name.as_str() {
            "" => format!("<{address}>"),
            name if name.is_ascii() => format!("\"{}\" <{address}>", name.replace('"', "\\\"")),
            name => format!("{} <{address}>", encoded_words(name)),
        })
        .collect();
    Some(rendered.join(",\r\n "))
}

#[cfg(test)]
mod tests {
    use super::super::header::parse_header_block;
    use super::*;

    fn encoded(header: &str) -> String {
        let data = header.as_bytes();
        let block = parse_header_block(data, 0, data.len());
        let mut edits = Edits::default();
        encode_fields(data, &block, &mut edits);
        String::from_utf8(edits.apply(data)).unwrap()
    }

    #[test]
    fn subject_and_display_names_become_encoded_words() {
        let out = encoded(
            "From: Café Ünï <news@example.com>\r\nTo: a@example.net, Zoë <z@example.net>\r\n\
             Subject: Grüße\r\nDate: x\r\n\r\n",
        );
        assert_eq!(
            out,
            "From: =?utf-8?b?Q2Fmw6kgw5xuw68=?= <news@example.com>\r\n\
             To: <a@example.net>,\r\n =?utf-8?b?Wm/Dqw==?= <z@example.net>\r\n\
             Subject: =?utf-8?b?R3LDvMOfZQ==?=\r\nDate: x\r\n\r\n"
        );
    }

    #[test]
    fn utf8_address_is_detected() {
        let data = b"From: J\xc3\xb6rg <j\xc3\xb6rg@example.com>\r\n\r\n";
        let block = parse_header_block(data, 0, data.len());
        assert!(has_utf8_address(data, &block));
        let data = "From: Jörg <jorg@example.com>\r\n\r\n".as_bytes();
        let block = parse_header_block(data, 0, data.len());
        assert!(!has_utf8_address(data, &block));
    }
}
