//! Tracking tokens: the part of a rewritten link or pixel URL that says
//! which message (and which link) it stands for, under an HMAC so that no
//! one can make a token that redirects anywhere we did not.
//!
//! Layout, base64url without padding:
//!
//! | bytes | what |
//! |---|---|
//! | 6 | admission time, unix ms, big-endian (the tracked-links key) |
//! | 6 | random nonce (the rest of the key) |
//! | 1-5 | link number, LEB128 (click tokens only) |
//! | 10 | HMAC-SHA256 of a kind byte (`c` or `o`) and the bytes above, truncated |
//!
//! A click token for one of the first 128 links is 23 bytes, 31
//! characters; an open token 22 bytes, 30 characters. 80 bits of HMAC
//! leave a forger one chance in 2^80 per try, and every try is an HTTP
//! request. The kind byte keeps an open token from passing as a click
//! token. The key is derived from the master key (`tracking` purpose), so
//! every node of a fleet verifies every node's tokens.

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sendengine_queue::TrackingKey;

/// Bytes of HMAC kept in a token.
pub const MAC_BYTES: usize = 10;
/// Bytes of the admission time and of the nonce.
const TIME_BYTES: usize = 6;
const NONCE_BYTES: usize = 6;
/// The nonce is this many random bits.
pub const NONCE_BITS: u32 = (NONCE_BYTES * 8) as u32;
/// Longest token text accepted before decoding (a click token with a
/// five-byte link number is 35 characters).
const MAX_TOKEN_CHARS: usize = 40;

const CLICK: u8 = b'c';
const OPEN: u8 = b'o';

/// The HMAC key for tokens.
pub struct TokenKey(hmac::Key);

impl TokenKey {
    pub fn new(secret: &[u8; 32]) -> TokenKey {
        TokenKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// The token of link `link` of the message with `key`.
    pub fn click(&self, key: TrackingKey, link: u32) -> String {
        let mut payload = key_bytes(key);
        push_leb128(&mut payload, link);
        self.seal(CLICK, payload)
    }

    /// The token of the open pixel of the message with `key`.
    pub fn open(&self, key: TrackingKey) -> String {
        self.seal(OPEN, key_bytes(key))
    }

    /// The message and link of a click token whose HMAC checks.
    pub fn verify_click(&self, token: &str) -> Option<(TrackingKey, u32)> {
        let payload = self.unseal(CLICK, token)?;
        let (key, rest) = split_key(&payload)?;
        let link = read_leb128(rest)?;
        Some((key, link))
    }

    /// The message of an open token whose HMAC checks.
    pub fn verify_open(&self, token: &str) -> Option<TrackingKey> {
        let payload = self.unseal(OPEN, token)?;
        match split_key(&payload)? {
            (key, []) => Some(key),
            _ => None,
        }
    }

    fn mac(&self, kind: u8, payload: &[u8]) -> [u8; MAC_BYTES] {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(&[kind]);
        context.update(payload);
        let tag = context.sign();
        let mut out = [0u8; MAC_BYTES];
        out.copy_from_slice(&tag.as_ref()[..MAC_BYTES]);
        out
    }

    fn seal(&self, kind: u8, mut payload: Vec<u8>) -> String {
        let mac = self.mac(kind, &payload);
        payload.extend_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(payload)
    }

    /// The payload of a token of `kind`, if its HMAC checks.
    fn unseal(&self, kind: u8, token: &str) -> Option<Vec<u8>> {
        if token.len() > MAX_TOKEN_CHARS {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        let payload_len = bytes.len().checked_sub(MAC_BYTES)?;
        let (payload, mac) = bytes.split_at(payload_len);
        let expected = self.mac(kind, payload);
        aws_lc_rs::constant_time::verify_slices_are_equal(mac, &expected).ok()?;
        Some(payload.to_vec())
    }
}

fn key_bytes(key: TrackingKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(TIME_BYTES + NONCE_BYTES + 5 + MAC_BYTES);
    out.extend_from_slice(&key.time_ms.to_be_bytes()[8 - TIME_BYTES..]);
    out.extend_from_slice(&key.nonce.to_be_bytes()[8 - NONCE_BYTES..]);
    out
}

fn split_key(payload: &[u8]) -> Option<(TrackingKey, &[u8])> {
    let time = payload.get(..TIME_BYTES)?;
    let nonce = payload.get(TIME_BYTES..TIME_BYTES + NONCE_BYTES)?;
    let widen = |bytes: &[u8]| bytes.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
    let key = TrackingKey {
        time_ms: widen(time),
        nonce: widen(nonce),
    };
    Some((key, &payload[TIME_BYTES + NONCE_BYTES..]))
}

fn push_leb128(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// The number, if `bytes` is exactly one LEB128 u32.
fn read_leb128(bytes: &[u8]) -> Option<u32> {
    let mut value: u32 = 0;
    for (i, byte) in bytes.iter().enumerate() {
        let shift = 7 * u32::try_from(i).ok()?;
        let low = u32::from(byte & 0x7f);
        value |= low.checked_shl(shift).filter(|v| v >> shift == low)?;
        if byte & 0x80 == 0 {
            return (i + 1 == bytes.len()).then_some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TokenKey {
        TokenKey::new(&[7u8; 32])
    }

    fn tracking_key() -> TrackingKey {
        TrackingKey {
            time_ms: 1_790_000_000_123,
            nonce: 0xabcd_ef01_2345,
        }
    }

    #[test]
    fn tokens_round_trip_and_are_short() {
        let k = key();
        for link in [0, 1, 127, 128, 5000, u32::MAX] {
            let token = k.click(tracking_key(), link);
            assert_eq!(k.verify_click(&token), Some((tracking_key(), link)));
        }
        assert_eq!(k.click(tracking_key(), 3).len(), 31);
        let open = k.open(tracking_key());
        assert_eq!(open.len(), 30);
        assert_eq!(k.verify_open(&open), Some(tracking_key()));
        assert!(
            open.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn forged_tokens_are_refused() {
        let k = key();
        let token = k.click(tracking_key(), 2);
        // Another key, another kind, and every single changed character.
        assert_eq!(TokenKey::new(&[8u8; 32]).verify_click(&token), None);
        assert_eq!(k.verify_open(&token), None);
        assert_eq!(k.verify_click(&k.open(tracking_key())), None);
        for at in 0..token.len() {
            let mut forged = token.clone().into_bytes();
            forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
            let forged = String::from_utf8(forged).unwrap();
            assert_eq!(k.verify_click(&forged), None, "changed at {at}");
        }
    }

    #[test]
    fn truncated_and_malformed_tokens_are_refused() {
        let k = key();
        let token = k.click(tracking_key(), 2);
        for cut in 0..token.len() {
            assert_eq!(k.verify_click(&token[..cut]), None, "cut at {cut}");
        }
        for junk in ["", "!!!!", "%2e%2e", &"A".repeat(500), "a b", "é"] {
            assert_eq!(k.verify_click(junk), None, "{junk:?}");
            assert_eq!(k.verify_open(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn leb128_refuses_overflow_and_trailing_bytes() {
        assert_eq!(read_leb128(&[0x05]), Some(5));
        assert_eq!(read_leb128(&[0x80, 0x01]), Some(128));
        assert_eq!(read_leb128(&[0x05, 0x00]), None);
        assert_eq!(read_leb128(&[0xff, 0xff, 0xff, 0xff, 0x7f]), None);
        assert_eq!(read_leb128(&[0x80]), None);
        assert_eq!(read_leb128(&[]), None);
    }
}
