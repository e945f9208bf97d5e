//! `ca-server audit verify --config`: the check run where the store is (a `ca-server dev`
//! data directory, sled, stopped), with the audit public key the server wrote, and the same
//! verdicts as the server's: OK on an intact log, FAILED naming the event edited in the middle
//! of the log, and a clear refusal while the server holds the sled store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ca_core::store::prelude::*;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ca-server");

struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_dev(dir: &Path) -> (Dev, HashMap<String, String>) {
    let env_file = dir.join("dev.env");
    let mut child = Command::new(BIN)
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
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    while !env_file.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("ca-server dev exited ({status})");
        }
        assert!(Instant::now() < deadline, "dev.env did not appear");
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&env_file).unwrap();
    let vars = text
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect();
    (Dev(child), vars)
}

fn stop(dev: &mut Dev) {
    let pid = dev.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(40);
    while dev.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "dev did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (success, stdout, stderr).
fn run(vars: &HashMap<String, String>, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("SOFTHSM2_CONF")
        .envs(vars.iter().filter(|(k, _)| k.starts_with("CA_")))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn audit_verify_with_config_checks_the_store_here_and_finds_a_tampered_event() {
    let dir = tempfile::tempdir().unwrap();
    let (mut dev, vars) = start_dev(dir.path());
    for i in 0..6 {
        let (ok, _, err) = run(
            &vars,
            &["token", "create", "--cn", &format!("v{i}.test"), "--json"],
        );
        assert!(ok, "{err}");
    }
    let (ok, _, err) = run(&vars, &["audit", "checkpoint"]);
    assert!(ok, "{err}");
    let config = dir.path().join("config.toml");
    let config = config.to_str().unwrap();
    // The server holds the sled store: refused, with what to do.
    let (ok, _, err) = run(&vars, &["audit", "verify", "--config", config]);
    assert!(!ok);
    assert!(err.contains("stop the server first"), "{err}");
    stop(&mut dev);

    // Intact: the same report as the server's, signatures checked with the written key.
    let (ok, out, err) = run(&vars, &["audit", "verify", "--config", config]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("audit log OK"), "{out}");
    assert!(out.contains("signatures verified"), "{out}");
    // Standard error is no terminal here: no progress line.
    assert!(!err.contains('\r'), "{err:?}");
    let (ok, out, err) = run(&vars, &["audit", "verify", "--config", config, "--json"]);
    assert!(ok, "{err}");
    let report: ca_server::api::types::AuditVerifyResponse = serde_json::from_str(&out).unwrap();
    assert!(report.signatures_checked && report.checkpoints >= 1);
    let events = report.events;
    assert!(events >= 8, "{events}");

    // An event in the middle edited in the store: FAILED, naming it, exit non-zero.
    let mid = events / 2;
    {
        let store = ca_core::store::SledStore::open(&dir.path().join("store")).unwrap();
        store
            .tamper_audit_for_test(mid, |v| v["actor"] = "mallory".into())
            .unwrap();
        store.flush().unwrap();
    }
    let (ok, out, err) = run(&vars, &["audit", "verify", "--config", config]);
    assert!(!ok, "{out}");
    assert!(err.contains("audit log verification FAILED"), "{err}");
    assert!(err.contains(&format!("sequence {mid}")), "{err}");
}
