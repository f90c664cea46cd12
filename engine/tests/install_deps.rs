//! `scripts/install-test-deps.sh` on a host that runs another MTA: it must
//! not replace that mail system with postfix unless told to
//! (`INSTALL_TEST_DEPS=1`, or `CI=true`). The script runs for real under
//! bash, on a PATH where `smtp-source` is missing, `dpkg-query` reports
//! exim4 installed, `id` says root, and `apt-get` only writes down what it
//! was asked to install.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Tools the script looks for, taken from the host when it has them.
const HOST_TOOLS: &[&str] = &[
    "python3",
    "perl",
    "swaks",
    "openssl",
    "systemd-analyze",
    "prlimit",
    "mount",
    "grep",
];

fn stub(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs the script on the fake host; returns its output and what apt-get
/// was asked to install ("" if it was not run).
fn run(env: &[(&str, &str)]) -> (Output, String) {
    let bin = tempfile::tempdir().unwrap();
    for tool in HOST_TOOLS {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap();
        let path = String::from_utf8_lossy(&found.stdout).trim().to_owned();
        if !path.is_empty() {
            std::os::unix::fs::symlink(&path, bin.path().join(tool)).unwrap();
        }
    }
    let log = bin.path().join("apt-get.log");
    stub(bin.path(), "id", "echo 0");
    stub(
        bin.path(),
        "dpkg-query",
        r#"case "$*" in *exim4-daemon-light*) printf 'install ok installed';; esac"#,
    );
    stub(
        bin.path(),
        "debconf-set-selections",
        "while read -r _; do :; done",
    );
    stub(
        bin.path(),
        "apt-get",
        &format!("echo \"$@\" >> {}", log.display()),
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-test-deps.sh");
    let out = Command::new("/bin/bash")
        .arg(script)
        .env_clear()
        .env("PATH", bin.path())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    let asked = std::fs::read_to_string(&log).unwrap_or_default();
    (out, asked)
}

#[test]
fn postfix_is_not_installed_over_another_mta_unless_asked() {
    let (out, asked) = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("not installing postfix") && stderr.contains("exim4-daemon-light"),
        "{stderr}"
    );
    assert!(!asked.contains("postfix"), "apt-get was asked: {asked}");

    for consent in [("INSTALL_TEST_DEPS", "1"), ("CI", "true")] {
        let (_, asked) = run(&[consent]);
        assert!(
            asked.contains("install") && asked.contains("postfix"),
            "{consent:?}: apt-get was asked: {asked:?}"
        );
    }
}
