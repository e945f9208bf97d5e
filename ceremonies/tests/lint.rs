//! Independent linting of every ceremony artifact with DigiCert's pkilint (PyPI `pkilint`):
//! the root, intermediate and OCSP signer certificates (RFC 5280, each also against its
//! issuer), the root CRL (RFC 5280 5) and the root-signed OCSP response about the intermediate
//! (RFC 6960), from `ceremony dev` for every CA algorithm, and from a ceremony sequence that
//! revokes (CRL entries with and without a reason, a `revoked` OCSP response) and constrains
//! names. openssl checks the same files with `verify -x509_strict`, `crl -verify` and
//! `ocsp -respin`.
//!
//! Any finding of severity WARNING or above fails, with pkilint's report. pkilint is not a Rust
//! crate: `scripts/deps.sh test` installs it (into `.venv-lint`); without it these tests fail
//! and say how to install it. `LINT_OUT=DIR` keeps the artifacts in `DIR`.

mod common;

use common::{openssl, openssl_ok, set, Workspace};
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::pkilint::{self, Check};

/// The checks for one ceremony directory's artifacts.
fn checks(label: &str, dir: &Path) -> Vec<Check> {
    let p = |n: &str| dir.join(n);
    vec![
        Check::certificate(format!("{label} root.pem"), &p("root.pem")),
        Check::certificate(format!("{label} intermediate.pem"), &p("intermediate.pem")),
        Check::certificate(format!("{label} ocsp-signer.pem"), &p("ocsp-signer.pem")),
        Check::issued_by(
            format!("{label} intermediate.pem by root.pem"),
            &p("root.pem"),
            &p("intermediate.pem"),
        ),
        Check::issued_by(
            format!("{label} ocsp-signer.pem by intermediate.pem"),
            &p("intermediate.pem"),
            &p("ocsp-signer.pem"),
        ),
        Check::crl(format!("{label} root.crl"), &p("root.crl")),
        Check::ocsp_response(
            format!("{label} intermediate.ocsp.der"),
            &p("intermediate.ocsp.der"),
        ),
    ]
}

/// openssl's strict path validation and CRL/OCSP signature checks over the same files.
fn openssl_checks(dir: &Path) -> String {
    openssl_ok(
        &[
            "verify",
            "-x509_strict",
            "-CAfile",
            "root.pem",
            "intermediate.pem",
        ],
        dir,
    );
    openssl_ok(
        &[
            "verify",
            "-x509_strict",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "intermediate.pem",
            "ocsp-signer.pem",
        ],
        dir,
    );
    openssl_ok(
        &[
            "crl", "-in", "root.crl", "-inform", "DER", "-CAfile", "root.pem", "-noout", "-verify",
        ],
        dir,
    );
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
            "-resp_text",
        ],
        dir,
    );
    assert!(text.contains("Response verify OK"), "{text}");
    text
}

fn assert_clean(checks: &[Check]) {
    let reports = pkilint::run(checks).unwrap_or_else(|e| panic!("{e}"));
    if let Some(findings) = pkilint::failures(&reports, pkilint::FALSE_POSITIVES) {
        panic!("{findings}");
    }
}

/// `$LINT_OUT/<name>` when set (kept), else a fresh temporary directory.
fn out_dir(tmp: &tempfile::TempDir, name: &str) -> PathBuf {
    match std::env::var_os("LINT_OUT") {
        Some(base) => {
            let d = PathBuf::from(base).join(name);
            let _ = std::fs::remove_dir_all(&d);
            d
        }
        None => tmp.path().join(name),
    }
}

#[test]
fn dev_rehearsal_artifacts_have_no_pkilint_findings_for_every_algorithm() {
    let tmp = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    for alg in ["p256", "p384", "rsa2048", "ed25519"] {
        let out = out_dir(&tmp, &format!("ceremony-dev-{alg}"));
        let run = Command::new(env!("CARGO_BIN_EXE_ceremony"))
            .args(["dev", "--algorithm", alg, "--out"])
            .arg(&out)
            .env_remove("SOFTHSM2_CONF")
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "ceremony dev --algorithm {alg}: {}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        openssl_checks(&out);
        all.extend(checks(&format!("dev {alg}:"), &out));
    }
    assert_clean(&all);
}

#[test]
fn revocations_and_name_constraints_have_no_pkilint_findings() {
    let ws = Workspace::new();
    let dir = ws.dir.path();
    ws.edit("intermediate.toml", |t| {
        set(
            t,
            "intermediate.subject.organizational_unit",
            "Platform Security",
        );
        set(t, "intermediate.subject.locality", "Zürich");
        set(
            t,
            "intermediate.name_constraints.permitted_dns",
            vec!["example.com".to_string(), "localhost".to_string()],
        );
        set(
            t,
            "intermediate.name_constraints.excluded_dns",
            vec!["forbidden.example.com".to_string()],
        );
        set(
            t,
            "intermediate.name_constraints.permitted_ip",
            vec!["127.0.0.0/8".to_string(), "fd00::/8".to_string()],
        );
        set(
            t,
            "intermediate.name_constraints.permitted_email",
            vec!["example.com".to_string()],
        );
        set(
            t,
            "intermediate.extended_key_usage",
            vec!["serverAuth".to_string(), "clientAuth".to_string()],
        );
        set(
            t,
            "intermediate.ca_issuers_urls",
            vec!["http://127.0.0.1:8080/root.crt".to_string()],
        );
    });
    ws.edit("crl.toml", |t| {
        let entry = |serial: &str, reason: Option<&str>| {
            let mut r = toml::Table::new();
            r.insert("serial".into(), serial.into());
            if let Some(reason) = reason {
                r.insert("reason".into(), reason.into());
            }
            toml::Value::Table(r)
        };
        set(
            t,
            "crl.revoked",
            toml::Value::Array(vec![
                entry("0b:ad:c0:de", Some("keyCompromise")),
                entry("7f:00:00:00:00:00:00:00:00:00:00:00:00:00:00:01", None),
                entry("01", Some("cACompromise")),
                entry("02", Some("superseded")),
            ]),
        );
    });
    ws.edit("ocsp-response.toml", |t| {
        set(t, "ocsp_response.status", "revoked");
        set(t, "ocsp_response.reason", "cessationOfOperation");
    });
    for name in [
        "root.toml",
        "key.toml",
        "intermediate.toml",
        "ocsp-signer.toml",
        "crl.toml",
        "ocsp-response.toml",
    ] {
        ws.done(name);
    }
    let text = openssl_checks(dir);
    assert!(text.contains("Reason: cessationOfOperation"), "{text}");
    // RFC 5280 5.3.1: the entry without a reason carries no reasonCode extension.
    let crl = openssl_ok(
        &[
            "crl", "-in", "root.crl", "-inform", "DER", "-noout", "-text",
        ],
        dir,
    );
    assert_eq!(crl.matches("X509v3 CRL Reason Code").count(), 3, "{crl}");
    let (ok, _) = openssl(&["x509", "-in", "intermediate.pem", "-noout"], dir);
    assert!(ok);
    let kept = std::env::var_os("LINT_OUT").map(|b| PathBuf::from(b).join("ceremony-revocations"));
    if let Some(k) = &kept {
        let _ = std::fs::remove_dir_all(k);
        std::fs::create_dir_all(k).unwrap();
        for f in [
            "root.pem",
            "intermediate.pem",
            "ocsp-signer.pem",
            "root.crl",
            "intermediate.ocsp.der",
        ] {
            std::fs::copy(dir.join(f), k.join(f)).unwrap();
        }
    }
    assert_clean(&checks("revocations:", dir));
}
