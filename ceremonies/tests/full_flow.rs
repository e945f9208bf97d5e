//! The complete ceremony sequence on real SoftHSM tokens, every artifact checked with the
//! openssl CLI.

mod common;

use ceremonies::transcript::verify_file;
use common::{openssl, openssl_ok, set, Workspace};
use std::os::unix::fs::PermissionsExt;

#[test]
fn root_key_intermediate_ocsp_signer_crl_and_ocsp_response() {
    let ws = Workspace::new();
    let dir = ws.dir.path();
    // Exercise the optional intermediate features on top of the example.
    ws.edit("intermediate.toml", |t| {
        set(
            t,
            "intermediate.name_constraints.permitted_dns",
            vec!["example.com".to_string(), "localhost".to_string()],
        );
        set(
            t,
            "intermediate.name_constraints.permitted_ip",
            vec!["127.0.0.0/8".to_string()],
        );
        set(
            t,
            "intermediate.extended_key_usage",
            vec![
                "serverAuth".to_string(),
                "clientAuth".to_string(),
                "ocspSigning".to_string(),
            ],
        );
    });
    ws.edit("crl.toml", |t| {
        let mut r = toml::Table::new();
        r.insert("serial".into(), "0b:ad:c0:de".into());
        r.insert("reason".into(), "keyCompromise".into());
        set(
            t,
            "crl.revoked",
            toml::Value::Array(vec![toml::Value::Table(r)]),
        );
    });

    let root = ws.done("root.toml");
    ws.done("key.toml");
    ws.done("intermediate.toml");
    ws.done("ocsp-signer.toml");
    let crl = ws.done("crl.toml");
    ws.done("ocsp-response.toml");

    // Root: CA, keyCertSign + cRLSign, no EKU; fingerprint printed and recorded.
    let text = openssl_ok(
        &[
            "x509",
            "-in",
            "root.pem",
            "-noout",
            "-text",
            "-fingerprint",
            "-sha256",
        ],
        dir,
    );
    assert!(text.contains("CA:TRUE"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    assert!(!text.contains("Extended Key Usage"), "{text}");
    let fp = root.certificates[0].sha256.to_uppercase();
    let openssl_fp: String = text
        .lines()
        .find(|l| l.contains("Fingerprint="))
        .unwrap()
        .split('=')
        .nth(1)
        .unwrap()
        .replace(':', "");
    assert_eq!(openssl_fp.trim(), fp);

    // Intermediate: chains to the root, pathLen 0, AKI, CRL DP, AIA, name constraints.
    assert!(
        openssl_ok(&["verify", "-CAfile", "root.pem", "intermediate.pem"], dir)
            .contains("intermediate.pem: OK")
    );
    let text = openssl_ok(&["x509", "-in", "intermediate.pem", "-noout", "-text"], dir);
    for needle in [
        "CA:TRUE, pathlen:0",
        "Authority Key Identifier",
        "Subject Key Identifier",
        "URI:http://127.0.0.1:8080/root.crl",
        "OCSP - URI:http://127.0.0.1:8080/ocsp",
        "Permitted:",
        "DNS:example.com",
        "IP:127.0.0.0/255.0.0.0",
        "TLS Web Server Authentication, TLS Web Client Authentication, OCSP Signing",
    ] {
        assert!(
            text.contains(needle),
            "intermediate lacks {needle:?}:\n{text}"
        );
    }
    let root_ski = openssl_ok(
        &[
            "x509",
            "-in",
            "root.pem",
            "-noout",
            "-ext",
            "subjectKeyIdentifier",
        ],
        dir,
    );
    let root_ski = root_ski.lines().nth(1).unwrap().trim().to_string();
    assert!(
        text.contains(&root_ski),
        "intermediate AKI is not the root SKI {root_ski}"
    );
    let chain = std::fs::read_to_string(ws.path("chain.pem")).unwrap();
    assert_eq!(
        chain,
        std::fs::read_to_string(ws.path("intermediate.pem")).unwrap()
            + &std::fs::read_to_string(ws.path("root.pem")).unwrap()
    );

    // OCSP signer: chains through the intermediate; id-kp-OCSPSigning, nocheck, digitalSignature.
    assert!(openssl_ok(
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "intermediate.pem",
            "ocsp-signer.pem"
        ],
        dir
    )
    .contains("ocsp-signer.pem: OK"));
    assert!(openssl_ok(
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "intermediate.pem",
            "-purpose",
            "ocsphelper",
            "ocsp-signer.pem"
        ],
        dir
    )
    .contains("OK"));
    let text = openssl_ok(&["x509", "-in", "ocsp-signer.pem", "-noout", "-text"], dir);
    for needle in [
        "OCSP Signing",
        "OCSP No Check",
        "Digital Signature",
        "CA:FALSE",
        "Authority Key Identifier",
    ] {
        assert!(
            text.contains(needle),
            "OCSP signer lacks {needle:?}:\n{text}"
        );
    }
    // `-checkend` exits 1 when the certificate expires within the given seconds.
    let (lasts, days) = openssl(
        &[
            "x509",
            "-in",
            "ocsp-signer.pem",
            "-noout",
            "-checkend",
            &(91 * 86400).to_string(),
        ],
        dir,
    );
    assert!(
        !lasts && days.contains("will expire"),
        "OCSP signer should be short-lived: {days}"
    );

    // Root CRL: v2, verifies, AKI, number 1, the revoked serial with its reason.
    let text = openssl_ok(
        &[
            "crl", "-in", "root.crl", "-inform", "DER", "-CAfile", "root.pem", "-noout", "-text",
            "-verify",
        ],
        dir,
    );
    for needle in [
        "verify OK",
        "Version 2",
        "Authority Key Identifier",
        "X509v3 CRL Number: \n                1",
        "Serial Number: 0BADC0DE",
        "Key Compromise",
    ] {
        assert!(text.contains(needle), "CRL lacks {needle:?}:\n{text}");
    }
    assert!(text.contains(&root_ski), "CRL AKI is not the root SKI");
    // The intermediate is not on the CRL: full chain check with CRLs passes.
    assert!(openssl_ok(
        &[
            "crl",
            "-in",
            "root.crl",
            "-inform",
            "DER",
            "-out",
            "root-crl.pem"
        ],
        dir
    )
    .is_empty());
    assert!(openssl_ok(
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            "root.pem",
            "-CRLfile",
            "root-crl.pem",
            "intermediate.pem"
        ],
        dir
    )
    .contains("OK"));

    // A second CRL gets the next number, from the transcript history.
    ws.derive("crl.toml", "crl2.toml", |t| set(t, "crl.crl", "root-2.crl"));
    let crl2 = ws.done("crl2.toml");
    let text = openssl_ok(
        &[
            "crl",
            "-in",
            "root-2.crl",
            "-inform",
            "DER",
            "-CAfile",
            "root.pem",
            "-noout",
            "-text",
            "-verify",
        ],
        dir,
    );
    assert!(
        text.contains("X509v3 CRL Number: \n                2"),
        "{text}"
    );
    let t1 = verify_file(&crl.transcript, None).unwrap();
    let t2 = verify_file(&crl2.transcript, None).unwrap();
    assert_eq!(
        (t1.facts.crl.unwrap().number, t2.facts.crl.unwrap().number),
        (1, 2)
    );

    // The root-signed OCSP response about the intermediate.
    let text = openssl_ok(
        &[
            "ocsp",
            "-respin",
            "intermediate.ocsp.der",
            "-issuer",
            "root.pem",
            "-cert",
            "intermediate.pem",
            "-CAfile",
            "root.pem",
            "-no_nonce",
        ],
        dir,
    );
    assert!(
        text.contains("Response verify OK") && text.contains("intermediate.pem: good"),
        "{text}"
    );

    // Keys: the root key is in the token, sensitive and never extractable (PKCS#11 attributes).
    let root_token = ws.root_token(&ws.root_pin());
    let p = root_token.key_protection("root-ca").unwrap();
    assert!(
        p.sensitive && !p.extractable && p.always_sensitive && p.never_extractable && p.persistent,
        "{p:?}"
    );
    let mut online = ca_core::signer::pkcs11::HsmConfig::new(
        &ws.online_label,
        ca_core::signer::pkcs11::PinSource::File(ws.online_pin_file.clone()),
    );
    online.module = Some(hsm_sim::module_path().unwrap());
    let online = online.open().unwrap();
    for label in ["issuing-ca", "ocsp-signer"] {
        let p = online.key_protection(label).unwrap();
        assert!(
            p.sensitive && !p.extractable && p.never_extractable,
            "{label}: {p:?}"
        );
    }

    // Share files are secret.
    for o in ["alice", "bob", "carol"] {
        let mode = std::fs::metadata(ws.path(&format!("shares/{o}.share")))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{o}'s share");
    }

    // Every transcript verifies, the root-key ones against the root certificate's key.
    let mut transcripts: Vec<_> = std::fs::read_dir(ws.path("transcripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().unwrap() == "json")
        .collect();
    transcripts.sort();
    assert_eq!(transcripts.len(), 7);
    let root_key =
        ceremonies::transcript::signer_fingerprint(ws.path("root.pem").to_str().unwrap()).unwrap();
    let issuing_key =
        ceremonies::transcript::signer_fingerprint(ws.path("issuing-ca.pub.pem").to_str().unwrap())
            .unwrap();
    for t in &transcripts {
        let name = t.file_name().unwrap().to_str().unwrap();
        let expected = if name.contains("-key") || name.contains("ocsp-signer") {
            &issuing_key
        } else {
            &root_key
        };
        verify_file(t, Some(expected)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            t.with_extension("md").exists(),
            "{name}: no Markdown report"
        );
    }

    // A ceremony that fails on the HSM (the key label exists) writes nothing but an unsigned
    // failure report, and the history stays valid.
    ws.derive("key.toml", "key-again.toml", |t| {
        set(t, "key.public_key", "issuing-ca-2.pub.pem");
        set(t, "key.audit_public_key", "audit-checkpoint-2.pub.pem");
    });
    match ws.run("key-again.toml") {
        Err(ceremonies::Error::Core {
            source: ca_core::Error::KeyExists { label, .. },
            ..
        }) => assert_eq!(label, "issuing-ca"),
        other => panic!("expected KeyExists, got {other:?}"),
    }
    assert!(!ws.path("issuing-ca-2.pub.pem").exists());
    assert!(!ws.path("audit-checkpoint-2.pub.pem").exists());
    let failed: Vec<_> = std::fs::read_dir(ws.path("transcripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("FAILED"))
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let report = std::fs::read_to_string(&failed[0]).unwrap();
    assert!(
        report.contains("already exists") && report.contains("token-opened"),
        "{report}"
    );
    ceremonies::history::History::load(&ws.path("transcripts")).unwrap();

    // Outputs are never overwritten: a second root ceremony is refused before the HSM.
    let before = ws.files();
    match ws.run("root.toml") {
        Err(ceremonies::Error::OutputExists(p)) => {
            assert!(p.ends_with("shares/alice.share"), "{}", p.display())
        }
        other => panic!("expected OutputExists, got {other:?}"),
    }
    assert_eq!(ws.files(), before, "a refused ceremony wrote files");
    let (ok, _) = openssl(&["verify", "-CAfile", "root.pem", "intermediate.pem"], dir);
    assert!(ok);
}
