//! Test harness: a real `ca-server dev` on a temp directory with ephemeral ports, the real
//! `ca-agent` binary, real nginx/openssl/curl. Every child process runs under `timeout(1)` and
//! is killed when its guard drops, so nothing outlives a test.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Hard ceiling for any child process (seconds): a leaked process stops by itself.
pub const CHILD_LIMIT_SECS: u64 = 900;

pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ca-agent"))
}

/// The `ca-server` binary: `CA_SERVER_BIN`, else the one built next to `ca-agent` (a workspace
/// test build builds it), else `cargo build -p ca-server` into the same target directory.
pub fn server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("CA_SERVER_BIN") {
            return PathBuf::from(p);
        }
        let dir = agent_bin().parent().unwrap().to_path_buf();
        let bin = dir.join("ca-server");
        if !bin.exists() {
            let target = dir.parent().unwrap();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = Command::new(cargo)
                .args(["build", "-p", "ca-server"])
                .env("CARGO_TARGET_DIR", target)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("cargo build -p ca-server");
            assert!(st.success(), "cargo build -p ca-server failed");
        }
        assert!(bin.exists(), "no ca-server binary at {}", bin.display());
        bin
    })
    .clone()
}

/// A child process killed (TERM, then KILL) when dropped.
pub struct Proc {
    pub child: Option<Child>,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    /// Start `cmd args` under `timeout`, output to `log`.
    pub fn spawn(
        name: &str,
        cmd: &Path,
        args: &[&str],
        envs: &[(&str, String)],
        log: &Path,
    ) -> Proc {
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let mut c = Command::new("timeout");
        c.arg("-s")
            .arg("KILL")
            .arg(CHILD_LIMIT_SECS.to_string())
            .arg(cmd)
            .args(args);
        for (k, v) in envs {
            c.env(k, v);
        }
        let child = c
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            child: Some(child),
            name: name.into(),
            log: log.to_path_buf(),
        }
    }

    /// pid of the real process (child of `timeout`), if it is still running.
    pub fn try_pid(&self) -> Option<i32> {
        let tpid = self.child.as_ref()?.id();
        // `timeout` runs the command as its only child.
        for _ in 0..50 {
            let s = std::fs::read_to_string(format!("/proc/{tpid}/task/{tpid}/children")).ok()?;
            if let Some(p) = s.split_whitespace().next() {
                return p.parse().ok();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// pid of the real process (child of `timeout`).
    pub fn pid(&self) -> i32 {
        self.try_pid()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .status();
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        let _ = Command::new("kill")
            .args(["-s", "TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Wait for `f` to return `Some`, polling, up to `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn run(cmd: &Path, args: &[&str], envs: &[(&str, String)]) -> Output {
    let mut c = Command::new("timeout");
    c.arg("-s").arg("KILL").arg("300").arg(cmd).args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.stdin(Stdio::null()).output().unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Profiles added to the dev CA for the tests: `short` (3 minutes, client+server auth).
pub const SHORT_PROFILE: &str = r#"
[profiles.short]
validity = "3m"
backdate = "0s"
extended_key_usage = ["client_auth", "server_auth"]

[profiles.short.names]
dns = ["*"]
ip = ["0.0.0.0/0"]
common_name = true
max_sans = 10
"#;

/// A running `ca-server dev`.
pub struct Ca {
    pub data: PathBuf,
    pub proc: Option<Proc>,
    pub env: HashMap<String, String>,
    pub api_port: u16,
    pub status_port: u16,
    starts: u32,
}

fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.to_string(),
                v.trim_matches('\'').trim_matches('"').to_string(),
            )
        })
        .collect()
}

impl Ca {
    /// Provision a dev CA in `data` (fresh), add the test profiles, and serve on fixed ephemeral
    /// ports (so the CA can be stopped and started again at the same URL).
    pub fn start(data: &Path) -> Ca {
        std::fs::create_dir_all(data).unwrap();
        let mut ca = Ca {
            data: data.to_path_buf(),
            proc: None,
            env: HashMap::new(),
            api_port: 0,
            status_port: 0,
            starts: 0,
        };
        // First run provisions (ceremony on SoftHSM), then stop and add the short profile.
        ca.launch();
        ca.stop();
        let cfg = data.join("config.toml");
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        text.push_str(SHORT_PROFILE);
        std::fs::write(&cfg, text).unwrap();
        ca.launch();
        ca
    }

    fn launch(&mut self) {
        let env_file = self.data.join("dev.env");
        let _ = std::fs::remove_file(&env_file);
        self.starts += 1;
        let listen = format!("127.0.0.1:{}", self.api_port);
        let status = format!("127.0.0.1:{}", self.status_port);
        let log = self
            .data
            .with_file_name(format!("ca-server-{}.log", self.starts));
        let data = self.data.display().to_string();
        let p = Proc::spawn(
            "ca-server",
            &server_bin(),
            &[
                "dev",
                "--data",
                &data,
                "--listen",
                &listen,
                "--status-listen",
                &status,
            ],
            &[("RUST_LOG", "info".into())],
            &log,
        );
        self.proc = Some(p);
        let env = wait_for("ca-server dev.env", Duration::from_secs(180), || {
            if let Some(p) = self.proc.as_mut() {
                if !p.is_running() {
                    panic!("ca-server exited:\n{}", p.log_text());
                }
            }
            std::fs::read_to_string(&env_file)
                .ok()
                .filter(|t| t.contains("CA_FINGERPRINT"))
        });
        self.env = parse_env(&env);
        let port = |k: &str| -> u16 {
            self.env[k]
                .rsplit(':')
                .next()
                .unwrap()
                .trim_end_matches('/')
                .parse()
                .unwrap()
        };
        self.api_port = port("CA_URL");
        self.status_port = port("CA_STATUS_URL");
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// Start again at the same addresses.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn url(&self) -> String {
        self.env["CA_URL"].clone()
    }
    pub fn status_url(&self) -> String {
        self.env["CA_STATUS_URL"].clone()
    }
    pub fn fingerprint(&self) -> String {
        self.env["CA_FINGERPRINT"].clone()
    }
    pub fn root(&self) -> PathBuf {
        PathBuf::from(&self.env["CA_ROOT"])
    }

    fn admin_env(&self) -> Vec<(&'static str, String)> {
        [
            "CA_URL",
            "CA_ROOT",
            "CA_ADMIN_CERT",
            "CA_ADMIN_KEY",
            "CA_FINGERPRINT",
            "SOFTHSM2_CONF",
        ]
        .into_iter()
        .filter_map(|k| self.env.get(k).map(|v| (k, v.clone())))
        .collect()
    }

    /// `ca-server token create` for `cn` (plus a DNS SAN and ip:127.0.0.2) under `profile`.
    /// (127.0.0.1 and localhost are the dev CA's own names: reserved, never issued to a
    /// subscriber.)
    pub fn token(&self, cn: &str, profile: &str) -> String {
        let san = format!("dns:{cn}");
        let out = run(
            &server_bin(),
            &[
                "token",
                "create",
                "--cn",
                cn,
                "--san",
                &san,
                "--san",
                "ip:127.0.0.2",
                "--profile",
                profile,
            ],
            &self.admin_env(),
        );
        assert!(out.status.success(), "token create: {}", text(&out));
        let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(!t.is_empty(), "empty token: {}", text(&out));
        t
    }

    /// `ca-server revoke SERIAL`.
    pub fn revoke(&self, serial: &str) {
        let out = run(
            &server_bin(),
            &["revoke", serial, "--reason", "keyCompromise"],
            &self.admin_env(),
        );
        assert!(out.status.success(), "revoke: {}", text(&out));
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Write an agent config for one certificate; `extra` goes into the `[[certificate]]` table.
pub fn agent_config(dir: &Path, ca: &Ca, top: &str, extra: &str) -> PathBuf {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let text = format!(
        "server = \"{url}\"\nroot_fingerprint = \"{fp}\"\nstate_dir = \"{state}\"\n{top}\n\
         [[certificate]]\nname = \"svc\"\ncert = \"{tls}/svc.crt\"\nkey = \"{tls}/svc.key\"\n\
         chain = \"{tls}/chain.pem\"\nfullchain = \"{tls}/fullchain.pem\"\n{extra}\n",
        url = ca.url(),
        fp = ca.fingerprint(),
        state = dir.join("state").display(),
        tls = tls.display(),
    );
    let p = dir.join("agent.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// `ca-agent enroll --config CFG --token-file` with a fresh token for `cn`.
pub fn enroll(cfg: &Path, ca: &Ca, cn: &str, profile: &str) -> Output {
    let dir = cfg.parent().unwrap();
    let tok = dir.join("enroll.token");
    std::fs::write(&tok, ca.token(cn, profile)).unwrap();
    let out = run(
        &agent_bin(),
        &[
            "enroll",
            "--config",
            cfg.to_str().unwrap(),
            "--token-file",
            tok.to_str().unwrap(),
        ],
        &[],
    );
    let _ = std::fs::remove_file(&tok);
    out
}

/// Serial (lowercase hex, no leading zeros) of a PEM certificate file, read with openssl.
pub fn openssl_serial(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl x509: {}", text(&out));
    normalize(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_start_matches("serial="),
    )
}

pub fn normalize(hex: &str) -> String {
    let s = hex.trim().to_ascii_lowercase();
    let mut t = s.as_str();
    while t.len() > 2 && t.starts_with("00") {
        t = &t[2..];
    }
    t.to_string()
}

/// Public key of a certificate and of a private key, with openssl: equal when they match.
pub fn openssl_pair_matches(cert: &Path, key: &Path) -> bool {
    let a = Command::new("openssl")
        .args(["x509", "-noout", "-pubkey", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    let b = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(key)
        .output()
        .unwrap();
    a.status.success() && b.status.success() && a.stdout == b.stdout
}

/// `openssl s_client` against 127.0.0.2:port (where the tests' services listen: 127.0.0.1 is
/// the CA's): the serial of the served certificate.
pub fn s_client_serial(port: u16, root: &Path) -> Option<String> {
    let mut c = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.2:{port}"))
        .arg("-CAfile")
        .arg(root)
        .arg("-verify_return_error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    drop(c.stdin.take());
    let out = c.wait_with_output().ok()?;
    let pem = String::from_utf8_lossy(&out.stdout).to_string();
    let start = pem.find("-----BEGIN CERTIFICATE-----")?;
    let end = pem.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    let tmp = tempfile::NamedTempFile::new().ok()?;
    std::fs::write(tmp.path(), &pem[start..end]).ok()?;
    Some(openssl_serial(tmp.path()))
}

/// `ca-agent status --json --config CFG`.
pub fn status_json(cfg: &Path) -> serde_json::Value {
    let out = run(
        &agent_bin(),
        &["status", "--json", "--config", cfg.to_str().unwrap()],
        &[],
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status json: {e}: {}", text(&out)))
}

/// The state file of certificate `svc`.
pub fn state(dir: &Path) -> serde_json::Value {
    std::fs::read(dir.join("state").join("svc.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}
