//! `ca-server audit archive` and `audit truncate` on a PostgreSQL store, run as an operator
//! would beside the running nodes: a throwaway cluster (testkit::pg), the server's
//! configuration file (`[store] kind = "postgres"`, URL in an environment variable), and
//! another node appending to the log while the CLI truncates it in small batches. The chain
//! stays one and verifies from the signed start (here and with `audit verify --config`); a
//! kept event deleted in the database afterwards makes `audit verify` FAIL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ca_core::audit::{AuditKey, Checkpoint, NewAuditEvent};
use ca_core::signer::{KeyAlgorithm, Signer};
use ca_core::store::prelude::*;
use ca_core::store::PgStore;
use ca_server::config::{ServerConfig, StoreKind};
use std::path::Path;
use std::sync::Arc;
use testkit::pki::{test_profiles, TestPki};

const BIN: &str = env!("CARGO_BIN_EXE_ca-server");
const URL_ENV: &str = "CA_TEST_PG_AUDIT_ARCHIVE_URL";

/// A P-256 key in memory standing in for the HSM's audit checkpoint key.
#[derive(Debug)]
struct SoftKey {
    key: rcgen::KeyPair,
    spki: Vec<u8>,
}

impl SoftKey {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        SoftKey { key, spki }
    }
}

impl Signer for SoftKey {
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

fn write_config(pki: &TestPki, dir: &Path) -> std::path::PathBuf {
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
url = {{ env = "{URL_ENV}" }}
pool_size = 2
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
    let path = dir.join("ca.toml");
    std::fs::write(&path, cfg.to_toml().unwrap()).unwrap();
    assert_eq!(
        ServerConfig::load(&path).unwrap().store.kind,
        StoreKind::Postgres
    );
    path
}

fn run(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .env(URL_ENV, url)
        .env_remove("SOFTHSM2_CONF")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn archive_and_truncate_on_postgres_beside_a_node_that_appends() {
    let pki = TestPki::new(KeyAlgorithm::P256).unwrap();
    let db = testkit::pg::PgServer::shared()
        .unwrap()
        .fresh_database()
        .unwrap();
    let url = db.url().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&pki, dir.path());
    let config = config.to_str().unwrap();
    let key = SoftKey::new();
    let pubkey = dir.path().join("audit.pub.pem");
    std::fs::write(
        &pubkey,
        AuditKey::from_spki_der(&key.spki).unwrap().to_pem(),
    )
    .unwrap();
    let pubkey = pubkey.to_str().unwrap();
    let archive = dir.path().join("audit.ndjson");
    let archive = archive.to_str().unwrap();

    let node = Arc::new(PgStore::open(&url).unwrap());
    for i in 0..50 {
        node.append_audit(NewAuditEvent::ok("a", "issue", format!("{i}")))
            .unwrap();
    }
    let ev30 = node.audit_events(30, 1).unwrap().remove(0);
    node.put_audit_checkpoint(&Checkpoint::sign(&key, 30, &ev30.hash, chrono::Utc::now()).unwrap())
        .unwrap();
    let (ok, out, err) = run(
        &url,
        &[
            "audit",
            "archive",
            "--config",
            config,
            "--out",
            archive,
            "--public-key",
            pubkey,
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("archived events 1..=30"), "{out}");

    // Another node appends for as long as the CLI truncates, in batches of 3.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (node, stop) = (node.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 20 {
                node.append_audit(NewAuditEvent::ok("b", "issue", format!("b{n}")))
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    let (ok, out, err) = run(
        &url,
        &[
            "audit",
            "truncate",
            "--config",
            config,
            "--below-checkpoint",
            "30",
            "--archive",
            archive,
            "--public-key",
            pubkey,
            "--batch",
            "3",
        ],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let appended = writer.join().unwrap();
    assert!(ok, "{out}{err}");
    let r = node
        .verify_audit_log(Some(&AuditKey::from_spki_der(&key.spki).unwrap()))
        .unwrap();
    // 50 + the other node's appends, plus the truncation's own event; 30 archived.
    let last = 50 + appended + 1;
    assert_eq!(
        (r.archived_events, r.last_seq, r.events),
        (30, last, last - 30)
    );
    let truncations: Vec<_> = node
        .audit_iter(1)
        .map(Result::unwrap)
        .filter(|e| e.event.action == "audit.truncate")
        .collect();
    assert_eq!(truncations.len(), 1);
    let (ok, out, err) = run(
        &url,
        &[
            "audit",
            "verify",
            "--config",
            config,
            "--public-key",
            pubkey,
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("30 events archived below the start"), "{out}");

    // Attack: a kept event deleted in the database.
    node.delete_audit_event_for_test(40).unwrap();
    let (ok, out, err) = run(
        &url,
        &[
            "audit",
            "verify",
            "--config",
            config,
            "--public-key",
            pubkey,
        ],
    );
    assert!(!ok, "{out}");
    assert!(err.contains("audit log verification FAILED"), "{err}");
    assert!(err.contains("sequence 40"), "{err}");
}
