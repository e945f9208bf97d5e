//! `ca-server serve` started while its database or its HSM is away (README "Starting without
//! the database or the HSM"), as an operator would meet it: the real binary, a real
//! PostgreSQL cluster that the test stops and starts (`pg_ctl`), a real SoftHSM token whose
//! user PIN is changed behind the server's back (`C_SetPIN`), real HTTP and TLS.
//!
//! - database down at start: the node does not exit, `/healthz` is 200, `/readyz` 503 with a
//!   JSON reason, the API port refuses connections; once PostgreSQL is back the node becomes
//!   ready without a restart and enrollment works;
//! - a schema newer than the binary and a malformed URL are not retried: exit non-zero at once;
//! - HSM refusing the login at start: the node serves OCSP for an existing certificate from the
//!   store, `/ca.crt` and the last archived CRL, the API port refuses connections; once the PIN works again the node
//!   signs (server certificate, first CRL), binds the API and enrollment works, without a
//!   restart, having tried the refused PIN no more often than `hsm.refused_pin_retry`; a
//!   certificate revoked in the store whose stored answer still says good is answered
//!   `tryLater` meanwhile, never good;
//! - a node waiting for its HSM gives the OCSP refresh and CRL leases up, so that a node that
//!   can sign does that work.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ca_server::api::types::*;
use ca_server::auth::Role;
use ca_server::client::ApiClient;
use ca_server::config::ServerConfig;
use common::{csr, serial_of, Identity};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::pki::{test_profiles, TestPki};
use testkit::Faults;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_ca-server");
/// The variable the node reads its database URL from (set for the child only).
const URL_ENV: &str = "CA_TEST_DEGRADED_DATABASE_URL";

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A production configuration on `pki`'s token and the PostgreSQL database in [`URL_ENV`],
/// with fixed loopback ports. Returns the path and the parsed configuration.
fn write_config(
    pki: &TestPki,
    dir: &Path,
    api: SocketAddr,
    status: SocketAddr,
    url_env: &str,
) -> (PathBuf, ServerConfig) {
    let pin = dir.join("hsm.pin");
    if !pin.exists() {
        pki.token.write_pin_file(&pin).unwrap();
    }
    let text = format!(
        r#"
data_dir = "data"
[listen]
api = "{api}"
status = "{status}"
[hsm]
module = "{module}"
token_label = "{label}"
pin = {{ file = "hsm.pin" }}
refused_pin_retry = "2s"
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
    let path = dir.join(format!("{url_env}.toml"));
    std::fs::write(&path, cfg.to_toml().unwrap()).unwrap();
    let cfg = ServerConfig::load(&path).unwrap();
    (path, cfg)
}

/// A `ca-server serve` child process, killed if the test ends early.
struct Serve {
    child: Child,
    log: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn spawn(pki: &TestPki, config: &Path, url: &str, log: PathBuf) -> Serve {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(config)
            .env(URL_ENV, url)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in pki.token.env() {
            cmd.env(k, v);
        }
        Serve {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("ca-server serve exited ({status}):\n{}", self.log());
        }
    }

    /// The exit status within `limit`.
    fn exit_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "ca-server serve did not exit within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn sigterm(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.exit_within(Duration::from_secs(60))
    }
}

