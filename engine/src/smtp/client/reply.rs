//! SMTP replies as the client sees them: the pure parsing of the lines a server
//! sends (`250-first`, `250 last`) into one [`Reply`] with its code, optional
//! enhanced status code (RFC 3463) and text. Reading the lines off the socket is
//! the transport's job; this module never does I/O.

use std::fmt;

/// Longest reply line we accept, CRLF included. RFC 5321 4.5.3.1.5 allows 512;
/// real servers exceed that with long policy texts, so we are generous.
pub const MAX_REPLY_LINE: usize = 2000;

/// Most lines in one multi-line reply (an EHLO reply has about 15).
pub const MAX_REPLY_LINES: usize = 100;

/// One complete server reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code, always in 200..=599.
    pub code: u16,
    /// The enhanced status code of the first line, e.g. "5.1.1".
    pub enhanced: Option<String>,
    /// All lines joined with a space, without the code and enhanced prefixes.
    pub text: String,
}

impl Reply {
    /// A reply made up by the client itself (e.g. a message over the server's SIZE).
    pub fn local(code: u16, enhanced: &str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced.to_string()),
            text: text.into(),
        }
    }

    /// Positive completion (2xx). 354 is not "positive" here: callers judge
    /// recipients, and no recipient is ever decided by an intermediate reply.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// Transient negative completion (4xx): try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// Permanent negative completion (5xx).
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// Builds a reply from its parsed lines (see [`ReplyLine::parse`]).
    /// Continuation lines that repeat the first line's enhanced code have it
    /// stripped so the text reads naturally. The last line's code is the
    /// reply's, as Postfix's client takes it, should a broken server change
    /// codes within one reply (`250-queued` then `550 rejected`): refusing
    /// the reply would send an accepted message again at every retry.
    pub fn from_lines(lines: &[ReplyLine<'_>]) -> Result<Reply, String> {
        let (Some(first), Some(last)) = (lines.first(), lines.last()) else {
            return Err("empty reply".to_string());
        };
        let enhanced = split_enhanced(first.text).0;
        let texts: Vec<&str> = lines
            .iter()
            .map(|line| match split_enhanced(line.text) {
                (Some(code), rest) if Some(code) == enhanced => rest,
                _ => line.text,
            })
            .collect();
        Ok(Reply {
            code: last.code,
            enhanced: enhanced
                .filter(|e| e.starts_with(char::from(b'0' + (last.code / 100) as u8)))
                .map(str::to_string),
            text: texts.join(" ").trim().to_string(),
        })
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(enhanced) = &self.enhanced {
            write!(f, " {enhanced}")?;
        }
        if !self.text.is_empty() {
            write!(f, " {}", self.text)?;
        }
        Ok(())
    }
}

/// One line of a reply, CRLF already removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyLine<'a> {
    pub code: u16,
    /// False for `250-...` lines: more lines of the same reply follow.
    pub is_last: bool,
    pub text: &'a str,
}

