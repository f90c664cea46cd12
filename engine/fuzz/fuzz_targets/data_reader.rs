//! The DATA reader (end of data, dot-unstuffing, line endings, size and
//! header limits) on arbitrary bytes, fed in arbitrary read sizes the way
//! the connection does. Whatever the split, a finished section must be the
//! same as when everything is fed at once, and kept input must stay bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendengine::smtp::connection::DataReader;

/// Feeds `input` in reads of `chunk` bytes; the body (if the end was
/// seen), the bytes used and the two limit flags.
fn run(input: &[u8], chunk: usize, max_size: u64) -> (Option<Vec<u8>>, usize, bool, bool) {
    let mut reader = DataReader::new(max_size);
    let mut pending: Vec<u8> = Vec::new();
    let mut used_total = 0;
    let mut done = false;
    for part in input.chunks(chunk.max(1)) {
        pending.extend_from_slice(part);
        let (used, end) = reader.feed(&pending);
        pending.drain(..used);
        used_total += used;
        assert!(
            pending.len() <= 64 * 1024 + chunk,
            "unbounded pending input"
        );
        if end {
            done = true;
            break;
        }
    }
    let section = reader.finish();
    (
        done.then_some(section.body),
        used_total,
        section.too_big,
        section.header_too_big,
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&[a, b, c], input)) = data.split_first_chunk::<3>() else {
        return;
    };
    let chunk = usize::from(a) * 7 + 1;
    let max_size = u64::from(u16::from_le_bytes([b, c]));
    let whole = run(input, input.len().max(1), max_size);
    let split = run(input, chunk, max_size);
    // Input after an unfinished line may be held back, so only a finished
    // DATA section has to come out the same.
    assert_eq!(
        whole.0.is_some(),
        split.0.is_some(),
        "the end was seen once"
    );
    if whole.0.is_some() {
        assert_eq!(whole, split, "the result depends on how reads were split");
    }
    if let (Some(body), _, false, false) = &whole {
        assert!(
            body.len() as u64 <= max_size + body.iter().filter(|&&b| b == b'\r').count() as u64
        );
        // Only CRLF line endings come out.
        for (i, &byte) in body.iter().enumerate() {
            if byte == b'\n' {
                assert!(i > 0 && body[i - 1] == b'\r', "bare LF in the body");
            }
            if byte == b'\r' {
                assert_eq!(body.get(i + 1), Some(&b'\n'), "bare CR in the body");
            }
        }
    }
});
