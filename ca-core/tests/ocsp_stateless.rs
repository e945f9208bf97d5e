//! The keyless responder behind `ca-server ocsp` (`StatelessResponder`) over a store a signing
//! responder writes (sled here, in process; PostgreSQL across processes in ca-server's
//! `stateless_ocsp` test): delegated responder certificates, request shapes, a revocation
//! seen in the store before its response, and a delegated certificate revoked in the store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ocsp_fixture;

use ca_core::clock::SystemClock;
use ca_core::ocsp::x509_ocsp;
use ca_core::ocsp::{
    parse_response, register_signer_cert, HashAlg, OcspIssuer, OcspResponseStatus, Responder,
    ResponderConfig, ResponderKey, StatelessConfig, StatelessResponder,
};
use ca_core::revocation::RevocationReason;
use ca_core::store::prelude::*;
use ca_core::store::Change;
use chrono::Utc;
use der::Encode;
use ocsp_fixture::TestCa;
use std::sync::Arc;

fn request(issuer_der: &[u8], serials: &[&[u8]], alg: HashAlg) -> Vec<u8> {
    let issuer = OcspIssuer::from_cert_der(issuer_der).unwrap();
    x509_ocsp::OcspRequest {
        tbs_request: x509_ocsp::TbsRequest {
            version: x509_ocsp::Version::V1,
            requestor_name: None,
            request_list: serials
                .iter()
                .map(|s| x509_ocsp::Request {
                    req_cert: issuer.cert_id(alg, s).unwrap(),
                    single_request_extensions: None,
                })
                .collect(),
            request_extensions: None,
        },
        optional_signature: None,
    }
    .to_der()
    .unwrap()
}

fn verdict(der: &[u8]) -> String {
    let parsed = parse_response(der).unwrap();
    if parsed.status != OcspResponseStatus::Successful {
        return format!("{:?}", parsed.status);
    }
    match &parsed.singles()[0].cert_status {
        x509_ocsp::CertStatus::Good(_) => "good".into(),
        x509_ocsp::CertStatus::Revoked(_) => "revoked".into(),
        x509_ocsp::CertStatus::Unknown(_) => "unknown".into(),
    }
}

#[test]
fn stateless_responder_serves_delegated_answers_and_fails_closed() {
    let ca = TestCa::new("Stateless Test CA");
    let a = ca.issue_leaf("a");
    let b = ca.issue_leaf("b");
    let (rsigner, rcert, _) = ca.ocsp_responder("ocsp");
    let issuer = OcspIssuer::from_cert_der(&ca.cert_der).unwrap();
    let (signer_rec, _) = register_signer_cert(ca.store.as_ref(), &issuer, &rcert, "test").unwrap();
    let signing = Responder::new(
        &ca.cert_der,
        ResponderKey::delegated(rsigner, &rcert).unwrap(),
        ca.store.clone(),
        Arc::new(SystemClock),
        ResponderConfig::default(),
    )
    .unwrap();
    // A signing node's start: load, then the first pass signs the certificates' answers.
    signing.load().unwrap();
    signing.refresh_backlog().unwrap();

    let stateless = StatelessResponder::new(
        &ca.cert_der,
        ca.store.clone(),
        Arc::new(SystemClock),
        StatelessConfig::default(),
    )
    .unwrap();
    stateless.reload().unwrap();
    assert!(stateless.is_loaded());
    assert_eq!(stateless.stats().refused, 0);
    let (sa, sb) = (a.record.serial.as_slice(), b.record.serial.as_slice());
    // Signed by the delegated responder (its certificate embedded): served as stored.
    let answer = stateless.respond(&request(&ca.cert_der, &[sa], HashAlg::Sha1));
    assert_eq!(verdict(&answer.der), "good");
    assert_eq!(answer.der, signing.cached(sa).unwrap().der);
    assert_eq!(
        verdict(
            &stateless
                .respond(&request(&ca.cert_der, &[sa], HashAlg::Sha256))
                .der
        ),
        "good",
        "SHA-256 CertIDs are pre-signed too"
    );
    // Shapes a stored response cannot answer.
    assert_eq!(
        verdict(
            &stateless
                .respond(&request(&ca.cert_der, &[sa, sb], HashAlg::Sha1))
                .der
        ),
        "MalformedRequest",
        "RFC 5019 2.1.1: one CertID"
    );
    assert_eq!(
        verdict(
            &stateless
                .respond(&request(&ca.cert_der, &[sa], HashAlg::Sha384))
                .der
        ),
        "Unauthorized"
    );
    assert_eq!(
        verdict(
            &stateless
                .respond(&request(&ca.cert_der, &[&[0x42; 16]], HashAlg::Sha1))
                .der
        ),
        "Unauthorized",
        "a serial the store does not know: no key to sign unknown"
    );

    // A revocation seen in the store before its response: `good` is withdrawn (tryLater), and
    // the old `good` read again is not taken; the revoked response is.
    let rec = ca
        .store
        .revoke(sb, Utc::now(), RevocationReason::KeyCompromise)
        .unwrap();
    stateless.apply(&Change::Revoked(sb.to_vec())).unwrap();
    let req_b = request(&ca.cert_der, &[sb], HashAlg::Sha1);
    assert_eq!(verdict(&stateless.respond(&req_b).der), "TryLater");
    stateless.apply(&Change::OcspResponse(sb.to_vec())).unwrap();
    assert_eq!(verdict(&stateless.respond(&req_b).der), "TryLater");
    signing.on_revoked(&rec).unwrap();
    stateless.apply(&Change::OcspResponse(sb.to_vec())).unwrap();
    assert_eq!(verdict(&stateless.respond(&req_b).der), "revoked");

    // The delegated responder certificate revoked in the store: a fresh stateless responder
    // takes nothing it signed (tryLater), and counts the refusals.
    ca.store
        .revoke(
            &signer_rec.serial,
            Utc::now(),
            RevocationReason::KeyCompromise,
        )
        .unwrap();
    let fresh = StatelessResponder::new(
        &ca.cert_der,
        ca.store.clone(),
        Arc::new(SystemClock),
        StatelessConfig::default(),
    )
    .unwrap();
    fresh.reload().unwrap();
    assert_eq!(
        verdict(
            &fresh
                .respond(&request(&ca.cert_der, &[sa], HashAlg::Sha1))
                .der
        ),
        "TryLater"
    );
    // Refused when read (at the request: nothing is read before).
    assert!(fresh.stats().refused >= 1, "{:?}", fresh.stats());
}

