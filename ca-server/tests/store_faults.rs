//! The disk under the sled store fills up during enrollment, as an operator saw it happen:
//! a real `ca-server serve` process whose data directory is a small tmpfs, enrollment load,
//! then the tmpfs filled to the last byte.
//!
//! - While the disk is full: every failed request is a clean `503 store_unavailable` with a
//!   `Retry-After` (never a 500), and the API's `/readyz` fails (the readiness check writes).
//! - sled keeps the first I/O error of its log and refuses every later write of the process,
//!   even after the space is back. Once space is freed, the server notices that the fault is
//!   gone, stops gracefully and exits with status 75 (README "Store faults"); started again,
//!   as its supervisor would, it writes again.
//! - Every certificate acknowledged before, during and after is in the store.
//!
//! The tmpfs is mounted with `mount -t tmpfs` (the tests run as root); where that is refused,
//! the test runs itself again under `unshare -rm` (a user and mount namespace of its own). If
//! neither works it says so loudly on stderr and checks only what needs no full disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ca_core::signer::KeyAlgorithm;
use ca_core::store::{prelude::*, SledStore};
use ca_server::api::types::*;
use ca_server::client::{ApiClient, ClientError};
use common::Identity;
use http::Method;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::pki::{test_profiles, TestPki};

const SERVER_BIN: &str = env!("CARGO_BIN_EXE_ca-server");
/// Set when the test runs itself again inside `unshare -rm`.
const IN_NAMESPACE: &str = "CA_STORE_FAULTS_IN_NAMESPACE";
const TEST_NAME: &str = "disk_full_under_enrollment_gives_503s_readyz_fails_and_the_node_recovers";

/// A tmpfs mounted on a directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A `ca-server serve` process, killed on drop.
struct Proc {
    child: Child,
    api: String,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn start(config: &Path, log: &Path) -> Proc {
        let mut child = Command::new(SERVER_BIN)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
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
        let api = line
            .split_whitespace()
            .find(|w| w.starts_with("https://"))
            .unwrap()
            .to_string();
        Proc {
            child,
            api,
            log: log.to_path_buf(),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

fn write_config(pki: &TestPki, dir: &Path, data: &Path) -> PathBuf {
    let pin = dir.join("hsm.pin");
    pki.token.write_pin_file(&pin).unwrap();
    let text = format!(
        r#"
data_dir = "{data}"
[listen]
api = "127.0.0.1:0"
status = "127.0.0.1:0"
[hsm]
module = "{module}"
token_label = "{label}"
pin = {{ file = "{pin}" }}
[ca]
certificate = "{issuing}"
chain = "{root}"
[tls]
names = ["dns:localhost", "ip:127.0.0.1"]
[limits.enroll]
per_second = 10000
burst = 10000
[limits.admin]
per_second = 10000
burst = 10000
[profiles.placeholder]
validity = "1h"
"#,
        data = data.display(),
        module = pki.token.module.display(),
        label = pki.token.label,
        pin = pin.display(),
        issuing = pki.dir.path().join("issuing.pem").display(),
        root = pki.dir.path().join("root.pem").display(),
    );
    let mut cfg = ca_server::config::ServerConfig::parse(&text).unwrap();
    cfg.profiles = test_profiles();
    let path = dir.join("ca.toml");
    std::fs::write(&path, cfg.to_toml().unwrap()).unwrap();
    path
}

/// What the clients saw.
#[derive(Default, Debug)]
struct Seen {
    acked: Vec<String>,
    unavailable: usize,
    unexpected: Vec<String>,
}

impl Seen {
    fn failed(&mut self, what: &str, e: &ClientError) {
        match e {
            ClientError::Api {
                status,
                code,
                retry_after: Some(_),
                ..
            } if status.as_u16() == 503 && code == "store_unavailable" => self.unavailable += 1,
            _ => self.unexpected.push(format!("{what}: {e}")),
        }
    }
}

/// One enrollment (token, then enroll); the serial on success.
async fn enroll_once(api: &str, root: &str, operator: &Identity, n: usize, seen: &mut Seen) {
    let admin = ApiClient::new(
        api,
        root.as_bytes(),
        Some((operator.cert.as_bytes(), operator.key.as_bytes())),
    )
    .unwrap();
    let cn = format!("disk-{n}.faults.test");
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
        Err(e) => return seen.failed("token", &e),
    };
    let (_key, csr) = common::csr(&cn, &[san.as_str()]);
    match ApiClient::new(api, root.as_bytes(), None)
        .unwrap()
        .post_json::<_, IssuedResponse>(
            "/v1/enroll",
            &EnrollRequest {
                token: tok.token,
                csr,
            },
        )
        .await
    {
        Ok(r) => seen.acked.push(r.serial),
        Err(e) => seen.failed("enroll", &e),
    }
}

async fn readyz(api: &str, root: &str) -> u16 {
    match ApiClient::new(api, root.as_bytes(), None)
        .unwrap()
        .raw(Method::GET, "/readyz", None, &[])
        .await
    {
        Ok(r) => r.status.as_u16(),
        Err(_) => 0,
    }
}

/// Fill the filesystem of `dir` to the last byte with `dir/filler`.
fn fill(dir: &Path) -> u64 {
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(_) => break,
        }
    }
    // Whatever is left below a chunk.
    loop {
        match f.write(&chunk[..512]) {
            Ok(n) if n > 0 => written += n as u64,
            _ => break,
        }
    }
    let _ = f.sync_all();
    written
}

