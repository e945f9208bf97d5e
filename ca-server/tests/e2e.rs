//! End to end over real loopback TLS with the Rust client (tokio-rustls + hyper): enrollment,
//! renewal, revocation, expiry, token replay, roles, audit, rate limits, graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ca_core::store::prelude::*;
use ca_server::api::types::*;
use ca_server::client::ClientError;
use common::{csr, serial_of, Identity, Options, TestServer};
use http::{Method, StatusCode};
use testkit::Faults;

fn code(e: &ClientError) -> &str {
    e.code().unwrap_or("(no code)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_renew_revoke_then_renewal_refused() {
    let mut srv = TestServer::start().await;
    let token = srv.token("web1.test", &["dns:web1.test"], "client").await;
    let (id1, issued1) = srv.enroll(&token, "web1.test", &["dns:web1.test"]).await;
    assert_eq!(issued1.serial, serial_of(&issued1.certificate));
    assert!(issued1.chain.contains("BEGIN CERTIFICATE"));

    // Renew over mTLS with a new key.
    let (key2, csr2) = csr("web1.test", &[]);
    let issued2: IssuedResponse = srv
        .client(Some(&id1))
        .post_json("/v1/renew", &RenewRequest { csr: csr2 })
        .await
        .expect("renewal");
    assert_ne!(issued2.serial, issued1.serial);
    let rec = srv
        .pki
        .store
        .get_cert(&hex::decode(&issued2.serial).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(rec.identity, "web1.test");
    assert_eq!(rec.sans, vec!["dns:web1.test".to_string()]);
    assert_eq!(rec.profile, "client");
    let id2 = Identity {
        cert: issued2.certificate.clone(),
        key: key2,
    };

    // Revoke the renewed certificate; renewal with it is refused.
    let rev: RevokeResponse = srv
        .client(Some(&srv.operator))
        .post_json(
            "/v1/admin/revoke",
            &RevokeRequest {
                serial: issued2.serial.clone(),
                reason: Some("keyCompromise".into()),
                lineage: false,
            },
        )
        .await
        .expect("revoke");
    assert_eq!(rev.reason, "keyCompromise");
    let (_, csr3) = csr("web1.test", &[]);
    let err = srv
        .client(Some(&id2))
        .post_json::<_, IssuedResponse>("/v1/renew", &RenewRequest { csr: csr3 })
        .await
        .expect_err("revoked cert must not renew");
    assert_eq!(code(&err), "cert_revoked");

    // Audit trail: enroll, renew, revoke, and the refusal.
    let events = srv.pki.store.audit_events(1, 1000).unwrap();
    let has = |action: &str, result: &str| {
        events
            .iter()
            .any(|e| e.event.action == action && e.event.result == result)
    };
    assert!(has("token.create", "ok"));
    assert!(has("enroll", "ok"));
    assert!(has("renew", "ok"));
    assert!(has("revoke", "ok"));
    assert!(has("auth.fail", "cert_revoked"));
    assert_eq!(srv.pki.store.verify_audit().unwrap() as usize, events.len());

    // Metrics count what happened.
    let metrics = reqwest_like_get(&srv.status_url, "/metrics").await;
    assert!(
        metrics.contains("ca_certificates_issued_total{profile=\"client\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("ca_certificates_renewed_total{profile=\"client\"} 1"));
    assert!(metrics.contains("ca_certificates_revoked_total{reason=\"keyCompromise\"} 1"));
    assert!(metrics.contains("ca_api_failures_total{code=\"cert_revoked\"} 1"));
    assert!(metrics.contains("ca_hsm_sign_seconds_count"));
    srv.stop().await;
}

/// Plain HTTP GET on the status listener with hyper.
async fn reqwest_like_get(base: &str, path: &str) -> String {
    use http_body_util::{BodyExt, Empty};
    let addr = base.trim_start_matches("http://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", addr)
        .body(Empty::<hyper::body::Bytes>::new())
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let mut srv = TestServer::with(common::Options {
        status: true,
        ..Default::default()
    })
    .await;
    assert_eq!(reqwest_like_get(&srv.status_url, "/healthz").await, "ok\n");
    assert_eq!(
        reqwest_like_get(&srv.status_url, "/readyz").await,
        "ready\n"
    );
    let api_ready = || async {
        srv.anon()
            .raw(Method::GET, "/readyz", None, &[])
            .await
            .unwrap()
    };
    assert_eq!(api_ready().await.status, StatusCode::OK);
    // The HSM refuses the CA: the API is not ready (it cannot issue), the status listener is
    // (it serves pre-signed OCSP answers and the CRL without the HSM), so a load balancer keeps
    // the responder in rotation. Both are ready again once the HSM is back.
    // Readiness is cached for a few seconds: poll. The anonymous caller learns nothing more
    // than "not ready".
    srv.pki.token.inject_login_refusal().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let r = loop {
        let r = api_ready().await;
        if r.status != StatusCode::OK {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "still ready");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(String::from_utf8_lossy(&r.body), "not ready\n");
    assert_eq!(
        reqwest_like_get(&srv.status_url, "/readyz").await,
        "ready\n"
    );
    srv.pki.token.end_login_refusal().unwrap();
    // The refused PIN is not tried again by itself; the operator says the PIN is back.
    srv.pki.issuing_signer.token().retry_login();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while api_ready().await.status != StatusCode::OK {
        assert!(std::time::Instant::now() < deadline, "not ready again");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let chain: ChainResponse = srv.anon().get_json("/v1/chain").await.unwrap();
    assert_eq!(
        chain.root_fingerprint,
        ca_core::signer::sha256_hex(&srv.pki.root_der)
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_cannot_renew() {
    let mut srv = TestServer::start().await;
    let token = srv.token("short.test", &[], "short").await;
    let (id, issued) = srv.enroll(&token, "short.test", &[]).await;
    let nb = chrono::DateTime::parse_from_rfc3339(&issued.not_before).unwrap();
    let na = chrono::DateTime::parse_from_rfc3339(&issued.not_after).unwrap();
    assert_eq!((na - nb).num_seconds(), 2);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let (_, c) = csr("short.test", &[]);
    let err = srv
        .client(Some(&id))
        .post_json::<_, IssuedResponse>("/v1/renew", &RenewRequest { csr: c })
        .await
        .expect_err("expired");
    assert_eq!(code(&err), "cert_expired");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_replay_refused_and_concurrent_use_has_one_winner() {
    let mut srv = TestServer::start().await;
    let token = srv.token("once.test", &[], "client").await;
    srv.enroll(&token, "once.test", &[]).await;
    let (_, c) = csr("once.test", &[]);
    let err = srv
        .anon()
        .post_json::<_, IssuedResponse>(
            "/v1/enroll",
            &EnrollRequest {
                token: token.clone(),
                csr: c,
            },
        )
        .await
        .expect_err("replay");
    assert_eq!(code(&err), "token_rejected");
    assert!(err.to_string().contains("401"));

    // 8 concurrent attempts with one fresh token: exactly one certificate.
    let token = srv.token("race.test", &[], "client").await;
    let before = srv.cert_count();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = srv.anon();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let (_, c) = csr("race.test", &[]);
            client
                .post_json::<_, IssuedResponse>("/v1/enroll", &EnrollRequest { token, csr: c })
                .await
        }));
    }
    let mut ok = 0;
    let mut rejected = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(code(&e), "token_rejected", "{e}");
                rejected += 1;
            }
        }
    }
    assert_eq!((ok, rejected), (1, 7));
    assert_eq!(srv.cert_count(), before + 1);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_outside_binding_refused_token_kept() {
    let mut srv = TestServer::start().await;
    let token = srv.token("bound.test", &["dns:bound.test"], "client").await;
    let before_certs = srv.cert_count();
    let before_audit = srv.audit_count();
    let (_, c) = csr("bound.test", &["dns:bound.test", "dns:evil.test"]);
    let err = srv
        .anon()
        .post_json::<_, IssuedResponse>(
            "/v1/enroll",
            &EnrollRequest {
                token: token.clone(),
                csr: c,
            },
        )
        .await
        .expect_err("extra name");
    assert_eq!(code(&err), "name_not_allowed");
    assert_eq!(srv.cert_count(), before_certs);
    assert_eq!(srv.audit_count(), before_audit + 1);
    let last = srv.pki.store.audit_events(1, 1000).unwrap().pop().unwrap();
    assert_eq!(
        (last.event.action.as_str(), last.event.result.as_str()),
        ("enroll", "name_not_allowed")
    );
    // The refused request did not use up the token.
    srv.enroll(&token, "bound.test", &["dns:bound.test"]).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_cannot_add_names_or_reuse_the_key() {
    let mut srv = TestServer::start().await;
    let token = srv.token("r.test", &["dns:r.test"], "client").await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let c = common::csr_with_key(&key, "r.test", &["dns:r.test"]);
    let issued: IssuedResponse = srv
        .anon()
        .post_json(
            "/v1/enroll",
            &EnrollRequest {
                token,
                csr: c.clone(),
            },
        )
        .await
        .unwrap();
    let id = Identity {
        cert: issued.certificate,
        key: key.serialize_pem(),
    };
    let err = srv
        .client(Some(&id))
        .post_json::<_, IssuedResponse>("/v1/renew", &RenewRequest { csr: c })
        .await
        .expect_err("same key");
    assert_eq!(code(&err), "key_reuse");
    let (_, c) = csr("r.test", &["dns:r.test", "dns:more.test"]);
    let err = srv
        .client(Some(&id))
        .post_json::<_, IssuedResponse>("/v1/renew", &RenewRequest { csr: c })
        .await
        .expect_err("added name");
    assert_eq!(code(&err), "name_not_allowed");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cert_from_another_ca_is_refused_and_audited() {
    let mut srv = TestServer::start().await;
    // A CA of our own making, and a client certificate from it.
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["intruder.test".to_string()]).unwrap();
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let _ = ca_cert;
    let foreign = Identity {
        cert: leaf.pem(),
        key: leaf_key.serialize_pem(),
    };
    let before = srv.audit_count();
    let (_, c) = csr("intruder.test", &[]);
    let err = srv
        .client(Some(&foreign))
        .post_json::<_, IssuedResponse>("/v1/renew", &RenewRequest { csr: c })
        .await
        .expect_err("foreign CA");
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    let err = srv
        .client(Some(&foreign))
        .get_json::<CertsResponse>("/v1/admin/certs")
        .await
        .expect_err("foreign CA");
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    // The handshake failures identify nobody: counted in the connection task (poll for it),
    // not audited one by one, and summarised at shutdown.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while srv.state().unauthenticated.pending() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "handshake failures not counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(srv.audit_count(), before);
    srv.stop().await;
    let events = srv.pki.store.audit_events(before as u64 + 1, 1000).unwrap();
    let summary = events
        .iter()
        .find(|e| e.event.action == "auth.fail.summary" && e.event.object == "tls_client_cert")
        .expect("summary at shutdown");
    assert_eq!(summary.event.detail["count"], 2);
    assert_eq!(summary.event.detail["codes"]["cert_unknown"], 2);
    assert_eq!(
        summary.event.detail["top_addresses"][0]["address"],
        "127.0.0.1"
    );
    srv.stop().await;
}

/// Which routes each role reaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_reaches_exactly_its_routes() {
    let mut srv = TestServer::start().await;
    // A plain (non-admin) client certificate, valid for renewal only. Its SAN asks for a
    // role URI, which counts for nothing outside the `_admin` profile.
    let t = srv
        .token(
            "leaf.test",
            &["uri:spiffe://test/urn:ca:role:security-officer"],
            "client",
        )
        .await;
    let (leaf, _) = srv
        .enroll(
            &t,
            "leaf.test",
            &["uri:spiffe://test/urn:ca:role:security-officer"],
        )
        .await;
    // Target certificates to revoke.
    let mut victims = Vec::new();
    for i in 0..3 {
        let t = srv.token(&format!("v{i}.test"), &[], "client").await;
        let (_, issued) = srv.enroll(&t, &format!("v{i}.test"), &[]).await;
        victims.push(issued.serial);
    }
    let who: Vec<(&str, Option<Identity>)> = vec![
        ("security-officer", Some(srv.so.clone())),
        ("operator", Some(srv.operator.clone())),
        ("auditor", Some(srv.auditor.clone())),
        ("leaf", Some(leaf)),
        ("none", None),
    ];
    // (route, allowed for) — security-officer, operator, auditor, leaf, none.
    let mut victim = victims.into_iter();
    for (name, id) in who {
        let client = srv.client(id.as_ref());
        let before = srv.audit_count();
        let pending_before = srv.state().unauthenticated.pending();
        let token = client
            .post_json::<_, TokenCreateResponse>(
                "/v1/admin/tokens",
                &TokenCreateRequest {
                    common_name: Some("x.test".into()),
                    ..Default::default()
                },
            )
            .await;
        let admin_token = client
            .post_json::<_, TokenCreateResponse>(
                "/v1/admin/tokens",
                &TokenCreateRequest {
                    common_name: Some("new-admin".into()),
                    sans: vec!["uri:urn:ca:role:auditor".into()],
                    profile: Some("_admin".into()),
                    ttl: None,
                },
            )
            .await;
        let serial = match name {
            "security-officer" | "operator" => victim.next().unwrap(),
            _ => "00aa".into(),
        };
        let revoke = client
            .post_json::<_, RevokeResponse>(
                "/v1/admin/revoke",
                &RevokeRequest {
                    serial,
                    reason: None,
                    lineage: false,
                },
            )
            .await;
        let certs = client.get_json::<CertsResponse>("/v1/admin/certs").await;
        let audit = client.get_json::<AuditResponse>("/v1/admin/audit").await;
        let verify = client
            .get_json::<AuditVerifyResponse>("/v1/admin/audit/verify")
            .await;
        let got: Vec<String> = [
            token.map(|_| ()),
            admin_token.map(|_| ()),
            revoke.map(|_| ()),
            certs.map(|_| ()),
            audit.map(|_| ()),
            verify.map(|_| ()),
        ]
        .into_iter()
        .map(|r| match r {
            Ok(()) => "ok".to_string(),
            Err(e) => code(&e).to_string(),
        })
        .collect();
        let f = "forbidden";
        let expected: Vec<&str> = match name {
            "security-officer" => vec!["ok", "ok", "ok", "ok", "ok", "ok"],
            "operator" => vec!["ok", f, "ok", f, f, f],
            "auditor" => vec![f, f, f, "ok", "ok", "ok"],
            "leaf" => vec![f, f, f, f, f, f],
            _ => vec!["client_cert_required"; 6],
        };
        assert_eq!(got, expected, "routes for {name}");
        // Every refusal of a certificate holder is in the audit log, one event each; the
        // refusals of a caller without a certificate are counted for the next summary.
        let refusals = expected.iter().filter(|e| **e != "ok").count();
        let anonymous = srv.state().unauthenticated.pending() - pending_before;
        let (refusals, anonymous_expected) = if name == "none" {
            (0, refusals as u64)
        } else {
            (refusals, 0)
        };
        assert_eq!(
            anonymous, anonymous_expected,
            "summarised refusals for {name}"
        );
        let events = srv.pki.store.audit_events(before as u64 + 1, 1000).unwrap();
        let failures = events
            .iter()
            .filter(|e| e.event.action == "auth.fail")
            .count();
        assert_eq!(
            failures, refusals,
            "audited refusals for {name}: {events:#?}"
        );
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_lists_and_filters_certificates() {
    let mut srv = TestServer::start().await;
    let t = srv.token("list.test", &[], "client").await;
    let (_, issued) = srv.enroll(&t, "list.test", &[]).await;
    let auditor = srv.client(Some(&srv.auditor));
    let r: CertsResponse = auditor
        .get_json("/v1/admin/certs?identity=list.test")
        .await
        .unwrap();
    assert_eq!(r.certs.len(), 1);
    assert_eq!(r.certs[0].serial, issued.serial);
    assert_eq!(r.certs[0].status, "valid");
    let r: CertsResponse = auditor
        .get_json("/v1/admin/certs?status=valid&expiring_within=48h")
        .await
        .unwrap();
    assert!(r.certs.iter().any(|c| c.serial == issued.serial));
    let r: CertsResponse = auditor
        .get_json("/v1/admin/certs?status=revoked")
        .await
        .unwrap();
    assert!(r.certs.is_empty());
    let err = auditor
        .get_json::<CertsResponse>("/v1/admin/certs?status=bogus")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "bad_request");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_detects_tampering() {
    let mut srv = TestServer::start().await;
    let t = srv.token("a.test", &[], "client").await;
    srv.enroll(&t, "a.test", &[]).await;
    let auditor = srv.client(Some(&srv.auditor));
    let ok: AuditVerifyResponse = auditor.get_json("/v1/admin/audit/verify").await.unwrap();
    assert!(ok.ok && ok.events >= 3);
    srv.pki
        .store
        .tamper_audit_for_test(2, |v| v["actor"] = serde_json::json!("mallory"))
        .unwrap();
    let err = auditor
        .get_json::<AuditVerifyResponse>("/v1/admin/audit/verify")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "audit_tampered");
    assert!(err.to_string().contains("sequence 2"), "{err}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after() {
    let mut opts = Options::default();
    opts.limits.enroll.per_second = 1;
    opts.limits.enroll.burst = 2;
    let mut srv = TestServer::with(opts).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let r = srv
            .anon()
            .raw(
                Method::POST,
                "/v1/enroll",
                Some(("application/json", b"{}".to_vec())),
                &[],
            )
            .await
            .unwrap();
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            retry_after = r.headers.get("retry-after").cloned();
            assert_eq!(r.error().code(), Some("rate_limited"));
        }
        statuses.push(r.status.as_u16());
    }
    assert_eq!(&statuses[..2], &[400, 400]);
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    let secs: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!(secs >= 1);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_loses_nothing_acknowledged() {
    let mut srv = TestServer::start().await;
    let mut tokens = Vec::new();
    for i in 0..12 {
        tokens.push((i, srv.token(&format!("g{i}.test"), &[], "client").await));
    }
    let mut tasks = Vec::new();
    for (i, token) in tokens {
        let client = srv.anon();
        tasks.push(tokio::spawn(async move {
            let (_, c) = csr(&format!("g{i}.test"), &[]);
            client
                .post_json::<_, IssuedResponse>("/v1/enroll", &EnrollRequest { token, csr: c })
                .await
        }));
    }
    // Shut down while requests are in flight.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    srv.stop().await;
    let mut acknowledged = Vec::new();
    for t in tasks {
        if let Ok(issued) = t.await.unwrap() {
            acknowledged.push(issued.serial);
        }
    }
    for serial in &acknowledged {
        let rec = srv
            .pki
            .store
            .get_cert(&hex::decode(serial).unwrap())
            .unwrap();
        assert!(
            rec.is_some(),
            "acknowledged {serial} missing from the store"
        );
    }
    // After shutdown the port is closed.
    assert!(srv
        .anon()
        .get_json::<ChainResponse>("/v1/chain")
        .await
        .is_err());
}

/// A request in flight when shutdown starts (headers and half the body sent) still completes,
/// and its certificate is in the store; new connections are refused meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_finishes_during_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut srv = TestServer::start().await;
    let token = srv.token("late.test", &[], "client").await;
    let (_, c) = csr("late.test", &[]);
    let body = serde_json::to_vec(&EnrollRequest { token, csr: c }).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            srv.pki.root_der.clone(),
        ))
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(ca_server::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let addr = srv.url.trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let head = format!(
        "POST /v1/enroll HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    tls.write_all(first).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let running = srv.running.take().unwrap();
    let store = srv.pki.store.clone();
    let shutdown = tokio::spawn(running.shutdown());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // The listener is closed: a new connection fails.
    assert!(srv
        .anon()
        .get_json::<ChainResponse>("/v1/chain")
        .await
        .is_err());

    tls.write_all(rest).await.unwrap();
    tls.flush().await.unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        tls.read_to_end(&mut resp),
    )
    .await;
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let json = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let json = &json[json.find('{').unwrap()..=json.rfind('}').unwrap()];
    let issued: IssuedResponse = serde_json::from_str(json).unwrap();
    shutdown.await.unwrap();
    assert!(store
        .get_cert(&hex::decode(&issued.serial).unwrap())
        .unwrap()
        .is_some());
}
