//! Names obey the profile's policy, all of them; the CA's own names are reserved; only the CA
//! server's profile carries its mark; keys are re-encoded canonically; CSR extensions from
//! common tools are ignored or refused by what they would mean. Real SoftHSM issuing key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ca_core::ca_identity::{has_ca_server_identity, ReservedNames};
use ca_core::csr::{self, CsrRequest};
use ca_core::issuance::{Ca, IssueContext, IssuerUrls};
use ca_core::profile::{NamePolicy, Profile, Profiles, San};
use ca_core::signer::{KeyAlgorithm, Signer};
use ca_core::store::prelude::*;
use ca_core::store::{CertFilter, IdentityBinding, Store};
use ca_core::Error;
use der::{Decode, Encode};
use rcgen::PublicKeyData;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use testkit::pki::{test_profiles, TestPki};

const SERVER_TLS: &str = "_server-tls";

/// The test profiles plus `svc` (only `.svc.example.com` and `spiffe://example.com/ns`, client
/// auth), `web` (server auth, `.svc.example.com`) and the CA server's own profile.
fn profiles() -> Profiles {
    let mut p = test_profiles();
    let names = NamePolicy {
        dns: vec![".svc.example.com".into()],
        uri: vec!["spiffe://example.com/ns".into()],
        common_name: true,
        max_sans: 10,
        ..Default::default()
    };
    p.0.insert("svc".into(), Profile::client(names.clone()));
    let mut web = Profile::client(names);
    web.extended_key_usage = vec![ca_core::profile::ExtKeyUsage::ServerAuth];
    p.0.insert("web".into(), web);
    let mut labels = Profile::client(NamePolicy {
        dns: vec![".svc.example.com".into()],
        common_name: true,
        common_name_patterns: vec![".users.example.com".into()],
        max_sans: 10,
        ..Default::default()
    });
    labels.validity = ca_core::profile::Span(chrono::Duration::hours(1));
    p.0.insert("labels".into(), labels);
    p.0.insert(
        SERVER_TLS.into(),
        Profile::ca_server_tls(NamePolicy {
            dns: vec!["*".into()],
            ip: vec!["0.0.0.0/0".into(), "::/0".into()],
            common_name: true,
            max_sans: 20,
            ..Default::default()
        }),
    );
    p
}

/// A CA over the test PKI's HSM key and store with [`profiles`] and the CA's own names
/// (`ca.svc.example.com`, 10.255.0.1, and the status host of its URLs) reserved; `localhost`
/// and 127.0.0.1 are listed too, and stay issuable (loopback names are never reserved).
fn reserved_ca(pki: &TestPki) -> Ca {
    let urls = IssuerUrls {
        ocsp: Some("http://status.svc.example.com:8080/ocsp".into()),
        ..Default::default()
    };
    let mut reserved = ReservedNames::from_names([
        "dns:ca.svc.example.com",
        "ip:10.255.0.1",
        "dns:localhost",
        "ip:127.0.0.1",
    ])
    .unwrap();
    reserved
        .add_url_host(urls.ocsp.as_deref().unwrap())
        .unwrap();
    Ca::new(
        pki.issuing_signer.clone() as Arc<dyn Signer>,
        pki.issuing_der.clone(),
        vec![pki.root_der.clone()],
        profiles(),
        urls,
        pki.store.clone() as Arc<dyn Store>,
        Arc::new(ca_core::clock::SystemClock),
    )
    .unwrap()
    .with_reserved_names(reserved)
}

/// A CSR (rcgen, fresh P-256 key) for `cn` (none if empty) and `sans`.
fn csr_for(cn: &str, sans: &[&str]) -> CsrRequest {
    try_csr(cn, sans).unwrap()
}

/// [`csr_for`], parsed (the parser already refuses malformed names).
fn try_csr(cn: &str, sans: &[&str]) -> ca_core::Result<CsrRequest> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if !cn.is_empty() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
    }
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.split_once(':').unwrap() {
            ("dns", v) => rcgen::SanType::DnsName(v.to_string().try_into().unwrap()),
            ("uri", v) => rcgen::SanType::URI(v.to_string().try_into().unwrap()),
            ("ip", v) => rcgen::SanType::IpAddress(v.parse().unwrap()),
            (k, _) => panic!("{k}"),
        })
        .collect();
    csr::parse_der(params.serialize_request(&key).unwrap().der())
}

