//! A CA node on PostgreSQL through database outages, under enrollment and renewal load, with
//! real HTTPS, a real SoftHSM token and real PostgreSQL servers of the test's own
//! (`testkit::pg::PgNode`):
//!
//! - the server restarted (`pg_ctl stop -m fast`, then start): requests during the outage are
//!   answered `503 store_unavailable` with a `Retry-After` (never a 500, never a success that
//!   is not in the database), `/readyz` fails during the outage and passes after it, the node
//!   reconnects by itself, and every acknowledged certificate is in the database;
//! - the primary crashed (`pg_ctl stop -m immediate`) and its synchronous streaming standby
//!   (made with `pg_basebackup -R`) promoted: the node, given a multi-host URL with
//!   `target_session_attrs=read-write`, continues on the new primary, not one
//!   acknowledged certificate is lost, and the real `ca-agent` daemon renewing through the
//!   node meets the outage (a failed attempt) and renews again by itself;
//!
//! - the primary made read-only (`default_transaction_read_only`, as a switchover fences the
//!   old primary; pooled connections stay open): `503`s and a failing `/readyz`, then writes
//!   again without a restart once it is writable;
//! - a node process (`ca-server serve` on PostgreSQL) killed with SIGKILL under load, 20
//!   rounds (`CA_KILL9_ROUNDS`): after each, every acknowledged certificate is in the
//!   database, and the restarted node's OCSP responder answers `good` for each.
//!
//! The renewing clients behave as `ca-agent` does (its `renew`): on a `503` they wait for the
//! `Retry-After` and send the same CSR again (same key), so a renewal whose answer was lost
//! is answered again by the CA (the renewal replay), never seen as a cloned key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ca_core::clock::SystemClock;
use ca_core::issuance::IssuerUrls;
use ca_core::profile::Span;
use ca_core::signer::KeyAlgorithm;
use ca_core::store::{prelude::*, PgStore, Store};
use ca_server::api::types::*;
use ca_server::auth::Role;
use ca_server::client::{ApiClient, ClientError};
use ca_server::config::{Limits, TokenSection};
use ca_server::metrics::Metrics;
use ca_server::server::{self, Running, ServerParts};
use common::{csr, Identity};
use http::Method;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::pg::PgNode;
use testkit::pki::{test_profiles, TestPki};
use tokio::net::TcpListener;

struct Node {
    running: Option<Running>,
    url: String,
    root_pem: String,
    operator: Identity,
}

impl Node {
    fn client(&self, id: Option<&Identity>) -> ApiClient {
        ApiClient::new(
            &self.url,
            self.root_pem.as_bytes(),
            id.map(|i| (i.cert.as_bytes(), i.key.as_bytes())),
        )
        .unwrap()
    }

    async fn readyz(&self) -> u16 {
        match self
            .client(None)
            .raw(Method::GET, "/readyz", None, &[])
            .await
        {
            Ok(r) => r.status.as_u16(),
            Err(_) => 0,
        }
    }

