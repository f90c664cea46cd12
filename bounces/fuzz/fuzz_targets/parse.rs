//! Fuzz target: the bounce parser must never panic, and must always give at
//! least one record, whatever the bytes.
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;

/// mail-parser 0.11.9 has a `debug_assert!(false, ...)` reachable from a
/// malformed multipart; the parser catches that panic and reads the message
/// as plain text (see `src/mail.rs`). libFuzzer's panic hook would abort
/// before the unwind reaches the catch, so panics raised inside mail-parser
/// skip it; any other panic still aborts and is reported.
fn let_mail_parser_panics_unwind() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_mail_parser = info
                .location()
                .is_some_and(|at| at.file().contains("/mail-parser-"));
            if !in_mail_parser {
                fuzzer_hook(info);
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    let_mail_parser_panics_unwind();
    let records = sendengine_bounces::parse_message(data);
    assert!(!records.is_empty());
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sendengine_bounces::classify(550, None, text);
        let _ = sendengine_bounces::verp::decode(text, b"fuzz");
    }
});
