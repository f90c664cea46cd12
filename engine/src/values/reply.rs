//! The replies our SMTP server sends: a code, an enhanced status code
//! (RFC 3463) and a sentence a person can act on. A plain value: admission,
//! limits and suppression build refusals without knowing the SMTP session.

use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: &'static str,
    pub text: Cow<'static, str>,
}

impl Reply {
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            enhanced,
            text: text.into(),
        }
    }

    /// Appends the reply in wire form. Multi-line texts (separated by `\n`)
    /// become `code-` continuation lines, each carrying the enhanced code.
    ///
    /// Written byte by byte: one reply or more per message, and `format!`
    /// per line showed in profiles.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let code = self.code.min(999);
        let digits = [code / 100, code / 10 % 10, code % 10].map(|d| b'0' + d as u8);
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            out.extend_from_slice(&digits);
            out.push(if lines.peek().is_some() { b'-' } else { b' ' });
            out.extend_from_slice(self.enhanced.as_bytes());
            out.push(b' ');
            // RFC 5321 4.2: reply text is tab and printable ASCII. What a
            // client sent and a refusal quotes back may be anything else.
            out.extend(line.bytes().map(|b| match b {
                b'\t' | b' '..=b'~' => b,
                _ => b'?',
            }));
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.code, self.enhanced, self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_client_sent_is_quoted_back_as_printable_ascii() {
        let mut out = Vec::new();
        let text = "Command `FO\rO\u{1b}[31m\0F\u{d6}O` not recognised";
        Reply::new(500, "5.5.1", text).write_to(&mut out);
        assert_eq!(
            out,
            b"500 5.5.1 Command `FO?O?[31m?F??O` not recognised\r\n"
        );
    }

    #[test]
    fn multi_line_replies() {
        let mut out = Vec::new();
        Reply::new(421, "4.3.2", "Too busy\nTry later").write_to(&mut out);
        assert_eq!(out, b"421-4.3.2 Too busy\r\n421 4.3.2 Try later\r\n");
        Reply::new(250, "2.0.0", "Queued as 1").write_to(&mut out);
        assert!(out.ends_with(b"\r\n250 2.0.0 Queued as 1\r\n"));
    }
}