    async fn wait_readyz(&self, want: u16, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if self.readyz().await == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "/readyz did not answer {want} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A CA node (API and status listeners) on `store`, with the issuing key of `pki`'s token.
async fn start_node(pki: &TestPki, store: Arc<dyn Store>) -> Node {
    let mut limits = Limits::default();
    for r in [&mut limits.enroll, &mut limits.renew, &mut limits.admin] {
        r.per_second = 10_000;
        r.burst = 10_000;
    }
    // A profile whose certificates live one minute: the agent renews every few seconds.
    let mut profiles = test_profiles();
    let mut minute = profiles.0["client"].clone();
    minute.validity = Span(chrono::Duration::seconds(60));
    minute.backdate = Span(chrono::Duration::zero());
    profiles.0.insert("minute".into(), minute);
    let parts = ServerParts {
        signer: pki.issuing_signer.clone(),
        issuing_der: pki.issuing_der.clone(),
        chain_der: vec![pki.root_der.clone()],
        profiles,
        urls: IssuerUrls::default(),
        store,
        clock: Arc::new(SystemClock),
        tls_names: vec!["dns:localhost".into(), "ip:127.0.0.1".into()],
        tls_validity: Span(chrono::Duration::days(1)),
        admin_validity: Span(chrono::Duration::days(30)),
        limits,
        tokens: TokenSection::default(),
        renewal: Default::default(),
        metrics: Arc::new(Metrics::new()),
        audit: None,
    };
    let assembled = server::ServerBuilder::new(parts)
        .with_status(
            ca_server::config::OcspSection::default(),
            ca_server::config::CrlSection::default(),
        )
        .assemble()
        .await
        .expect("server assembles");
    let (cert, key) = ca_server::dev::issue_admin_cert(
        &assembled.state,
        "failover-operator",
        Role::Operator,
        "test",
    )
    .await
    .unwrap();
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let status = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = assembled
        .start(api, Some(status))
        .await
        .expect("server starts");
    Node {
        url: format!("https://{}", running.api_addr),
        running: Some(running),
        root_pem: ca_core::x509::pem_encode("CERTIFICATE", &pki.root_der),
        operator: Identity { cert, key },
    }
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    /// Serials of certificates a client got (enrolled or renewed).
    acked: Vec<String>,
    /// `503 store_unavailable` answers with a `Retry-After`.
    unavailable: usize,
    /// The server could not be reached (only when a test kills it).
    unreachable: usize,
    /// Anything else that failed: must stay empty.
    unexpected: Vec<String>,
}

/// Count a failure: a clean `503 store_unavailable` with `Retry-After`, or unexpected. The
/// `Retry-After` to honour.
fn failed(t: &Mutex<Tally>, what: &str, e: &ClientError) -> Duration {
    match e {
        ClientError::Api {
            status,
            code,
            retry_after: Some(ra),
            ..
        } if status.as_u16() == 503 && code == "store_unavailable" => {
            t.lock().unwrap().unavailable += 1;
            Duration::from_secs(*ra)
        }
        ClientError::Connect { .. } => {
            t.lock().unwrap().unreachable += 1;
            Duration::from_millis(200)
        }
        _ => {
            t.lock().unwrap().unexpected.push(format!("{what}: {e}"));
            Duration::from_secs(1)
        }
    }
}

/// A renewal as `ca-agent` makes it: the same CSR (same new key) until it is answered,
/// waiting the `Retry-After` of each `503` (bounded: 90 s).
async fn renew_like_agent(
    holder: &ApiClient,
    csr: &str,
    t: &Mutex<Tally>,
    stop: &AtomicBool,
) -> Option<IssuedResponse> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match holder
            .post_json::<_, IssuedResponse>(
                "/v1/renew",
                &RenewRequest {
                    csr: csr.to_string(),
                },
            )
            .await
        {
            Ok(r) => return Some(r),
            Err(e) => {
                let wait = failed(t, "renew", &e);
                if Instant::now() > deadline || (stop.load(Ordering::Relaxed) && !is_503(&e)) {
                    return None;
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

fn is_503(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { status, .. } if status.as_u16() == 503)
}

/// One client: enroll (a token of its own each time), then renew its certificate over and
/// over, as an agent would, every `renewals` renewals enrolling again.
async fn client_loop(
    w: usize,
    url: String,
    root_pem: String,
    operator: Identity,
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
) {
    let admin = ApiClient::new(
        &url,
        root_pem.as_bytes(),
        Some((operator.cert.as_bytes(), operator.key.as_bytes())),
    )
    .unwrap();
    let anon = ApiClient::new(&url, root_pem.as_bytes(), None).unwrap();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let cn = format!("w{w}-{i}.failover.test");
        let san = format!("dns:{cn}");
        let tok = match admin
            .post_json::<_, TokenCreateResponse>(
                "/v1/admin/tokens",
                &TokenCreateRequest {
                    common_name: Some(cn.clone()),
                    sans: vec![san.clone()],
                    profile: Some("client".into()),
                    ttl: None,
                },
            )
            .await
        {
            Ok(t) => t,
            Err(e) => {
                let wait = failed(&tally, "token", &e);
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let (mut key, csr1) = csr(&cn, &[san.as_str()]);
        let mut cert = match anon
            .post_json::<_, IssuedResponse>(
                "/v1/enroll",
                &EnrollRequest {
                    token: tok.token,
                    csr: csr1,
                },
            )
            .await
        {
            Ok(issued) => {
                tally.lock().unwrap().acked.push(issued.serial.clone());
                issued.certificate
            }
            Err(e) => {
                // The token may be used up by an enrollment whose outcome is unknown: a new
                // token next time.
                let wait = failed(&tally, "enroll", &e);
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        for _ in 0..5 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let holder = ApiClient::new(
                &url,
                root_pem.as_bytes(),
                Some((cert.as_bytes(), key.as_bytes())),
            )
            .unwrap();
            let (new_key, csr) = csr(&cn, &[san.as_str()]);
            match renew_like_agent(&holder, &csr, &tally, &stop).await {
                Some(r) => {
                    tally.lock().unwrap().acked.push(r.serial.clone());
                    cert = r.certificate;
                    key = new_key;
                }
                None => break,
            }
        }
    }
}

struct Load {
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(node: &Node, clients: usize) -> Load {
        Self::start_at(&node.url, &node.root_pem, &node.operator, clients)
    }

    fn start_at(url: &str, root_pem: &str, operator: &Identity, clients: usize) -> Load {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|w| {
                tokio::spawn(client_loop(
                    w,
                    url.to_string(),
                    root_pem.to_string(),
                    operator.clone(),
                    tally.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Load { tally, stop, tasks }
    }

    fn acked(&self) -> usize {
        self.tally.lock().unwrap().acked.len()
    }

    /// Wait until `n` more certificates are acknowledged.
    async fn wait_for_more(&self, n: usize, limit: Duration) {
        let start = Instant::now();
        let from = self.acked();
        while self.acked() < from + n {
            assert!(
                start.elapsed() < limit,
                "no {n} new certificates within {limit:?} (writes did not resume); unexpected: {:?}",
                self.tally.lock().unwrap().unexpected
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(120), t)
                .await
                .expect("a client finishes")
                .unwrap();
        }
        Arc::try_unwrap(self.tally)
            .ok()
            .expect("no client left")
            .into_inner()
            .unwrap()
    }
}

/// Every acknowledged certificate is in the database at `url` (a fresh connection), and the
/// audit chain verifies.
async fn check_database(url: String, tally: &Tally) {
    let acked = tally.acked.clone();
    tokio::task::spawn_blocking(move || {
        let store = PgStore::open(&url).expect("database reopens");
        for s in &acked {
            let rec = store
                .get_cert(&hex::decode(s).unwrap())
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged certificate {s} is not in the database"));
            assert_eq!(&rec.serial_hex(), s);
        }
        store.verify_audit().expect("audit chain intact");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_under_load_gives_clean_503s_and_the_node_reconnects_by_itself() {
    let (pki, pg, url) = tokio::task::spawn_blocking(|| {
        let pg = PgNode::start().expect("PostgreSQL");
        let url = pg.create_database("ca").unwrap();
        (TestPki::new(KeyAlgorithm::P256).expect("test PKI"), pg, url)
    })
    .await
    .unwrap();
    let pg = Arc::new(pg);
    let store_url = url.clone();
    let store = tokio::task::spawn_blocking(move || PgStore::open_with_pool_size(&store_url, 8))
        .await
        .unwrap()
        .expect("PgStore");
    let mut node = start_node(&pki, Arc::new(store)).await;
    node.wait_readyz(200, Duration::from_secs(30)).await;

    let load = Load::start(&node, 4);
    load.wait_for_more(10, Duration::from_secs(60)).await;

    // The database goes away (sessions terminated: SQLSTATE 57P01, then connection refused).
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.stop("fast"))
        .await
        .unwrap()
        .unwrap();
    let took = node.wait_readyz(503, Duration::from_secs(15)).await;
    eprintln!("/readyz failing {took:?} after the database stopped");
    // The outage lasts a few seconds of load.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = load.tally.lock().unwrap().unavailable;
    assert!(during > 0, "no request got 503 during the outage");

    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.start_again())
        .await
        .unwrap()
        .unwrap();
    let took = node.wait_readyz(200, Duration::from_secs(30)).await;
    eprintln!("/readyz passing {took:?} after the database started again");
    load.wait_for_more(10, Duration::from_secs(60)).await;
    let tally = load.finish().await;
    assert_eq!(tally.unreachable, 0, "the node stopped answering");
    assert!(
        tally.unexpected.is_empty(),
        "failures other than 503 store_unavailable + Retry-After: {:?}",
        tally.unexpected
    );
    eprintln!(
        "{} certificates acknowledged, {} clean 503s",
        tally.acked.len(),
        tally.unavailable
    );
    check_database(url, &tally).await;
    if let Some(r) = node.running.take() {
        r.shutdown().await;
    }
}

/// The real `ca-agent` daemon, renewing one certificate of the `minute` profile through a
/// node (killed on drop).
struct Agent {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `ca-agent` binary next to `ca-server`, built if it is missing.
fn agent_bin() -> std::path::PathBuf {
    let server = std::path::Path::new(env!("CARGO_BIN_EXE_ca-server"));
    let bin = server.with_file_name("ca-agent");
    if !bin.exists() {
        let target = server.parent().unwrap().parent().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = std::process::Command::new(cargo)
            .args(["build", "-p", "ca-agent"])
            .env("CARGO_TARGET_DIR", target)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build -p ca-agent");
        assert!(st.success(), "cargo build -p ca-agent failed");
    }
    bin
}

impl Agent {
    /// Enroll (`ca-agent enroll` with a token made by the node's operator), then run the
    /// daemon: renewal at 10% of the lifetime, retries from 1 s to 4 s.
    async fn start(node: &Node, pki: &TestPki) -> Agent {
        let tok: TokenCreateResponse = node
            .client(Some(&node.operator))
            .post_json(
                "/v1/admin/tokens",
                &TokenCreateRequest {
                    common_name: Some("agent.failover.test".into()),
                    sans: vec!["dns:agent.failover.test".into()],
                    profile: Some("minute".into()),
                    ttl: None,
                },
            )
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let tls = d.join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        let cfg = d.join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "server = \"{url}\"\nroot_fingerprint = \"{fp}\"\nstate_dir = \"{state}\"\n\
                 retry_min = \"1s\"\nretry_max = \"4s\"\ncheck_interval = \"20s\"\n\
                 [[certificate]]\nname = \"svc\"\ncert = \"{tls}/svc.crt\"\n\
                 key = \"{tls}/svc.key\"\nchain = \"{tls}/chain.pem\"\n\
                 fullchain = \"{tls}/fullchain.pem\"\nrenew_at = 0.1\njitter = 0.05\n",
                url = node.url,
                fp = ca_core::signer::sha256_hex(&pki.root_der),
                state = d.join("state").display(),
                tls = tls.display(),
            ),
        )
        .unwrap();
        let token_file = d.join("enroll.token");
        std::fs::write(&token_file, &tok.token).unwrap();
        let bin = agent_bin();
        let (b, c, t) = (bin.clone(), cfg.clone(), token_file.clone());
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(b)
                .arg("enroll")
                .arg("--config")
                .arg(c)
                .arg("--token-file")
                .arg(t)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "ca-agent enroll: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let child = std::process::Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(d.join("agent.log")).unwrap())
            .spawn()
            .unwrap();
        Agent { child, dir }
    }

    /// Serial (lowercase hex) of the certificate the agent installed.
    fn serial(&self) -> String {
        let pem = std::fs::read_to_string(self.dir.path().join("tls/svc.crt")).unwrap();
        common::serial_of(&pem)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Wait until the agent installs a certificate other than `from`; its serial.
    async fn wait_renewed(&mut self, from: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "the agent exited:\n{}",
                self.log()
            );
            let now = self.serial();
            if now != from {
                return now;
            }
            assert!(
                start.elapsed() < limit,
                "the agent did not renew within {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn primary_crash_and_standby_promotion_under_renewal_load_lose_nothing_acknowledged() {
    let (pki, primary, standby) = tokio::task::spawn_blocking(|| {
        let pki = TestPki::new(KeyAlgorithm::P256).expect("test PKI");
        let primary = PgNode::start().expect("PostgreSQL primary");
        primary.create_database("ca").unwrap();
        let standby = PgNode::standby_of(&primary).expect("streaming standby");
        // Synchronous replication: a commit returns once the standby has it, so the standby
        // holds every acknowledged certificate when the primary crashes (README "Running on
        // PostgreSQL: failover").
        primary
            .alter_system("synchronous_standby_names", "*")
            .unwrap();
        assert!(standby.in_recovery().unwrap());
        (pki, primary, standby)
    })
    .await
    .unwrap();
    let multi = format!(
        "postgresql://ca_test@{},{}/ca?target_session_attrs=read-write",
        primary.host_port(),
        standby.host_port()
    );
    let store_url = multi.clone();
    let store = tokio::task::spawn_blocking(move || PgStore::open_with_pool_size(&store_url, 8))
        .await
        .unwrap()
        .expect("PgStore on the multi-host URL");
    let mut node = start_node(&pki, Arc::new(store)).await;
    node.wait_readyz(200, Duration::from_secs(30)).await;

    let mut agent = Agent::start(&node, &pki).await;
    let enrolled = agent.serial();
    let load = Load::start(&node, 4);
    load.wait_for_more(10, Duration::from_secs(60)).await;
    let before = agent.wait_renewed(&enrolled, Duration::from_secs(60)).await;

    // The primary crashes.
    tokio::task::spawn_blocking(move || primary.stop("immediate").map(|()| primary))
        .await
        .unwrap()
        .unwrap();
    node.wait_readyz(503, Duration::from_secs(15)).await;
    // Longer than the agent's renewal interval (10% of a minute): its renewal falls in the
    // outage.
    tokio::time::sleep(Duration::from_secs(7)).await;
    // The standby only accepts reads: the node must not take it for a primary.
    assert_eq!(node.readyz().await, 503);
    let standby = Arc::new(standby);
    let s = standby.clone();
    tokio::task::spawn_blocking(move || s.promote())
        .await
        .unwrap()
        .unwrap();
    let took = node.wait_readyz(200, Duration::from_secs(30)).await;
    eprintln!("/readyz passing {took:?} after the promotion");
    load.wait_for_more(10, Duration::from_secs(60)).await;
    // The agent renews through the new primary by itself (no operator, no restart), twice.
    let at_promotion = agent.serial();
    let after = agent
        .wait_renewed(&at_promotion, Duration::from_secs(60))
        .await;
    let after2 = agent.wait_renewed(&after, Duration::from_secs(60)).await;
    let mut tally = load.finish().await;
    let failures = agent.log().matches("attempt failed").count();
    eprintln!(
        "agent: enrolled {enrolled}, renewed to {before} before the crash, {at_promotion} at \
         the promotion, {after} and {after2} after; {failures} failed attempts retried"
    );
    assert!(
        failures >= 1,
        "the agent never met the outage:\n{}",
        agent.log()
    );
    tally
        .acked
        .extend([enrolled, before, at_promotion, after, after2]);
    assert_eq!(tally.unreachable, 0, "the node stopped answering");
    assert!(
        tally.unexpected.is_empty(),
        "failures other than 503 store_unavailable + Retry-After: {:?}",
        tally.unexpected
    );
    assert!(tally.unavailable > 0, "no request saw the failover");
    eprintln!(
        "{} certificates acknowledged, {} clean 503s",
        tally.acked.len(),
        tally.unavailable
    );
    // On the new primary alone.
    check_database(standby.url("ca"), &tally).await;
    if let Some(r) = node.running.take() {
        r.shutdown().await;
    }
}

const KILL9_URL_ENV: &str = "CA_TEST_KILL9_DATABASE_URL";
const SERVER_BIN: &str = env!("CARGO_BIN_EXE_ca-server");

/// A production-like configuration on `pki`'s token and the database whose URL is in
/// [`KILL9_URL_ENV`], listening on ephemeral loopback ports.
fn write_kill9_config(pki: &TestPki, dir: &std::path::Path) -> std::path::PathBuf {
    let pin = dir.join("hsm.pin");
    pki.token.write_pin_file(&pin).unwrap();
    let text = format!(
        r#"
data_dir = "data"
[listen]
api = "127.0.0.1:0"
status = "127.0.0.1:0"
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
url = {{ env = "{KILL9_URL_ENV}" }}
pool_size = 8
[limits.enroll]
per_second = 10000
burst = 10000
[limits.renew]
per_second = 10000
burst = 10000
[limits.admin]
per_second = 10000
burst = 10000
[profiles.placeholder]
validity = "1h"
"#,
        module = pki.token.module.display(),
        label = pki.token.label,
        issuing = pki.dir.path().join("issuing.pem").display(),
        root = pki.dir.path().join("root.pem").display(),
    );
    let mut cfg = ca_server::config::ServerConfig::parse(&text).unwrap();
    cfg.profiles = test_profiles();
    let path = dir.join("ca.toml");
    std::fs::write(&path, cfg.to_toml().unwrap()).unwrap();
    path
}

/// A `ca-server serve` process, killed (SIGKILL) on drop.
struct Proc {
    child: std::process::Child,
    api: String,
    status: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `ca-server serve --config`, and wait for its listening line.
fn spawn_serve(config: &std::path::Path, log: &std::path::Path) -> Proc {
    use std::io::BufRead;
    let mut child = std::process::Command::new(SERVER_BIN)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let line = loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("ca-server listening:") => break l,
            Some(_) => {}
            None => panic!(
                "ca-server serve exited during startup:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
    };
    // "ca-server listening: API https://A status http://B"
    let mut words = line.split_whitespace();
    let api = words
        .find(|w| w.starts_with("https://"))
        .unwrap()
        .to_string();
    let status = words
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    Proc { child, api, status }
}

/// `openssl ocsp` asks the responder at `status_url` about `serials` (hex), 16 per request
/// (the responder's limit); the serials not answered `good`.
fn not_good(pki: &TestPki, status_url: &str, serials: &[String]) -> Vec<String> {
    let dir = pki.dir.path();
    let mut bad = Vec::new();
    for chunk in serials.chunks(16) {
        let mut cmd = std::process::Command::new("openssl");
        cmd.args(["ocsp", "-no_nonce", "-issuer"])
            .arg(dir.join("issuing.pem"))
            .args(["-url", &format!("{status_url}/ocsp"), "-CAfile"])
            .arg(dir.join("root.pem"));
        for s in chunk {
            cmd.args(["-serial", &format!("0x{s}")]);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
        for s in chunk {
            let good = text.lines().any(|l| {
                l.trim_start_matches("0x")
                    .trim_start_matches('0')
                    .starts_with(&format!("{}: good", s.trim_start_matches('0')))
            });
            if !good {
                bad.push(s.clone());
            }
        }
    }
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_on_postgres_loses_nothing_acknowledged_and_ocsp_says_good() {
    let rounds: usize = std::env::var("CA_KILL9_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let (pki, db) = common::pki_and_database().await;
    // Set once, before anything reads it; no other test of this binary reads it.
    std::env::set_var(KILL9_URL_ENV, db.url());
    let dir = tempfile::tempdir().unwrap();
    let config = write_kill9_config(&pki, dir.path());
    let cfg = ca_server::config::ServerConfig::load(&config).unwrap();
    // An operator certificate, recorded in the database (the server looks administrators up).
    let assembled = server::ServerBuilder::from_config(&cfg)
        .await
        .expect("parts")
        .assemble()
        .await
        .expect("assembles");
    let (cert, key) =
        ca_server::dev::issue_admin_cert(&assembled.state, "kill9-operator", Role::Operator, "t")
            .await
            .unwrap();
    assembled.close().await;
    let operator = Identity { cert, key };
    let root_pem = ca_core::x509::pem_encode("CERTIFICATE", &pki.root_der);

    let mut all: Vec<String> = Vec::new();
    let mut unchecked: Vec<String> = Vec::new();
    for round in 1..=rounds {
        let log = dir.path().join(format!("round-{round}.log"));
        let c = config.clone();
        let proc = tokio::task::spawn_blocking(move || spawn_serve(&c, &log))
            .await
            .unwrap();
        if round == 1 {
            // The check itself: a serial this CA never issued is not `good`.
            let never = "7a11ce5e7a11ce5e7a11ce5e7a11ce5e".to_string();
            assert_eq!(
                not_good(&pki, &proc.status, std::slice::from_ref(&never)),
                vec![never]
            );
        }
        // The previous rounds' certificates, answered by the restarted node (a response not
        // signed before the kill is signed now: allow the backlog a little time).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let bad = not_good(&pki, &proc.status, &unchecked);
            if bad.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: OCSP does not answer good for acknowledged certificates {bad:?}"
            );
            unchecked = bad;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let load = Load::start_at(&proc.api, &root_pem, &operator, 3);
        load.wait_for_more(1, Duration::from_secs(60)).await;
        let ms = 200 + (rand_ms(round) % 1500);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        drop(proc); // SIGKILL, waited for
        let tally = load.finish().await;
        let internal: Vec<_> = tally
            .unexpected
            .iter()
            .filter(|e| e.contains("500") || e.contains("internal"))
            .collect();
        assert!(internal.is_empty(), "round {round}: {internal:?}");
        check_database(db.url().to_string(), &tally).await;
        eprintln!(
            "round {round}: killed after {ms} ms, {} certificates acknowledged, all in the database",
            tally.acked.len()
        );
        unchecked = tally.acked.clone();
        all.extend(tally.acked);
    }
    // The last round's certificates, after one more restart.
    let log = dir.path().join("final.log");
    let c = config.clone();
    let proc = tokio::task::spawn_blocking(move || spawn_serve(&c, &log))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let bad = not_good(&pki, &proc.status, &unchecked);
        if bad.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "OCSP does not answer good for {bad:?}"
        );
        unchecked = bad;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "{rounds} rounds: {} certificates acknowledged, none lost",
        all.len()
    );
}

/// A kill moment for `round` that differs between rounds (no RNG crate needed).
fn rand_ms(round: usize) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    t ^ (round as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_made_read_only_gives_503s_and_the_pool_recovers_when_it_is_writable_again() {
    let (pki, pg, url) = tokio::task::spawn_blocking(|| {
        let pg = PgNode::start().expect("PostgreSQL");
        let url = pg.create_database("ca").unwrap();
        (TestPki::new(KeyAlgorithm::P256).expect("test PKI"), pg, url)
    })
    .await
    .unwrap();
    let pg = Arc::new(pg);
    let store_url = url.clone();
    let store = tokio::task::spawn_blocking(move || PgStore::open_with_pool_size(&store_url, 4))
        .await
        .unwrap()
        .expect("PgStore");
    let mut node = start_node(&pki, Arc::new(store)).await;
    node.wait_readyz(200, Duration::from_secs(30)).await;
    let load = Load::start(&node, 2);
    load.wait_for_more(5, Duration::from_secs(60)).await;

    // Fenced for a switchover: every session of the old primary becomes read-only (SQLSTATE
    // 25006 on the next write), the pooled connections stay open.
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.alter_system("default_transaction_read_only", "on"))
        .await
        .unwrap()
        .unwrap();
    node.wait_readyz(503, Duration::from_secs(15)).await;
    let seen = load.tally.lock().unwrap().unavailable;
    let start = Instant::now();
    while load.tally.lock().unwrap().unavailable < seen + 3 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no 503 while read-only"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.alter_system("default_transaction_read_only", "off"))
        .await
        .unwrap()
        .unwrap();
    node.wait_readyz(200, Duration::from_secs(30)).await;
    load.wait_for_more(5, Duration::from_secs(60)).await;
    let tally = load.finish().await;
    assert_eq!(tally.unreachable, 0, "the node stopped answering");
    assert!(
        tally.unexpected.is_empty(),
        "failures other than 503 store_unavailable + Retry-After: {:?}",
        tally.unexpected
    );
    check_database(url, &tally).await;
    if let Some(r) = node.running.take() {
        r.shutdown().await;
    }
}
