//! Rust services as independent peers: rustls-webpki path building with the CA's CRL, and a real
//! rustls TLS server on loopback that requires client certificates and checks them against that
//! CRL (`WebPkiClientVerifier::with_crls`, what a Rust service behind this CA runs). Every
//! certificate comes from the real issuance path with the CA keys in SoftHSM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ca_core::crl::build_crl_with;
use ca_core::issuance::{Issued, IssuerUrls};
use ca_core::revocation::RevocationReason;
use ca_core::signer::KeyAlgorithm;
use ca_core::store::prelude::*;
use chrono::{Duration, Utc};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
    UnixTime,
};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use testkit::pki::{test_profiles, TestPki};
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};

const CRL_URL: &str = "http://127.0.0.1:9/crl";

fn pki(alg: KeyAlgorithm) -> TestPki {
    let urls = IssuerUrls {
        ocsp: Some("http://127.0.0.1:9/ocsp".into()),
        ca_issuers: Some("http://127.0.0.1:9/ca.crt".into()),
        crl: Some(CRL_URL.into()),
    };
    TestPki::with(
        alg,
        test_profiles(),
        urls,
        Arc::new(ca_core::clock::SystemClock),
    )
    .unwrap()
}

/// A certificate from the CA's issuance path for a fresh P-256 software key.
fn issue(pki: &TestPki, profile: &str, name: &str) -> (Issued, PrivateKeyDer<'static>) {
    let (issued, kp) = pki.issue_new_key(profile, name).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(kp.serialize_der()));
    (issued, key)
}

/// The issuing CA's CRL as the server publishes it (issuing distribution point = the CRL URL
/// the certificates carry).
fn crl(pki: &TestPki) -> Vec<u8> {
    crl_at(pki, CRL_URL)
}

fn crl_at(pki: &TestPki, url: &str) -> Vec<u8> {
    let now = Utc::now();
    build_crl_with(
        pki.store.as_ref(),
        pki.issuing_signer.as_ref(),
        &pki.issuing_der,
        now,
        now + Duration::hours(6),
        Some(url),
    )
    .unwrap()
    .der
}

fn revoke(pki: &TestPki, issued: &Issued) {
    let at = ca_core::clock::truncate(Utc::now() - Duration::minutes(1));
    pki.store
        .revoke(&issued.record.serial, at, RevocationReason::KeyCompromise)
        .unwrap();
}

/// rustls-webpki's verdict on a client certificate: chain to the root through the issuing CA,
/// clientAuth, and the CRL checked for the end entity with unknown status and expired CRLs
/// refused (the strict settings).
fn webpki_verdict(pki: &TestPki, leaf: &[u8], crl_der: &[u8]) -> Result<(), webpki::Error> {
    let root = CertificateDer::from(pki.root_der.clone());
    let anchors = vec![webpki::anchor_from_trusted_cert(&root).unwrap().to_owned()];
    let crl = CertRevocationList::Owned(OwnedCertRevocationList::from_der(crl_der).unwrap());
    let crls = [&crl];
    let revocation = RevocationOptionsBuilder::new(&crls)
        .unwrap()
        .with_depth(RevocationCheckDepth::EndEntity)
        .with_status_policy(UnknownStatusPolicy::Deny)
        .with_expiration_policy(ExpirationPolicy::Enforce)
        .build();
    let leaf = CertificateDer::from(leaf.to_vec());
    let ee = EndEntityCert::try_from(&leaf).unwrap();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &[CertificateDer::from(pki.issuing_der.clone())],
        UnixTime::now(),
        KeyUsage::client_auth(),
        Some(revocation),
        None,
    )
    .map(|_| ())
}

