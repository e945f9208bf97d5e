//! Independent linting of what ca-core issues: DigiCert's pkilint (PyPI `pkilint`, RFC 5280)
//! over freshly issued leaf certificates, for every CA key algorithm the CA offers in practice
//! (P-256, P-384, RSA 2048, Ed25519), the `client`, `server` and `mtls` profiles, every SAN
//! type, with and without a commonName, with and without AIA/CRL distribution point URLs, and
//! every subject key type; one leaf per profile is also linted against its issuer
//! (`lint_pkix_signer_signee_cert_chain`), and so are the test PKI's root and issuing CA.
//! CRLs (`ca_core::crl`) and OCSP responses (`ca_core::ocsp`) are linted the same way.
//!
//! Any finding of severity WARNING or above fails the test, with pkilint's report. pkilint is
//! not a Rust crate: `scripts/deps.sh test` installs it (into `.venv-lint`); without it these
//! tests fail and say how to install it. `LINT_OUT=DIR` keeps the artifacts in `DIR`.

use ca_core::csr;
use ca_core::issuance::{IssueContext, IssuerUrls};
use ca_core::signer::KeyAlgorithm;
use ca_core::x509::pem_encode;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use testkit::pki::{test_profiles, TestPki};
use testkit::pkilint::{self, Check};

