//! VERP tags: the part of the return path `bounces+TAG@domain` that ties a
//! bounce back to one message and recipient.
//!
//! Tags are lowercase base32 (no padding), so they survive servers that fold
//! the case of addresses. Two forms, told apart by their length:
//! - **standalone** (32 characters, 20 bytes): the message id (8 bytes), the
//!   recipient index (4 bytes) and the first 8 bytes of an HMAC-SHA256 over
//!   them with the server secret.
//! - **fleet** (40 characters, 25 bytes): a version byte (2), the sending
//!   node's number (4 bytes), the message id, the recipient index, and 8
//!   bytes of an HMAC over all of them (under its own context string). Message
//!   ids are unique per node only, so in a fleet the node is part of what a
//!   tag names: any node that receives the bounce knows whose message it is.
//!   `bounces+` and 40 characters make a 48-octet local part (the limit is 64).
//!
//! A forged or damaged tag fails the HMAC check, so nobody can suppress
//! addresses by sending us made-up bounces.

use aws_lc_rs::{constant_time, hmac};

/// Length of a standalone tag in characters.
pub const TAG_LEN: usize = 32;
/// Length of a fleet tag (one that names the sending node) in characters.
pub const FLEET_TAG_LEN: usize = 40;
/// Bytes of HMAC kept in a tag (64 bits: forging one takes ~2^63 tries).
const MAC_LEN: usize = 8;
const PAYLOAD_LEN: usize = 12;
const RAW_LEN: usize = PAYLOAD_LEN + MAC_LEN;
/// Version byte, node number, then the standalone payload.
const FLEET_PAYLOAD_LEN: usize = 1 + 4 + PAYLOAD_LEN;
const FLEET_RAW_LEN: usize = FLEET_PAYLOAD_LEN + MAC_LEN;
const FLEET_VERSION: u8 = 2;
/// Separates these MACs from any other use of the same secret.
const MAC_CONTEXT: &[u8] = b"sendengine-verp-v1";
const FLEET_MAC_CONTEXT: &[u8] = b"sendengine-verp-v2";
const BASE32_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// What a tag names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tagged {
    /// The number of the fleet node that sent the message; none for a
    /// standalone tag (a node without `[cluster]`, or mail sent before it
    /// joined a fleet).
    pub node: Option<u32>,
    pub id: u64,
    pub rcpt: u32,
}

impl Tagged {
    /// What a standalone tag names.
    pub fn standalone(id: u64, rcpt: u32) -> Tagged {
        Tagged {
            node: None,
            id,
            rcpt,
        }
    }
}

/// Why a tag was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerpError {
    #[error("VERP tag has {0} characters, expected {TAG_LEN} or {FLEET_TAG_LEN}")]
    BadLength(usize),
    #[error("VERP tag contains {0:?}, which is not base32 (a-z, 2-7)")]
    BadCharacter(char),
    #[error("VERP tag fails its HMAC check: forged, damaged, or made with another secret")]
    BadMac,
    #[error("address {0:?} has no VERP tag (expected local+TAG@domain)")]
    NoTag(String),
}

/// Makes the standalone tag for one recipient of one message.
pub fn encode(message_id: u64, recipient_index: u32, secret: &[u8]) -> String {
    let payload = payload(message_id, recipient_index);
    let mut raw = [0u8; RAW_LEN];
    raw[..PAYLOAD_LEN].copy_from_slice(&payload);
    raw[PAYLOAD_LEN..].copy_from_slice(&mac(MAC_CONTEXT, &payload, secret).as_ref()[..MAC_LEN]);
    base32_encode(&raw)
}

