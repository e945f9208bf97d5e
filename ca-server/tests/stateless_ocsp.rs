//! `ca-server ocsp`, the stateless OCSP responder, against a real signing node: PostgreSQL
//! (testkit::pg), a signing node on the SoftHSM token of a `TestPki` (in process, through
//! `ServerBuilder::from_config`), the responder started from the CLI binary with a
//! configuration that has no `[hsm]`, real HTTP, and `openssl ocsp` as an independent peer.
//!
//! Attacks performed against the running responder: forged responses written into the
//! database (a tampered `revoked` turned `good`, a response signed by a rogue "delegated"
//! responder), an old `good` row replayed after the revocation, a response past its
//! nextUpdate, a tampered CRL; each is refused and the previous answer (or `tryLater`) stays.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ca_core::ocsp::x509_ocsp;
use ca_core::ocsp::{parse_response, sign_response, HashAlg, OcspIssuer, OcspResponseStatus};
use ca_core::revocation::CertStatus;
use ca_core::signer::{KeyAlgorithm, Signer};
use ca_core::store::prelude::*;
use ca_core::store::{PgStore, StoredCrl, StoredOcspResponse, FULL_CRL};
use ca_server::api::types::*;
use ca_server::auth::Role;
use ca_server::client::ApiClient;
use ca_server::config::ServerConfig;
use ca_server::server::{Running, ServerBuilder};
use common::{csr, Identity};
use der::{Decode, Encode};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::pki::{test_profiles, TestPki};

const URL_ENV: &str = "CA_TEST_STATELESS_OCSP_DATABASE_URL";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The signing node's configuration (as `serve` reads it), on `pki`'s token.
fn signing_config(pki: &TestPki, dir: &Path) -> ServerConfig {
    signing_config_with(pki, dir, URL_ENV, "")
}

/// [`signing_config`] with the database URL in `url_env` and `extra` sections.
fn signing_config_with(pki: &TestPki, dir: &Path, url_env: &str, extra: &str) -> ServerConfig {
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
{extra}
"#,
        module = pki.token.module.display(),
        label = pki.token.label,
        issuing = pki.issuing_pem_path().display(),
        root = pki.root_pem_path().display(),
    );
    let mut cfg = ServerConfig::parse(&text).unwrap();
    cfg.profiles = test_profiles();
    let path = dir.join("ca.toml");
    std::fs::write(&path, cfg.to_toml().unwrap()).unwrap();
    ServerConfig::load(&path).unwrap()
}

/// The responder's configuration: no `[hsm]`, no profiles.
fn responder_config(pki: &TestPki, dir: &Path, port: u16, url_env: &str, kind: &str) -> PathBuf {
    let path = dir.join(format!("ocsp-{port}.toml"));
    let store = if kind == "postgres" {
        format!("[store]\nkind = \"postgres\"\nurl = {{ env = \"{url_env}\" }}\npool_size = 2\n")
    } else {
        "[store]\nkind = \"sled\"\n".to_string()
    };
    std::fs::write(
        &path,
        format!(
            "data_dir = \"data\"\n[listen]\nstatus = \"127.0.0.1:{port}\"\n[ca]\ncertificate = \"{}\"\nchain = \"{}\"\n[ocsp]\nmax_age = \"30s\"\n{store}",
            pki.issuing_pem_path().display(),
            pki.root_pem_path().display(),
        ),
    )
    .unwrap();
    path
}

