//! The request of `POST /api/inject/v1`: KumoMTA's schema, field for
//! field, plus our extensions under `"sendengine"`.
//!
//! Parsing goes field by field so that every refusal names the field it
//! is about (`recipients[3].email`, `content.attachments[0].data`): serde's
//! own errors for a nested value say only where in the text it failed.
//! Objects are closed where KumoMTA's are (`deny_unknown_fields`);
//! substitutions and metadata are open maps.
//!
//! KumoMTA fields that change nothing here are accepted so that its
//! requests work unchanged: `deferred_spool` (every message is on disk
//! before the answer, always), `deferred_generation` (messages are always
//! generated before the answer) and `trace_headers` (our `Received:` line
//! is always added at admission).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::admit::MAX_CONTROL_VALUE;
use crate::values::mailbox::is_mailbox;

/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;
/// A checked request.
#[derive(Debug)]
pub struct InjectRequest {
    pub envelope_sender: String,
    pub recipients: Vec<Recipient>,
    pub content: Content,
    pub substitutions: Map<String, Value>,
    pub dialect: Dialect,
    pub ours: Extensions,
}

/// One recipient: a message of its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub substitutions: Map<String, Value>,
    /// Carried into every event of this recipient.
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// `content`: a whole RFC 5322 message (a template itself), or the parts
/// to build one from.
#[derive(Debug)]
pub enum Content {
    Raw(String),
    Built(Box<Built>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Built {
    #[serde(default)]
    pub text_body: Option<String>,
    #[serde(default)]
    pub html_body: Option<String>,
    #[serde(default)]
    pub amp_html_body: Option<String>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub from: Option<Mailbox>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub reply_to: Option<Mailbox>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mailbox {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub data: String,
    pub content_type: String,
    #[serde(default)]
    pub content_id: Option<String>,
    #[serde(default)]
    pub file_name: Option<String>,
    #[serde(default)]
    pub base64: bool,
}

/// `template_dialect`: KumoMTA's `Jinja` (default) or `Static`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Jinja,
    Static,
}

/// `"sendengine": {...}`: what KumoMTA's schema has no place for.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extensions {
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub campaign: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

const FIELDS: &[&str] = &[
    "envelope_sender",
    "recipients",
    "content",
    "substitutions",
    "deferred_spool",
    "deferred_generation",
    "trace_headers",
    "template_dialect",
    "sendengine",
];

/// Parses and checks a request body (its size was checked before).
pub fn parse(body: &[u8], max_recipients: usize) -> Result<InjectRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("", format!("the body is not valid JSON: {e}")))?;
    let Value::Object(mut top) = value else {
        return Err(ApiError::bad_request("", "the body must be a JSON object"));
    };
    if let Some(unknown) = top.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(
            unknown,
            format!("unknown field; the request takes {}", FIELDS.join(", ")),
        ));
    }
    let envelope_sender: String = required(&mut top, "envelope_sender")?;
    if !envelope_sender.is_empty() && !is_mailbox(&envelope_sender) {
        return Err(ApiError::bad_request(
            "envelope_sender",
            format!("{envelope_sender:?} is not an address: write local@domain"),
        ));
    }
    let recipients = recipients(
        required::<Vec<Value>>(&mut top, "recipients")?,
        max_recipients,
    )?;
    let content = content(top.remove("content"))?;
    let substitutions = optional(&mut top, "substitutions")?.unwrap_or_default();
    for flag in ["deferred_spool", "deferred_generation"] {
        optional::<bool>(&mut top, flag)?;
    }
    optional::<Value>(&mut top, "trace_headers")?;
    let dialect = match optional::<String>(&mut top, "template_dialect")?.as_deref() {
        None | Some("Jinja") => Dialect::Jinja,
        Some("Static") => Dialect::Static,
        Some(other) => {
            return Err(ApiError::bad_request(
                "template_dialect",
                format!("{other:?} is not supported: use \"Jinja\" (the default) or \"Static\""),
            ));
        }
    };
    let ours: Extensions = optional(&mut top, "sendengine")?.unwrap_or_default();
    check_extensions(&ours)?;
    Ok(InjectRequest {
        envelope_sender,
        recipients,
        content,
        substitutions,
        dialect,
        ours,
    })
}

fn recipients(list: Vec<Value>, max: usize) -> Result<Vec<Recipient>, ApiError> {
    if list.is_empty() {
        return Err(ApiError::bad_request(
            "recipients",
            "is empty: give at least one",
        ));
    }
    if list.len() > max {
        return Err(ApiError::too_large(
            "recipients",
            format!(
                "{} recipients; at most {max} per request (http_in.max_recipients): split the request",
                list.len()
            ),
        ));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, v)| {
            let field = format!("recipients[{i}]");
            let r: Recipient = typed(v, &field)?;
            if !is_mailbox(&r.email) {
                return Err(ApiError::bad_request(
                    format!("{field}.email"),
                    format!("{:?} is not an address: write local@domain", r.email),
                ));
            }
            Ok(r)
        })
        .collect()
}

