//! Binary encoding of the values stored in the spool's tables.
//!
//! Every value starts with a version byte so the layout can change without a
//! migration of old files. Integers are little-endian, strings are a u32 length
//! followed by UTF-8 bytes. Decoding never trusts the input: a short or
//! malformed value is an error, not a panic.

use crate::message::MessageMeta;

const ENVELOPE_VERSION: u8 = 1;
const RECIPIENT_VERSION: u8 = 1;
const CLAIMED_FLAG: u8 = 1;

/// The `messages` table value: everything about a message except its body.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Envelope {
    pub(crate) mail_from: String,
    pub(crate) recipients: Vec<String>,
    pub(crate) meta: MessageMeta,
}

/// The `recipients` table value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RecipientState {
    pub(crate) attempts: u32,
    /// When the recipient is (or was last) due; equals the key of its
    /// `schedule` entry while it is scheduled.
    pub(crate) next_attempt_ms: u64,
    /// Handed to the delivery side, which holds it in memory.
    pub(crate) claimed: bool,
}

/// Why a stored value could not be decoded.
#[derive(Debug, PartialEq)]
pub(crate) struct DecodeError(pub(crate) String);

pub(crate) fn encode_envelope(
    mail_from: &str,
    recipients: &[String],
    meta: &MessageMeta,
) -> Vec<u8> {
    let text_bytes: usize = recipients.iter().map(|r| r.len() + 4).sum::<usize>() + mail_from.len();
    let mut out = Vec::with_capacity(text_bytes + 64);
    out.push(ENVELOPE_VERSION);
    put_str(&mut out, mail_from);
    put_u32(&mut out, count_u32(recipients.len()));
    for rcpt in recipients {
        put_str(&mut out, rcpt);
    }
    for field in [
        &meta.tenant,
        &meta.group,
        &meta.channel,
        &meta.campaign,
        &meta.route,
    ] {
        put_str(&mut out, field);
    }
    put_u64(&mut out, meta.received_at_ms);
    put_str(&mut out, &meta.client);
    put_str(&mut out, &meta.return_path_domain);
    if !meta.metadata.is_empty() {
        put_str(&mut out, &meta.metadata);
    }
    out
}

pub(crate) fn decode_envelope(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    let mut input = Reader::new(bytes);
    input.version(ENVELOPE_VERSION)?;
    let mail_from = input.string()?;
    let count = input.u32()? as usize;
    // Each recipient takes at least its 4-byte length: refuse counts the
    // remaining bytes cannot hold before allocating for them.
    if count > input.remaining() / 4 {
        return Err(DecodeError(format!(
            "recipient count {count} exceeds the record"
        )));
    }
    let recipients = (0..count)
        .map(|_| input.string())
        .collect::<Result<_, _>>()?;
    let meta = MessageMeta {
        tenant: input.string()?,
        group: input.string()?,
        channel: input.string()?,
        campaign: input.string()?,
        route: input.string()?,
        received_at_ms: input.u64()?,
        client: input.string()?,
        // Added after the first records were written: optional at the end.
        return_path_domain: if input.remaining() > 0 {
            input.string()?
        } else {
            String::new()
        },
        // Likewise, and written only when there is any.
        metadata: if input.remaining() > 0 {
            input.string()?
        } else {
            String::new()
        },
    };
    input.finish()?;
    Ok(Envelope {
        mail_from,
        recipients,
        meta,
    })
}

impl RecipientState {
    pub(crate) const ENCODED_LEN: usize = 14;

    pub(crate) fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0] = RECIPIENT_VERSION;
        out[1..5].copy_from_slice(&self.attempts.to_le_bytes());
        out[5..13].copy_from_slice(&self.next_attempt_ms.to_le_bytes());
        out[13] = if self.claimed { CLAIMED_FLAG } else { 0 };
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut input = Reader::new(bytes);
        input.version(RECIPIENT_VERSION)?;
        let state = RecipientState {
            attempts: input.u32()?,
            next_attempt_ms: input.u64()?,
            claimed: input.u8()? & CLAIMED_FLAG != 0,
        };
        input.finish()?;
        Ok(state)
    }
}

/// Lengths were checked against the spool limits (far below u32::MAX) before
/// encoding; saturating keeps this total without a panic path.
fn count_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

pub(crate) fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_str(out: &mut Vec<u8>, value: &str) {
    put_u32(out, count_u32(value.len()));
    out.extend_from_slice(value.as_bytes());
}

