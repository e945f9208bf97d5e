//! Retention against a running server (README "Retention"): with the clock moved past
//! notAfter + retention, the periodic pruning task removes expired certificates and finished
//! tokens from the store, the admin API and OCSP, keeps a revoked certificate while the CRL
//! must still list it (RFC 5280 5.2), leaves live certificates alone, audits each pass and
//! counts `ca_pruned_total{kind}`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ca_core::clock::FixedClock;
use ca_core::profile::Span;
use ca_core::store::prelude::*;
use ca_server::api::types::*;
use ca_server::config::RetentionSection;
use chrono::{DateTime, Duration, Utc};
use common::{Options, TestServer};
use std::sync::Arc;

async fn enroll(srv: &TestServer, host: &str, profile: &str) -> String {
    let san = format!("dns:{host}");
    let token = srv.token(host, &[&san], profile).await;
    let (_, issued) = srv.enroll(&token, host, &[&san]).await;
    issued.serial
}

async fn revoke(srv: &TestServer, serial: &str) {
    let _: RevokeResponse = srv
        .client(Some(&srv.so))
        .post_json(
            "/v1/admin/revoke",
            &RevokeRequest {
                serial: serial.into(),
                reason: Some("superseded".into()),
                lineage: false,
            },
        )
        .await
        .expect("revoke");
}

/// The serials the admin API lists for `host`.
async fn listed(srv: &TestServer, host: &str) -> Vec<String> {
    let r: CertsResponse = srv
        .client(Some(&srv.auditor))
        .get_json(&format!("/v1/admin/certs?identity={host}"))
        .await
        .expect("certs list");
    r.certs.into_iter().map(|c| c.serial).collect()
}

/// `openssl ocsp`'s verdict on a serial, asked over HTTP from the status listener.
async fn ocsp_status(srv: &TestServer, serial: &str) -> String {
    let dir = srv.tmp();
    let issuer = dir.join("issuer.pem");
    std::fs::write(
        &issuer,
        ca_core::x509::pem_encode("CERTIFICATE", &srv.pki.issuing_der),
    )
    .unwrap();
    let root = dir.join("root-ocsp.pem");
    std::fs::write(&root, &srv.root_pem).unwrap();
    let url = format!("{}/ocsp", srv.status_url);
    let serial = format!("0x{serial}");
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("openssl")
            .args(["ocsp", "-no_nonce", "-issuer"])
            .arg(&issuer)
            .args(["-serial", &serial, "-url", &url, "-CAfile"])
            .arg(&root)
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
    .await
    .unwrap()
}

/// Whether `openssl ocsp`'s output gives `status` (after a warning about times when the
/// server's clock is ahead of the real one, the status stands on its own line).
fn says(answer: &str, status: &str) -> bool {
    answer.contains("Response verify OK")
        && answer
            .lines()
            .any(|l| l.trim() == status || l.trim().ends_with(&format!(": {status}")))
}

/// The serials the current CRL lists, and its thisUpdate.
async fn crl(srv: &TestServer) -> (Vec<String>, DateTime<Utc>) {
    let url = format!("{}/crl", srv.status_url);
    let der = tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("curl")
            .args(["-sSf", &url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    })
    .await
    .unwrap();
    let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect();
    let this_update = DateTime::from_timestamp(crl.last_update().timestamp(), 0).unwrap();
    (serials, this_update)
}

