//! Enrollment against a real `ca-server dev`: the root is pinned before any token is sent, the
//! installed pair verifies with openssl, a revoked certificate is reported with its fix, and a
//! re-enrollment token in the config brings it back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn enroll_pins_the_root_then_revocation_is_reported_and_fixed_by_reenrollment() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::start(&tmp.path().join("ca"));
    let dir = tmp.path().join("agent");
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let cert = tls.join("svc.crt");
    let key = tls.join("svc.key");
    let chain = tls.join("chain.pem");
    let token = ca.token("svc.test", "mtls");
    let token_file = dir.join("token");
    std::fs::write(&token_file, &token).unwrap();

    // 1. Wrong fingerprint: refused at the TLS handshake, before the token is sent.
    let fp = ca.fingerprint();
    let flipped = if fp.starts_with('0') { "1" } else { "0" };
    let wrong = format!("{flipped}{}", &fp[1..]);
    let base = |fp: &str| -> Vec<String> {
        vec![
            "enroll".into(),
            "--server".into(),
            ca.url(),
            "--fingerprint".into(),
            fp.into(),
            "--token-file".into(),
            token_file.display().to_string(),
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
            "--chain".into(),
            chain.display().to_string(),
        ]
    };
    let args = base(&wrong);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&agent_bin(), &args, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not trusted") && err.contains("pinned"),
        "{}",
        text(&out)
    );
    assert!(err.contains("no credential was sent"), "{}", text(&out));
    assert!(!cert.exists() && !key.exists());

    // 2. The same token still works with the right fingerprint: it was never sent (tokens are
    //    single use, so a token that reached the server would now be refused).
    let args = base(&fp);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend([
        "--cn",
        "svc.test",
        "--san",
        "dns:svc.test",
        "--san",
        "ip:127.0.0.2",
    ]);
    let out = run(&agent_bin(), &args, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("enrolled svc"));
    let serial = openssl_serial(&cert);
    assert!(openssl_pair_matches(&cert, &key));
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // openssl, independently: the leaf chains to the root through the chain file.
    let v = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca.root())
        .arg("-untrusted")
        .arg(&chain)
        .arg(&cert)
        .output()
        .unwrap();
    assert!(v.status.success(), "openssl verify: {}", text(&v));
    // The used token is refused now (single use), and a second enroll needs --force.
    let out = run(&agent_bin(), &args, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--force"),
        "{}",
        text(&out)
    );
    args.push("--force");
    let out = run(&agent_bin(), &args, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("token_rejected"),
        "{}",
        text(&out)
    );
    assert_eq!(
        openssl_serial(&cert),
        serial,
        "a failed enroll leaves the pair alone"
    );

    // Token from the environment (not in shell history) works too.
    let env_token = ca.token("svc.test", "mtls");
    let args2 = base(&fp);
    let mut args2: Vec<&str> = args2
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--token-file" && *a != token_file.to_str().unwrap())
        .collect();
    args2.push("--force");
    let out = run(&agent_bin(), &args2, &[("CA_AGENT_TOKEN", env_token)]);
    assert!(out.status.success(), "{}", text(&out));
    let serial = openssl_serial(&cert);
    assert!(openssl_pair_matches(&cert, &key));

    // 3. Revoked: renewal fails, status says revoked and names the fix.
    let reenroll = dir.join("reenroll.token");
    let cfg = agent_config(
        &dir,
        &ca,
        "",
        &format!("reenroll_token_file = \"{}\"\n", reenroll.display()),
    );
    let st = status_json(&cfg);
    assert_eq!(st[0]["serial"], serial.as_str(), "{st}");
    ca.revoke(&serial);
    let out = run(
        &agent_bin(),
        &["renew", "--force", "--config", cfg.to_str().unwrap()],
        &[],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revoked"),
        "{}",
        text(&out)
    );
    let st = status_json(&cfg);
    assert_eq!(st[0]["condition"], "revoked", "{st}");
    assert_eq!(st[0]["last_error_code"], "cert_revoked", "{st}");
    let fix = st[0]["fix"].as_str().unwrap();
    assert!(
        fix.contains("enrollment token") && fix.contains(reenroll.to_str().unwrap()),
        "{fix}"
    );
    let out = run(
        &agent_bin(),
        &["status", "--config", cfg.to_str().unwrap()],
        &[],
    );
    assert!(
        !out.status.success(),
        "status exits 1 when a certificate needs attention"
    );
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human.contains("REVOKED") && human.contains("FIX:"),
        "{human}"
    );
    eprintln!("status of a revoked certificate:\n{human}");
    // The working (revoked) pair is kept: nothing is deleted.
    assert_eq!(openssl_serial(&cert), serial);

    // 4. The operator drops a re-enrollment token into the configured file: the next pass uses it.
    std::fs::write(&reenroll, ca.token("svc.test", "mtls")).unwrap();
    let out = run(
        &agent_bin(),
        &["renew", "--config", cfg.to_str().unwrap()],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let new_serial = openssl_serial(&cert);
    assert_ne!(new_serial, serial);
    assert!(openssl_pair_matches(&cert, &key));
    assert_eq!(
        std::fs::read_to_string(&reenroll).unwrap(),
        "",
        "used token is forgotten"
    );
    let st = status_json(&cfg);
    assert_eq!(st[0]["condition"], "ok", "{st}");
    assert_eq!(st[0]["serial"], new_serial.as_str());

    // 5. Nothing due: a one-shot pass exits 0 and changes nothing.
    let out = run(
        &agent_bin(),
        &["renew", "--config", cfg.to_str().unwrap()],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not due"),
        "{}",
        text(&out)
    );
    assert_eq!(openssl_serial(&cert), new_serial);
}
