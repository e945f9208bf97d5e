//! `ca-server serve` on PostgreSQL, end to end: a throwaway cluster (testkit::pg), a
//! configuration file with `[store] kind = "postgres"` and the URL in an environment variable,
//! the server started through `ServerBuilder::from_config` on the SoftHSM token of a
//! `TestPki`, and real HTTPS: token, enrollment, renewal, revocation, then the records read
//! back from the database, OCSP on the status listener and the audit chain; a second server on
//! the same database sees and serves what the first one issued.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ca_core::store::prelude::*;
use ca_core::store::PgStore;
use ca_server::api::types::*;
use ca_server::auth::Role;
use ca_server::client::ApiClient;
use ca_server::config::{ServerConfig, StoreKind};
use ca_server::server::{Running, ServerBuilder};
use common::{csr, serial_of, Identity};
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::pki::{test_profiles, TestPki};

const URL_ENV: &str = "CA_TEST_PG_SERVER_DATABASE_URL";

/// The configuration file a production node would have, on `pki`'s token and the database
/// whose URL is in the environment variable `url_env`.
fn write_config(pki: &TestPki, dir: &Path, url_env: &str) -> ServerConfig {
    let pin = dir.join("hsm.pin");
    pki.token.write_pin_file(&pin).unwrap();
    let text = format!(
        r#"
data_dir = "data"
[hsm]
module = "{module}"
token_label = "{label}"
pin = {{ file = "hsm.pin" }}
[ca]
certificate = "{issuing}"
chain = "{root}"
[tls]
names = ["dns:localhost", "ip:127.0.0.1"]
[store]
kind = "postgres"
url = {{ env = "{url_env}" }}
pool_size = 4
[profiles.placeholder]
validity = "1h"
"#,
        module = pki.token.module.display(),
        label = pki.token.label,
        issuing = pki.dir.path().join("issuing.pem").display(),
        root = pki.dir.path().join("root.pem").display(),
    );
    let mut cfg = ServerConfig::parse(&text).unwrap();
    cfg.profiles = test_profiles();
    let path = dir.join("ca.toml");
    std::fs::write(&path, cfg.to_toml().unwrap()).unwrap();
    let cfg = ServerConfig::load(&path).unwrap();
    assert_eq!(cfg.store.kind, StoreKind::Postgres);
    assert!(!std::fs::read_to_string(&path)
        .unwrap()
        .contains("postgres://"));
    cfg
}

/// A test PKI on its SoftHSM token and a fresh database on the shared throwaway cluster.
async fn pki_and_database() -> (TestPki, testkit::pg::TestDatabase) {
    tokio::task::spawn_blocking(|| {
        let pki = TestPki::new(ca_core::signer::KeyAlgorithm::P256).expect("test PKI");
        let server = testkit::pg::PgServer::shared().expect("PostgreSQL");
        let db = server.fresh_database().expect("database");
        (pki, db)
    })
    .await
    .unwrap()
}

struct Node {
    running: Running,
    url: String,
    status_url: String,
    operator: Identity,
    auditor: Identity,
}

async fn start_node(cfg: &ServerConfig) -> Node {
    let assembled = ServerBuilder::from_config(cfg)
        .await
        .expect("server opens its parts")
        .assemble()
        .await
        .expect("server assembles");
    let state = assembled.state.clone();
    let mk = |role: Role| {
        let state = state.clone();
        async move {
            let (cert, key) = ca_server::dev::issue_admin_cert(
                &state,
                &format!("pg-{}", Role::name(role)),
                role,
                "test",
            )
            .await
            .unwrap();
            Identity { cert, key }
        }
    };
    let operator = mk(Role::Operator).await;
    let auditor = mk(Role::Auditor).await;
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let status = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = assembled
        .start(api, Some(status))
        .await
        .expect("server starts");
    Node {
        url: format!("https://{}", running.api_addr),
        status_url: format!("http://{}", running.status_addr.unwrap()),
        running,
        operator,
        auditor,
    }
}