fn admin<'a>(profile: &'a str, binding: Option<&'a IdentityBinding>) -> IssueContext<'a> {
    IssueContext::Admin {
        profile,
        actor: "test",
        binding,
    }
}

fn count(pki: &TestPki) -> usize {
    pki.store.list_certs(&CertFilter::default()).unwrap().len()
}

/// One row per class of name that policy or reservation must refuse, at issuance and in
/// `check_identity` (what token creation calls); nothing is stored.
#[test]
fn names_outside_policy_or_reserved_are_refused() {
    let pki = TestPki::new(KeyAlgorithm::P256).unwrap();
    let ca = reserved_ca(&pki);
    type Check = fn(&Error) -> bool;
    let not_allowed: Check = |e| matches!(e, Error::NameNotAllowed { .. });
    let reserved: Check = |e| matches!(e, Error::NameReserved { .. });
    let rows: Vec<(&str, &str, &str, Vec<&str>, Check)> = vec![
        // The CN is a name like the others.
        (
            "CN outside the DNS policy",
            "svc",
            "payments.bank.example",
            vec![],
            not_allowed,
        ),
        (
            "CN outside the policy beside an allowed SAN",
            "svc",
            "payments.bank.example",
            vec!["dns:a.svc.example.com"],
            not_allowed,
        ),
        (
            "CN that is no name",
            "svc",
            "Payments Service",
            vec![],
            not_allowed,
        ),
        (
            "CN label in a server profile",
            "web",
            "payments",
            vec!["dns:a.svc.example.com"],
            not_allowed,
        ),
        (
            "CN label outside common_name_patterns",
            "labels",
            "bob.evil.example",
            vec!["dns:a.svc.example.com"],
            not_allowed,
        ),
        // URIs on the parsed URI.
        (
            "URI: other authority",
            "svc",
            "",
            vec!["uri:spiffe://example.com.evil/ns/a"],
            not_allowed,
        ),
        (
            "URI: userinfo",
            "svc",
            "",
            vec!["uri:spiffe://example.com@evil.test/ns"],
            not_allowed,
        ),
        (
            "URI: segment prefix",
            "svc",
            "",
            vec!["uri:spiffe://example.com/nsevil"],
            not_allowed,
        ),
        (
            "URI: dot segment",
            "svc",
            "",
            vec!["uri:spiffe://example.com/ns/../admin"],
            not_allowed,
        ),
        (
            "URI: encoded slash",
            "svc",
            "",
            vec!["uri:spiffe://example.com/ns%2F..%2Fadmin"],
            not_allowed,
        ),
        (
            "URI: query",
            "svc",
            "",
            vec!["uri:spiffe://example.com/ns?admin"],
            not_allowed,
        ),
        // Reserved names: exact, case, trailing dot, wildcard, URI host, CN, URL host.
        (
            "reserved DNS",
            "svc",
            "",
            vec!["dns:ca.svc.example.com"],
            reserved,
        ),
        (
            "reserved DNS, other case",
            "svc",
            "",
            vec!["dns:CA.SVC.example.com"],
            reserved,
        ),
        ("reserved IP", "client", "", vec!["ip:10.255.0.1"], reserved),
        (
            "reserved as CN",
            "svc",
            "ca.svc.example.com",
            vec![],
            reserved,
        ),
        (
            "reserved as CN beside a SAN",
            "svc",
            "ca.svc.example.com",
            vec!["dns:a.svc.example.com"],
            reserved,
        ),
        (
            "reserved URL host",
            "svc",
            "",
            vec!["dns:status.svc.example.com"],
            reserved,
        ),
    ];
    for (what, profile, cn, sans, check) in &rows {
        let err = try_csr(cn, sans)
            .and_then(|req| ca.prepare(&req, admin(profile, None)).map(|_| ()))
            .expect_err(what);
        assert!(check(&err), "{what}: {err:?}");
        let parsed: Result<Vec<San>, _> = sans.iter().map(|s| s.parse()).collect();
        let err = parsed
            .and_then(|p| ca.check_identity(profile, (!cn.is_empty()).then_some(*cn), &p))
            .expect_err(what);
        assert!(check(&err), "check_identity, {what}: {err:?}");
    }
    // Wildcards and `*` are refused as names whatever the profile allows (client: `.test`;
    // the dev profiles allow "*").
    for name in ["dns:*", "*", "dns:*.test", "uri:spiffe://test/*"] {
        assert!(name.parse::<San>().is_err(), "{name}");
    }
    // A wildcard (built past the parser) that would cover a reserved name is refused too.
    assert!(matches!(
        ca.reserved_names()
            .check(&San::Dns("*.svc.example.com".into())),
        Err(Error::NameReserved { .. })
    ));
    // A token binding for a reserved name is refused the same way at issuance.
    let binding = IdentityBinding {
        common_name: None,
        sans: vec!["ip:10.255.0.1".into()],
    };
    assert!(matches!(
        ca.prepare(&csr_for("", &[]), admin("client", Some(&binding))),
        Err(Error::NameReserved { .. })
    ));
    assert_eq!(count(&pki), 0, "a refused request left a record");
    // Loopback names are every host's: listed in the TLS names, still not reserved.
    for lo in ["ip:127.0.0.1", "dns:localhost"] {
        let lo_binding = IdentityBinding {
            common_name: None,
            sans: vec![lo.into()],
        };
        assert!(
            ca.prepare(&csr_for("", &[]), admin("client", Some(&lo_binding)))
                .is_ok(),
            "{lo}"
        );
    }
}

