//! Link rewriting in decoded HTML: finds the `href` of every `<a>` and
//! `<area>` tag, decides whether it is tracked, and puts the tracking URL
//! in its place. Everything else is copied byte for byte.
//!
//! Not tracked: anything but `http:`/`https:` (`mailto:`, `tel:`,
//! `#anchors`, template placeholders), unsubscribe links (the URL or the
//! link text says `unsubscribe`, or the URL is one of the message's
//! `List-Unsubscribe` URLs), and links with a `data-no-track` attribute.
//! The URL handed out is the one a browser follows: character references
//! (`&amp;`, `&#38;`, `&#x26;` ...) decoded, surrounding blanks trimmed
//! and tabs and line breaks inside removed (WHATWG URL parsing does both).
//!
//! This is a tokenizer for tags, not an HTML parser: comments are
//! skipped, quotes are honoured, tag names are matched in any case; an
//! unclosed tag or quote ends the rewriting and the rest is copied as it
//! is (a browser would not show a link there either).

use std::borrow::Cow;

/// Attribute that keeps a link out of tracking: `<a data-no-track href=...>`.
pub const OPT_OUT_ATTRIBUTE: &str = "data-no-track";
/// Bytes of link text looked at for the word "unsubscribe".
const MAX_LINK_TEXT_SCAN: usize = 4096;

/// What decides which links are tracked.
pub struct LinkPolicy {
    /// The `http(s)` URLs of the message's `List-Unsubscribe` header.
    pub unsubscribe_urls: Vec<String>,
}

impl LinkPolicy {
    /// Whether a link to `url` (decoded) with this text is tracked.
    fn tracks(&self, url: &str, link_text: &[u8]) -> bool {
        let lower = url.to_ascii_lowercase();
        let web = lower.starts_with("http://") || lower.starts_with("https://");
        web && !lower.contains("unsubscribe")
            && !contains_ignore_case(link_text, b"unsubscribe")
            && !self.unsubscribe_urls.iter().any(|u| u == url)
    }
}

/// Rewrites the tracked links of `html`: `replace` gets each tracked URL
/// (decoded) and returns its tracking URL, or `None` to leave it (too
/// many links). The new URL is written double-quoted, so it must contain
/// no `"` (tracking URLs are base64url and a host name).
pub fn rewrite_links(
    html: &[u8],
    policy: &LinkPolicy,
    replace: &mut dyn FnMut(&str) -> Option<String>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(html.len() + html.len() / 8);
    let mut copied = 0;
    let mut at = 0;
    while let Some(found) = memchr::memchr(b'<', &html[at..]) {
        let start = at + found;
        if html[start..].starts_with(b"<!--") {
            match find(&html[start + 4..], b"-->") {
                Some(end) => at = start + 4 + end + 3,
                None => break,
            }
            continue;
        }
        let Some(tag) = read_tag(html, start) else {
            break;
        };
        at = tag.end;
        if !tag.is_link {
            continue;
        }
        let Some(href) = tag.href else { continue };
        if tag.opted_out {
            continue;
        }
        let url = browser_url(&html[href.value.clone()]);
        let text = link_text(html, tag.end);
        if !policy.tracks(&url, text) {
            continue;
        }
        let Some(new_url) = replace(&url) else {
            continue;
        };
        out.extend_from_slice(&html[copied..href.quoted.start]);
        out.push(b'"');
        out.extend_from_slice(new_url.as_bytes());
        out.push(b'"');
        copied = href.quoted.end;
    }
    out.extend_from_slice(&html[copied..]);
    out
}

/// An attribute value: the bytes between the quotes, and the span with them.
struct AttributeValue {
    value: std::ops::Range<usize>,
    quoted: std::ops::Range<usize>,
}

/// A start or end tag (or a declaration), as far as the rewriting needs.
struct Tag {
    /// Just past the closing `>`.
    end: usize,
    /// `<a ...>` or `<area ...>`.
    is_link: bool,
    href: Option<AttributeValue>,
    opted_out: bool,
}

