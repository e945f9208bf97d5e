//! CRLs signed through a real SoftHSM token, checked with `openssl crl` and `openssl verify`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "ocsp_fixture/mod.rs"]
mod ocsp_fixture;

use ca_core::clock::{FixedClock, SystemClock};
use ca_core::crl::{build_crl, CrlConfig, CrlPublisher};
use ca_core::revocation::RevocationReason;
use ca_core::store::prelude::*;
use chrono::{Duration, Utc};
use ocsp_fixture::{openssl, run, write_pem, TestCa};
use std::sync::Arc;

#[test]
fn crl_verifies_and_openssl_rejects_revoked_accepts_good() {
    let ca = TestCa::new("Test Root");
    let good = ca.issue_leaf("good");
    let bad = ca.issue_leaf_with("bad", true);
    let unspec = ca.issue_leaf("unspec");
    let at = ca_core::clock::truncate(Utc::now() - Duration::minutes(10));
    ca.store
        .revoke(&bad.record.serial, at, RevocationReason::KeyCompromise)
        .unwrap();
    ca.store
        .revoke(&unspec.record.serial, at, RevocationReason::Unspecified)
        .unwrap();
    let now = Utc::now();
    let crl = build_crl(
        ca.store.as_ref(),
        ca.signer.as_ref(),
        &ca.cert_der,
        now,
        now + Duration::hours(6),
    )
    .unwrap();
    assert_eq!(crl.entries, 2);
    let der_path = ca.path("crl.der");
    std::fs::write(&der_path, &crl.der).unwrap();
    let pem_path = ca.path("crl.pem");
    write_pem(&pem_path, "X509 CRL", &crl.der);

    let (ok, out) = run(openssl()
        .args(["crl", "-inform", "DER", "-in"])
        .arg(&der_path)
        .arg("-CAfile")
        .arg(&ca.cert_pem)
        .args(["-verify", "-noout", "-text"]));
    assert!(ok && out.contains("verify OK"), "{out}");
    assert!(out.contains("Version 2"), "{out}");
    assert!(
        out.contains("X509v3 CRL Number") && out.contains("X509v3 Authority Key Identifier"),
        "{out}"
    );
    assert!(out.contains("Key Compromise"), "{out}");
    // RFC 5280 5.3.1: unspecified is expressed by omitting the reason code: one reason only.
    assert_eq!(out.matches("X509v3 CRL Reason Code").count(), 1, "{out}");
    let bad_hex = hex::encode_upper(&bad.record.serial);
    assert!(
        out.replace(['\n', ' '], "").contains(&bad_hex),
        "serial {bad_hex} missing: {out}"
    );

    let verify = |cert: &std::path::Path| {
        run(openssl()
            .args(["verify", "-crl_check", "-CAfile"])
            .arg(&ca.cert_pem)
            .arg("-CRLfile")
            .arg(&pem_path)
            .arg(cert))
    };
    let (ok, out) = verify(&good.cert_pem);
    assert!(ok && out.contains(": OK"), "{out}");
    let (ok, out) = verify(&bad.cert_pem);
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    let (ok, out) = verify(&unspec.cert_pem);
    assert!(!ok && out.contains("certificate revoked"), "{out}");
}

