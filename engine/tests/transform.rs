//! Admission transforms (header/footer, X-Mailer, From) on real message
//! shapes. Every output is parsed back with mail-parser and checked, and the
//! bytes the transforms must not touch are compared with the input.

mod support;

use mail_parser::{MessageParser, MimeHeaders, PartType};
use sendengine::transform::{Decoration, decorate, from_address, from_domain};

fn decoration() -> Decoration {
    Decoration {
        text_header: "TEXT-HEADER".into(),
        text_footer: "TEXT-FOOTER\nline two".into(),
        html_header: "<div>HTML-HEADER</div>".into(),
        html_footer: "<div>HTML-FOOTER</div>".into(),
        x_mailer: None,
        from: None,
    }
}

fn crlf(text: &str) -> Vec<u8> {
    text.replace("\r\n", "\n")
        .replace('\n', "\r\n")
        .into_bytes()
}

/// Runs `decorate` and checks the output is well-formed mail.
fn decorated(input: &[u8], decoration: &Decoration) -> Vec<u8> {
    let out = decorate(input, decoration).expect("decorate");
    assert_well_formed(&out);
    out
}

fn assert_well_formed(message: &[u8]) {
    for (i, line) in message.split(|b| *b == b'\n').enumerate() {
        let content = line.strip_suffix(b"\r");
        let is_last = i == message.split(|b| *b == b'\n').count() - 1;
        assert!(
            content.is_some() || is_last,
            "line {i} ends with a bare LF: {:?}",
            String::from_utf8_lossy(line)
        );
        assert!(line.len() <= 1000, "line {i} is longer than 998 octets");
    }
    assert!(
        !message.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n'),
        "bare CR in output"
    );
    MessageParser::new()
        .parse(message)
        .expect("mail-parser parses the output");
}

fn text_of(message: &[u8]) -> String {
    let parsed = MessageParser::new().parse(message).unwrap();
    parsed.body_text(0).expect("a text body").into_owned()
}

