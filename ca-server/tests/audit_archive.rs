//! `ca-server audit archive`, `audit verify --archive` and `audit truncate` end to end on a
//! real `ca-server dev` data directory (sled on disk, SoftHSM checkpoint key): the archive
//! verifies offline; each bad input class (archive missing, tampered, signed by another key,
//! checkpoint not in it, not a checkpoint at all, an existing --out) is refused with its
//! code and nothing changed; after truncation `audit verify` (here and on the restarted
//! server's admin API) checks the log from the signed checkpoint and says how many events
//! were archived below it; the truncation is an audit event. Then the attacks of someone who
//! can write the store: a kept event deleted, the start moved to a checkpoint signed by
//! another key: `audit verify` FAILS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ca_core::audit::{AuditKey, Checkpoint};
use ca_core::signer::{KeyAlgorithm, Signer};
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
    let _ = std::fs::remove_file(&env_file);
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
    std::thread::sleep(Duration::from_millis(200));
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

fn checkpoint(vars: &HashMap<String, String>) -> u64 {
    let (ok, out, err) = run(vars, &["audit", "checkpoint"]);
    assert!(ok, "{err}");
    // "checkpoint signed: sequence N head ..."
    out.split("sequence ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no sequence in {out:?}"))
}

fn tokens(vars: &HashMap<String, String>, prefix: &str, n: usize) {
    for i in 0..n {
        let (ok, _, err) = run(
            vars,
            &[
                "token",
                "create",
                "--cn",
                &format!("{prefix}{i}.test"),
                "--json",
            ],
        );
        assert!(ok, "{err}");
    }
}

