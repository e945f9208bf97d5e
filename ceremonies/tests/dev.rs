//! `ceremony dev --out DIR` as a subprocess (a fresh process, so SoftHSM loads DIR's
//! configuration): the artifacts form a chain openssl accepts, and a second run is refused.

mod common;

use common::{openssl, openssl_ok};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn ceremony_dev(out: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ceremony"))
        .args(["dev", "--out"])
        .arg(out)
        .env_remove("SOFTHSM2_CONF")
        .output()
        .unwrap()
}

#[test]
fn dev_rehearsal_produces_a_verifiable_pki_and_refuses_a_second_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dev");
    let run = ceremony_dev(&out);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("Rehearsal complete"), "{stdout}");

    assert!(
        openssl_ok(&["verify", "-CAfile", "root.pem", "intermediate.pem"], &out)
            .contains("intermediate.pem: OK")
    );
    assert!(openssl_ok(
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "chain.pem",
            "ocsp-signer.pem"
        ],
        &out
    )
    .contains("OK"));
    openssl_ok(
        &[
            "crl", "-in", "root.crl", "-inform", "DER", "-CAfile", "root.pem", "-noout", "-verify",
        ],
        &out,
    );
    let ocsp = openssl_ok(
        &[
            "ocsp",
            "-respin",
            "intermediate.ocsp.der",
            "-issuer",
            "root.pem",
            "-cert",
            "intermediate.pem",
            "-CAfile",
            "root.pem",
            "-no_nonce",
        ],
        &out,
    );
    assert!(ocsp.contains("intermediate.pem: good"), "{ocsp}");
    // The intermediate points at the status URLs of the dev server.
    let text = openssl_ok(
        &["x509", "-in", "intermediate.pem", "-noout", "-text"],
        &out,
    );
    assert!(
        text.contains("URI:http://127.0.0.1:8080/root.crl")
            && text.contains("OCSP - URI:http://127.0.0.1:8080/ocsp"),
        "{text}"
    );
    // The printed fingerprint is the root's.
    let fp = openssl_ok(
        &[
            "x509",
            "-in",
            "root.pem",
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
        &out,
    );
    let fp = fp
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase();
    assert!(
        stdout.contains(&fp),
        "root fingerprint {fp} not printed:\n{stdout}"
    );
    for f in [
        "shares/alice.share",
        "shares/bob.share",
        "shares/carol.share",
        "hsm/online.pin",
    ] {
        assert_eq!(
            std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777,
            0o600,
            "{f}"
        );
    }
    assert!(
        !out.join("hsm/user.pin").exists(),
        "the stale initial root PIN file must be gone"
    );
    let verify = Command::new(env!("CARGO_BIN_EXE_ceremony"))
        .args([
            "verify-transcript",
            "transcripts/006-ocsp-response.json",
            "--expect-signer",
            "root.pem",
        ])
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // A second run on the same directory is refused and changes nothing.
    let before = std::fs::read(out.join("root.pem")).unwrap();
    let again = ceremony_dev(&out);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("refusing to overwrite"), "{stderr}");
    assert_eq!(std::fs::read(out.join("root.pem")).unwrap(), before);
    let (ok, _) = openssl(&["verify", "-CAfile", "root.pem", "intermediate.pem"], &out);
    assert!(ok);
}