/// What the CN rule allows, and what the certificate then carries.
#[test]
fn common_name_is_one_of_the_names() {
    let pki = TestPki::new(KeyAlgorithm::P256).unwrap();
    let ca = reserved_ca(&pki);
    let issue = |profile: &str, cn: &str, sans: &[&str]| {
        ca.prepare(&csr_for(cn, sans), admin(profile, None))
            .unwrap()
            .issue()
            .unwrap()
            .record
    };
    // CN-only: the CN becomes a dNSName SAN (BR 7.1.4.3 for server certificates).
    let r = issue("web", "api.svc.example.com", &[]);
    assert_eq!(r.sans, vec!["dns:api.svc.example.com"]);
    assert_eq!(r.subject, "CN=api.svc.example.com");
    // CN among the SANs: nothing added.
    let r = issue("web", "API.svc.example.com", &["dns:api.svc.example.com"]);
    assert_eq!(r.sans, vec!["dns:api.svc.example.com"]);
    // CN beside other SANs: added.
    let r = issue(
        "svc",
        "b.svc.example.com",
        &["uri:spiffe://example.com/ns/b"],
    );
    assert_eq!(
        r.sans,
        vec!["uri:spiffe://example.com/ns/b", "dns:b.svc.example.com"]
    );
    // An IP address CN becomes an iPAddress SAN.
    let r = issue("server", "127.0.0.9", &[]);
    assert_eq!(r.sans, vec!["ip:127.0.0.9"]);
    // A client profile's label CN, allowed by common_name_patterns, stays a CN only.
    let r = issue(
        "labels",
        "bob.users.example.com",
        &["dns:b.svc.example.com"],
    );
    assert_eq!(r.sans, vec!["dns:b.svc.example.com"]);
    assert_eq!(r.subject, "CN=bob.users.example.com");
    // URIs that match on segment boundaries.
    issue("svc", "", &["uri:spiffe://example.com/ns"]);
    issue("svc", "", &["uri:spiffe://example.com/ns/prod/sa/web"]);
}