fn content(value: Option<Value>) -> Result<Content, ApiError> {
    match value {
        None => Err(ApiError::bad_request("content", "missing")),
        Some(Value::String(raw)) => Ok(Content::Raw(raw)),
        Some(v @ Value::Object(_)) => {
            let built: Built = typed(v, "content")?;
            if built.text_body.is_none() && built.html_body.is_none() {
                return Err(ApiError::bad_request(
                    "content",
                    "give text_body, html_body or both",
                ));
            }
            for name in built.headers.keys() {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                    return Err(ApiError::bad_request(
                        format!("content.headers[{name:?}]"),
                        "is not a header name (printable ASCII, no colon)",
                    ));
                }
            }
            for (field, mailbox) in [("from", &built.from), ("reply_to", &built.reply_to)] {
                if let Some(m) = mailbox
                    && !is_mailbox(&m.email)
                {
                    return Err(ApiError::bad_request(
                        format!("content.{field}.email"),
                        format!("{:?} is not an address: write local@domain", m.email),
                    ));
                }
            }
            Ok(Content::Built(Box::new(built)))
        }
        Some(_) => Err(ApiError::bad_request(
            "content",
            "must be a string (a whole message) or an object (its parts)",
        )),
    }
}

fn check_extensions(ours: &Extensions) -> Result<(), ApiError> {
    for (field, value, max) in [
        ("sendengine.channel", &ours.channel, MAX_CONTROL_VALUE),
        ("sendengine.campaign", &ours.campaign, MAX_CONTROL_VALUE),
        (
            "sendengine.idempotency_key",
            &ours.idempotency_key,
            MAX_IDEMPOTENCY_KEY,
        ),
    ] {
        if let Some(v) = value
            && (v.is_empty() || v.len() > max || v.chars().any(char::is_control))
        {
            return Err(ApiError::bad_request(
                field,
                format!("must have 1 to {max} bytes and no control characters"),
            ));
        }
    }
    Ok(())
}

fn required<T: DeserializeOwned>(top: &mut Map<String, Value>, field: &str) -> Result<T, ApiError> {
    match top.remove(field) {
        Some(v) => typed(v, field),
        None => Err(ApiError::bad_request(field, "missing")),
    }
}

fn optional<T: DeserializeOwned>(
    top: &mut Map<String, Value>,
    field: &str,
) -> Result<Option<T>, ApiError> {
    match top.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => typed(v, field).map(Some),
    }
}

/// `value` as a `T`; the error names `field`.
fn typed<T: DeserializeOwned>(value: Value, field: &str) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(field, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> String {
        parse(body.as_bytes(), 10).unwrap_err().field
    }

    #[test]
    fn kumomta_requests_parse() {
        let r = parse(
            br#"{"envelope_sender":"noreply@example.com","content":"Subject: hello\n\nHello there",
                "recipients":[{"email":"recipient@example.com"}]}"#,
            10,
        )
        .unwrap();
        assert!(matches!(r.content, Content::Raw(_)));
        assert_eq!(r.dialect, Dialect::Jinja);
    }

    #[test]
    fn refusals_name_the_field() {
        let ok_rcpt = r#""recipients":[{"email":"a@b.c"}]"#;
        let c = r#""content":"x""#;
        assert_eq!(field_of("[1]"), "");
        assert_eq!(
            field_of(&format!(r#"{{"envelope_sender":"a@b.c",{c}}}"#)),
            "recipients"
        );
        assert_eq!(
            field_of(&format!(
                r#"{{"envelope_sender":"a@b.c",{c},{ok_rcpt},"colour":1}}"#
            )),
            "colour"
        );
        assert_eq!(
            field_of(&format!(
                r#"{{"envelope_sender":"a@b.c",{c},"recipients":[{{"email":"a@b.c"}},{{"email":"nope"}}]}}"#
            )),
            "recipients[1].email"
        );
        assert_eq!(
            field_of(&format!(
                r#"{{"envelope_sender":"a@b.c",{c},"recipients":[{{"emial":"a@b.c"}}]}}"#
            )),
            "recipients[0]"
        );
        assert_eq!(
            field_of(&format!(
                r#"{{"envelope_sender":"a@b.c",{ok_rcpt},"content":{{"subject":"s"}}}}"#
            )),
            "content"
        );
        assert_eq!(
            field_of(&format!(
                r#"{{"envelope_sender":"a@b.c",{ok_rcpt},{c},"sendengine":{{"idempotency_key":""}}}}"#
            )),
            "sendengine.idempotency_key"
        );
        let many = format!(
            r#"{{"envelope_sender":"a@b.c",{c},"recipients":[{}]}}"#,
            [r#"{"email":"a@b.c"}"#; 11].join(",")
        );
        let e = parse(many.as_bytes(), 10).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::PAYLOAD_TOO_LARGE);
    }
}