#[test]
fn crl_number_increases_across_regenerations_and_restarts() {
    let mut ca = TestCa::new("Test Root");
    let leaf = ca.issue_leaf("leaf");
    let numbers = {
        let p = CrlPublisher::new(
            ca.store.clone(),
            ca.signer_dyn(),
            ca.cert_der.clone(),
            Arc::new(SystemClock),
            CrlConfig::default(),
        )
        .unwrap();
        let a = p.regenerate().unwrap();
        ca.store
            .revoke(
                &leaf.record.serial,
                Utc::now(),
                RevocationReason::Superseded,
            )
            .unwrap();
        let b = p.regenerate().unwrap();
        assert_eq!((a.entries, b.entries), (0, 1));
        assert!(b.number > a.number, "{} then {}", a.number, b.number);
        assert_eq!(p.current().unwrap().number, b.number);
        vec![a.number, b.number]
    };
    ca.reopen_store();
    let p = CrlPublisher::new(
        ca.store.clone(),
        ca.signer_dyn(),
        ca.cert_der.clone(),
        Arc::new(SystemClock),
        CrlConfig::default(),
    )
    .unwrap();
    let c = p.regenerate().unwrap();
    assert!(
        c.number > numbers[1],
        "after restart {} <= {}",
        c.number,
        numbers[1]
    );
    assert_eq!(c.entries, 1, "revocation survived the restart");
    let path = ca.path("crl3.der");
    std::fs::write(&path, &c.der).unwrap();
    let (ok, out) = run(openssl()
        .args(["crl", "-inform", "DER", "-noout", "-crlnumber", "-in"])
        .arg(&path));
    assert!(ok, "{out}");
    assert!(
        out.trim().ends_with(&format!("{:02X}", c.number))
            || out.contains(&format!("{:X}", c.number)),
        "{out} vs {}",
        c.number
    );
}

#[test]
fn publisher_rebuilds_only_when_due() {
    let ca = TestCa::new("Test Root");
    let t0 = Utc::now();
    let clock = Arc::new(FixedClock::new(t0));
    let config = CrlConfig {
        validity: Duration::hours(10),
        refresh_before: Duration::hours(4),
        distribution_point: Some("http://127.0.0.1:8080/crl".into()),
    };
    let p = CrlPublisher::new(
        ca.store.clone(),
        ca.signer_dyn(),
        ca.cert_der.clone(),
        clock.clone(),
        config,
    )
    .unwrap();
    let first = p.regenerate_if_due().unwrap().expect("no CRL yet: built");
    assert_eq!(first.next_update - first.this_update, Duration::hours(10));
    clock.set(t0 + Duration::hours(5));
    assert!(p.regenerate_if_due().unwrap().is_none());
    clock.set(t0 + Duration::hours(6) + Duration::seconds(1));
    let second = p.regenerate_if_due().unwrap().expect("due");
    assert!(second.number > first.number);
    let path = ca.path("idp.der");
    std::fs::write(&path, &second.der).unwrap();
    let (ok, out) = run(openssl()
        .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(&path));
    assert!(
        ok && out.contains("Issuing Distribution Point")
            && out.contains("http://127.0.0.1:8080/crl"),
        "{out}"
    );
}

#[test]
fn wrong_key_is_refused() {
    let ca = TestCa::new("Test Root");
    let other = TestCa::new("Other");
    let now = Utc::now();
    assert!(build_crl(
        ca.store.as_ref(),
        other.signer.as_ref(),
        &ca.cert_der,
        now,
        now + Duration::hours(1)
    )
    .is_err());
    assert!(CrlPublisher::new(
        ca.store.clone(),
        other.signer_dyn(),
        ca.cert_der.clone(),
        Arc::new(SystemClock),
        CrlConfig::default()
    )
    .is_err());
    assert!(
        build_crl(
            ca.store.as_ref(),
            ca.signer.as_ref(),
            &ca.cert_der,
            now,
            now
        )
        .is_err(),
        "nextUpdate must follow thisUpdate"
    );
}

/// `openssl crl -text` of `der` (written to `name`), its signature verified with the CA's
/// certificate: the text, after asserting that openssl said "verify OK".
fn openssl_verified_text(ca: &TestCa, name: &str, der: &[u8]) -> String {
    let path = ca.path(name);
    std::fs::write(&path, der).unwrap();
    let (ok, out) = run(openssl()
        .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(&path)
        .arg("-CAfile")
        .arg(&ca.cert_pem)
        .arg("-verify"));
    assert!(ok && out.contains("verify OK"), "{out}");
    out
}