#[test]
fn disk_full_under_enrollment_gives_503s_readyz_fails_and_the_node_recovers() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let tmpfs = match Tmpfs::mount(&data, "24m") {
        Ok(t) => t,
        Err(mount_err) if std::env::var_os(IN_NAMESPACE).is_none() => {
            // Not allowed to mount here: run this test again in a namespace of its own.
            let exe = std::env::current_exe().unwrap();
            let st = Command::new("unshare")
                .arg("-rm")
                .arg(&exe)
                .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
                .env(IN_NAMESPACE, "1")
                .status();
            match st {
                Ok(st) if st.success() => return,
                Ok(st) => panic!("the test failed inside `unshare -rm` ({st})"),
                Err(e) => {
                    eprintln!(
                        "\n*** NOT RUN: the disk-full part of {TEST_NAME}: cannot mount a \
                         tmpfs ({mount_err}) nor run `unshare -rm` ({e}). Only the write probe \
                         of a healthy store was checked. ***\n"
                    );
                    let store = SledStore::open(&data.join("store")).unwrap();
                    store.check_writable().unwrap();
                    return;
                }
            }
        }
        Err(e) => panic!("cannot mount a tmpfs even in a namespace of its own: {e}"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(work.path(), &data));
    drop(tmpfs);
}