/// Only the CA server's own profile writes the caServerIdentity mark, may name the reserved
/// names, and no CSR can ask for the mark.
#[test]
fn only_the_server_profile_carries_the_mark() {
    let pki = TestPki::new(KeyAlgorithm::P256).unwrap();
    let ca = reserved_ca(&pki);
    let binding = IdentityBinding {
        common_name: None,
        sans: vec!["dns:ca.svc.example.com".into(), "ip:127.0.0.1".into()],
    };
    let server = ca
        .prepare(&csr_for("", &[]), admin(SERVER_TLS, Some(&binding)))
        .unwrap()
        .issue()
        .unwrap();
    assert!(has_ca_server_identity(&server.record.der));
    // openssl reads it: serverAuth, and the mark as a URI SAN.
    let work = tempfile::tempdir().unwrap();
    let pem = work.path().join("server.pem");
    std::fs::write(&pem, server.cert_pem()).unwrap();
    let out = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-ext",
            "extendedKeyUsage,subjectAltName",
            "-in",
        ])
        .arg(&pem)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("TLS Web Server Authentication")
            && text.contains(&format!(
                "URI:{}",
                ca_core::ca_identity::CA_SERVER_IDENTITY_URI
            )),
        "{text}"
    );
    // webpki accepts it as a server certificate for its names.
    let der = rustls::pki_types::CertificateDer::from(server.record.der.as_slice());
    let ee = webpki::EndEntityCert::try_from(&der).unwrap();
    ee.verify_is_valid_for_subject_name(
        &rustls::pki_types::ServerName::try_from("ca.svc.example.com").unwrap(),
    )
    .unwrap();

    // A subscriber's server certificate never carries it.
    let sub = ca
        .prepare(&csr_for("", &["dns:a.svc.example.com"]), admin("web", None))
        .unwrap()
        .issue()
        .unwrap();
    assert!(!has_ca_server_identity(&sub.record.der));

    // A CSR or a binding that asks for the mark is refused under every other profile (a
    // reserved name), and the server's own profile writes it once.
    let mark = format!("uri:{}", ca_core::ca_identity::CA_SERVER_IDENTITY_URI);
    let asks = IdentityBinding {
        common_name: None,
        sans: vec!["dns:a.svc.example.com".into(), mark.clone()],
    };
    assert!(matches!(
        ca.prepare(
            &csr_for("", &["dns:a.svc.example.com", &mark]),
            admin("web", None)
        ),
        Err(Error::NameReserved { .. })
    ));
    assert!(matches!(
        ca.prepare(&csr_for("", &[]), admin("web", Some(&asks))),
        Err(Error::NameReserved { .. })
    ));
    let again = ca
        .prepare(&csr_for("", &[]), admin(SERVER_TLS, Some(&binding)))
        .unwrap()
        .issue()
        .unwrap();
    assert_eq!(
        again.record.sans.iter().filter(|s| **s == mark).count(),
        1,
        "{:?}",
        again.record.sans
    );
}

// ---------------------------------------------------------------------------------------------
// Canonical public keys.

/// A CSR for `key` whose SubjectPublicKeyInfo is `spki` (any encoding), signed by `key`.
fn csr_with_spki(spki_der: &[u8], key: &rcgen::KeyPair, cn: &str) -> Vec<u8> {
    use std::str::FromStr;
    use x509_cert::request::{CertReq, CertReqInfo, Version};
    let info = CertReqInfo {
        version: Version::V1,
        subject: x509_cert::name::Name::from_str(&format!("CN={cn}")).unwrap(),
        public_key: spki::SubjectPublicKeyInfoOwned::from_der(spki_der).unwrap(),
        attributes: Default::default(),
    };
    let tbs = info.to_der().unwrap();
    let sig = rcgen::SigningKey::sign(key, &tbs).unwrap();
    let algorithm = if key.algorithm() == &rcgen::PKCS_RSA_SHA256 {
        spki::AlgorithmIdentifierOwned {
            oid: const_oid::db::rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
            parameters: Some(der::asn1::Null.into()),
        }
    } else {
        spki::AlgorithmIdentifierOwned {
            oid: const_oid::db::rfc5912::ECDSA_WITH_SHA_256,
            parameters: None,
        }
    };
    CertReq {
        info,
        algorithm,
        signature: der::asn1::BitString::from_bytes(&sig).unwrap(),
    }
    .to_der()
    .unwrap()
}

fn openssl_rsa_key(dir: &Path) -> rcgen::KeyPair {
    let path = dir.join("rsa.key");
    let st = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&path)
        .status()
        .unwrap();
    assert!(st.success());
    rcgen::KeyPair::from_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The key in a certificate is re-encoded from the parsed key, never copied from the CSR, and
