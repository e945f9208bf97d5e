//! Java's PKIX validator as an independent client (`tests/java/PkixCheck.java`, run by the real
//! JDK): it validates chains from the issuance path (CA keys in SoftHSM) to the root and checks
//! the end entity's status itself, over real HTTP on loopback, at the OCSP responder named in
//! the certificate's AIA, or at the CRL distribution point named in the certificate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ca_core::clock::SystemClock;
use ca_core::crl::CrlConfig;
use ca_core::issuance::IssuerUrls;
use ca_core::ocsp::{ResponderConfig, ResponderKey};
use ca_core::revocation::RevocationReason;
use ca_core::signer::{KeyAlgorithm, Signer};
use ca_core::store::CertRecord;
use ca_core::x509::pem_encode;
use ca_core::x509::RcgenKey;
use ca_server::status::{StatusConfig, StatusSetup, StatusState};
use chrono::Utc;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use testkit::pki::{test_profiles, TestPki};

fn java_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/java/PkixCheck.java")
}

/// `java PkixCheck.java MODE root chain`: (exit code, first line of output).
async fn pkix(mode: &str, root: &Path, chain: &Path) -> (i32, String) {
    let mut cmd = Command::new("java");
    if mode == "crl" {
        cmd.arg("-Dcom.sun.security.enableCRLDP=true");
    }
    cmd.arg(java_source()).arg(mode).arg(root).arg(chain);
    let out = tokio::task::spawn_blocking(move || {
        cmd.output()
            .expect("a JDK is required for this test (apt-get install default-jdk-headless)")
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A client certificate from the CA's issuance path for a fresh software key, written as a
/// chain file (leaf, then the issuing CA).
fn issue(pki: &TestPki, name: &str) -> (CertRecord, PathBuf) {
    let (issued, _) = pki.issue_new_key("client", name).unwrap();
    let chain = chain_file(pki, name, &issued.record.der);
    (issued.record, chain)
}

fn chain_file(pki: &TestPki, name: &str, leaf: &[u8]) -> PathBuf {
    let path = pki.dir.path().join(format!("{name}-chain.pem"));
    std::fs::write(
        &path,
        format!(
            "{}{}",
            pem_encode("CERTIFICATE", leaf),
            pem_encode("CERTIFICATE", &pki.issuing_der)
        ),
    )
    .unwrap();
    path
}

/// A certificate the issuing key signed that the CA never recorded (a forged or lost one),
/// with the same AIA and CRL distribution point as the real ones.
fn unrecorded(pki: &TestPki, urls: &IssuerUrls) -> PathBuf {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["ghost.test".to_string()]).unwrap();
    params.serial_number = Some(rcgen::SerialNumber::from_slice(
        &ca_core::x509::random_serial(),
    ));
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
        uris: vec![urls.crl.clone().unwrap()],
    }];
    // AIA id-ad-ocsp with the same URL the CA writes.
    let aia = x509_cert::ext::pkix::AuthorityInfoAccessSyntax(vec![
        x509_cert::ext::pkix::AccessDescription {
            access_method: der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1"),
            access_location: x509_cert::ext::pkix::name::GeneralName::UniformResourceIdentifier(
                der::asn1::Ia5String::new(urls.ocsp.as_deref().unwrap()).unwrap(),
            ),
        },
    ]);
    params
        .custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 5, 5, 7, 1, 1],
            der::Encode::to_der(&aia).unwrap(),
        ));
    let key = RcgenKey::new(pki.issuing_signer.as_ref() as &dyn Signer);
    let issuer = rcgen::Issuer::from_ca_cert_der(&pki.issuing_der.as_slice().into(), &key).unwrap();
    let der = params.signed_by(&kp, &issuer).unwrap().der().to_vec();
    chain_file(pki, "ghost", &der)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_pkix_checks_ocsp_from_a_delegated_responder_and_the_crl() {
    java_pkix_checks_ocsp_and_crl_over_http(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_pkix_checks_ocsp_signed_by_the_ca_itself_and_the_crl() {
    java_pkix_checks_ocsp_and_crl_over_http(false).await;
}

/// `delegated`: responses signed by a delegated OCSP responder (its certificate in the
/// response), else by the issuing CA's key.
async fn java_pkix_checks_ocsp_and_crl_over_http(delegated: bool) {
    // The listener's port goes into the certificates, so bind it first.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let urls = IssuerUrls {
        ocsp: Some(format!("{base}/ocsp")),
        ca_issuers: Some(format!("{base}/ca.crt")),
        crl: Some(format!("{base}/crl")),
    };
    let pki = TestPki::with(
        KeyAlgorithm::P256,
        test_profiles(),
        urls.clone(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let ocsp_key = if delegated {
        let (signer, cert) = pki.ocsp_responder("ocsp", KeyAlgorithm::P256).unwrap();
        ResponderKey::delegated(signer, &cert).unwrap()
    } else {
        ResponderKey::ca(pki.issuing_signer.clone() as Arc<dyn Signer>)
    };
    let setup = StatusSetup {
        issuer_cert_der: pki.issuing_der.clone(),
        issuing_signer: pki.issuing_signer.clone(),
        ocsp_key,
        store: pki.store.clone(),
        clock: Arc::new(SystemClock),
        responder: ResponderConfig::default(),
        crl: CrlConfig {
            distribution_point: urls.crl.clone(),
            ..CrlConfig::default()
        },
        external_responses: vec![],
        root_crl: None,
        http: StatusConfig::default(),
    };
    let state = tokio::task::spawn_blocking(move || StatusState::build(setup))
        .await
        .unwrap()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ca_server::status::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    let root = pki.dir.path().join("root.pem");
    // The first maintenance pass (loading, the backlog) is done before the issuance below, so
    // that the issuance signer alone signs its group.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !state.is_loaded() {
        assert!(std::time::Instant::now() < deadline, "never loaded");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    // Two certificates whose first responses are signed at issuance as one group, the leaked
    // one second in it: Java must find its own SingleResponse.
    let (good, good_chain) = issue(&pki, "good.test");
    let (leaked, leaked_chain) = issue(&pki, "leaked.test");
    let hooks = state.clone();
    let recs = [good.clone(), leaked.clone()];
    tokio::task::spawn_blocking(move || {
        for rec in &recs {
            let _queued = hooks.responder().enqueue_issued(rec);
        }
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while state.responder().cached(&leaked.serial).is_none() {
        assert!(std::time::Instant::now() < deadline, "no response signed");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let group =
        ca_core::ocsp::parse_response(&state.responder().cached(&leaked.serial).unwrap().der)
            .unwrap()
            .singles()
            .len();
    assert_eq!(group, 4, "both certificates in one response");

    for chain in [&good_chain, &leaked_chain] {
        for mode in ["ocsp", "crl"] {
            let (code, out) = pkix(mode, &root, chain).await;
            assert_eq!(
                (code, out.trim()),
                (0, "VALID"),
                "{mode} {}",
                chain.display()
            );
        }
    }

    state
        .revoke(
            leaked.serial.clone(),
            RevocationReason::KeyCompromise,
            Utc::now(),
            "test".into(),
        )
        .await
        .unwrap();
    for mode in ["ocsp", "crl"] {
        let (code, out) = pkix(mode, &root, &leaked_chain).await;
        assert_eq!(code, 1, "{mode}: {out}");
        assert!(
            out.starts_with("INVALID REVOKED") && out.contains("KEY_COMPROMISE"),
            "{mode}: {out}"
        );
        let (code, out) = pkix(mode, &root, &good_chain).await;
        assert_eq!(
            (code, out.trim()),
            (0, "VALID"),
            "{mode} after the revocation"
        );
    }

    // A certificate the CA has no record of: the responder says `unknown` (and the CRL cannot
    // vouch for it either way, so only OCSP is asked). Java must fail closed.
    let ghost = unrecorded(&pki, &urls);
    let (code, out) = pkix("ocsp", &root, &ghost).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("INVALID UNDETERMINED_REVOCATION_STATUS"),
        "{out}"
    );

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