/// A cursor over a stored value that fails cleanly at the end of the input.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if len > self.bytes.len() {
            return Err(DecodeError(format!(
                "record truncated: wanted {len} more bytes, {} left",
                self.bytes.len()
            )));
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError("text is not UTF-8".into()))
    }

    pub(crate) fn version(&mut self, expected: u8) -> Result<(), DecodeError> {
        match self.u8()? {
            found if found == expected => Ok(()),
            found => Err(DecodeError(format!(
                "unknown record version {found} (this build reads version {expected})"
            ))),
        }
    }

    /// The bytes not read yet, consuming them.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.bytes.len() {
            0 => Ok(()),
            extra => Err(DecodeError(format!(
                "{extra} unexpected bytes after the record"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> MessageMeta {
        MessageMeta {
            tenant: "acme".into(),
            group: "g1".into(),
            channel: "transactional".into(),
            campaign: "spring-ü".into(),
            route: "relay-1".into(),
            received_at_ms: 1_700_000_000_123,
            client: "192.0.2.7 mx.example".into(),
            return_path_domain: "sl.example.com".into(),
            metadata: r#"{"crm_id":42}"#.into(),
        }
    }

    #[test]
    fn envelopes_without_metadata_end_at_the_return_path() {
        let mut plain = meta();
        plain.metadata.clear();
        let bytes = encode_envelope("a@b.c", &["x@y.z".into()], &plain);
        assert!(bytes.ends_with(b"sl.example.com"));
        assert_eq!(decode_envelope(&bytes).unwrap().meta, plain);
    }

    #[test]
    fn envelopes_written_before_the_return_path_field_still_decode() {
        let mut old = meta();
        old.return_path_domain.clear();
        old.metadata.clear();
        let mut bytes = encode_envelope("a@b.c", &["x@y.z".into()], &old);
        // The old form ended with the client field.
        bytes.truncate(bytes.len() - 4);
        let decoded = decode_envelope(&bytes).unwrap();
        assert_eq!(decoded.meta, old);
    }

    #[test]
    fn envelope_roundtrip() {
        let recipients = vec![
            "a@example.net".to_string(),
            "".to_string(),
            "ü@例え.jp".to_string(),
        ];
        let bytes = encode_envelope("sender@example.com", &recipients, &meta());
        let envelope = decode_envelope(&bytes).unwrap();
        assert_eq!(envelope.mail_from, "sender@example.com");
        assert_eq!(envelope.recipients, recipients);
        assert_eq!(envelope.meta, meta());
    }

    #[test]
    fn every_truncation_of_an_envelope_is_an_error() {
        let bytes = encode_envelope("s@x", &["r@y".to_string()], &meta());
        // Cut exactly before an optional last field is an older form (or
        // one without metadata).
        let no_metadata = bytes.len() - 4 - meta().metadata.len();
        let older_form = no_metadata - 4 - meta().return_path_domain.len();
        let forms = [older_form, no_metadata];
        for len in (0..bytes.len()).filter(|len| !forms.contains(len)) {
            assert!(
                decode_envelope(&bytes[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_envelope(&longer).is_err());
    }

    #[test]
    fn huge_recipient_count_is_refused_without_allocating() {
        let mut bytes = vec![ENVELOPE_VERSION];
        put_str(&mut bytes, "s@x");
        put_u32(&mut bytes, u32::MAX);
        let err = decode_envelope(&bytes).unwrap_err();
        assert!(err.0.contains("recipient count"), "{err:?}");
    }

    #[test]
    fn unknown_version_and_bad_utf8_are_errors() {
        let mut bytes = encode_envelope("s@x", &["r@y".to_string()], &meta());
        bytes[0] = 9;
        assert!(decode_envelope(&bytes).unwrap_err().0.contains("version 9"));

        let mut bad_text = vec![ENVELOPE_VERSION];
        put_u32(&mut bad_text, 1);
        bad_text.push(0xff);
        assert!(decode_envelope(&bad_text).unwrap_err().0.contains("UTF-8"));
    }

    #[test]
    fn recipient_state_roundtrip() {
        for state in [
            RecipientState {
                attempts: 0,
                next_attempt_ms: 0,
                claimed: false,
            },
            RecipientState {
                attempts: u32::MAX,
                next_attempt_ms: u64::MAX,
                claimed: true,
            },
        ] {
            assert_eq!(RecipientState::decode(&state.encode()), Ok(state));
        }
        assert!(RecipientState::decode(&[RECIPIENT_VERSION, 0, 0]).is_err());
    }
}