async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificates_leave_the_store_api_and_ocsp_after_retention_live_ones_stay() {
    let t0 = ca_core::clock::truncate(Utc::now());
    let clock = Arc::new(FixedClock::new(t0));
    let mut opts = Options {
        status: true,
        clock: clock.clone(),
        tls_validity: Span(Duration::days(60)),
        ..Options::default()
    };
    let mut long = opts.profiles.0["client"].clone();
    long.validity = Span(Duration::days(30));
    opts.profiles.0.insert("long".into(), long);
    let mut srv = TestServer::with(opts).await;

    // A expires after 2 s; B lives 30 days; C expires after 2 s and is revoked; E and F are
    // revoked later to have the CRL rebuilt.
    let a = enroll(&srv, "a.test", "short").await;
    let b = enroll(&srv, "b.test", "long").await;
    let c = enroll(&srv, "c.test", "short").await;
    let e = enroll(&srv, "e.test", "long").await;
    let f = enroll(&srv, "f.test", "long").await;
    revoke(&srv, &c).await;
    // An unused token, expiring after the default hour.
    srv.token("d.test", &["dns:d.test"], "client").await;
    assert_eq!(srv.pki.store.list_tokens().unwrap().len(), 6);

    let section = RetentionSection {
        enabled: true,
        certificates: Span(Duration::hours(1)),
        tokens: Span(Duration::hours(1)),
        batch: 1,
        interval: Span(Duration::milliseconds(300)),
    };
    let running = srv.running.as_mut().unwrap();
    running.start_retention(&section, Duration::hours(24));

    // Passes at t0 prune nothing: nothing is past its retention yet.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(listed(&srv, "a.test").await, vec![a.clone()]);
    assert_eq!(srv.pki.store.list_tokens().unwrap().len(), 6);

    // Three hours later: A (expired at t0 + 2 s) and every finished token are past their
    // retention; C too, but it is revoked and no CRL issued after its expiry (and published
    // for a whole CRL validity) has listed it yet: it stays, on the CRL and in OCSP.
    clock.set(t0 + Duration::hours(3));
    eventually("A pruned", || async {
        listed(&srv, "a.test").await.is_empty()
    })
    .await;
    eventually("tokens pruned", || async {
        srv.pki.store.list_tokens().unwrap().is_empty()
    })
    .await;
    assert!(srv
        .pki
        .store
        .get_cert(&hex::decode(&a).unwrap())
        .unwrap()
        .is_none());
    assert_eq!(listed(&srv, "b.test").await, vec![b.clone()]);
    assert_eq!(listed(&srv, "c.test").await, vec![c.clone()]);
    let answer = ocsp_status(&srv, &a).await;
    assert!(says(&answer, "unknown"), "pruned A: {answer}");
    let answer = ocsp_status(&srv, &b).await;
    assert!(says(&answer, "good"), "live B: {answer}");
    let answer = ocsp_status(&srv, &c).await;
    assert!(says(&answer, "revoked"), "revoked C: {answer}");
    assert!(crl(&srv).await.0.contains(&c), "C is still on the CRL");

    // A day later, a CRL issued after C's expiry lists it (E's revocation has it rebuilt):
    // from then on C may go, and does.
    clock.set(t0 + Duration::hours(26));
    revoke(&srv, &e).await;
    eventually("a CRL issued after C expired", || async {
        let (serials, this_update) = crl(&srv).await;
        this_update >= t0 + Duration::hours(26) && serials.contains(&c)
    })
    .await;
    eventually("C pruned", || async {
        listed(&srv, "c.test").await.is_empty()
    })
    .await;
    revoke(&srv, &f).await;
    eventually("the next CRL without C", || async {
        let (serials, _) = crl(&srv).await;
        serials.contains(&f) && !serials.contains(&c)
    })
    .await;
    assert!(crl(&srv).await.0.contains(&e));
    let answer = ocsp_status(&srv, &c).await;
    assert!(says(&answer, "unknown"), "pruned C: {answer}");
    let answer = ocsp_status(&srv, &b).await;
    assert!(says(&answer, "good"), "live B: {answer}");
    assert_eq!(listed(&srv, "b.test").await, vec![b.clone()]);

    // Metrics and the audit log: one event per pass that pruned, none for empty passes.
    let metrics = srv.state().metrics.encode();
    assert!(
        metrics.contains("ca_pruned_total{kind=\"certificate\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ca_pruned_total{kind=\"token\"} 6"),
        "{metrics}"
    );
    let events: Vec<_> = srv
        .pki
        .store
        .audit_events(1, usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|e| e.event.action == "retention.prune")
        .collect();
    assert!(!events.is_empty());
    let (mut certs, mut tokens) = (0, 0);
    for ev in &events {
        let (c, t) = (
            ev.event.detail["certificates"].as_u64().unwrap(),
            ev.event.detail["tokens"].as_u64().unwrap(),
        );
        assert!(
            c + t > 0,
            "an event for an empty pass: {:?}",
            ev.event.detail
        );
        assert!(ev.event.detail["certificates_expired_before"].is_string());
        certs += c;
        tokens += t;
    }
    assert_eq!((certs, tokens), (2, 6));
    assert!(srv.pki.store.verify_audit().is_ok());
    // Shutdown stops the task.
    tokio::time::timeout(std::time::Duration::from_secs(30), srv.stop())
        .await
        .expect("the retention task stops at shutdown");
}