/// Makes the fleet tag for one recipient of one message sent by `node`.
pub fn encode_for_node(node: u32, message_id: u64, recipient_index: u32, secret: &[u8]) -> String {
    let mut payload = [0u8; FLEET_PAYLOAD_LEN];
    payload[0] = FLEET_VERSION;
    payload[1..5].copy_from_slice(&node.to_be_bytes());
    payload[5..].copy_from_slice(&self::payload(message_id, recipient_index));
    let mut raw = [0u8; FLEET_RAW_LEN];
    raw[..FLEET_PAYLOAD_LEN].copy_from_slice(&payload);
    raw[FLEET_PAYLOAD_LEN..]
        .copy_from_slice(&mac(FLEET_MAC_CONTEXT, &payload, secret).as_ref()[..MAC_LEN]);
    base32_encode(&raw)
}

/// Reads a tag of either form back (any letter case) and checks its HMAC.
pub fn decode(tag: &str, secret: &[u8]) -> Result<Tagged, VerpError> {
    let raw = base32_decode(tag)?;
    let (context, payload_len) = match raw.len() {
        RAW_LEN => (MAC_CONTEXT, PAYLOAD_LEN),
        _ => (FLEET_MAC_CONTEXT, FLEET_PAYLOAD_LEN),
    };
    let (payload, tag_mac) = raw.split_at(payload_len);
    let expected = mac(context, payload, secret);
    constant_time::verify_slices_are_equal(tag_mac, &expected.as_ref()[..MAC_LEN])
        .map_err(|_| VerpError::BadMac)?;
    // Signed with our secret: a fleet payload's version byte is ours too.
    let (node, rest) = match payload.len() {
        PAYLOAD_LEN => (None, payload),
        _ => (Some(be_u32(&payload[1..5])), &payload[5..]),
    };
    let mut id = [0u8; 8];
    id.copy_from_slice(&rest[..8]);
    Ok(Tagged {
        node,
        id: u64::from_be_bytes(id),
        rcpt: be_u32(&rest[8..12]),
    })
}

fn be_u32(bytes: &[u8]) -> u32 {
    let mut four = [0u8; 4];
    four.copy_from_slice(bytes);
    u32::from_be_bytes(four)
}

/// The MAIL FROM address: `local+tag@domain`.
pub fn return_path(local: &str, tag: &str, domain: &str) -> String {
    format!("{local}+{tag}@{domain}")
}

/// The tag of an address such as `Bounces+TAG@Example.com` (or `<...>`),
/// lowercased; the HMAC is not checked here (see [`decode`]).
pub fn tag_from_address(address: &str) -> Result<String, VerpError> {
    let address = address.trim().trim_start_matches('<').trim_end_matches('>');
    let no_tag = || VerpError::NoTag(address.to_string());
    let (local, _domain) = address.rsplit_once('@').ok_or_else(no_tag)?;
    let (_, tag) = local.rsplit_once('+').ok_or_else(no_tag)?;
    if !is_tag_len(tag.len()) || !tag.bytes().all(is_base32_byte) {
        return Err(no_tag());
    }
    Ok(tag.to_ascii_lowercase())
}

/// Decodes the tag of a recipient address and checks it.
pub fn decode_address(address: &str, secret: &[u8]) -> Result<Tagged, VerpError> {
    decode(&tag_from_address(address)?, secret)
}

/// Finds the first `+TAG@` in free text (headers, bodies), lowercased.
/// Only shape is checked: callers decode with the secret.
pub fn find_tag(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(offset) = bytes.get(from..)?.iter().position(|&b| b == b'+') {
        let start = from + offset + 1;
        for len in [TAG_LEN, FLEET_TAG_LEN] {
            let end = start + len;
            if let Some(candidate) = bytes.get(start..end)
                && bytes.get(end) == Some(&b'@')
                && candidate.iter().copied().all(is_base32_byte)
            {
                return Some(String::from_utf8_lossy(candidate).to_ascii_lowercase());
            }
        }
        from = start;
    }
    None
}

fn is_tag_len(len: usize) -> bool {
    len == TAG_LEN || len == FLEET_TAG_LEN
}

fn is_base32_byte(b: u8) -> bool {
    b.is_ascii_alphabetic() || (b'2'..=b'7').contains(&b)
}

