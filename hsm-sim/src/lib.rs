//! Throwaway SoftHSM2 tokens for tests, development and ceremony rehearsal.
//!
//! Two ways in:
//!
//! - [`provision`] (behind `hsm-sim init --dir DIR`) writes `DIR/softhsm2.conf`, a token
//!   directory and a PIN file, and initialises a token through PKCS#11.
//! - [`TestToken::new`] is the one-line test fixture: a fresh token with a unique label, removed
//!   when dropped. Test-only tooling built on it (the test PKI, fault injection, the pkilint
//!   runner) lives in the unpublished `testkit` crate.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once, when the module is initialised, and a PKCS#11 module is
//! initialised once per process. So all fixtures of one test process share one configuration
//! (a temporary token directory made on first use) and differ by token label.
//!
//! ```no_run
//! let token = hsm_sim::TestToken::new()?;
//! let hsm = token.hsm_config();
//! let signer = hsm.open()?.signer("missing-key");
//! assert!(signer.is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use ca_core::signer::pkcs11::{
    find_softhsm_module, open_module, slot_list_lock, HsmConfig, PinSource, MODULE_ENV,
};
use cryptoki::context::Pkcs11;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use zeroize_free::Secret;

mod zeroize_free {
    /// A string that does not print itself.
    #[derive(Clone)]
    pub(crate) struct Secret(pub(crate) String);
    impl std::fmt::Debug for Secret {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("<redacted>")
        }
    }
}

/// What can go wrong while provisioning a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// SoftHSM2 is not installed.
    #[error(
        "SoftHSM2 module (libsofthsm2.so) not found; install it (Debian/Ubuntu: apt-get install softhsm2; \
         Fedora/RHEL: dnf install softhsm; macOS: brew install softhsm) or set {MODULE_ENV} to its path"
    )]
    ModuleMissing,
    /// The directory already holds a SoftHSM configuration.
    #[error("{0} already exists; refusing to re-initialise (remove the directory to start over)")]
    AlreadyProvisioned(PathBuf),
    /// No uninitialised slot was offered by SoftHSM.
    #[error("SoftHSM offers no free slot to initialise a token in")]
    NoFreeSlot,
    /// A token with this label exists already.
    #[error("a token labelled {0:?} already exists")]
    LabelTaken(String),
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// PKCS#11 error.
    #[error("PKCS#11 {op} failed: {source}")]
    Pkcs11 {
        /// The PKCS#11 call that failed (e.g. `C_InitToken`, `SO login`).
        op: &'static str,
        /// Underlying error.
        #[source]
        source: cryptoki::error::Error,
    },
    /// ca-core error (module loading).
    #[error(transparent)]
    Core(#[from] ca_core::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn ck(op: &'static str) -> impl FnOnce(cryptoki::error::Error) -> Error {
    move |source| Error::Pkcs11 { op, source }
}

/// Locate libsofthsm2.so (`$PKCS11_MODULE` first), or explain what to install.
pub fn module_path() -> Result<PathBuf, Error> {
    find_softhsm_module()
        .filter(|p| p.exists())
        .ok_or(Error::ModuleMissing)
}

/// Write a SoftHSM2 configuration whose token directory is `tokens`.
fn write_conf(conf: &Path, tokens: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(tokens).map_err(io(tokens))?;
    let text = format!(
        "# written by hsm-sim\ndirectories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
        tokens.display()
    );
    std::fs::write(conf, text).map_err(io(conf))
}

/// Initialise a new token labelled `label` in the first free slot of `ctx`.
fn init_token(ctx: &Pkcs11, label: &str, pin: &str, so_pin: &str) -> Result<(), Error> {
    // No other thread of this process lists slots meanwhile (SoftHSM would abort: see
    // `slot_list_lock`).
    let _one = slot_list_lock();
    let slots = ctx.get_all_slots().map_err(ck("list slots"))?;
    let mut free = None;
    for slot in slots {
        // A slot may be mid-change (another thread initialising it): skip what cannot be read.
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        if info.token_initialized() {
            if info.label().trim_end() == label {
                return Err(Error::LabelTaken(label.to_string()));
            }
        } else if free.is_none() {
            free = Some(slot);
        }
    }
    let slot = free.ok_or(Error::NoFreeSlot)?;
    ctx.init_token(slot, &AuthPin::from(so_pin), label)
        .map_err(ck("C_InitToken"))?;
    // SoftHSM moves an initialised token to a new slot id: find it again by label.
    let slot = ctx
        .get_all_slots()
        .map_err(ck("list slots"))?
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .map(|i| i.token_initialized() && i.label().trim_end() == label)
                .unwrap_or(false)
        })
        .ok_or(Error::NoFreeSlot)?;
    let session = ctx.open_rw_session(slot).map_err(ck("open session"))?;
    session
        .login(UserType::So, Some(&AuthPin::from(so_pin)))
        .map_err(ck("SO login"))?;
    session
        .init_pin(&AuthPin::from(pin))
        .map_err(ck("C_InitPIN"))?;
    session.logout().map_err(ck("logout"))?;
    Ok(())
}