/// Issue 17: a stateless responder's memory follows `cache_max_entries`, not the store. With
/// 16 answers in memory and 40 certificates, every certificate is answered from its stored
/// response (read when asked about), nothing is read before the first request, and a stored
/// `good` for a certificate revoked in the store is not served.
#[test]
fn a_bounded_stateless_responder_reads_answers_when_asked_and_checks_their_status() {
    let ca = TestCa::new("Bounded Stateless CA");
    let leaves: Vec<_> = (0..40).map(|i| ca.issue_leaf(&format!("l{i}"))).collect();
    let signing = Responder::new(
        &ca.cert_der,
        ResponderKey::ca(ca.signer_dyn()),
        ca.store.clone(),
        Arc::new(SystemClock),
        ResponderConfig::default(),
    )
    .unwrap();
    signing.load().unwrap();
    signing.refresh_backlog().unwrap();
    let victim = leaves[5].record.serial.clone();
    // Revoked in the store only (a signing node that crashed before re-signing).
    ca.store
        .revoke(&victim, Utc::now(), RevocationReason::KeyCompromise)
        .unwrap();

    let stateless = StatelessResponder::new(
        &ca.cert_der,
        ca.store.clone(),
        Arc::new(SystemClock),
        StatelessConfig {
            cache_max_entries: 16,
            ..StatelessConfig::default()
        },
    )
    .unwrap();
    stateless.reload().unwrap();
    assert_eq!(stateless.cache_stats().entries, 0, "nothing read at start");
    for round in 0..2 {
        for l in &leaves {
            let want = if l.record.serial == victim {
                "TryLater"
            } else {
                "good"
            };
            let got = verdict(
                &stateless
                    .respond(&request(&ca.cert_der, &[&l.record.serial], HashAlg::Sha1))
                    .der,
            );
            assert_eq!(got, want, "round {round}");
        }
    }
    let stats = stateless.cache_stats();
    assert!(stats.entries <= 16, "{stats:?}");
    assert!(stats.evictions > 0 && stats.store_reads >= 40, "{stats:?}");
    // What is in memory is re-read by the periodic pass; still bounded.
    stateless.reload().unwrap();
    assert!(stateless.cache_stats().entries <= 16);
}
