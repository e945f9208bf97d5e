//! Renewal lineage, tried as an attacker would against a running server (real SoftHSM issuing
//! key, sled store on disk, TLS over loopback): a stolen key renews once and then loses
//! everything; a superseded generation cannot renew; revocation ends the access a certificate
//! gave, including the renewals made with it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ca_core::store::prelude::*;
use ca_server::api::types::*;
use ca_server::client::ClientError;
use common::{csr, Identity, Options, TestServer};

fn code(e: &ClientError) -> &str {
    e.code().unwrap_or("(no code)")
}

/// Renew with `id` and a fresh key: the new identity, or the API error.
async fn renew(srv: &TestServer, id: &Identity) -> Result<(Identity, IssuedResponse), ClientError> {
    let (key, csr) = csr("", &[]);
    renew_with(srv, id, key, csr).await
}

async fn renew_with(
    srv: &TestServer,
    id: &Identity,
    key: String,
    csr: String,
) -> Result<(Identity, IssuedResponse), ClientError> {
    let issued: IssuedResponse = srv
        .client(Some(id))
        .post_json("/v1/renew", &RenewRequest { csr })
        .await?;
    Ok((
        Identity {
            cert: issued.certificate.clone(),
            key,
        },
        issued,
    ))
}

async fn enroll(srv: &TestServer, host: &str) -> (Identity, IssuedResponse) {
    let san = format!("dns:{host}");
    let token = srv.token(host, &[&san], "client").await;
    srv.enroll(&token, host, &[&san]).await
}

async fn revoke(
    srv: &TestServer,
    serial: &str,
    reason: &str,
    lineage: bool,
) -> Result<RevokeResponse, ClientError> {
    srv.client(Some(&srv.so))
        .post_json(
            "/v1/admin/revoke",
            &RevokeRequest {
                serial: serial.into(),
                reason: Some(reason.into()),
                lineage,
            },
        )
        .await
}

fn record(srv: &TestServer, serial: &str) -> ca_core::store::CertRecord {
    srv.pki
        .store
        .get_cert(&hex::decode(serial).unwrap())
        .unwrap()
        .unwrap()
}

fn audited(srv: &TestServer, action: &str, result: &str) -> usize {
    srv.pki
        .store
        .audit_events(1, usize::MAX)
        .unwrap()
        .iter()
        .filter(|e| e.event.action == action && e.event.result == result)
        .count()
}