/// A random PIN of 16 alphanumeric characters.
pub fn random_pin() -> String {
    use rand::distributions::{Alphanumeric, DistString};
    Alphanumeric.sample_string(&mut rand::rngs::OsRng, 16)
}

/// What [`provision`] made.
#[derive(Debug)]
pub struct Provisioned {
    /// `DIR/softhsm2.conf`
    pub conf: PathBuf,
    /// The PKCS#11 module.
    pub module: PathBuf,
    /// Token label.
    pub label: String,
    /// File holding the user PIN (mode 0600).
    pub pin_file: PathBuf,
}

impl Provisioned {
    /// `export NAME=VALUE` lines a shell can `eval`. The PIN itself is not printed: it is in
    /// the PIN file.
    pub fn exports(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "export SOFTHSM2_CONF={}",
            shell_quote(&self.conf.display().to_string())
        );
        let _ = writeln!(
            s,
            "export {MODULE_ENV}={}",
            shell_quote(&self.module.display().to_string())
        );
        let _ = writeln!(s, "export HSM_TOKEN_LABEL={}", shell_quote(&self.label));
        let _ = writeln!(
            s,
            "export HSM_PIN_FILE={}",
            shell_quote(&self.pin_file.display().to_string())
        );
        s
    }
}

/// Quote a value for POSIX sh.
pub fn shell_quote(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=+,@".contains(c))
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', "'\\''"))
    }
}

/// Create `dir/softhsm2.conf`, `dir/tokens/`, `dir/user.pin` and a token labelled `label`.
///
/// SoftHSM reads `SOFTHSM2_CONF` when the module is initialised, so call it before anything
/// else in the process loads SoftHSM. When `SOFTHSM2_CONF` is already `dir/softhsm2.conf` (a
/// process started with it, as `ca-server dev` restarts itself), the environment is left
/// alone; otherwise it is set for this process, which is sound only in a single-threaded
/// program (a command's `main`, a test fixture before it starts threads): a running
/// multithreaded server must never call it that way. Refuses a directory that already holds a
/// configuration.
pub fn provision(
    dir: &Path,
    label: &str,
    pin: Option<&str>,
    so_pin: Option<&str>,
) -> Result<Provisioned, Error> {
    let module = module_path()?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let dir = dir.canonicalize().map_err(io(dir))?;
    let conf = dir.join("softhsm2.conf");
    if conf.exists() {
        return Err(Error::AlreadyProvisioned(conf));
    }
    write_conf(&conf, &dir.join("tokens"))?;
    if std::env::var_os("SOFTHSM2_CONF").as_deref() != Some(conf.as_os_str()) {
        std::env::set_var("SOFTHSM2_CONF", &conf);
    }
    let pin = Secret(pin.map(str::to_string).unwrap_or_else(random_pin));
    let so_pin = Secret(so_pin.map(str::to_string).unwrap_or_else(random_pin));
    let ctx = open_module(&module)?;
    init_token(&ctx, label, &pin.0, &so_pin.0)?;
    let pin_file = dir.join("user.pin");
    write_secret(&pin_file, &pin.0)?;
    write_secret(&dir.join("so.pin"), &so_pin.0)?;
    Ok(Provisioned {
        conf,
        module,
        label: label.to_string(),
        pin_file,
    })
}

/// Add a second (third, ...) token labelled `label` to a directory made by [`provision`].
///
/// The token lives in the same SoftHSM configuration (`dir/softhsm2.conf`), which must be the
/// one this process loaded: SoftHSM reads `SOFTHSM2_CONF` once per process, so a token added
/// under another configuration would land in the wrong place. The user PIN is written to
/// `dir/{label}.pin` and the security officer PIN to `dir/{label}.so.pin` (both mode 0600);
/// random PINs are used when none are given.
pub fn add_token(
    dir: &Path,
    label: &str,
    pin: Option<&str>,
    so_pin: Option<&str>,
) -> Result<Provisioned, Error> {
    let module = module_path()?;
    let dir = dir.canonicalize().map_err(io(dir))?;
    let conf = dir.join("softhsm2.conf");
    let loaded = std::env::var_os("SOFTHSM2_CONF").map(PathBuf::from);
    if !conf.exists() || loaded.as_deref() != Some(conf.as_path()) {
        return Err(Error::Io {
            path: conf,
            source: std::io::Error::other(
                "not the SoftHSM configuration this process loaded; call provision() on this directory first, in this process",
            ),
        });
    }
    let pin_file = dir.join(format!("{label}.pin"));
    let so_pin_file = dir.join(format!("{label}.so.pin"));
    for f in [&pin_file, &so_pin_file] {
        if f.exists() {
            return Err(Error::AlreadyProvisioned(f.clone()));
        }
    }
    let pin = Secret(pin.map(str::to_string).unwrap_or_else(random_pin));
    let so_pin = Secret(so_pin.map(str::to_string).unwrap_or_else(random_pin));
    let ctx = open_module(&module)?;
    {
        // One token initialisation at a time: parallel callers would race for the free slot.
        static ADD: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = ADD.lock().unwrap_or_else(|p| p.into_inner());
        init_token(&ctx, label, &pin.0, &so_pin.0)?;
    }
    write_secret(&pin_file, &pin.0)?;
    write_secret(&so_pin_file, &so_pin.0)?;
    Ok(Provisioned {
        conf,
        module,
        label: label.to_string(),
        pin_file,
    })
}