/// Reads the tag that starts at `start` (a `<`). `None` when it never
/// closes. A `<` that starts no tag (`a < b`) is a tag of one byte.
fn read_tag(html: &[u8], start: usize) -> Option<Tag> {
    let name_start = start + 1;
    let name_len = html[name_start..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric())
        .count();
    if name_len == 0 {
        return Some(Tag {
            end: start + 1,
            is_link: false,
            href: None,
            opted_out: false,
        });
    }
    let name = &html[name_start..name_start + name_len];
    let is_link = name.eq_ignore_ascii_case(b"a") || name.eq_ignore_ascii_case(b"area");
    let mut tag = Tag {
        end: 0,
        is_link,
        href: None,
        opted_out: false,
    };
    let mut at = name_start + name_len;
    loop {
        at += html[at..]
            .iter()
            .take_while(|b| b.is_ascii_whitespace() || **b == b'/')
            .count();
        match html.get(at)? {
            b'>' => {
                tag.end = at + 1;
                return Some(tag);
            }
            _ => at = read_attribute(html, at, &mut tag)?,
        }
    }
}

/// Reads one attribute at `at`, noting `href` and the opt-out; returns
/// where the next one may start.
fn read_attribute(html: &[u8], at: usize, tag: &mut Tag) -> Option<usize> {
    let name_len = html[at..]
        .iter()
        .take_while(|b| !b.is_ascii_whitespace() && !matches!(b, b'=' | b'>' | b'/'))
        .count()
        .max(1);
    let name = &html[at..at + name_len];
    if name.eq_ignore_ascii_case(OPT_OUT_ATTRIBUTE.as_bytes()) {
        tag.opted_out = true;
    }
    let mut next = skip_blanks(html, at + name_len);
    if html.get(next) != Some(&b'=') {
        return Some(next);
    }
    next = skip_blanks(html, next + 1);
    let value = match html.get(next)? {
        quote @ (b'"' | b'\'') => {
            let close = memchr::memchr(*quote, &html[next + 1..])?;
            AttributeValue {
                value: next + 1..next + 1 + close,
                quoted: next..next + close + 2,
            }
        }
        _ => {
            let len = html[next..]
                .iter()
                .take_while(|b| !b.is_ascii_whitespace() && **b != b'>')
                .count();
            AttributeValue {
                value: next..next + len,
                quoted: next..next + len,
            }
        }
    };
    let end = value.quoted.end;
    if tag.href.is_none() && name.eq_ignore_ascii_case(b"href") {
        tag.href = Some(value);
    }
    Some(end)
}

fn skip_blanks(html: &[u8], at: usize) -> usize {
    at + html[at..]
        .iter()
        .take_while(|b| b.is_ascii_whitespace())
        .count()
}

/// The text after a link's start tag, up to its `</a` (bounded).
fn link_text(html: &[u8], from: usize) -> &[u8] {
    let window = &html[from..html.len().min(from + MAX_LINK_TEXT_SCAN)];
    let end = find_ignore_case(window, b"</a").unwrap_or(window.len());
    &window[..end]
}

/// The URL a browser follows for this attribute value.
pub fn browser_url(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let decoded = decode_references(&text);
    decoded
        .trim_matches(|c: char| c.is_ascii_whitespace())
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect()
}