/// Where the artifacts go: `$LINT_OUT/<name>` when set (kept), else a temporary directory.
struct Out {
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Out {
    fn new(name: &str) -> Out {
        match std::env::var_os("LINT_OUT") {
            Some(base) => {
                let dir = PathBuf::from(base).join(name);
                std::fs::create_dir_all(&dir).unwrap();
                Out { dir, _tmp: None }
            }
            None => {
                let tmp = tempfile::tempdir().unwrap();
                Out {
                    dir: tmp.path().to_path_buf(),
                    _tmp: Some(tmp),
                }
            }
        }
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

/// Subject key types for leaf certificates.
#[derive(Clone, Copy, Debug)]
enum SubjectKey {
    P256,
    P384,
    Rsa2048,
    Ed25519,
}

const SUBJECT_KEYS: [SubjectKey; 4] = [
    SubjectKey::P256,
    SubjectKey::P384,
    SubjectKey::Rsa2048,
    SubjectKey::Ed25519,
];

/// A software key for a CSR, made by the openssl CLI (rcgen cannot generate RSA keys).
fn subject_key(dir: &Path, name: &str, kind: SubjectKey) -> rcgen::KeyPair {
    let path = dir.join(format!("{name}.key"));
    let spec: &[&str] = match kind {
        SubjectKey::P256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        SubjectKey::P384 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        SubjectKey::Rsa2048 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        SubjectKey::Ed25519 => &["-algorithm", "ED25519"],
    };
    let out = Command::new("openssl")
        .arg("genpkey")
        .args(spec)
        .arg("-out")
        .arg(&path)
        .output()
        .expect("the openssl CLI must be installed (scripts/deps.sh test)");
    assert!(
        out.status.success(),
        "openssl genpkey: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    rcgen::KeyPair::from_pem(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// A CSR (DER) with an optional commonName and the given SANs (`dns:`, `uri:`, `email:`, `ip:`).
fn make_csr(key: &rcgen::KeyPair, cn: Option<&str>, sans: &[&str]) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cn) = cn {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
    }
    params.subject_alt_names = sans
        .iter()
        .map(|s| {
            let (kind, v) = s.split_once(':').unwrap();
            let ia5 = || rcgen::string::Ia5String::try_from(v.to_string()).unwrap();
            match kind {
                "dns" => rcgen::SanType::DnsName(ia5()),
                "uri" => rcgen::SanType::URI(ia5()),
                "email" => rcgen::SanType::Rfc822Name(ia5()),
                "ip" => rcgen::SanType::IpAddress(v.parse().unwrap()),
                _ => panic!("bad SAN {s}"),
            }
        })
        .collect();
    params.serialize_request(key).unwrap().der().to_vec()
}

/// One leaf to issue: a name for reports, the profile, the commonName and the SANs.
struct Leaf {
    name: &'static str,
    profile: &'static str,
    cn: Option<&'static str>,
    sans: &'static [&'static str],
}

const ALL_SANS: &[&str] = &[
    "dns:svc1.test",
    "dns:localhost",
    "uri:spiffe://test/ns/prod/sa/svc1",
    "email:svc1@example.test",
    "ip:127.0.0.1",
    "ip:::1",
];

/// Every profile with a commonName and every SAN type; then certificates without a
/// commonName (one SAN type each, so the SAN extension is the only name: RFC 5280 4.2.1.6
/// requires it critical), and one with a commonName and no SAN.
const LEAVES: &[Leaf] = &[
    Leaf {
        name: "client-cn-all-sans",
        profile: "client",
        cn: Some("svc1.test"),
        sans: ALL_SANS,
    },
    Leaf {
        name: "server-cn-all-sans",
        profile: "server",
        cn: Some("svc1.test"),
        sans: ALL_SANS,
    },
    Leaf {
        name: "mtls-cn-all-sans",
        profile: "mtls",
        cn: Some("svc1.test"),
        sans: ALL_SANS,
    },
    Leaf {
        name: "server-no-cn-dns",
        profile: "server",
        cn: None,
        sans: &["dns:svc2.test"],
    },
    Leaf {
        name: "client-no-cn-uri",
        profile: "client",
        cn: None,
        sans: &["uri:spiffe://test/ns/prod/sa/svc2"],
    },
    Leaf {
        name: "client-no-cn-email",
        profile: "client",
        cn: None,
        sans: &["email:svc2@example.test"],
    },
    Leaf {
        name: "mtls-no-cn-ip",
        profile: "mtls",
        cn: None,
        sans: &["ip:127.0.0.2", "ip:::1"],
    },
    Leaf {
        name: "client-cn-only",
        profile: "client",
        cn: Some("svc3.test"),
        sans: &[],
    },
];

/// The CA server's own TLS certificate (`_server-tls` as ca-server adds it: serverAuth and the
/// caServerIdentity mark, a URI SAN) has no pkilint finding. (An earlier mark, an extended key
/// usage with a UUID OID, had one: pkilint, like Go's crypto/x509, cannot read a 128-bit arc.)
#[test]
fn the_ca_server_certificate_has_no_pkilint_finding() {
    let out = Out::new("ca-server-tls");
    let mut profiles = test_profiles();
    profiles.0.insert(
        "_server-tls".into(),
        ca_core::profile::Profile::ca_server_tls(ca_core::profile::NamePolicy {
            dns: vec!["*".into()],
            ip: vec!["0.0.0.0/0".into(), "::/0".into()],
            common_name: true,
            max_sans: 20,
            ..Default::default()
        }),
    );
    let pki = TestPki::with(
        KeyAlgorithm::P256,
        profiles,
        urls(),
        Arc::new(ca_core::clock::SystemClock),
    )
    .unwrap();
    let key = subject_key(&out.dir, "ca-server-tls", SUBJECT_KEYS[0]);
    let req = csr::parse_der(&make_csr(&key, None, &["dns:ca.test", "ip:127.0.0.1"])).unwrap();
    let issued = pki
        .ca
        .prepare(
            &req,
            IssueContext::Admin {
                profile: "_server-tls",
                actor: "lint",
                binding: None,
            },
        )
        .unwrap()
        .issue()
        .unwrap();
    assert!(ca_core::ca_identity::has_ca_server_identity(
        &issued.record.der
    ));
    let path = out.write("ca-server-tls.pem", issued.cert_pem().as_bytes());
    let reports = pkilint::run(&[Check::certificate("ca-server-tls", &path)])
        .unwrap_or_else(|e| panic!("{e}"));
    if let Some(findings) = pkilint::failures(&reports, pkilint::FALSE_POSITIVES) {
        panic!("{findings}");
    }
}

fn urls() -> IssuerUrls {
    IssuerUrls {
        ocsp: Some("http://127.0.0.1:8080/ocsp".into()),
        ca_issuers: Some("http://127.0.0.1:8080/ca.crt".into()),
        crl: Some("http://127.0.0.1:8080/crl".into()),
    }
}

/// Issue `leaves` from a fresh test PKI of `alg` with `urls`, and return the lint checks for
/// them, the PKI's own certificates and every issuer/subject pair.
fn issue_and_check(
    out: &Out,
    alg: KeyAlgorithm,
    urls: IssuerUrls,
    leaves: &[Leaf],
) -> (TestPki, Vec<Check>) {
    let pki = TestPki::with(
        alg,
        test_profiles(),
        urls,
        Arc::new(ca_core::clock::SystemClock),
    )
    .unwrap();
    let root = out.write(
        "root.pem",
        pem_encode("CERTIFICATE", &pki.root_der).as_bytes(),
    );
    let issuing = out.write(
        "issuing.pem",
        pem_encode("CERTIFICATE", &pki.issuing_der).as_bytes(),
    );
    let mut checks = vec![
        Check::certificate(format!("{alg} test root"), &root),
        Check::certificate(format!("{alg} test issuing CA"), &issuing),
        Check::issued_by(format!("{alg} root -> issuing CA"), &root, &issuing),
    ];
    for (i, leaf) in leaves.iter().enumerate() {
        let kind = SUBJECT_KEYS[i % SUBJECT_KEYS.len()];
        let key = subject_key(&out.dir, leaf.name, kind);
        let req = csr::parse_der(&make_csr(&key, leaf.cn, leaf.sans)).unwrap();
        let issued = pki
            .ca
            .prepare(
                &req,
                IssueContext::Admin {
                    profile: leaf.profile,
                    actor: "lint",
                    binding: None,
                },
            )
            .unwrap_or_else(|e| panic!("{alg} {}: {e}", leaf.name))
            .issue()
            .unwrap();
        let path = out.write(&format!("{}.pem", leaf.name), issued.cert_pem().as_bytes());
        let what = format!("{alg} CA, {} ({kind:?} key)", leaf.name);
        checks.push(Check::certificate(what.clone(), &path));
        // Issuer name, key identifiers and signature algorithm do not vary with the names or
        // the subject key: one issuer/subject check per profile is enough.
        if i < 3 {
            checks.push(Check::issued_by(
                format!("{what} by issuing CA"),
                &issuing,
                &path,
            ));
        }
    }
    (pki, checks)
}

fn lint_leaves(alg: KeyAlgorithm) {
    let out = Out::new(&format!("leaves-{alg}"));
    let (pki, checks) = issue_and_check(&out, alg, urls(), LEAVES);
    let reports = pkilint::run(&checks).unwrap_or_else(|e| panic!("{e}"));
    if let Some(findings) = pkilint::failures(&reports, pkilint::FALSE_POSITIVES) {
        panic!("{findings}");
    }
    // openssl agrees that the strict chain verifies (RFC 5280 path validation, -x509_strict).
    for leaf in LEAVES {
        let path = out.dir.join(format!("{}.pem", leaf.name));
        let o = Command::new("openssl")
            .args(["verify", "-x509_strict", "-CAfile"])
            .arg(pki.root_pem_path())
            .arg("-untrusted")
            .arg(pki.issuing_pem_path())
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{alg} {}: openssl verify -x509_strict: {}{}",
            leaf.name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn p256_ca_leaf_certificates_have_no_pkilint_findings() {
    lint_leaves(KeyAlgorithm::P256);
}

#[test]
fn p384_ca_leaf_certificates_have_no_pkilint_findings() {
    lint_leaves(KeyAlgorithm::P384);
}

#[test]
fn rsa2048_ca_leaf_certificates_have_no_pkilint_findings() {
    lint_leaves(KeyAlgorithm::Rsa2048);
}

#[test]
fn ed25519_ca_leaf_certificates_have_no_pkilint_findings() {
    lint_leaves(KeyAlgorithm::Ed25519);
}

/// Without OCSP, caIssuers and CRL URLs the certificate carries neither AIA nor CRL DP.
#[test]
fn leaf_certificates_without_urls_have_no_pkilint_findings() {
    let out = Out::new("leaves-no-urls");
    let (_pki, checks) = issue_and_check(
        &out,
        KeyAlgorithm::P256,
        IssuerUrls::default(),
        &LEAVES[..4],
    );
    let reports = pkilint::run(&checks).unwrap_or_else(|e| panic!("{e}"));
    if let Some(findings) = pkilint::failures(&reports, pkilint::FALSE_POSITIVES) {
        panic!("{findings}");
    }
}

/// A profile that asks for every key usage bit gives each subject key type only the bits it
/// can use (RFC 3279 2.3.1, RFC 5480 3, RFC 8410 5), and the result lints clean.
#[test]
fn key_usage_follows_the_subject_key_type() {
    use ca_core::profile::KeyUsage;
    let out = Out::new("key-usage");
    let mut profiles = test_profiles();
    let mut all = profiles.get("mtls").unwrap().clone();
    all.key_usage = vec![
        KeyUsage::DigitalSignature,
        KeyUsage::KeyEncipherment,
        KeyUsage::KeyAgreement,
    ];
    profiles.0.insert("all-usages".into(), all);
    let pki = TestPki::with(
        KeyAlgorithm::P256,
        profiles,
        urls(),
        Arc::new(ca_core::clock::SystemClock),
    )
    .unwrap();
    let mut checks = Vec::new();
    for kind in SUBJECT_KEYS {
        let name = format!("all-usages-{kind:?}").to_lowercase();
        let key = subject_key(&out.dir, &name, kind);
        let req = csr::parse_der(&make_csr(&key, None, &["dns:ku.test"])).unwrap();
        let issued = pki
            .ca
            .prepare(
                &req,
                IssueContext::Admin {
                    profile: "all-usages",
                    actor: "lint",
                    binding: None,
                },
            )
            .unwrap()
            .issue()
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&issued.record.der).unwrap();
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical, "RFC 5280 4.2.1.3: keyUsage SHOULD be critical");
        let bits = (
            ku.value.digital_signature(),
            ku.value.key_encipherment(),
            ku.value.key_agreement(),
        );
        let expected = match kind {
            SubjectKey::P256 | SubjectKey::P384 => (true, false, true),
            SubjectKey::Rsa2048 => (true, true, false),
            SubjectKey::Ed25519 => (true, false, false),
        };
        assert_eq!(
            bits, expected,
            "{kind:?}: (digitalSignature, keyEncipherment, keyAgreement)"
        );
        let path = out.write(&format!("{name}.pem"), issued.cert_pem().as_bytes());
        checks.push(Check::certificate(
            format!("{kind:?} key, all-usages profile"),
            &path,
        ));
    }
    let reports = pkilint::run(&checks).unwrap_or_else(|e| panic!("{e}"));
    if let Some(findings) = pkilint::failures(&reports, pkilint::FALSE_POSITIVES) {
        panic!("{findings}");
    }
}

/// A one-day self-signed P-256 certificate made by `openssl req -x509` with `extra` arguments,
/// written to `<name>.pem` in `out` (its key beside it).
fn openssl_self_signed(out: &Out, name: &str, subject: &str, extra: &[&str]) -> PathBuf {
    let key = out.dir.join(format!("{name}.key"));
    let cert = out.dir.join(format!("{name}.pem"));
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            subject,
            "-days",
            "1",
        ])
        .args(extra)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    cert
}