/// Write a file readable by the owner only.
pub fn write_secret(path: &Path, value: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(value.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

struct ProcessHsm {
    base: PathBuf,
    conf: PathBuf,
    tokens: PathBuf,
    module: PathBuf,
}

fn process_hsm() -> Result<&'static ProcessHsm, Error> {
    static HSM: OnceLock<Result<ProcessHsm, String>> = OnceLock::new();
    let r = HSM.get_or_init(|| {
        let setup = || -> Result<ProcessHsm, Error> {
            let module = module_path()?;
            let base = tempfile::Builder::new()
                .prefix("hsm-sim-")
                .tempdir()
                .map_err(io(Path::new("/tmp")))?
                .keep();
            let conf = base.join("softhsm2.conf");
            let tokens = base.join("tokens");
            write_conf(&conf, &tokens)?;
            std::env::set_var("SOFTHSM2_CONF", &conf);
            open_module(&module)?;
            Ok(ProcessHsm {
                base,
                conf,
                tokens,
                module,
            })
        };
        setup().map_err(|e| e.to_string())
    });
    r.as_ref().map_err(|e| Error::Io {
        path: PathBuf::from("hsm-sim"),
        source: std::io::Error::other(e.clone()),
    })
}

/// A fresh SoftHSM2 token for one test, removed from disk when dropped.
#[derive(Debug)]
pub struct TestToken {
    /// Token label (unique within the process).
    pub label: String,
    pin: Secret,
    so_pin: Secret,
    /// SoftHSM configuration file shared by this process's tokens.
    pub conf: PathBuf,
    /// The PKCS#11 module.
    pub module: PathBuf,
    token_dir: Option<PathBuf>,
}

impl TestToken {
    /// Initialise a new token with a random label and PINs.
    pub fn new() -> Result<Self, Error> {
        let label = format!("test-{}", &random_pin()[..10]);
        Self::with_label(&label)
    }

    /// Initialise a new token with this label.
    pub fn with_label(label: &str) -> Result<Self, Error> {
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let hsm = process_hsm()?;
        // One token initialisation at a time: parallel tests would race for the free slot.
        let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
        let ctx = open_module(&hsm.module)?;
        let before = list_dir(&hsm.tokens);
        let pin = Secret(random_pin());
        let so_pin = Secret(random_pin());
        init_token(&ctx, label, &pin.0, &so_pin.0)?;
        let token_dir = list_dir(&hsm.tokens)
            .into_iter()
            .find(|p| !before.contains(p));
        Ok(TestToken {
            label: label.to_string(),
            pin,
            so_pin,
            conf: hsm.conf.clone(),
            module: hsm.module.clone(),
            token_dir,
        })
    }

    /// The user PIN (tests only).
    pub fn pin(&self) -> &str {
        &self.pin.0
    }

    /// The security officer PIN (tests only).
    pub fn so_pin(&self) -> &str {
        &self.so_pin.0
    }

    /// An [`HsmConfig`] for this token with the PIN held in memory.
    pub fn hsm_config(&self) -> HsmConfig {
        let mut c = HsmConfig::new(&self.label, PinSource::Value(self.pin.0.clone().into()));
        c.module = Some(self.module.clone());
        c
    }

    /// Write the user PIN to `path` (mode 0600), for processes that read it from a file.
    pub fn write_pin_file(&self, path: &Path) -> Result<(), Error> {
        write_secret(path, &self.pin.0)
    }

    /// Environment for a child process that should see this token.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("SOFTHSM2_CONF".into(), self.conf.display().to_string()),
            (MODULE_ENV.into(), self.module.display().to_string()),
        ]
    }
}

impl Drop for TestToken {
    fn drop(&mut self) {
        if let Some(dir) = &self.token_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn list_dir(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// Base directory of this process's shared SoftHSM configuration (for diagnostics).
pub fn process_dir() -> Option<PathBuf> {
    process_hsm().ok().map(|h| h.base.clone())
}