fn html_of(message: &[u8]) -> String {
    let parsed = MessageParser::new().parse(message).unwrap();
    let id = parsed.html_body[0];
    match &parsed.parts[id as usize].body {
        PartType::Html(html) => html.to_string(),
        other => panic!("html body is not HTML: {other:?}"),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn text_only_message_gets_header_and_footer() {
    let input = crlf("From: a@example.com\nTo: b@example.org\nSubject: hi\n\nHello,\nworld\n");
    let out = decorated(&input, &decoration());
    let expected = crlf(
        "From: a@example.com\nTo: b@example.org\nSubject: hi\n\n\
         TEXT-HEADER\nHello,\nworld\nTEXT-FOOTER\nline two\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&expected)
    );
    assert_eq!(
        text_of(&out),
        "TEXT-HEADER\r\nHello,\r\nworld\r\nTEXT-FOOTER\r\nline two\r\n"
    );
}

#[test]
fn html_only_message_gets_html_header_and_footer_inside_body_tag() {
    let input = crlf(
        "From: a@example.com\nMIME-Version: 1.0\nContent-Type: text/html; charset=utf-8\n\n\
         <html><head><title>t</title></head>\n<BODY bgcolor=\"#fff\">\n<p>Hi</p>\n</Body></html>\n",
    );
    let out = decorated(&input, &decoration());
    let html = html_of(&out);
    assert!(
        html.contains("<BODY bgcolor=\"#fff\"><div>HTML-HEADER</div>\r\n<p>Hi</p>"),
        "{html}"
    );
    assert!(
        html.contains("<p>Hi</p>\r\n<div>HTML-FOOTER</div></Body></html>"),
        "{html}"
    );
    assert!(!html.contains("TEXT-"), "plain texts do not go into HTML");
}

#[test]
fn html_without_body_tag_is_prepended_and_appended() {
    let input = crlf("Content-Type: text/html\n\n<p>Hi</p>\n");
    let out = decorated(&input, &decoration());
    assert_eq!(
        html_of(&out),
        "<div>HTML-HEADER</div><p>Hi</p><div>HTML-FOOTER</div>\r\n"
    );
}

const ALTERNATIVE: &str = "From: a@example.com\n\
MIME-Version: 1.0\n\
Content-Type: multipart/alternative; boundary=\"alt\"\n\
\n\
preamble\n\
--alt\n\
Content-Type: text/plain; charset=us-ascii\n\
\n\
Plain body\n\
--alt\n\
Content-Type: text/html; charset=us-ascii\n\
\n\
<html><body><p>HTML body</p></body></html>\n\
--alt--\n\
epilogue\n";

#[test]
fn multipart_alternative_gets_both_parts_decorated() {
    let input = crlf(ALTERNATIVE);
    let out = decorated(&input, &decoration());
    assert_eq!(
        text_of(&out),
        "TEXT-HEADER\r\nPlain body\r\nTEXT-FOOTER\r\nline two"
    );
    assert_eq!(
        html_of(&out),
        "<html><body><div>HTML-HEADER</div><p>HTML body</p><div>HTML-FOOTER</div></body></html>"
    );
    // Boundaries, preamble and epilogue are untouched.
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains(
        "\r\n\r\npreamble\r\n--alt\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ));
    assert!(text.ends_with("</html>\r\n--alt--\r\nepilogue\r\n"));
}

fn pdf_bytes() -> Vec<u8> {
    let mut pdf = b"%PDF-1.4\n".to_vec();
    pdf.extend((0..3000u32).map(|i| (i * 7 % 256) as u8));
    pdf
}

fn base64_lines(data: &[u8]) -> String {
    use base64::Engine as _;
    let flat = base64::engine::general_purpose::STANDARD.encode(data);
    flat.as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

fn mixed_with_attachment() -> (Vec<u8>, String) {
    let attachment = format!(
        "Content-Type: application/pdf; name=\"report.pdf\"\n\
         Content-Disposition: attachment; filename=\"report.pdf\"\n\
         Content-Transfer-Encoding: base64\n\
         \n\
         {}",
        base64_lines(&pdf_bytes())
    );
    let alternative_part = ALTERNATIVE
        .split_once("MIME-Version: 1.0\n")
        .unwrap()
        .1
        .replace("epilogue\n", "");
    let message = format!(
        "From: a@example.com\n\
         Subject: report\n\
         MIME-Version: 1.0\n\
         Content-Type: multipart/mixed;\n boundary=\"mix\"\n\
         \n\
         --mix\n\
         {alternative_part}\
         --mix\n\
         {attachment}\n\
         --mix\n\
         Content-Type: text/plain; charset=utf-8\n\
         Content-Disposition: attachment; filename=\"notes.txt\"\n\
         \n\
         attached notes\n\
         --mix--\n"
    );
    (crlf(&message), attachment.replace('\n', "\r\n"))
}

#[test]
fn multipart_mixed_decorates_the_alternative_and_leaves_attachments_alone() {
    let (input, attachment_section) = mixed_with_attachment();
    let out = decorated(&input, &decoration());
    assert!(
        contains(&out, attachment_section.as_bytes()),
        "attachment bytes changed"
    );
    assert!(contains(&out, b"\r\n\r\nattached notes\r\n--mix--\r\n"));

    let parsed = MessageParser::new().parse(&out).unwrap();
    assert_eq!(
        parsed.body_text(0).unwrap(),
        "TEXT-HEADER\r\nPlain body\r\nTEXT-FOOTER\r\nline two"
    );
    assert!(parsed.body_html(0).unwrap().contains("HTML-HEADER"));
    let pdf = parsed
        .attachments()
        .find(|a| a.attachment_name() == Some("report.pdf"))
        .expect("pdf attachment");
    assert_eq!(pdf.contents(), pdf_bytes().as_slice());
    let notes = parsed
        .attachments()
        .find(|a| a.attachment_name() == Some("notes.txt"))
        .expect("text attachment");
    assert_eq!(notes.contents(), b"attached notes");
}

#[test]
fn quoted_printable_part_is_reencoded_as_quoted_printable() {
    let long_line = "Ünïcödé = ".repeat(20) + "end";
    let input = crlf(&format!(
        "Content-Type: text/plain; charset=utf-8\n\
         Content-Transfer-Encoding: quoted-printable\n\
         \n\
         {}\n",
        qp_encode_simple(&long_line)
    ));
    let decoration = Decoration {
        text_footer: "Fußzeile ✓".into(),
        ..decoration()
    };
    let out = decorated(&input, &decoration);
    let body = &out[find(&out, b"\r\n\r\n") + 4..];
    for line in body.split(|b| *b == b'\n') {
        assert!(line.len() <= 77, "QP line over 76 characters");
    }
    assert!(body.is_ascii());
    assert!(contains(
        &out,
        b"Content-Transfer-Encoding: quoted-printable\r\n"
    ));
    assert_eq!(
        text_of(&out),
        format!("TEXT-HEADER\r\n{long_line}\r\nFußzeile ✓\r\n")
    );
}

/// A deliberately naive encoder for building input: every non-ASCII byte
/// and `=` escaped, soft breaks every 60 characters.
fn qp_encode_simple(text: &str) -> String {
    let mut out = String::new();
    let mut line_len = 0;
    for byte in text.bytes() {
        let token = if byte.is_ascii_alphanumeric() || byte == b' ' {
            (byte as char).to_string()
        } else {
            format!("={byte:02X}")
        };
        if line_len + token.len() > 60 {
            out.push_str("=\n");
            line_len = 0;
        }
        line_len += token.len();
        out.push_str(&token);
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

#[test]
fn base64_text_part_is_reencoded_as_base64() {
    let original = "Base64 body line\n".repeat(20);
    let input = crlf(&format!(
        "Content-Type: multipart/mixed; boundary=b\n\n--b\n\
         Content-Type: text/plain; charset=utf-8\n\
         Content-Transfer-Encoding: base64\n\
         \n\
         {}\n--b--\n",
        base64_lines(original.as_bytes())
    ));
    let out = decorated(&input, &decoration());
    let part_body = &out[find(&out, b"base64\r\n\r\n") + 10..find(&out, b"\r\n--b--")];
    for line in part_body.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(line.len() <= 76);
        assert!(
            line.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b))
        );
    }
    assert_eq!(
        text_of(&out),
        format!("TEXT-HEADER\r\n{original}TEXT-FOOTER\r\nline two\r\n")
    );
}

#[test]
fn latin1_part_is_converted_to_utf8_for_a_non_ascii_footer() {
    let mut input = crlf(
        "Content-Type: text/plain; charset=\"ISO-8859-1\"; format=flowed\n\
         Content-Transfer-Encoding: 8bit\n\nGr",
    );
    input.extend_from_slice(&[0xfc, 0xdf, b'e']); // "Grüße" in Latin-1
    input.extend_from_slice(b"\r\n");
    let decoration = Decoration {
        text_footer: "— Fußzeile ✓".into(),
        ..decoration()
    };
    let out = decorated(&input, &decoration);
    assert!(contains(&out, b"charset=utf-8; format=flowed\r\n"));
    assert!(
        contains(&out, "Grüße".as_bytes()),
        "body converted to UTF-8"
    );
    let parsed = MessageParser::new().parse(&out).unwrap();
    assert_eq!(
        parsed.parts[0].content_type().unwrap().attribute("charset"),
        Some("utf-8")
    );
    assert_eq!(
        parsed.body_text(0).unwrap(),
        "TEXT-HEADER\r\nGrüße\r\n— Fußzeile ✓\r\n"
    );
}

#[test]
fn latin1_part_keeps_its_bytes_for_an_ascii_footer() {
    let mut input = crlf("Content-Type: text/plain; charset=iso-8859-1\n\nGr");
    input.extend_from_slice(&[0xfc, 0xdf, b'e']);
    let out = decorated(&input, &decoration());
    assert!(contains(&out, b"charset=iso-8859-1\r\n"));
    assert!(contains(
        &out,
        &[b'G', b'r', 0xfc, 0xdf, b'e', b'\r', b'\n', b'T']
    ));
    assert!(text_of(&out).contains("Grüße"));
}

#[test]
fn seven_bit_part_without_charset_gets_utf8_and_quoted_printable() {
    let input = crlf("From: a@example.com\nSubject: s\n\nplain ascii\n");
    let decoration = Decoration {
        text_footer: "Grüße".into(),
        ..Decoration::default()
    };
    let out = decorated(&input, &decoration);
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(text.contains("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"));
    assert!(text.contains("Content-Transfer-Encoding: quoted-printable\r\n\r\n"));
    assert_eq!(text_of(&out), "plain ascii\r\nGrüße\r\n");
}

#[test]
fn nested_message_attachment_is_untouched() {
    let inner = crlf(
        "From: inner@example.com\nSubject: forwarded\nContent-Type: text/plain\n\nInner body\n",
    );
    let mut input = crlf(
        "From: a@example.com\nContent-Type: multipart/mixed; boundary=\"outer\"\n\n\
         --outer\nContent-Type: text/plain\n\nOuter body\n\
         --outer\nContent-Type: message/rfc822\n\n",
    );
    input.extend_from_slice(&inner);
    input.extend_from_slice(b"--outer--\r\n");
    let out = decorated(&input, &decoration());
    assert!(contains(&out, &inner), "forwarded message bytes changed");
    let parsed = MessageParser::new().parse(&out).unwrap();
    assert_eq!(
        parsed.body_text(0).unwrap(),
        "TEXT-HEADER\r\nOuter body\r\nTEXT-FOOTER\r\nline two"
    );
    let forwarded = parsed
        .attachment(0)
        .and_then(|a| a.message())
        .expect("forwarded message");
    // The line break before the delimiter is not part of the inner message.
    assert_eq!(forwarded.body_text(0).unwrap(), "Inner body");
}

#[test]
fn folded_from_is_replaced() {
    let input = crlf(
        "Subject: s\nFrom: \"A very long display name that was folded\"\n\t<old@example.com>\nTo: b@example.org\n\nbody\n",
    );
    let decoration = Decoration {
        from: Some("News <news@example.com>".into()),
        ..Decoration::default()
    };
    let out = decorated(&input, &decoration);
    assert_eq!(
        out,
        crlf("Subject: s\nFrom: News <news@example.com>\nTo: b@example.org\n\nbody\n")
    );
    assert_eq!(from_address(&out).as_deref(), Some("news@example.com"));
    let parsed = MessageParser::new().parse(&out).unwrap();
    assert_eq!(parsed.from().unwrap().first().unwrap().name(), Some("News"));
}

#[test]
fn x_mailer_is_replaced_or_added() {
    let decoration = Decoration {
        x_mailer: Some("SendEngine 1.0".into()),
        ..Decoration::default()
    };
    let input = crlf("X-Mailer: Old\n Mailer\nSubject: s\nX-Mailer: Another\n\nbody\n");
    let out = decorated(&input, &decoration);
    assert_eq!(out, crlf("X-Mailer: SendEngine 1.0\nSubject: s\n\nbody\n"));
    let out = decorated(&crlf("Subject: s\n\nbody\n"), &decoration);
    assert_eq!(out, crlf("Subject: s\nX-Mailer: SendEngine 1.0\n\nbody\n"));
    let parsed = MessageParser::new().parse(&out).unwrap();
    assert_eq!(
        parsed.header("X-Mailer").unwrap().as_text(),
        Some("SendEngine 1.0")
    );
}

#[test]
fn input_without_trailing_crlf() {
    let input = b"Subject: s\r\n\r\nlast line without break".to_vec();
    let out = decorated(&input, &decoration());
    assert_eq!(
        out,
        b"Subject: s\r\n\r\nTEXT-HEADER\r\nlast line without break\r\nTEXT-FOOTER\r\nline two"
    );
}

#[test]
fn thousand_line_body() {
    let lines: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    let input = crlf(&format!("Subject: s\n\n{lines}"));
    let out = decorated(&input, &decoration());
    let text = text_of(&out);
    assert!(text.starts_with("TEXT-HEADER\r\nline 0\r\n"));
    assert!(text.ends_with("line 999\r\nTEXT-FOOTER\r\nline two\r\n"));
    assert_eq!(text.lines().count(), 1003);
}

#[test]
fn empty_decoration_returns_identical_bytes() {
    // Not even valid MIME: the fast path must not parse.
    let input = b"Content-Type: multipart/mixed\r\n\r\n\xff\xfe no boundary".to_vec();
    assert_eq!(decorate(&input, &Decoration::default()).unwrap(), input);
    let (input, _) = mixed_with_attachment();
    assert_eq!(decorate(&input, &Decoration::default()).unwrap(), input);
    let only_empty_values = Decoration {
        x_mailer: Some(String::new()),
        from: Some(String::new()),
        ..Decoration::default()
    };
    assert!(only_empty_values.is_empty());
    assert_eq!(decorate(&input, &only_empty_values).unwrap(), input);
}

#[test]
fn unparseable_multipart_is_refused_with_a_reason() {
    let input = crlf("Content-Type: multipart/mixed\n\nno boundary\n");
    let err = decorate(&input, &decoration()).unwrap_err();
    assert!(err.to_string().contains("no boundary parameter"), "{err}");
    let input = crlf("Content-Type: multipart/mixed; boundary=x\n\nno delimiter\n");
    let err = decorate(&input, &decoration()).unwrap_err();
    assert!(err.to_string().contains("\"--x\""), "{err}");
}

#[test]
fn header_edits_alone_do_not_need_valid_mime() {
    let input = crlf("Content-Type: multipart/mixed\nSubject: s\n\nno boundary\n");
    let decoration = Decoration {
        x_mailer: Some("M".into()),
        ..Decoration::default()
    };
    let out = decorate(&input, &decoration).unwrap();
    assert!(contains(&out, b"X-Mailer: M\r\n\r\nno boundary"));
}

#[test]
fn from_address_and_domain() {
    let message = crlf("To: x@y\nFrom: =?utf-8?q?Caf=C3=A9?=\n <News@Example.COM>\n\nb\n");
    assert_eq!(from_address(&message).as_deref(), Some("News@Example.COM"));
    assert_eq!(from_domain(&message).as_deref(), Some("example.com"));
    assert_eq!(from_domain(&crlf("To: x@y\n\nb\n")), None);
}

/// Python's `email` package parses the outputs as an independent MIME
/// reader: no defects, text decoded as expected, attachment bytes intact.
#[test]
fn python_email_parser_agrees() {
    let (mixed, _) = mixed_with_attachment();
    let mut latin1 =
        crlf("Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n\nGr");
    latin1.extend_from_slice(&[0xfc, 0xdf, b'e']);
    let qp = crlf(&format!(
        "Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n{}\n",
        qp_encode_simple(&"<p>Grüße</p>".repeat(30))
    ));
    let non_ascii = Decoration {
        text_footer: "— Fußzeile ✓".into(),
        html_footer: "<p>Fußzeile ✓</p>".into(),
        ..decoration()
    };
    let outputs = [
        decorated(&mixed, &non_ascii),
        decorated(&latin1, &non_ascii),
        decorated(&qp, &non_ascii),
    ];
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<String> = outputs
        .iter()
        .enumerate()
        .map(|(i, message)| {
            let path = dir.path().join(format!("{i}.eml"));
            std::fs::write(&path, message).unwrap();
            path.to_string_lossy().into_owned()
        })
        .collect();
    let Some(reports) = python_parse(&paths) else {
        support::missing_peer(
            "python3",
            "it checks the MIME structure: scripts/install-test-deps.sh",
        );
        return;
    };

    let mixed_parts = reports[0].as_array().unwrap();
    let text = leaf(mixed_parts, "text/plain", false);
    assert_eq!(text["text"], "TEXT-HEADER\nPlain body\n— Fußzeile ✓");
    let html = leaf(mixed_parts, "text/html", false);
    assert!(
        html["text"]
            .as_str()
            .unwrap()
            .contains("<p>HTML body</p><p>Fußzeile ✓</p></body>")
    );
    let pdf = leaf(mixed_parts, "application/pdf", true);
    use base64::Engine as _;
    let pdf_bytes_seen = base64::engine::general_purpose::STANDARD
        .decode(pdf["b64"].as_str().unwrap())
        .unwrap();
    assert_eq!(pdf_bytes_seen, pdf_bytes());
    assert_eq!(
        leaf(mixed_parts, "text/plain", true)["text"],
        "attached notes"
    );

    let latin1_text = leaf(reports[1].as_array().unwrap(), "text/plain", false);
    assert_eq!(latin1_text["text"], "TEXT-HEADER\nGrüße\n— Fußzeile ✓");
    let qp_html = leaf(reports[2].as_array().unwrap(), "text/html", false);
    let expected = format!("{}<p>Fußzeile ✓</p>\n", "<p>Grüße</p>".repeat(30));
    assert_eq!(
        qp_html["text"].as_str().unwrap(),
        format!("<div>HTML-HEADER</div>{expected}")
    );
}

fn leaf<'a>(
    parts: &'a [serde_json::Value],
    content_type: &str,
    attachment: bool,
) -> &'a serde_json::Value {
    parts
        .iter()
        .find(|p| p["type"] == content_type && p["attachment"] == attachment)
        .unwrap_or_else(|| panic!("no {content_type} part (attachment: {attachment}) in {parts:?}"))
}

/// One JSON array of leaf parts per file; fails on any parser defect.
fn python_parse(paths: &[String]) -> Option<Vec<serde_json::Value>> {
    const SCRIPT: &str = r#"
import base64, email, email.policy, json, sys
reports = []
for path in sys.argv[1:]:
    with open(path, 'rb') as f:
        msg = email.message_from_binary_file(f, policy=email.policy.default)
    parts = []
    for part in msg.walk():
        if part.defects:
            sys.exit(f"{path}: {part.get_content_type()}: {part.defects}")
        if part.is_multipart():
            continue
        content = part.get_content()
        entry = {"type": part.get_content_type(), "attachment": part.is_attachment()}
        if isinstance(content, str):
            entry["text"] = content
        else:
            entry["b64"] = base64.b64encode(content).decode()
        parts.append(entry)
    reports.append(parts)
print(json.dumps(reports))
"#;
    let output = match std::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .args(paths)
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("running python3: {e}"),
    };
    assert!(
        output.status.success(),
        "python email parser: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).ok()
}

#[test]
fn related_html_inside_alternative_is_decorated_and_inline_image_kept() {
    let image = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
    let input = crlf(&format!(
        "Content-Type: multipart/alternative; boundary=a\n\n\
         --a\nContent-Type: text/plain\n\nplain\n\
         --a\nContent-Type: multipart/related; boundary=r\n\n\
         --r\nContent-Type: text/html\n\n<body>rich</body>\n\
         --r\nContent-Type: image/png\nContent-ID: <img1>\nContent-Transfer-Encoding: base64\n\n{image}\n\
         --r--\n\
         --a--\n"
    ));
    let out = decorated(&input, &decoration());
    assert!(contains(
        &out,
        format!("base64\r\n\r\n{image}\r\n--r--").as_bytes()
    ));
    assert_eq!(
        text_of(&out),
        "TEXT-HEADER\r\nplain\r\nTEXT-FOOTER\r\nline two"
    );
    assert_eq!(
        html_of(&out),
        "<body><div>HTML-HEADER</div>rich<div>HTML-FOOTER</div></body>"
    );
}

#[test]
fn only_the_first_text_body_of_a_mixed_message_is_decorated() {
    let input = crlf(
        "Content-Type: multipart/mixed; boundary=m\n\n\
         --m\nContent-Type: text/plain\n\nfirst\n\
         --m\nContent-Type: text/plain\n\nsecond\n\
         --m\nContent-Type: text/plain; name=\"data.csv\"\n\na,b\n\
         --m--\n",
    );
    let out = decorated(&input, &decoration());
    assert!(contains(&out, b"\r\n\r\nsecond\r\n--m\r\n"));
    assert!(contains(&out, b"\r\n\r\na,b\r\n--m--\r\n"));
    assert_eq!(
        text_of(&out),
        "TEXT-HEADER\r\nfirst\r\nTEXT-FOOTER\r\nline two"
    );
}

#[test]
fn signed_multipart_is_left_alone() {
    // Changing a signed body would break its signature.
    let input = crlf(
        "Content-Type: multipart/signed; protocol=\"application/pgp-signature\"; boundary=s\n\n\
         --s\nContent-Type: text/plain\n\nsigned text\n\
         --s\nContent-Type: application/pgp-signature\n\nSIG\n\
         --s--\n",
    );
    assert_eq!(decorated(&input, &decoration()), input);
}

#[test]
fn attachment_only_message_is_left_alone() {
    let input =
        crlf("Content-Type: text/plain\nContent-Disposition: attachment; filename=a.txt\n\nfile\n");
    assert_eq!(decorated(&input, &decoration()), input);
}

#[test]
fn from_address_refuses_to_guess_between_several_senders() {
    let two_fields = crlf("From: a@verified.example\nFrom: b@other.example\n\nb\n");
    assert_eq!(from_address(&two_fields), None);
    let two_mailboxes = crlf("From: a@verified.example, b@other.example\n\nb\n");
    assert_eq!(from_domain(&two_mailboxes), None);
    let group = crlf("From: Team: a@verified.example;\n\nb\n");
    assert_eq!(from_domain(&group).as_deref(), Some("verified.example"));
    // Field names compare without case, so these are two From fields too.
    let two_cases = crlf("FROM: a@verified.example\nfrom: b@other.example\n\nb\n");
    assert_eq!(from_address(&two_cases), None);
}

#[test]
fn from_address_in_a_header_without_body_or_final_line_break() {
    assert_eq!(
        from_domain(b"Subject: s\r\nfrom: A <a@Last.Example>").as_deref(),
        Some("last.example")
    );
    assert_eq!(
        from_domain(b"from: a@only.example\r\n").as_deref(),
        Some("only.example")
    );
}

/// Raw DATA over a socket (smtplib would refuse NUL): prints the reply to
/// each message given as an argument (`\\0` stands for a NUL byte).
const RAW_NUL_SEND: &str = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
def reply(f):
    while True:
        line = f.readline()
        if line[3:4] != b"-":
            return line.decode().strip()
s = socket.create_connection((host, port), timeout=30); f = s.makefile("rb")
reply(f); s.sendall(b"EHLO raw.test\r\n"); reply(f)
for text in sys.argv[3:]:
    data = text.encode().replace(b"\\0", b"\x00")
    s.sendall(b"MAIL FROM:<app@example.com>\r\nRCPT TO:<one@example.net>\r\nDATA\r\n")
    for _ in range(3): reply(f)
    s.sendall(data + b".\r\n")
    print(reply(f))
"#;

#[test]
fn nul_in_a_header_is_refused_and_in_a_body_never_reaches_the_relay() {
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = support::Sink::start(&["--store-dir", sink_dir.path().to_str().unwrap()]);
    let daemon = support::Daemon::start(support::DaemonConfig::new(sink.addr.port()));
    let out = support::python(
        RAW_NUL_SEND,
        &[
            daemon.addr.ip().to_string(),
            daemon.addr.port().to_string(),
            "From: app@example.com\r\nSubject: bad\\0header\r\n\r\nbody\r\n".into(),
            "From: app@example.com\r\nX-Tag: a\r\n b\\0c\r\n\r\nbody\r\n".into(),
            "From: app@example.com\r\nSubject: ok\r\n\r\nbody with a \\0 byte\r\n".into(),
        ],
    )
    .expect("python3 is required for the integration tests");
    let replies = String::from_utf8_lossy(&out.stdout).into_owned();
    let replies: Vec<&str> = replies.lines().collect();
    assert_eq!(
        replies.len(),
        3,
        "{replies:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for refused in &replies[..2] {
        assert!(refused.starts_with("554 5.6.0"), "{replies:?}");
        assert!(refused.contains("NUL"), "{replies:?}");
    }
    assert!(replies[2].starts_with("250"), "{replies:?}");
    let got = sink.wait_messages(1, std::time::Duration::from_secs(60));
    let stored = std::fs::read(sink_dir.path().join(format!("{}.eml", got[0]["seq"]))).unwrap();
    assert!(!stored.contains(&0), "a NUL byte reached the relay");
    assert!(
        contains(&stored, b"body with a =00 byte"),
        "{}",
        String::from_utf8_lossy(&stored)
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(
        sink.messages().len(),
        1,
        "only the NUL-free message was relayed"
    );
}