fn client(node: &Node, root_pem: &str, id: Option<&Identity>) -> ApiClient {
    ApiClient::new(
        &node.url,
        root_pem.as_bytes(),
        id.map(|i| (i.cert.as_bytes(), i.key.as_bytes())),
    )
    .unwrap()
}

/// `openssl ocsp`'s verdict on a serial, asked over HTTP from the node's status listener.
async fn ocsp_status(node: &Node, pki: &TestPki, serial: &str) -> String {
    ocsp_status_at(&node.status_url, pki, serial).await
}

/// `openssl ocsp`'s verdict on a serial, asked from the status listener at `status_url`.
async fn ocsp_status_at(status_url: &str, pki: &TestPki, serial: &str) -> String {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_postgres_end_to_end_and_a_second_node_sees_the_first() {
    let (pki, db) = pki_and_database().await;
    // SAFETY of the test: the variable is set once, before any server reads it; no other test
    // in this binary reads or writes it.
    std::env::set_var(URL_ENV, db.url());
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&pki, dir.path(), URL_ENV);
    let root_pem = ca_core::x509::pem_encode("CERTIFICATE", &pki.root_der);

    let a = start_node(&cfg).await;
    // Nothing in the sled directory: the node runs on PostgreSQL.
    assert!(!dir.path().join("data/store").exists());

    let token: TokenCreateResponse = client(&a, &root_pem, Some(&a.operator))
        .post_json(
            "/v1/admin/tokens",
            &TokenCreateRequest {
                common_name: Some("web1.test".into()),
                sans: vec!["dns:web1.test".into()],
                profile: Some("client".into()),
                ttl: None,
            },
        )
        .await
        .expect("token create");
    let (key1, csr1) = csr("web1.test", &["dns:web1.test"]);
    let issued1: IssuedResponse = client(&a, &root_pem, None)
        .post_json(
            "/v1/enroll",
            &EnrollRequest {
                token: token.token.clone(),
                csr: csr1,
            },
        )
        .await
        .expect("enroll");
    assert_eq!(issued1.serial, serial_of(&issued1.certificate));
    let id1 = Identity {
        cert: issued1.certificate.clone(),
        key: key1,
    };
    // The token is single use, in the database.
    let (_, csr_again) = csr("web1.test", &["dns:web1.test"]);
    client(&a, &root_pem, None)
        .post_json::<_, IssuedResponse>(
            "/v1/enroll",
            &EnrollRequest {
                token: token.token.clone(),
                csr: csr_again,
            },
        )
        .await
        .expect_err("a used token");

    let (_, csr2) = csr("web1.test", &[]);
    let issued2: IssuedResponse = client(&a, &root_pem, Some(&id1))
        .post_json("/v1/renew", &RenewRequest { csr: csr2 })
        .await
        .expect("renewal");
    assert_ne!(issued2.serial, issued1.serial);

    let rev: RevokeResponse = client(&a, &root_pem, Some(&a.operator))
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

    // The records are in PostgreSQL: a store of our own on the same database reads them.
    let url = db.url().to_string();
    let pg = tokio::task::spawn_blocking(move || {
        std::sync::Arc::new(PgStore::open_with_pool_size(&url, 2).unwrap())
    })
    .await
    .unwrap();
    let s1 = hex::decode(&issued1.serial).unwrap();
    let s2 = hex::decode(&issued2.serial).unwrap();
    let (rec1, rec2, events, verified) = {
        let pg = pg.clone();
        tokio::task::spawn_blocking(move || {
            (
                pg.get_cert(&s1)
                    .unwrap()
                    .expect("enrolled certificate stored"),
                pg.get_cert(&s2)
                    .unwrap()
                    .expect("renewed certificate stored"),
                pg.audit_events(1, 10_000).unwrap(),
                pg.verify_audit().unwrap(),
            )
        })
        .await
        .unwrap()
    };
    assert_eq!(rec1.identity, "web1.test");
    assert_eq!(rec1.der, pem_der(&issued1.certificate));
    assert!(!rec1.is_revoked());
    assert_eq!(rec2.identity, "web1.test");
    assert_eq!(rec2.profile, "client");
    assert!(rec2.is_revoked());
    let has = |action: &str| {
        events
            .iter()
            .any(|e| e.event.action == action && e.event.result == "ok")
    };
    assert!(has("token.create") && has("enroll") && has("renew") && has("revoke"));
    assert_eq!(verified as usize, events.len());

    // OCSP on the status listener: the renewed certificate is revoked, the first one good.
    let out = ocsp_status(&a, &pki, &issued2.serial).await;
    assert!(out.contains(": revoked"), "{out}");
    assert!(out.contains("keyCompromise"), "{out}");
    let out = ocsp_status(&a, &pki, &issued1.serial).await;
    assert!(out.contains(": good"), "{out}");

    // The audit log verifies over the API.
    let ok: AuditVerifyResponse = client(&a, &root_pem, Some(&a.auditor))
        .get_json("/v1/admin/audit/verify")
        .await
        .unwrap();
    assert!(ok.ok, "{ok:?}");

    // A second node on the same database and token: it lists what the first issued, and
    // the holder of the first certificate renews there.
    let b = start_node(&cfg).await;
    let certs: CertsResponse = client(&b, &root_pem, Some(&b.auditor))
        .get_json("/v1/admin/certs")
        .await
        .unwrap();
    let listed = |serial: &str| certs.certs.iter().find(|c| c.serial == serial).cloned();
    assert_eq!(
        listed(&issued1.serial).expect("node B lists it").status,
        "valid"
    );
    assert_eq!(
        listed(&issued2.serial).expect("node B lists it").status,
        "revoked"
    );
    // Node B enforces the lineage lock node A's keyCompromise revocation stored.
    let (_, csr3) = csr("web1.test", &[]);
    let err = client(&b, &root_pem, Some(&id1))
        .post_json::<_, IssuedResponse>("/v1/renew", &RenewRequest { csr: csr3 })
        .await
        .expect_err("a locked lineage");
    assert_eq!(err.code(), Some("lineage_locked"), "{err}");
    // A certificate enrolled on node B renews on node A.
    let token_b: TokenCreateResponse = client(&b, &root_pem, Some(&b.operator))
        .post_json(
            "/v1/admin/tokens",
            &TokenCreateRequest {
                common_name: Some("web2.test".into()),
                sans: vec!["dns:web2.test".into()],
                profile: Some("client".into()),
                ttl: None,
            },
        )
        .await
        .expect("token create on node B");
    let (key4, csr4) = csr("web2.test", &["dns:web2.test"]);
    let issued4: IssuedResponse = client(&b, &root_pem, None)
        .post_json(
            "/v1/enroll",
            &EnrollRequest {
                token: token_b.token,
                csr: csr4,
            },
        )
        .await
        .expect("enroll on node B");
    let id4 = Identity {
        cert: issued4.certificate.clone(),
        key: key4,
    };
    let (_, csr5) = csr("web2.test", &[]);
    let issued5: IssuedResponse = client(&a, &root_pem, Some(&id4))
        .post_json("/v1/renew", &RenewRequest { csr: csr5 })
        .await
        .expect("node A renews node B's certificate");
    let s5 = hex::decode(&issued5.serial).unwrap();
    let pg2 = pg.clone();
    let rec5 = tokio::task::spawn_blocking(move || pg2.get_cert(&s5).unwrap())
        .await
        .unwrap();
    assert_eq!(rec5.expect("renewal stored").identity, "web2.test");
    // Node B's OCSP answers for the revocation node A made.
    let out = ocsp_status(&b, &pki, &issued2.serial).await;
    assert!(out.contains(": revoked"), "{out}");

    b.running.shutdown().await;
    a.running.shutdown().await;
    // One audit chain across both nodes.
    let verified = tokio::task::spawn_blocking(move || pg.verify_audit().unwrap())
        .await
        .unwrap();
    assert!(verified > events.len() as u64);
}

