//! The EHLO reply, the one multi-line reply of our server that carries no
//! enhanced status code. Every other reply is a `crate::values::Reply`.

/// Appends the EHLO reply in wire form to `out`: the greeting, the
/// extensions every listener of ours offers, then `extra` (STARTTLS, AUTH
/// where they apply). EHLO lines carry no enhanced code (RFC 2034 leaves it
/// out of EHLO). Written in place: it is sent once per connection.
pub fn write_ehlo_reply(
    out: &mut Vec<u8>,
    host: &str,
    peer: std::net::IpAddr,
    max_size: u64,
    extra: &[&str],
) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "250-{host} greets {peer}\r\n250-PIPELINING\r\n250-SIZE {max_size}\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
    );
    let lines = std::iter::once("ENHANCEDSTATUSCODES").chain(extra.iter().copied());
    let count = 1 + extra.len();
    for (i, line) in lines.enumerate() {
        let sep = if i + 1 == count { b' ' } else { b'-' };
        out.extend_from_slice(b"250");
        out.push(sep);
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ehlo_reply_ends_with_a_space_line() {
        let mut out = Vec::new();
        write_ehlo_reply(&mut out, "mx.test", "192.0.2.1".parse().unwrap(), 1000, &[]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "250-mx.test greets 192.0.2.1\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n"
        );
        let mut out = Vec::new();
        write_ehlo_reply(
            &mut out,
            "mx.test",
            "::1".parse().unwrap(),
            5,
            &["STARTTLS", "AUTH PLAIN LOGIN"],
        );
        assert!(
            String::from_utf8(out)
                .unwrap()
                .ends_with("250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n")
        );
    }
}
