//! The replies our SMTP server sends: a code, an enhanced status code
//! (RFC 3463) and a sentence a person can act on.

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

/// The EHLO reply in wire form: the greeting, the extensions every listener
/// of ours offers, then `extra` (STARTTLS, AUTH where they apply). EHLO
/// lines carry no enhanced code (RFC 2034 leaves it out of EHLO).
pub fn ehlo_reply(host: &str, peer: std::net::IpAddr, max_size: u64, extra: &[&str]) -> Vec<u8> {
    let greeting = format!("{host} greets {peer}");
    let size = format!("SIZE {max_size}");
    let base = [
        greeting.as_str(),
        "PIPELINING",
        size.as_str(),
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
    ];
    let lines: Vec<&str> = base.iter().chain(extra).copied().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        out.extend_from_slice(format!("250{sep}{line}\r\n").as_bytes());
    }
    out
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
