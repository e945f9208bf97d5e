//! Revocation data stays valid and compliant (issue 14, section 4), tried against a running
//! server (SoftHSM token, sled store, HTTPS API and the plain-HTTP status listener on loopback):
//!
//! - no OCSP response outlives the delegated responder certificate, and once it has expired
//!   nothing is signed with it; `/readyz` and `/metrics` on the status listener say so;
//! - the responder certificate is recorded, listed and revocable, and once revoked the server
//!   refuses to sign with it;
//! - reasons an end-entity certificate must not carry are refused by the API, changing nothing;
//! - the root-signed OCSP response about the intermediate is refused at load when it has
//!   expired or is valid longer than twelve months (365 days).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod status_support;

use ca_core::ocsp::{parse_response, sign_response, ExternalResponse, OcspResponseStatus};
use ca_core::revocation::CertStatus;
use ca_core::store::prelude::*;
use ca_server::api::types::*;
use chrono::{DateTime, Duration, Utc};
use common::{serial_of, TestServer};
use std::path::{Path, PathBuf};
use std::process::Command;

fn not_after_of(der: &[u8]) -> DateTime<Utc> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0).unwrap()
}

fn serial_hex_of(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    hex::encode(cert.tbs_certificate.raw_serial())
}

/// `openssl ocsp` about `cert_pem` against the server's status listener, without nonce and
/// without verifying the signer; returns openssl's output and the DER response.
async fn ocsp(srv: &TestServer, cert_pem: &str, name: &str) -> (String, Vec<u8>) {
    let dir = srv.tmp();
    let cert = dir.join(format!("{name}.pem"));
    std::fs::write(&cert, cert_pem).unwrap();
    let out = dir.join(format!("{name}-{}.ocsp", rand::random::<u32>()));
    let mut cmd = Command::new("openssl");
    cmd.arg("ocsp")
        .arg("-issuer")
        .arg(srv.pki.issuing_pem_path())
        .arg("-cert")
        .arg(&cert)
        .arg("-url")
        .arg(format!("{}/ocsp", srv.status_url))
        .args(["-no_nonce", "-noverify", "-timeout", "10", "-respout"])
        .arg(&out);
    let (_, text) = status_support::run_async(cmd).await;
    let der = std::fs::read(&out).unwrap_or_default();
    (text, der)
}

/// GET on the status listener with curl: (HTTP status, body).
async fn status_get(srv: &TestServer, path: &str) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .arg(format!("{}{path}", srv.status_url));
    let (_, out) = status_support::run_async(cmd).await;
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

fn gauge(metrics: &str, name: &str) -> i64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

async fn revoke(
    srv: &TestServer,
    who: &common::Identity,
    serial: &str,
    reason: &str,
) -> Result<RevokeResponse, ca_server::client::ClientError> {
    srv.client(Some(who))
        .post_json(
            "/v1/admin/revoke",
            &RevokeRequest {
                serial: serial.into(),
                reason: Some(reason.into()),
                lineage: false,
            },
        )
        .await
}