async fn status_server() -> TestServer {
    TestServer::with(Options {
        status: true,
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_record_their_lineage_and_generation() {
    let mut srv = TestServer::start().await;
    let (g1, i1) = enroll(&srv, "lin.test").await;
    let (g2, i2) = renew(&srv, &g1).await.expect("generation 2");
    let (_, i3) = renew(&srv, &g2).await.expect("generation 3");
    for (i, issued) in [&i1, &i2, &i3].into_iter().enumerate() {
        let rec = record(&srv, &issued.serial);
        assert_eq!(rec.lineage_hex(), i1.serial, "one lineage");
        assert_eq!(rec.generation as usize, i + 1);
    }
    let listed: CertsResponse = srv
        .client(Some(&srv.so))
        .get_json(&format!("/v1/admin/certs?lineage={}", i3.serial))
        .await
        .unwrap();
    let gens: Vec<(String, u32)> = listed
        .certs
        .iter()
        .map(|c| (c.serial.clone(), c.generation))
        .collect();
    assert_eq!(
        gens,
        vec![
            (i1.serial.clone(), 1),
            (i2.serial.clone(), 2),
            (i3.serial.clone(), 3)
        ]
    );
    assert!(listed.certs.iter().all(|c| c.lineage == i1.serial));
    // The audit events carry the lineage.
    let events = srv.pki.store.audit_events(1, usize::MAX).unwrap();
    let renewals: Vec<_> = events
        .iter()
        .filter(|e| e.event.action == "renew" && e.event.result == "ok")
        .collect();
    assert_eq!(renewals.len(), 2);
    for e in renewals {
        assert_eq!(e.event.detail["lineage"], i1.serial.as_str());
    }
    srv.stop().await;
}

/// The attack: a thief copies generation 1's key. The host renews (generation 2); the thief
/// then renews with the stolen generation 1. Without lineages the thief gets a fresh
/// certificate and keeps access forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_generation_cannot_renew_and_its_attempt_locks_the_lineage() {
    let mut srv = TestServer::start().await;
    let (g1, i1) = enroll(&srv, "clone.test").await;
    let stolen = g1.clone();
    let (g2, _) = renew(&srv, &g1).await.expect("the host renews");
    let certs_before = srv.cert_count();

    let err = renew(&srv, &stolen)
        .await
        .expect_err("the stolen, superseded generation renewed");
    assert_eq!(code(&err), "generation_superseded");
    assert_eq!(srv.cert_count(), certs_before, "nothing issued");
    assert_eq!(
        audited(&srv, "renew.superseded", "generation_superseded"),
        1
    );
    assert_eq!(audited(&srv, "lineage.lock", "ok"), 1);
    assert!(srv
        .state()
        .metrics
        .encode()
        .contains("ca_renewals_superseded_total 1"));
    let lock = srv
        .pki
        .store
        .lineage_lock(&hex::decode(&i1.serial).unwrap())
        .unwrap()
        .expect("lineage locked");
    assert_eq!(lock.reason, "superseded_renewal");

    // Locked: even the newest generation cannot renew (or re-enroll over EST) now; the
    // operator investigates and enrolls the host again with a new token.
    let err = renew(&srv, &g2).await.expect_err("locked lineage renewed");
    assert_eq!(code(&err), "lineage_locked");
    let (_, csr_b64) = est_csr();
    let raw = srv
        .client(Some(&g2))
        .raw(
            http::Method::POST,
            "/.well-known/est/simplereenroll",
            Some(("application/pkcs10", csr_b64.into_bytes())),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(raw.status.as_u16(), 403, "{:?}", raw.body);
    assert!(String::from_utf8_lossy(&raw.body).contains("lineage_locked"));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_on_superseded_off_the_attempt_is_refused_but_the_lineage_stays_open() {
    let mut opts = Options::default();
    opts.renewal.lock_on_superseded = false;
    let mut srv = TestServer::with(opts).await;
    let (g1, i1) = enroll(&srv, "nolock.test").await;
    let (g2, _) = renew(&srv, &g1).await.unwrap();
    let err = renew(&srv, &g1).await.expect_err("superseded renewed");
    assert_eq!(code(&err), "generation_superseded");
    assert_eq!(
        audited(&srv, "renew.superseded", "generation_superseded"),
        1
    );
    assert!(srv
        .pki
        .store
        .lineage_lock(&hex::decode(&i1.serial).unwrap())
        .unwrap()
        .is_none());
    renew(&srv, &g2)
        .await
        .expect("the newest generation still renews");
    srv.stop().await;
}

/// Same generation renewing twice at once (two holders of one key racing): exactly one
/// certificate is issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_renewals_of_one_generation_issue_one_certificate() {
    let mut srv = TestServer::start().await;
    let (g1, i1) = enroll(&srv, "race.test").await;
    let results = futures_join(&srv, &g1, 6).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            ["generation_superseded", "lineage_locked"].contains(&e.as_str()),
            "{e}"
        );
    }
    let lineage = srv
        .pki
        .store
        .lineage_certs(&hex::decode(&i1.serial).unwrap())
        .unwrap();
    assert_eq!(lineage.len(), 2, "one renewal stored");
    srv.stop().await;
}

async fn futures_join(srv: &TestServer, id: &Identity, n: usize) -> Vec<Result<String, String>> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let client = srv.client(Some(id));
        set.spawn(async move {
            let (_, csr) = csr("", &[]);
            client
                .post_json::<_, IssuedResponse>("/v1/renew", &RenewRequest { csr })
                .await
                .map(|i| i.serial)
                .map_err(|e| e.code().unwrap_or("(none)").to_string())
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap());
    }
    out
}

