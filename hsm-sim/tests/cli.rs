//! The `hsm-sim` command line, as a shell would use it.

use std::collections::HashMap;
use std::process::Command;

fn hsm_sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hsm-sim"))
}

fn parse_exports(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

#[test]
fn init_prints_exports_refuses_a_second_run_and_genkey_works() {
    let dir = tempfile::tempdir().unwrap();
    let hsm = dir.path().join("hsm");
    let out = hsm_sim()
        .args([
            "init",
            "--dir",
            hsm.to_str().unwrap(),
            "--label",
            "cli-test",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let env = parse_exports(&stdout);
    for k in [
        "SOFTHSM2_CONF",
        "PKCS11_MODULE",
        "HSM_TOKEN_LABEL",
        "HSM_PIN_FILE",
    ] {
        assert!(env.contains_key(k), "missing export {k} in {stdout}");
    }
    assert!(std::path::Path::new(&env["SOFTHSM2_CONF"]).exists());
    let pin = std::fs::read_to_string(&env["HSM_PIN_FILE"]).unwrap();
    assert!(!stdout.contains(pin.trim()), "the PIN must not be printed");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&env["HSM_PIN_FILE"])
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    let again = hsm_sim()
        .args(["init", "--dir", hsm.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already exists"), "unclear error: {err}");

    let key = hsm_sim()
        .args(["genkey", "--label", "k1", "--alg", "p384"])
        .envs(&env)
        .output()
        .unwrap();
    assert!(
        key.status.success(),
        "{}",
        String::from_utf8_lossy(&key.stderr)
    );
    let pem = String::from_utf8(key.stdout).unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    let pub_path = dir.path().join("k1.pub");
    std::fs::write(&pub_path, &pem).unwrap();
    let text = Command::new("openssl")
        .args([
            "pkey",
            "-pubin",
            "-in",
            pub_path.to_str().unwrap(),
            "-noout",
            "-text",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("P-384"));

    // Same label again: refused by the token, nothing overwritten.
    let dup = hsm_sim()
        .args(["genkey", "--label", "k1"])
        .envs(&env)
        .output()
        .unwrap();
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
}

#[test]
fn missing_module_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let out = hsm_sim()
        .args(["init", "--dir", dir.path().join("x").to_str().unwrap()])
        .env("PKCS11_MODULE", "/nonexistent/libsofthsm2.so")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apt-get install softhsm2"), "{err}");
}