impl<'a> ReplyLine<'a> {
    /// Parses `DDD-text`, `DDD text` or a bare `DDD`; the code must be 200..=599
    /// because a client has no use for anything else and it catches desyncs.
    pub fn parse(line: &'a str) -> Result<ReplyLine<'a>, String> {
        let bytes = line.as_bytes();
        let digits = bytes.get(..3).filter(|d| d.iter().all(u8::is_ascii_digit));
        let Some(digits) = digits else {
            return Err(format!("malformed reply line {:?}", preview(line)));
        };
        let code = digits
            .iter()
            .fold(0u16, |code, digit| code * 10 + u16::from(digit - b'0'));
        if !(200..600).contains(&code) {
            return Err(format!("reply code {code} out of range"));
        }
        let (is_last, text) = match bytes.get(3) {
            None => (true, ""),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => return Err(format!("malformed reply line {:?}", preview(line))),
        };
        Ok(ReplyLine {
            code,
            is_last,
            text,
        })
    }
}

/// Splits a leading enhanced status code ("5.1.1 rest") off a line's text.
/// The class must be 2, 4 or 5 and the other parts 1-3 digits (RFC 3463).
fn split_enhanced(text: &str) -> (Option<&str>, &str) {
    let (candidate, rest) = text.split_once(' ').unwrap_or((text, ""));
    let mut parts = candidate.split('.');
    let class_ok = matches!(parts.next(), Some("2" | "4" | "5"));
    let is_number = |part: Option<&str>| {
        part.is_some_and(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
    };
    if class_ok && is_number(parts.next()) && is_number(parts.next()) && parts.next().is_none() {
        (Some(candidate), rest)
    } else {
        (None, text)
    }
}

/// The start of an offending line, for error messages.
fn preview(line: &str) -> &str {
    let end = line
        .char_indices()
        .nth(60)
        .map_or(line.len(), |(index, _)| index);
    &line[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> Result<Reply, String> {
        let parsed: Result<Vec<_>, _> = lines.iter().map(|l| ReplyLine::parse(l)).collect();
        Reply::from_lines(&parsed?)
    }

    #[test]
    fn single_line_with_enhanced_code() {
        let reply = parse(&["550 5.1.1 no such user"]).unwrap();
        assert_eq!(reply.code, 550);
        assert_eq!(reply.enhanced.as_deref(), Some("5.1.1"));
        assert_eq!(reply.text, "no such user");
        assert!(reply.is_permanent() && !reply.is_transient() && !reply.is_positive());
        assert_eq!(reply.to_string(), "550 5.1.1 no such user");
    }

    #[test]
    fn multi_line_strips_repeated_enhanced_code() {
        let reply = parse(&[
            "451-4.7.1 please try",
            "451-4.7.1 again later",
            "451 4.7.1 (greylisted)",
        ])
        .unwrap();
        assert_eq!(reply.code, 451);
        assert_eq!(reply.enhanced.as_deref(), Some("4.7.1"));
        assert_eq!(reply.text, "please try again later (greylisted)");
        assert!(reply.is_transient());
    }

    #[test]
    fn no_enhanced_code_and_bare_code() {
        let reply = parse(&["220 mx.example.com ESMTP"]).unwrap();
        assert_eq!(reply.enhanced, None);
        assert_eq!(reply.text, "mx.example.com ESMTP");
        let bare = parse(&["250"]).unwrap();
        assert_eq!((bare.code, bare.text.as_str()), (250, ""));
        assert_eq!(bare.to_string(), "250");
        assert!(bare.is_positive());
    }

    #[test]
    fn text_that_only_looks_like_an_enhanced_code_is_kept() {
        for text in ["2.0 ok", "3.1.1 x", "2.1234.1 x", "2.1.1.1 x", "2..1 x"] {
            let reply = parse(&[&format!("250 {text}")]).unwrap();
            assert_eq!(reply.enhanced, None, "{text}");
            assert_eq!(reply.text, text);
        }
        let reply = parse(&["250 2.0.0"]).unwrap();
        assert_eq!(
            (reply.enhanced.as_deref(), reply.text.as_str()),
            (Some("2.0.0"), "")
        );
    }

    #[test]
    fn continuation_flag() {
        assert!(!ReplyLine::parse("250-PIPELINING").unwrap().is_last);
        assert!(ReplyLine::parse("250 SIZE 1000").unwrap().is_last);
        assert_eq!(
            ReplyLine::parse("250-PIPELINING").unwrap().text,
            "PIPELINING"
        );
    }

    #[test]
    fn malformed_lines_are_errors() {
        for line in [
            "", "25", "abc ok", "250x ok", "2500 ok", "199 x", "600 x", "000",
        ] {
            assert!(ReplyLine::parse(line).is_err(), "{line:?}");
        }
        assert!(Reply::from_lines(&[]).is_err());
    }

    #[test]
    fn the_last_line_decides_a_reply_whose_code_changes() {
        let reply = parse(&["250-2.0.0 queued", "550 5.7.1 rejected"]).unwrap();
        assert_eq!((reply.code, reply.enhanced.as_deref()), (550, None));
        let reply = parse(&["250-a", "251 b"]).unwrap();
        assert_eq!(reply.code, 251);
    }

    #[test]
    fn non_ascii_text_does_not_panic() {
        assert!(ReplyLine::parse(&"é".repeat(100)).is_err());
        let reply = parse(&["550 5.1.1 utilisateur inconnu: é"]).unwrap();
        assert_eq!(reply.text, "utilisateur inconnu: é");
    }
}
