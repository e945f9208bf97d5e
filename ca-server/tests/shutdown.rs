//! Shutdown never crashes: the real `ca-server dev` process, SIGTERM at random moments under
//! mixed issuance, renewal (accepted and refused) and keyCompromise revocation load (odd
//! rounds), or right after the last renewal once the load ended (even rounds). Every
//! exit status is 0, every certificate and revocation a client got an answer for is in the
//! store afterwards, and the next start is clean.
//!
//! Each round sets the dev configuration's `ocsp.issuance_batch_window_ms` (a documented
//! setting, default 5) to a random 1..=12 ms: the OCSP issuance signer signs the last
//! certificates' responses that long after their issuance, which spreads its signatures over
//! the moments the process exits at. Before the fix that thread was never joined and died of
//! SIGSEGV inside SoftHSM's `C_SignInit` while `exit()` ran the module's destructors.
//!
//! Rounds: `CA_SHUTDOWN_ROUNDS` (default and documented value 50; CI runs the default).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod spy_support;

use ca_core::store::{prelude::*, SledStore};
use ca_server::api::types::*;
use ca_server::client::ApiClient;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ca-server");

struct Dev {
    child: Child,
    stderr: PathBuf,
    signal: Option<i32>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server's PKCS#11 module in the rounds: the spy in front of SoftHSM, logging to
/// `SpyLog::log`.
struct SpyLog {
    real: String,
    log: PathBuf,
}

fn start_dev(
    dir: &Path,
    logs: &Path,
    round: usize,
    spy: Option<&SpyLog>,
) -> (Dev, HashMap<String, String>) {
    let env_file = dir.join("dev.env");
    let _ = std::fs::remove_file(&env_file);
    let stderr = logs.join(format!("round-{round}.log"));
    // `CA_SHUTDOWN_BIN`: run the rounds against another build (to measure an old one).
    let bin = std::env::var("CA_SHUTDOWN_BIN").unwrap_or_else(|_| BIN.to_string());
    let mut cmd = Command::new(bin);
    if let Some(spy) = spy {
        cmd.env("PKCS11SPY", &spy.real)
            .env("PKCS11SPY_OUTPUT", &spy.log);
    }
    let child = cmd
        .args([
            "dev",
            "--data",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--status-listen",
            "127.0.0.1:0",
        ])
        .env_remove("SOFTHSM2_CONF")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut dev = Dev {
        child,
        stderr,
        signal: None,
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    while !env_file.exists() {
        if let Some(status) = dev.child.try_wait().unwrap() {
            panic!(
                "round {round}: ca-server dev exited during startup ({status}):\n{}",
                tail(&dev.stderr)
            );
        }
        assert!(Instant::now() < deadline, "dev.env did not appear");
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&env_file).unwrap();
    let vars = text
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect();
    (dev, vars)
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// SIGTERM, then the exit status: `Some(code)`, or `None` when a signal killed the process
/// (printed by [`describe`]).
fn sigterm_and_wait(dev: &mut Dev) -> Option<i32> {
    let status = sigterm_and_wait_status(dev);
    dev.signal = std::os::unix::process::ExitStatusExt::signal(&status);
    status.code()
}

/// How the process ended, for failure messages.
fn describe(code: Option<i32>, dev: &Dev) -> String {
    match (code, dev.signal) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(11)) => "killed by SIGSEGV".into(),
        (None, Some(s)) => format!("killed by signal {s}"),
        (None, None) => "no status".into(),
    }
}

fn sigterm_and_wait_status(dev: &mut Dev) -> std::process::ExitStatus {
    let ok = Command::new("kill")
        .args(["-TERM", &dev.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = dev.child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "dev did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What clients were told: certificates issued (serial hex) and revocations acknowledged.
#[derive(Default)]
struct Acked {
    issued: Vec<String>,
    revoked: Vec<String>,
}

fn clients(vars: &HashMap<String, String>) -> (String, Vec<u8>, ApiClient, ApiClient) {
    let url = vars["CA_URL"].clone();
    let root = std::fs::read(&vars["CA_ROOT"]).unwrap();
    let cert = std::fs::read(&vars["CA_ADMIN_CERT"]).unwrap();
    let key = std::fs::read(&vars["CA_ADMIN_KEY"]).unwrap();
    let admin = ApiClient::new(&url, &root, Some((&cert, &key))).unwrap();
    let anon = ApiClient::new(&url, &root, None).unwrap();
    (url, root, admin, anon)
}

/// One client's loop: token, enrollment, renewal; every third lineage revoked for
/// keyCompromise, every third renewed again by its superseded first certificate (refused).
async fn load(
    worker: usize,
    round: usize,
    vars: HashMap<String, String>,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
) {
    let (url, root, admin, anon) = clients(&vars);
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let cn = format!("r{round}-w{worker}-{i}.example.com");
        let san = format!("dns:{cn}");
        let Ok(tok) = admin
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
        else {
            continue;
        };
        let (key1, csr1) = common::csr(&cn, &[san.as_str()]);
        let Ok(first) = anon
            .post_json::<_, IssuedResponse>(
                "/v1/enroll",
                &EnrollRequest {
                    token: tok.token,
                    csr: csr1,
                },
            )
            .await
        else {
            continue;
        };
        acked.lock().unwrap().issued.push(first.serial.clone());
        let holder1 = ApiClient::new(
            &url,
            &root,
            Some((first.certificate.as_bytes(), key1.as_bytes())),
        )
        .unwrap();
        let (_key2, csr2) = common::csr(&cn, &[san.as_str()]);
        let Ok(second) = holder1
            .post_json::<_, IssuedResponse>("/v1/renew", &RenewRequest { csr: csr2 })
            .await
        else {
            continue;
        };
        acked.lock().unwrap().issued.push(second.serial.clone());
        match i % 3 {
            0 => {
                let r = admin
                    .post_json::<_, RevokeResponse>(
                        "/v1/admin/revoke",
                        &RevokeRequest {
                            serial: second.serial.clone(),
                            reason: Some("keyCompromise".into()),
                            lineage: false,
                        },
                    )
                    .await;
                if r.is_ok() {
                    acked.lock().unwrap().revoked.push(second.serial);
                }
            }
            1 => {
                // The superseded generation renews again: refused (and the lineage locked).
                let (_k, csr3) = common::csr(&cn, &[san.as_str()]);
                let r = holder1
                    .post_json::<_, IssuedResponse>("/v1/renew", &RenewRequest { csr: csr3 })
                    .await;
                if let Ok(unexpected) = r {
                    // Only the agent's own retry with the successor's key may succeed.
                    panic!("superseded renewal accepted: {}", unexpected.serial);
                }
            }
            _ => {}
        }
    }
}

/// Enroll and renew once more; the renewal's serial is acknowledged.
async fn last_renewal(round: usize, vars: &HashMap<String, String>, acked: &Mutex<Acked>) {
    let (url, root, admin, anon) = clients(vars);
    let cn = format!("r{round}-last.example.com");
    let san = format!("dns:{cn}");
    // The load may have used up the admin rate limit: wait for it.
    let mut tries = 0;
    let tok: TokenCreateResponse = loop {
        let r = admin
            .post_json(
                "/v1/admin/tokens",
                &TokenCreateRequest {
                    common_name: Some(cn.clone()),
                    sans: vec![san.clone()],
                    profile: Some("client".into()),
                    ttl: None,
                },
            )
            .await;
        match r {
            Ok(t) => break t,
            Err(e) if tries < 50 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("token: {e}"),
        }
    };
    let (key, csr) = common::csr(&cn, &[san.as_str()]);
    let first: IssuedResponse = anon
        .post_json(
            "/v1/enroll",
            &EnrollRequest {
                token: tok.token,
                csr,
            },
        )
        .await
        .expect("enroll");
    acked.lock().unwrap().issued.push(first.serial.clone());
    let holder = ApiClient::new(
        &url,
        &root,
        Some((first.certificate.as_bytes(), key.as_bytes())),
    )
    .unwrap();
    let (_k, csr) = common::csr(&cn, &[san.as_str()]);
    // The renewal rate limit may refuse it (429): refused renewals are part of the mix.
    if let Ok(r) = holder
        .post_json::<_, IssuedResponse>("/v1/renew", &RenewRequest { csr })
        .await
    {
        acked.lock().unwrap().issued.push(r.serial);
    }
}

fn check_store(dir: &Path, acked: &Acked, round: usize) {
    let store = SledStore::open(&dir.join("store")).expect("store reopens");
    for s in &acked.issued {
        let rec = store
            .get_cert(&hex::decode(s).unwrap())
            .unwrap()
            .unwrap_or_else(|| panic!("round {round}: acknowledged certificate {s} lost"));
        assert_eq!(&rec.serial_hex(), s);
    }
    for s in &acked.revoked {
        let rec = store.get_cert(&hex::decode(s).unwrap()).unwrap().unwrap();
        assert!(
            rec.is_revoked(),
            "round {round}: acknowledged revocation of {s} lost"
        );
    }
    store.verify_audit().expect("audit chain intact");
}

#[test]
fn sigterm_at_random_moments_under_load_always_exits_zero_and_loses_nothing() {
    let rounds: usize = std::env::var("CA_SHUTDOWN_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca-data");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();

    // First start: the dev PKI is made.
    let (mut dev, _) = start_dev(&dir, &logs, 0, None);
    assert_eq!(sigterm_and_wait(&mut dev), Some(0), "{}", tail(&dev.stderr));
    drop(dev);
    let config = dir.join("config.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    assert!(original.contains("\n[ocsp]\n"), "{original}");
    // Every PKCS#11 call of the rounds goes through pkcs11-spy: the log shows whether
    // anything calls the module after (or instead of) its finalization.
    let real = original
        .lines()
        .find_map(|l| l.strip_prefix("module = "))
        .expect("hsm.module in the dev config")
        .trim_matches('"')
        .to_string();
    let spy = spy_support::spy_module();
    let original = original.replacen(
        &format!("module = \"{real}\""),
        &format!("module = \"{}\"", spy.display()),
        1,
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut total = Acked::default();
    let began = Instant::now();
    for round in 1..=rounds {
        // Each round its own OCSP issuance window, 1..=12 ms (see above).
        let window = std::env::var("CA_SHUTDOWN_OCSP_WINDOW_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| 1 + rand::random::<u64>() % 12);
        std::fs::write(
            &config,
            original.replacen(
                "\n[ocsp]\n",
                &format!("\n[ocsp]\nissuance_batch_window_ms = {window}\n"),
                1,
            ),
        )
        .unwrap();
        let spy_log = SpyLog {
            real: real.clone(),
            log: logs.join(format!("pkcs11-{round}.log")),
        };
        let (mut dev, vars) = start_dev(&dir, &logs, round, Some(&spy_log));
        let acked = Arc::new(Mutex::new(Acked::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..3)
            .map(|w| rt.spawn(load(w, round, vars.clone(), acked.clone(), stop.clone())))
            .collect();
        // A random moment under load (the first issuances take some 50-100 ms).
        let delay = Duration::from_millis(60 + rand::random::<u64>() % 600);
        std::thread::sleep(delay);
        let code = if round % 2 == 1 {
            let code = sigterm_and_wait(&mut dev);
            stop.store(true, Ordering::Relaxed);
            rt.block_on(async {
                for w in workers {
                    w.await.expect("load worker");
                }
            });
            code
        } else {
            // As an operator did: the load ends, one last renewal, SIGTERM right after its
            // answer (within the OCSP issuance window, when its response is being signed).
            stop.store(true, Ordering::Relaxed);
            rt.block_on(async {
                for w in workers {
                    w.await.expect("load worker");
                }
                last_renewal(round, &vars, &acked).await;
            });
            std::thread::sleep(Duration::from_micros(
                rand::random::<u64>() % (window * 1000 + 1),
            ));
            sigterm_and_wait(&mut dev)
        };
        assert_eq!(
            code,
            Some(0),
            "round {round}: ca-server dev {} after SIGTERM (load {delay:?}, OCSP window \
             {window} ms):\n{}",
            describe(code, &dev),
            tail(&dev.stderr)
        );
        drop(dev);
        // The module was finalized last: no thread called into it afterwards.
        let calls = spy_support::call_sequence(&spy_log.log);
        let finalized = calls.iter().filter(|c| *c == "C_Finalize").count();
        assert!(
            finalized == 1 && calls.last().map(String::as_str) == Some("C_Finalize"),
            "round {round}: the PKCS#11 module was not finalized last ({finalized} C_Finalize; \
             last calls {:?})",
            &calls[calls.len().saturating_sub(5)..]
        );
        let _ = std::fs::remove_file(&spy_log.log);
        let acked = Arc::try_unwrap(acked).ok().unwrap().into_inner().unwrap();
        check_store(&dir, &acked, round);
        total.issued.extend(acked.issued);
        total.revoked.extend(acked.revoked);
    }
    eprintln!(
        "{rounds} rounds in {:?}: {} certificates and {} revocations acknowledged, none lost",
        began.elapsed(),
        total.issued.len(),
        total.revoked.len()
    );
    assert!(
        total.issued.len() >= rounds,
        "the load issued too little to mean anything: {}",
        total.issued.len()
    );

    // The next start is clean: it serves and is ready, and stops with 0 again.
    let spy_log = SpyLog {
        real,
        log: logs.join("pkcs11-restart.log"),
    };
    let (mut dev, vars) = start_dev(&dir, &logs, rounds + 1, Some(&spy_log));
    let (_, _, _, anon) = clients(&vars);
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = anon
                .raw(http::Method::GET, "/readyz", None, &[])
                .await
                .unwrap();
            if r.status == http::StatusCode::OK {
                break;
            }
            assert!(Instant::now() < deadline, "not ready after restart");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert_eq!(sigterm_and_wait(&mut dev), Some(0), "{}", tail(&dev.stderr));
    let log = std::fs::read_to_string(&dev.stderr).unwrap();
    assert!(log.contains("server stopped"), "{log}");
    let calls = spy_support::call_sequence(&spy_log.log);
    assert_eq!(calls.last().map(String::as_str), Some("C_Finalize"));
}
