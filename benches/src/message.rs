//! Message content: the loadgen's generated messages (a body built once, a
//! small header block per message) and the sink's Message-ID lookup.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Printable characters per body line, before the CRLF.
pub const BODY_LINE_CHARS: usize = 76;

/// Most header lines the sink looks through for a Message-ID.
const MAX_HEADER_LINES_SCANNED: usize = 1000;

/// The body of every generated message: printable ASCII lines of 76
/// characters and CRLF, `size` bytes in all. A body is whole lines, so a
/// `size` of 1 gives 2 bytes. Some lines start with '.', which exercises
/// dot-stuffing.
pub fn build_body(size: usize) -> Vec<u8> {
    let size = if size == 1 { 2 } else { size };
    let full_line = BODY_LINE_CHARS + 2;
    let mut lengths = vec![full_line; size / full_line];
    match size % full_line {
        0 => {}
        // A lone byte cannot end in CRLF: take one char from the line before.
        1 => {
            if let Some(last) = lengths.last_mut() {
                *last -= 1;
            }
            lengths.push(2);
        }
        rest => lengths.push(rest),
    }
    let mut body = Vec::with_capacity(size);
    for (index, length) in lengths.into_iter().enumerate() {
        body.extend((0..length - 2).map(|column| printable(index + column)));
        body.extend_from_slice(b"\r\n");
    }
    body
}

/// Cycles through '!' ..= '~'.
fn printable(n: usize) -> u8 {
    b'!' + (n % 94) as u8
}

/// Returns `body` as it goes on the wire: dot-stuffed, followed by the final
/// "." line.
pub fn stuff_for_wire(body: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(body.len() + body.len() / 50 + 5);
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    if !wire.is_empty() && !wire.ends_with(b"\r\n") {
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b".\r\n");
    wire
}

/// The Message-ID the loadgen gives message `seq` of process `pid`.
pub fn loadgen_message_id(pid: u32, seq: u64) -> String {
    format!("<lg-{pid}-{seq}@loadgen.invalid>")
}

/// Envelope and header values of one generated message.
pub struct HeaderFields<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub message_id: &'a str,
    pub seq: u64,
}

/// Writes the header block (ending with the empty line) into `out`.
pub fn write_headers(out: &mut Vec<u8>, fields: &HeaderFields<'_>) {
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "From: <{}>\r\nTo: <{}>\r\nSubject: loadgen message {}\r\nDate: {}\r\n\
         Message-ID: {}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
        fields.from,
        fields.to,
        fields.seq,
        rfc5322_date(SystemTime::now()),
        fields.message_id,
    );
}

/// Formats a time as an RFC 5322 date in UTC, e.g. "Tue, 02 Jan 2024 03:04:05 +0000".
pub fn rfc5322_date(time: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let day_secs = secs % 86_400;
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31); Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The value of the Message-ID header (unfolded, trimmed), if the header
/// section has one.
pub fn find_message_id(message: &[u8]) -> Option<String> {
    let mut lines = message
        .split_inclusive(|&b| b == b'\n')
        .take(MAX_HEADER_LINES_SCANNED)
        .peekable();
    while let Some(line) = lines.next() {
        if line == b"\r\n" || line == b"\n" {
            return None;
        }
        let Some(value) = header_value(line, b"message-id") else {
            continue;
        };
        let mut value = String::from_utf8_lossy(value).trim().to_string();
        while let Some(next) =
            lines.next_if(|next| next.starts_with(b" ") || next.starts_with(b"\t"))
        {
            value.push(' ');
            value.push_str(String::from_utf8_lossy(next).trim());
        }
        return Some(value.trim().to_string());
    }
    None
}

/// The bytes after "Name:" when `line` is the header `name` (case-insensitive).
fn header_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let (field, rest) = line.split_at(colon);
    field
        .trim_ascii_end()
        .eq_ignore_ascii_case(name)
        .then_some(&rest[1..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn body_has_exact_size_and_whole_lines() {
        for size in [0, 2, 3, 77, 78, 79, 80, 156, 157, 10_240] {
            let body = build_body(size);
            assert_eq!(body.len(), size, "size {size}");
            assert!(body.is_empty() || body.ends_with(b"\r\n"));
            for line in body.split_inclusive(|&b| b == b'\n') {
                assert!(line.len() <= BODY_LINE_CHARS + 2);
                assert!(line.ends_with(b"\r\n"));
            }
        }
        assert_eq!(build_body(1).len(), 2);
    }

    #[test]
    fn body_has_dot_lines_and_stuffing_round_trips() {
        let body = build_body(10_240);
        assert!(
            body.split_inclusive(|&b| b == b'\n')
                .any(|l| l.starts_with(b"."))
        );
        let wire = stuff_for_wire(&body);
        assert!(wire.ends_with(b"\r\n.\r\n"));
        let mut unstuffed = Vec::new();
        for line in wire.split_inclusive(|&b| b == b'\n') {
            if line == b".\r\n" {
                break;
            }
            unstuffed.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
        assert_eq!(unstuffed, body);
    }

    #[test]
    fn headers_carry_the_message_id() {
        let mut out = Vec::new();
        let id = loadgen_message_id(7, 42);
        write_headers(
            &mut out,
            &HeaderFields {
                from: "a@example.com",
                to: "b@example.net",
                message_id: &id,
                seq: 42,
            },
        );
        assert!(out.ends_with(b"\r\n\r\n"));
        assert_eq!(
            find_message_id(&out).as_deref(),
            Some("<lg-7-42@loadgen.invalid>")
        );
    }

    #[test]
    fn message_id_lookup_handles_case_folding_and_absence() {
        let folded = b"Subject: x\r\nMESSAGE-ID:\r\n <a@b>\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(find_message_id(folded).as_deref(), Some("<a@b>"));
        let in_body_only = b"Subject: x\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(find_message_id(in_body_only), None);
    }

    #[test]
    fn formats_dates() {
        let time = UNIX_EPOCH + Duration::from_secs(1_704_164_645);
        assert_eq!(rfc5322_date(time), "Tue, 02 Jan 2024 03:04:05 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc5322_date(leap), "Tue, 29 Feb 2000 00:00:00 +0000");
    }
}
