//! `ca-server dev` as a user runs it: a real process on a temp directory, ephemeral ports,
//! `dev.env`, the admin CLI with the variables of `dev.env`, SIGTERM, and a restart that reuses
//! the directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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
    let child = Command::new(BIN)
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
    let dev = Dev(child);
    let env_file = dir.join("dev.env");
    let deadline = Instant::now() + Duration::from_secs(240);
    while !env_file.exists() {
        assert!(Instant::now() < deadline, "dev.env did not appear");
        std::thread::sleep(Duration::from_millis(200));
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

fn cli(vars: &HashMap<String, String>, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(vars.iter().filter(|(k, _)| k.starts_with("CA_")))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sigterm(dev: &mut Dev) -> bool {
    let pid = dev.0.id().to_string();
    let ok = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(status) = dev.0.try_wait().unwrap() {
            return status.success();
        }
        assert!(Instant::now() < deadline, "dev did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dev_starts_writes_env_serves_cli_and_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca-data");
    let (mut dev, vars) = start_dev(&dir);
    for k in [
        "CA_URL",
        "CA_STATUS_URL",
        "CA_ROOT",
        "CA_FINGERPRINT",
        "CA_ADMIN_CERT",
        "CA_ADMIN_KEY",
    ] {
        assert!(vars.contains_key(k), "{k} missing from dev.env: {vars:?}");
    }
    assert!(!vars["CA_URL"].ends_with(":0"));
    // The fingerprint is the root's.
    let root_der = der::pem::decode_vec(std::fs::read(&vars["CA_ROOT"]).unwrap().as_slice())
        .unwrap()
        .1;
    assert_eq!(
        vars["CA_FINGERPRINT"],
        ca_core::signer::sha256_hex(&root_der)
    );
    let admin_cert = std::fs::read(&vars["CA_ADMIN_CERT"]).unwrap();

    // The status listener serves the CRL, the root CRL and the issuer certificate.
    for (path, what) in [("/crl", "crl"), ("/root.crl", "crl"), ("/ca.crt", "x509")] {
        let file = tmp.path().join("fetched");
        let out = Command::new("curl")
            .args([
                "-sSf",
                "-o",
                file.to_str().unwrap(),
                &format!("{}{path}", vars["CA_STATUS_URL"]),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("openssl")
            .args([
                what,
                "-inform",
                "DER",
                "-in",
                file.to_str().unwrap(),
                "-noout",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Admin CLI with the dev.env variables: token create (text and JSON), certs list, audit.
    let (ok, out, err) = cli(
        &vars,
        &[
            "token",
            "create",
            "--cn",
            "web1.example.com",
            "--san",
            "dns:web1.example.com",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.trim().len() >= 40, "{out}");
    let (ok, out, err) = cli(
        &vars,
        &[
            "token",
            "create",
            "--cn",
            "web2.example.com",
            "--ttl",
            "10m",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("tok_"));
    let (ok, out, err) = cli(&vars, &["certs", "list"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("SERIAL"), "{out}");
    assert!(out.contains("dev-admin"), "{out}");
    let (ok, out, err) = cli(
        &vars,
        &["certs", "list", "--json", "--identity", "dev-admin"],
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let serial = v["certs"][0]["serial"].as_str().unwrap().to_string();
    let (ok, out, err) = cli(&vars, &["audit", "show"]);
    assert!(ok, "{err}");
    assert!(out.contains("token.create"), "{out}");
    let (ok, out, err) = cli(&vars, &["audit", "verify"]);
    assert!(ok, "{err}");
    assert!(out.contains("audit log OK"), "{out}");

    // An operator certificate made through the API, then used for a revocation.
    let (ok, out, err) = cli(
        &vars,
        &[
            "admin-cert",
            "create",
            "--role",
            "operator",
            "--name",
            "op1",
            "--out",
            tmp.path().to_str().unwrap(),
        ],
    );
    assert!(ok, "{err} {out}");
    let mut op = vars.clone();
    op.insert(
        "CA_ADMIN_CERT".into(),
        tmp.path().join("op1.crt").display().to_string(),
    );
    op.insert(
        "CA_ADMIN_KEY".into(),
        tmp.path().join("op1.key").display().to_string(),
    );
    let (ok, _, err) = cli(&op, &["certs", "list"]);
    assert!(!ok, "operators may not list certificates");
    assert!(err.contains("forbidden"), "{err}");
    let (ok, out, err) = cli(&op, &["token", "create", "--cn", "x.example.com"]);
    assert!(ok, "{err} {out}");
    let (ok, _, err) = cli(&op, &["revoke", "00ff00ff"]);
    assert!(!ok);
    assert!(err.contains("not_found"), "{err}");
    let (ok, _, err) = cli(&op, &["revoke", &serial, "--reason", "nope"]);
    assert!(!ok && err.contains("bad_request"), "{err}");

    // Graceful stop on SIGTERM, then a restart reuses the directory.
    assert!(sigterm(&mut dev), "dev exits 0 on SIGTERM");
    assert!(!dir.join("dev.env").exists(), "dev.env removed on shutdown");
    let (mut dev2, vars2) = start_dev(&dir);
    assert_eq!(vars2["CA_FINGERPRINT"], vars["CA_FINGERPRINT"]);
    assert_eq!(
        std::fs::read(&vars2["CA_ADMIN_CERT"]).unwrap(),
        admin_cert,
        "admin certificate reused"
    );
    let (ok, out, err) = cli(&vars2, &["audit", "verify", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    let (ok, out, _) = cli(&vars2, &["certs", "list", "--identity", "dev-admin"]);
    assert!(ok && out.contains(&serial), "store reused: {out}");
    assert!(sigterm(&mut dev2));

    // The same directory served by `serve --config` (the config dev wrote).
    use std::io::BufRead;
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--config",
            dir.join("config.toml").to_str().unwrap(),
        ])
        .env_remove("SOFTHSM2_CONF")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut serve = Dev(child);
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    let mut v3 = vars.clone();
    v3.insert("CA_URL".into(), url);
    let (ok, out, err) = cli(&v3, &["certs", "list", "--identity", "dev-admin"]);
    assert!(ok && out.contains(&serial), "serve: {out} {err}");
    assert!(sigterm(&mut serve));
}

#[test]
fn bad_config_names_the_key_and_cli_errors_exit_nonzero() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("ca.toml");
    std::fs::write(
        &cfg,
        "data_dir = \"d\"\n[hsm]\ntoken_label = \"t\"\npin = { env = \"P\" }\n[ca]\ncertificate = \"a\"\nchain = \"b\"\n[limits]\nmax_body = 1\n[profiles.client]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits") && err.contains("max_body"), "{err}");

    let out = Command::new(BIN)
        .args([
            "token",
            "create",
            "--cn",
            "x",
            "--root",
            "/nonexistent",
            "--cert",
            "/x",
            "--key",
            "/y",
        ])
        .env_remove("CA_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent"));
}
