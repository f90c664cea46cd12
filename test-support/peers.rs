//! The one rule for a test whose peer (a tool, a file, root) is missing,
//! shared by every crate's test support (`#[path]`-included: one function
//! does not need a crate of its own).
//!
//! Under CI (`CI` set and not `false`/`0`) a missing peer fails the test:
//! CI must run every test, and `scripts/install-test-deps.sh` installs every
//! peer. Elsewhere the test is skipped, loudly, saying what to install.

#![allow(dead_code)]

/// Fails the test under CI; otherwise prints `SKIPPED: ...` and returns, so
/// the caller can return too. `what` names the peer, `remedy` how to get it.
pub fn missing_peer(what: &str, remedy: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    if ci {
        panic!("{what} is missing ({remedy}); under CI a missing peer fails the test");
    }
    eprintln!("SKIPPED: {what} is missing ({remedy}); under CI=true this test fails");
}
