//! One message per recipient from a request's `content`: templates in
//! Jinja syntax (minijinja, as KumoMTA) compiled once per request and
//! rendered per recipient; `content` objects built into MIME with
//! mail-builder.
//!
//! The variables of a render are KumoMTA's: the request's `substitutions`,
//! then `email` and `name` of the recipient, then the recipient's own
//! `substitutions` over them. Templates are compiled before any message
//! is made, so a syntax error refuses the request (400 naming the field);
//! an error while rendering fails that recipient only. Each render runs on
//! a fuel budget, so a template cannot loop for ever.

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use mail_builder::mime::MimePart;
use minijinja::Environment;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::request::{Attachment, Built, Content, Dialect, Recipient};

/// Instructions one render may run: a 10 KB template with a few loops
/// takes thousands; this stops runaway loops, not real templates.
const FUEL_PER_RENDER: u64 = 5_000_000;

/// A request's content, ready to render per recipient.
pub struct Compiled {
    env: Environment<'static>,
    dialect: Dialect,
    shape: Shape,
}

enum Shape {
    Raw(String),
    Built(Parts),
}

/// A `content` object with its attachments decoded once.
struct Parts {
    text: Option<String>,
    html: Option<String>,
    amp: Option<String>,
    /// (name, template) in the order they are written: From, Reply-To,
    /// Subject, then the `headers` map.
    headers: Vec<(String, String)>,
    has_to: bool,
    attachments: Vec<Decoded>,
}

struct Decoded {
    content_type: String,
    content_id: Option<String>,
    file_name: Option<String>,
    bytes: Vec<u8>,
}

/// Template names, which are also the fields errors name.
const RAW: &str = "content";
const TEXT: &str = "content.text_body";
/// `.html` turns on minijinja's HTML auto-escaping, as in KumoMTA.
const HTML: &str = "content.html_body.html";
const AMP: &str = "content.amp_html_body.html";

/// Compiles the templates of `content`; a syntax error names its field.
pub fn compile(content: Content, dialect: Dialect) -> Result<Compiled, ApiError> {
    let mut env = Environment::new();
    env.set_fuel(Some(FUEL_PER_RENDER));
    let mut add = |name: String, source: &str| -> Result<(), ApiError> {
        if dialect == Dialect::Static {
            return Ok(());
        }
        let field = name.trim_end_matches(".html").to_owned();
        env.add_template_owned(name, source.to_owned())
            .map_err(|e| ApiError::bad_request(field, format!("template error: {e:#}")))
    };
    let shape = match content {
        Content::Raw(raw) => {
            // Line ends made CRLF once here, not in every rendered copy:
            // a render then has bare LFs only where a value brought them.
            let raw = String::from_utf8(crate::amqp_in::message::crlf(raw.into_bytes()))
                .expect("a CR before each LF keeps UTF-8 valid");
            add(RAW.into(), &raw)?;
            Shape::Raw(raw)
        }
        Content::Built(built) => {
            let parts = parts(*built)?;
            for (name, body) in [(TEXT, &parts.text), (HTML, &parts.html), (AMP, &parts.amp)] {
                if let Some(body) = body {
                    add(name.into(), body)?;
                }
            }
            for (name, value) in &parts.headers {
                add(header_template(name), value)?;
            }
            Shape::Built(parts)
        }
    };
    Ok(Compiled {
        env,
        dialect,
        shape,
    })
}

impl Compiled {
    /// The message for one recipient (CRLF line ends), or why it could
    /// not be made.
    pub fn render(
        &self,
        recipient: &Recipient,
        globals: &Map<String, Value>,
    ) -> Result<Vec<u8>, String> {
        let vars = variables(recipient, globals);
        match &self.shape {
            Shape::Raw(raw) => {
                let text = self.expand(RAW, raw, &vars)?;
                Ok(crate::amqp_in::message::crlf(text.into_bytes()))
            }
            Shape::Built(parts) => self.build(parts, recipient, &vars),
        }
    }

    fn build(&self, parts: &Parts, recipient: &Recipient, vars: &Value) -> Result<Vec<u8>, String> {
        let mut builder = MessageBuilder::new();
        for (name, value) in &parts.headers {
            let value = self.expand(&header_template(name), value, vars)?;
            // Address headers are written as given (an encoded word would
            // break the address); the others are encoded where not ASCII.
            builder = if is_address_header(name) {
                builder.header(name.clone(), Raw::new(value))
            } else {
                builder.header(name.clone(), Text::new(value))
            };
        }
        if !parts.has_to {
            let name = recipient.name.clone().filter(|n| !n.is_empty());
            builder = builder.to(Address::new_address(name, recipient.email.clone()));
        }
        let mut alternatives = Vec::new();
        if let Some(text) = &parts.text {
            alternatives.push(MimePart::new("text/plain", self.expand(TEXT, text, vars)?));
        }
        if let Some(amp) = &parts.amp {
            alternatives.push(MimePart::new(
                "text/x-amp-html",
                self.expand(AMP, amp, vars)?,
            ));
        }
        if let Some(html) = &parts.html {
            alternatives.push(MimePart::new("text/html", self.expand(HTML, html, vars)?));
        }
        let body = with_attachments(
            one_or_many("multipart/alternative", alternatives),
            &parts.attachments,
        );
        builder
            .body(body)
            .write_to_vec()
            .map_err(|e| format!("the message could not be built: {e}"))
    }

