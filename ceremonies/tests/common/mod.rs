//! Shared fixture for the ceremony integration tests: a ceremony directory with the example
//! configurations, pointed at fresh SoftHSM tokens (real SoftHSM through hsm-sim), and openssl
//! helpers.
//!
//! SoftHSM reads its configuration once per process, so every test of one binary shares one
//! provisioned directory and gets its own tokens in it (distinct labels).
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the fixture"
)]

use ca_core::clock::SystemClock;
use ceremonies::run::{run, Outcome, Rehearsal, RunOptions};
use ceremonies::Error;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");

struct ProcessHsm {
    _dir: tempfile::TempDir,
    hsm_dir: PathBuf,
}

fn process_hsm() -> &'static ProcessHsm {
    static HSM: OnceLock<ProcessHsm> = OnceLock::new();
    HSM.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let hsm_dir = dir.path().join("hsm");
        hsm_sim::provision(&hsm_dir, "fixture-base", None, None).unwrap();
        ProcessHsm {
            _dir: dir,
            hsm_dir: hsm_dir.canonicalize().unwrap(),
        }
    })
}

/// The SoftHSM configuration of this test process.
pub fn softhsm_conf() -> PathBuf {
    process_hsm().hsm_dir.join("softhsm2.conf")
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", hex::encode(rand::random::<[u8; 4]>()))
}

/// A ceremony directory with its own root and online tokens.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub root_label: String,
    pub online_label: String,
    pub root_so_pin_file: PathBuf,
    pub online_pin_file: PathBuf,
}

impl Workspace {
    /// Copy every example configuration, rewritten for this workspace's tokens.
    pub fn new() -> Workspace {
        let hsm = process_hsm();
        let root_label = unique("root");
        let online_label = unique("online");
        hsm_sim::add_token(&hsm.hsm_dir, &root_label, None, None).unwrap();
        let online = hsm_sim::add_token(&hsm.hsm_dir, &online_label, None, None).unwrap();
        let ws = Workspace {
            dir: tempfile::tempdir().unwrap(),
            root_so_pin_file: hsm.hsm_dir.join(format!("{root_label}.so.pin")),
            online_pin_file: online.pin_file,
            root_label,
            online_label,
        };
        for entry in std::fs::read_dir(EXAMPLES).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            let mut table: toml::Table = toml::from_str(&text).unwrap();
            if let Some(toml::Value::Table(t)) = table.get_mut("root_token") {
                t.insert("label".into(), ws.root_label.clone().into());
                if t.contains_key("so_pin") {
                    t.insert("so_pin".into(), pin_file(&ws.root_so_pin_file));
                }
            }
            if let Some(toml::Value::Table(t)) = table.get_mut("online_token") {
                t.insert("label".into(), ws.online_label.clone().into());
                t.insert("pin".into(), pin_file(&ws.online_pin_file));
            }
            std::fs::write(ws.path(&name), toml::to_string(&table).unwrap()).unwrap();
        }
        ws
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Change a configuration in place.
    pub fn edit(&self, name: &str, f: impl FnOnce(&mut toml::Table)) {
        let mut table: toml::Table =
            toml::from_str(&std::fs::read_to_string(self.path(name)).unwrap()).unwrap();
        f(&mut table);
        std::fs::write(self.path(name), toml::to_string(&table).unwrap()).unwrap();
    }

    /// Copy a configuration under a new name, changed.
    pub fn derive(&self, from: &str, to: &str, f: impl FnOnce(&mut toml::Table)) {
        std::fs::copy(self.path(from), self.path(to)).unwrap();
        self.edit(to, f);
    }

    /// Run a ceremony as a rehearsal (no prompts).
    pub fn run(&self, name: &str) -> Result<Outcome, Error> {
        self.run_with(name, Vec::new(), false)
    }

    pub fn run_with(
        &self,
        name: &str,
        shares: Vec<PathBuf>,
        dry_run: bool,
    ) -> Result<Outcome, Error> {
        let clock = SystemClock;
        let opts = RunOptions {
            dry_run,
            rehearsal: true,
            shares,
            clock: &clock,
        };
        run(&self.path(name), &opts, &mut Rehearsal(std::io::sink()))
    }

    pub fn done(&self, name: &str) -> ceremonies::run::Done {
        match self.run(name).unwrap_or_else(|e| panic!("{name}: {e}")) {
            Outcome::Done(d) => d,
            Outcome::Planned { .. } => panic!("{name}: dry run"),
        }
    }

    /// Root and key ceremonies, the start of every flow.
    pub fn root_and_key(&self) {
        self.done("root.toml");
        self.done("key.toml");
    }

    /// Every file in the ceremony directory (recursively), for "nothing was written" checks.
    pub fn files(&self) -> Vec<PathBuf> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(p).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out)
                } else {
                    out.push(p)
                }
            }
        }
        let mut v = Vec::new();
        walk(self.dir.path(), &mut v);
        v.sort();
        v
    }

    /// The root token's PIN, reassembled from two shares (for tests that inspect the token).
    pub fn root_pin(&self) -> String {
        let shares: Vec<_> = ["alice", "bob"]
            .iter()
            .map(|o| {
                ceremonies::quorum::read_share(&self.path(&format!("shares/{o}.share"))).unwrap()
            })
            .collect();
        let officers = vec!["Alice Adams".to_string(), "Bob Brown".to_string()];
        let expect = ceremonies::quorum::Expect {
            token_label: &self.root_label,
            ceremony: None,
            officers: &officers,
        };
        ceremonies::quorum::reassemble(&shares, &expect)
            .unwrap()
            .0
            .to_string()
    }

    pub fn root_token(&self, pin: &str) -> ca_core::signer::pkcs11::Token {
        let mut c = ca_core::signer::pkcs11::HsmConfig::new(
            &self.root_label,
            ca_core::signer::pkcs11::PinSource::Value(pin.to_string().into()),
        );
        c.module = Some(hsm_sim::module_path().unwrap());
        c.open().unwrap()
    }
}

pub fn pin_file(p: &Path) -> toml::Value {
    let mut t = toml::Table::new();
    t.insert("file".into(), p.display().to_string().into());
    toml::Value::Table(t)
}

/// Set `value` at a dotted path inside a table (creating tables).
pub fn set(table: &mut toml::Table, path: &str, value: impl Into<toml::Value>) {
    let parts: Vec<&str> = path.split('.').collect();
    let (last, parents) = parts.split_last().unwrap();
    let mut t = table;
    for p in parents {
        t = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap();
    }
    t.insert(last.to_string(), value.into());
}

/// Run openssl; return (success, stdout + stderr).
pub fn openssl(args: &[&str], cwd: &Path) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("openssl CLI");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Run openssl and require success.
pub fn openssl_ok(args: &[&str], cwd: &Path) -> String {
    let (ok, text) = openssl(args, cwd);
    assert!(ok, "openssl {args:?} failed:\n{text}");
    text
}