/// `ca-server store prune --config` (offline, sled): `--dry-run` counts and changes nothing;
/// a pass prunes what is past retention, keeps what is live, leaves revoked certificates to
/// the server (which knows its CRL), and audits the pass.
#[test]
fn store_prune_command_counts_then_prunes() {
    use ca_core::store::{
        CertRecord, IdentityBinding, RecordStatus, Requester, SledStore, TokenRecord,
    };
    let dir = tempfile::tempdir().unwrap();
    let now = ca_core::clock::truncate(Utc::now());
    let rec = |n: u8, days_ago: i64| {
        let not_after = now - Duration::days(days_ago);
        CertRecord {
            serial: vec![0x44, n],
            subject: format!("CN=h{n}.test"),
            sans: vec![format!("dns:h{n}.test")],
            identity: format!("h{n}.test"),
            profile: "client".into(),
            not_before: not_after - Duration::days(1),
            not_after,
            issued_at: not_after - Duration::days(1),
            requester: Requester::Admin("test".into()),
            spki_sha256: "00".into(),
            der: vec![0x30, 0x00],
            status: RecordStatus::Valid,
            lineage: vec![0x44, n],
            generation: 1,
        }
    };
    let tok = |hash: &str, expires_days_ago: i64| TokenRecord {
        id: format!("id-{hash}"),
        hash: hash.into(),
        identity: IdentityBinding::default(),
        profile: "client".into(),
        created_at: now - Duration::days(expires_days_ago + 1),
        expires_at: now - Duration::days(expires_days_ago),
        created_by: "test".into(),
        used_at: None,
    };
    {
        let store = SledStore::open(&dir.path().join("data/store")).unwrap();
        for r in [rec(1, 10), rec(2, 10), rec(3, -1)] {
            assert!(store.insert_cert(&r).unwrap());
        }
        store
            .revoke(
                &[0x44, 2],
                now - Duration::days(11),
                ca_core::RevocationReason::Superseded,
            )
            .unwrap();
        store.insert_token(&tok("cc01", 10)).unwrap();
        store.insert_token(&tok("cc02", -1)).unwrap();
    }
    let config = dir.path().join("ca.toml");
    std::fs::write(
        &config,
        r#"
data_dir = "data"
[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "online"
pin = { env = "CA_HSM_PIN" }
[ca]
certificate = "issuing.pem"
chain = "root.pem"
[tls]
names = ["dns:localhost"]
[retention]
certificates = "1d"
tokens = "1d"
batch = 1
[profiles.client]
validity = "24h"
"#,
    )
    .unwrap();
    let prune = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ca-server"))
            .args(["store", "prune", "--json", "--config"])
            .arg(&config)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let dry = prune(&["--dry-run"]);
    assert_eq!(
        (dry["certificates"].as_u64(), dry["tokens"].as_u64()),
        (Some(1), Some(1)),
        "{dry}"
    );
    assert_eq!(dry["dry_run"], true);
    let done = prune(&[]);
    assert_eq!(
        (done["certificates"].as_u64(), done["tokens"].as_u64()),
        (Some(1), Some(1)),
        "{done}"
    );
    let again = prune(&[]);
    assert_eq!(
        (again["certificates"].as_u64(), again["tokens"].as_u64()),
        (Some(0), Some(0))
    );

    let store = SledStore::open(&dir.path().join("data/store")).unwrap();
    let mut left = Vec::new();
    store
        .for_each_cert(&mut |c| {
            left.push(c.serial);
            Ok(())
        })
        .unwrap();
    assert_eq!(
        left,
        vec![vec![0x44, 2], vec![0x44, 3]],
        "revoked and live stay"
    );
    let tokens: Vec<String> = store
        .list_tokens()
        .unwrap()
        .into_iter()
        .map(|t| t.hash)
        .collect();
    assert_eq!(tokens, vec!["cc02"]);
    let events: Vec<_> = store
        .audit_events(1, usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|e| e.event.action == "retention.prune")
        .collect();
    assert_eq!(
        events.len(),
        1,
        "one event for the pass that pruned, none for the empty one"
    );
    assert_eq!(events[0].event.detail["certificates"], 1);
    assert_eq!(
        events[0].event.detail["revoked_listed_before"],
        serde_json::Value::Null
    );
}

/// The value of `ca_pruned_total{kind}` in a metrics exposition (0 when absent).
fn pruned_metric(metrics: &str, kind: &str) -> u64 {
    let prefix = format!("ca_pruned_total{{kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Two nodes on one PostgreSQL database, both pruning at once with batches of one: every
/// expired certificate and finished token is pruned exactly once (the nodes' counters and
/// audit events add up to the records), the live certificate stays, and OCSP on either node
/// answers `unknown` for a pruned serial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_postgresql_prune_each_record_once() {
    use ca_core::issuance::IssuerUrls;
    use ca_core::store::{CertFilter, PgStore, Store};
    use ca_server::auth::Role;
    use ca_server::config::{CrlSection, Limits, OcspSection, TokenSection};
    use ca_server::metrics::Metrics;
    use ca_server::server::{ServerBuilder, ServerParts};

    let t0 = ca_core::clock::truncate(Utc::now());
    let clock = Arc::new(FixedClock::new(t0));
    let c = clock.clone();
    let (pki, db) = tokio::task::spawn_blocking(move || {
        let pki = testkit::pki::TestPki::with(
            ca_core::signer::KeyAlgorithm::P256,
            testkit::pki::test_profiles(),
            IssuerUrls::default(),
            c,
        )
        .expect("test PKI");
        let db = testkit::pg::PgServer::shared()
            .expect("PostgreSQL")
            .fresh_database()
            .expect("database");
        (pki, db)
    })
    .await
    .unwrap();
    let mut profiles = Options::default().profiles;
    let mut long = profiles.0["client"].clone();
    long.validity = Span(Duration::days(30));
    profiles.0.insert("long".into(), long);
    let root_pem = ca_core::x509::pem_encode("CERTIFICATE", &pki.root_der);

    let mut nodes = Vec::new();
    let mut operator = None;
    for _ in 0..2 {
        let url = db.url().to_string();
        let store: Arc<dyn Store> =
            tokio::task::spawn_blocking(move || Arc::new(PgStore::open(&url).unwrap()))
                .await
                .unwrap();
        let mut limits = Limits::default();
        limits.admin.per_second = 100;
        limits.admin.burst = 200;
        let parts = ServerParts {
            signer: pki.issuing_signer.clone(),
            issuing_der: pki.issuing_der.clone(),
            chain_der: vec![pki.root_der.clone()],
            profiles: profiles.clone(),
            urls: IssuerUrls::default(),
            store,
            clock: clock.clone(),
            tls_names: vec!["dns:localhost".into(), "ip:127.0.0.1".into()],
            tls_validity: Span(Duration::days(60)),
            admin_validity: Span(Duration::days(30)),
            limits,
            tokens: TokenSection::default(),
            renewal: Default::default(),
            metrics: Arc::new(Metrics::new()),
            audit: None,
        };
        let assembled = ServerBuilder::new(parts)
            .with_status(OcspSection::default(), CrlSection::default())
            .assemble()
            .await
            .expect("node assembles");
        if operator.is_none() {
            let (cert, key) =
                ca_server::dev::issue_admin_cert(&assembled.state, "pg-op", Role::Operator, "test")
                    .await
                    .unwrap();
            operator = Some(common::Identity { cert, key });
        }
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let status = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        nodes.push(
            assembled
                .start(api, Some(status))
                .await
                .expect("node starts"),
        );
    }
    let operator = operator.unwrap();
    let client = |i: usize, id: Option<&common::Identity>| {
        ca_server::client::ApiClient::new(
            &format!("https://{}", nodes[i].api_addr),
            root_pem.as_bytes(),
            id.map(|i| (i.cert.as_bytes(), i.key.as_bytes())),
        )
        .unwrap()
    };
    // Ten short-lived certificates and one long-lived, enrolled on both nodes.
    let mut short = Vec::new();
    let mut live = String::new();
    for i in 0..11 {
        let host = format!("pg{i}.test");
        let san = format!("dns:{host}");
        let profile = if i == 10 { "long" } else { "short" };
        let token: TokenCreateResponse = client(i % 2, Some(&operator))
            .post_json(
                "/v1/admin/tokens",
                &TokenCreateRequest {
                    common_name: Some(host.clone()),
                    sans: vec![san.clone()],
                    profile: Some(profile.into()),
                    ttl: None,
                },
            )
            .await
            .expect("token");
        let (_, csr) = common::csr(&host, &[&san]);
        let issued: IssuedResponse = client((i + 1) % 2, None)
            .post_json(
                "/v1/enroll",
                &EnrollRequest {
                    token: token.token,
                    csr,
                },
            )
            .await
            .expect("enroll");
        if i == 10 {
            live = issued.serial;
        } else {
            short.push(issued.serial);
        }
    }

    clock.set(t0 + Duration::hours(3));
    let section = RetentionSection {
        enabled: true,
        certificates: Span(Duration::hours(1)),
        tokens: Span(Duration::hours(1)),
        batch: 1,
        interval: Span(Duration::milliseconds(100)),
    };
    for n in &mut nodes {
        n.start_retention(&section, Duration::hours(24));
    }
    let store = nodes[0].state.store.clone();
    eventually("every short-lived certificate and token pruned", || {
        let store = store.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                store
                    .list_certs(&CertFilter {
                        expiring_before: Some(t0 + Duration::hours(1)),
                        ..Default::default()
                    })
                    .unwrap()
                    .is_empty()
                    && store.list_tokens().unwrap().is_empty()
            })
            .await
            .unwrap()
        }
    })
    .await;
    // Let any pass in flight finish before counting.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (mut certs, mut tokens) = (0, 0);
    for n in &nodes {
        let m = n.state.metrics.encode();
        certs += pruned_metric(&m, "certificate");
        tokens += pruned_metric(&m, "token");
    }
    assert_eq!((certs, tokens), (10, 11), "each record pruned exactly once");
    let s = store.clone();
    let (audited_certs, audited_tokens) = tokio::task::spawn_blocking(move || {
        let mut sums = (0, 0);
        for e in s.audit_events(1, usize::MAX).unwrap() {
            if e.event.action == "retention.prune" {
                sums.0 += e.event.detail["certificates"].as_u64().unwrap();
                sums.1 += e.event.detail["tokens"].as_u64().unwrap();
            }
        }
        assert!(s.verify_audit().is_ok());
        sums
    })
    .await
    .unwrap();
    assert_eq!((audited_certs, audited_tokens), (10, 11));
    let s = store.clone();
    let l = live.clone();
    assert!(
        tokio::task::spawn_blocking(move || s.get_cert(&hex::decode(&l).unwrap()))
            .await
            .unwrap()
            .unwrap()
            .is_some()
    );
    for (i, n) in nodes.iter().enumerate() {
        let answer = pg_ocsp(
            &pki,
            &format!("http://{}", n.status_addr.unwrap()),
            &short[i],
        )
        .await;
        assert!(says(&answer, "unknown"), "node {i}: {answer}");
        let answer = pg_ocsp(&pki, &format!("http://{}", n.status_addr.unwrap()), &live).await;
        assert!(says(&answer, "good"), "node {i}: {answer}");
    }
    for n in nodes {
        n.shutdown().await;
    }
}

async fn pg_ocsp(pki: &testkit::pki::TestPki, status_url: &str, serial: &str) -> String {
    let dir = pki.dir.path();
    let issuer = dir.join("issuing.pem");
    let root = dir.join("root.pem");
    let url = format!("{status_url}/ocsp");
    let serial = format!("0x{serial}");
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("openssl")
            .args(["ocsp", "-no_nonce", "-issuer"])
            .arg(&issuer)
            .args(["-serial", &serial, "-url", &url, "-CAfile"])
            .arg(&root)
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
    .await
    .unwrap()
}
