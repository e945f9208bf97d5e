//! Deterministic mutation test of OCSP request handling (the cargo-fuzz target's little
//! sibling, run with the regular suite): thousands of mutated requests through
//! `Responder::lookup` never panic, and whatever does not decode is `malformedRequest`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ocsp_fixture;

use ca_core::clock::SystemClock;
use ca_core::ocsp::x509_ocsp::{ext::Nonce, OcspRequest, Request, TbsRequest};
use ca_core::ocsp::{
    parse_request, AnswerKind, HashAlg, Lookup, OcspIssuer, OcspResponseStatus, Responder,
    ResponderConfig, ResponderKey,
};
use der::Encode;
use ocsp_fixture::TestCa;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

#[test]
fn mutated_requests_never_panic_and_undecodable_ones_are_malformed() {
    let ca = TestCa::new("Test Root");
    let leaf = ca.issue_leaf("leaf");
    // No live signing budget: the test exercises parsing and lookup, not the HSM.
    let config = ResponderConfig {
        live_signing_rate: 0,
        live_signing_burst: 0,
        ..Default::default()
    };
    let r = Responder::new(
        &ca.cert_der,
        ResponderKey::ca(ca.signer_dyn()),
        ca.store.clone(),
        Arc::new(SystemClock),
        config,
    )
    .unwrap();
    r.load().unwrap();
    let issuer = OcspIssuer::from_cert_der(&ca.cert_der).unwrap();
    let nonce = Nonce::new(vec![9u8; 16]).unwrap();
    let seed_request = OcspRequest {
        tbs_request: TbsRequest {
            version: Default::default(),
            requestor_name: None,
            request_list: vec![
                Request {
                    req_cert: issuer.cert_id(HashAlg::Sha1, &leaf.record.serial).unwrap(),
                    single_request_extensions: None,
                },
                Request {
                    req_cert: issuer
                        .cert_id(HashAlg::Sha256, &leaf.record.serial)
                        .unwrap(),
                    single_request_extensions: None,
                },
            ],
            request_extensions: Some(vec![x509_cert::ext::Extension {
                extn_id: der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2"),
                critical: false,
                extn_value: der::asn1::OctetString::new(nonce.to_der().unwrap()).unwrap(),
            }]),
        },
        optional_signature: None,
    }
    .to_der()
    .unwrap();
    assert!(parse_request(&seed_request, 16).is_ok());

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x0c5b);
    let (mut malformed, mut decoded) = (0, 0);
    for _ in 0..5000 {
        let mut m = seed_request.clone();
        for _ in 0..rng.gen_range(1..4) {
            match rng.gen_range(0..5) {
                0 => {
                    let i = rng.gen_range(0..m.len());
                    m[i] ^= 1 << rng.gen_range(0..8);
                }
                1 => {
                    let i = rng.gen_range(0..m.len());
                    m[i] = rng.gen();
                }
                2 => m.truncate(rng.gen_range(0..m.len())),
                3 => {
                    let i = rng.gen_range(0..=m.len());
                    m.insert(i, rng.gen());
                }
                _ => {
                    let i = rng.gen_range(0..m.len());
                    m.remove(i);
                }
            }
            if m.is_empty() {
                m.push(0x30);
            }
        }
        let parsed = parse_request(&m, 16);
        match r.lookup(&m) {
            Lookup::Ready(a) => {
                if parsed.is_err() {
                    assert_eq!(
                        a.kind,
                        AnswerKind::Error(OcspResponseStatus::MalformedRequest),
                        "{m:02x?}"
                    );
                    malformed += 1;
                } else {
                    decoded += 1;
                }
            }
            Lookup::Live(live) => {
                assert!(parsed.is_ok());
                decoded += 1;
                // Without budget the live path answers without signing.
                let a = r.answer_live(live);
                assert!(matches!(
                    a.kind,
                    AnswerKind::Error(_) | AnswerKind::Signed { .. }
                ));
            }
        }
    }
    assert!(
        malformed > 1000 && decoded > 10,
        "malformed {malformed}, decoded {decoded}"
    );
}