/// The responder process, killed when dropped.
struct Responder {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Responder {
    fn start(config: &Path, env: &[(&str, &str)], log: PathBuf, port: u16) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ca-server"));
        cmd.args(["ocsp", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Responder {
            child: cmd.spawn().unwrap(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
        http(self.addr, "GET", path, None)
    }

    fn ocsp(&self, req: &[u8]) -> Vec<u8> {
        let (code, _, body) = http(
            self.addr,
            "POST",
            "/ocsp",
            Some(("application/ocsp-request", req)),
        );
        assert_eq!(code, 200, "POST /ocsp");
        body
    }

    /// A metric's value from `/metrics`.
    fn metric(&self, name: &str) -> i64 {
        let (_, _, body) = self.get("/metrics");
        let text = String::from_utf8(body).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} in {text}"))
    }

    fn wait_ready(&self, within: Duration) {
        let start = Instant::now();
        while start.elapsed() < within {
            if std::net::TcpStream::connect(self.addr).is_ok() && self.get("/readyz").0 == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("responder not ready within {within:?}:\n{}", self.log());
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request (`Connection: close`); returns status, head and body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some((ct, b)) = body {
        req.push_str(&format!(
            "Content-Type: {ct}\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some((_, b)) = body {
        bytes.extend_from_slice(b);
    }
    s.write_all(&bytes).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP head");
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let code = head[9..12].parse().unwrap();
    (code, head, resp[split + 4..].to_vec())
}

/// The plainest request (SHA-1 CertID, no nonce) about `serial` of `issuer_der`.
fn ocsp_request(issuer_der: &[u8], serial: &[u8]) -> Vec<u8> {
    let issuer = OcspIssuer::from_cert_der(issuer_der).unwrap();
    x509_ocsp::OcspRequest {
        tbs_request: x509_ocsp::TbsRequest {
            version: x509_ocsp::Version::V1,
            requestor_name: None,
            request_list: vec![x509_ocsp::Request {
                req_cert: issuer.cert_id(HashAlg::Sha1, serial).unwrap(),
                single_request_extensions: None,
            }],
            request_extensions: None,
        },
        optional_signature: None,
    }
    .to_der()
    .unwrap()
}

/// `good`, `revoked`, `unknown`, or the error status (`TryLater`, `Unauthorized`, ...).
fn verdict(der: &[u8]) -> String {
    let parsed = parse_response(der).unwrap();
    if parsed.status != OcspResponseStatus::Successful {
        return format!("{:?}", parsed.status);
    }
    match &parsed.singles()[0].cert_status {
        x509_ocsp::CertStatus::Good(_) => "good".into(),
        x509_ocsp::CertStatus::Revoked(_) => "revoked".into(),
        x509_ocsp::CertStatus::Unknown(_) => "unknown".into(),
    }
}

struct Node {
    running: Running,
    url: String,
    status_url: String,
    operator: Identity,
}

async fn start_node(cfg: &ServerConfig) -> Node {
    let assembled = ServerBuilder::from_config(cfg)
        .await
        .expect("server opens its parts")
        .assemble()
        .await
        .expect("server assembles");
    let (cert, key) = ca_server::dev::issue_admin_cert(
        &assembled.state,
        "stateless-operator",
        Role::Operator,
        "test",
    )
    .await
    .unwrap();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let status = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = assembled.start(api, Some(status)).await.unwrap();
    Node {
        url: format!("https://{}", running.api_addr),
        status_url: format!("http://{}", running.status_addr.unwrap()),
        running,
        operator: Identity { cert, key },
    }
}

impl Node {
    fn client(&self, root_pem: &str, id: Option<&Identity>) -> ApiClient {
        ApiClient::new(
            &self.url,
            root_pem.as_bytes(),
            id.map(|i| (i.cert.as_bytes(), i.key.as_bytes())),
        )
        .unwrap()
    }

    async fn enroll(&self, root_pem: &str, cn: &str) -> Vec<u8> {
        self.enroll_cert(root_pem, cn).await.0
    }

    /// Enroll `cn`: its serial and its certificate (DER).
    async fn enroll_cert(&self, root_pem: &str, cn: &str) -> (Vec<u8>, Vec<u8>) {
        let token: TokenCreateResponse = self
            .client(root_pem, Some(&self.operator))
            .post_json(
                "/v1/admin/tokens",
                &TokenCreateRequest {
                    common_name: Some(cn.into()),
                    sans: vec![format!("dns:{cn}")],
                    profile: Some("client".into()),
                    ttl: None,
                },
            )
            .await
            .unwrap();
        let (_, csr) = csr(cn, &[&format!("dns:{cn}")]);
        let issued: IssuedResponse = self
            .client(root_pem, None)
            .post_json(
                "/v1/enroll",
                &EnrollRequest {
                    token: token.token,
                    csr,
                },
            )
            .await
            .unwrap();
        let der = ca_core::x509::pem_decode(issued.certificate.as_bytes(), "CERTIFICATE").unwrap();
        (hex::decode(issued.serial).unwrap(), der)
    }

    async fn revoke(&self, root_pem: &str, serial: &[u8]) {
        let _: RevokeResponse = self
            .client(root_pem, Some(&self.operator))
            .post_json(
                "/v1/admin/revoke",
                &RevokeRequest {
                    serial: hex::encode(serial),
                    reason: Some("keyCompromise".into()),
                    lineage: false,
                },
            )
            .await
            .unwrap();
    }
}

/// `openssl ocsp`'s verdict on `serial`, asked from the responder over HTTP and verified
/// against the root (`-CAfile`) with the issuing CA as issuer.
fn openssl_ocsp(pki: &TestPki, addr: SocketAddr, serial: &[u8]) -> String {
    let out = Command::new("openssl")
        .args(["ocsp", "-no_nonce", "-issuer"])
        .arg(pki.issuing_pem_path())
        .args(["-serial", &format!("0x{}", hex::encode(serial))])
        .args(["-url", &format!("http://{addr}/ocsp"), "-CAfile"])
        .arg(pki.root_pem_path())
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A P-256 software key that is not the CA's.
#[derive(Debug)]
struct Mallory {
    key: rcgen::KeyPair,
    spki: Vec<u8>,
}

impl Mallory {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        Mallory { key, spki }
    }

    /// A self-made "delegated responder" certificate for this key: id-kp-OCSPSigning, the
    /// issuing CA's name as issuer, but signed by Mallory.
    fn rogue_responder_cert(&self, pki: &TestPki) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Rogue OCSP Responder");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::OcspSigning];
        let issuer =
            rcgen::Issuer::from_ca_cert_der(&pki.issuing_der.as_slice().into(), &self.key).unwrap();
        params.signed_by(&self.key, &issuer).unwrap().der().to_vec()
    }
}

impl Signer for Mallory {
    fn algorithm(&self) -> KeyAlgorithm {
        KeyAlgorithm::P256
    }
    fn spki_der(&self) -> &[u8] {
        &self.spki
    }
    fn public_key_bits(&self) -> &[u8] {
        rcgen::PublicKeyData::der_bytes(&self.key)
    }
    fn sign(&self, msg: &[u8]) -> ca_core::Result<Vec<u8>> {
        Ok(rcgen::SigningKey::sign(&self.key, msg).unwrap())
    }
}

/// `der` (a signed `revoked` response) with every SingleResponse turned `good` and its
/// thisUpdate moved a minute later, the signature left as it was.
fn tamper_to_good(der: &[u8]) -> Vec<u8> {
    let resp = x509_ocsp::OcspResponse::from_der(der).unwrap();
    let rb = resp.response_bytes.unwrap();
    let mut basic = x509_ocsp::BasicOcspResponse::from_der(rb.response.as_bytes()).unwrap();
    for s in &mut basic.tbs_response_data.responses {
        s.cert_status = x509_ocsp::CertStatus::good();
        let later = s.this_update.0.to_unix_duration() + Duration::from_secs(60);
        s.this_update = x509_ocsp::OcspGeneralizedTime(
            der::asn1::GeneralizedTime::from_unix_duration(later).unwrap(),
        );
    }
    x509_ocsp::OcspResponse::successful(basic)
        .unwrap()
        .to_der()
        .unwrap()
}

/// Wait until `f` holds (polling every 20 ms) for at most `within`.
fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what} not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_responder_follows_a_signing_node_and_refuses_forgeries() {
    let (pki, db) = common::pki_and_database().await;
    // Set once, before any server reads it; no other test in this binary uses it.
    std::env::set_var(URL_ENV, db.url());
    let pki = Arc::new(pki);
    let dir = tempfile::tempdir().unwrap();
    let cfg = signing_config(&pki, dir.path());
    let root_pem = ca_core::x509::pem_encode("CERTIFICATE", &pki.root_der);
    let issuer = pki.issuing_der.clone();

    // The signing node issues certificates.
    let a = start_node(&cfg).await;
    let good = a.enroll(&root_pem, "good.test").await;
    let to_revoke = a.enroll(&root_pem, "revoked.test").await;

    // The same file `serve` reads is accepted too ([hsm] ignored).
    ca_server::ocsp_node::OcspNodeConfig::load(&dir.path().join("ca.toml"))
        .expect("a serve configuration is a responder configuration");

    // The responder, from the CLI, with a configuration without [hsm].
    let port = free_port();
    let rcfg = responder_config(&pki, dir.path(), port, URL_ENV, "postgres");
    assert!(!std::fs::read_to_string(&rcfg).unwrap().contains("[hsm]"));
    let url = db.url().to_string();
    // The responder's credential may only read (a role with nothing but SELECT; where the
    // test database is not a throwaway cluster, the nodes' URL).
    let reader = tokio::task::block_in_place(|| db.reader_url()).expect("a reader role");
    if let Some(reader) = &reader {
        let r = reader.clone();
        let write = blocking(move || {
            let s = PgStore::open_reader(&r, 1).expect("the reader opens the store");
            s.try_lease("reader-write", "test", Duration::from_secs(1))
                .map_err(|e| {
                    // The whole chain: the database's own message is the innermost.
                    let mut msg = e.to_string();
                    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(&e);
                    while let Some(c) = cur {
                        msg.push_str(&format!(": {c}"));
                        cur = c.source();
                    }
                    msg
                })
        });
        assert!(
            write
                .as_ref()
                .is_err_and(|e| e.contains("permission denied")),
            "the reader role could write: {write:?}"
        );
    }
    let resp = Responder::start(
        &rcfg,
        &[(URL_ENV, reader.as_deref().unwrap_or(url.as_str()))],
        dir.path().join("responder.log"),
        port,
    );
    let resp = blocking(move || {
        resp.wait_ready(Duration::from_secs(60));
        resp
    });
    let resp = Arc::new(resp);

    // No PKCS#11 module in the responder process.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", resp.child.id())).unwrap();
    let module = pki.token.module.file_name().unwrap().to_string_lossy();
    assert!(
        !maps.contains(module.as_ref()) && !maps.contains("softhsm"),
        "the responder loaded the PKCS#11 module"
    );

    // `good`, verified by openssl against the root.
    let (p, r, s) = (pki.clone(), resp.addr, good.clone());
    let out = blocking(move || openssl_ocsp(&p, r, &s));
    assert!(
        out.contains("Response verify OK") && out.contains(": good"),
        "{out}"
    );
    // GET with the RFC 5019 caching headers, capped by [ocsp] max_age.
    let b64 = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        ocsp_request(&issuer, &good),
    );
    let (r, path) = (resp.clone(), format!("/ocsp/{}", b64.replace('/', "%2F")));
    let (code, head, body) = blocking(move || r.get(&path));
    assert_eq!(code, 200);
    assert_eq!(verdict(&body), "good");
    assert!(
        head.to_ascii_lowercase()
            .contains("cache-control: max-age=30,"),
        "{head}"
    );
    assert!(head.to_ascii_lowercase().contains("etag: "), "{head}");

    // The stored `good` of the certificate about to be revoked, for the replay below.
    let store = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            Arc::new(PgStore::open_with_pool_size(&url, 2).unwrap())
        })
        .await
        .unwrap()
    };
    let old_good = {
        let (st, s) = (store.clone(), to_revoke.clone());
        blocking(move || st.get_ocsp_response(&s).unwrap())
    }
    .expect("the signing node stored a response");