/// The linter itself is there and does find things: a certificate with a known RFC 5280
/// violation (a CA certificate without keyUsage, 4.2.1.3) is reported, so a clean result above
/// means pkilint looked.
#[test]
fn pkilint_is_installed_and_reports_violations() {
    let out = Out::new("linter-self-check");
    let cert = openssl_self_signed(
        &out,
        "bad",
        "/CN=no key usage",
        &["-addext", "basicConstraints=critical,CA:TRUE"],
    );
    let reports = pkilint::run(&[Check::certificate("CA without keyUsage", &cert)])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!reports[0].clean(), "{}", reports[0].output);
    assert!(
        reports[0]
            .unexpected(pkilint::FALSE_POSITIVES)
            .iter()
            .any(|f| f.code == "pkix.ca_certificate_no_ku_extension" && f.severity == "ERROR"),
        "{}",
        reports[0].output
    );
}

/// Issue a plain mTLS leaf for the revocation tests; returns the record and its PEM path.
fn leaf_for_revocation(
    pki: &TestPki,
    out: &Out,
    name: &str,
) -> (ca_core::store::CertRecord, PathBuf) {
    let key = subject_key(&out.dir, name, SubjectKey::P256);
    let cn = format!("{name}.test");
    let req = csr::parse_der(&make_csr(&key, Some(&cn), &[])).unwrap();
    let issued = pki
        .ca
        .prepare(
            &req,
            IssueContext::Admin {
                profile: "mtls",
                actor: "lint",
                binding: None,
            },
        )
        .unwrap()
        .issue()
        .unwrap();
    let path = out.write(&format!("{name}.pem"), issued.cert_pem().as_bytes());
    (issued.record, path)
}

