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
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let lines: Vec<&str> = self.text.split('\n').collect();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            let line = format!("{}{}{} {}\r\n", self.code, sep, self.enhanced, line);
            out.extend_from_slice(line.as_bytes());
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
    fn multi_line_replies() {
        let mut out = Vec::new();
        Reply::new(421, "4.3.2", "Too busy\nTry later").write_to(&mut out);
        assert_eq!(out, b"421-4.3.2 Too busy\r\n421 4.3.2 Try later\r\n");
    }
}
