//! SMTP replies as the client sees them: a three-digit code and one or more
//! text lines (`250-first`, `250 last`).

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReplyParseError {
    #[error("reply line does not start with a three-digit code: {0:?}")]
    NoCode(String),
    #[error("reply code changed inside a multi-line reply: {0:?}")]
    CodeChanged(String),
    #[error("multi-line reply has too many lines")]
    TooManyLines,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The text of each line, without the code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    /// Adds one received line; returns true when it was the last line.
    pub fn add_line(&mut self, line: &[u8]) -> Result<bool, ReplyParseError> {
        let text = String::from_utf8_lossy(line);
        let code = parse_code(line).ok_or_else(|| ReplyParseError::NoCode(text.to_string()))?;
        if !self.lines.is_empty() && code != self.code {
            return Err(ReplyParseError::CodeChanged(text.to_string()));
        }
        self.code = code;
        self.lines.push(text.get(4..).unwrap_or("").to_string());
        Ok(line.get(3) != Some(&b'-'))
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// True when an EHLO reply lists `keyword` (case-insensitive) as an extension.
    pub fn has_extension(&self, keyword: &str) -> bool {
        self.lines.iter().skip(1).any(|line| {
            line.split_ascii_whitespace()
                .next()
                .is_some_and(|word| word.eq_ignore_ascii_case(keyword))
        })
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" / "))
    }
}

fn parse_code(line: &[u8]) -> Option<u16> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if !matches!(line.get(3), None | Some(b' ') | Some(b'-')) {
        return None;
    }
    let code = digits
        .iter()
        .fold(0u16, |acc, digit| acc * 10 + u16::from(digit - b'0'));
    (200..600).contains(&code).then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_line_ehlo_reply() {
        let mut reply = Reply::default();
        assert!(!reply.add_line(b"250-sink greets you").unwrap());
        assert!(!reply.add_line(b"250-PIPELINING").unwrap());
        assert!(reply.add_line(b"250 AUTH PLAIN LOGIN").unwrap());
        assert_eq!(reply.code, 250);
        assert!(reply.has_extension("pipelining"));
        assert!(reply.has_extension("AUTH"));
        assert!(!reply.has_extension("STARTTLS"));
    }

    #[test]
    fn bare_code_is_a_complete_reply() {
        let mut reply = Reply::default();
        assert!(reply.add_line(b"354").unwrap());
        assert_eq!(reply.code, 354);
    }

    #[test]
    fn rejects_garbage_and_changing_codes() {
        let mut reply = Reply::default();
        assert!(reply.add_line(b"hello").is_err());
        assert!(reply.add_line(b"25x ok").is_err());
        assert!(reply.add_line(b"2500 ok").is_err());
        let mut reply = Reply::default();
        reply.add_line(b"250-a").unwrap();
        assert!(matches!(
            reply.add_line(b"251 b"),
            Err(ReplyParseError::CodeChanged(_))
        ));
    }

    #[test]
    fn classifies_codes() {
        let mut reply = Reply::default();
        reply.add_line(b"451 4.3.0 later").unwrap();
        assert!(!reply.is_positive());
        assert!(reply.is_transient());
    }
}