fn payload(message_id: u64, recipient_index: u32) -> [u8; PAYLOAD_LEN] {
    let mut payload = [0u8; PAYLOAD_LEN];
    payload[..8].copy_from_slice(&message_id.to_be_bytes());
    payload[8..].copy_from_slice(&recipient_index.to_be_bytes());
    payload
}

fn mac(context: &[u8], payload: &[u8], secret: &[u8]) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(context);
    ctx.update(payload);
    ctx.sign()
}

fn base32_encode(raw: &[u8]) -> String {
    // 20 or 25 bytes = 160 or 200 bits: whole groups of 5 bits, no padding.
    let mut out = String::with_capacity(raw.len() * 8 / 5);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in raw {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(
                BASE32_ALPHABET[((buffer >> bits) & 31) as usize],
            ));
        }
    }
    out
}

/// The bytes of a tag of either length (20 or 25 bytes).
fn base32_decode(tag: &str) -> Result<Vec<u8>, VerpError> {
    if !is_tag_len(tag.len()) {
        return Err(VerpError::BadLength(tag.chars().count()));
    }
    let mut raw = Vec::with_capacity(FLEET_RAW_LEN);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for c in tag.chars() {
        let value = base32_value(c).ok_or(VerpError::BadCharacter(c))?;
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            raw.push((buffer >> bits) as u8);
        }
    }
    Ok(raw)
}