/// CRLs from `ca_core::crl` (empty; with a keyCompromise and an unspecified entry; with an
/// issuing distribution point) for every CA algorithm, linted as complete RFC 5280 CRLs.
#[test]
fn crls_have_no_pkilint_findings() {
    use ca_core::crl::{build_crl, build_crl_with};
    use ca_core::revocation::RevocationReason;
    use ca_core::store::prelude::*;
    let mut checks = Vec::new();
    let mut keep = Vec::new();
    for alg in [
        KeyAlgorithm::P256,
        KeyAlgorithm::P384,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Ed25519,
    ] {
        let out = Out::new(&format!("crl-{alg}"));
        let pki = TestPki::with(
            alg,
            test_profiles(),
            urls(),
            Arc::new(ca_core::clock::SystemClock),
        )
        .unwrap();
        let now = chrono::Utc::now();
        let empty = build_crl(
            pki.store.as_ref(),
            pki.issuing_signer.as_ref(),
            &pki.issuing_der,
            now,
            now + chrono::Duration::hours(24),
        )
        .unwrap();
        let (a, _) = leaf_for_revocation(&pki, &out, "compromised");
        let (b, _) = leaf_for_revocation(&pki, &out, "unspecified");
        let at = ca_core::clock::truncate(now - chrono::Duration::minutes(1));
        pki.store
            .revoke(&a.serial, at, RevocationReason::KeyCompromise)
            .unwrap();
        pki.store
            .revoke(&b.serial, at, RevocationReason::Unspecified)
            .unwrap();
        let full = build_crl(
            pki.store.as_ref(),
            pki.issuing_signer.as_ref(),
            &pki.issuing_der,
            now,
            now + chrono::Duration::hours(24),
        )
        .unwrap();
        let idp = build_crl_with(
            pki.store.as_ref(),
            pki.issuing_signer.as_ref(),
            &pki.issuing_der,
            now,
            now + chrono::Duration::hours(24),
            Some("http://127.0.0.1:8080/crl"),
        )
        .unwrap();
        // Beside the CRLs, so that pyca/cryptography also verifies their signatures.
        out.write(
            "issuing.pem",
            pem_encode("CERTIFICATE", &pki.issuing_der).as_bytes(),
        );
        for (name, crl) in [("empty", &empty), ("revoked", &full), ("idp", &idp)] {
            let path = out.write(&format!("{name}.crl"), &crl.der);
            checks.push(Check::crl(format!("{alg} CA, {name} CRL"), &path));
        }
        keep.push((pki, out));
    }
    let reports = pkilint::run(&checks).unwrap_or_else(|e| panic!("{e}"));
    if let Some(findings) = pkilint::failures(&reports, pkilint::FALSE_POSITIVES) {
        panic!("{findings}");
    }
}

