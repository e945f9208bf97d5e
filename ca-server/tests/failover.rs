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
//!   `target_session_attrs=read-write`, continues on the new primary, and not one
//!   acknowledged certificate is lost.
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
    let parts = ServerParts {
        signer: pki.issuing_signer.clone(),
        issuing_der: pki.issuing_der.clone(),
        chain_der: vec![pki.root_der.clone()],
        profiles: test_profiles(),
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
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|w| {
                tokio::spawn(client_loop(
                    w,
                    node.url.clone(),
                    node.root_pem.clone(),
                    node.operator.clone(),
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

    let load = Load::start(&node, 4);
    load.wait_for_more(10, Duration::from_secs(60)).await;

    // The primary crashes.
    tokio::task::spawn_blocking(move || primary.stop("immediate").map(|()| primary))
        .await
        .unwrap()
        .unwrap();
    node.wait_readyz(503, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
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
    let tally = load.finish().await;
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