    // Revoke on the signing node: the responder answers `revoked` within 1 s.
    let req_revoked = ocsp_request(&issuer, &to_revoke);
    let t0 = Instant::now();
    a.revoke(&root_pem, &to_revoke).await;
    let (r, q) = (resp.clone(), req_revoked.clone());
    blocking(move || {
        wait_until(Duration::from_secs(5), "revoked on the responder", || {
            verdict(&r.ocsp(&q)) == "revoked"
        })
    });
    let latency = t0.elapsed();
    eprintln!("revocation answered by the stateless responder after {latency:?}");
    assert!(
        latency < Duration::from_secs(1),
        "revocation reached the stateless responder after {latency:?}"
    );
    let (p, r, s) = (pki.clone(), resp.addr, to_revoke.clone());
    let out = blocking(move || openssl_ocsp(&p, r, &s));
    assert!(
        out.contains("Response verify OK") && out.contains(": revoked"),
        "{out}"
    );
    // The answer cache is bounded and reports its use (the revoked answer was read back).
    let r = resp.clone();
    let (max, reads, max_bytes, bytes) = blocking(move || {
        (
            r.metric("ca_ocsp_cache_max_entries"),
            r.metric("ca_ocsp_cache_store_reads"),
            r.metric("ca_ocsp_cache_max_bytes"),
            r.metric("ca_ocsp_cache_bytes"),
        )
    });
    assert_eq!(max, 200_000);
    assert_eq!(max_bytes, 64 << 20);
    assert!(bytes > 0 && bytes <= max_bytes, "{bytes}");
    assert!(reads >= 1, "{reads}");