/// OCSP responses from `ca_core::ocsp`: good, revoked with a reason, revoked (unspecified) and
/// unknown, signed by the CA key and by a delegated responder (whose certificate is linted
/// too), with and without a nonce, and the responder's pre-signed answer to an openssl request.
#[test]
fn ocsp_responses_have_no_pkilint_findings() {
    use ca_core::ocsp::{sign_response, Lookup, Responder, ResponderConfig, ResponderKey};
    use ca_core::revocation::{CertStatus, RevocationReason};
    let mut checks = Vec::new();
    let mut keep = Vec::new();
    for alg in [
        KeyAlgorithm::P256,
        KeyAlgorithm::P384,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Ed25519,
    ] {
        let out = Out::new(&format!("ocsp-{alg}"));
        let pki = TestPki::with(
            alg,
            test_profiles(),
            urls(),
            Arc::new(ca_core::clock::SystemClock),
        )
        .unwrap();
        let (good, good_pem) = leaf_for_revocation(&pki, &out, "good");
        let (rsigner, rcert) = pki.ocsp_responder("ocsp", alg).unwrap();
        let rcert_path = out.write(
            "ocsp-responder.pem",
            pem_encode("CERTIFICATE", &rcert).as_bytes(),
        );
        let issuing = out.write(
            "issuing.pem",
            pem_encode("CERTIFICATE", &pki.issuing_der).as_bytes(),
        );
        checks.push(Check::certificate(
            format!("{alg} delegated OCSP responder certificate"),
            &rcert_path,
        ));
        checks.push(Check::issued_by(
            format!("{alg} delegated OCSP responder by issuing CA"),
            &issuing,
            &rcert_path,
        ));
        let now = chrono::Utc::now();
        let at = ca_core::clock::truncate(now - chrono::Duration::minutes(5));
        let next = now + chrono::Duration::hours(24);
        let unknown_serial = ca_core::x509::random_serial();
        let answers: [(&str, CertStatus); 4] = [
            ("good", CertStatus::Good),
            (
                "revoked-keycompromise",
                CertStatus::Revoked {
                    at,
                    reason: RevocationReason::KeyCompromise,
                },
            ),
            (
                "revoked-unspecified",
                CertStatus::Revoked {
                    at,
                    reason: RevocationReason::Unspecified,
                },
            ),
            ("unknown", CertStatus::Unknown),
        ];
        for (name, status) in &answers {
            let serial = if matches!(status, CertStatus::Unknown) {
                unknown_serial.clone()
            } else {
                good.serial.clone()
            };
            for (signer_name, signer, cert) in [
                ("ca", pki.issuing_signer.clone(), None),
                ("delegated", rsigner.clone(), Some(rcert.as_slice())),
            ] {
                // RFC 8954 nonce extension: once per signer is enough.
                let nonces: &[Option<&[u8]>] = if *name == "good" {
                    &[None, Some(b"0123456789abcdef")]
                } else {
                    &[None]
                };
                for &nonce in nonces {
                    let der = sign_response(
                        signer.as_ref(),
                        cert,
                        &pki.issuing_der,
                        &[(serial.clone(), status.clone())],
                        now,
                        next,
                        nonce,
                    )
                    .unwrap();
                    let file = format!(
                        "{name}-{signer_name}{}.ocsp.der",
                        if nonce.is_some() { "-nonce" } else { "" }
                    );
                    let path = out.write(&file, &der);
                    checks.push(Check::ocsp_response(
                        format!("{alg} CA, OCSP {file}"),
                        &path,
                    ));
                }
            }
        }
        // The responder's pre-signed response (SHA-1 and SHA-256 SingleResponses) to the
        // request openssl sends.
        let new_responder = || {
            Responder::new(
                &pki.issuing_der,
                ResponderKey::delegated(rsigner.clone(), &rcert).unwrap(),
                pki.store.clone(),
                Arc::new(ca_core::clock::SystemClock),
                ResponderConfig::default(),
            )
            .unwrap()
        };
        let responder = new_responder();
        responder.on_issued(&good).unwrap();
        let req = out.dir.join("good.ocsp.req");
        let o = Command::new("openssl")
            .args(["ocsp", "-no_nonce", "-issuer"])
            .arg(&issuing)
            .arg("-cert")
            .arg(&good_pem)
            .arg("-reqout")
            .arg(&req)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let answer = match responder.lookup(&std::fs::read(&req).unwrap()) {
            Lookup::Ready(a) => a,
            Lookup::Live(live) => responder.answer_live(live),
        };
        let path = out.write("responder-good.ocsp.der", &answer.der);
        checks.push(Check::ocsp_response(
            format!("{alg} CA, responder pre-signed good"),
            &path,
        ));
        // A response signed at issuance for a group of certificates (RFC 6960 4.2.2.3).
        let (second, _) = leaf_for_revocation(&pki, &out, "good-second");
        let grouped = new_responder();
        let (a, b) = (
            grouped.enqueue_issued(&good),
            grouped.enqueue_issued(&second),
        );
        grouped.await_issued(a).unwrap();
        grouped.await_issued(b).unwrap();
        let der = &grouped.cached(&second.serial).unwrap().der;
        assert_eq!(
            ca_core::ocsp::parse_response(der).unwrap().singles().len(),
            4
        );
        let path = out.write("responder-grouped.ocsp.der", der);
        checks.push(Check::ocsp_response(
            format!("{alg} CA, responder pre-signed for a group at issuance"),
            &path,
        ));
        keep.push((pki, out));
    }
    let reports = pkilint::run(&checks).unwrap_or_else(|e| panic!("{e}"));
    if let Some(findings) = pkilint::failures(&reports, pkilint::FALSE_POSITIVES) {
        panic!("{findings}");
    }
}