/// `issue_crl` signs exactly what it is given: the number and entries of the request, none of
/// the store's; the store-fed path and the ceremony share it.
#[test]
fn issue_crl_signs_the_request_and_reads_no_store() {
    use ca_core::crl::{issue_crl, CrlRequest};
    use ca_core::revocation::RevokedEntry;
    let ca = TestCa::new("Test Root");
    let now = Utc::now();
    let at = ca_core::clock::truncate(now - Duration::hours(1));
    let entries = [
        RevokedEntry {
            serial: vec![0x00, 0xff, 0x01],
            revoked_at: at,
            reason: RevocationReason::KeyCompromise,
        },
        RevokedEntry {
            serial: vec![0x7a],
            revoked_at: at,
            reason: RevocationReason::Unspecified,
        },
    ];
    let req = CrlRequest {
        number: 300,
        this_update: now,
        next_update: now + Duration::hours(2),
        entries: &entries,
        distribution_point: Some("http://127.0.0.1:8080/crl"),
    };
    let a = issue_crl(&ca.cert_der, ca.signer.as_ref(), &req).unwrap();
    let b = issue_crl(&ca.cert_der, ca.signer.as_ref(), &req).unwrap();
    assert_eq!((a.number, b.number, a.entries), (300, 300, 2));
    assert_eq!(a.this_update, ca_core::clock::truncate(now));
    let out = openssl_verified_text(&ca, "issued.der", &a.der);
    let flat = out.replace(['\n', ' '], "");
    assert!(flat.contains("X509v3CRLNumber:300"), "{out}");
    assert!(out.contains("Issuing Distribution Point"), "{out}");
    // Serials as magnitudes (the leading zero of the first one dropped).
    assert!(
        flat.contains("SerialNumber:FF01") && flat.contains("SerialNumber:7A"),
        "{out}"
    );
    assert_eq!(out.matches("X509v3 CRL Reason Code").count(), 1, "{out}");
    // The store was not read: its revocations are not listed, its numbering not consumed.
    let from_store = build_crl(
        ca.store.as_ref(),
        ca.signer.as_ref(),
        &ca.cert_der,
        now,
        now + Duration::hours(2),
    )
    .unwrap();
    assert_eq!((from_store.number, from_store.entries), (1, 0));

    let other = TestCa::new("Other");
    assert!(issue_crl(&ca.cert_der, other.signer.as_ref(), &req).is_err());
    let backwards = CrlRequest {
        next_update: now,
        ..req
    };
    assert!(issue_crl(&ca.cert_der, ca.signer.as_ref(), &backwards).is_err());
}

/// The CRL's DER is written directly (entries encoded as the store is read): every field reads
/// back through an independent decoder (x509-cert) as given, for every reason code, for serials
/// whose first bit is set or that start with zeros, and for dates on both sides of 2050
/// (UTCTime, then GeneralizedTime); the archive check counts the same entries.
#[test]
fn every_entry_reads_back_as_written() {
    use ca_core::crl::{issue_crl, CrlRequest};
    use ca_core::revocation::RevokedEntry;
    use chrono::TimeZone;
    use der::Decode;
    let ca = TestCa::new("Test Root");
    let now = ca_core::clock::truncate(Utc::now());
    let late = Utc.with_ymd_and_hms(2051, 3, 4, 5, 6, 7).unwrap();
    let mut entries: Vec<RevokedEntry> = RevocationReason::ALL
        .iter()
        .enumerate()
        .map(|(i, r)| RevokedEntry {
            serial: vec![0x80 | i as u8, 0x01, 0x02],
            revoked_at: now - Duration::minutes(i as i64),
            reason: *r,
        })
        .collect();
    entries.push(RevokedEntry {
        serial: vec![0x00, 0x00, 0x42],
        revoked_at: late,
        reason: RevocationReason::KeyCompromise,
    });
    let crl = issue_crl(
        &ca.cert_der,
        ca.signer.as_ref(),
        &CrlRequest {
            number: 0x80,
            this_update: now,
            next_update: late + Duration::days(1),
            entries: &entries,
            distribution_point: None,
        },
    )
    .unwrap();
    let parsed = x509_cert::crl::CertificateList::from_der(&crl.der).unwrap();
    let listed = parsed.tbs_cert_list.revoked_certificates.clone().unwrap();
    assert_eq!(listed.len(), entries.len());
    for (got, want) in listed.iter().zip(&entries) {
        // As magnitudes: x509-cert keeps the sign octet of a serial whose first bit is set.
        let magnitude = want.serial.iter().skip_while(|b| **b == 0);
        let written = got.serial_number.as_bytes().iter().skip_while(|b| **b == 0);
        assert!(written.eq(magnitude), "{:?}", want.serial);
        assert_eq!(
            ca_core::x509::time(got.revocation_date).unwrap(),
            want.revoked_at
        );
        let reason = got
            .crl_entry_extensions
            .iter()
            .flatten()
            .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_CRL_REASONS)
            .map(|e| e.extn_value.as_bytes().to_vec());
        match want.reason {
            RevocationReason::Unspecified => assert_eq!(reason, None),
            r => assert_eq!(reason, Some(vec![0x0a, 0x01, r.code()])),
        }
    }
    assert!(matches!(
        parsed.tbs_cert_list.next_update,
        Some(x509_cert::time::Time::GeneralTime(_))
    ));
    let checked = ca_core::x509::check_crl(&ca.cert_der, &crl.der).unwrap();
    assert_eq!(
        (checked.number, checked.entries, checked.this_update),
        (0x80, entries.len(), now)
    );
    // One flipped bit anywhere in the signed part and the check refuses it.
    let mut tampered = crl.der.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 0x01;
    assert!(ca_core::x509::check_crl(&ca.cert_der, &tampered).is_err());

    let out = openssl_verified_text(&ca, "every-entry.der", &crl.der);
    assert_eq!(
        out.matches("X509v3 CRL Reason Code").count(),
        entries.len() - 1,
        "{out}"
    );
}