    // Attack 1: the stored `revoked` response turned `good` (signature kept).
    let revoked_now = {
        let (st, s) = (store.clone(), to_revoke.clone());
        blocking(move || st.get_ocsp_response(&s).unwrap().unwrap())
    };
    let forged = StoredOcspResponse {
        serial: to_revoke.clone(),
        der: tamper_to_good(&revoked_now.der),
        this_update: revoked_now.this_update + chrono::Duration::seconds(60),
        next_update: revoked_now.next_update,
    };
    // Attack 2: a response signed by a rogue "delegated responder" the CA never issued.
    let mallory = Mallory::new();
    let rogue = mallory.rogue_responder_cert(&pki);
    let now = chrono::Utc::now();
    let rogue_der = sign_response(
        &mallory,
        Some(&rogue),
        &issuer,
        &[(to_revoke.clone(), CertStatus::Good)],
        now,
        now + chrono::Duration::hours(1),
        None,
    )
    .unwrap();
    let rogue_row = StoredOcspResponse {
        serial: to_revoke.clone(),
        der: rogue_der,
        this_update: now,
        next_update: now + chrono::Duration::hours(1),
    };
    // Attack 3: the old `good` row replayed (validly signed, older thisUpdate).
    for (what, row, refused) in [
        ("tampered status", forged, true),
        ("rogue delegated responder", rogue_row, true),
        ("replayed old good", old_good.clone(), false),
    ] {
        let (st, r) = (store.clone(), resp.clone());
        blocking(move || {
            let before = r.metric("ca_ocsp_follower_refused_responses");
            st.put_ocsp_response(&row).unwrap();
            if refused {
                wait_until(Duration::from_secs(5), what, || {
                    r.metric("ca_ocsp_follower_refused_responses") > before
                });
            } else {
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        let (r, q) = (resp.clone(), req_revoked.clone());
        assert_eq!(
            blocking(move || verdict(&r.ocsp(&q))),
            "revoked",
            "{what}: the responder still answers revoked"
        );
    }
    assert!(
        resp.log().contains("refusing a stored OCSP response"),
        "refusals are logged"
    );
    // A later forgery, after the replay: the replay has been handled too (feed order).
    {
        let before = blocking({
            let r = resp.clone();
            move || r.metric("ca_ocsp_follower_refused_responses")
        });
        let (st, r) = (store.clone(), resp.clone());
        let mut bad = revoked_now.clone();
        let last = bad.der.len() - 1;
        bad.der[last] ^= 0x01;
        blocking(move || {
            st.put_ocsp_response(&bad).unwrap();
            wait_until(Duration::from_secs(5), "bit flip refused", || {
                r.metric("ca_ocsp_follower_refused_responses") > before
            });
        });
        let (r, q) = (resp.clone(), req_revoked.clone());
        assert_eq!(blocking(move || verdict(&r.ocsp(&q))), "revoked");
    }

    // A certificate in the store without a response: tryLater. A serial the store does not
    // know: unauthorized (no key to sign `unknown`). Another issuer: unauthorized.
    let no_response = {
        let st = store.clone();
        let g = good.clone();
        blocking(move || {
            let mut rec = st.get_cert(&g).unwrap().unwrap();
            rec.serial = vec![0x41; 16];
            rec.lineage = rec.serial.clone();
            assert!(st.insert_cert(&rec).unwrap());
            rec.serial
        })
    };
    let req_none = ocsp_request(&issuer, &no_response);
    let (r, q) = (resp.clone(), req_none.clone());
    assert_eq!(blocking(move || verdict(&r.ocsp(&q))), "TryLater");
    let (r, q) = (resp.clone(), ocsp_request(&issuer, &[0x42; 16]));
    assert_eq!(blocking(move || verdict(&r.ocsp(&q))), "Unauthorized");
    let (r, q) = (resp.clone(), ocsp_request(&pki.root_der, &good));
    assert_eq!(blocking(move || verdict(&r.ocsp(&q))), "Unauthorized");

    // Never past nextUpdate: a validly signed response that has expired is not served, and one
    // that expires while served is withdrawn (tryLater).
    let signer = pki.issuing_signer.clone();
    let sign = |from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>| {
        sign_response(
            signer.as_ref(),
            None,
            &issuer,
            &[(no_response.clone(), CertStatus::Good)],
            from,
            to,
            None,
        )
        .unwrap()
    };
    let now = chrono::Utc::now();
    let expired = StoredOcspResponse {
        serial: no_response.clone(),
        der: sign(
            now - chrono::Duration::hours(2),
            now - chrono::Duration::hours(1),
        ),
        this_update: now - chrono::Duration::hours(2),
        next_update: now - chrono::Duration::hours(1),
    };
    let short = StoredOcspResponse {
        serial: no_response.clone(),
        der: sign(
            now - chrono::Duration::seconds(1),
            now + chrono::Duration::seconds(3),
        ),
        this_update: now - chrono::Duration::seconds(1),
        next_update: now + chrono::Duration::seconds(3),
    };
    {
        let (st, r, q) = (store.clone(), resp.clone(), req_none.clone());
        blocking(move || {
            st.put_ocsp_response(&expired).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(verdict(&r.ocsp(&q)), "TryLater", "expired response served");
            st.put_ocsp_response(&short).unwrap();
            wait_until(
                Duration::from_secs(2),
                "short-lived response served",
                || verdict(&r.ocsp(&q)) == "good",
            );
            wait_until(Duration::from_secs(6), "expired answer withdrawn", || {
                verdict(&r.ocsp(&q)) == "TryLater"
            });
        });
    }

    // The CRL: the latest full CRL of the archive, once verified. If the signing node does
    // not archive its CRL, put it there as one would.
    let (code, _, node_crl) = {
        let url = format!("{}/crl", a.status_url);
        blocking(move || {
            let addr: SocketAddr = url
                .trim_start_matches("http://")
                .trim_end_matches("/crl")
                .parse()
                .unwrap();
            http(addr, "GET", "/crl", None)
        })
    };
    assert_eq!(code, 200);
    {
        let st = store.clone();
        let crl = node_crl.clone();
        blocking(move || {
            if st.latest_crl(FULL_CRL).unwrap().is_none() {
                let now = chrono::Utc::now();
                st.put_crl(&StoredCrl {
                    scope: FULL_CRL.into(),
                    number: 1,
                    der: crl,
                    this_update: now,
                    next_update: now + chrono::Duration::hours(1),
                })
                .unwrap();
            }
        });
    }
    let served = {
        let r = resp.clone();
        blocking(move || {
            wait_until(Duration::from_secs(5), "CRL served", || {
                r.get("/crl").0 == 200
            });
            r.get("/crl").2
        })
    };
    let latest = {
        let st = store.clone();
        blocking(move || st.latest_crl(FULL_CRL).unwrap().unwrap())
    };
    assert_eq!(served, latest.der);
    // Attack: a tampered CRL with a higher number is refused; the verified one stays.
    {
        let (st, r) = (store.clone(), resp.clone());
        let mut bad = latest.der.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        let before = blocking({
            let r = r.clone();
            move || r.metric("ca_ocsp_follower_refused_responses")
        });
        blocking(move || {
            assert!(st
                .put_crl(&StoredCrl {
                    scope: FULL_CRL.into(),
                    number: latest.number + 1000,
                    der: bad,
                    this_update: latest.this_update,
                    next_update: latest.next_update,
                })
                .unwrap());
            wait_until(Duration::from_secs(5), "tampered CRL refused", || {
                r.metric("ca_ocsp_follower_refused_responses") > before
            });
            assert_eq!(r.get("/crl").2, served);
        });
    }

    // Every signing node down: the responder keeps answering and serving /crl and /ca.crt.
    a.running.shutdown().await;
    let (r, q1, q2, p) = (
        resp.clone(),
        ocsp_request(&issuer, &good),
        req_revoked.clone(),
        pki.clone(),
    );
    blocking(move || {
        assert_eq!(verdict(&r.ocsp(&q1)), "good");
        assert_eq!(verdict(&r.ocsp(&q2)), "revoked");
        let (code, head, body) = r.get("/ca.crt");
        assert_eq!(code, 200, "{head}");
        assert_eq!(body, p.issuing_der);
        assert_eq!(r.get("/crl").0, 200);
        assert_eq!(r.get("/readyz").0, 200);
        assert_eq!(r.get("/healthz").0, 200);
    });
    let (p, r, s) = (pki.clone(), resp.addr, good.clone());
    let out = blocking(move || openssl_ocsp(&p, r, &s));
    assert!(
        out.contains("Response verify OK") && out.contains(": good"),
        "with the signing node down: {out}"
    );
    drop(resp);
    // The synchronous PostgreSQL client must not be dropped on an async thread.
    blocking(move || drop(store));
    drop(db);
}

const SHARDS_URL_ENV: &str = "CA_TEST_STATELESS_SHARDS_DATABASE_URL";

/// With CRL shards on (issue 17), a stateless responder serves what the signing node archived
/// for each shard and for the delta, byte for byte, so a certificate naming its shard's URL is
/// checked against a responder while every signing node is down; openssl verifies the shard
/// CRL for the certificate. A shard's CRL archived under another shard's scope (whoever can
/// write the database) is refused, the genuine one kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_responder_serves_shard_and_delta_crls() {
    let (pki, db) = common::pki_and_database().await;
    std::env::set_var(SHARDS_URL_ENV, db.url());
    let pki = Arc::new(pki);
    let dir = tempfile::tempdir().unwrap();
    let cfg = signing_config_with(
        &pki,
        dir.path(),
        SHARDS_URL_ENV,
        "[urls]\ncrl = \"http://ca.test/crl\"\n[crl]\nshard_width = \"1h\"\n",
    );
    let root_pem = ca_core::x509::pem_encode("CERTIFICATE", &pki.root_der);
    let a = start_node(&cfg).await;
    let (serial, cert) = a.enroll_cert(&root_pem, "sharded.test").await;
    let shard = ca_core::x509::crl_shard_of(&cert).expect("the certificate names a shard");
    a.revoke(&root_pem, &serial).await;

    let port = free_port();
    let rcfg = responder_config(&pki, dir.path(), port, SHARDS_URL_ENV, "postgres");
    let url = db.url().to_string();
    let resp = Responder::start(
        &rcfg,
        &[(SHARDS_URL_ENV, url.as_str())],
        dir.path().join("shards-responder.log"),
        port,
    );
    resp.wait_ready(Duration::from_secs(60));

    // The signing node's shard CRL (with the revocation) and delta, and the responder's.
    let signing = a.status_url.trim_start_matches("http://").parse().unwrap();
    let path = format!("/crl/shard/{}", shard.0);
    let listed =
        |der: &[u8]| ca_core::x509::check_crl(&pki.issuing_der, der).map_or(0, |c| c.entries);
    let mut shard_crl = Vec::new();
    wait_until(
        Duration::from_secs(30),
        "the shard CRL lists the revocation on both",
        || {
            let (code, _, theirs) = http(signing, "GET", &path, None);
            let (rcode, _, ours) = resp.get(&path);
            shard_crl = ours.clone();
            code == 200 && rcode == 200 && listed(&theirs) == 1 && ours == theirs
        },
    );
    wait_until(Duration::from_secs(30), "the delta CRL on both", || {
        let (code, _, theirs) = http(signing, "GET", "/crl/delta", None);
        let (rcode, _, ours) = resp.get("/crl/delta");
        code == 200 && rcode == 200 && ours == theirs && ca_core::x509::crl_is_delta(&ours)
    });
    assert_eq!(resp.get("/crl/shard/12").0, 404, "no such shard");
    assert_eq!(resp.get("/crl/shard/not-a-shard").0, 404);

    // openssl: the shard CRL revokes the certificate that names it.
    let write = |name: &str, der: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, der).unwrap();
        p
    };
    let crl_pem = write(
        "shard.crl.pem",
        ca_core::x509::pem_encode("X509 CRL", &shard_crl).as_bytes(),
    );
    let leaf = write(
        "sharded.pem",
        ca_core::x509::pem_encode("CERTIFICATE", &cert).as_bytes(),
    );
    let out = Command::new("openssl")
        .args(["verify", "-crl_check", "-CAfile"])
        .arg(pki.root_pem_path())
        .arg("-untrusted")
        .arg(pki.issuing_pem_path())
        .arg("-CRLfile")
        .arg(&crl_pem)
        .arg(&leaf)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("revoked"), "{text}");