/// key reuse is recognised whatever the CSR's encoding.
#[test]
fn public_keys_are_reencoded_canonically() {
    let pki = TestPki::new(KeyAlgorithm::P256).unwrap();
    let ca = reserved_ca(&pki);
    let work = tempfile::tempdir().unwrap();
    let rsa = openssl_rsa_key(work.path());
    let canonical = rsa.subject_public_key_info();
    let mut spki = spki::SubjectPublicKeyInfoOwned::from_der(&canonical).unwrap();
    assert!(spki.algorithm.parameters.is_some(), "RSA SPKI has NULL");
    // RSA with the NULL parameters left out (RFC 3279 2.3.1 says NULL).
    spki.algorithm.parameters = None;
    let absent = spki.to_der().unwrap();
    assert_ne!(absent, canonical);
    let der = csr_with_spki(&absent, &rsa, "a.svc.example.com");
    let req = csr::parse_der(&der).unwrap();
    assert_eq!(req.public_key.spki_der(), canonical.as_slice());
    let first = ca
        .prepare(&req, admin("svc", None))
        .unwrap()
        .issue()
        .unwrap()
        .record;
    let (_, cert) = x509_parser::parse_x509_certificate(&first.der).unwrap();
    assert_eq!(cert.tbs_certificate.subject_pki.raw, canonical.as_slice());
    assert_eq!(first.spki_sha256, ca_core::signer::sha256_hex(&canonical));
    // Renewal with the same key in the canonical encoding: key reuse is seen.
    let again = csr::parse_der(&csr_with_spki(&canonical, &rsa, "a.svc.example.com")).unwrap();
    assert!(matches!(
        ca.prepare(&again, IssueContext::Renewal { previous: &first }),
        Err(Error::KeyReuse)
    ));

    // EC: explicit curve parameters, a compressed point; Ed25519 with parameters; RSA with
    // parameters other than NULL. All refused as keys, before anything else.
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ec_spki = spki::SubjectPublicKeyInfoOwned::from_der(&ec.subject_public_key_info()).unwrap();
    let mut explicit = ec_spki.clone();
    explicit.algorithm.parameters =
        Some(der::Any::from_der(&[0x30, 0x03, 0x02, 0x01, 0x01]).unwrap());
    let mut compressed = ec_spki.clone();
    let point = ec_spki.subject_public_key.raw_bytes();
    let mut c = vec![2 + (point[64] & 1)];
    c.extend_from_slice(&point[1..33]);
    compressed.subject_public_key = der::asn1::BitString::from_bytes(&c).unwrap();
    let mut rsa_params = spki::SubjectPublicKeyInfoOwned::from_der(&canonical).unwrap();
    rsa_params.algorithm.parameters = Some(der::Any::from_der(&[0x04, 0x00]).unwrap());
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut ed_params =
        spki::SubjectPublicKeyInfoOwned::from_der(&ed.subject_public_key_info()).unwrap();
    ed_params.algorithm.parameters = Some(der::asn1::Null.into());
    for (what, der) in [
        (
            "explicit EC parameters",
            csr_with_spki(&explicit.to_der().unwrap(), &ec, "x"),
        ),
        (
            "compressed EC point",
            csr_with_spki(&compressed.to_der().unwrap(), &ec, "x"),
        ),
        (
            "RSA parameters not NULL",
            csr_with_spki(&rsa_params.to_der().unwrap(), &rsa, "x"),
        ),
    ] {
        assert!(
            matches!(csr::parse_der(&der), Err(Error::WeakKey(_))),
            "{what}: {:?}",
            csr::parse_der(&der).map(|_| ())
        );
    }
    assert!(matches!(
        ca_core::signer::PublicKey::from_spki(&ed_params.to_der().unwrap()),
        Err(Error::WeakKey(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// CSR extensions from common tools.

fn openssl_csr(dir: &Path, name: &str, addext: &[&str]) -> Vec<u8> {
    let csr = dir.join(format!("{name}.csr"));
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt"])
        .args([
            "ec_paramgen_curve:P-256",
            "-keyout",
            "/dev/null",
            "-outform",
            "DER",
        ])
        .args(["-subj", "/CN=a.svc.example.com", "-out"])
        .arg(&csr);
    for e in addext {
        cmd.args(["-addext", e]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(csr).unwrap()
}

/// Harmless extension requests are ignored; those that would change the certificate's
/// meaning are refused with the extension named.
#[test]
fn csr_extension_requests_are_ignored_or_refused_by_meaning() {
    let pki = TestPki::new(KeyAlgorithm::P256).unwrap();
    let ca = reserved_ca(&pki);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    for (what, ext) in [
        ("subjectKeyIdentifier", vec!["subjectKeyIdentifier=hash"]),
        (
            "basicConstraints CA:FALSE",
            vec!["basicConstraints=critical,CA:FALSE"],
        ),
        ("Netscape comment", vec!["nsComment=made by a tool"]),
        (
            "keyUsage within the profile",
            vec!["keyUsage=critical,digitalSignature"],
        ),
        ("clientAuth EKU", vec!["extendedKeyUsage=clientAuth"]),
        (
            "all of them",
            vec![
                "subjectKeyIdentifier=hash",
                "basicConstraints=CA:FALSE",
                "keyUsage=digitalSignature",
                "extendedKeyUsage=clientAuth",
                "subjectAltName=DNS:a.svc.example.com",
            ],
        ),
    ] {
        let req = csr::parse_der(&openssl_csr(w, "ok", &ext)).unwrap();
        let issued = ca
            .prepare(&req, admin("svc", None))
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .issue()
            .unwrap();
        // The SKI is the CA's own (RFC 7093 method 1), not the CSR's.
        let (_, cert) = x509_parser::parse_x509_certificate(&issued.record.der).unwrap();
        let ski = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "2.5.29.14")
            .unwrap();
        assert!(ski.value.ends_with(
            &ca_core::x509::key_identifier(cert.tbs_certificate.subject_pki.raw).unwrap()
        ));
    }
    for (what, ext, oid) in [
        ("CA:TRUE", "basicConstraints=critical,CA:TRUE", "2.5.29.19"),
        (
            "nameConstraints",
            "nameConstraints=permitted;DNS:.svc.example.com",
            "2.5.29.30",
        ),
        (
            "certificatePolicies",
            "certificatePolicies=1.2.3.4",
            "2.5.29.32",
        ),
        (
            "must-staple",
            "tlsfeature=status_request",
            "1.3.6.1.5.5.7.1.24",
        ),
        (
            "keyUsage keyCertSign",
            "keyUsage=digitalSignature,keyCertSign",
            "2.5.29.15",
        ),
        (
            "keyUsage nonRepudiation",
            "keyUsage=nonRepudiation",
            "2.5.29.15",
        ),
        (
            "serverAuth in a client profile",
            "extendedKeyUsage=serverAuth",
            "2.5.29.37",
        ),
        (
            "anyExtendedKeyUsage",
            "extendedKeyUsage=anyExtendedKeyUsage",
            "2.5.29.37",
        ),
        (
            "Netscape cert type",
            "nsCertType=objsign",
            "2.16.840.1.113730.1.1",
        ),
        ("unknown", "1.2.3.4=ASN1:UTF8String:x", "1.2.3.4"),
    ] {
        let req = csr::parse_der(&openssl_csr(w, "bad", &[ext])).unwrap();
        match ca.prepare(&req, admin("svc", None)) {
            Err(Error::ExtensionNotAllowed { oid: o, .. }) => {
                assert!(o.starts_with(oid), "{what}: {o}")
            }
            other => panic!("{what}: {:?}", other.map(|_| ())),
        }
    }
    // Twice the same extension (RFC 5280 4.2): malformed.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.custom_extensions = vec![
        rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 14], vec![0x04, 0x01, 0x01]),
        rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 14], vec![0x04, 0x01, 0x02]),
    ];
    assert!(matches!(
        csr::parse_der(params.serialize_request(&key).unwrap().der()),
        Err(Error::MalformedCsr(_))
    ));
    assert_eq!(count(&pki), 6);
}