fn base32_value(c: char) -> Option<u32> {
    match c.to_ascii_lowercase() {
        c @ 'a'..='z' => Some(c as u32 - 'a' as u32),
        c @ '2'..='7' => Some(c as u32 - '2' as u32 + 26),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test secret, 32 bytes or more...";

    /// xorshift64*: enough randomness for ids, no dependency.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    #[test]
    fn round_trip_of_100000_random_ids() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..100_000 {
            let id = rng.next();
            let index = rng.next() as u32;
            let tag = encode(id, index, SECRET);
            assert_eq!(tag.len(), TAG_LEN);
            assert!(tag.bytes().all(|b| BASE32_ALPHABET.contains(&b)), "{tag}");
            assert_eq!(decode(&tag, SECRET), Ok(Tagged::standalone(id, index)));
        }
    }

    #[test]
    fn extremes_round_trip() {
        for (id, index) in [(0, 0), (u64::MAX, u32::MAX), (1, u32::MAX)] {
            assert_eq!(
                decode(&encode(id, index, SECRET), SECRET),
                Ok(Tagged::standalone(id, index))
            );
        }
    }

    #[test]
    fn case_folding_is_harmless() {
        let tag = encode(42, 7, SECRET);
        assert_eq!(
            decode(&tag.to_ascii_uppercase(), SECRET),
            Ok(Tagged::standalone(42, 7))
        );
    }

    #[test]
    fn every_single_character_change_is_refused() {
        let tag = encode(123_456_789, 3, SECRET);
        for position in 0..TAG_LEN {
            let mut chars: Vec<char> = tag.chars().collect();
            chars[position] = if chars[position] == 'a' { 'b' } else { 'a' };
            let tampered: String = chars.into_iter().collect();
            assert!(decode(&tampered, SECRET).is_err(), "accepted {tampered}");
        }
    }

    #[test]
    fn wrong_secret_is_refused() {
        let tag = encode(99, 1, SECRET);
        assert_eq!(decode(&tag, b"another secret"), Err(VerpError::BadMac));
    }

    #[test]
    fn truncated_extended_and_garbage_tags_are_refused() {
        let tag = encode(99, 1, SECRET);
        assert_eq!(
            decode(&tag[..TAG_LEN - 1], SECRET),
            Err(VerpError::BadLength(31))
        );
        assert_eq!(
            decode(&format!("{tag}a"), SECRET),
            Err(VerpError::BadLength(33))
        );
        assert_eq!(decode("", SECRET), Err(VerpError::BadLength(0)));
        let bad = format!("{}1", &tag[..TAG_LEN - 1]);
        assert_eq!(decode(&bad, SECRET), Err(VerpError::BadCharacter('1')));
        let non_ascii = format!("{}é", &tag[..TAG_LEN - 2]);
        assert!(decode(&non_ascii, SECRET).is_err());
    }

    #[test]
    fn return_path_round_trips_through_an_address() {
        let tag = encode(5, 2, SECRET);
        let address = return_path("bounces", &tag, "mail.example.com");
        assert_eq!(address, format!("bounces+{tag}@mail.example.com"));
        let shouted = format!("<{}>", address.to_ascii_uppercase());
        assert_eq!(tag_from_address(&shouted).as_deref(), Ok(tag.as_str()));
        assert_eq!(
            decode_address(&shouted, SECRET),
            Ok(Tagged::standalone(5, 2))
        );
        assert!(tag_from_address("bounces@example.com").is_err());
        assert!(tag_from_address("bounces+short@example.com").is_err());
    }

    #[test]
    fn tags_are_found_in_text() {
        let tag = encode(77, 0, SECRET);
        let text = format!("To: <Bounces+{}@Example.com>\n", tag.to_ascii_uppercase());
        assert_eq!(find_tag(&text), Some(tag));
        assert_eq!(find_tag("a+b@c and +@ and ++"), None);
    }

    #[test]
    fn fleet_tags_round_trip_with_their_node() {
        let mut rng = XorShift(0x0123_4567_89AB_CDEF);
        for _ in 0..20_000 {
            let (node, id, index) = (rng.next() as u32, rng.next(), rng.next() as u32);
            let tag = encode_for_node(node, id, index, SECRET);
            assert_eq!(tag.len(), FLEET_TAG_LEN);
            assert!(tag.bytes().all(|b| BASE32_ALPHABET.contains(&b)), "{tag}");
            let want = Tagged {
                node: Some(node),
                id,
                rcpt: index,
            };
            assert_eq!(decode(&tag, SECRET), Ok(want));
            assert_eq!(decode(&tag.to_ascii_uppercase(), SECRET), Ok(want));
        }
    }

    #[test]
    fn fleet_tags_fit_the_local_part_and_are_found_in_text() {
        let tag = encode_for_node(7, u64::MAX, u32::MAX, SECRET);
        let address = return_path("bounces", &tag, "b.example");
        let local = address.split('@').next().unwrap();
        assert!(local.len() <= 64, "{local}");
        assert_eq!(
            decode_address(&address, SECRET).map(|t| t.node),
            Ok(Some(7))
        );
        let text = format!("Return-Path: <{}>\n", address.to_ascii_uppercase());
        assert_eq!(find_tag(&text), Some(tag));
    }

    #[test]
    fn a_fleet_tag_changed_anywhere_or_cut_to_a_standalone_length_is_refused() {
        let tag = encode_for_node(3, 123_456_789, 4, SECRET);
        for position in 0..FLEET_TAG_LEN {
            let mut chars: Vec<char> = tag.chars().collect();
            chars[position] = if chars[position] == 'a' { 'b' } else { 'a' };
            let tampered: String = chars.into_iter().collect();
            assert!(decode(&tampered, SECRET).is_err(), "accepted {tampered}");
        }
        // Neither form passes for the other: the MAC contexts differ.
        assert_eq!(decode(&tag[..TAG_LEN], SECRET), Err(VerpError::BadMac));
        assert_eq!(decode(&tag, b"another secret"), Err(VerpError::BadMac));
        assert!(decode(&tag[..FLEET_TAG_LEN - 1], SECRET).is_err());
    }

    #[test]
    fn the_same_message_on_two_nodes_makes_two_tags() {
        let a = encode_for_node(1, 99, 0, SECRET);
        let b = encode_for_node(2, 99, 0, SECRET);
        assert_ne!(a, b);
        assert_ne!(a, encode(99, 0, SECRET));
        assert_eq!(decode(&b, SECRET).map(|t| t.node), Ok(Some(2)));
    }
}
