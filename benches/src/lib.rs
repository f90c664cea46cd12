//! Shared code of the benchmark tools: `sendengine-sink` (an SMTP server that
//! accepts and counts messages, with fault modes) and `sendengine-loadgen` (an
//! SMTP client that injects N messages over C connections), and
//! `sendengine-httpload` (the same for the HTTP injection API).
//!
//! The binaries in `src/bin/` only parse arguments and print; the protocol
//! work lives here so it can be unit tested.

pub mod args;
pub mod conn;
pub mod fault;
pub mod httpload;
pub mod loadgen;
pub mod message;
pub mod reply;
pub mod runner;
pub mod sink;
pub mod tls;

/// Opens a file for appending, creating it and its parent folders, so that
/// `--log var/sink.jsonl` works in a fresh checkout.
pub fn open_append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}
