//! Break-glass end to end with the real binary: a `ca-server dev` whose only security-officer
//! certificate is no longer valid, stopped; `ca-server admin-cert create --offline` on its
//! configuration; the server restarted; the new certificate used for a security-officer-only
//! call, and the audit log showing how it was made.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ca_core::store::{prelude::*, SledStore};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
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
    let _ = std::fs::remove_file(&env_file);
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

fn run(args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("SOFTHSM2_CONF")
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A security-officer-only call through the admin CLI: `admin-cert create` online (a token for
/// profile `_admin`, which only an officer may create).
fn officer_call(
    vars: &HashMap<String, String>,
    cert: &str,
    key: &str,
    name: &str,
    out: &Path,
) -> (bool, String, String) {
    run(
        &[
            "admin-cert",
            "create",
            "--role",
            "auditor",
            "--name",
            name,
            "--out",
            out.to_str().unwrap(),
        ],
        &[
            ("CA_URL", vars["CA_URL"].as_str()),
            ("CA_ROOT", vars["CA_ROOT"].as_str()),
            ("CA_ADMIN_CERT", cert),
            ("CA_ADMIN_KEY", key),
        ],
    )
}

fn serial_of(pem_file: &str) -> Vec<u8> {
    let pem = std::fs::read(pem_file).unwrap();
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let s = cert.tbs_certificate.raw_serial().to_vec();
    match s.as_slice() {
        [0, rest @ ..] if !rest.is_empty() => rest.to_vec(),
        _ => s,
    }
}

#[test]
fn break_glass_mints_a_security_officer_when_none_is_left() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca-data");
    let config = dir.join("config.toml");
    let out = tmp.path().join("rescue");
    let (mut dev, vars) = start_dev(&dir);
    let (so_cert, so_key) = (vars["CA_ADMIN_CERT"].clone(), vars["CA_ADMIN_KEY"].clone());
    let (ok, _, err) = officer_call(&vars, &so_cert, &so_key, "aud1", &tmp.path().join("a1"));
    assert!(ok, "{err}");

    // While the server runs: refused, clearly, and nothing is written.
    let breakglass = |name: &str| {
        run(
            &[
                "admin-cert",
                "create",
                "--offline",
                "--config",
                config.to_str().unwrap(),
                "--role",
                "security-officer",
                "--name",
                name,
                "--out",
                out.to_str().unwrap(),
            ],
            &[],
        )
    };
    let (ok, _, err) = breakglass("rescue");
    assert!(!ok);
    assert!(
        err.contains("stopped server") && err.contains("Stop the server"),
        "{err}"
    );
    assert!(!out.join("rescue.crt").exists() && !out.join("rescue.key").exists());

    // The only officer certificate stops being valid (its key was compromised), with the
    // server stopped: a store where no security-officer certificate is valid.
    stop(&mut dev);
    {
        let store = SledStore::open(&dir.join("store")).unwrap();
        store
            .revoke(
                &serial_of(&so_cert),
                ca_core::clock::truncate(chrono::Utc::now()),
                ca_core::revocation::RevocationReason::KeyCompromise,
            )
            .unwrap();
    }

    let (ok, stdout, err) = breakglass("rescue");
    assert!(ok, "{stdout}\n{err}");
    assert!(
        stdout.contains("BREAK-GLASS") && stdout.contains("before: 0"),
        "{stdout}"
    );
    let (new_cert, new_key) = (out.join("rescue.crt"), out.join("rescue.key"));
    for f in [&new_cert, &new_key] {
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            f.display()
        );
    }
    // The same name again: refused, the files are not overwritten.
    let before = std::fs::read(&new_key).unwrap();
    let (ok, _, err) = breakglass("rescue");
    assert!(!ok && err.contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read(&new_key).unwrap(), before);

    // openssl, independently: the new certificate carries the officer role in `_admin` form.
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&new_cert)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("URI:urn:ca:role:security-officer") && text.contains("CN = rescue"),
        "{text}"
    );

    let (_dev, vars) = start_dev(&dir);
    // The revoked officer is refused; the break-glass officer may do what only officers may.
    let (ok, _, err) = officer_call(&vars, &so_cert, &so_key, "aud2", &tmp.path().join("a2"));
    assert!(!ok && err.contains("cert_revoked"), "{err}");
    let (ok, _, err) = officer_call(
        &vars,
        new_cert.to_str().unwrap(),
        new_key.to_str().unwrap(),
        "aud3",
        &tmp.path().join("a3"),
    );
    assert!(ok, "{err}");

    // The audit log says how the certificate was made, by whom, where; the chain verifies.
    let envs = [
        ("CA_URL", vars["CA_URL"].as_str()),
        ("CA_ROOT", vars["CA_ROOT"].as_str()),
        ("CA_ADMIN_CERT", new_cert.to_str().unwrap()),
        ("CA_ADMIN_KEY", new_key.to_str().unwrap()),
    ];
    let (ok, json, err) = run(&["audit", "show", "--limit", "1000", "--json"], &envs);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let ev = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "admin_cert.create")
        .unwrap_or_else(|| panic!("no admin_cert.create event: {json}"));
    assert_eq!(ev["result"], "ok", "{ev}");
    assert_eq!(ev["detail"]["mode"], "break-glass", "{ev}");
    assert_eq!(ev["detail"]["role"], "security-officer", "{ev}");
    assert_eq!(ev["detail"]["security_officers_before"], 0, "{ev}");
    assert!(
        ev["detail"]["os_user"].as_str().unwrap().contains("uid"),
        "{ev}"
    );
    assert!(!ev["detail"]["host"].as_str().unwrap().is_empty(), "{ev}");
    assert!(
        ev["actor"].as_str().unwrap().starts_with("break-glass"),
        "{ev}"
    );
    let (ok, _, err) = run(&["audit", "verify"], &envs);
    assert!(ok, "{err}");
}

#[test]
fn break_glass_is_documented_in_help() {
    let (ok, help, _) = run(&["admin-cert", "create", "--help"], &[]);
    assert!(ok);
    for w in ["--offline", "--config", "Break-glass", "STOPPED", "audit"] {
        assert!(help.contains(w), "{w} missing from:\n{help}");
    }
    // --offline without --config is a usage error.
    let (ok, _, err) = run(
        &[
            "admin-cert",
            "create",
            "--offline",
            "--role",
            "security-officer",
            "--name",
            "x",
        ],
        &[],
    );
    assert!(!ok && err.contains("--config"), "{err}");
}
