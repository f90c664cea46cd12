//! The layout of one body in a segment file, and its check on read.
//!
//! A record is a 20-byte header then the body's bytes, unpadded:
//! magic `SEb1`, body length (u32 LE), message id (u64 LE), CRC-32 of the
//! body (u32 LE). The spool's database holds where a record starts and its
//! length; the header repeats the length and the id so a read can tell a
//! torn or misplaced record from the right one, and the CRC tells a body
//! whose bytes never reached the disk (a crash before its fdatasync) or
//! were damaged there. Such a body is never delivered: the message is
//! quarantined (see `quarantine.rs`).

use crate::id::MessageId;

pub(crate) const MAGIC: [u8; 4] = *b"SEb1";
pub(crate) const HEADER_BYTES: usize = 20;

/// CRC-32 (IEEE) of a body. Computed on the caller's thread when the
/// message is encoded, so the writer thread only copies bytes.
pub(crate) fn checksum(body: &[u8]) -> u32 {
    crc32fast::hash(body)
}

/// Appends the header and the body of a record to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, id: MessageId, body: &[u8], crc: u32) {
    let len = u32::try_from(body.len()).expect("bodies are at most MAX_BODY_BYTES");
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
}

/// Checks a whole record (`bytes` = header + body) read from where the
/// database says message `id`'s body of `len` bytes is; returns the body.
pub(crate) fn verify(bytes: &[u8], id: MessageId, len: u32) -> Result<&[u8], String> {
    if bytes.len() != HEADER_BYTES + len as usize {
        return Err(format!(
            "its segment record is cut short ({} of {} bytes)",
            bytes.len(),
            HEADER_BYTES + len as usize
        ));
    }
    let (header, body) = bytes.split_at(HEADER_BYTES);
    let field = |at: usize, n: usize| &header[at..at + n];
    if field(0, 4) != MAGIC {
        return Err("its segment record has no record header".into());
    }
    let stored_len = u32::from_le_bytes(field(4, 4).try_into().expect("4 bytes"));
    let stored_id = u64::from_le_bytes(field(8, 8).try_into().expect("8 bytes"));
    let stored_crc = u32::from_le_bytes(field(16, 4).try_into().expect("4 bytes"));
    if stored_len != len || stored_id != id {
        return Err(format!(
            "its segment record belongs to another body (message {stored_id:016x}, {stored_len} bytes)"
        ));
    }
    let crc = checksum(body);
    if crc != stored_crc {
        return Err(format!(
            "its body fails its checksum (CRC-32 {crc:08x}, stored {stored_crc:08x}): \
             never fully written, or damaged on disk"
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_any_damage_is_found() {
        let body = b"Subject: hi\r\n\r\nbody\r\n";
        let mut out = Vec::new();
        encode(&mut out, 7, body, checksum(body));
        assert_eq!(out.len(), HEADER_BYTES + body.len());
        assert_eq!(verify(&out, 7, body.len() as u32).unwrap(), body);

        assert!(
            verify(&out, 8, body.len() as u32)
                .unwrap_err()
                .contains("another body")
        );
        assert!(verify(&out[..out.len() - 1], 7, body.len() as u32).is_err());
        for at in [0, 5, 9, 17, HEADER_BYTES, out.len() - 1] {
            let mut damaged = out.clone();
            damaged[at] ^= 0x40;
            assert!(verify(&damaged, 7, body.len() as u32).is_err(), "byte {at}");
        }
        let zeros = vec![0u8; out.len()];
        assert!(verify(&zeros, 7, body.len() as u32).is_err());
    }
}