/// Decodes numeric character references and the named ones URLs meet
/// (`&amp;` `&lt;` `&gt;` `&quot;` `&apos;` `&nbsp;`); others stay as written.
fn decode_references(text: &str) -> Cow<'_, str> {
    if !text.contains('&') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        match reference(rest) {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The character of the reference at the start of `text` and its length.
fn reference(text: &str) -> Option<(char, usize)> {
    let semicolon = text[..text.len().min(12)].find(';')?;
    let body = &text[1..semicolon];
    let c = if let Some(number) = body.strip_prefix('#') {
        let code = match number.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => number.parse().ok()?,
        };
        char::from_u32(code)?
    } else {
        match body {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            "nbsp" => '\u{a0}',
            _ => return None,
        }
    };
    Some((c, semicolon + 1))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

fn find_ignore_case(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    find_ignore_case(haystack, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rewrites with `T<n>` for the n-th tracked URL; returns the HTML and
    /// the URLs in order.
    fn rewrite(html: &str, unsubscribe: &[&str]) -> (String, Vec<String>) {
        let policy = LinkPolicy {
            unsubscribe_urls: unsubscribe.iter().map(|u| u.to_string()).collect(),
        };
        let mut urls = Vec::new();
        let out = rewrite_links(html.as_bytes(), &policy, &mut |url| {
            urls.push(url.to_owned());
            Some(format!("T{}", urls.len()))
        });
        (String::from_utf8(out).unwrap(), urls)
    }

    #[test]
    fn web_links_are_rewritten_in_any_quoting_and_case() {
        let (out, urls) = rewrite(
            "<p><a href=\"https://a.example/x\">A</a> <A CLASS=b HREF='http://b.example/'>B</A> \
             <a href=https://c.example/?q=1>C</a><area shape=rect href=\"https://d.example/\"></p>",
            &[],
        );
        assert_eq!(
            out,
            "<p><a href=\"T1\">A</a> <A CLASS=b HREF=\"T2\">B</A> \
             <a href=\"T3\">C</a><area shape=rect href=\"T4\"></p>"
        );
        assert_eq!(
            urls,
            [
                "https://a.example/x",
                "http://b.example/",
                "https://c.example/?q=1",
                "https://d.example/"
            ]
        );
    }

    #[test]
    fn other_schemes_anchors_and_opted_out_links_are_left() {
        let html = "<a href=\"mailto:x@example.com\">m</a><a href=\"tel:+123\">t</a>\
                    <a href=\"#top\">top</a><a href=\"{{url}}\">tpl</a>\
                    <a data-no-track href=\"https://x.example/\">x</a><a name=\"n\">n</a>\
                    <abbr href=\"https://not.a.link/\">abbr</abbr>";
        let (out, urls) = rewrite(html, &[]);
        assert_eq!(out, html);
        assert!(urls.is_empty());
    }

    #[test]
    fn unsubscribe_links_are_left() {
        let html = "<a href=\"https://x.example/Unsubscribe?u=1\">here</a>\
                    <a href=\"https://x.example/u/1\">Unsubscribe from this list</a>\
                    <a href=\"https://x.example/l/9\">leave</a>";
        let (out, urls) = rewrite(html, &["https://x.example/l/9"]);
        assert_eq!(out, html);
        assert!(urls.is_empty());
    }

    #[test]
    fn the_url_given_back_is_the_one_a_browser_follows() {
        let (out, urls) = rewrite(
            "<a href=\" https://x.example/p?a=1&amp;b=2&#38;c=3&#x26;d=&lt;4&gt;&unknown;\n\">x</a>",
            &[],
        );
        assert_eq!(out, "<a href=\"T1\">x</a>");
        assert_eq!(urls, ["https://x.example/p?a=1&b=2&c=3&d=<4>&unknown;"]);
    }

    #[test]
    fn comments_and_unclosed_tags_are_not_rewritten() {
        let html = "<!-- <a href=\"https://hidden.example/\"> --><a href=\"https://x.example/\">x</a><a href=\"https://y.example/";
        let (out, urls) = rewrite(html, &[]);
        assert_eq!(
            out,
            "<!-- <a href=\"https://hidden.example/\"> --><a href=\"T1\">x</a><a href=\"https://y.example/"
        );
        assert_eq!(urls, ["https://x.example/"]);
    }

    #[test]
    fn a_declined_link_stays_as_written() {
        let policy = LinkPolicy {
            unsubscribe_urls: Vec::new(),
        };
        let html = b"<a href='https://x.example/'>x</a> a < b";
        assert_eq!(rewrite_links(html, &policy, &mut |_| None), html);
    }
}