/// An agent whose renewal answer was lost retries with the same new key: it gets the same
/// certificate back (the CSR's signature proves it holds the successor's key), nothing new is
/// signed and the lineage stays open. A thief without that key cannot do this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_retried_with_the_same_key_returns_the_same_certificate() {
    let mut srv = TestServer::start().await;
    let (g1, i1) = enroll(&srv, "retry.test").await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr_pem = common::csr_with_key(&key, "", &[]);
    let (_, first) = renew_with(&srv, &g1, key.serialize_pem(), csr_pem.clone())
        .await
        .unwrap();
    let certs = srv.cert_count();
    let (_, again) = renew_with(&srv, &g1, key.serialize_pem(), csr_pem)
        .await
        .expect("retry with the same key");
    assert_eq!(again.serial, first.serial);
    assert_eq!(srv.cert_count(), certs, "nothing new signed");
    assert_eq!(audited(&srv, "renew.replay", "ok"), 1);
    assert!(srv
        .pki
        .store
        .lineage_lock(&hex::decode(&i1.serial).unwrap())
        .unwrap()
        .is_none());
    srv.stop().await;
}

/// The 3 a.m. case: the thief stole generation 1's key and renewed with it before the host
/// did (so the thief holds generation 2). Revoking generation 1 for keyCompromise must end the
/// thief's access: generation 2 is revoked with it (OCSP and CRL too), and the lineage locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_compromise_revokes_every_later_generation_and_locks_the_lineage() {
    let mut srv = status_server().await;
    let (g1, i1) = enroll(&srv, "kc.test").await;
    let (thief2, i2) = renew(&srv, &g1).await.expect("the thief renews");
    let (thief3, i3) = renew(&srv, &thief2).await.expect("and again");

    let resp = revoke(&srv, &i1.serial, "keyCompromise", false)
        .await
        .unwrap();
    assert!(resp.lineage_locked);
    let mut also = resp.also_revoked.clone();
    also.sort();
    let mut want = vec![i2.serial.clone(), i3.serial.clone()];
    want.sort();
    assert_eq!(also, want);
    for s in [&i1.serial, &i2.serial, &i3.serial] {
        assert!(record(&srv, s).is_revoked(), "{s} still valid");
        let status = ocsp_status(&srv, s).await;
        assert!(status.contains("revoked"), "{s}: {status}");
    }
    let err = renew(&srv, &thief3).await.expect_err("thief renewed");
    assert_eq!(code(&err), "cert_revoked");
    assert_eq!(audited(&srv, "lineage.lock", "ok"), 1);
    srv.stop().await;
}

/// `ca-server revoke --lineage SERIAL` (the binary, against the running server) revokes every
/// generation for any reason and locks the lineage; `certs list --lineage` shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_lineage_from_the_cli_revokes_all_generations() {
    let mut srv = status_server().await;
    let (g1, i1) = enroll(&srv, "cli.test").await;
    let (g2, i2) = renew(&srv, &g1).await.unwrap();
    let (_, i3) = renew(&srv, &g2).await.unwrap();
    let dir = srv.tmp();
    std::fs::write(dir.join("root.pem"), &srv.root_pem).unwrap();
    std::fs::write(dir.join("so.crt"), &srv.so.cert).unwrap();
    std::fs::write(dir.join("so.key"), &srv.so.key).unwrap();
    let cli = |args: &[&str]| {
        let url = srv.url.clone();
        let dir = dir.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_ca-server"))
                    .args(&args)
                    .args(["--url", &url])
                    .arg("--root")
                    .arg(dir.join("root.pem"))
                    .arg("--cert")
                    .arg(dir.join("so.crt"))
                    .arg("--key")
                    .arg(dir.join("so.key"))
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    // The middle generation names the lineage as well as the first.
    let out = cli(&[
        "revoke",
        &i2.serial,
        "--lineage",
        "--reason",
        "cessationOfOperation",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("lineage {} locked", i1.serial)),
        "{stdout}"
    );
    for s in [&i1.serial, &i2.serial, &i3.serial] {
        let rec = record(&srv, s);
        assert!(rec.is_revoked(), "{s}");
        assert!(ocsp_status(&srv, s).await.contains("revoked"));
    }
    assert_eq!(audited(&srv, "lineage.revoke", "ok"), 1);
    let out = cli(&["certs", "list", "--lineage", &i3.serial, "--json"]).await;
    assert!(out.status.success());
    let listed: CertsResponse = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.certs.len(), 3);
    assert!(listed
        .certs
        .iter()
        .all(|c| c.status == "revoked" && c.lineage == i1.serial));
    srv.stop().await;
}

