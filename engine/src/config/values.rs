//! The syntax of single values in `config.toml` beyond sizes and durations
//! (those are in `crate::values`, shared with tenancy and events):
//! networks ("127.0.0.0/8"), addresses and file modes. Errors say what a
//! valid value looks like; `keyed` puts the key in front.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::values::parse_duration;

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