    // Attack: the next window's shard CRL replaced by this shard's (a genuine CRL, in the
    // wrong place) with a higher number. Refused: the responder keeps what it served.
    let other = ca_core::x509::CrlShard(shard.0 + 3600);
    let before = resp.get(&format!("/crl/shard/{}", other.0));
    let refused_before = resp.metric("ca_ocsp_follower_refused_responses");
    let forged = StoredCrl {
        scope: other.scope(),
        number: 1_000_000,
        der: shard_crl.clone(),
        this_update: chrono::Utc::now(),
        next_update: chrono::Utc::now() + chrono::Duration::hours(1),
    };
    blocking(move || {
        let s = PgStore::open(&url).unwrap();
        assert!(s.put_crl(&forged).unwrap());
    });
    wait_until(
        Duration::from_secs(30),
        "the forged shard CRL refused",
        || resp.metric("ca_ocsp_follower_refused_responses") > refused_before,
    );
    let after = resp.get(&format!("/crl/shard/{}", other.0));
    assert_eq!((after.0, &after.2), (before.0, &before.2));
    assert!(
        resp.log().contains("is not that scope's CRL"),
        "{}",
        resp.log()
    );
    a.running.shutdown().await;
}

/// Forward every connection on `listener` to `to` (a stand-in for the database coming up).
fn forward(listener: std::net::TcpListener, to: SocketAddr) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { continue };
            let Ok(server) = std::net::TcpStream::connect(to) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut c1, mut s1) = (client, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut s1);
                let _ = s1.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Both);
            });
        }
    });
}