async fn run(work: &Path, data: &Path) {
    let pki = tokio::task::spawn_blocking(|| TestPki::new(KeyAlgorithm::P256).expect("test PKI"))
        .await
        .unwrap();
    let config = write_config(&pki, work, data);
    let root = ca_core::x509::pem_encode("CERTIFICATE", &pki.root_der);
    // An operator certificate, recorded in the store (administrators are looked up): the
    // break-glass command, which opens the store with the server stopped.
    let out = Command::new(SERVER_BIN)
        .args([
            "admin-cert",
            "create",
            "--role",
            "operator",
            "--name",
            "faults-operator",
        ])
        .arg("--out")
        .arg(work)
        .arg("--offline")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "admin-cert create: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let operator = Identity {
        cert: std::fs::read_to_string(work.join("faults-operator.crt")).unwrap(),
        key: std::fs::read_to_string(work.join("faults-operator.key")).unwrap(),
    };

    let mut seen = Seen::default();
    let mut proc = {
        let (c, l) = (config.clone(), work.join("run-1.log"));
        tokio::task::spawn_blocking(move || Proc::start(&c, &l))
            .await
            .unwrap()
    };
    let api = proc.api.clone();
    assert_eq!(readyz(&api, &root).await, 200, "{}", proc.log_tail());
    let mut n = 0;
    for _ in 0..20 {
        n += 1;
        enroll_once(&api, &root, &operator, n, &mut seen).await;
    }
    assert_eq!(seen.acked.len(), 20, "{:?}", seen.unexpected);

    // The disk fills up during enrollment.
    let filled = tokio::task::spawn_blocking({
        let d = data.to_path_buf();
        move || fill(&d)
    })
    .await
    .unwrap();
    eprintln!("filled the tmpfs with {filled} bytes");
    let before_full = seen.acked.len();
    let start = Instant::now();
    let mut not_ready = 0;
    let mut checks = 0;
    let mut failing_since = None;
    while start.elapsed() < Duration::from_secs(20) {
        n += 1;
        enroll_once(&api, &root, &operator, n, &mut seen).await;
        if seen.unavailable > 0 && failing_since.is_none() {
            failing_since = Some(Instant::now());
        }
        // A readiness verdict is reused for READINESS_TTL: ask once the one from before the
        // first failure has expired.
        if seen.unavailable >= 5
            && failing_since.is_some_and(|t| {
                t.elapsed() > ca_server::service::READINESS_TTL + Duration::from_millis(200)
            })
        {
            checks += 1;
            if readyz(&api, &root).await == 503 {
                not_ready += 1;
            }
            if not_ready >= 3 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "disk full: {} acknowledged before the first failure, {} clean 503s, /readyz 503 in \
         {not_ready} of {checks} checks",
        seen.acked.len() - before_full,
        seen.unavailable
    );
    assert!(
        seen.unexpected.is_empty(),
        "failures other than 503 store_unavailable: {:?}\n{}",
        seen.unexpected,
        proc.log_tail()
    );
    assert!(seen.unavailable >= 5, "the full disk never failed a write");
    assert_eq!(not_ready, checks, "/readyz said ready while writes failed");
    assert!(not_ready >= 3);
    // The server waits while the disk is full (a restart would fail the same way).
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        proc.child.try_wait().unwrap().is_none(),
        "the server exited while the disk was still full"
    );

    // Space is freed: the server stops by itself with status 75, for its supervisor.
    std::fs::remove_file(data.join("filler")).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = proc.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server did not restart itself after the disk was freed:\n{}",
            proc.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "the server exited {:?} after {:?}",
        status.code(),
        start.elapsed()
    );
    assert_eq!(
        status.code(),
        Some(i32::from(ca_server::service::EXIT_STORE_RESTART)),
        "{}",
        proc.log_tail()
    );

    // The supervisor starts it again: it writes again.
    proc = {
        let (c, l) = (config.clone(), work.join("run-2.log"));
        tokio::task::spawn_blocking(move || Proc::start(&c, &l))
            .await
            .unwrap()
    };
    let api = proc.api.clone();
    let start = Instant::now();
    while readyz(&api, &root).await != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            proc.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = seen.acked.len();
    let unavailable = seen.unavailable;
    for _ in 0..10 {
        n += 1;
        enroll_once(&api, &root, &operator, n, &mut seen).await;
    }
    assert_eq!(seen.acked.len(), before + 10, "{:?}", seen.unexpected);
    assert_eq!(seen.unavailable, unavailable);
    drop(proc);

    // Every acknowledged certificate is in the store, and the audit chain verifies.
    let acked = seen.acked.clone();
    let store_dir = data.join("store");
    tokio::task::spawn_blocking(move || {
        let store = SledStore::open(&store_dir).expect("store reopens");
        for s in &acked {
            assert!(
                store.get_cert(&hex::decode(s).unwrap()).unwrap().is_some(),
                "acknowledged certificate {s} lost"
            );
        }
        store.verify_audit().expect("audit chain intact");
    })
    .await
    .unwrap();
}