/// The second reader run beside pkilint (pyca/cryptography, see `testkit::pkilint::PYCA`) is
/// installed, reads a good certificate, and refuses one whose signature was corrupted.
#[test]
fn pyca_cryptography_runs_and_refuses_a_corrupted_signature() {
    let out = Out::new("pyca-self-check");
    let cert = openssl_self_signed(&out, "self", "/CN=self-signed", &["-outform", "DER"]);
    let mut der = std::fs::read(&cert).unwrap();
    let last = der.len() - 1;
    der[last] ^= 0x01; // inside the signature's s: still DER, no longer a valid signature
    let bad = out.write("corrupted.der", &der);
    let reports = pkilint::run(&[
        Check::issued_by("self-signed", &cert, &cert),
        Check::issued_by("corrupted signature", &cert, &bad),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let pyca: Vec<_> = reports.iter().filter(|r| r.tool == pkilint::PYCA).collect();
    assert_eq!(pyca.len(), 2, "{reports:?}");
    assert!(pyca[0].clean(), "{}", pyca[0].output);
    assert!(
        !pyca[1].clean()
            && pyca[1]
                .unexpected(pkilint::FALSE_POSITIVES)
                .iter()
                .any(|f| f.code == "pyca.refused" && f.message.contains("InvalidSignature")),
        "{:?}",
        pyca[1]
    );
}
