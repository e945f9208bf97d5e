//! Anonymous `/readyz` probes never make the HSM work: against a running server whose PKCS#11
//! module is OpenSC's `pkcs11-spy` in front of SoftHSM, every call the server makes is logged,
//! and the test counts them. N probes cause no signature and O(1) logins; with the token's
//! PIN changed behind the server's back, N probes cause at most one `C_Login` (a refused PIN is
//! never tried again by itself), and the caller learns only "not ready".
//!
//! One test function in its own file: the spy reads `PKCS11SPY` / `PKCS11SPY_OUTPUT` from the
//! environment, which is set before anything else runs in this process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod spy_support;

use ca_core::clock::SystemClock;
use ca_core::issuance::IssuerUrls;
use ca_core::profile::Span;
use ca_core::signer::KeyAlgorithm;
use ca_core::store::Store;
use ca_server::client::ApiClient;
use ca_server::config::{Limits, TokenSection};
use ca_server::metrics::Metrics;
use ca_server::server::{self, ServerParts};
use http::{Method, StatusCode};
use spy_support::{calls, spy_module};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::pki::{test_profiles, TestPki};
use testkit::Faults;
use tokio::net::TcpListener;

struct Counts {
    sign: usize,
    sign_init: usize,
    login: usize,
}

fn counts(log: &Path) -> Counts {
    Counts {
        sign: calls(log, "C_Sign"),
        sign_init: calls(log, "C_SignInit"),
        login: calls(log, "C_Login"),
    }
}

/// `n` probes at once.
async fn probes(client: &Arc<ApiClient>, n: usize) -> Vec<(StatusCode, String)> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let c = client.clone();
        set.spawn(async move { probe(&c).await });
    }
    set.join_all().await
}

async fn probe(client: &ApiClient) -> (StatusCode, String) {
    let r = client.raw(Method::GET, "/readyz", None, &[]).await.unwrap();
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

async fn metric(client: &ApiClient, name: &str) -> f64 {
    let r = client
        .raw(Method::GET, "/metrics", None, &[])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&r.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

#[test]
fn anonymous_readyz_probes_cause_no_signature_and_bounded_logins() {
    let spy = spy_module();
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("pkcs11-spy.log");
    let real = ca_core::signer::pkcs11::find_softhsm_module().expect("SoftHSM2 module");
    // Before any thread or module reads the environment.
    std::env::set_var("PKCS11SPY", &real);
    std::env::set_var("PKCS11SPY_OUTPUT", &log);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(spy, log));
}

async fn run(spy: PathBuf, log: PathBuf) {
    let pki = tokio::task::spawn_blocking(|| {
        TestPki::with(
            KeyAlgorithm::P256,
            test_profiles(),
            IssuerUrls::default(),
            Arc::new(SystemClock),
        )
        .expect("test PKI")
    })
    .await
    .unwrap();
    // The server's issuing key, opened through the spy.
    let mut hsm = pki.token.hsm_config();
    hsm.module = Some(spy);
    let key_label = pki.issuing_signer.key_label().to_string();
    let signer = tokio::task::spawn_blocking(move || hsm.open()?.signer(&key_label))
        .await
        .unwrap()
        .expect("issuing key through pkcs11-spy");
    let signer = Arc::new(signer);
    let parts = ServerParts {
        signer: signer.clone(),
        issuing_der: pki.issuing_der.clone(),
        chain_der: vec![pki.root_der.clone()],
        profiles: test_profiles(),
        urls: IssuerUrls::default(),
        store: pki.store.clone() as Arc<dyn Store>,
        clock: Arc::new(SystemClock),
        tls_names: vec!["dns:localhost".into(), "ip:127.0.0.1".into()],
        tls_validity: Span(chrono::Duration::days(1)),
        admin_validity: Span(chrono::Duration::days(30)),
        limits: Limits::default(),
        tokens: TokenSection::default(),
        renewal: Default::default(),
        metrics: Arc::new(Metrics::new()),
        audit: None,
    };
    let running = server::ServerBuilder::new(parts)
        .assemble()
        .await
        .unwrap()
        .start(TcpListener::bind("127.0.0.1:0").await.unwrap(), None)
        .await
        .expect("server starts");
    let root = ca_core::x509::pem_encode("CERTIFICATE", &pki.root_der);
    let client = Arc::new(
        ApiClient::new(
            &format!("https://{}", running.api_addr),
            root.as_bytes(),
            None,
        )
        .unwrap(),
    );
    // The server signed its own TLS certificate through the spy: the log works.
    let start = counts(&log);
    assert!(
        start.sign >= 1,
        "the spy logged no C_Sign: is {} the spy's log?",
        log.display()
    );

    // 1. 200 anonymous probes, 20 at a time, spread over more than one cache period: every
    // one answered, not one signature, no login (the pooled session stays logged in).
    const N: usize = 200;
    let began = Instant::now();
    for _ in 0..N / 20 {
        for (status, body) in probes(&client, 20).await {
            assert_eq!((status, body.as_str()), (StatusCode::OK, "ready\n"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(began.elapsed() > ca_server::service::READINESS_TTL);
    let after = counts(&log);
    assert_eq!(
        (after.sign - start.sign, after.sign_init - start.sign_init),
        (0, 0),
        "{N} anonymous probes made the issuing key sign"
    );
    assert_eq!(after.login - start.login, 0, "{N} probes logged in");
    assert_eq!(metric(&client, "ca_hsm_ready ").await, 1.0);

    // 2. The token's PIN is changed behind the server's back and its sessions logged out: the
    // server is not ready, says nothing more to the anonymous caller, and N probes over
    // several cache periods cause at most one login (the refused PIN is not tried again).
    pki.token.inject_login_refusal().unwrap();
    let before = counts(&log);
    let mut not_ready = 0;
    for _ in 0..N / 10 {
        for (status, body) in probes(&client, 10).await {
            if status == StatusCode::SERVICE_UNAVAILABLE {
                assert_eq!(body, "not ready\n", "internal detail leaked to the caller");
                not_ready += 1;
            } else {
                assert_eq!((status, body.as_str()), (StatusCode::OK, "ready\n"));
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let after = counts(&log);
    assert!(
        not_ready >= N / 2,
        "only {not_ready} of {N} probes saw the HSM down"
    );
    assert!(
        after.login - before.login <= 1,
        "{N} probes with a wrong PIN caused {} C_Login calls",
        after.login - before.login
    );
    assert_eq!(
        after.sign - before.sign,
        0,
        "probes signed during the outage"
    );
    assert_eq!(metric(&client, "ca_hsm_ready ").await, 0.0);
    assert_eq!(metric(&client, "ca_hsm_login_blocked ").await, 1.0);
    assert!(metric(&client, "ca_hsm_readiness_failures_total ").await >= 1.0);

    // 3. The operator restores the PIN and tells the server to try again: ready again after
    // one login.
    pki.token.end_login_refusal().unwrap();
    signer.token().retry_login();
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe(&client).await.0 != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "not ready again after the PIN was restored"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let healed = counts(&log);
    assert!(healed.login - after.login <= 1);
    assert_eq!(metric(&client, "ca_hsm_login_blocked ").await, 0.0);
    running.shutdown().await;
}
