//! Issuance against a real SoftHSM token, checked with the real `openssl` CLI.

use ca_core::csr;
use ca_core::issuance::{IssueContext, IssuerUrls};
use ca_core::signer::KeyAlgorithm;
use ca_core::store::{prelude::*, CertFilter, IdentityBinding, TokenRecord};
use ca_core::Error;
use der::{Decode, Encode};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use testkit::pki::{test_profiles, TestPki};

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl CLI must be installed");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Make a key and CSR with the openssl CLI; returns CSR DER.
fn openssl_csr(dir: &Path, name: &str, keyspec: &[&str], subj: &str, addext: &[&str]) -> Vec<u8> {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let mut args: Vec<String> = vec!["req".into(), "-new".into(), "-nodes".into()];
    args.extend(keyspec.iter().map(|s| s.to_string()));
    args.extend([
        "-keyout".into(),
        key.display().to_string(),
        "-out".into(),
        csr.display().to_string(),
    ]);
    args.extend([
        "-outform".into(),
        "DER".into(),
        "-subj".into(),
        subj.to_string(),
    ]);
    for e in addext {
        args.extend(["-addext".into(), e.to_string()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = openssl(&refs);
    assert!(ok, "openssl req failed: {out}");
    std::fs::read(csr).unwrap()
}

fn p256() -> Vec<&'static str> {
    vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
}

/// A parsed CSR for a fresh P-256 key (openssl), subject CN only.
fn p256_csr(cn: &str) -> csr::CsrRequest {
    let work = tempfile::tempdir().unwrap();
    csr::parse_der(&openssl_csr(
        work.path(),
        "x",
        &p256(),
        &format!("/CN={cn}"),
        &[],
    ))
    .unwrap()
}

fn token(binding: IdentityBinding, profile: &str) -> TokenRecord {
    let now = chrono::Utc::now();
    TokenRecord {
        id: "tok-1".into(),
        hash: "h".into(),
        identity: binding,
        profile: profile.into(),
        created_at: now,
        expires_at: now + chrono::Duration::hours(1),
        created_by: "test".into(),
        used_at: None,
    }
}

fn bind(cn: &str, sans: &[&str]) -> IdentityBinding {
    IdentityBinding {
        common_name: Some(cn.into()),
        sans: sans.iter().map(|s| s.to_string()).collect(),
    }
}

fn urls() -> IssuerUrls {
    IssuerUrls {
        ocsp: Some("http://127.0.0.1:8080/ocsp".into()),
        ca_issuers: Some("http://127.0.0.1:8080/ca.crt".into()),
        crl: Some("http://127.0.0.1:8080/crl".into()),
    }
}

#[test]
fn every_ca_algorithm_issues_certificates_openssl_accepts() {
    for alg in KeyAlgorithm::ALL {
        let pki = TestPki::with(
            alg,
            test_profiles(),
            urls(),
            Arc::new(ca_core::clock::SystemClock),
        )
        .unwrap();
        let work = tempfile::tempdir().unwrap();
        let der = openssl_csr(
            work.path(),
            "leaf",
            &p256(),
            "/CN=web1.test",
            &["subjectAltName=DNS:web1.test,URI:spiffe://test/web1"],
        );
        let req = csr::parse_der(&der).unwrap();
        let tok = token(
            bind("web1.test", &["dns:web1.test", "uri:spiffe://test/web1"]),
            "mtls",
        );
        let issued = pki
            .ca
            .prepare(&req, IssueContext::Enrollment { token: &tok })
            .unwrap()
            .issue()
            .unwrap();
        let leaf = work.path().join("leaf.pem");
        std::fs::write(&leaf, issued.cert_pem()).unwrap();

        let root = pki.root_pem_path();
        let int = pki.issuing_pem_path();
        let (ok, out) = openssl(&[
            "verify",
            "-CAfile",
            root.to_str().unwrap(),
            "-untrusted",
            int.to_str().unwrap(),
            "-purpose",
            "sslclient",
            leaf.to_str().unwrap(),
        ]);
        assert!(ok && out.contains(": OK"), "{alg}: openssl verify: {out}");
        let (ok, out) = openssl(&[
            "verify",
            "-CAfile",
            root.to_str().unwrap(),
            "-untrusted",
            int.to_str().unwrap(),
            "-purpose",
            "sslserver",
            leaf.to_str().unwrap(),
        ]);
        assert!(
            ok,
            "{alg}: mtls profile must be valid for servers too: {out}"
        );

        let (ok, text) = openssl(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-text"]);
        assert!(ok);
        for needle in [
            "CA:FALSE",
            "X509v3 Authority Key Identifier",
            "X509v3 Subject Key Identifier",
            "Digital Signature",
            "TLS Web Client Authentication",
            "TLS Web Server Authentication",
            "DNS:web1.test",
            "URI:spiffe://test/web1",
            "OCSP - URI:http://127.0.0.1:8080/ocsp",
            "CA Issuers - URI:http://127.0.0.1:8080/ca.crt",
            "URI:http://127.0.0.1:8080/crl",
            "Subject: CN = web1.test",
        ] {
            assert!(
                text.contains(needle),
                "{alg}: certificate lacks {needle:?}:\n{text}"
            );
        }
        // 16-byte positive serial, 24h + 5 min back-dating.
        assert_eq!(issued.record.serial.len(), 16);
        assert!(issued.record.serial[0] & 0x80 == 0 && issued.record.serial[0] != 0);
        let life = issued.record.not_after - issued.record.not_before;
        assert_eq!(
            life,
            chrono::Duration::hours(24) + chrono::Duration::minutes(5),
            "{alg}"
        );
        // Durable: in the store.
        assert_eq!(
            pki.store
                .get_cert(&issued.record.serial)
                .unwrap()
                .unwrap()
                .der,
            issued.record.der
        );
    }
}

#[test]
fn rsa_ed25519_and_p384_subject_keys_are_accepted() {
    let pki = TestPki::new(KeyAlgorithm::P256).unwrap();
    let work = tempfile::tempdir().unwrap();
    for (name, spec) in [
        ("rsa", vec!["-newkey", "rsa:2048"]),
        ("ed", vec!["-newkey", "ed25519"]),
        (
            "p384",
            vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
        ),
    ] {
        let der = openssl_csr(work.path(), name, &spec, &format!("/CN={name}.test"), &[]);
        let req = csr::parse_der(&der).unwrap();
        let tok = token(bind(&format!("{name}.test"), &[]), "client");
        let issued = pki
            .ca
            .prepare(&req, IssueContext::Enrollment { token: &tok })
            .unwrap()
            .issue()
            .unwrap();
        let leaf = work.path().join(format!("{name}.pem"));
        std::fs::write(&leaf, issued.cert_pem()).unwrap();
        let (ok, out) = openssl(&[
            "verify",
            "-CAfile",
            pki.root_pem_path().to_str().unwrap(),
            "-untrusted",
            pki.issuing_pem_path().to_str().unwrap(),
            leaf.to_str().unwrap(),
        ]);
        assert!(ok, "{name}: {out}");
        // The token binds only a CN and the CSR asks for no SANs: the CN, a DNS name, becomes
        // the certificate's one SAN (the CN is a name like the others).
        assert_eq!(issued.record.sans, vec![format!("dns:{name}.test")]);
        assert_eq!(issued.record.identity, format!("{name}.test"));
    }
}

/// One row per class of bad input; each must give the exact error and store nothing.
#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let pki = TestPki::new(KeyAlgorithm::P256).unwrap();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let good = openssl_csr(w, "good", &p256(), "/CN=ok.test", &[]);
    let mut tampered = good.clone();
    let n = tampered.len();
    tampered[n - 5] ^= 0x01; // inside the signature value

    let rsa1024 = openssl_csr(w, "rsa1024", &["-newkey", "rsa:1024"], "/CN=ok.test", &[]);
    let p521 = openssl_csr(
        w,
        "p521",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"],
        "/CN=ok.test",
        &[],
    );
    let secp256k1 = openssl_csr(
        w,
        "k1",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
        "/CN=ok.test",
        &[],
    );
    let wants_ca = openssl_csr(
        w,
        "ca",
        &p256(),
        "/CN=ok.test",
        &["basicConstraints=critical,CA:TRUE"],
    );
    let odd_ext = openssl_csr(
        w,
        "odd",
        &p256(),
        "/CN=ok.test",
        &["1.2.3.4=ASN1:UTF8String:hello"],
    );
    let code_signing = openssl_csr(
        w,
        "cs",
        &p256(),
        "/CN=ok.test",
        &["extendedKeyUsage=codeSigning"],
    );
    let other_name = openssl_csr(
        w,
        "other",
        &p256(),
        "/CN=ok.test",
        &["subjectAltName=DNS:evil.example.com"],
    );
    let unbound = openssl_csr(
        w,
        "unbound",
        &p256(),
        "/CN=ok.test",
        &["subjectAltName=DNS:other.test"],
    );
    let wrong_cn = openssl_csr(w, "wrongcn", &p256(), "/CN=admin.test", &[]);

    type Check = fn(&Error) -> bool;
    let rows: Vec<(&str, Vec<u8>, Check)> = vec![
        ("garbage", b"not a csr at all".to_vec(), |e| {
            matches!(e, Error::MalformedCsr(_))
        }),
        ("truncated DER", good[..good.len() / 2].to_vec(), |e| {
            matches!(e, Error::MalformedCsr(_))
        }),
        ("trailing bytes", [good.clone(), vec![0, 0]].concat(), |e| {
            matches!(e, Error::MalformedCsr(_))
        }),
        ("oversized", vec![0x30; csr::MAX_CSR_LEN + 1], |e| {
            matches!(e, Error::MalformedCsr(_))
        }),
        ("wrong signature", tampered, |e| {
            matches!(e, Error::CsrSignature)
        }),
        ("RSA-1024", rsa1024, |e| matches!(e, Error::WeakKey(_))),
        ("P-521", p521, |e| matches!(e, Error::WeakKey(_))),
        ("secp256k1", secp256k1, |e| matches!(e, Error::WeakKey(_))),
        ("CA:TRUE requested", wants_ca, |e| {
            matches!(e, Error::ExtensionNotAllowed { .. })
        }),
        (
            "unknown extension",
            odd_ext,
            |e| matches!(e, Error::ExtensionNotAllowed { oid, .. } if oid == "1.2.3.4"),
        ),
        ("codeSigning EKU", code_signing, |e| {
            matches!(e, Error::ExtensionNotAllowed { .. })
        }),
        ("name outside profile", other_name, |e| {
            matches!(e, Error::NameNotAllowed { .. })
        }),
        ("name outside token binding", unbound, |e| {
            matches!(e, Error::NameNotAllowed { .. })
        }),
        ("CN other than bound", wrong_cn, |e| {
            matches!(e, Error::NameNotAllowed { .. })
        }),
    ];
    let tok = token(bind("ok.test", &[]), "client");
    for (what, der, check) in rows {
        let err = csr::parse_der(&der)
            .and_then(|req| {
                pki.ca
                    .prepare(&req, IssueContext::Enrollment { token: &tok })
                    .and_then(|p| p.issue())
            })
            .expect_err(what);
        assert!(check(&err), "{what}: unexpected error {err:?}");
        assert!(!err.to_string().is_empty());
    }
    assert!(
        pki.store
            .list_certs(&CertFilter::default())
            .unwrap()
            .is_empty(),
        "a refused request left a record"
    );
}

#[test]
fn renewal_keeps_identity_refuses_new_names_and_key_reuse() {
    let pki = TestPki::new(KeyAlgorithm::P256).unwrap();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let first = csr::parse_der(&openssl_csr(
        w,
        "a",
        &p256(),
        "/CN=svc.test",
        &["subjectAltName=DNS:svc.test,DNS:api.test"],
    ))
    .unwrap();
    let tok = token(
        bind("svc.test", &["dns:svc.test", "dns:api.test"]),
        "client",
    );
    let old = pki
        .ca
        .prepare(&first, IssueContext::Enrollment { token: &tok })
        .unwrap()
        .issue()
        .unwrap()
        .record;

    // Same key again: refused.
    assert!(matches!(
        pki.ca
            .prepare(&first, IssueContext::Renewal { previous: &old }),
        Err(Error::KeyReuse)
    ));
    // New key, tries to add a name: refused.
    let more = csr::parse_der(&openssl_csr(
        w,
        "b",
        &p256(),
        "/CN=svc.test",
        &["subjectAltName=DNS:svc.test,DNS:extra.test"],
    ))
    .unwrap();
    assert!(matches!(
        pki.ca
            .prepare(&more, IssueContext::Renewal { previous: &old }),
        Err(Error::NameNotAllowed { .. })
    ));
    // New key, no names at all: same identity as before.
    let fresh = csr::parse_der(&openssl_csr(w, "c", &p256(), "/CN=svc.test", &[])).unwrap();
    let new = pki
        .ca
        .prepare(&fresh, IssueContext::Renewal { previous: &old })
        .unwrap()
        .issue()
        .unwrap()
        .record;
    assert_eq!(new.identity, old.identity);
    assert_eq!(new.sans, old.sans);
    assert_eq!(new.profile, old.profile);
    assert_ne!(new.serial, old.serial);
    assert_ne!(new.spki_sha256, old.spki_sha256);
    assert_eq!(
        pki.store
            .list_certs(&CertFilter {
                identity: Some("svc.test".into()),
                ..Default::default()
            })
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn validity_is_cut_at_the_issuer_not_after() {
    use ca_core::clock::FixedClock;
    let clock = Arc::new(FixedClock::new(chrono::Utc::now()));
    let pki = TestPki::with(
        KeyAlgorithm::P256,
        test_profiles(),
        IssuerUrls::default(),
        clock.clone(),
    )
    .unwrap();
    let issuer_end = pki.ca.not_after();
    clock.set(issuer_end - chrono::Duration::hours(2));
    let req = p256_csr("late.test");
    let tok = token(bind("late.test", &[]), "client");
    let rec = pki
        .ca
        .prepare(&req, IssueContext::Enrollment { token: &tok })
        .unwrap()
        .issue()
        .unwrap()
        .record;
    assert_eq!(rec.not_after, issuer_end);
    clock.set(issuer_end + chrono::Duration::seconds(1));
    assert!(matches!(
        pki.ca
            .prepare(&req, IssueContext::Enrollment { token: &tok }),
        Err(Error::IssuerExpired { .. })
    ));
}

#[test]
fn serials_are_unique_and_records_survive_reopen() {
    let pki = TestPki::new(KeyAlgorithm::P256).unwrap();
    let req = p256_csr("many.test");
    let tok = token(bind("many.test", &[]), "client");
    let mut serials = std::collections::HashSet::new();
    for _ in 0..50 {
        let rec = pki
            .ca
            .prepare(&req, IssueContext::Enrollment { token: &tok })
            .unwrap()
            .issue()
            .unwrap()
            .record;
        // The post-sign check verifies the TBS bytes as they are in the certificate.
        let parsed = x509_cert::Certificate::from_der(&rec.der).unwrap();
        assert_eq!(
            ca_core::issuance::tbs_bytes(&rec.der).unwrap(),
            parsed.tbs_certificate.to_der().unwrap().as_slice()
        );
        assert!(serials.insert(rec.serial));
    }
    let any = serials.iter().next().unwrap();
    let der = pki.store.get_cert(any).unwrap().unwrap().der;
    for bad in [
        &b""[..],
        &b"\x30"[..],
        &der[..der.len() / 2],
        &b"\x31\x03\x02\x01\x00"[..],
    ] {
        assert!(ca_core::issuance::tbs_bytes(bad).is_err(), "{bad:?}");
    }
    let path = pki.dir.path().join("store");
    let TestPki { store, ca, .. } = pki;
    drop(ca);
    drop(store);
    let reopened = ca_core::store::SledStore::open(&path).unwrap();
    for s in &serials {
        assert!(reopened.get_cert(s).unwrap().is_some());
    }
}

#[test]
fn ca_refuses_an_hsm_key_that_does_not_match_its_certificate() {
    let pki = TestPki::new(KeyAlgorithm::P256).unwrap();
    let err = ca_core::issuance::Ca::new(
        pki.root_signer.clone(),
        pki.issuing_der.clone(),
        vec![],
        test_profiles(),
        IssuerUrls::default(),
        pki.store.clone(),
        Arc::new(ca_core::clock::SystemClock),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Issuer(_)), "{err:?}");
}

/// Signs with the HSM, then damages the signature: what a faulty HSM or a fault attack gives.
#[derive(Debug)]
struct FaultySigner(Arc<ca_core::signer::pkcs11::Pkcs11Signer>);

impl ca_core::signer::Signer for FaultySigner {
    fn algorithm(&self) -> KeyAlgorithm {
        self.0.algorithm()
    }
    fn spki_der(&self) -> &[u8] {
        self.0.spki_der()
    }
    fn public_key_bits(&self) -> &[u8] {
        self.0.public_key_bits()
    }
    fn sign(&self, msg: &[u8]) -> ca_core::Result<Vec<u8>> {
        let mut sig = self.0.sign(msg)?;
        // Flip a bit of s (the last byte of the DER ECDSA-Sig-Value): still well-formed DER.
        if let Some(last) = sig.last_mut() {
            *last ^= 1;
        }
        Ok(sig)
    }
}

#[test]
fn a_bad_signature_from_the_hsm_is_never_returned_or_stored() {
    let pki = TestPki::new(KeyAlgorithm::P256).unwrap();
    let req = p256_csr("faulty.test");
    let faulty: Arc<dyn ca_core::signer::Signer> =
        Arc::new(FaultySigner(pki.issuing_signer.clone()));
    let ca = ca_core::issuance::Ca::new(
        faulty.clone(),
        pki.issuing_der.clone(),
        vec![pki.root_der.clone()],
        test_profiles(),
        urls(),
        pki.store.clone(),
        Arc::new(ca_core::clock::SystemClock),
    )
    .unwrap();
    let tok = token(bind("faulty.test", &[]), "client");
    let before = pki.store.list_certs(&CertFilter::default()).unwrap().len();
    let err = ca
        .prepare(&req, IssueContext::Enrollment { token: &tok })
        .unwrap()
        .issue()
        .unwrap_err();
    assert!(matches!(err, Error::SignatureCheckFailed), "{err:?}");
    assert_eq!(
        pki.store.list_certs(&CertFilter::default()).unwrap().len(),
        before
    );
    // The same check guards OCSP responses signed with a faulty key.
    let good = pki
        .ca
        .prepare(&req, IssueContext::Enrollment { token: &tok })
        .unwrap()
        .issue()
        .unwrap();
    let now = chrono::Utc::now();
    let sign_good = |signer: &dyn ca_core::signer::Signer| {
        ca_core::ocsp::sign_response(
            signer,
            None,
            &pki.issuing_der,
            &[(
                good.record.serial.clone(),
                ca_core::revocation::CertStatus::Good,
            )],
            now,
            now + chrono::Duration::hours(1),
            None,
        )
    };
    let resp = sign_good(faulty.as_ref());
    assert!(matches!(resp, Err(Error::SignatureCheckFailed)), "{resp:?}");
    // The unbroken signer signs the same response.
    assert!(sign_good(pki.issuing_signer.as_ref()).is_ok());
}
