//! The agent and renewal lineages, against a real `ca-server dev` (SoftHSM, TLS on loopback):
//! a renewal whose answer was lost is retried with the same key and gets the same certificate
//! (the lineage stays open), and a lineage locked by a clone's renewal is reported as
//! `revoked` with a FIX line instead of being retried.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

/// Renew over mTLS with curl, as a second holder of `cert`/`key` would, with a CSR for
/// `new_key` (PEM, PKCS#8). Returns (HTTP status, body).
fn curl_renew(ca: &Ca, dir: &Path, cert: &Path, key: &Path, new_key: &Path) -> (u16, String) {
    let csr = Command::new("openssl")
        .args(["req", "-new", "-subj", "/CN=lin.test", "-key"])
        .arg(new_key)
        .output()
        .unwrap();
    assert!(
        csr.status.success(),
        "{}",
        String::from_utf8_lossy(&csr.stderr)
    );
    let body = serde_json::json!({ "csr": String::from_utf8(csr.stdout).unwrap() });
    let body_file = dir.join("renew.json");
    std::fs::write(&body_file, body.to_string()).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca.root())
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(format!("@{}", body_file.display()))
        .arg(format!("{}/v1/renew", ca.url()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn new_p256(path: &Path) {
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn lost_renewal_answers_are_recovered_and_locked_lineages_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::start(&tmp.path().join("ca"));
    let dir = tmp.path().join("agent");
    let cfg = agent_config(&dir, &ca, "", "");
    let out = enroll(&cfg, &ca, "lin.test", "short");
    assert!(out.status.success(), "{}", text(&out));
    let tls = dir.join("tls");
    let (cert, key) = (tls.join("svc.crt"), tls.join("svc.key"));
    let g1 = openssl_serial(&cert);

    // 1. A renewal the CA answered but whose answer never reached the agent: the agent had
    //    written its new key as pending (simulated here by placing it), the CA issued.
    let store = tls.join(".ca-agent").join("svc");
    let pending = store.join(format!("pending-{}.key", normalize(&g1)));
    new_p256(&pending);
    let (code, body) = curl_renew(&ca, &dir, &cert, &key, &pending);
    assert_eq!(code, 200, "{body}");
    let lost: serde_json::Value = serde_json::from_str(&body).unwrap();
    let lost_serial = normalize(lost["serial"].as_str().unwrap());
    // The agent retries with the same key: it gets the same certificate, not a lock.
    let out = run(
        &agent_bin(),
        &["renew", "--force", "--config", cfg.to_str().unwrap()],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        openssl_serial(&cert),
        lost_serial,
        "the lost answer is installed"
    );
    assert!(openssl_pair_matches(&cert, &key));
    assert!(
        !pending.exists(),
        "the pending key is forgotten once installed"
    );

    // 2. A thief copied the current pair; the host renews; the thief renews with the copy.
    let stolen_cert = dir.join("stolen.crt");
    let stolen_key = dir.join("stolen.key");
    std::fs::copy(&cert, &stolen_cert).unwrap();
    std::fs::copy(&key, &stolen_key).unwrap();
    let out = run(
        &agent_bin(),
        &["renew", "--force", "--config", cfg.to_str().unwrap()],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let host_serial = openssl_serial(&cert);
    assert_ne!(host_serial, lost_serial);
    let thief_key = dir.join("thief-new.key");
    new_p256(&thief_key);
    let (code, body) = curl_renew(&ca, &dir, &stolen_cert, &stolen_key, &thief_key);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("generation_superseded"), "{body}");

    // 3. The lineage is locked: the host's next renewal is refused for good, and the agent
    //    says so (revoked, with the CA's code and a FIX line), keeping the working pair.
    let out = run(
        &agent_bin(),
        &["renew", "--force", "--config", cfg.to_str().unwrap()],
        &[],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let st = status_json(&cfg);
    assert_eq!(st[0]["condition"], "revoked", "{st}");
    assert_eq!(st[0]["last_error_code"], "lineage_locked", "{st}");
    let fix = st[0]["fix"].as_str().unwrap();
    assert!(fix.contains("enroll"), "{fix}");
    assert_eq!(openssl_serial(&cert), host_serial, "working pair kept");
}
