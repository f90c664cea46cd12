//! Postfix's `smtp-source` (a real, independent SMTP client) against the sink.
//! Skipped with a printed reason when `smtp-source` is not installed
//! (Debian package `postfix`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{SinkProcess, run_guarded};

fn find_smtp_source() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("smtp-source"))
        .find(|candidate| candidate.is_file())
}

#[test]
fn smtp_source_delivers_to_the_sink() {
    let Some(smtp_source) = find_smtp_source() else {
        println!("skipped: smtp-source not found (install the Debian package postfix)");
        return;
    };
    let sink = SinkProcess::start(&[]);
    let output = run_guarded(Command::new(smtp_source).args([
        "-s",
        "5",
        "-m",
        "200",
        "-l",
        "1024",
        "-d",
        &format!("127.0.0.1:{}", sink.port()),
    ]));
    assert!(
        output.status.success(),
        "smtp-source failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let log = sink.log();
    assert_eq!(log.len(), 200);
    assert!(
        log.iter()
            .all(|entry| entry["size"].as_u64().unwrap() >= 1024)
    );
    assert_eq!(sink.terminate().trim(), "messages=200 recipients=200");
}