    /// One template rendered with `vars` (or the text itself, `Static`).
    fn expand(&self, name: &str, source: &str, vars: &Value) -> Result<String, String> {
        if self.dialect == Dialect::Static {
            return Ok(source.to_owned());
        }
        let field = name.trim_end_matches(".html");
        self.env
            .get_template(name)
            .and_then(|t| t.render(vars))
            .map_err(|e| format!("template error in {field}: {e:#}"))
    }
}

/// Headers in writing order, from/reply_to as mailboxes (templates too).
fn parts(built: Built) -> Result<Parts, ApiError> {
    let mut headers = Vec::new();
    for (name, mailbox) in [("From", &built.from), ("Reply-To", &built.reply_to)] {
        if let Some(m) = mailbox {
            let value = match m.name.as_deref().filter(|n| !n.is_empty()) {
                Some(display) => format!("\"{}\" <{}>", display.replace(['"', '\\'], ""), m.email),
                None => format!("<{}>", m.email),
            };
            headers.push((name.to_owned(), value));
        }
    }
    if let Some(subject) = built.subject {
        headers.push(("Subject".to_owned(), subject));
    }
    let has_to = built.headers.keys().any(|k| k.eq_ignore_ascii_case("to"));
    for (name, value) in built.headers {
        let replaced = ["from", "reply-to", "subject"]
            .contains(&name.to_ascii_lowercase().as_str())
            && headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name));
        if !replaced {
            headers.push((name, value));
        }
    }
    let attachments = built
        .attachments
        .into_iter()
        .enumerate()
        .map(|(i, a)| decode(i, a))
        .collect::<Result<_, _>>()?;
    Ok(Parts {
        text: built.text_body,
        html: built.html_body,
        amp: built.amp_html_body,
        headers,
        has_to,
        attachments,
    })
}

fn decode(index: usize, a: Attachment) -> Result<Decoded, ApiError> {
    use base64::Engine as _;
    let field = |f: &str| format!("content.attachments[{index}].{f}");
    if !a.content_type.contains('/') || a.content_type.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            field("content_type"),
            format!(
                "{:?} is not a MIME type (e.g. \"image/png\")",
                a.content_type
            ),
        ));
    }
    let bytes = if a.base64 {
        let compact: String = a
            .data
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|e| ApiError::bad_request(field("data"), format!("is not base64: {e}")))?
    } else {
        a.data.into_bytes()
    };
    Ok(Decoded {
        content_type: a.content_type,
        content_id: a.content_id,
        file_name: a.file_name,
        bytes,
    })
}

/// The text parts, wrapped with the inline attachments in
/// multipart/related and with the others in multipart/mixed.
fn with_attachments<'a>(text: MimePart<'a>, attachments: &'a [Decoded]) -> MimePart<'a> {
    let part = |a: &'a Decoded| MimePart::new(a.content_type.as_str(), a.bytes.as_slice());
    let mut related = vec![text];
    let mut mixed = Vec::new();
    for a in attachments {
        match &a.content_id {
            Some(cid) => {
                related.push(part(a).inline().cid(cid.as_str()));
            }
            None => {
                let name = a.file_name.as_deref().unwrap_or("attachment");
                mixed.push(part(a).attachment(name));
            }
        }
    }
    let related = one_or_many("multipart/related", related);
    if mixed.is_empty() {
        return related;
    }
    mixed.insert(0, related);
    MimePart::new("multipart/mixed", mixed)
}

fn one_or_many<'a>(kind: &'static str, mut parts: Vec<MimePart<'a>>) -> MimePart<'a> {
    if parts.len() == 1 {
        parts.remove(0)
    } else {
        MimePart::new(kind, parts)
    }
}

fn is_address_header(name: &str) -> bool {
    ["from", "reply-to", "to", "cc", "sender"].contains(&name.to_ascii_lowercase().as_str())
}

fn header_template(name: &str) -> String {
    format!("content.headers[{name}]")
}

