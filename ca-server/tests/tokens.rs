//! Enrollment tokens against a running server (real SoftHSM, sled, TLS on loopback): a token is
//! not burned by an issuance that failed after it was checked, and generated tokens survive
//! being pasted after `--token`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ca_core::store::prelude::*;
use ca_server::api::types::*;
use common::*;
use testkit::Faults;

fn enroll_request(token: &str, cn: &str, sans: &[&str]) -> EnrollRequest {
    let (_, csr) = csr(cn, sans);
    EnrollRequest {
        token: token.into(),
        csr,
    }
}

/// Attack/fault: the HSM refuses the CA (PIN changed behind its back, sessions logged out)
/// between the token check and the signature. Without the release the token is marked used and
/// the holder is locked out for good; with it, the same token enrolls once the HSM is back,
/// exactly once even when used concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_survives_an_hsm_outage_during_issuance_and_is_still_single_use() {
    let mut srv = TestServer::start().await;
    let token = srv
        .token("outage.test", &["dns:outage.test"], "client")
        .await;
    let hash = ca_server::service::token_hash(&token);
    let certs_before = srv.cert_count();

    srv.pki.token.inject_login_refusal().unwrap();
    for _ in 0..3 {
        let err = srv
            .anon()
            .post_json::<_, IssuedResponse>(
                "/v1/enroll",
                &enroll_request(&token, "outage.test", &["dns:outage.test"]),
            )
            .await
            .expect_err("issued while the HSM refuses the CA");
        assert_eq!(err.code(), Some("hsm_unavailable"), "{err}");
        let stored = srv.pki.store.get_token(&hash).unwrap().unwrap();
        assert!(
            stored.used_at.is_none(),
            "the failed issuance burned the token"
        );
    }
    // EST simpleenroll takes the same path.
    let (_, pem_csr) = csr("outage.test", &["dns:outage.test"]);
    let b64: String = pem_csr
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let auth = format!("Bearer {token}");
    let resp = srv
        .anon()
        .raw(
            http::Method::POST,
            "/.well-known/est/simpleenroll",
            Some(("application/pkcs10", b64.into_bytes())),
            &[("authorization", auth.as_str())],
        )
        .await
        .unwrap();
    assert_eq!(resp.status.as_u16(), 503, "{}", resp.error());
    assert_eq!(resp.error().code(), Some("hsm_unavailable"));
    assert!(srv
        .pki
        .store
        .get_token(&hash)
        .unwrap()
        .unwrap()
        .used_at
        .is_none());
    assert_eq!(srv.cert_count(), certs_before);
    let events = srv.pki.store.audit_events(1, usize::MAX).unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.event.action == "token.release" && e.event.result == "ok"),
        "release not audited"
    );
    assert!(events
        .iter()
        .any(|e| e.event.action == "enroll" && e.event.result == "hsm_unavailable"));

    srv.pki.token.end_login_refusal().unwrap();
    // A PIN the token refused is not tried again by itself (a real HSM would lock it): tell
    // the CA the PIN is good again, as an operator's restart would.
    srv.pki.issuing_signer.token().retry_login();
    // Eight concurrent uses of the same token once the HSM is back: exactly one certificate.
    let results = futures_join_all((0..8).map(|_| {
        let (token, url, root) = (token.clone(), srv.url.clone(), srv.root_pem.clone());
        async move {
            ca_server::client::ApiClient::new(&url, root.as_bytes(), None)
                .unwrap()
                .post_json::<_, IssuedResponse>(
                    "/v1/enroll",
                    &enroll_request(&token, "outage.test", &["dns:outage.test"]),
                )
                .await
        }
    }))
    .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Some("token_rejected"), "{r}");
    }
    assert_eq!(srv.cert_count(), certs_before + 1);
    assert!(srv
        .pki
        .store
        .get_token(&hash)
        .unwrap()
        .unwrap()
        .used_at
        .is_some());
    assert_eq!(
        srv.pki.store.verify_audit().unwrap() as usize,
        srv.audit_count()
    );
    srv.stop().await;
}

/// Run futures concurrently on the runtime and collect their results in order.
async fn futures_join_all<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// One token in 64 used to start with `-` (base64url), which `ca-agent enroll --token <it>`
/// took for an option. Generated tokens now never do, and use no shell-special character.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_tokens_never_start_with_a_dash_and_are_shell_safe() {
    let mut srv = TestServer::start().await;
    let admin = srv.client(Some(&srv.operator));
    let mut firsts = std::collections::BTreeSet::new();
    for i in 0..150 {
        let resp: TokenCreateResponse = admin
            .post_json(
                "/v1/admin/tokens",
                &TokenCreateRequest {
                    common_name: Some(format!("t{i}.test")),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let t = &resp.token;
        assert!(!t.starts_with('-'), "{t}");
        assert!(
            t.bytes().all(|b| b.is_ascii_alphanumeric()),
            "token with a shell-special character: {t}"
        );
        assert!(t.len() >= 43, "{t}");
        firsts.insert(t.as_bytes()[0]);
    }
    // Not a constant prefix: the first character is random too.
    assert!(firsts.len() > 5, "{firsts:?}");
    srv.stop().await;
}
