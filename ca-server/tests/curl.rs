//! The API and EST with real `curl` and `openssl`, as an operator, an agent script or an EST
//! client would use them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ca_core::store::prelude::*;
use ca_server::api::types::RevokeRequest;
use ca_server::api::types::RevokeResponse;
use common::TestServer;
use std::path::{Path, PathBuf};
use tokio::process::Command;

struct Files {
    dir: PathBuf,
}

impl Files {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    fn write(&self, name: &str, data: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, data).unwrap();
        p
    }
}

async fn run(cmd: &str, args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = Command::new(cmd).args(args).output().await.unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// curl that returns (HTTP status, body); `extra` holds TLS and header options.
async fn curl(url: &str, extra: &[&str], out: &Path) -> (u16, String) {
    let mut args = vec!["-sS", "-o", out.to_str().unwrap(), "-w", "%{http_code}"];
    args.extend_from_slice(extra);
    args.push(url);
    let (ok, stdout, stderr) = run("curl", &args).await;
    assert!(ok, "curl {args:?} failed: {stderr}");
    let status = String::from_utf8(stdout).unwrap().trim().parse().unwrap();
    (status, std::fs::read_to_string(out).unwrap_or_default())
}

/// openssl-made key and CSR (PEM, and DER base64 for EST).
async fn openssl_csr(
    f: &Files,
    name: &str,
    cn: &str,
    san: Option<&str>,
) -> (PathBuf, PathBuf, PathBuf) {
    let key = f.path(&format!("{name}.key"));
    let csr = f.path(&format!("{name}.csr"));
    let mut args = vec![
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
    ];
    let subj = format!("/CN={cn}");
    args.extend_from_slice(&["-subj", &subj]);
    let ext;
    if let Some(s) = san {
        ext = format!("subjectAltName={s}");
        args.extend_from_slice(&["-addext", &ext]);
    }
    let (ok, _, err) = run("openssl", &args).await;
    assert!(ok, "{err}");
    let der = f.path(&format!("{name}.csr.der"));
    let (ok, _, err) = run(
        "openssl",
        &[
            "req",
            "-in",
            csr.to_str().unwrap(),
            "-outform",
            "DER",
            "-out",
            der.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{err}");
    let b64 = f.path(&format!("{name}.csr.b64"));
    let (ok, stdout, err) = run("openssl", &["base64", "-in", der.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    std::fs::write(&b64, stdout).unwrap();
    (key, csr, b64)
}

async fn print_certs(p7_b64: &Path, f: &Files, name: &str) -> String {
    let der = f.path(&format!("{name}.p7.der"));
    let (ok, _, err) = run(
        "openssl",
        &[
            "base64",
            "-d",
            "-in",
            p7_b64.to_str().unwrap(),
            "-out",
            der.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, stdout, err) = run(
        "openssl",
        &[
            "pkcs7",
            "-inform",
            "DER",
            "-in",
            der.to_str().unwrap(),
            "-print_certs",
        ],
    )
    .await;
    assert!(ok, "openssl pkcs7: {err}");
    String::from_utf8(stdout).unwrap()
}

fn json_field(body: &str, field: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {body}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_enroll_renew_revoke() {
    let mut srv = TestServer::start().await;
    let f = Files { dir: srv.tmp() };
    let root = f.write("root.pem", &srv.root_pem);
    let op_crt = f.write("op.crt", &srv.operator.cert);
    let op_key = f.write("op.key", &srv.operator.key);
    let tls = |crt: &Path, key: &Path| -> Vec<String> {
        vec![
            "--cacert".into(),
            root.display().to_string(),
            "--cert".into(),
            crt.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ]
    };
    let body = f.path("body");

    // Operator creates a token.
    let mut args: Vec<String> = tls(&op_crt, &op_key);
    args.extend([
        "-H".into(),
        "Content-Type: application/json".into(),
        "-d".into(),
        r#"{"common_name":"curl.test","sans":["dns:curl.test"],"profile":"client","ttl":"30m"}"#
            .into(),
    ]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, resp) = curl(&format!("{}/v1/admin/tokens", srv.url), &a, &body).await;
    assert_eq!(status, 200, "{resp}");
    let token = json_field(&resp, "token");

    // Agent enrolls with an openssl key and CSR.
    let (key, csr, _) = openssl_csr(&f, "agent", "curl.test", Some("DNS:curl.test")).await;
    let req = serde_json::json!({ "token": token, "csr": std::fs::read_to_string(&csr).unwrap() });
    let req_file = f.write("enroll.json", req.to_string());
    let data = format!("@{}", req_file.display());
    let (status, resp) = curl(
        &format!("{}/v1/enroll", srv.url),
        &[
            "--cacert",
            root.to_str().unwrap(),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &data,
        ],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    let cert = f.write("agent.crt", json_field(&resp, "certificate"));
    let chain = f.write("chain.pem", json_field(&resp, "chain"));
    let serial = json_field(&resp, "serial");
    // openssl verifies the leaf against the chain the server returned.
    let (ok, out, err) = run(
        "openssl",
        &[
            "verify",
            "-CAfile",
            root.to_str().unwrap(),
            "-untrusted",
            chain.to_str().unwrap(),
            "-purpose",
            "sslclient",
            cert.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{err} {}", String::from_utf8_lossy(&out));

    // The same token again: refused.
    let (status, resp) = curl(
        &format!("{}/v1/enroll", srv.url),
        &[
            "--cacert",
            root.to_str().unwrap(),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &data,
        ],
        &body,
    )
    .await;
    assert_eq!(
        (status, json_field(&resp, "code").as_str()),
        (401, "token_rejected")
    );

    // Renew over mTLS with a new openssl key.
    let (key2, csr2, _) = openssl_csr(&f, "agent2", "curl.test", None).await;
    let req = serde_json::json!({ "csr": std::fs::read_to_string(&csr2).unwrap() });
    let renew_file = f.write("renew.json", req.to_string());
    let renew_data = format!("@{}", renew_file.display());
    let mut args = tls(&cert, &key);
    args.extend([
        "-H".into(),
        "Content-Type: application/json".into(),
        "--data-binary".into(),
        renew_data.clone(),
    ]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, resp) = curl(&format!("{}/v1/renew", srv.url), &a, &body).await;
    assert_eq!(status, 200, "{resp}");
    let cert2 = f.write("agent2.crt", json_field(&resp, "certificate"));
    let serial2 = json_field(&resp, "serial");
    assert_ne!(serial, serial2);

    // Renewal without a client certificate.
    let (status, resp) = curl(
        &format!("{}/v1/renew", srv.url),
        &[
            "--cacert",
            root.to_str().unwrap(),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &renew_data,
        ],
        &body,
    )
    .await;
    assert_eq!(
        (status, json_field(&resp, "code").as_str()),
        (401, "client_cert_required")
    );

    // Operator revokes the renewed certificate; renewing with it is refused.
    let mut args = tls(&op_crt, &op_key);
    let rev = format!(r#"{{"serial":"{serial2}","reason":"superseded"}}"#);
    args.extend([
        "-H".into(),
        "Content-Type: application/json".into(),
        "-d".into(),
        rev,
    ]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, resp) = curl(&format!("{}/v1/admin/revoke", srv.url), &a, &body).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(json_field(&resp, "reason"), "superseded");
    let (_, csr3, _) = openssl_csr(&f, "agent3", "curl.test", None).await;
    let req = serde_json::json!({ "csr": std::fs::read_to_string(&csr3).unwrap() });
    let f3 = f.write("renew3.json", req.to_string());
    let mut args = tls(&cert2, &key2);
    args.extend([
        "-H".into(),
        "Content-Type: application/json".into(),
        "--data-binary".into(),
        format!("@{}", f3.display()),
    ]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, resp) = curl(&format!("{}/v1/renew", srv.url), &a, &body).await;
    assert_eq!(
        (status, json_field(&resp, "code").as_str()),
        (403, "cert_revoked")
    );

    // Oversized body.
    let big = f.write("big.json", vec![b'x'; 100 * 1024]);
    let (status, resp) = curl(
        &format!("{}/v1/enroll", srv.url),
        &[
            "--cacert",
            root.to_str().unwrap(),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", big.display()),
        ],
        &body,
    )
    .await;
    assert_eq!(
        (status, json_field(&resp, "code").as_str()),
        (413, "payload_too_large")
    );

    // A client certificate from another CA fails the handshake (curl exits non-zero).
    let (ok, _, _) = run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            f.path("self.key").to_str().unwrap(),
            "-out",
            f.path("self.crt").to_str().unwrap(),
            "-subj",
            "/CN=intruder",
            "-days",
            "1",
        ],
    )
    .await;
    assert!(ok);
    let (ok, _, _) = run(
        "curl",
        &[
            "-sS",
            "--cacert",
            root.to_str().unwrap(),
            "--cert",
            f.path("self.crt").to_str().unwrap(),
            "--key",
            f.path("self.key").to_str().unwrap(),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &renew_data,
            &format!("{}/v1/renew", srv.url),
        ],
    )
    .await;
    assert!(!ok, "a foreign client certificate must fail the handshake");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn est_with_curl_and_openssl() {
    let mut srv = TestServer::start().await;
    let f = Files { dir: srv.tmp() };
    let root = f.write("root.pem", &srv.root_pem);
    let body = f.path("body");

    // cacerts: base64 PKCS#7 certs-only with the issuing CA and the root.
    let (status, _) = curl(
        &format!("{}/.well-known/est/cacerts", srv.url),
        &["--cacert", root.to_str().unwrap()],
        &body,
    )
    .await;
    assert_eq!(status, 200);
    let certs = print_certs(&body, &f, "cacerts").await;
    assert_eq!(certs.matches("BEGIN CERTIFICATE").count(), 2, "{certs}");
    assert!(certs.contains("hsm-sim Test Root CA"), "{certs}");
    assert!(certs.contains("hsm-sim Test Issuing CA"), "{certs}");

    // simpleenroll with the token as HTTP Basic password.
    let token = srv.token("est.test", &["dns:est.test"], "client").await;
    let (key, _, b64) = openssl_csr(&f, "est", "est.test", Some("DNS:est.test")).await;
    let user = format!("agent:{token}");
    let data = format!("@{}", b64.display());
    let (status, resp) = curl(
        &format!("{}/.well-known/est/simpleenroll", srv.url),
        &[
            "--cacert",
            root.to_str().unwrap(),
            "-u",
            &user,
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            &data,
        ],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    let leaf = print_certs(&body, &f, "enroll").await;
    assert!(
        leaf.contains("CN = est.test") || leaf.contains("CN=est.test"),
        "{leaf}"
    );
    let leaf_pem = f.write("est.crt", &leaf);

    // Replaying the token over EST: refused with a challenge.
    let (ok, stdout, _) = run(
        "curl",
        &[
            "-sS",
            "-i",
            "--cacert",
            root.to_str().unwrap(),
            "-u",
            &user,
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            &data,
            &format!("{}/.well-known/est/simpleenroll", srv.url),
        ],
    )
    .await;
    assert!(ok);
    let text = String::from_utf8_lossy(&stdout);
    assert!(
        text.starts_with("HTTP/1.1 401") || text.starts_with("HTTP/2 401"),
        "{text}"
    );
    assert!(text.contains("token_rejected"), "{text}");

    // Bearer works too.
    let token2 = srv.token("est2.test", &[], "client").await;
    let (_, _, b64_2) = openssl_csr(&f, "est2", "est2.test", None).await;
    let bearer = format!("Authorization: Bearer {token2}");
    let (status, resp) = curl(
        &format!("{}/.well-known/est/simpleenroll", srv.url),
        &[
            "--cacert",
            root.to_str().unwrap(),
            "-H",
            &bearer,
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            &format!("@{}", b64_2.display()),
        ],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{resp}");

    // simplereenroll over mTLS with the EST-issued certificate and a new key.
    let (_, _, b64_3) = openssl_csr(&f, "est3", "est.test", None).await;
    let (status, resp) = curl(
        &format!("{}/.well-known/est/simplereenroll", srv.url),
        &[
            "--cacert",
            root.to_str().unwrap(),
            "--cert",
            leaf_pem.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            &format!("@{}", b64_3.display()),
        ],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    let renewed = print_certs(&body, &f, "reenroll").await;
    assert!(renewed.contains("est.test"), "{renewed}");

    // Wrong content type.
    let (status, resp) = curl(
        &format!("{}/.well-known/est/simplereenroll", srv.url),
        &[
            "--cacert",
            root.to_str().unwrap(),
            "--cert",
            leaf_pem.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            &format!("@{}", b64_3.display()),
        ],
        &body,
    )
    .await;
    assert_eq!(
        (status, json_field(&resp, "code").as_str()),
        (415, "unsupported_media_type")
    );
    srv.stop().await;
}

/// With the status listener attached: a new certificate is `good` in OCSP at once, and the
/// revocation is visible in OCSP by the time the API acknowledged it; the CRL lists it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsp_and_crl_follow_issuance_and_revocation() {
    let mut srv = TestServer::with(common::Options {
        status: true,
        ..common::Options::default()
    })
    .await;
    let f = Files { dir: srv.tmp() };
    let issuer = f.write(
        "issuing.pem",
        ca_core::x509::pem_encode("CERTIFICATE", &srv.pki.issuing_der),
    );
    let root = f.write("root.pem", &srv.root_pem);
    let token = srv.token("ocsp.test", &[], "client").await;
    let (_, issued) = srv.enroll(&token, "ocsp.test", &[]).await;
    let leaf = f.write("leaf.pem", &issued.certificate);
    let ocsp = |f: &Files| {
        let args: Vec<String> = vec![
            "ocsp".into(),
            "-issuer".into(),
            issuer.display().to_string(),
            "-cert".into(),
            leaf.display().to_string(),
            "-url".into(),
            format!("{}/ocsp", srv.status_url),
            "-CAfile".into(),
            root.display().to_string(),
            "-verify_other".into(),
            issuer.display().to_string(),
            "-no_nonce".into(),
        ];
        let _ = f;
        args
    };
    let args = ocsp(&f);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = run("openssl", &a).await;
    let out = String::from_utf8_lossy(&out).into_owned();
    assert!(ok, "{err} {out}");
    assert!(out.contains(": good"), "{out} {err}");

    let _: RevokeResponse = srv
        .client(Some(&srv.operator))
        .post_json(
            "/v1/admin/revoke",
            &RevokeRequest {
                serial: issued.serial.clone(),
                reason: Some("keyCompromise".into()),
                lineage: false,
            },
        )
        .await
        .unwrap();
    let (ok, out, err) = run("openssl", &a).await;
    let out = String::from_utf8_lossy(&out).into_owned();
    assert!(ok, "{err} {out}");
    assert!(out.contains(": revoked"), "{out} {err}");
    assert!(out.contains("Reason: keyCompromise"), "{out}");

    // OCSP outcomes are counted in the shared metrics registry.
    let body = f.path("metrics");
    let (status, metrics) = curl(&format!("{}/metrics", srv.status_url), &[], &body).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("ca_ocsp_requests_total{status=\"good\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ca_ocsp_requests_total{status=\"revoked\"} 1"),
        "{metrics}"
    );
    // The certificate's first response was signed at issuance, in a group of one or more.
    let counter = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (sigs, certs) = (
        counter("ca_ocsp_issuance_signatures_total "),
        counter("ca_ocsp_issuance_certificates_total "),
    );
    assert!((1..=certs).contains(&sigs), "{metrics}");
    // Nothing left unsigned by an HSM failure (hsm_outage_* in tests/status.rs for the rest).
    assert!(
        metrics.lines().any(|l| l == "ca_ocsp_resign_backlog 0")
            && metrics.lines().any(|l| l == "ca_crl_stale 0"),
        "{metrics}"
    );
    // /ca.crt is the issuing CA.
    let crt = f.path("ca.crt");
    let (status, _) = curl(&format!("{}/ca.crt", srv.status_url), &[], &crt).await;
    assert_eq!(status, 200);
    assert_eq!(std::fs::read(&crt).unwrap(), srv.pki.issuing_der);
    srv.stop().await;
}

/// The serial of the certificate the server presents, as `openssl s_client` sees it, after
/// verifying the chain it sends against the root.
async fn server_cert_serial(srv: &TestServer, root: &Path) -> String {
    let addr = srv.url.trim_start_matches("https://").to_string();
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr,
            "-servername",
            "localhost",
            "-CAfile",
            root.to_str().unwrap(),
            "-verify_return_error",
            "-showcerts",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    let pem_start = text.find("-----BEGIN CERTIFICATE-----").unwrap();
    let pem_end =
        text.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    common::serial_of(&text[pem_start..pem_end])
}

/// The server's own certificate is issued by the CA and renewed before it expires, without a
/// restart; clients pinning the root verify the chain the server sends (leaf, issuing, root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_is_renewed_by_the_server() {
    let mut srv = TestServer::with(common::Options {
        tls_validity: ca_core::profile::Span(chrono::Duration::seconds(3)),
        ..common::Options::default()
    })
    .await;
    let f = Files { dir: srv.tmp() };
    let root = f.write("root.pem", &srv.root_pem);
    let first = server_cert_serial(&srv, &root).await;
    let rec = srv
        .pki
        .store
        .get_cert(&hex::decode(&first).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(rec.profile, "_server-tls");
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let second = server_cert_serial(&srv, &root).await;
    assert_ne!(first, second, "server certificate was not renewed");
    srv.stop().await;
}

/// TLS 1.2 and 1.3 are accepted, anything older is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls12_and_tls13() {
    let mut srv = TestServer::start().await;
    let f = Files { dir: srv.tmp() };
    let root = f.write("root.pem", &srv.root_pem);
    let url = format!("{}/v1/chain", srv.url);
    for (args, expect_ok) in [
        (vec!["--tlsv1.3"], true),
        (vec!["--tlsv1.2", "--tls-max", "1.2"], true),
        (vec!["--tlsv1.1", "--tls-max", "1.1"], false),
    ] {
        let mut a = vec![
            "-sSf",
            "-o",
            "/dev/null",
            "--cacert",
            root.to_str().unwrap(),
        ];
        a.extend(args.iter());
        a.push(&url);
        let (ok, _, err) = run("curl", &a).await;
        assert_eq!(ok, expect_ok, "curl {args:?}: {err}");
    }
    srv.stop().await;
}
