//! The status listener against real peers: `openssl ocsp -url`, `openssl crl`/`verify`,
//! curl for GET and caching headers, nginx with `ssl_ocsp`. SoftHSM and sled are real.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod status_support;

use base64::Engine;
use ca_core::ocsp::{sign_response, ExternalResponse, ResponderConfig};
use ca_core::revocation::{CertStatus, RevocationReason};
use ca_core::store::prelude::*;
use chrono::{Duration, Utc};
use status_support::fixture::{write_pem, TestCa};
use status_support::{
    build, curl_client_cert, free_port, openssl, openssl_ocsp, run_async, serve, start, Nginx,
    Options,
};
use std::process::Command;
use std::time::Instant;
use testkit::Faults;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_ocsp_good_then_revoked_and_unknown_over_http() {
    let ca = TestCa::new("Test Issuing CA");
    let leaf = ca.issue_leaf("alice");
    let ghost = ca.unissued_leaf("ghost");
    let l = start(&ca, Options::default()).await;

    // Default openssl request carries a nonce: pre-signed answers ignore it (RFC 5019), openssl
    // warns and still verifies.
    let (ok, out) = openssl_ocsp(&l, &ca.cert_pem, &leaf.cert_pem, &ca.cert_pem, &[]).await;
    assert!(
        ok && out.contains("Response verify OK") && out.contains("alice.pem: good"),
        "{out}"
    );
    let (ok, out) = openssl_ocsp(
        &l,
        &ca.cert_pem,
        &leaf.cert_pem,
        &ca.cert_pem,
        &["-no_nonce", "-sha256"],
    )
    .await;
    assert!(
        ok && out.contains("Response verify OK") && out.contains("alice.pem: good"),
        "SHA-256 CertID: {out}"
    );

    let t0 = Instant::now();
    l.state
        .revoke(
            leaf.record.serial.clone(),
            RevocationReason::KeyCompromise,
            Utc::now(),
            "test".into(),
        )
        .await
        .unwrap();
    let (ok, out) = openssl_ocsp(
        &l,
        &ca.cert_pem,
        &leaf.cert_pem,
        &ca.cert_pem,
        &["-no_nonce"],
    )
    .await;
    assert!(ok && out.contains("Response verify OK"), "{out}");
    assert!(
        out.contains("alice.pem: revoked") && out.contains("Reason: keyCompromise"),
        "{out}"
    );
    eprintln!("revocation visible over OCSP after {:?}", t0.elapsed());

    let (ok, out) = openssl_ocsp(&l, &ca.cert_pem, &ghost, &ca.cert_pem, &["-no_nonce"]).await;
    assert!(
        ok && out.contains("Response verify OK") && out.contains("ghost.pem: unknown"),
        "{out}"
    );

    // The audit log recorded the revocation.
    let events = ca.store.audit_events(0, 100).unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.event.action == "revoke" && e.event.result == "ok"),
        "{events:?}"
    );
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_signed_responses_and_nonce_echo() {
    let ca = TestCa::new("Test Issuing CA");
    let leaf = ca.issue_leaf("bob");
    let opts = Options {
        delegated: false,
        responder: ResponderConfig {
            echo_nonce: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let l = start(&ca, opts).await;
    // CA-signed: the signer is the issuer itself; -VAfile names it explicitly.
    let (ok, out) = openssl_ocsp(
        &l,
        &ca.cert_pem,
        &leaf.cert_pem,
        &ca.cert_pem,
        &["-VAfile", ca.cert_pem.to_str().unwrap()],
    )
    .await;
    assert!(
        ok && out.contains("Response verify OK") && out.contains("bob.pem: good"),
        "{out}"
    );
    assert!(
        !out.contains("nonce"),
        "nonce echoed, no warning expected: {out}"
    );
    l.stop().await;
}

/// Issue 17: start-up does not grow with the number of certificates. The state is ready to
/// serve before anything is loaded (a restart of a 1M-certificate store used to read every
/// certificate and response first); a request then reads its stored response back, without a
/// signature, and the first maintenance pass loads the rest in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_starts_before_loading_and_answers_from_the_store() {
    let ca = TestCa::new("Test Issuing CA");
    let leaves: Vec<_> = (0..3).map(|i| ca.issue_leaf(&format!("l{i}"))).collect();
    let ca_key = || Options {
        delegated: false,
        ..Default::default()
    };
    // A first run signs and stores every answer.
    let first = start(&ca, ca_key()).await;
    let s = first.state.clone();
    tokio::task::spawn_blocking(move || s.maintain_blocking())
        .await
        .unwrap();
    first.stop().await;
    for l in &leaves {
        assert!(ca
            .store
            .get_ocsp_response(&l.record.serial)
            .unwrap()
            .is_some());
    }

    let state = build(&ca, ca_key()).await;
    let responder = state.responder().clone();
    assert_eq!(
        responder.cache_stats().entries,
        0,
        "nothing loaded before serving"
    );
    let l = serve(state).await;
    let (ok, out) = openssl_ocsp(
        &l,
        &ca.cert_pem,
        &leaves[0].cert_pem,
        &ca.cert_pem,
        &["-no_nonce"],
    )
    .await;
    assert!(
        ok && out.contains("Response verify OK") && out.contains("l0.pem: good"),
        "{out}"
    );
    // Served from the store (or from what the first pass loaded meanwhile): not signed again.
    let stored = ca
        .store
        .get_ocsp_response(&leaves[0].record.serial)
        .unwrap()
        .unwrap();
    assert_eq!(
        responder.cached(&leaves[0].record.serial).unwrap().der,
        stored.der
    );
    let s = l.state.clone();
    tokio::task::spawn_blocking(move || s.maintain_blocking())
        .await
        .unwrap();
    assert_eq!(responder.cache_stats().entries, 3);
    let (ok, out) = openssl_ocsp(
        &l,
        &ca.cert_pem,
        &leaves[2].cert_pem,
        &ca.cert_pem,
        &["-no_nonce"],
    )
    .await;
    assert!(ok && out.contains("l2.pem: good"), "{out}");
    l.stop().await;
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_with_url_encoded_base64_has_rfc5019_headers() {
    let ca = TestCa::new("Test Issuing CA");
    let leaf = ca.issue_leaf("carol");
    let l = start(&ca, Options::default()).await;
    let req_path = ca.path("req.der");
    let (ok, out) = run_async({
        let mut c = openssl();
        c.args(["ocsp", "-no_nonce", "-issuer"])
            .arg(&ca.cert_pem)
            .arg("-cert")
            .arg(&leaf.cert_pem)
            .arg("-reqout")
            .arg(&req_path);
        c
    })
    .await;
    assert!(ok, "{out}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&req_path).unwrap());
    // RFC 6960 A.1: url-encoding of base64; also the raw form with '/' and '+' in the path.
    let encoded = b64
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    for (name, path) in [("encoded", encoded), ("raw", b64.clone())] {
        let resp = ca.path(&format!("resp-{name}.der"));
        let hdrs = ca.path(&format!("hdrs-{name}.txt"));
        let mut c = Command::new("curl");
        c.args(["-sS", "--fail", "-o"])
            .arg(&resp)
            .arg("-D")
            .arg(&hdrs)
            .arg(l.url(&format!("/ocsp/{path}")));
        let (ok, out) = run_async(c).await;
        assert!(ok, "{name}: {out}");
        let h = std::fs::read_to_string(&hdrs).unwrap();
        assert_eq!(
            header(&h, "content-type"),
            Some("application/ocsp-response"),
            "{h}"
        );
        let cc = header(&h, "cache-control").unwrap_or_default();
        assert!(
            cc.starts_with("max-age=")
                && cc.contains("public")
                && cc.contains("no-transform")
                && cc.contains("must-revalidate"),
            "{h}"
        );
        let max_age: u64 = cc
            .trim_start_matches("max-age=")
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(max_age > 0 && max_age <= 60, "{h}");
        for name in ["expires", "last-modified", "etag", "date"] {
            assert!(header(&h, name).is_some(), "missing {name}: {h}");
        }
        let (ok, out) = run_async({
            let mut c = openssl();
            c.args(["ocsp", "-no_nonce", "-respin"])
                .arg(&resp)
                .arg("-issuer")
                .arg(&ca.cert_pem)
                .arg("-cert")
                .arg(&leaf.cert_pem)
                .arg("-CAfile")
                .arg(&ca.cert_pem);
            c
        })
        .await;
        assert!(
            ok && out.contains("Response verify OK") && out.contains("carol.pem: good"),
            "{name}: {out}"
        );
    }
    // Conditional GET: 304 for the same ETag.
    let h = std::fs::read_to_string(ca.path("hdrs-raw.txt")).unwrap();
    let etag = header(&h, "etag").unwrap().to_string();
    let mut c = Command::new("curl");
    c.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("If-None-Match: {etag}"))
        .arg(l.url(&format!("/ocsp/{b64}")));
    let (_, out) = run_async(c).await;
    assert_eq!(out.trim(), "304");
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_and_issuer_certificate_over_http() {
    let ca = TestCa::new("Test Issuing CA");
    let good = ca.issue_leaf("good");
    let bad = ca.issue_leaf("bad");
    let root_crl = ca.path("root.crl");
    std::fs::write(&root_crl, b"not really a CRL, served as is").unwrap();
    let l = start(
        &ca,
        Options {
            root_crl: Some(root_crl),
            ..Default::default()
        },
    )
    .await;

    let fetch = |path: &str, out: std::path::PathBuf| {
        let mut c = Command::new("curl");
        c.args(["-sS", "--fail", "-D", "-", "-o"])
            .arg(out)
            .arg(l.url(path));
        run_async(c)
    };
    let (ok, hdrs) = fetch("/ca.crt", ca.path("ca.der")).await;
    assert!(
        ok && header(&hdrs, "content-type") == Some("application/pkix-cert"),
        "{hdrs}"
    );
    assert_eq!(std::fs::read(ca.path("ca.der")).unwrap(), ca.cert_der);
    let (ok, hdrs) = fetch("/root.crl", ca.path("root-fetched.crl")).await;
    assert!(
        ok && header(&hdrs, "content-type") == Some("application/pkix-crl"),
        "{hdrs}"
    );

    let (ok, hdrs) = fetch("/crl", ca.path("crl1.der")).await;
    assert!(
        ok && header(&hdrs, "content-type") == Some("application/pkix-crl")
            && header(&hdrs, "expires").is_some(),
        "{hdrs}"
    );
    let first = l.state.crls().current().unwrap().number;
    let verify = |cert: std::path::PathBuf, crl: std::path::PathBuf| {
        let crl_pem = crl.with_extension("pem");
        write_pem(&crl_pem, "X509 CRL", &std::fs::read(&crl).unwrap());
        let mut c = openssl();
        c.args(["verify", "-crl_check", "-CAfile"])
            .arg(&ca.cert_pem)
            .arg("-CRLfile")
            .arg(crl_pem)
            .arg(cert);
        run_async(c)
    };
    let (ok, out) = run_async({
        let mut c = openssl();
        c.args(["crl", "-inform", "DER", "-noout", "-verify", "-in"])
            .arg(ca.path("crl1.der"))
            .arg("-CAfile")
            .arg(&ca.cert_pem);
        c
    })
    .await;
    assert!(ok && out.contains("verify OK"), "{out}");
    let (ok, out) = verify(bad.cert_pem.clone(), ca.path("crl1.der")).await;
    assert!(ok, "not revoked yet: {out}");

    l.state
        .revoke(
            bad.record.serial.clone(),
            RevocationReason::CessationOfOperation,
            Utc::now(),
            "test".into(),
        )
        .await
        .unwrap();
    // The CRL is rebuilt by the maintenance task right after the revocation.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while l.state.crls().current().unwrap().number == first {
        assert!(
            Instant::now() < deadline,
            "CRL not rebuilt after revocation"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (ok, _) = fetch("/crl", ca.path("crl2.der")).await;
    assert!(ok);
    let (ok, out) = verify(bad.cert_pem.clone(), ca.path("crl2.der")).await;
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    let (ok, out) = verify(good.cert_pem.clone(), ca.path("crl2.der")).await;
    assert!(ok && out.contains(": OK"), "{out}");
    l.stop().await;
}

fn nginx_server_block(
    port: u16,
    server: &status_support::fixture::Leaf,
    client_ca: &std::path::Path,
    ocsp: &str,
    responder: &str,
) -> String {
    format!(
        "  server {{\n    listen 127.0.0.1:{port} ssl;\n    server_name server.test;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    \
         ssl_client_certificate {};\n    ssl_verify_client on;\n    ssl_verify_depth 3;\n    ssl_ocsp {ocsp};\n    ssl_ocsp_responder {responder};\n    \
         location / {{ return 200 \"hello $ssl_client_s_dn\\n\"; }}\n  }}",
        server.cert_pem.display(),
        server.key_pem.display(),
        client_ca.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_ssl_ocsp_leaf_accepts_good_and_rejects_revoked() {
    let ca = TestCa::new("Test Issuing CA");
    let server = ca.issue_leaf("server");
    let client = ca.issue_leaf("client");
    let l = start(&ca, Options::default()).await;
    let port = free_port();
    let nginx = Nginx::start(
        port,
        &nginx_server_block(port, &server, &ca.cert_pem, "leaf", &l.url("/ocsp")),
    );

    let (code, out) = curl_client_cert(
        port,
        "server.test",
        &ca.cert_pem,
        &client.cert_pem,
        &client.key_pem,
    )
    .await;
    assert_eq!(
        code,
        200,
        "good client certificate refused: {out}\n{}",
        nginx.error_log()
    );
    assert!(out.contains("hello CN=client"), "{out}");

    l.state
        .revoke(
            client.record.serial.clone(),
            RevocationReason::KeyCompromise,
            Utc::now(),
            "test".into(),
        )
        .await
        .unwrap();
    let (code, out) = curl_client_cert(
        port,
        "server.test",
        &ca.cert_pem,
        &client.cert_pem,
        &client.key_pem,
    )
    .await;
    assert_ne!(code, 200, "revoked client certificate accepted: {out}");
    let log = nginx.error_log();
    assert!(
        log.contains("revoked"),
        "nginx should log the OCSP verdict: {log}"
    );
    l.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_ssl_ocsp_on_checks_the_whole_chain_with_a_root_signed_file() {
    let root = TestCa::new("Test Root CA");
    let inter = root.intermediate("Test Issuing CA");
    let server = inter.issue_leaf("server");
    let client = inter.issue_leaf("client");
    // The intermediate's status, signed by the root in a ceremony, loaded from a file.
    let inter_serial = {
        use der::Decode;
        x509_cert::Certificate::from_der(&inter.cert_der)
            .unwrap()
            .tbs_certificate
            .serial_number
            .as_bytes()
            .to_vec()
    };
    let now = Utc::now();
    let file = inter.path("intermediate-ocsp.der");
    let der = sign_response(
        root.signer.as_ref(),
        None,
        &root.cert_der,
        &[(inter_serial.clone(), CertStatus::Good)],
        now,
        now + Duration::days(7),
        None,
    )
    .unwrap();
    std::fs::write(&file, der).unwrap();
    let l = start(
        &inter,
        Options {
            external: vec![ExternalResponse {
                path: file.clone(),
                signer_cert_der: root.cert_der.clone(),
            }],
            ..Default::default()
        },
    )
    .await;

    // nginx trusts the root only; the client sends leaf + intermediate; the server's chain too.
    let client_chain = inter.path("client-chain.pem");
    let server_chain = inter.path("server-chain.pem");
    for (leaf, chain) in [(&client, &client_chain), (&server, &server_chain)] {
        let mut pem = std::fs::read_to_string(&leaf.cert_pem).unwrap();
        pem.push_str(&std::fs::read_to_string(&inter.cert_pem).unwrap());
        std::fs::write(chain, pem).unwrap();
    }
    let server_view = status_support::fixture::Leaf {
        record: server.record.clone(),
        cert_pem: server_chain.clone(),
        key_pem: server.key_pem.clone(),
    };
    let port = free_port();
    let nginx = Nginx::start(
        port,
        &nginx_server_block(port, &server_view, &root.cert_pem, "on", &l.url("/ocsp")),
    );

    let (code, out) = curl_client_cert(
        port,
        "server.test",
        &root.cert_pem,
        &client_chain,
        &client.key_pem,
    )
    .await;
    assert_eq!(
        code,
        200,
        "good chain refused: {out}\n{}",
        nginx.error_log()
    );

    // Revoking the leaf is seen through the responder.
    l.state
        .revoke(
            client.record.serial.clone(),
            RevocationReason::Superseded,
            Utc::now(),
            "test".into(),
        )
        .await
        .unwrap();
    let (code, out) = curl_client_cert(
        port,
        "server.test",
        &root.cert_pem,
        &client_chain,
        &client.key_pem,
    )
    .await;
    assert_ne!(code, 200, "revoked leaf accepted: {out}");
    assert_eq!(
        nginx.error_log().matches("certificate revoked").count(),
        1,
        "{}",
        nginx.error_log()
    );

    // A fresh leaf is good again; then the next ceremony revokes the intermediate, and the
    // refreshed file makes nginx refuse the whole chain.
    // It is issued together with another one, queued first: both share one response signed
    // at issuance (a group) in which client2's SingleResponses come second, and nginx must
    // find them.
    let client2 = inter.issue_leaf("client2");
    let client3 = inter.issue_leaf("client3");
    let state = l.state.clone();
    let recs = [client3.record.clone(), client2.record.clone()];
    tokio::task::spawn_blocking(move || {
        for rec in &recs {
            let _queued = state.responder().enqueue_issued(rec);
        }
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let answer = loop {
        if let Some(a) = l.state.responder().cached(&client2.record.serial) {
            break a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no response signed at issuance"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(
        ca_core::ocsp::parse_response(&answer.der)
            .unwrap()
            .singles()
            .len(),
        4,
        "client2 and client3 in one response (SHA-1 and SHA-256 CertIDs each)"
    );
    let chain2 = inter.path("client2-chain.pem");
    let mut pem = std::fs::read_to_string(&client2.cert_pem).unwrap();
    pem.push_str(&std::fs::read_to_string(&inter.cert_pem).unwrap());
    std::fs::write(&chain2, pem).unwrap();
    let (code, out) = curl_client_cert(
        port,
        "server.test",
        &root.cert_pem,
        &chain2,
        &client2.key_pem,
    )
    .await;
    assert_eq!(code, 200, "{out}\n{}", nginx.error_log());

    std::thread::sleep(std::time::Duration::from_millis(1100)); // distinct file mtime
    let revoked = CertStatus::Revoked {
        at: ca_core::clock::truncate(Utc::now()),
        reason: RevocationReason::CaCompromise,
    };
    let der = sign_response(
        root.signer.as_ref(),
        None,
        &root.cert_der,
        &[(inter_serial, revoked)],
        Utc::now(),
        Utc::now() + Duration::days(7),
        None,
    )
    .unwrap();
    std::fs::write(&file, der).unwrap();
    let state = l.state.clone();
    tokio::task::spawn_blocking(move || state.maintain_blocking())
        .await
        .unwrap();
    let (code, out) = curl_client_cert(
        port,
        "server.test",
        &root.cert_pem,
        &chain2,
        &client2.key_pem,
    )
    .await;
    assert_ne!(code, 200, "revoked intermediate accepted: {out}");
    assert_eq!(
        nginx.error_log().matches("certificate revoked").count(),
        2,
        "{}",
        nginx.error_log()
    );
    l.stop().await;
}

/// `openssl ocsp -no_nonce` about `leaf` against the listener.
async fn ocsp_no_nonce(
    l: &status_support::Listener,
    ca: &TestCa,
    leaf: &status_support::fixture::Leaf,
) -> (bool, String) {
    openssl_ocsp(
        l,
        &ca.cert_pem,
        &leaf.cert_pem,
        &ca.cert_pem,
        &["-no_nonce"],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsm_outage_keeps_presigned_answers_fails_closed_on_revocation_and_heals() {
    let ca = TestCa::new("Test Issuing CA");
    let good = ca.issue_leaf("steady");
    let first = ca.issue_leaf("leaked1");
    let second = ca.issue_leaf("leaked2");
    let l = start(&ca, Options::default()).await;
    let (ok, out) = ocsp_no_nonce(&l, &ca, &first).await;
    assert!(ok && out.contains("leaked1.pem: good"), "{out}");
    let crl_before = l.state.crls().current().unwrap().number;
    let revoke = |leaf: &status_support::fixture::Leaf| {
        l.state.revoke(
            leaf.record.serial.clone(),
            RevocationReason::KeyCompromise,
            Utc::now(),
            "test".into(),
        )
    };

    // The HSM refuses the CA's login from now on (PIN changed, sessions logged out).
    ca.token.inject_login_refusal().unwrap();

    // Pre-signed answers need no HSM: OCSP stays up.
    let (ok, out) = ocsp_no_nonce(&l, &ca, &good).await;
    assert!(
        ok && out.contains("Response verify OK") && out.contains("steady.pem: good"),
        "{out}"
    );

    // Revocations now are stored, but their OCSP answers cannot be signed: the calls fail,
    // and the old `good` answers are withdrawn (tryLater), never served again.
    for leaf in [&first, &second] {
        let err = revoke(leaf)
            .await
            .expect_err("revocation acknowledged without its OCSP answer");
        assert!(
            matches!(&err, ca_core::Error::RevocationPending { source, .. }
                if matches!(**source, ca_core::Error::Hsm { .. } | ca_core::Error::BadPin { .. })),
            "{err:?}"
        );
        assert!(ca
            .store
            .get_cert(&leaf.record.serial)
            .unwrap()
            .unwrap()
            .is_revoked());
        let (_, out) = ocsp_no_nonce(&l, &ca, leaf).await;
        assert!(
            out.contains("trylater") && !out.contains(": good"),
            "a revoked certificate must not be answered good: {out}"
        );
    }
    assert_eq!(l.state.responder().resign_backlog(), 2);
    // The CRL rebuild fails too: the previous CRL is still served, marked stale, and a
    // maintenance pass during the outage changes nothing.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !l.state.crls().is_stale() {
        assert!(Instant::now() < deadline, "CRL not marked stale");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let state = l.state.clone();
    tokio::task::spawn_blocking(move || state.maintain_blocking())
        .await
        .unwrap();
    assert_eq!(l.state.crls().current().unwrap().number, crl_before);
    assert!(l.state.crls().is_stale());
    assert_eq!(l.state.responder().resign_backlog(), 2);

    // The HSM is back. The operator repeats the first revocation: `already revoked`, and its
    // OCSP answer is signed at once.
    ca.token.end_login_refusal().unwrap();
    // The token refused the PIN: the CA does not try it again by itself (a real HSM would
    // lock it); the operator who restored the token's PIN says so.
    ca.signer.token().retry_login();
    let err = revoke(&first).await.expect_err("revoked twice");
    assert!(
        matches!(err, ca_core::Error::AlreadyRevoked { .. }),
        "{err:?}"
    );
    assert_eq!(l.state.responder().resign_backlog(), 1);
    let (ok, out) = ocsp_no_nonce(&l, &ca, &first).await;
    assert!(
        ok && out.contains("Response verify OK")
            && out.contains("leaked1.pem: revoked")
            && out.contains("Reason: keyCompromise"),
        "{out}"
    );
    // The next maintenance pass signs the rest and a CRL with both.
    let state = l.state.clone();
    tokio::task::spawn_blocking(move || state.maintain_blocking())
        .await
        .unwrap();
    assert_eq!(l.state.responder().resign_backlog(), 0);
    assert!(!l.state.crls().is_stale());
    let crl = l.state.crls().current().unwrap();
    assert!(crl.number > crl_before && crl.entries == 2, "{crl:?}");
    let (ok, out) = ocsp_no_nonce(&l, &ca, &second).await;
    assert!(
        ok && out.contains("Response verify OK") && out.contains("leaked2.pem: revoked"),
        "{out}"
    );
    l.stop().await;
}