/// Rate limits for renewal follow the identity (the lineage), not the serial: each renewal
/// would otherwise start with a full bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_rate_limit_is_per_lineage() {
    let mut opts = Options::default();
    opts.limits.renew.per_second = 1;
    opts.limits.renew.burst = 2;
    let mut srv = TestServer::with(opts).await;
    let (g1, _) = enroll(&srv, "rl.test").await;
    let (g2, _) = renew(&srv, &g1).await.unwrap();
    let (g3, _) = renew(&srv, &g2).await.unwrap();
    let err = renew(&srv, &g3).await.expect_err("bucket is per lineage");
    assert_eq!(code(&err), "rate_limited");
    // Another host's lineage has its own bucket.
    let (h1, _) = enroll(&srv, "rl2.test").await;
    renew(&srv, &h1).await.expect("other lineage");
    srv.stop().await;
}

/// Administrator certificates never renew through the API (a stolen one cannot extend
/// itself), and neither does the server's own TLS certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_server_certificates_do_not_renew() {
    let mut srv = TestServer::start().await;
    let certs = srv.cert_count();
    for admin in [&srv.so, &srv.operator, &srv.auditor] {
        let err = renew(&srv, admin).await.expect_err("admin cert renewed");
        assert_eq!(code(&err), "not_renewable");
    }
    assert_eq!(srv.cert_count(), certs);
    // The server's own certificate: through the same renewal path ca-core takes.
    let server_cert = srv
        .pki
        .store
        .list_certs(&ca_core::store::CertFilter::default())
        .unwrap()
        .into_iter()
        .find(|c| c.profile == ca_server::service::SERVER_TLS_PROFILE)
        .expect("server certificate");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr =
        ca_core::csr::parse_pem_or_der(common::csr_with_key(&key, "", &[]).as_bytes()).unwrap();
    let err = srv
        .state()
        .ca
        .prepare(
            &csr,
            ca_core::issuance::IssueContext::Renewal {
                previous: &server_cert,
            },
        )
        .expect_err("server certificate renewed");
    assert!(matches!(err, ca_core::Error::NotRenewable { .. }), "{err}");
    srv.stop().await;
}

/// An EST simplereenroll CSR (base64 DER) for a fresh key.
fn est_csr() -> (String, String) {
    use base64::Engine;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let der = params.serialize_request(&key).unwrap().der().to_vec();
    (
        key.serialize_pem(),
        base64::engine::general_purpose::STANDARD.encode(der),
    )
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
    let url = format!("{}/ocsp", srv.status_url);
    let serial = format!("0x{serial}");
    let root = dir.join("root-ocsp.pem");
    std::fs::write(&root, &srv.root_pem).unwrap();
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

/// Segregation of duties holds for lineage revocation too: an operator cannot revoke an
/// administrator's certificate by naming its lineage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cannot_revoke_an_administrator_lineage() {
    let mut srv = TestServer::start().await;
    let auditor = common::serial_of(&srv.auditor.cert);
    let err = srv
        .client(Some(&srv.operator))
        .post_json::<_, RevokeResponse>(
            "/v1/admin/revoke",
            &RevokeRequest {
                serial: auditor.clone(),
                reason: Some("keyCompromise".into()),
                lineage: true,
            },
        )
        .await
        .expect_err("operator revoked an administrator lineage");
    assert_eq!(code(&err), "forbidden");
    let rec = record(&srv, &auditor);
    assert!(!rec.is_revoked());
    assert!(srv.pki.store.lineage_lock(&rec.lineage).unwrap().is_none());
    srv.stop().await;
}