#[test]
fn stateless_responder_refuses_sled_and_waits_for_the_database() {
    let pki = TestPki::new(KeyAlgorithm::P256).expect("test PKI");
    let dir = tempfile::tempdir().unwrap();

    // sled: refused at start with a clear error.
    let port = free_port();
    let sled = responder_config(&pki, dir.path(), port, "UNUSED", "sled");
    let out = Command::new(env!("CARGO_BIN_EXE_ca-server"))
        .args(["ocsp", "--config"])
        .arg(&sled)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("store.kind") && err.contains("kind = \"postgres\"") && err.contains("sled"),
        "{err}"
    );

    // The database unreachable at start: the responder serves /healthz, fails /readyz,
    // answers tryLater; once the database answers it becomes ready without a restart.
    let server = testkit::pg::PgServer::shared().expect("PostgreSQL");
    let db = server.fresh_database().expect("database");
    let real: SocketAddr = {
        let after_at = db.url().split_once('@').unwrap().1;
        after_at.split_once('/').unwrap().0.parse().unwrap()
    };
    let dead = free_port();
    let url = db
        .url()
        .replacen(&real.to_string(), &format!("127.0.0.1:{dead}"), 1);
    let port = free_port();
    let cfg = responder_config(
        &pki,
        dir.path(),
        port,
        "CA_TEST_LATE_DATABASE_URL",
        "postgres",
    );
    let resp = Responder::start(
        &cfg,
        &[("CA_TEST_LATE_DATABASE_URL", url.as_str())],
        dir.path().join("late.log"),
        port,
    );
    wait_until(Duration::from_secs(20), "listening", || {
        std::net::TcpStream::connect(resp.addr).is_ok()
    });
    assert_eq!(resp.get("/healthz").0, 200);
    assert_eq!(resp.get("/readyz").0, 503);
    let req = ocsp_request(&pki.issuing_der, &[0x42; 16]);
    assert_eq!(verdict(&resp.ocsp(&req)), "TryLater");
    assert_eq!(resp.get("/crl").0, 503);
    assert_eq!(resp.get("/ca.crt").0, 200);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(resp.get("/readyz").0, 503);
    // The database comes up (on the address the responder was given), without a schema: the
    // responder never migrates, it waits for a signing node to.
    forward(
        std::net::TcpListener::bind(("127.0.0.1", dead)).unwrap(),
        real,
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        resp.get("/readyz").0,
        503,
        "ready on a database without the schema"
    );
    assert!(
        std::fs::read_to_string(dir.path().join("late.log"))
            .unwrap()
            .contains("never migrates"),
        "the log does not say why it is not ready"
    );
    // A signing node migrates it.
    drop(PgStore::open(db.url()).expect("a node migrates"));
    resp.wait_ready(Duration::from_secs(90));
    // Ready, and a serial the (empty) store does not know is `unauthorized`.
    assert_eq!(verdict(&resp.ocsp(&req)), "Unauthorized");
    drop(resp);
    drop(db);
}
