//! A token pasted after `--token` is the token, whatever its first character: tokens made by
//! older servers (base64url) start with `-` one time in 64.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn a_token_starting_with_a_dash_is_a_value_not_an_option() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |f: &str| tmp.path().join(f).display().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_ca-agent"))
        .args(["enroll", "--server", "https://127.0.0.1:1", "--fingerprint"])
        .arg("00".repeat(32))
        .args(["--token", "-Zm9vYmFyLWJhei1xdXV4LWxlZ2FjeS10b2tlbg"])
        .args([
            "--cert",
            &p("c.crt"),
            "--key",
            &p("c.key"),
            "--chain",
            &p("ch.pem"),
        ])
        .args(["--cn", "svc.test"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // Parsed: it fails later, reaching the (absent) server, not as a usage error (exit 2).
    assert_ne!(out.status.code(), Some(2), "{err}");
    assert!(
        !err.contains("--token <TOKEN>") && !err.contains("unexpected argument"),
        "{err}"
    );
    assert!(!out.status.success(), "{err}");
}
