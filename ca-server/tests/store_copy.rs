//! `ca-server store copy`, end to end with the real binary: a `ca-server dev` process on its
//! sled store (SoftHSM from the dev key ceremonies, the audit checkpoint key) enrolls, renews,
//! revokes for keyCompromise, leaves one token used and one unused and signs an audit
//! checkpoint; it is stopped, the store is copied into a throwaway PostgreSQL database
//! (testkit::pg), and the same directory is served again from PostgreSQL: OCSP, tokens, the
//! audit log (`ca-server audit verify`, signatures checked), the CRL number and the lineage
//! carry on. And the refusals: the source in use, a non-empty target (left unchanged), a
//! password on the command line, and a copy that fails part-way (the target stays empty).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ca_core::store::prelude::*;
use ca_core::store::{IdentityBinding, PgStore, SledStore, StoreCounts, TokenRecord};
use ca_server::api::types::*;
use ca_server::client::ApiClient;
use ca_server::config::{ServerConfig, StoreKind, StoreSection, UrlFrom, UrlSource};
use common::{csr, serial_of, Identity};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ca-server");

/// The variable the target's URL is passed in (to `store copy` and to the server).
const URL_ENV: &str = "CA_TEST_STORE_COPY_URL";

struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_dev(dir: &Path, env: &[(&str, &str)]) -> (Dev, HashMap<String, String>) {
    let env_file = dir.join("dev.env");
    let _ = std::fs::remove_file(&env_file);
    let mut child = Command::new(BIN)
        .args(["dev", "--data", dir.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--status-listen", "127.0.0.1:0"])
        .env_remove("SOFTHSM2_CONF")
        .envs(env.iter().copied())
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

/// SIGTERM, and wait for a clean exit.
fn stop(dev: &mut Dev) {
    let pid = dev.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(s) = dev.0.try_wait().unwrap() {
            assert!(s.success(), "dev exited with {s}");
            return;
        }
        assert!(Instant::now() < deadline, "dev did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run the binary; (success, stdout + stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("SOFTHSM2_CONF")
        .envs(env.iter().copied())
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

/// The admin CLI with the variables of `dev.env`.
fn cli(vars: &HashMap<String, String>, args: &[&str]) -> (bool, String) {
    let env: Vec<(&str, &str)> = vars
        .iter()
        .filter(|(k, _)| k.starts_with("CA_"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    run(args, &env)
}

/// `store copy --from FROM --to-env URL_ENV` (plus `extra`) into the database at `url`.
fn copy(from: &Path, url: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "store",
        "copy",
        "--from",
        from.to_str().unwrap(),
        "--to-env",
        URL_ENV,
    ];
    args.extend_from_slice(extra);
    run(&args, &[(URL_ENV, url)])
}

fn token(vars: &HashMap<String, String>, cn: &str) -> String {
    let san = format!("dns:{cn}");
    let (ok, out) = cli(
        vars,
        &["token", "create", "--cn", cn, "--san", &san, "--json"],
    );
    assert!(ok, "{out}");
    let t: TokenCreateResponse = serde_json::from_str(&out).unwrap();
    t.token
}

fn api(vars: &HashMap<String, String>, id: Option<&Identity>) -> ApiClient {
    let root = std::fs::read(&vars["CA_ROOT"]).unwrap();
    ApiClient::new(
        &vars["CA_URL"],
        &root,
        id.map(|i| (i.cert.as_bytes(), i.key.as_bytes())),
    )
    .unwrap()
}

fn enroll(
    rt: &tokio::runtime::Runtime,
    vars: &HashMap<String, String>,
    token: &str,
    cn: &str,
) -> Result<Identity, ca_server::client::ClientError> {
    let san = format!("dns:{cn}");
    let (key, csr) = csr(cn, &[&san]);
    let req = EnrollRequest {
        token: token.into(),
        csr,
    };
    let issued: IssuedResponse =
        rt.block_on(async { api(vars, None).post_json("/v1/enroll", &req).await })?;
    Ok(Identity {
        cert: issued.certificate,
        key,
    })
}

fn renew(
    rt: &tokio::runtime::Runtime,
    vars: &HashMap<String, String>,
    id: &Identity,
    cn: &str,
) -> Result<Identity, ca_server::client::ClientError> {
    let (key, csr) = csr(cn, &[]);
    let req = RenewRequest { csr };
    let issued: IssuedResponse =
        rt.block_on(async { api(vars, Some(id)).post_json("/v1/renew", &req).await })?;
    Ok(Identity {
        cert: issued.certificate,
        key,
    })
}

/// Rows per kind of a store, counted through the store traits.
fn counts_of(s: &SledStore) -> StoreCounts {
    let mut c = StoreCounts::default();
    s.for_each_cert(&mut |_| {
        c.certs += 1;
        Ok(())
    })
    .unwrap();
    s.for_each_revoked(&mut |_| {
        c.revoked += 1;
        Ok(())
    })
    .unwrap();
    s.for_each_lineage_lock(&mut |_, _| {
        c.lineage_locks += 1;
        Ok(())
    })
    .unwrap();
    let tokens = s.list_tokens().unwrap();
    c.tokens = tokens.len() as u64;
    c.used_tokens = tokens.iter().filter(|t| t.used_at.is_some()).count() as u64;
    s.for_each_ocsp_response(&mut |_| {
        c.ocsp_responses += 1;
        Ok(())
    })
    .unwrap();
    c.audit_events = s.audit_iter(1).count() as u64;
    c.audit_checkpoints = s.audit_checkpoints(0).count() as u64;
    s.for_each_archived_crl(&mut |_| {
        c.archived_crls += 1;
        Ok(())
    })
    .unwrap();
    c
}

/// The target's counts after a copy of a store with `c`: the `store.copy` event besides.
fn with_record(c: &StoreCounts) -> StoreCounts {
    StoreCounts {
        audit_events: c.audit_events + 1,
        ..c.clone()
    }
}

/// Open a sled store (sled releases a stopped process's lock shortly after it exits).
fn open_sled(dir: &Path) -> SledStore {
    SledStore::open(dir).unwrap()
}

/// The source: a dev CA stopped after its history, and what the test knows about it.
struct Fixture {
    /// The dev directory (config, pki, store).
    dir: PathBuf,
    /// A copy of its store as it was at the stop, for the tests that copy it again.
    pristine: PathBuf,
    /// Enrolled, then renewed (`a2`): generations 1 and 2 of one lineage.
    a1: Identity,
    a2: Identity,
    /// Enrolled, then revoked for keyCompromise.
    b1: Identity,
    /// The token `a1` was enrolled with (used), and one never used.
    used_token: String,
    unused_token: String,
    /// The source's counts, CRL number and audit head at the stop.
    counts: StoreCounts,
    crl_number: u64,
    head: (u64, String),
}

fn fixture() -> std::sync::MutexGuard<'static, Fixture> {
    static F: OnceLock<Mutex<Fixture>> = OnceLock::new();
    F.get_or_init(|| Mutex::new(setup()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn setup() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let (mut dev, vars) = start_dev(&dir, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();

    let used_token = token(&vars, "a.test");
    let a1 = enroll(&rt, &vars, &used_token, "a.test").unwrap();
    let a2 = renew(&rt, &vars, &a1, "a.test").unwrap();
    let b1 = enroll(&rt, &vars, &token(&vars, "b.test"), "b.test").unwrap();
    let (ok, out) = cli(
        &vars,
        &["revoke", &serial_of(&b1.cert), "--reason", "keyCompromise"],
    );
    assert!(ok, "{out}");
    let (ok, out) = cli(&vars, &["audit", "checkpoint"]);
    assert!(ok, "{out}");
    // After the checkpoint: the shutdown signs a second one, of the head at the stop.
    let unused_token = token(&vars, "c.test");

    // While the server runs, its store is locked: the copy refuses, and writes nothing.
    let server = testkit::pg::PgServer::shared().expect("PostgreSQL");
    let db = server.fresh_database().unwrap();
    let (ok, out) = copy(&dir, db.url(), &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("[source_in_use]"), "{out}");
    assert!(out.contains("stop the server"), "{out}");
    let pg = PgStore::open_with_pool_size(db.url(), 1).unwrap();
    assert_eq!(pg.counts().unwrap(), StoreCounts::default());
    drop(pg);

    stop(&mut dev);
    let store = dir.join("store");
    let (counts, crl_number, head) = {
        let s = open_sled(&store);
        let head = s.audit_head().unwrap().expect("an audit head");
        (counts_of(&s), s.current_crl_number().unwrap(), head)
    };
    assert_eq!(counts.revoked, 1);
    assert_eq!(counts.lineage_locks, 1, "keyCompromise locks b1's lineage");
    assert!(counts.tokens >= 3 && counts.used_tokens >= 2, "{counts:?}");
    assert!(counts.audit_checkpoints >= 2, "{counts:?}");
    assert!(crl_number >= 1, "the server built a CRL");
    let pristine = tmp.path().join("store.pristine");
    assert!(Command::new("cp")
        .args(["-a", store.to_str().unwrap(), pristine.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    // The directory lives as long as the test process.
    let _ = tmp.keep();
    Fixture {
        dir,
        pristine,
        a1,
        a2,
        b1,
        used_token,
        unused_token,
        counts,
        crl_number,
        head,
    }
}

/// `openssl ocsp`'s verdict on the certificate `pem`, from the status listener.
fn ocsp(vars: &HashMap<String, String>, cfg: &ServerConfig, pem: &str) -> String {
    let out = Command::new("openssl")
        .args(["ocsp", "-no_nonce", "-issuer"])
        .arg(&cfg.ca.certificate)
        .args(["-serial", &format!("0x{}", serial_of(pem))])
        .args(["-url", &format!("{}/ocsp", vars["CA_STATUS_URL"])])
        .arg("-CAfile")
        .arg(&vars["CA_ROOT"])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The CRL the status listener serves, as `openssl crl -text` prints it.
fn crl_text(vars: &HashMap<String, String>, dir: &Path) -> String {
    let file = dir.join("fetched.crl");
    let ok = Command::new("curl")
        .args(["-sf", "-o", file.to_str().unwrap()])
        .arg(format!("{}/crl", vars["CA_STATUS_URL"]))
        .status()
        .unwrap()
        .success();
    assert!(ok, "GET /crl");
    let out = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn crl_number_of(text: &str) -> u64 {
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.contains("X509v3 CRL Number") {
            let v = lines.next().unwrap().trim();
            return v
                .parse()
                .unwrap_or_else(|_| u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap());
        }
    }
    panic!("no CRL number in {text}");
}

#[test]
fn a_copied_store_serves_on_postgres_as_it_did_on_sled() {
    let f = fixture();
    let server = testkit::pg::PgServer::shared().expect("PostgreSQL");
    let db = server.fresh_database().unwrap();
    let audit_key = f.dir.join("audit-checkpoint.pub.pem");
    let (ok, out) = copy(
        &f.dir,
        db.url(),
        &["--audit-key", audit_key.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    eprintln!("{out}");
    assert!(out.contains("committed"), "{out}");
    assert!(
        out.contains("checkpoint signatures verified with audit key"),
        "{out}"
    );
    assert!(
        out.contains(&format!("sequence {} hash {}", f.head.0, f.head.1)),
        "{out}"
    );
    {
        let pg = PgStore::open_with_pool_size(db.url(), 2).unwrap();
        assert_eq!(pg.counts().unwrap(), with_record(&f.counts));
        assert_eq!(pg.current_crl_number().unwrap(), f.crl_number);
        // The copied chain, then the event recording the copy, chained to the copied head.
        let evs = pg.audit_events(f.head.0, 2).unwrap();
        assert_eq!(evs[0].hash, f.head.1);
        assert_eq!(evs[1].event.action, "store.copy");
        assert!(
            evs[1].event.actor.starts_with("store-copy: "),
            "{:?}",
            evs[1]
        );
        assert_eq!(evs[1].prev_hash, f.head.1);
        assert_eq!(evs[1].event.detail["counts"]["certs"], f.counts.certs);
        assert_eq!(
            pg.audit_head().unwrap(),
            Some((f.head.0 + 1, evs[1].hash.clone()))
        );
        assert!(out.contains(&format!("audit event {} (store.copy)", f.head.0 + 1)));
        // Lineage, generation and revocation state as they were.
        let a2 = pg
            .get_cert(&hex::decode(serial_of(&f.a2.cert)).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(a2.generation, 2);
        assert_eq!(a2.lineage_hex(), serial_of(&f.a1.cert));
        let b1 = hex::decode(serial_of(&f.b1.cert)).unwrap();
        assert!(pg.get_cert(&b1).unwrap().unwrap().is_revoked());
        assert_eq!(
            pg.lineage_lock(&b1).unwrap().expect("locked").reason,
            "key_compromise"
        );
    }

    // Switch the directory's configuration to the database, and serve it again.
    let config_path = f.dir.join("config.toml");
    let mut cfg = ServerConfig::load(&config_path).unwrap();
    assert_eq!(cfg.store.kind, StoreKind::Sled);
    cfg.store = StoreSection {
        kind: StoreKind::Postgres,
        url: Some(UrlSource(UrlFrom::Env(URL_ENV.into()))),
        pool_size: Some(4),
    };
    std::fs::write(&config_path, cfg.to_toml().unwrap()).unwrap();
    let (mut dev, vars) = start_dev(&f.dir, &[(URL_ENV, db.url())]);
    let cfg = ServerConfig::load(&config_path).unwrap();
    assert_eq!(cfg.store.kind, StoreKind::Postgres);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // OCSP: the revoked one revoked (keyCompromise), the others good.
    let out = ocsp(&vars, &cfg, &f.b1.cert);
    assert!(
        out.contains(": revoked") && out.contains("keyCompromise"),
        "{out}"
    );
    for good in [&f.a1, &f.a2] {
        let out = ocsp(&vars, &cfg, &good.cert);
        assert!(out.contains(": good"), "{out}");
    }

    // The used token stays used; the unused one redeems, once.
    let err = enroll(&rt, &vars, &f.used_token, "a.test").expect_err("a used token");
    assert_eq!(err.code(), Some("token_rejected"), "{err}");
    let c1 = enroll(&rt, &vars, &f.unused_token, "c.test").expect("the unused token redeems");
    let err = enroll(&rt, &vars, &f.unused_token, "c.test").expect_err("now used");
    assert_eq!(err.code(), Some("token_rejected"), "{err}");

    // The audit chain, with the checkpoints signed on sled, verifies on PostgreSQL.
    let (ok, out) = cli(&vars, &["audit", "verify"]);
    assert!(ok, "{out}");
    assert!(out.contains("signatures verified with audit key"), "{out}");

    // The CRL served is the source's latest (archived, copied) or a newer one; a revocation
    // on PostgreSQL gets a CRL numbered above every number the source issued, listing both.
    let n = crl_number_of(&crl_text(&vars, &f.dir));
    assert!(n >= f.crl_number, "CRL number {n} < {}", f.crl_number);
    let (ok, out) = cli(
        &vars,
        &["revoke", &serial_of(&c1.cert), "--reason", "superseded"],
    );
    assert!(ok, "{out}");
    // The CRL is rebuilt after the revocation (by the node holding the CRL lease).
    let c1_serial = serial_of(&c1.cert).to_uppercase();
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = crl_text(&vars, &f.dir);
        if text.to_uppercase().contains(&c1_serial) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let n = crl_number_of(&text);
    assert!(n > f.crl_number, "CRL number {n} <= {}", f.crl_number);
    for revoked in [&f.b1, &c1] {
        assert!(
            text.to_uppercase()
                .contains(&serial_of(&revoked.cert).to_uppercase()),
            "{text}"
        );
    }

    // The lineage carries on: generation 3 from generation 2, and b1's lineage stays locked.
    let a3 = renew(&rt, &vars, &f.a2, "a.test").expect("generation 2 renews");
    let admin = Identity {
        cert: std::fs::read_to_string(&vars["CA_ADMIN_CERT"]).unwrap(),
        key: std::fs::read_to_string(&vars["CA_ADMIN_KEY"]).unwrap(),
    };
    let path = format!("/v1/admin/certs?lineage={}", serial_of(&f.a1.cert));
    let certs: CertsResponse = rt
        .block_on(async { api(&vars, Some(&admin)).get_json(&path).await })
        .unwrap();
    let a3_listed = certs
        .certs
        .iter()
        .find(|c| c.serial == serial_of(&a3.cert))
        .expect("generation 3 listed in the lineage");
    assert_eq!(a3_listed.generation, 3);
    stop(&mut dev);

    // Everything the server did on PostgreSQL extends the copied chain.
    let pg = PgStore::open_with_pool_size(db.url(), 1).unwrap();
    let report = pg.verify_audit_log(None).unwrap();
    assert!(report.last_seq > f.head.0);
    let copied = pg.audit_events(f.head.0, 1).unwrap();
    assert_eq!(copied[0].hash, f.head.1);
}

#[test]
fn a_non_empty_target_is_refused_and_left_unchanged() {
    let f = fixture();
    let server = testkit::pg::PgServer::shared().expect("PostgreSQL");

    // A target holding a copy already.
    let db = server.fresh_database().unwrap();
    let (ok, out) = copy(&f.pristine, db.url(), &["--json"]);
    assert!(ok, "{out}");
    let summary = json_of(&out);
    assert_eq!(summary["counts"]["certs"], f.counts.certs);
    let pg = PgStore::open_with_pool_size(db.url(), 1).unwrap();
    let before = (
        pg.counts().unwrap(),
        pg.current_crl_number().unwrap(),
        pg.audit_head().unwrap(),
    );
    let (ok, out) = copy(&f.pristine, db.url(), &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("[target_not_empty]"), "{out}");
    assert!(out.contains("nothing was changed"), "{out}");
    let after = (
        pg.counts().unwrap(),
        pg.current_crl_number().unwrap(),
        pg.audit_head().unwrap(),
    );
    assert_eq!(before, after);

    // A target holding one token of its own: refused, the token alone is still there.
    let db2 = server.fresh_database().unwrap();
    let pg2 = PgStore::open_with_pool_size(db2.url(), 1).unwrap();
    let now = chrono::Utc::now();
    pg2.insert_token(&TokenRecord {
        id: "t-own".into(),
        hash: "00".repeat(32),
        identity: IdentityBinding::default(),
        profile: "client".into(),
        created_at: now,
        expires_at: now + chrono::Duration::hours(1),
        created_by: "test".into(),
        used_at: None,
    })
    .unwrap();
    let (ok, out) = copy(&f.pristine, db2.url(), &["--json"]);
    assert!(!ok, "{out}");
    let err = json_of(&out);
    assert_eq!(err["code"], "target_not_empty", "{out}");
    assert!(
        err["error"].as_str().unwrap().contains("1 rows in tokens"),
        "{out}"
    );
    assert_eq!(
        pg2.counts().unwrap(),
        StoreCounts {
            tokens: 1,
            ..StoreCounts::default()
        }
    );
}

/// The JSON `--json` printed on stdout (before the error line on stderr, if any).
fn json_of(out: &str) -> serde_json::Value {
    let text: Vec<&str> = out
        .lines()
        .take_while(|l| !l.starts_with("error:"))
        .collect();
    serde_json::from_str(&text.join("\n")).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `psql` from PATH, else the newest `/usr/lib/postgresql/*/bin`.
fn psql() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("psql").is_file() {
                return d.join("psql");
            }
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .map(|e| e.unwrap().path().join("bin/psql"))
        .filter(|p| p.is_file())
        .collect();
    dirs.sort();
    dirs.pop().expect("psql")
}

fn sql(url: &str, statement: &str) {
    let out = Command::new(psql())
        .args([url, "-v", "ON_ERROR_STOP=1", "-c", statement])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_copy_that_fails_part_way_leaves_the_target_empty() {
    let f = fixture();
    let server = testkit::pg::PgServer::shared().expect("PostgreSQL");
    let db = server.fresh_database().unwrap();
    let pg = PgStore::open_with_pool_size(db.url(), 1).unwrap();
    // The database refuses audit events past the fourth: the certificates, revocations,
    // tokens and OCSP responses are written before the copy reaches them.
    sql(
        db.url(),
        "ALTER TABLE audit_events ADD CONSTRAINT only_four CHECK (seq <= 4)",
    );
    assert!(f.counts.audit_events > 4);
    let (ok, out) = copy(&f.pristine, db.url(), &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("[copy_failed]"), "{out}");
    assert!(out.contains("rolled back"), "{out}");
    assert_eq!(pg.counts().unwrap(), StoreCounts::default());
    assert_eq!(pg.current_crl_number().unwrap(), 0);
    assert_eq!(pg.audit_head().unwrap(), None);

    // The target is as it was: once the obstacle is gone, the copy goes through (this time
    // naming the target by a server configuration's [store]).
    sql(
        db.url(),
        "ALTER TABLE audit_events DROP CONSTRAINT only_four",
    );
    let mut cfg = ServerConfig::load(&f.dir.join("config.toml")).unwrap();
    cfg.store = StoreSection {
        kind: StoreKind::Postgres,
        url: Some(UrlSource(UrlFrom::Env(URL_ENV.into()))),
        pool_size: None,
    };
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("ca.toml");
    std::fs::write(&config, cfg.to_toml().unwrap()).unwrap();
    let (ok, out) = run(
        &[
            "store",
            "copy",
            "--from",
            f.pristine.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        &[(URL_ENV, db.url())],
    );
    assert!(ok, "{out}");
    assert_eq!(pg.counts().unwrap(), with_record(&f.counts));
    assert_eq!(pg.current_crl_number().unwrap(), f.crl_number);
}

#[test]
fn a_password_on_the_command_line_is_refused_before_anything_is_touched() {
    for url in [
        "postgresql://ca:s3cret-pw@127.0.0.1:1/ca",
        "host=127.0.0.1 port=1 user=ca password=s3cret-pw dbname=ca",
    ] {
        let (ok, out) = run(
            &["store", "copy", "--from", "/nonexistent", "--to", url],
            &[],
        );
        assert!(!ok, "{out}");
        assert!(out.contains("[url_has_password]"), "{out}");
        assert!(
            out.contains("--to-env") && out.contains("--to-file"),
            "{out}"
        );
        assert!(
            !out.contains("s3cret-pw"),
            "the password is repeated: {out}"
        );
    }
    // Without a password the URL is accepted, and the missing source is what stops it.
    let (ok, out) = run(
        &[
            "store",
            "copy",
            "--from",
            "/nonexistent",
            "--to",
            "postgresql://ca@127.0.0.1:1/ca",
        ],
        &[],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("[source_missing]"), "{out}");
    // And the help says how to pass a URL with a password.
    let (ok, out) = run(&["store", "copy", "--help"], &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("--to-env") && out.contains("--to-file") && out.contains("--audit-key"),
        "{out}"
    );
}

/// An insider who edited the sled log before the move gets no clean chain out of it: the copy
/// keeps every event as sealed and checks the chain first, so an edited event, or checkpoints
/// checked against another key, stop it before anything is written.
#[test]
fn a_tampered_source_is_not_copied() {
    let f = fixture();
    let server = testkit::pg::PgServer::shared().expect("PostgreSQL");
    let tmp = tempfile::tempdir().unwrap();
    let edited = tmp.path().join("store");
    assert!(Command::new("cp")
        .args(["-a", f.pristine.to_str().unwrap(), edited.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    {
        let s = open_sled(&edited);
        s.tamper_audit_for_test(2, |ev| ev["actor"] = "someone else".into())
            .unwrap();
    }
    let db = server.fresh_database().unwrap();
    let (ok, out) = copy(&edited, db.url(), &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("[source_audit_invalid]"), "{out}");
    let pg = PgStore::open_with_pool_size(db.url(), 1).unwrap();
    assert_eq!(pg.counts().unwrap(), StoreCounts::default());

    // The untouched store, but checkpoints checked against a key that did not sign them.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let other_pem = tmp.path().join("other.pub.pem");
    std::fs::write(&other_pem, other.public_key_pem()).unwrap();
    let (ok, out) = copy(
        &f.pristine,
        db.url(),
        &["--audit-key", other_pem.to_str().unwrap()],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("[source_audit_invalid]"), "{out}");
    assert_eq!(pg.counts().unwrap(), StoreCounts::default());
}
