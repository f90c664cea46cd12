//! Fuzz target: the bounce parser must never panic, and must always give at
//! least one record, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let records = sendengine_bounces::parse_message(data);
    assert!(!records.is_empty());
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sendengine_bounces::classify(550, None, text);
        let _ = sendengine_bounces::verp::decode(text, b"fuzz");
    }
});
