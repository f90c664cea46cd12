//! The syntax of single values in `config.toml`: sizes ("25MB"), durations
//! ("5m"), networks ("127.0.0.0/8"), addresses and file modes. Errors say
//! what a valid value looks like; `keyed` puts the key in front.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// An IP network in CIDR notation, e.g. `127.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    addr: IpAddr,
    prefix: u8,
}

impl IpNetwork {
    pub fn parse(text: &str) -> Result<IpNetwork, String> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an IP network (expected e.g. 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("`{text}`: the prefix length must be 0 to {max}")),
            },
        };
        Ok(IpNetwork { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_match(
                u32::from(net) as u128,
                u32::from(ip) as u128,
                self.prefix,
                32,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_match(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn prefix_match(net: u128, ip: u128, prefix: u8, bits: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix;
    (net >> shift) == (ip >> shift)
}

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

/// Octal permission bits such as "0660".
pub(super) fn parse_mode(text: &str) -> Result<u32, String> {
    match u32::from_str_radix(text.trim(), 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!(
            "`{text}` is not a file mode (expected octal, e.g. \"0660\")"
        )),
    }
}

pub(super) fn keyed<T>(key: &str, r: Result<T, String>) -> Result<T, String> {
    r.map_err(|e| format!("{key}: {e}"))
}

pub(super) fn duration_or(
    key: &str,
    value: Option<&String>,
    default: Duration,
) -> Result<Duration, String> {
    match value {
        Some(v) => keyed(key, parse_duration(v)),
        None => Ok(default),
    }
}

pub(super) fn positive(key: &str, value: Option<usize>, default: usize) -> Result<usize, String> {
    match value.unwrap_or(default) {
        0 => Err(format!("{key}: must be at least 1")),
        n => Ok(n),
    }
}

pub(super) fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("`{text}` is not an address:port (expected e.g. 127.0.0.1:2525)"))
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