/// The attack: a responder certificate about to expire keeps vouching for answers after it
/// has expired. Every response's nextUpdate is clamped to its notAfter; once it has expired,
/// nothing is signed (a new certificate is answered tryLater, never good) and the status
/// listener's readiness fails; within 30 days of expiry readiness warns and stays 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ocsp_response_outlives_the_responder_certificate() {
    let srv = TestServer::with(common::Options {
        status: true,
        ocsp_signer_valid_for: Some(Duration::seconds(20)),
        ..Default::default()
    })
    .await;
    let signer_der = srv.ocsp_signer_der.clone().unwrap();
    let signer_not_after = not_after_of(&signer_der);

    let token = srv.token("early.test", &["dns:early.test"], "client").await;
    let (early, _) = srv.enroll(&token, "early.test", &["dns:early.test"]).await;
    let (text, der) = ocsp(&srv, &early.cert, "early").await;
    assert!(text.contains("early.pem: good"), "{text}");
    let parsed = parse_response(&der).unwrap();
    let next_update = parsed.next_update().unwrap();
    assert!(
        next_update <= signer_not_after,
        "nextUpdate {next_update} is after the responder certificate's notAfter {signer_not_after}"
    );

    // Within 30 days of expiry: still ready (load balancers keep it), with a warning.
    let (code, body) = status_get(&srv, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("warning: ocsp_signer_expiring"), "{body}");
    let (_, metrics) = status_get(&srv, "/metrics").await;
    let left = gauge(&metrics, "ca_ocsp_signer_cert_expiry_seconds");
    assert!((0..=20).contains(&left), "{left}\n{metrics}");
    assert_eq!(gauge(&metrics, "ca_ocsp_signer_cert_revoked"), 0);

    // Expired: nothing new is signed with it.
    let wait = (signer_not_after - Utc::now()).num_milliseconds() + 1500;
    tokio::time::sleep(std::time::Duration::from_millis(wait.max(0) as u64)).await;
    let token = srv.token("late.test", &["dns:late.test"], "client").await;
    let (late, _) = srv.enroll(&token, "late.test", &["dns:late.test"]).await;
    let (text, der) = ocsp(&srv, &late.cert, "late").await;
    assert!(!text.contains("late.pem: good"), "{text}");
    assert_eq!(
        parse_response(&der).unwrap().status,
        OcspResponseStatus::TryLater,
        "{text}"
    );
    let (code, body) = status_get(&srv, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("ocsp_signer_expired"), "{body}");
    let (_, metrics) = status_get(&srv, "/metrics").await;
    assert!(gauge(&metrics, "ca_ocsp_signer_cert_expiry_seconds") < 0);

    // A revocation is stored (and goes to the CRL) but is not acknowledged as published.
    let err = revoke(
        &srv,
        &srv.operator,
        &serial_of(&early.cert),
        "keyCompromise",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some("hsm_unavailable"), "{err}");
    assert!(
        err.to_string().contains("OCSP responder certificate"),
        "{err}"
    );
}

