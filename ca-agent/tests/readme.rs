//! The README's first commands after the quick start, as a newcomer types them: a token from
//! `ca-server token create`, then `ca-agent enroll` without a config file and with paths
//! relative to the current directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::process::Command;

#[test]
fn readme_enroll_with_relative_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::start(&tmp.path().join("ca"));
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let token = ca.token("web1.example.com", "client");
    let out = Command::new(agent_bin())
        .current_dir(&work)
        .args([
            "enroll",
            "--server",
            &ca.url(),
            "--fingerprint",
            &ca.fingerprint(),
            "--token",
            &token,
            "--cert",
            "web1.crt",
            "--key",
            "web1.key",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let (cert, key) = (work.join("web1.crt"), work.join("web1.key"));
    assert!(openssl_pair_matches(&cert, &key));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&cert.display().to_string()));
}