/// `openssl crl -text` of the CRL a node's status listener serves (fetched with curl).
async fn crl_text(node: &Node) -> String {
    let url = format!("{}/crl", node.status_url);
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("crl.der");
        let got = std::process::Command::new("curl")
            .args(["-sf", "-o"])
            .arg(&file)
            .arg(&url)
            .status()
            .unwrap();
        if !got.success() {
            return String::new();
        }
        let out = std::process::Command::new("openssl")
            .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
            .arg(&file)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

fn crl_number(text: &str) -> Option<u64> {
    let mut lines = text.lines();
    lines.find(|l| l.contains("X509v3 CRL Number"))?;
    let n = lines.next()?.trim();
    if let Some(hex) = n.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).ok()
    } else {
        n.parse().ok()
    }
}

/// Poll `node`'s OCSP (openssl) until it says revoked for `serial`; how long that took.
async fn revoked_within(node: &Node, pki: &TestPki, serial: &str, limit: Duration) -> Duration {
    revoked_within_at(&node.status_url, pki, serial, limit).await
}

/// [`revoked_within`] for the status listener at `status_url`.
async fn revoked_within_at(
    status_url: &str,
    pki: &TestPki,
    serial: &str,
    limit: Duration,
) -> Duration {
    let t0 = Instant::now();
    loop {
        let out = ocsp_status_at(status_url, pki, serial).await;
        if out.contains(": revoked") {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "still not revoked after {limit:?}: {out}"
        );
        assert!(out.contains(": good"), "{out}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 16, two nodes and one stateless responder (the real `ca-server ocsp` binary, no HSM)
/// on one database: enrolled on A, renewed on B, revoked on A -> the responder (and both nodes)
/// answer `revoked` within a second (the change feed, not polling); a revocation on either
/// node reaches the other's OCSP within a second; eight concurrent redemptions of one token
/// across both nodes: one wins; one node builds the CRL (the lease holder) and both serve the
/// same CRL listing the revocations; with every signing node stopped the responder answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_node_reaches_the_others_ocsp_within_a_second_and_one_crl_serves_both()
{
    let (pki, db) = pki_and_database().await;
    let dir = tempfile::tempdir().unwrap();
    // Its own variable: the other test of this binary sets URL_ENV.
    const FOLLOW_ENV: &str = "CA_TEST_PG_FOLLOW_DATABASE_URL";
    std::env::set_var(FOLLOW_ENV, db.url());
    let cfg = write_config(&pki, dir.path(), FOLLOW_ENV);
    let root_pem = ca_core::x509::pem_encode("CERTIFICATE", &pki.root_der);
    let a = start_node(&cfg).await;
    let b = start_node(&cfg).await;

    // A stateless responder (the real binary, no HSM) on the same database.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let responder_cfg = dir.path().join("ocsp.toml");
    std::fs::write(
        &responder_cfg,
        format!(
            "data_dir = \"data\"\n[listen]\nstatus = \"127.0.0.1:{port}\"\n[ca]\ncertificate = \"{}\"\nchain = \"{}\"\n[store]\nkind = \"postgres\"\nurl = {{ env = \"{FOLLOW_ENV}\" }}\npool_size = 2\n",
            pki.issuing_pem_path().display(),
            pki.root_pem_path().display(),
        ),
    )
    .unwrap();
    let responder = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_ca-server"))
            .args(["ocsp", "--config"])
            .arg(&responder_cfg)
            .env(FOLLOW_ENV, db.url())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let responder_url = format!("http://127.0.0.1:{port}");
    let ready = format!("{responder_url}/readyz");
    let t0 = Instant::now();
    while !tokio::task::spawn_blocking({
        let ready = ready.clone();
        move || {
            std::process::Command::new("curl")
                .args(["-sf", "-o", "/dev/null", &ready])
                .status()
                .is_ok_and(|s| s.success())
        }
    })
    .await
    .unwrap()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "responder not ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut serials = Vec::new();
    let mut first_key = String::new();
    for (i, issuer) in [&a, &b, &a, &b].into_iter().enumerate() {
        let cn = format!("follow{i}.test");
        let token: TokenCreateResponse = client(issuer, &root_pem, Some(&issuer.operator))
            .post_json(
                "/v1/admin/tokens",
                &TokenCreateRequest {
                    common_name: Some(cn.clone()),
                    sans: vec![format!("dns:{cn}")],
                    profile: Some("client".into()),
                    ttl: None,
                },
            )
            .await
            .unwrap();
        let (key, csr) = csr(&cn, &[&format!("dns:{cn}")]);
        let issued: IssuedResponse = client(issuer, &root_pem, None)
            .post_json(
                "/v1/enroll",
                &EnrollRequest {
                    token: token.token,
                    csr,
                },
            )
            .await
            .unwrap();
        if i == 0 {
            first_key = key;
            serials.push(issued.certificate.clone());
        }
        serials.push(issued.serial);
    }
    // The first certificate (enrolled on A): its PEM was pushed before its serial.
    let first_pem = serials.remove(0);
    // Enrolled on A, renewed on B, revoked on A: the stateless responder says revoked within
    // a second, and so do both nodes.
    let (_, renew_csr) = csr("follow0.test", &[]);
    let renewed: IssuedResponse = client(
        &b,
        &root_pem,
        Some(&Identity {
            cert: first_pem,
            key: first_key,
        }),
    )
    .post_json("/v1/renew", &RenewRequest { csr: renew_csr })
    .await
    .expect("node B renews node A's certificate");
    // Its issuance-time response (signed in a group within milliseconds, then followed):
    // `tryLater` until then.
    let t0 = Instant::now();
    loop {
        let out = ocsp_status_at(&responder_url, &pki, &renewed.serial).await;
        if out.contains(": good") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2) && out.contains("trylater"),
            "responder: {out}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Issued on one node, answered `good` by the other (its issuance-time response followed).
    for (node, serial) in [(&b, &serials[0]), (&a, &serials[1])] {
        let t0 = Instant::now();
        loop {
            let out = ocsp_status(node, &pki, serial).await;
            if out.contains(": good") {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(2), "{out}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let revoke = |node: &Node, serial: &str| {
        let c = client(node, &root_pem, Some(&node.operator));
        let req = RevokeRequest {
            serial: serial.to_string(),
            reason: Some("keyCompromise".into()),
            lineage: false,
        };
        async move {
            c.post_json::<_, RevokeResponse>("/v1/admin/revoke", &req)
                .await
                .unwrap()
        }
    };
    // One token, eight concurrent redemptions split across both nodes: exactly one wins, the
    // others are refused with the token code, whichever node they reached.
    let token: TokenCreateResponse = client(&a, &root_pem, Some(&a.operator))
        .post_json(
            "/v1/admin/tokens",
            &TokenCreateRequest {
                common_name: Some("race.test".into()),
                sans: vec!["dns:race.test".into()],
                profile: Some("client".into()),
                ttl: None,
            },
        )
        .await
        .unwrap();
    let mut attempts = tokio::task::JoinSet::new();
    for i in 0..8 {
        let c = client(if i % 2 == 0 { &a } else { &b }, &root_pem, None);
        let (_, csr) = csr("race.test", &["dns:race.test"]);
        let req = EnrollRequest {
            token: token.token.clone(),
            csr,
        };
        attempts.spawn(async move {
            c.post_json::<_, IssuedResponse>("/v1/enroll", &req)
                .await
                .map_err(|e| e.code().map(str::to_string))
        });
    }
    let results = attempts.join_all().await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.as_deref(), Some("token_rejected"));
    }

    let revoke_on_a = client(&a, &root_pem, Some(&a.operator));
    let _: RevokeResponse = revoke_on_a
        .post_json(
            "/v1/admin/revoke",
            &RevokeRequest {
                serial: renewed.serial.clone(),
                reason: Some("superseded".into()),
                lineage: false,
            },
        )
        .await
        .unwrap();
    let took = revoked_within_at(
        &responder_url,
        &pki,
        &renewed.serial,
        Duration::from_secs(1),
    )
    .await;
    eprintln!("revocation on A answered by the stateless responder after {took:?}");
    for node in [&a, &b] {
        revoked_within(node, &pki, &renewed.serial, Duration::from_secs(1)).await;
    }

    // Revoked on A, issued on A: B answers revoked within a second.
    revoke(&a, &serials[2]).await;
    let took = revoked_within(&b, &pki, &serials[2], Duration::from_secs(1)).await;
    eprintln!("revocation on A answered by B after {took:?}");
    // Revoked on B, issued on B: A answers revoked within a second.
    revoke(&b, &serials[3]).await;
    let took = revoked_within(&a, &pki, &serials[3], Duration::from_secs(1)).await;
    eprintln!("revocation on B answered by A after {took:?}");
    // The untouched ones stay good on both.
    for node in [&a, &b] {
        for serial in &serials[..2] {
            let out = ocsp_status(node, &pki, serial).await;
            assert!(out.contains(": good"), "{out}");
        }
    }

    // One CRL for both: after the revocations both nodes serve the same number, listing
    // both serials, and the archive holds it.
    let t0 = Instant::now();
    let (text_a, text_b) = loop {
        let (ta, tb) = (crl_text(&a).await, crl_text(&b).await);
        let lists_both = |t: &str| {
            serials[2..]
                .iter()
                .all(|s| t.contains(&format!("Serial Number: {}", s.to_uppercase())))
        };
        if lists_both(&ta) && lists_both(&tb) && crl_number(&ta) == crl_number(&tb) {
            break (ta, tb);
        }
        let brief = |t: &str| {
            t.lines()
                .filter(|l| l.contains("Serial Number") || l.contains("Update"))
                .collect::<Vec<_>>()
                .join(" ")
                + &format!(" number {:?}", crl_number(t))
        };
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the nodes do not serve one CRL listing both revocations {:?}:\nA: {}\nB: {}",
            &serials[2..],
            brief(&ta),
            brief(&tb)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(text_a, text_b);
    let number = crl_number(&text_a).expect("CRL number");
    let url = db.url().to_string();
    let archived = tokio::task::spawn_blocking(move || {
        let pg = PgStore::open_with_pool_size(&url, 1).unwrap();
        let crl = pg.latest_crl(ca_core::store::FULL_CRL).unwrap();
        (crl, pg.next_crl_number().unwrap())
    })
    .await
    .unwrap();
    let (crl, next) = archived;
    assert_eq!(crl.expect("archived CRL").number, number);
    // CRL numbers drawn so far: one builder drew them all; B never built while A held the
    // lease (each node's start draws at most one, and each revocation at most one more).
    assert!(
        next <= number + 1 + 4,
        "numbers drawn {next}, served {number}"
    );

    // Every signing node stopped: the stateless responder still answers.
    b.running.shutdown().await;
    a.running.shutdown().await;
    let out = ocsp_status_at(&responder_url, &pki, &renewed.serial).await;
    assert!(
        out.contains(": revoked"),
        "responder after the nodes stopped: {out}"
    );
    drop(responder);
}

/// A child process killed when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap()
}

/// The synchronous PostgreSQL client panics when its connections are closed on an async
/// runtime's thread; a store dropped there (a server start failing after the store opened)
/// closes them on a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_dropped_on_an_async_thread_closes_cleanly() {
    let url = tokio::task::spawn_blocking(|| {
        let server = testkit::pg::PgServer::shared().expect("PostgreSQL");
        server.fresh_database().expect("database")
    })
    .await
    .unwrap();
    let u = url.url().to_string();
    let store = tokio::task::spawn_blocking(move || PgStore::open_with_pool_size(&u, 2).unwrap())
        .await
        .unwrap();
    drop(store); // on this async thread
    let u = url.url().to_string();
    let reopened = tokio::task::spawn_blocking(move || PgStore::open(&u).map(|_| ()))
        .await
        .unwrap();
    assert!(reopened.is_ok());
}

/// Two security officers revoke each other at the same moment through two nodes: the
/// last-officer rule holds across nodes (the revocation lease in the database), so exactly one
/// of them is left, round after round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn officers_revoking_each_other_through_two_nodes_leave_one() {
    let (pki, db) = pki_and_database().await;
    let dir = tempfile::tempdir().unwrap();
    const OFFICERS_ENV: &str = "CA_TEST_PG_OFFICERS_DATABASE_URL";
    std::env::set_var(OFFICERS_ENV, db.url());
    let cfg = write_config(&pki, dir.path(), OFFICERS_ENV);
    let root_pem = ca_core::x509::pem_encode("CERTIFICATE", &pki.root_der);
    let a = start_node(&cfg).await;
    let b = start_node(&cfg).await;
    // Many certificates, as in production: the officer check reads them all, which widens
    // the window between check and revocation that the race needs.
    let template = {
        let s = hex::decode(serial_of(&a.operator.cert)).unwrap();
        let st = a.running.state.store.clone();
        tokio::task::spawn_blocking(move || st.get_cert(&s).unwrap().unwrap())
            .await
            .unwrap()
    };
    let url = db.url().to_string();
    tokio::task::spawn_blocking(move || {
        let pg = std::sync::Arc::new(PgStore::open_with_pool_size(&url, 4).unwrap());
        std::thread::scope(|scope| {
            for t in 0u32..4 {
                let (pg, template) = (pg.clone(), template.clone());
                scope.spawn(move || {
                    for i in 0u32..1000 {
                        let mut r = template.clone();
                        r.serial = [
                            &[0x7f][..],
                            &t.to_be_bytes()[..],
                            &i.to_be_bytes()[..],
                            &[1; 7][..],
                        ]
                        .concat();
                        r.profile = "client".into();
                        r.identity = format!("filler-{t}-{i}.test");
                        assert!(pg.insert_cert(&r).unwrap());
                    }
                });
            }
        });
    })
    .await
    .unwrap();
    let officer = |node: &Node, name: String| {
        let state = node.running.state.clone();
        async move {
            let (cert, key) =
                ca_server::dev::issue_admin_cert(&state, &name, Role::SecurityOfficer, "test")
                    .await
                    .unwrap();
            Identity { cert, key }
        }
    };
    let mut survivor = officer(&a, "officer-first".into()).await;
    for round in 0..6 {
        let other = officer(&b, format!("officer-{round}")).await;
        let (sa, sb) = (serial_of(&survivor.cert), serial_of(&other.cert));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            for (node, who, target) in [(&a, &survivor, &sb), (&b, &other, &sa)] {
                let c = client(node, &root_pem, Some(who));
                let req = RevokeRequest {
                    serial: target.clone(),
                    reason: Some("cessationOfOperation".into()),
                    lineage: false,
                };
                tasks.spawn(async move {
                    c.post_json::<_, RevokeResponse>("/v1/admin/revoke", &req)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.code().map(str::to_string))
                });
            }
        }
        let results = tasks.join_all().await;
        let st = a.running.state.store.clone();
        let (ra, rb) = (hex::decode(&sa).unwrap(), hex::decode(&sb).unwrap());
        let valid = tokio::task::spawn_blocking(move || {
            [ra, rb].map(|s| !st.get_cert(&s).unwrap().unwrap().is_revoked())
        })
        .await
        .unwrap();
        assert_eq!(
            valid.iter().filter(|v| **v).count(),
            1,
            "round {round}: {results:?}"
        );
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(
                    r.as_deref(),
                    Some("last_security_officer" | "cert_revoked" | "already_revoked")
                ),
                "round {round}: {r:?}"
            );
        }
        survivor = if valid[0] { survivor } else { other };
    }
    b.running.shutdown().await;
    a.running.shutdown().await;
}