/// The responder certificate is a certificate this CA issued: listed, registered once, revoked
/// by a security officer only; once revoked the server signs nothing with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_responder_certificate_is_listed_and_revoking_it_stops_signing() {
    let srv = TestServer::with(common::Options {
        status: true,
        ocsp_signer_valid_for: Some(Duration::days(60)),
        ..Default::default()
    })
    .await;
    let signer_der = srv.ocsp_signer_der.clone().unwrap();
    let signer_serial = serial_hex_of(&signer_der);

    let listed: CertsResponse = srv
        .client(Some(&srv.so))
        .get_json("/v1/admin/certs")
        .await
        .unwrap();
    let entry = listed
        .certs
        .iter()
        .find(|c| c.serial == signer_serial)
        .unwrap_or_else(|| panic!("responder certificate not listed: {listed:?}"));
    assert_eq!(entry.profile, "_ocsp-signer");
    let registered = |s: &TestServer| {
        s.pki
            .store
            .audit_events(1, usize::MAX)
            .unwrap()
            .iter()
            .filter(|e| e.event.action == "ocsp_signer.register" && e.event.object == signer_serial)
            .count()
    };
    assert_eq!(registered(&srv), 1);
    // A second start (same store, same certificate) records nothing more.
    let issuer = ca_core::ocsp::OcspIssuer::from_cert_der(&srv.pki.issuing_der).unwrap();
    let (_, inserted) =
        ca_core::ocsp::register_signer_cert(srv.pki.store.as_ref(), &issuer, &signer_der, "server")
            .unwrap();
    assert!(!inserted);
    assert_eq!(registered(&srv), 1);

    let token = srv
        .token("before.test", &["dns:before.test"], "client")
        .await;
    let (before, _) = srv
        .enroll(&token, "before.test", &["dns:before.test"])
        .await;
    let (text, _) = ocsp(&srv, &before.cert, "before").await;
    assert!(text.contains("before.pem: good"), "{text}");

    // An operator cannot take OCSP down for the whole fleet.
    let err = revoke(&srv, &srv.operator, &signer_serial, "keyCompromise")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("forbidden"), "{err}");
    // A security officer can.
    revoke(&srv, &srv.so, &signer_serial, "keyCompromise")
        .await
        .unwrap();
    let rec = srv
        .pki
        .store
        .get_cert(&hex::decode(&signer_serial).unwrap())
        .unwrap()
        .unwrap();
    assert!(rec.is_revoked());

    // Nothing new is signed with it: a certificate issued now is never answered good.
    let token = srv.token("after.test", &["dns:after.test"], "client").await;
    let (after, _) = srv.enroll(&token, "after.test", &["dns:after.test"]).await;
    let (text, der) = ocsp(&srv, &after.cert, "after").await;
    assert!(!text.contains("after.pem: good"), "{text}");
    assert_eq!(
        parse_response(&der).unwrap().status,
        OcspResponseStatus::TryLater,
        "{text}"
    );
    let (code, body) = status_get(&srv, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("ocsp_signer_revoked"), "{body}");
    let (_, metrics) = status_get(&srv, "/metrics").await;
    assert_eq!(gauge(&metrics, "ca_ocsp_signer_cert_revoked"), 1);
    // The CRL (signed by the issuing key) lists it.
    let crl = {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "-o"])
            .arg(srv.tmp().join("now.crl"))
            .arg(format!("{}/crl", srv.status_url));
        status_support::run_async(cmd).await;
        let mut cmd = Command::new("openssl");
        cmd.args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
            .arg(srv.tmp().join("now.crl"));
        status_support::run_async(cmd).await.1
    };
    assert!(
        crl.to_ascii_uppercase()
            .contains(&signer_serial.to_ascii_uppercase()),
        "{crl}"
    );
}

