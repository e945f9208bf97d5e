//! `ceremonies::dev::rehearse` called in-process (this test binary's only test: SoftHSM loads
//! the rehearsal's configuration), then used the way a development CA server would: the online
//! token's issuing key, opened from the returned artifacts, issues a certificate that openssl
//! verifies against the root.

mod common;

use ca_core::signer::pkcs11::{HsmConfig, PinSource};
use ca_core::signer::Signer;
use ca_core::x509::RcgenKey;
use ceremonies::dev::{rehearse, DevOptions};
use common::openssl_ok;
use std::os::unix::fs::PermissionsExt;

#[test]
fn rehearse_returns_what_a_dev_ca_server_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pki");
    let opts = DevOptions {
        status_base_url: "http://127.0.0.1:18080/".into(),
        ..DevOptions::default()
    };
    let a = rehearse(&out, &opts).unwrap();

    assert_eq!(
        a.softhsm_conf,
        out.canonicalize().unwrap().join("hsm/softhsm2.conf")
    );
    assert_eq!(
        std::env::var_os("SOFTHSM2_CONF").unwrap(),
        a.softhsm_conf.as_os_str()
    );
    assert_eq!(
        (
            a.issuing_key_label.as_str(),
            a.ocsp_key_label.as_str(),
            a.online_token.as_str()
        ),
        ("issuing-ca", "ocsp-signer", "online")
    );
    for p in [
        &a.root_cert,
        &a.intermediate_cert,
        &a.chain,
        &a.ocsp_signer_cert,
        &a.root_crl,
        &a.intermediate_ocsp_response,
        &a.transcript,
        &a.module,
    ] {
        assert!(p.exists(), "{}", p.display());
    }
    assert_eq!(
        std::fs::metadata(&a.online_pin_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let root_der = openssl_ok(
        &[
            "x509",
            "-in",
            a.root_cert.to_str().unwrap(),
            "-outform",
            "DER",
            "-out",
            "root.der",
        ],
        &out,
    );
    assert!(root_der.is_empty());
    assert_eq!(
        a.root_fingerprint,
        ca_core::signer::sha256_hex(&std::fs::read(out.join("root.der")).unwrap())
    );
    let text = openssl_ok(
        &[
            "x509",
            "-in",
            a.intermediate_cert.to_str().unwrap(),
            "-noout",
            "-text",
        ],
        &out,
    );
    assert!(
        text.contains("URI:http://127.0.0.1:18080/root.crl")
            && text.contains("URI:http://127.0.0.1:18080/ocsp"),
        "{text}"
    );
    ceremonies::transcript::verify_file(&a.transcript, None).unwrap();

    // As the CA server: open the online token with the PIN file and issue a leaf.
    let mut hsm = HsmConfig::new(&a.online_token, PinSource::File(a.online_pin_file.clone()));
    hsm.module = Some(a.module.clone());
    let token = hsm.open().unwrap();
    let issuing = token.signer(&a.issuing_key_label).unwrap();
    let intermediate_pem = std::fs::read_to_string(&a.intermediate_cert).unwrap();
    let key = RcgenKey::new(&issuing);
    let issuer = rcgen::Issuer::from_ca_cert_pem(&intermediate_pem, &key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["service.example".to_string()]).unwrap();
    leaf.use_authority_key_identifier_extension = true;
    leaf.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    leaf.not_before = now - time::Duration::minutes(1);
    leaf.not_after = now + time::Duration::days(1);
    std::fs::write(
        out.join("leaf.pem"),
        leaf.signed_by(&leaf_key, &issuer).unwrap().pem(),
    )
    .unwrap();
    let verified = openssl_ok(
        &[
            "verify",
            "-CAfile",
            a.root_cert.to_str().unwrap(),
            "-untrusted",
            a.chain.to_str().unwrap(),
            "leaf.pem",
        ],
        &out,
    );
    assert!(verified.contains("leaf.pem: OK"), "{verified}");
    // The OCSP key signs too, and belongs to the OCSP signer certificate.
    let ocsp = token.signer(&a.ocsp_key_label).unwrap();
    let ocsp_cert = ceremonies::x509::read_cert_pem("ocsp signer", &a.ocsp_signer_cert).unwrap();
    assert_eq!(ocsp.spki_der(), ocsp_cert.spki_der.as_slice());
    ca_core::signer::verify(&ocsp_cert.spki_der, b"probe", &ocsp.sign(b"probe").unwrap()).unwrap();

    // Same directory again: refused.
    assert!(matches!(rehearse(&out, &opts), Err(ceremonies::Error::OutputExists(p)) if p == out));
}