#[test]
fn webpki_accepts_good_and_rejects_revoked_for_every_ca_algorithm() {
    for alg in [
        KeyAlgorithm::P256,
        KeyAlgorithm::P384,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Ed25519,
    ] {
        let pki = pki(alg);
        let (good, _) = issue(&pki, "client", "good.test");
        let (bad, _) = issue(&pki, "client", "bad.test");
        let before = crl(&pki);
        assert_eq!(
            webpki_verdict(&pki, &bad.record.der, &before),
            Ok(()),
            "{alg:?}: not revoked yet"
        );
        revoke(&pki, &bad);
        let after = crl(&pki);
        assert_eq!(
            webpki_verdict(&pki, &good.record.der, &after),
            Ok(()),
            "{alg:?}"
        );
        assert_eq!(
            webpki_verdict(&pki, &bad.record.der, &after),
            Err(webpki::Error::CertRevoked),
            "{alg:?}"
        );
        // The issuing distribution point is read: a CRL published for another URL is not
        // authoritative for these certificates, and the strict policy refuses them.
        let elsewhere = crl_at(&pki, "http://127.0.0.1:9/other.crl");
        assert_eq!(
            webpki_verdict(&pki, &good.record.der, &elsewhere),
            Err(webpki::Error::UnknownRevocationStatus),
            "{alg:?}"
        );
        // A server-only certificate is not a client certificate.

        let (server, _) = issue(&pki, "server", "srv.test");
        assert!(
            webpki_verdict(&pki, &server.record.der, &after).is_err(),
            "{alg:?}: serverAuth-only certificate accepted for clientAuth"
        );
    }
}

/// What the TLS server saw on one connection, and what the client read back.
struct Outcome {
    server: Result<(), rustls::Error>,
    client: std::io::Result<String>,
}

/// One mTLS exchange over loopback: a rustls server that requires a client certificate and
/// checks it against `crl_der`, and a rustls client presenting `client`.
fn exchange(
    pki: &TestPki,
    server: &(Issued, PrivateKeyDer<'static>),
    client: &(Issued, PrivateKeyDer<'static>),
    crl_der: &[u8],
) -> Outcome {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(pki.root_der.clone()))
        .unwrap();
    let roots = Arc::new(roots);
    let chain = |issued: &Issued| {
        vec![
            CertificateDer::from(issued.record.der.clone()),
            CertificateDer::from(pki.issuing_der.clone()),
        ]
    };

    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .with_crls([CertificateRevocationListDer::from(crl_der.to_vec())])
    .only_check_end_entity_revocation()
    .build()
    .unwrap();
    let server_config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain(&server.0), server.1.clone_key())
            .unwrap(),
    );
    let client_config = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain(&client.0), client.1.clone_key())
            .unwrap(),
    );

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server_thread = std::thread::spawn(move || -> Result<(), rustls::Error> {
        let (mut tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut conn = rustls::ServerConnection::new(server_config).unwrap();
        while conn.is_handshaking() {
            match conn.complete_io(&mut tcp) {
                Ok(_) => {}
                Err(e) => {
                    // Send the alert rustls queued, then report the TLS error behind it.
                    let _ = conn.write_tls(&mut tcp);
                    return Err(e
                        .into_inner()
                        .and_then(|i| i.downcast::<rustls::Error>().ok())
                        .map(|b| *b)
                        .unwrap_or(rustls::Error::General("io error".into())));
                }
            }
        }
        let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
        tls.write_all(b"hello, verified client\n").unwrap();
        tls.flush().unwrap();
        Ok(())
    });

    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(client_config, name).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    let mut line = [0u8; 23];
    let client = tls
        .read_exact(&mut line)
        .map(|_| String::from_utf8_lossy(&line).into_owned());
    Outcome {
        server: server_thread.join().unwrap(),
        client,
    }
}

#[test]
fn rustls_server_refuses_a_revoked_client_certificate_by_crl() {
    let pki = pki(KeyAlgorithm::P256);
    let server = issue(&pki, "server", "localhost");
    let good = issue(&pki, "client", "good.test");
    let leaked = issue(&pki, "client", "leaked.test");

    let before = crl(&pki);
    let ok = exchange(&pki, &server, &leaked, &before);
    assert!(ok.server.is_ok(), "{:?}", ok.server);
    assert_eq!(ok.client.unwrap(), "hello, verified client\n");

    revoke(&pki, &leaked.0);
    let after = crl(&pki);
    let refused = exchange(&pki, &server, &leaked, &after);
    assert_eq!(
        refused.server,
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Revoked
        ))
    );
    let err = refused.client.expect_err("revoked client read data");
    assert!(
        err.to_string().contains("CertificateRevoked"),
        "client saw: {err}"
    );

    let still = exchange(&pki, &server, &good, &after);
    assert!(still.server.is_ok(), "{:?}", still.server);
    assert_eq!(still.client.unwrap(), "hello, verified client\n");
}
