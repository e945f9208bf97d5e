//! Signed audit checkpoints, attacked as an insider would: a real `ca-server dev` process (real
//! SoftHSM token made by the key ceremonies, sled store on disk, HTTPS on 127.0.0.1), stopped;
//! its store edited with sled itself (write access to the store, no HSM key); the server started
//! again and `ca-server audit verify` run. And the offline check of an export
//! (`ca-server audit verify-export`) against truncated and edited exports.
//!
//! One dev directory serves every test (the tests take turns); each attack starts from a copy
//! of the untouched store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ca_core::audit::{self, AuditEvent, AuditKey, Checkpoint};
use ca_core::signer::{KeyAlgorithm, Signer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
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
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    while !env_file.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("ca-server dev exited ({status}): {err}");
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

/// SIGTERM; true if it exited with status 0.
fn stop(dev: &mut Dev) -> bool {
    let pid = dev.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(s) = dev.0.try_wait().unwrap() {
            return s.success();
        }
        assert!(Instant::now() < deadline, "dev did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run the CLI; (success, stdout + stderr).
fn cli(vars: &HashMap<String, String>, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("SOFTHSM2_CONF")
        .envs(vars.iter().filter(|(k, _)| k.starts_with("CA_")))
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    assert!(Command::new("cp")
        .args(["-a", from.to_str().unwrap(), to.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
}

/// Open the store as the insider does: with sled, no CA code. sled releases its lock shortly
/// after the previous process exits.
fn raw_store(dir: &Path) -> sled::Db {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sled::open(dir) {
            Ok(db) => return db,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn events(db: &sled::Db) -> Vec<AuditEvent> {
    db.open_tree("audit")
        .unwrap()
        .iter()
        .map(|kv| serde_json::from_slice(&kv.unwrap().1).unwrap())
        .collect()
}

fn checkpoints(db: &sled::Db) -> Vec<(sled::IVec, Checkpoint)> {
    db.open_tree("audit_checkpoints")
        .unwrap()
        .iter()
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k, serde_json::from_slice(&v).unwrap())
        })
        .collect()
}

fn set_head(db: &sled::Db, ev: &AuditEvent) {
    db.open_tree("meta")
        .unwrap()
        .insert(
            "audit_head",
            serde_json::to_vec(&(ev.seq, ev.hash.clone())).unwrap(),
        )
        .unwrap();
}

/// Remove the last `n` events; returns the new last event.
fn cut_tail(db: &sled::Db, n: usize) -> AuditEvent {
    let tree = db.open_tree("audit").unwrap();
    let all = events(db);
    for ev in &all[all.len() - n..] {
        tree.remove(ev.seq.to_be_bytes()).unwrap();
    }
    all[all.len() - n - 1].clone()
}

/// Rewrite every event from `from` on so the chain links again (what anyone who can write the
/// store can do: the chain is keyless); returns the new last event.
fn recompute_chain(db: &sled::Db, from: u64) -> AuditEvent {
    let tree = db.open_tree("audit").unwrap();
    let mut all = events(db);
    let mut prev = if from > 1 {
        all[from as usize - 2].hash.clone()
    } else {
        audit::GENESIS.to_string()
    };
    for ev in all.iter_mut().skip(from as usize - 1) {
        ev.prev_hash = prev.clone();
        ev.hash = audit::event_hash(ev.seq, &ev.time, &ev.event, &ev.prev_hash).unwrap();
        prev = ev.hash.clone();
        tree.insert(ev.seq.to_be_bytes(), serde_json::to_vec(ev).unwrap())
            .unwrap();
    }
    all.last().unwrap().clone()
}

/// Another P-256 key, in software: the insider's.
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

struct Fixture {
    dir: PathBuf,
    pristine: PathBuf,
    /// The audit public key from the key ceremony.
    ceremony_key: PathBuf,
    /// The first checkpoint (on demand), and the head at shutdown.
    first_checkpoint: Checkpoint,
    head_at_stop: u64,
}

fn fixture() -> std::sync::MutexGuard<'static, Fixture> {
    static F: OnceLock<Mutex<Fixture>> = OnceLock::new();
    F.get_or_init(|| Mutex::new(setup()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// `ca-server dev` out of the box: the key ceremony made the audit key, the config names it,
/// the server writes the public key, checkpoints on demand and at shutdown, and verifies them.
fn setup() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let (mut dev, vars) = start_dev(&dir);
    for i in 0..5 {
        let san = format!("dns:h{i}.example.com");
        let (ok, out) = cli(
            &vars,
            &["token", "create", "--cn", &format!("h{i}"), "--san", &san],
        );
        assert!(ok, "{out}");
    }
    let (ok, out) = cli(&vars, &["audit", "checkpoint", "--json"]);
    assert!(ok, "{out}");
    let resp: serde_json::Value = serde_json::from_str(&out).unwrap();
    let first_checkpoint: Checkpoint = serde_json::from_value(resp["checkpoint"].clone()).unwrap();
    for i in 5..8 {
        let (ok, out) = cli(&vars, &["token", "create", "--cn", &format!("h{i}")]);
        assert!(ok, "{out}");
    }
    let (ok, out) = cli(&vars, &["audit", "verify"]);
    assert!(ok, "{out}");
    assert!(out.contains("signatures verified with audit key"), "{out}");
    assert!(stop(&mut dev), "dev did not exit 0");

    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(
        config.contains("[audit]") && config.contains("key = \"audit-checkpoint\""),
        "{config}"
    );
    let ceremony_key = dir.join("pki/audit-checkpoint.pub.pem");
    let written = std::fs::read_to_string(dir.join("audit-checkpoint.pub.pem")).unwrap();
    assert_eq!(written, std::fs::read_to_string(&ceremony_key).unwrap());
    let key = AuditKey::from_pem(&written).unwrap();
    assert_eq!(resp["audit_key_sha256"], key.sha256());
    // The transcript of the key ceremony records the audit key.
    let transcripts: Vec<_> = std::fs::read_dir(dir.join("pki/transcripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-key.json"))
        .collect();
    let t = std::fs::read_to_string(&transcripts[0]).unwrap();
    assert!(
        t.contains(key.sha256()),
        "key transcript lacks the audit key"
    );

    // The shutdown checkpoint covers the head.
    let store = dir.join("store");
    let head_at_stop = {
        let db = raw_store(&store);
        let evs = events(&db);
        let cps = checkpoints(&db);
        let last = evs.last().unwrap();
        let (_, cp) = cps.last().unwrap();
        assert_eq!(cp.seq, last.seq, "no checkpoint at shutdown");
        assert_eq!(cp.head_hash, last.hash);
        assert!(cps.len() >= 2);
        last.seq
    };
    let pristine = tmp.path().join("store.pristine");
    copy_dir(&store, &pristine);
    // The directory lives as long as the test process.
    let _ = tmp.keep();
    Fixture {
        dir,
        pristine,
        ceremony_key,
        first_checkpoint,
        head_at_stop,
    }
}

/// Restore the untouched store, let `tamper` edit it with sled, start the server, run
/// `ca-server audit verify`; (success, output).
fn verify_after(f: &Fixture, tamper: impl FnOnce(&sled::Db)) -> (bool, String) {
    let store = f.dir.join("store");
    copy_dir(&f.pristine, &store);
    {
        let db = raw_store(&store);
        tamper(&db);
        db.flush().unwrap();
    }
    let (mut dev, vars) = start_dev(&f.dir);
    let r = cli(&vars, &["audit", "verify"]);
    stop(&mut dev);
    r
}

#[test]
fn untouched_log_verifies() {
    let f = fixture();
    let (ok, out) = verify_after(&f, |_| {});
    assert!(ok, "{out}");
    assert!(out.contains("signatures verified"), "{out}");
}

#[test]
fn deleting_the_tail_fails_naming_the_checkpoint() {
    let f = fixture();
    // The insider's best move: remove the last events and move the head back to the new end,
    // so the bare hash chain is intact.
    let (ok, out) = verify_after(&f, |db| {
        let last = cut_tail(db, 3);
        set_head(db, &last);
        assert_eq!(audit::verify_chain(events(db)).unwrap(), last.seq);
    });
    assert!(!ok, "a log cut short verified: {out}");
    assert!(
        out.contains(&format!("checkpoint of sequence {}", f.head_at_stop))
            && out.contains("was deleted"),
        "{out}"
    );
    // Removing the head with the tail fails the same way.
    let (ok, out) = verify_after(&f, |db| {
        cut_tail(db, 3);
        db.open_tree("meta").unwrap().remove("audit_head").unwrap();
    });
    assert!(!ok, "{out}");
    assert!(out.contains("checkpoint of sequence"), "{out}");
}

#[test]
fn recomputing_the_chain_after_an_edit_fails_on_the_checkpoint() {
    let f = fixture();
    let edited = f.first_checkpoint.seq - 2;
    let (ok, out) = verify_after(&f, |db| {
        let tree = db.open_tree("audit").unwrap();
        let mut ev: AuditEvent =
            serde_json::from_slice(&tree.get(edited.to_be_bytes()).unwrap().unwrap()).unwrap();
        ev.event.actor = "mallory".into();
        tree.insert(edited.to_be_bytes(), serde_json::to_vec(&ev).unwrap())
            .unwrap();
        let last = recompute_chain(db, edited);
        set_head(db, &last);
        assert!(audit::verify_chain(events(db)).is_ok());
    });
    assert!(!ok, "a rewritten log verified: {out}");
    assert!(
        out.contains(&format!(
            "checkpoint of sequence {}",
            f.first_checkpoint.seq
        )) && out.contains("another hash than the one signed"),
        "{out}"
    );
    // And with every checkpoint's hash rewritten to match: the signatures no longer verify.
    let (ok, out) = verify_after(&f, |db| {
        let tree = db.open_tree("audit").unwrap();
        let mut ev: AuditEvent =
            serde_json::from_slice(&tree.get(edited.to_be_bytes()).unwrap().unwrap()).unwrap();
        ev.event.actor = "mallory".into();
        tree.insert(edited.to_be_bytes(), serde_json::to_vec(&ev).unwrap())
            .unwrap();
        let last = recompute_chain(db, edited);
        set_head(db, &last);
        let evs = events(db);
        let cps = db.open_tree("audit_checkpoints").unwrap();
        for (k, mut cp) in checkpoints(db) {
            if cp.seq > 0 {
                cp.head_hash = evs[cp.seq as usize - 1].hash.clone();
            }
            cps.insert(k, serde_json::to_vec(&cp).unwrap()).unwrap();
        }
    });
    assert!(!ok, "{out}");
    assert!(out.contains("does not verify with the audit key"), "{out}");
}

#[test]
fn removing_the_head_fails() {
    let f = fixture();
    let (ok, out) = verify_after(&f, |db| {
        db.open_tree("meta").unwrap().remove("audit_head").unwrap();
    });
    assert!(!ok, "a log without its head verified: {out}");
    assert!(out.contains("head is missing"), "{out}");
}

#[test]
fn a_checkpoint_forged_with_another_key_fails() {
    let f = fixture();
    let mallory = Mallory::new();
    let real = AuditKey::from_pem(&std::fs::read_to_string(&f.ceremony_key).unwrap()).unwrap();
    for claim_real_key in [false, true] {
        let (ok, out) = verify_after(&f, |db| {
            // Cut the tail, drop the real checkpoints beyond it, sign a new one for the new end.
            let last = cut_tail(db, 3);
            set_head(db, &last);
            let cps = db.open_tree("audit_checkpoints").unwrap();
            for (k, cp) in checkpoints(db) {
                if cp.seq > last.seq {
                    cps.remove(k).unwrap();
                }
            }
            let mut forged =
                Checkpoint::sign(&mallory, last.seq, &last.hash, chrono::Utc::now()).unwrap();
            if claim_real_key {
                forged.key_sha256 = real.sha256().to_string();
            }
            let mut k = last.seq.to_be_bytes().to_vec();
            k.extend_from_slice(&(forged.time.timestamp() as u64).to_be_bytes());
            cps.insert(k, serde_json::to_vec(&forged).unwrap()).unwrap();
        });
        assert!(!ok, "a forged checkpoint verified: {out}");
        if claim_real_key {
            assert!(out.contains("does not verify with the audit key"), "{out}");
        } else {
            assert!(out.contains("not the audit key"), "{out}");
        }
    }
}

#[test]
fn the_server_refuses_to_start_without_its_audit_key() {
    let f = fixture();
    let config = f.dir.join("config.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        original.replace("key = \"audit-checkpoint\"", "key = \"no-such-key\""),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env_remove("SOFTHSM2_CONF")
        .output()
        .unwrap();
    std::fs::write(&config, original).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("audit.key") && err.contains("no-such-key"),
        "{err}"
    );
}

/// Edit the lines of an export.
fn rewrite(src: &Path, dst: &Path, f: impl FnOnce(&mut Vec<serde_json::Value>)) {
    let mut lines: Vec<serde_json::Value> = std::fs::read_to_string(src)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    f(&mut lines);
    let text: String = lines
        .iter()
        .map(|l| format!("{}\n", serde_json::to_string(l).unwrap()))
        .collect();
    std::fs::write(dst, text).unwrap();
}

fn verify_export(file: &Path, key: &Path) -> (bool, String) {
    cli(
        &HashMap::new(),
        &[
            "audit",
            "verify-export",
            file.to_str().unwrap(),
            "--public-key",
            key.to_str().unwrap(),
        ],
    )
}

#[test]
fn exports_verify_offline_and_truncated_or_edited_ones_do_not() {
    let f = fixture();
    let store = f.dir.join("store");
    copy_dir(&f.pristine, &store);
    let (mut dev, vars) = start_dev(&f.dir);
    let out_dir = tempfile::tempdir().unwrap();
    let full = out_dir.path().join("full.jsonl");
    let (ok, out) = cli(&vars, &["audit", "export", "--out", full.to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&vars, &["audit", "export", "--out", full.to_str().unwrap()]);
    assert!(!ok && out.contains("refusing to overwrite"), "{out}");
    // From a later sequence: anchored at the checkpoint before it.
    let part = out_dir.path().join("part.jsonl");
    let since = (f.first_checkpoint.seq + 2).to_string();
    let (ok, out) = cli(
        &vars,
        &[
            "audit",
            "export",
            "--since",
            &since,
            "--out",
            part.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    assert!(stop(&mut dev));

    let (ok, out) = verify_export(&full, &f.ceremony_key);
    assert!(ok, "{out}");
    assert!(out.contains("export OK: events 1..="), "{out}");
    let (ok, out) = verify_export(&part, &f.dir.join("audit-checkpoint.pub.pem"));
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("events {}..=", f.first_checkpoint.seq + 1)),
        "{out}"
    );

    let bad = out_dir.path().join("bad.jsonl");
    fn seq_of(l: &serde_json::Value) -> u64 {
        l["seq"].as_u64().unwrap_or(0)
    }
    type Edit = Box<dyn FnOnce(&mut Vec<serde_json::Value>)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "end line cut off",
            Box::new(|l| {
                l.pop();
            }),
            "cut short",
        ),
        (
            "tail cut off, end line rewritten",
            Box::new(|l| {
                l.pop();
                // Drop the final checkpoint and the two events before it.
                let mut removed = 0;
                while removed < 3 {
                    l.pop();
                    removed += 1;
                }
                let events = l.iter().filter(|x| x["type"] == "event").count();
                let checkpoints = l.iter().filter(|x| x["type"] == "checkpoint").count();
                let last = l.iter().rev().find(|x| x["type"] == "event").unwrap()["seq"].clone();
                l.push(serde_json::json!({"type": "end", "events": events, "checkpoints": checkpoints, "last_seq": last}));
            }),
            "not covered by any signature",
        ),
        (
            "an event edited",
            Box::new(|l| {
                let ev = l
                    .iter_mut()
                    .find(|x| x["type"] == "event" && seq_of(x) == 3)
                    .unwrap();
                ev["actor"] = "mallory".into();
            }),
            "does not match its hash",
        ),
        (
            "an event edited and the export's chain recomputed",
            Box::new(|l| {
                let mut prev = audit::GENESIS.to_string();
                for x in l.iter_mut().filter(|x| x["type"] == "event") {
                    if seq_of(x) == 3 {
                        x["actor"] = "mallory".into();
                    }
                    let mut ev: AuditEvent = serde_json::from_value(x.clone()).unwrap();
                    ev.prev_hash = prev.clone();
                    ev.hash =
                        audit::event_hash(ev.seq, &ev.time, &ev.event, &ev.prev_hash).unwrap();
                    prev = ev.hash.clone();
                    let mut v = serde_json::to_value(&ev).unwrap();
                    v["type"] = "event".into();
                    *x = v;
                }
            }),
            "another hash than the one signed",
        ),
        (
            "an event removed",
            Box::new(|l| {
                l.retain(|x| !(x["type"] == "event" && seq_of(x) == 4));
            }),
            "expected sequence 4",
        ),
        (
            "a checkpoint's signature edited",
            Box::new(|l| {
                let cp = l.iter_mut().find(|x| x["type"] == "checkpoint").unwrap();
                let sig = cp["signature"].as_str().unwrap().to_string();
                let flipped = if sig.ends_with('0') { "1" } else { "0" };
                cp["signature"] = format!("{}{flipped}", &sig[..sig.len() - 1]).into();
            }),
            "does not verify with the audit key",
        ),
    ];
    for (what, edit, expect) in cases {
        rewrite(&full, &bad, edit);
        let (ok, out) = verify_export(&bad, &f.ceremony_key);
        assert!(!ok, "{what}: verified: {out}");
        assert!(out.contains(expect), "{what}: {out}");
    }
    // Another key (the issuing key's public key): refused.
    let (ok, out) = verify_export(&full, &f.dir.join("pki/issuing-ca.pub.pem"));
    assert!(
        !ok && out.contains("not by the audit public key given"),
        "{out}"
    );
}

/// In process, with a short interval: a checkpoint once events were added, none while nothing
/// changes, and one at shutdown covering the last event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_signed_periodically_and_at_shutdown() {
    use ca_core::store::Store;
    use ca_server::server::{self, AuditParts, ServerParts};
    use std::sync::Arc;
    let pki = tokio::task::spawn_blocking(|| testkit::pki::TestPki::new(KeyAlgorithm::P256))
        .await
        .unwrap()
        .unwrap();
    let token = pki.issuing_signer.token();
    token
        .generate_key("audit-checkpoint", KeyAlgorithm::P256)
        .unwrap();
    let audit_signer = Arc::new(token.signer("audit-checkpoint").unwrap());
    let key = AuditKey::from_spki_der(audit_signer.spki_der()).unwrap();
    let store = pki.store.clone() as Arc<dyn Store>;
    let parts = ServerParts {
        signer: pki.issuing_signer.clone(),
        issuing_der: pki.issuing_der.clone(),
        chain_der: vec![pki.root_der.clone()],
        profiles: testkit::pki::test_profiles(),
        urls: Default::default(),
        store: store.clone(),
        clock: Arc::new(ca_core::clock::SystemClock),
        tls_names: vec!["dns:localhost".into()],
        tls_validity: ca_core::profile::Span(chrono::Duration::days(1)),
        admin_validity: ca_core::profile::Span(chrono::Duration::days(1)),
        limits: Default::default(),
        tokens: Default::default(),
        renewal: Default::default(),
        metrics: Arc::new(ca_server::metrics::Metrics::new()),
        audit: Some(AuditParts {
            signer: audit_signer,
            interval: Duration::from_millis(300),
        }),
    };
    let assembled = server::ServerBuilder::new(parts).assemble().await.unwrap();
    let state = assembled.state.clone();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = assembled.start(api, None).await.unwrap();
    let covered = |store: &Arc<dyn Store>| {
        let head = store.audit_head().unwrap().unwrap();
        store
            .audit_checkpoint_before(u64::MAX)
            .unwrap()
            .is_some_and(|c| c.seq == head.0 && c.head_hash == head.1)
    };
    let count = |store: &Arc<dyn Store>| store.audit_checkpoints(0).count();
    let wait_covered = || async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !covered(&store) {
            assert!(Instant::now() < deadline, "no periodic checkpoint");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // The server certificate's issuance is an event: the next period signs it.
    wait_covered().await;
    let n = count(&store);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(count(&store), n, "checkpoints signed with nothing new");
    state
        .audit(ca_core::audit::NewAuditEvent::ok("test", "test.event", "1"))
        .await;
    wait_covered().await;
    assert!(count(&store) > n);
    state
        .audit(ca_core::audit::NewAuditEvent::ok("test", "test.event", "2"))
        .await;
    running.shutdown().await;
    assert!(covered(&store), "no checkpoint at shutdown");
    let report = store.verify_audit_log(Some(&key)).unwrap();
    assert!(report.signatures_checked && report.checkpoints >= 2);
    assert_eq!(report.unsigned_tail(), 0);
    // The issuing key is not the audit key.
    assert_ne!(pki.issuing_signer.spki_der(), key.spki_der());
}