/// Several nodes serve the CRL the lease holder archived (issue 16); an archived CRL that the
/// issuer did not sign (someone with write access to the store, or another CA's CRL) is never
/// served, and an older one never replaces a newer.
#[test]
fn only_the_issuers_archived_crls_are_served_and_never_an_older_one() {
    use ca_core::store::{StoredCrl, FULL_CRL};
    let ca = TestCa::new("Test Root");
    let publisher = |ca: &TestCa| {
        CrlPublisher::new(
            ca.store.clone(),
            ca.signer_dyn(),
            ca.cert_der.clone(),
            Arc::new(SystemClock),
            CrlConfig::default(),
        )
        .unwrap()
    };
    let builder = publisher(&ca);
    let follower = publisher(&ca);
    // The builder takes the lease; the follower is refused it and serves the archive.
    let built = builder.regenerate_if_due().unwrap().expect("built");
    assert!(builder.is_builder());
    assert!(follower.regenerate_if_due().unwrap().is_none());
    assert!(!follower.is_builder());
    assert_eq!(follower.current().unwrap().der, built.der);

    // A CRL signed by another CA under a higher number, written into our store.
    let stranger = TestCa::new("Stranger Root");
    let foreign = publisher(&stranger).regenerate().unwrap();
    assert!(ca
        .store
        .put_crl(&StoredCrl {
            scope: FULL_CRL.into(),
            number: built.number + 100,
            der: foreign.der.clone(),
            this_update: foreign.this_update,
            next_update: foreign.next_update,
        })
        .unwrap());
    assert!(
        !follower.adopt_archived().unwrap(),
        "a stranger's CRL is refused"
    );
    assert_eq!(follower.current().unwrap().der, built.der);

    // Our own older CRL stored under a higher number (the columns beside it rewritten):
    // the number is read from the signed CRL, so it is refused.
    assert!(ca
        .store
        .put_crl(&StoredCrl {
            scope: FULL_CRL.into(),
            number: built.number + 200,
            der: built.der.clone(),
            this_update: built.this_update,
            next_update: built.next_update,
        })
        .unwrap());
    assert!(
        !follower.adopt_archived().unwrap(),
        "an old CRL under a new number is refused"
    );
    assert_ne!(follower.current().unwrap().number, built.number + 200);

    // Our own older CRL is not taken over the current one either.
    assert!(!ca
        .store
        .put_crl(&StoredCrl {
            scope: FULL_CRL.into(),
            number: built.number - 1,
            der: built.der.clone(),
            this_update: built.this_update,
            next_update: built.next_update,
        })
        .unwrap());
}