/// A plain HTTP/1.1 request on the status listener: status code and body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// Poll until `f` holds, failing after `limit` (with the node's log).
async fn wait_for<F, Fut>(serve: &mut Serve, limit: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return;
        }
        serve.assert_alive();
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}\n{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn api_refuses(api: SocketAddr) -> bool {
    matches!(
        tokio::net::TcpStream::connect(api).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// An operator certificate, issued by an in-process node on the same database (the serving
/// node trusts what its CA issued and the store holds).
async fn operator(cfg: &ServerConfig) -> Identity {
    admins(cfg, 1).await.remove(0)
}

/// `n` operator certificates from an in-process node on the same database, each with its
/// OCSP answer pre-signed and stored.
async fn admins(cfg: &ServerConfig, n: usize) -> Vec<Identity> {
    let assembled = ca_server::server::ServerBuilder::from_config(cfg)
        .await
        .expect("in-process node opens its parts")
        .assemble()
        .await
        .expect("in-process node assembles");
    let mut out = Vec::new();
    for i in 0..n {
        let (cert, key) = ca_server::dev::issue_admin_cert(
            &assembled.state,
            &format!("degraded-op-{i}"),
            Role::Operator,
            "test",
        )
        .await
        .unwrap();
        out.push(Identity { cert, key });
    }
    // Signs what is still queued (the certificates' OCSP answers) and stores it.
    assembled.close().await;
    out
}

/// `openssl ocsp`'s verdict on a serial, asked over HTTP from the node's status listener.
async fn ocsp_status(status: SocketAddr, pki: &TestPki, serial: &str) -> String {
    let dir = pki.dir.path();
    let issuer = dir.join("issuing.pem");
    let root = dir.join("root.pem");
    let url = format!("http://{status}/ocsp");
    let serial = format!("0x{serial}");
    tokio::task::spawn_blocking(move || {
        let out = Command::new("openssl")
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

/// A token from `operator`, then an enrollment with it; the issued certificate.
async fn enroll(
    api: SocketAddr,
    root_pem: &str,
    operator: &Identity,
    name: &str,
) -> IssuedResponse {
    let url = format!("https://{api}");
    let op = ApiClient::new(
        &url,
        root_pem.as_bytes(),
        Some((operator.cert.as_bytes(), operator.key.as_bytes())),
    )
    .unwrap();
    let token: TokenCreateResponse = op
        .post_json(
            "/v1/admin/tokens",
            &TokenCreateRequest {
                common_name: Some(name.into()),
                sans: vec![format!("dns:{name}")],
                profile: Some("client".into()),
                ttl: None,
            },
        )
        .await
        .expect("token create");
    let (_, csr) = csr(name, &[&format!("dns:{name}")]);
    let issued: IssuedResponse = ApiClient::new(&url, root_pem.as_bytes(), None)
        .unwrap()
        .post_json(
            "/v1/enroll",
            &EnrollRequest {
                token: token.token,
                csr,
            },
        )
        .await
        .expect("enroll");
    assert_eq!(issued.serial, serial_of(&issued.certificate));
    issued
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_at_start_then_up_becomes_ready_without_a_restart() {
    let (pki, pg, db) = tokio::task::spawn_blocking(|| {
        let pki = TestPki::new(ca_core::signer::KeyAlgorithm::P256).expect("test PKI");
        let pg = std::sync::Arc::new(testkit::pg::PgNode::start().expect("PostgreSQL"));
        let db = pg.create_database("degraded").unwrap();
        (pki, pg, db)
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (api, status) = (free_addr(), free_addr());
    let (config, _) = write_config(&pki, dir.path(), api, status, URL_ENV);
    let root_pem = ca_core::x509::pem_encode("CERTIFICATE", &pki.root_der);
    // The in-process node reads the URL from a variable of its own (children get URL_ENV).
    const IN_PROCESS_ENV: &str = "CA_TEST_DEGRADED_DB_DATABASE_URL";
    std::env::set_var(IN_PROCESS_ENV, &db);
    let (_, cfg) = write_config(&pki, dir.path(), api, status, IN_PROCESS_ENV);
    let op = operator(&cfg).await;

    // PostgreSQL goes down; the node starts.
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.stop("fast"))
        .await
        .unwrap()
        .unwrap();
    let mut serve = Serve::spawn(&pki, &config, &db, dir.path().join("serve-a.log"));
    wait_for(
        &mut serve,
        Duration::from_secs(30),
        "/healthz on the status listener",
        || async { matches!(http(status, "GET", "/healthz").await, Ok((200, _))) },
    )
    .await;
    // Alive, not ready, and says why in JSON; nothing else is served; the API port refuses.
    let (code, body) = http(status, "GET", "/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    let reason: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reason["ready"], false);
    assert_eq!(reason["state"], "waiting_for_store");
    assert_eq!(reason["code"], "store_unavailable");
    let (code, body) = http(status, "POST", "/ocsp").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("store_unavailable"), "{body}");
    let (_, metrics) = http(status, "GET", "/metrics").await.unwrap();
    assert_eq!(metric(&metrics, "ca_start_state "), Some(1.0), "{metrics}");
    assert!(
        api_refuses(api).await,
        "the API listens while the store is down"
    );
    // It keeps waiting (does not exit), logging its attempts without the database URL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    serve.assert_alive();
    let log = serve.log();
    assert!(log.contains("the store not available at start"), "{log}");
    assert!(!log.contains(&db), "the database URL was logged:\n{log}");

    // PostgreSQL is back: ready without a restart, and enrollment works.
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.start_again())
        .await
        .unwrap()
        .unwrap();
    wait_for(
        &mut serve,
        Duration::from_secs(90),
        "the API listener",
        || async { tokio::net::TcpStream::connect(api).await.is_ok() },
    )
    .await;
    let issued = enroll(api, &root_pem, &op, "after-db.test").await;
    let (code, body) = http(status, "GET", "/readyz").await.unwrap();
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    let (_, metrics) = http(status, "GET", "/metrics").await.unwrap();
    assert_eq!(metric(&metrics, "ca_start_state "), Some(0.0), "{metrics}");
    let verdict = ocsp_status(status, &pki, &issued.serial).await;
    assert!(verdict.contains(": good"), "{verdict}");
    assert!(serve.sigterm().success(), "{}", serve.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_too_new_and_a_malformed_url_exit_at_once() {
    let (pki, _pg, db) = tokio::task::spawn_blocking(|| {
        let pki = TestPki::new(ca_core::signer::KeyAlgorithm::P256).expect("test PKI");
        let pg = testkit::pg::PgServer::shared().expect("PostgreSQL");
        let db = pg.fresh_database().unwrap();
        (pki, pg, db)
    })
    .await
    .unwrap();
    let url = db.url().to_string();
    let db = tokio::task::spawn_blocking(move || {
        drop(ca_core::store::PgStore::open_with_pool_size(&url, 1).unwrap());
        db.execute("INSERT INTO schema_version (version) VALUES (9999)")
            .unwrap();
        db
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_config(&pki, dir.path(), free_addr(), free_addr(), URL_ENV);

    let mut serve = Serve::spawn(&pki, &config, db.url(), dir.path().join("too-new.log"));
    let status = serve.exit_within(Duration::from_secs(60));
    assert!(!status.success());
    let log = serve.log();
    assert!(log.contains("newer than this binary knows"), "{log}");
    assert!(!log.contains("not available at start; retrying"), "{log}");

    let bad = "postgresql://ca_test@127.0.0.1:notaport/x";
    let mut serve = Serve::spawn(&pki, &config, bad, dir.path().join("bad-url.log"));
    let status = serve.exit_within(Duration::from_secs(30));
    assert!(!status.success());
    let log = serve.log();
    assert!(log.contains("parse database URL"), "{log}");
    assert!(!log.contains(bad), "the URL was logged:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsm_refusing_the_login_at_start_serves_ocsp_then_signs_when_it_accepts() {
    let (pki, _pg, db) = tokio::task::spawn_blocking(|| {
        let pki = TestPki::new(ca_core::signer::KeyAlgorithm::P256).expect("test PKI");
        let pg = testkit::pg::PgServer::shared().expect("PostgreSQL");
        let db = pg.fresh_database().unwrap();
        (pki, pg, db)
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (api, status) = (free_addr(), free_addr());
    let (config, _) = write_config(&pki, dir.path(), api, status, URL_ENV);
    let root_pem = ca_core::x509::pem_encode("CERTIFICATE", &pki.root_der);
    // The in-process node reads the URL from a variable of its own (children get URL_ENV).
    const IN_PROCESS_ENV: &str = "CA_TEST_DEGRADED_HSM_DATABASE_URL";
    std::env::set_var(IN_PROCESS_ENV, db.url());
    let (_, cfg) = write_config(&pki, dir.path(), api, status, IN_PROCESS_ENV);
    // Existing certificates with their OCSP answers pre-signed in the store; the second is
    // then revoked in the store only, as a node that died between storing a revocation and
    // re-signing its OCSP answer leaves it: its stored answer still says good.
    let mut ids = admins(&cfg, 2).await;
    let victim = ids.pop().unwrap();
    let op = ids.pop().unwrap();
    let op_serial = serial_of(&op.cert);
    let victim_serial = serial_of(&victim.cert);
    let url = db.url().to_string();
    let s = victim_serial.clone();
    tokio::task::spawn_blocking(move || {
        use ca_core::store::prelude::*;
        let pg = ca_core::store::PgStore::open_with_pool_size(&url, 1).unwrap();
        pg.revoke(
            &hex::decode(s).unwrap(),
            chrono::Utc::now(),
            ca_core::revocation::RevocationReason::KeyCompromise,
        )
        .unwrap();
    })
    .await
    .unwrap();

    // The token's PIN is changed behind the node's back; the node starts.
    pki.token.inject_login_refusal().unwrap();
    let refused_since = Instant::now();
    let mut serve = Serve::spawn(&pki, &config, db.url(), dir.path().join("serve-hsm.log"));
    wait_for(
        &mut serve,
        Duration::from_secs(30),
        "OCSP from the store",
        || async {
            ocsp_status(status, &pki, &op_serial)
                .await
                .contains(": good")
        },
    )
    .await;
    // The revoked certificate's stale `good` answer is never served: tryLater until the HSM
    // can sign its revoked answer.
    let verdict = ocsp_status(status, &pki, &victim_serial).await;
    assert!(!verdict.contains(": good"), "{verdict}");
    assert!(verdict.to_lowercase().contains("trylater"), "{verdict}");
    let (code, ca_der) = http(status, "GET", "/ca.crt").await.unwrap();
    assert_eq!(code, 200);
    assert!(!ca_der.is_empty());
    assert!(api_refuses(api).await, "the API listens without the HSM");
    let (_, metrics) = http(status, "GET", "/metrics").await.unwrap();
    assert_eq!(metric(&metrics, "ca_start_state "), Some(2.0), "{metrics}");
    // The last CRL the in-process node archived is served, and OCSP readiness holds.
    let (code, _) = http(status, "GET", "/crl").await.unwrap();
    assert_eq!(
        code, 200,
        "the archived CRL is not served while the HSM is away"
    );
    let (code, body) = http(status, "GET", "/readyz").await.unwrap();
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    // Still refused a while later: still waiting, still serving.
    tokio::time::sleep(Duration::from_secs(5)).await;
    serve.assert_alive();
    assert!(api_refuses(api).await);
    assert!(ocsp_status(status, &pki, &op_serial)
        .await
        .contains(": good"));

    // The PIN works again: the node signs and serves the API, without a restart.
    pki.token.end_login_refusal().unwrap();
    let refused_for = refused_since.elapsed();
    wait_for(
        &mut serve,
        Duration::from_secs(60),
        "the API listener",
        || async { tokio::net::TcpStream::connect(api).await.is_ok() },
    )
    .await;
    // The refused PIN was tried at most once per hsm.refused_pin_retry (2 s), plus the first.
    let log = serve.log();
    let logins = log.matches("HSM login failed; backing off").count();
    assert!(logins >= 1, "{log}");
    assert!(
        logins as u64 <= refused_for.as_secs() / 2 + 2,
        "{logins} refused logins in {refused_for:?}:\n{log}"
    );
    let verdict = ocsp_status(status, &pki, &victim_serial).await;
    assert!(verdict.contains(": revoked"), "{verdict}");
    let issued = enroll(api, &root_pem, &op, "after-hsm.test").await;
    assert!(ocsp_status(status, &pki, &issued.serial)
        .await
        .contains(": good"));
    let (code, _) = http(status, "GET", "/crl").await.unwrap();
    assert_eq!(code, 200, "no CRL once the HSM signs");
    let (code, body) = http(status, "GET", "/readyz").await.unwrap();
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    assert!(serve.sigterm().success(), "{}", serve.log());
}

/// A node waiting for its HSM must not keep the OCSP refresh lease: while it holds it, no
/// other node re-signs answers near their nextUpdate, and every node's answers run out. Here
/// the waiting node's responder (keys known from the certificate only) has answers to sign
/// (a certificate issued without one), takes the lease on its maintenance pass, signs nothing,
/// and must give the lease up so that a node with a working HSM takes it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_waiting_for_its_hsm_gives_the_ocsp_refresh_lease_up() {
    use ca_core::signer::deferred::DeferredSigner;
    use ca_core::store::prelude::*;
    use ca_server::status::{StatusConfig, StatusSetup, StatusState, OCSP_REFRESH_LEASE};
    use std::sync::Arc;
    let pki = tokio::task::spawn_blocking(|| {
        let pki = TestPki::new(ca_core::signer::KeyAlgorithm::P256).expect("test PKI");
        // Issued and stored, with no OCSP answer yet.
        pki.issue_new_key("client", "waiting.test").unwrap();
        pki
    })
    .await
    .unwrap();
    let issuing: Arc<dyn ca_core::signer::Signer> =
        Arc::new(DeferredSigner::from_cert("issuing key", &pki.issuing_der).unwrap());
    let setup = StatusSetup {
        issuer_cert_der: pki.issuing_der.clone(),
        issuing_signer: issuing.clone(),
        ocsp_key: ca_core::ocsp::ResponderKey::ca(issuing),
        store: pki.store.clone(),
        clock: Arc::new(ca_core::clock::SystemClock),
        responder: Default::default(),
        crl: Default::default(),
        external_responses: vec![],
        root_crl: None,
        http: StatusConfig::default(),
    };
    let state = tokio::task::spawn_blocking(move || StatusState::build(setup))
        .await
        .unwrap()
        .expect("the status state starts without the HSM");
    // Nothing loaded yet: the first maintenance pass loads, queues the certificate without an
    // answer, and cannot sign it.
    assert_eq!(state.responder().resign_backlog(), 0);
    assert!(state.crls().current().is_none());
    let s = state.clone();
    tokio::task::spawn_blocking(move || s.maintain_blocking())
        .await
        .unwrap();
    assert!(
        state.responder().resign_backlog() >= 1,
        "signed without a key"
    );
    let store = pki.store.clone();
    let (refresh, crl) = tokio::task::spawn_blocking(move || {
        let ttl = Duration::from_secs(60);
        (
            store
                .try_lease(OCSP_REFRESH_LEASE, "a-node-with-its-hsm", ttl)
                .unwrap(),
            store
                .try_lease(ca_core::crl::CRL_LEASE, "a-node-with-its-hsm", ttl)
                .unwrap(),
        )
    })
    .await
    .unwrap();
    assert!(refresh, "the waiting node kept the OCSP refresh lease");
    assert!(crl, "the waiting node kept the CRL lease");
    let s = state.clone();
    tokio::task::spawn_blocking(move || s.close_blocking())
        .await
        .unwrap();
}
