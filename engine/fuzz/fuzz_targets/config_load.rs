//! The configuration loader on arbitrary text: every input is either a
//! configuration or an error message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendengine::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::parse(text) {
        assert!(!e.to_string().is_empty());
    }
});