/// Reasons an end-entity certificate must not carry: refused with `bad_request`, the
/// certificate stays valid, no CRL entry, the OCSP answer stays good. Allowed reasons work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_entity_certificates_refuse_hold_and_ca_only_reasons() {
    let srv = TestServer::with(common::Options {
        status: true,
        ..Default::default()
    })
    .await;
    let token = srv
        .token("subject.test", &["dns:subject.test"], "client")
        .await;
    let (subject, _) = srv
        .enroll(&token, "subject.test", &["dns:subject.test"])
        .await;
    let serial = serial_of(&subject.cert);
    let refused = [
        ("certificateHold", "CA/B Forum BR 7.2.2"),
        ("6", "CA/B Forum BR 7.2.2"),
        ("cACompromise", "CA and attribute-authority"),
        ("aACompromise", "CA and attribute-authority"),
        ("removeFromCRL", "delta CRLs"),
    ];
    for (reason, says) in refused {
        for who in [&srv.operator, &srv.so] {
            let err = revoke(&srv, who, &serial, reason).await.unwrap_err();
            assert_eq!(err.code(), Some("bad_request"), "{reason}: {err}");
            assert!(err.to_string().contains(says), "{reason}: {err}");
        }
        let rec = srv
            .pki
            .store
            .get_cert(&hex::decode(&serial).unwrap())
            .unwrap()
            .unwrap();
        assert!(!rec.is_revoked(), "{reason} changed the record");
        let (text, _) = ocsp(&srv, &subject.cert, "subject").await;
        assert!(text.contains("subject.pem: good"), "{reason}: {text}");
    }
    let mut revoked = 0;
    srv.pki
        .store
        .for_each_revoked(&mut |_| {
            revoked += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(revoked, 0);
    // The lineage route refuses them too.
    let err = srv
        .client(Some(&srv.so))
        .post_json::<_, RevokeResponse>(
            "/v1/admin/revoke",
            &RevokeRequest {
                serial: serial.clone(),
                reason: Some("certificateHold".into()),
                lineage: true,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("bad_request"), "{err}");

    // Allowed reasons still work.
    let r = revoke(&srv, &srv.operator, &serial, "superseded")
        .await
        .unwrap();
    assert_eq!(r.reason, "superseded");
    let (text, _) = ocsp(&srv, &subject.cert, "subject").await;
    assert!(text.contains("subject.pem: revoked"), "{text}");
}

fn build_with_external(
    inter: &status_support::fixture::TestCa,
    root: &status_support::fixture::TestCa,
    file: &Path,
) -> ca_core::Result<()> {
    use ca_server::status::{StatusConfig, StatusSetup, StatusState};
    let setup = StatusSetup {
        issuer_cert_der: inter.cert_der.clone(),
        issuing_signer: inter.signer_dyn(),
        ocsp_key: ca_core::ocsp::ResponderKey::ca(inter.signer_dyn()),
        store: inter.store.clone(),
        clock: std::sync::Arc::new(ca_core::clock::SystemClock),
        responder: Default::default(),
        crl: Default::default(),
        external_responses: vec![ExternalResponse {
            path: file.to_path_buf(),
            signer_cert_der: root.cert_der.clone(),
        }],
        root_crl: None,
        http: StatusConfig::default(),
    };
    StatusState::build(setup).map(|_| ())
}

/// The root-signed response about the intermediate (ceremony kind `ocsp-response`): one that
/// has expired or is valid longer than 365 days (CA/B Forum BR 4.9.10, twelve months) is
/// refused at start, naming the file; 365 days counted inclusively is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_ca_responses_are_refused_when_expired_or_longer_than_twelve_months() {
    let root = status_support::fixture::TestCa::new("Test Root CA");
    let inter = root.intermediate("Test Issuing CA");
    let inter_serial = {
        use der::Decode;
        x509_cert::Certificate::from_der(&inter.cert_der)
            .unwrap()
            .tbs_certificate
            .serial_number
            .as_bytes()
            .to_vec()
    };
    let now = ca_core::clock::truncate(Utc::now());
    // (what, thisUpdate, nextUpdate, refused with a message containing)
    type Row<'a> = (&'a str, DateTime<Utc>, DateTime<Utc>, Option<&'a str>);
    let rows: [Row<'_>; 4] = [
        (
            "366 days",
            now,
            now + Duration::days(366) - Duration::seconds(1),
            Some("longer than 365 days"),
        ),
        (
            "365 days and a second",
            now,
            now + Duration::days(365),
            Some("longer than 365 days"),
        ),
        (
            "expired",
            now - Duration::days(2),
            now - Duration::days(1),
            Some("expired"),
        ),
        (
            "365 days, inclusive",
            now,
            now + Duration::days(365) - Duration::seconds(1),
            None,
        ),
    ];
    for (what, this_update, next_update, refused) in rows {
        let der = sign_response(
            root.signer.as_ref(),
            None,
            &root.cert_der,
            &[(inter_serial.clone(), CertStatus::Good)],
            this_update,
            next_update,
            None,
        )
        .unwrap();
        let file: PathBuf = inter.path(&format!("intermediate-{}.ocsp", rand::random::<u32>()));
        std::fs::write(&file, der).unwrap();
        let (i, r, f) = (&inter, &root, file.clone());
        let result =
            std::thread::scope(|s| s.spawn(|| build_with_external(i, r, &f)).join()).unwrap();
        match (refused, result) {
            (None, Ok(())) => {}
            (Some(says), Err(e)) => {
                let msg = e.to_string();
                assert!(msg.contains(says), "{what}: {msg}");
                assert!(msg.contains(&file.display().to_string()), "{what}: {msg}");
            }
            (None, Err(e)) => panic!("{what}: refused: {e}"),
            (Some(_), Ok(())) => panic!("{what}: accepted"),
        }
    }
}
