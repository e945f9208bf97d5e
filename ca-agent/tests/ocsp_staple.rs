//! The OCSP staple is matched to the certificate by issuer as well as serial, and a response
//! without nextUpdate is not trusted forever. Real responses: `openssl ocsp` is the responder
//! (tests/ocsp_staple/make.sh makes two CAs whose leaves share a serial, and a delegated
//! responder of CA One that also answers for CA Two).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ca_agent::ocsp::{check, Status, NO_NEXT_UPDATE_LIFETIME};
use chrono::Utc;
use std::path::{Path, PathBuf};
use std::process::Command;

fn material() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ocsp_staple/make.sh");
    let out = Command::new("sh")
        .arg(&script)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tmp.path().to_path_buf();
    (tmp, dir)
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn a_response_about_the_same_serial_under_another_issuer_is_refused() {
    let (_tmp, dir) = material();
    let leaf = read(&dir, "leaf1.der");
    let ca1 = read(&dir, "ca1.der");
    let now = Utc::now();

    // Legitimate responses about CA One's leaf pass (SHA-1 and SHA-256 CertIDs, delegated
    // responder or the issuer itself).
    for name in [
        "good-delegated.der",
        "good-by-issuer.der",
        "good-sha256.der",
    ] {
        let c =
            check(&read(&dir, name), &leaf, &ca1, now).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.status, Status::Good, "{name}");
    }

    // The attack: a response for serial 0x1001 of CA Two, signed by a key CA One trusts (its
    // delegated responder, or CA One itself), replayed as the staple of CA One's 0x1001. Only
    // the CertID's issuer hashes tell them apart.
    for name in ["other-issuer-delegated.der", "other-issuer-by-ca1.der"] {
        let e = check(&read(&dir, name), &leaf, &ca1, now)
            .err()
            .unwrap_or_else(|| {
                panic!("{name}: a response about another issuer's certificate was accepted")
            });
        assert!(e.to_string().contains("another issuer"), "{name}: {e}");
    }
    // CA Two answering about its own certificate is refused as well (it is not our issuer).
    let e = check(&read(&dir, "other-issuer-by-ca2.der"), &leaf, &ca1, now).unwrap_err();
    assert!(e.to_string().contains("OCSP staple"), "{e}");

    // And the genuine response is still refused for CA Two's certificate.
    let e = check(
        &read(&dir, "good-delegated.der"),
        &read(&dir, "leaf2.der"),
        &read(&dir, "ca2.der"),
        now,
    )
    .unwrap_err();
    assert!(e.to_string().contains("OCSP staple"), "{e}");
}

#[test]
fn a_response_without_next_update_expires_after_a_bounded_time() {
    let (_tmp, dir) = material();
    let leaf = read(&dir, "leaf1.der");
    let ca1 = read(&dir, "ca1.der");
    let resp = read(&dir, "no-next-update.der");
    let now = Utc::now();

    // Fresh: accepted, trusted until thisUpdate + the documented bound, refreshed halfway.
    let c = check(&resp, &leaf, &ca1, now).unwrap();
    assert_eq!(c.next_update, None);
    assert_eq!(c.expires_at, c.this_update + NO_NEXT_UPDATE_LIFETIME);
    assert!(NO_NEXT_UPDATE_LIFETIME <= chrono::Duration::hours(1));
    let refresh = c.refresh_at(now);
    assert!(
        refresh <= c.this_update + NO_NEXT_UPDATE_LIFETIME / 2 + chrono::Duration::seconds(30),
        "refresh at {refresh}, thisUpdate {}",
        c.this_update
    );

    // The attack: the same response replayed later (plain-HTTP OCSP is easy to replay; a
    // response from before a revocation would say `good` forever). Refused once the bound
    // has passed (the times stay inside the responder certificate's 5 days, so only the
    // response's own age decides).
    for later in [
        NO_NEXT_UPDATE_LIFETIME + chrono::Duration::minutes(1),
        chrono::Duration::days(1),
        chrono::Duration::days(4),
    ] {
        let e = check(&resp, &leaf, &ca1, now + later)
            .err()
            .unwrap_or_else(|| panic!("a response without nextUpdate was accepted {later} later"));
        assert!(e.to_string().contains("no nextUpdate"), "{e}");
    }
    // A response with nextUpdate is judged by it, as before.
    let good = read(&dir, "good-delegated.der");
    assert!(check(&good, &leaf, &ca1, now + chrono::Duration::hours(23)).is_ok());
    let e = check(&good, &leaf, &ca1, now + chrono::Duration::hours(25)).unwrap_err();
    assert!(e.to_string().contains("nextUpdate passed"), "{e}");
}