fn verify_json(
    vars: &HashMap<String, String>,
    config: &str,
) -> ca_server::api::types::AuditVerifyResponse {
    let (ok, out, err) = run(vars, &["audit", "verify", "--config", config, "--json"]);
    assert!(ok, "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

/// A P-256 key that is not the audit key.
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

#[test]
fn archive_verify_and_truncate_end_to_end_with_bad_inputs_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).to_str().unwrap().to_string();
    let (mut dev, vars) = start_dev(dir.path());
    tokens(&vars, "a", 5);
    let n1 = checkpoint(&vars);
    tokens(&vars, "b", 4);
    let n2 = checkpoint(&vars);
    assert!(n2 > n1 && n1 >= 5, "{n1} {n2}");
    let config = d("config.toml");
    let pubkey = d("audit-checkpoint.pub.pem");
    let archive = d("audit-1.ndjson");
    // The server holds the sled store: refused, with what to do.
    let (ok, _, err) = run(
        &vars,
        &["audit", "archive", "--config", &config, "--out", &archive],
    );
    assert!(!ok);
    assert!(err.contains("stop the server first"), "{err}");
    stop(&mut dev);
    let before = verify_json(&vars, &config);
    assert_eq!(before.archived_events, 0);

    // Archive through the first checkpoint; it verifies offline with the public key alone.
    let (ok, out, err) = run(
        &vars,
        &[
            "audit",
            "archive",
            "--config",
            &config,
            "--out",
            &archive,
            "--through-checkpoint",
            &n1.to_string(),
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("archived events 1..={n1}")), "{out}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let (ok, out, err) = run(
        &vars,
        &[
            "audit",
            "verify",
            "--archive",
            &archive,
            "--public-key",
            &pubkey,
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("archive OK: events 1..={n1}")),
        "{out}"
    );
    // The default: through the latest checkpoint.
    let (ok, out, err) = run(
        &vars,
        &[
            "audit",
            "archive",
            "--config",
            &config,
            "--out",
            &d("all.ndjson"),
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let all: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(all["through"]["seq"], n2);

    // Bad inputs: each refused with its code, the store unchanged.
    let tampered = d("tampered.ndjson");
    let text = std::fs::read_to_string(&archive).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let at = edited
        .iter()
        .position(|l| l.contains("\"type\":\"event\""))
        .unwrap()
        + 2;
    let mut ev: serde_json::Value = serde_json::from_str(&edited[at]).unwrap();
    ev["actor"] = "mallory".into();
    edited[at] = ev.to_string();
    std::fs::write(&tampered, edited.join("\n") + "\n").unwrap();
    let cut = d("cut.ndjson");
    std::fs::write(&cut, lines[..lines.len() - 1].join("\n") + "\n").unwrap();
    let mallory_pem = d("mallory.pub.pem");
    std::fs::write(
        &mallory_pem,
        AuditKey::from_spki_der(&Mallory::new().spki)
            .unwrap()
            .to_pem(),
    )
    .unwrap();
    let n1s = n1.to_string();
    let n2s = n2.to_string();
    let not_cp = (n1 - 1).to_string();
    let missing = d("missing.ndjson");
    let truncate = |below: &str, file: &str, extra: &[&str]| {
        let mut args = vec![
            "audit",
            "truncate",
            "--config",
            &config,
            "--below-checkpoint",
            below,
            "--archive",
            file,
        ];
        args.extend_from_slice(extra);
        run(&vars, &args)
    };
    let cases: Vec<(&str, (bool, String, String), &str)> = vec![
        (
            "archive missing",
            truncate(&n1s, &missing, &[]),
            "archive_missing",
        ),
        (
            "archive tampered",
            truncate(&n1s, &tampered, &[]),
            "archive_invalid",
        ),
        (
            "archive cut short",
            truncate(&n1s, &cut, &[]),
            "archive_invalid",
        ),
        (
            "archive checked with another key",
            truncate(&n1s, &archive, &["--public-key", &mallory_pem]),
            "archive_invalid",
        ),
        (
            "checkpoint beyond the archive",
            truncate(&n2s, &archive, &[]),
            "checkpoint_not_in_archive",
        ),
        (
            "no checkpoint at that sequence",
            truncate(&not_cp, &archive, &[]),
            "checkpoint_not_in_archive",
        ),
    ];
    for (what, (ok, out, err), code) in cases {
        assert!(!ok, "{what}: {out}");
        assert!(
            err.contains(&format!("audit truncate refused [{code}]")),
            "{what}: {err}"
        );
        let now = verify_json(&vars, &config);
        assert_eq!(
            (now.events, now.archived_events),
            (before.events, 0),
            "{what}: the store changed"
        );
    }
    let (ok, _, err) = run(
        &vars,
        &["audit", "archive", "--config", &config, "--out", &archive],
    );
    assert!(!ok && err.contains("[out_exists]"), "{err}");
    let (ok, _, err) = run(
        &vars,
        &[
            "audit",
            "archive",
            "--config",
            &config,
            "--out",
            &d("x.ndjson"),
            "--through-checkpoint",
            &not_cp,
        ],
    );
    assert!(!ok && err.contains("[checkpoint_not_found]"), "{err}");
    let (ok, _, err) = run(
        &vars,
        &[
            "audit",
            "verify",
            "--archive",
            &tampered,
            "--public-key",
            &pubkey,
        ],
    );
    assert!(!ok && err.contains("FAILED [archive_invalid]"), "{err}");

    // Truncate: the log now starts after checkpoint n1, and verifies from there.
    let (ok, out, err) = truncate(&n1s, &archive, &["--batch", "2"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!(
            "truncated: the log now starts after the checkpoint of sequence {n1}"
        )),
        "{out}"
    );
    let (ok, out, err) = run(&vars, &["audit", "verify", "--config", &config]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("{n1} events archived below the start")),
        "{out}"
    );
    let after = verify_json(&vars, &config);
    assert_eq!(after.archived_events, n1);
    // The kept events, plus the truncation's own event.
    assert_eq!(after.events, before.events - n1 + 1);
    // Running it again finishes nothing new but is accepted (resumable); an older archive
    // point is refused.
    let (ok, out, err) = truncate(&n1s, &archive, &[]);
    assert!(ok && out.contains("truncation finished"), "{out}{err}");
    {
        let store = ca_core::store::SledStore::open(&dir.path().join("store")).unwrap();
        let ev: Vec<_> = store
            .audit_iter(1)
            .map(Result::unwrap)
            .filter(|e| e.event.action == "audit.truncate")
            .collect();
        assert_eq!(ev.len(), 2, "each run is audited");
        assert_eq!(ev[0].event.detail["below_checkpoint"], n1);
        assert!(ev[0].event.actor.starts_with("audit-truncate: "));
        assert_eq!(store.audit_iter(1).next().unwrap().unwrap().seq, n1 + 1);
    }

    // The restarted server's admin API says the same.
    let (mut dev, vars) = start_dev(dir.path());
    let (ok, out, err) = run(&vars, &["audit", "verify", "--json"]);
    assert!(ok, "{out}{err}");
    let api: ca_server::api::types::AuditVerifyResponse = serde_json::from_str(&out).unwrap();
    assert!(api.signatures_checked);
    assert_eq!(api.archived_events, n1);
    assert_eq!(api.start.as_ref().map(|c| c.seq), Some(n1));
    tokens(&vars, "c", 2);
    checkpoint(&vars);
    stop(&mut dev);
    assert_eq!(verify_json(&vars, &config).archived_events, n1);

    // Attack: a kept event deleted from the store: FAILED.
    let victim = n1 + 2;
    {
        let store = ca_core::store::SledStore::open(&dir.path().join("store")).unwrap();
        store.delete_audit_event_for_test(victim).unwrap();
        store.flush().unwrap();
    }
    let (ok, out, err) = run(&vars, &["audit", "verify", "--config", &config]);
    assert!(!ok, "{out}");
    assert!(err.contains("audit log verification FAILED"), "{err}");
    assert!(err.contains(&format!("sequence {victim}")), "{err}");
}

#[test]
fn a_start_moved_to_a_checkpoint_not_signed_by_the_audit_key_fails_verify() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).to_str().unwrap().to_string();
    let (mut dev, vars) = start_dev(dir.path());
    tokens(&vars, "a", 3);
    let n1 = checkpoint(&vars);
    tokens(&vars, "b", 3);
    checkpoint(&vars);
    stop(&mut dev);
    let config = d("config.toml");
    let archive = d("a.ndjson");
    let n1s = n1.to_string();
    let (ok, _, err) = run(
        &vars,
        &[
            "audit",
            "archive",
            "--config",
            &config,
            "--out",
            &archive,
            "--through-checkpoint",
            &n1s,
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = run(
        &vars,
        &[
            "audit",
            "truncate",
            "--config",
            &config,
            "--below-checkpoint",
            &n1s,
            "--archive",
            &archive,
        ],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = run(&vars, &["audit", "verify", "--config", &config]);
    assert!(ok, "{out}{err}");

    // Mallory moves the start forward to a checkpoint she signed herself (hash right, so
    // the chain from it holds): the signature gives it away.
    let target = n1 + 2;
    {
        let store = ca_core::store::SledStore::open(&dir.path().join("store")).unwrap();
        let ev = store.audit_events(target, 1).unwrap().remove(0);
        let forged =
            Checkpoint::sign(&Mallory::new(), target, &ev.hash, chrono::Utc::now()).unwrap();
        store.set_audit_start(&forged).unwrap();
        store.flush().unwrap();
    }
    let (ok, out, err) = run(&vars, &["audit", "verify", "--config", &config]);
    assert!(!ok, "{out}");
    assert!(err.contains("audit log verification FAILED"), "{err}");
    assert!(err.contains("not the audit key"), "{err}");
}
