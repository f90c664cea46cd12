//! The EHLO reply, the one multi-line reply of our server that carries no
//! enhanced status code. Every other reply is a `crate::values::Reply`.

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