/// Globals, then `email` and `name`, then the recipient's substitutions.
fn variables(recipient: &Recipient, globals: &Map<String, Value>) -> Value {
    let mut vars = globals.clone();
    vars.insert("email".into(), recipient.email.clone().into());
    if let Some(name) = &recipient.name {
        vars.insert("name".into(), name.clone().into());
    }
    for (k, v) in &recipient.substitutions {
        vars.insert(k.clone(), v.clone());
    }
    Value::Object(vars)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_in::request;

    fn request(body: &str) -> request::InjectRequest {
        request::parse(body.as_bytes(), 100).unwrap()
    }

    fn first(r: &request::InjectRequest, compiled: &Compiled) -> String {
        String::from_utf8(compiled.render(&r.recipients[0], &r.substitutions).unwrap()).unwrap()
    }

    #[test]
    fn raw_content_is_a_template_with_kumomta_variables() {
        let mut r = request(
            r#"{"envelope_sender":"a@b.c","content":"To: \"{{ name }}\" <{{ email }}>\nSubject: {{ sale }}\n\nHi {{ name }} {{ n + 1 }}",
               "substitutions":{"sale":"Spring","n":1},
               "recipients":[{"email":"x@y.z","name":"Ann","substitutions":{"n":41}}]}"#,
        );
        let content = std::mem::replace(&mut r.content, Content::Raw(String::new()));
        let c = compile(content, r.dialect).unwrap();
        assert_eq!(
            first(&r, &c),
            "To: \"Ann\" <x@y.z>\r\nSubject: Spring\r\n\r\nHi Ann 42"
        );
    }

    #[test]
    fn line_ends_are_crlf_in_the_template_and_in_the_values() {
        let mut r = request(
            r#"{"envelope_sender":"a@b.c","content":"Subject: s\n\n{{ text }}\r\nend\n",
               "recipients":[{"email":"x@y.z","substitutions":{"text":"one\ntwo\r\nthree"}}]}"#,
        );
        let content = std::mem::replace(&mut r.content, Content::Raw(String::new()));
        let c = compile(content, r.dialect).unwrap();
        assert_eq!(
            first(&r, &c),
            "Subject: s\r\n\r\none\r\ntwo\r\nthree\r\nend"
        );
    }

    #[test]
    fn a_syntax_error_names_the_field_a_render_error_fails_the_recipient() {
        let r = request(
            r#"{"envelope_sender":"a@b.c","content":{"text_body":"{% if %}"},"recipients":[{"email":"x@y.z"}]}"#,
        );
        let e = compile(r.content, r.dialect).err().unwrap();
        assert_eq!(e.field, "content.text_body");
        let r = request(
            r#"{"envelope_sender":"a@b.c","content":{"text_body":"{{ n + 1 }}"},"recipients":[{"email":"x@y.z","substitutions":{"n":"text"}}]}"#,
        );
        let c = compile(r.content, r.dialect).unwrap();
        let e = c.render(&r.recipients[0], &r.substitutions).unwrap_err();
        assert!(e.contains("content.text_body"), "{e}");
    }

    #[test]
    fn built_content_has_parts_headers_and_attachments() {
        let mut r = request(
            r#"{"envelope_sender":"a@b.c","recipients":[{"email":"x@y.z","name":"Ann","substitutions":{"tag":"<b>"}}],
                "content":{"text_body":"Hi {{ name }}","html_body":"<p>{{ name }} {{ tag }}</p>","subject":"For {{ name }}",
                "from":{"email":"news@b.c","name":"News"},"headers":{"X-Tag":"t-{{ email }}"},
                "attachments":[{"data":"aGVsbG8=","base64":true,"content_type":"text/plain","file_name":"h.txt"},
                               {"data":"R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7","base64":true,"content_type":"image/gif","content_id":"my-image"}]}}"#,
        );
        let content = std::mem::replace(&mut r.content, Content::Raw(String::new()));
        let c = compile(content, r.dialect).unwrap();
        let m = first(&r, &c);
        for needle in [
            "From: \"News\" <news@b.c>",
            "Subject: For Ann",
            "X-Tag: t-x@y.z",
            "To: \"Ann\" <x@y.z>",
            "multipart/mixed",
            "multipart/related",
            "multipart/alternative",
            "Hi Ann",
            "Content-ID: <my-image>",
            "filename=\"h.txt\"",
        ] {
            assert!(m.contains(needle), "{needle} in\n{m}");
        }
        let parsed = mail_parser::MessageParser::default()
            .parse(m.as_bytes())
            .unwrap();
        let html = parsed.body_html(0).unwrap();
        assert!(
            html.contains("Ann &lt;b&gt;"),
            "variables are HTML-escaped: {html}"
        );
    }
}
