//! Time stamps in the two forms mail needs: RFC 3339 for event logs and
//! RFC 5322 for `Date:` and `Received:` headers (always UTC).

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

struct Parts {
    year: i64,
    month: u32,
    day: u32,
    hour: u64,
    min: u64,
    sec: u64,
    millis: u64,
    weekday: usize,
}

fn parts(ms: u64) -> Parts {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let (year, month, day) = civil(days);
    let rem = secs % 86_400;
    Parts {
        year,
        month,
        day,
        hour: rem / 3600,
        min: rem % 3600 / 60,
        sec: rem % 60,
        millis: ms % 1000,
        weekday: ((days + 4).rem_euclid(7)) as usize, // 1970-01-01 was a Thursday
    }
}

/// `2026-11-21T10:30:00.123Z`
///
/// Every event carries one or two: written digit by digit, as `format!`
/// cost more than the date arithmetic.
pub fn rfc3339(ms: u64) -> String {
    let p = parts(ms);
    if !(0..=9999).contains(&p.year) {
        return format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            p.year, p.month, p.day, p.hour, p.min, p.sec, p.millis
        );
    }
    let mut out = String::with_capacity(24);
    let mut digits = |value: u64, width: u32, after: char| {
        for power in (0..width).rev() {
            out.push(char::from(b'0' + (value / 10u64.pow(power) % 10) as u8));
        }
        out.push(after);
    };
    digits(p.year as u64, 4, '-');
    digits(u64::from(p.month), 2, '-');
    digits(u64::from(p.day), 2, 'T');
    digits(p.hour, 2, ':');
    digits(p.min, 2, ':');
    digits(p.sec, 2, '.');
    digits(p.millis, 3, 'Z');
    out
}

/// `Sat, 21 Nov 2026 10:30:00 +0000`
pub fn rfc5322(ms: u64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let p = parts(ms);
    format!(
        "{}, {} {} {:04} {:02}:{:02}:{:02} +0000",
        DAYS[p.weekday],
        p.day,
        MONTHS[(p.month - 1) as usize],
        p.year,
        p.hour,
        p.min,
        p.sec
    )
}

/// `2026-11-21`: the UTC date of day number `day` (days since 1970-01-01).
pub fn iso_date(day: u32) -> String {
    let (year, month, day) = civil(i64::from(day));
    format!("{year:04}-{month:02}-{day:02}")
}

/// The day number of a `YYYY-MM-DD` date, `None` unless it is a real
/// date on or after 1970-01-01.
pub fn parse_iso_date(text: &str) -> Option<u32> {
    let mut parts = text.splitn(3, '-');
    let mut next = |len: usize| {
        parts
            .next()
            .filter(|p| p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<i64>().ok())
    };
    let (year, month, day) = (next(4)?, next(2)?, next(2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // days_from_civil, then the way back must give the same date.
    let y = year - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let same = civil(days) == (year, month as u32, day as u32);
    same.then(|| u32::try_from(days).ok()).flatten()
}

/// Days since 1970-01-01 of a civil date (the inverse of `civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds since the epoch of an RFC 3339 time:
/// `2026-11-21T10:30:00Z`, `2026-11-21T10:30:00.123+01:00` (a space or a
/// lower-case `t`/`z` is accepted too). `None` for anything else, or a
/// time before 1970.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.trim().as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0u32, |n, d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators.iter().any(|(i, c)| b.get(*i) != Some(c))
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
    {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, min, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0u64;
    if b.get(at) == Some(&b'.') {
        let digits = b[at + 1..]
            .iter()
            .take_while(|d| d.is_ascii_digit())
            .count();
        if digits == 0 {
            return None;
        }
        // Milliseconds: the first three digits, padded.
        for i in 0..3 {
            let d = if i < digits {
                u64::from(b[at + 1 + i] - b'0')
            } else {
                0
            };
            millis = millis * 10 + d;
        }
        at += 1 + digits;
    }
    let offset_secs: i64 = match b.get(at..) {
        Some(b"Z" | b"z") => 0,
        Some(rest) if rest.len() == 6 && matches!(rest[0], b'+' | b'-') && rest[3] == b':' => {
            let (h, m) = (num(at + 1, 2)?, num(at + 4, 2)?);
            let secs = i64::from(h * 3600 + m * 60);
            if rest[0] == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + min * 60 + sec) - offset_secs;
    u64::try_from(secs).ok().map(|s| s * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates_both_ways() {
        assert_eq!(iso_date(0), "1970-01-01");
        assert_eq!(iso_date(20_778), "2026-11-21");
        assert_eq!(parse_iso_date("2026-11-21"), Some(20_778));
        assert_eq!(
            parse_iso_date("2000-02-29").map(iso_date).as_deref(),
            Some("2000-02-29")
        );
        for bad in [
            "2026-02-30",
            "2026-13-01",
            "1969-12-31",
            "2026-1-01",
            "today",
            "2026-11-21x",
        ] {
            assert_eq!(parse_iso_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // 2026-11-21 10:30:00.123 UTC, a Saturday.
        let t = 1_795_257_000_123;
        assert_eq!(rfc3339(t), "2026-11-21T10:30:00.123Z");
        assert_eq!(rfc5322(t), "Sat, 21 Nov 2026 10:30:00 +0000");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(253_402_300_800_000), "10000-01-01T00:00:00.000Z");
    }

    #[test]
    fn rfc3339_is_parsed_back_with_offsets_and_fractions() {
        let t = 1_795_257_000_123;
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        assert_eq!(parse_rfc3339("2026-11-21T10:30:00Z"), Some(t - 123));
        assert_eq!(parse_rfc3339("2026-11-21 11:30:00.1234+01:00"), Some(t));
        assert_eq!(parse_rfc3339("2026-11-21t05:30:00.123-05:00"), Some(t));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        for bad in [
            "2026-11-21",
            "2026-11-21T10:30:00",
            "2026-13-01T00:00:00Z",
            "2026-11-21T10:30:00.Z",
            "1h",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
