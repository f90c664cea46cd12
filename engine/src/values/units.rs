//! Sizes ("25MB") and durations ("5m") as written in `config.toml` and in
//! objects pushed over the admin socket. Every module that reads such a
//! value (config, tenancy, events) parses it here, so none of them needs
//! another for it. Errors say what a valid value looks like.

use std::time::Duration;

/// Parses `25MB`, `64KiB`, `100k`, `1G` or `512B`. K, M and G are powers
/// of 1024 whatever the spelling, as in most MTAs. The unit is required:
/// `max_message_size = "25"` meant 25 bytes and refused every message.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (n, unit) = number_and_unit(text).ok_or_else(|| {
        format!("`{text}` is not a size (expected e.g. \"25MB\", \"512KB\" or \"1048576B\")")
    })?;
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" => {
            return Err(format!(
                "`{text}` has no unit: write e.g. \"{n}MB\" (units B, KB, MB, GB; \"{n}B\" for bytes)"
            ));
        }
        "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("`{text}`: unknown size unit (use B, KB, MB or GB)")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses `250ms`, `10s`, `5m`, `1h` or `5d`. The unit is required: a bare
/// number could mean seconds or milliseconds, and `timeout = "10"` read
/// either way is a surprise to someone.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (n, unit) = number_and_unit(text).ok_or_else(|| {
        format!("`{text}` is not a duration (expected e.g. \"30s\", \"5m\", \"1h\" or \"5d\")")
    })?;
    let millis: u64 = match unit {
        "" => {
            return Err(format!(
                "`{text}` has no unit: write e.g. \"{n}s\" (units ms, s, m, h, d)"
            ));
        }
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "`{text}`: unknown duration unit (use ms, s, m, h or d)"
            ));
        }
    };
    n.checked_mul(millis)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// The leading number and the unit after it (trimmed, maybe empty).
fn number_and_unit(text: &str) -> Option<(u64, &str)> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    Some((number.parse().ok()?, unit.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_need_a_unit() {
        assert_eq!(parse_size("25MB").unwrap(), 25 << 20);
        assert_eq!(parse_size("512 kb").unwrap(), 512 << 10);
        assert_eq!(parse_size("100B").unwrap(), 100);
        let e = parse_size("25").unwrap_err();
        assert!(e.contains("no unit") && e.contains("\"25MB\""), "{e}");
        assert!(parse_size("ten").is_err());
        assert!(parse_size("10TB").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5d").unwrap(), Duration::from_secs(432_000));
        assert_eq!(parse_duration("7s").unwrap(), Duration::from_secs(7));
        let e = parse_duration("10").unwrap_err();
        assert!(e.contains("no unit") && e.contains("\"10s\""), "{e}");
        assert!(parse_duration("5 years").is_err());
        assert!(parse_duration("s").is_err());
    }
}
