//! Throwaway SoftHSM2 tokens for tests, development and ceremony rehearsal.
//!
//! Two ways in:
//!
//! - [`provision`] (behind `hsm-sim init --dir DIR`) writes `DIR/softhsm2.conf`, a token
//!   directory and a PIN file, and initialises a token through PKCS#11.
//! - [`TestToken::new`] is the one-line test fixture: a fresh token with a unique label, removed
//!   when dropped.
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
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use ca_core::signer::pkcs11::{find_softhsm_module, open_module, HsmConfig, PinSource, MODULE_ENV};
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
    pub struct Secret(pub String);
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
        /// Operation.
        op: &'static str,
        /// Underlying error.
        #[source]
        source: cryptoki::error::Error,
    },
    /// ca-core error (module loading).
    #[error(transparent)]
    Core(#[from] ca_core::Error),
    /// A pkilint command is not installed where [`pkilint`] looks for it.
    #[error(
        "pkilint's `{tool}` is not installed (looked in {searched}); install it with \
         `scripts/deps.sh test` (PyPI package pkilint into .venv-lint) or `python3 -m pip install pkilint`"
    )]
    LinterMissing {
        /// The command looked for, e.g. `lint_pkix_cert`.
        tool: &'static str,
        /// Where it was looked for.
        searched: String,
    },
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
/// Sets `SOFTHSM2_CONF` for this process (SoftHSM reads it at initialisation), so call it
/// before anything else in the process loads SoftHSM. Refuses a directory that already holds a
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
    std::env::set_var("SOFTHSM2_CONF", &conf);
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

    /// Fault injection: log the user out of the token. PKCS#11 login state is shared by all
    /// sessions of the process, so every pooled signer session is now "not logged in" and the
    /// next signing call must recover by itself.
    pub fn inject_logout(&self) -> Result<(), Error> {
        let ctx = open_module(&self.module)?;
        let token = self.hsm_config().open()?;
        let slot = token.slot()?;
        let session = ctx.open_rw_session(slot).map_err(ck("open session"))?;
        session.logout().map_err(ck("logout"))
    }

    /// The user PIN while [`TestToken::inject_login_refusal`] is in effect.
    fn refused_pin(&self) -> String {
        format!("{}-rotated", self.pin())
    }

    /// An HSM that refuses the CA: the user PIN is changed behind the CA's back and every
    /// session is logged out, so signers fail (their re-login is refused) until
    /// [`TestToken::end_login_refusal`]. A real token, a real failure: an operator rotating
    /// the PIN, or an HSM that lost its login state and sees a wrong PIN.
    pub fn inject_login_refusal(&self) -> Result<(), Error> {
        self.change_pin(self.pin(), &self.refused_pin())
    }

    /// Undo [`TestToken::inject_login_refusal`]: the PIN the CA knows works again.
    pub fn end_login_refusal(&self) -> Result<(), Error> {
        self.change_pin(&self.refused_pin(), self.pin())
    }

    fn change_pin(&self, old: &str, new: &str) -> Result<(), Error> {
        let ctx = open_module(&self.module)?;
        let slot = self.hsm_config().open()?.slot()?;
        let session = ctx.open_rw_session(slot).map_err(ck("open session"))?;
        match session.login(UserType::User, Some(&AuthPin::from(old.to_string()))) {
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::UserAlreadyLoggedIn,
                _,
            )) => {}
            Err(e) => return Err(ck("login")(e)),
        }
        session
            .set_pin(
                &AuthPin::from(old.to_string()),
                &AuthPin::from(new.to_string()),
            )
            .map_err(ck("set PIN"))?;
        session.logout().map_err(ck("logout"))
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

/// DigiCert's pkilint (PyPI package `pkilint`) as an independent RFC 5280 / RFC 6960 linter of
/// artifacts written to files.
///
/// Each [`Check`](pkilint::Check) runs one pkilint command with `--severity WARNING`: pkilint prints the
/// findings at or above that severity and exits with their number (0 when clean). pyca/
/// cryptography, installed with pkilint, then reads the same artifacts as a second, independent
/// reader ([`pkilint::PYCA`] reports, after pkilint's). The commands
/// are looked up in `$PKILINT_DIR`, then in the workspace's `.venv-lint/bin` (where
/// `scripts/deps.sh test` installs them), then on `PATH`. A missing linter is an error
/// ([`Error::LinterMissing`]), never a silent pass.
///
/// ```no_run
/// use hsm_sim::pkilint::{self, Check};
/// let reports = pkilint::run(&[Check::certificate("leaf", std::path::Path::new("leaf.pem"))])?;
/// if let Some(findings) = pkilint::failures(&reports, &[]) {
///     panic!("{findings}");
/// }
/// # Ok::<(), hsm_sim::Error>(())
/// ```
pub mod pkilint {
    use super::Error;
    use std::ffi::OsString;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Environment variable naming a directory that holds the pkilint commands.
    pub const DIR_ENV: &str = "PKILINT_DIR";

    /// The workspace's linter virtual environment (`scripts/deps.sh test` creates it).
    pub fn venv_bin() -> PathBuf {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        crate_dir
            .parent()
            .unwrap_or(crate_dir)
            .join(".venv-lint")
            .join("bin")
    }

    /// Where `tool` is: `$PKILINT_DIR/tool`, `.venv-lint/bin/tool`, or `tool` on `PATH`.
    pub fn tool_path(tool: &'static str) -> Result<PathBuf, Error> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Some(d) = std::env::var_os(DIR_ENV) {
            dirs.push(PathBuf::from(d));
        }
        dirs.push(venv_bin());
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        dirs.iter()
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::LinterMissing {
                tool,
                searched: format!("${DIR_ENV}, {} and PATH", venv_bin().display()),
            })
    }

    /// One artifact and the pkilint command that checks it.
    #[derive(Clone, Debug)]
    pub struct Check {
        /// Name of the artifact in reports.
        pub artifact: String,
        /// The pkilint command.
        pub tool: &'static str,
        args: Vec<OsString>,
        /// What pyca/cryptography checks of it (see [`PYCA`]): its kind and files.
        pyca: (&'static str, Vec<PathBuf>),
    }

    impl Check {
        /// `tool lint --severity WARNING OPTIONS... FILES...`; pyca/cryptography reads the
        /// same files as `pyca_kind`.
        fn new(
            artifact: impl Into<String>,
            tool: &'static str,
            options: &[&str],
            files: &[&Path],
            pyca_kind: &'static str,
        ) -> Check {
            let mut args: Vec<OsString> =
                vec!["lint".into(), "--severity".into(), "WARNING".into()];
            args.extend(options.iter().map(OsString::from));
            args.extend(files.iter().map(|f| f.as_os_str().to_os_string()));
            Check {
                artifact: artifact.into(),
                tool,
                args,
                pyca: (pyca_kind, files.iter().map(|f| f.to_path_buf()).collect()),
            }
        }

        /// A certificate (PEM or DER) against RFC 5280: `lint_pkix_cert`.
        pub fn certificate(artifact: impl Into<String>, file: &Path) -> Check {
            Check::new(artifact, "lint_pkix_cert", &[], &[file], "cert")
        }

        /// A complete CRL (PEM or DER) against RFC 5280: `lint_crl --type CRL --profile PKIX`.
        pub fn crl(artifact: impl Into<String>, file: &Path) -> Check {
            Check::new(
                artifact,
                "lint_crl",
                &["--type", "CRL", "--profile", "PKIX"],
                &[file],
                "crl",
            )
        }

        /// An OCSP response (DER) against RFC 6960: `lint_ocsp_response`.
        pub fn ocsp_response(artifact: impl Into<String>, file: &Path) -> Check {
            Check::new(artifact, "lint_ocsp_response", &[], &[file], "ocsp")
        }

        /// A certificate with its issuer (names, key identifiers, signature algorithms):
        /// `lint_pkix_signer_signee_cert_chain`.
        pub fn issued_by(artifact: impl Into<String>, issuer: &Path, subject: &Path) -> Check {
            Check::new(
                artifact,
                "lint_pkix_signer_signee_cert_chain",
                &[],
                &[issuer, subject],
                "issued_by",
            )
        }
    }

    /// pkilint findings that are not violations of the RFCs, each with the RFC text.
    pub const FALSE_POSITIVES: &[FalsePositive] = &[
        FalsePositive {
            code: "pkix.invalid_uri_syntax",
            message_contains: "\"spiffe://",
            why: "pkilint checks URIs with python-validators' url(), which accepts only a fixed \
                  list of schemes (http, https, ftp, ...). RFC 5280 4.2.1.6 asks only that the \
                  name \"MUST follow the URI syntax and encoding rules specified in [RFC3986]. \
                  The name MUST include both a scheme (e.g., \"http\" or \"ftp\") and a \
                  scheme-specific-part\", which SPIFFE IDs (spiffe://trust-domain/path) do.",
        },
        FalsePositive {
            code: "pkix.invalid_uri_syntax",
            message_contains: "\"urn:",
            why: "the same python-validators url() refuses every URN. RFC 3986 3 allows a URI \
                  without an authority (scheme \":\" path, as in urn:uuid:..., RFC 4122 3 and \
                  RFC 8141), and RFC 5280 4.2.1.6 asks only for RFC 3986 syntax with a scheme \
                  and a scheme-specific-part; the CA server's mark (urn:uuid:...) and the \
                  administrator role URIs (urn:ca:role:...) are such URNs.",
        },
        FalsePositive {
            code: "pkix.invalid_domain_name_syntax",
            message_contains: "\"localhost\"",
            why: "pkilint checks dNSNames with python-validators' domain(), which requires a \
                  top-level domain. RFC 5280 4.2.1.6 asks for the preferred name syntax of \
                  RFC 1034 3.5 (as modified by RFC 1123 2.1), where \
                  <subdomain> ::= <label> | <subdomain> \".\" <label>: a single label such as \
                  localhost is a valid name.",
        },
    ];

    /// One pkilint finding.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Finding {
        /// The validator that reported it, e.g. `GeneralNameUriSyntaxValidator`.
        pub validator: String,
        /// Where in the document, e.g. `certificate.tbsCertificate.extensions.1.extnValue...`.
        pub node: String,
        /// The finding code, e.g. `pkix.invalid_uri_syntax`.
        pub code: String,
        /// FATAL, ERROR or WARNING (the checks ask for nothing below WARNING).
        pub severity: String,
        /// The message, when pkilint gives one.
        pub message: String,
    }

    impl std::fmt::Display for Finding {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{} ({}) at {}", self.code, self.severity, self.node)?;
            if !self.message.is_empty() {
                write!(f, ": {}", self.message)?;
            }
            Ok(())
        }
    }

    /// A finding known to be a false positive of pkilint, with the reason (the RFC text) in
    /// `why`. It matches a finding with this code whose message contains `message_contains`.
    #[derive(Clone, Copy, Debug)]
    pub struct FalsePositive {
        /// The finding code.
        pub code: &'static str,
        /// A part of the message that pins the finding to one value.
        pub message_contains: &'static str,
        /// Why it is not a violation.
        pub why: &'static str,
    }

    impl FalsePositive {
        fn matches(&self, f: &Finding) -> bool {
            f.code == self.code && f.message.contains(self.message_contains)
        }
    }

    /// The outcome of one [`Check`].
    #[derive(Clone, Debug)]
    pub struct Report {
        /// Name of the artifact.
        pub artifact: String,
        /// The pkilint command.
        pub tool: &'static str,
        /// pkilint's exit status: the number of findings (0: none), or 1 with nothing parsed
        /// when the artifact did not load.
        pub exit_code: Option<i32>,
        /// The findings pkilint printed.
        pub findings: Vec<Finding>,
        /// What pkilint printed (stdout, then stderr).
        pub output: String,
    }

    impl Report {
        /// Whether pkilint found nothing at all.
        pub fn clean(&self) -> bool {
            self.exit_code == Some(0)
        }

        /// The findings that are not listed in `known`, or, when pkilint failed without
        /// printing findings it could be checked against (the artifact did not load, or the
        /// output format changed), one pseudo-finding that says so.
        pub fn unexpected(&self, known: &[FalsePositive]) -> Vec<Finding> {
            if self.clean() {
                return Vec::new();
            }
            // pkilint exits with the number of findings (clamped to 255).
            let count_matches = self.exit_code.is_some_and(|c| {
                usize::try_from(c).is_ok_and(|c| c == self.findings.len() || c == 255)
            });
            if self.findings.is_empty() || !count_matches {
                return vec![Finding {
                    validator: self.tool.to_string(),
                    node: String::new(),
                    code: "pkilint.failed".into(),
                    severity: "FATAL".into(),
                    message: format!(
                        "exit status {:?} with {} parsed findings: {}",
                        self.exit_code,
                        self.findings.len(),
                        self.output.trim()
                    ),
                }];
            }
            self.findings
                .iter()
                .filter(|f| !known.iter().any(|k| k.matches(f)))
                .cloned()
                .collect()
        }
    }

    /// Parse pkilint's TEXT report: `Validator @ node` lines, each followed by indented
    /// `code (SEVERITY)` or `code (SEVERITY): message` lines.
    fn parse_findings(stdout: &str) -> Vec<Finding> {
        let mut findings = Vec::new();
        let (mut validator, mut node) = (String::new(), String::new());
        for line in stdout.lines() {
            if line.trim().is_empty() {
                continue;
            }
            if !line.starts_with(' ') {
                if let Some((v, n)) = line.split_once(" @ ") {
                    validator = v.trim().to_string();
                    node = n.trim().to_string();
                }
                continue;
            }
            let line = line.trim();
            let Some((code, rest)) = line.split_once(" (") else {
                continue;
            };
            let Some((severity, message)) = rest.split_once(')') else {
                continue;
            };
            findings.push(Finding {
                validator: validator.clone(),
                node: node.clone(),
                code: code.to_string(),
                severity: severity.to_string(),
                message: message.trim_start_matches(':').trim().to_string(),
            });
        }
        findings
    }

    fn run_one(check: &Check) -> Result<Report, Error> {
        let tool = tool_path(check.tool)?;
        let out = Command::new(&tool)
            .args(&check.args)
            .output()
            .map_err(|source| Error::Io {
                path: tool.clone(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        Ok(Report {
            artifact: check.artifact.clone(),
            tool: check.tool,
            exit_code: out.status.code(),
            findings: parse_findings(&stdout),
            output: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        })
    }

    /// Run every check, as many at once as there are cores (pkilint is a Python process per
    /// artifact). Fails only if a linter cannot be run; findings are in the reports.
    pub fn run(checks: &[Check]) -> Result<Vec<Report>, Error> {
        for c in checks {
            tool_path(c.tool)?;
        }
        let workers = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(2)
            .max(1);
        let chunk = checks.len().div_ceil(workers).max(1);
        let results: Vec<Result<Vec<Report>, Error>> = std::thread::scope(|s| {
            let handles: Vec<_> = checks
                .chunks(chunk)
                .map(|part| s.spawn(move || part.iter().map(run_one).collect()))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::Io {
                            path: PathBuf::from("pkilint"),
                            source: std::io::Error::other("a linter thread panicked"),
                        })
                    })
                })
                .collect()
        });
        let mut reports = Vec::with_capacity(2 * checks.len());
        for r in results {
            reports.extend(r?);
        }
        reports.extend(run_pyca(checks)?);
        Ok(reports)
    }

    /// The pseudo-tool name of the pyca/cryptography reports.
    pub const PYCA: &str = "pyca/cryptography";

    /// pyca/cryptography (installed with pkilint) as a second, independent reader of the same
    /// artifacts: strict DER parsing of every certificate, CRL and OCSP response, its own
    /// verification of certificate signatures against their issuer, and of CRL and OCSP
    /// signatures where the issuer's certificate lies beside the artifact (`issuing.pem`,
    /// `ca.pem`, `root.pem`) or is embedded (delegated responder). One report per check,
    /// after pkilint's, with one finding when pyca/cryptography refused the artifact.
    fn run_pyca(checks: &[Check]) -> Result<Vec<Report>, Error> {
        use std::io::Write as _;
        let python = tool_path("python3")?;
        let items: Vec<serde_json::Value> = checks
            .iter()
            .map(|c| {
                let files: Vec<String> = c.pyca.1.iter().map(|f| f.display().to_string()).collect();
                serde_json::json!({ "kind": c.pyca.0, "files": files })
            })
            .collect();
        let input = serde_json::Value::Array(items).to_string();
        let io = |source| Error::Io {
            path: python.clone(),
            source,
        };
        let mut child = Command::new(&python)
            .arg("-c")
            .arg(include_str!("pyca_check.py"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(io)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).map_err(io)?;
        }
        let out = child.wait_with_output().map_err(io)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let results: Vec<Option<String>> = serde_json::from_str(&stdout).map_err(|e| {
            io(std::io::Error::other(format!(
                "pyca/cryptography check did not run ({e}): {}{}",
                stdout,
                String::from_utf8_lossy(&out.stderr)
            )))
        })?;
        if results.len() != checks.len() {
            return Err(io(std::io::Error::other(
                "pyca/cryptography check answered for another number of artifacts",
            )));
        }
        Ok(checks
            .iter()
            .zip(results)
            .map(|(c, r)| {
                let findings: Vec<Finding> = r
                    .iter()
                    .map(|msg| Finding {
                        validator: PYCA.to_string(),
                        node: String::new(),
                        code: "pyca.refused".into(),
                        severity: "ERROR".into(),
                        message: msg.clone(),
                    })
                    .collect();
                Report {
                    artifact: c.artifact.clone(),
                    tool: PYCA,
                    exit_code: Some(findings.len() as i32),
                    output: r.unwrap_or_default(),
                    findings,
                }
            })
            .collect())
    }

    /// `None` when no report has a finding outside `known`; otherwise every such finding, by
    /// artifact, for an assertion message.
    pub fn failures(reports: &[Report], known: &[FalsePositive]) -> Option<String> {
        let mut s = String::new();
        let mut bad = 0;
        for r in reports {
            let unexpected = r.unexpected(known);
            if unexpected.is_empty() {
                continue;
            }
            bad += 1;
            s.push_str(&format!("--- {} ({}):\n", r.artifact, r.tool));
            for f in unexpected {
                s.push_str(&format!("    {f}\n"));
            }
        }
        (bad > 0).then(|| {
            format!(
                "{bad} of {} artifacts have pkilint findings of severity WARNING or above:\n{s}",
                reports.len()
            )
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const TEXT: &str = "\
NameDecodingValidator @ certificate.tbsCertificate.subject.rdnSequence.0.0
    itu.invalid_asn1_syntax (FATAL): ASN.1 decoding failure (schema \"X520countryName\")
KeyUsagePresenceValidator @ certificate.tbsCertificate.extensions
    pkix.ca_certificate_no_ku_extension (ERROR)
GeneralNameUriSyntaxValidator @ certificate.tbsCertificate.extensions.1.extnValue.subjectAltName.0.uniformResourceIdentifier
    pkix.invalid_uri_syntax (ERROR): Invalid URI syntax: \"spiffe://test/x\"

";

        fn report(exit_code: i32) -> Report {
            Report {
                artifact: "a".into(),
                tool: "lint_pkix_cert",
                exit_code: Some(exit_code),
                findings: parse_findings(TEXT),
                output: TEXT.into(),
            }
        }

        #[test]
        fn text_report_is_parsed_and_false_positives_are_set_aside() {
            let r = report(3);
            assert_eq!(r.findings.len(), 3);
            assert_eq!(r.findings[0].code, "itu.invalid_asn1_syntax");
            assert_eq!(r.findings[0].severity, "FATAL");
            assert!(r.findings[0]
                .message
                .starts_with("ASN.1 decoding failure (schema"));
            assert_eq!(r.findings[1].severity, "ERROR");
            assert_eq!(r.findings[1].message, "");
            assert_eq!(r.findings[1].node, "certificate.tbsCertificate.extensions");
            let unexpected = r.unexpected(FALSE_POSITIVES);
            let codes: Vec<&str> = unexpected.iter().map(|f| f.code.as_str()).collect();
            assert_eq!(
                codes,
                [
                    "itu.invalid_asn1_syntax",
                    "pkix.ca_certificate_no_ku_extension"
                ]
            );
        }

        #[test]
        fn failures_that_cannot_be_matched_to_findings_are_never_clean() {
            // The exit status says 5 findings but 3 were printed: the format changed.
            let r = report(5);
            assert_eq!(r.unexpected(FALSE_POSITIVES)[0].code, "pkilint.failed");
            // A file that did not load: exit 1, nothing parsed.
            let r = Report {
                findings: Vec::new(),
                output: "Failed to load certificate: bad".into(),
                ..report(1)
            };
            assert_eq!(r.unexpected(FALSE_POSITIVES)[0].code, "pkilint.failed");
            assert!(failures(&[r], FALSE_POSITIVES).is_some());
            let clean = Report {
                exit_code: Some(0),
                findings: Vec::new(),
                ..report(0)
            };
            assert!(failures(&[clean], FALSE_POSITIVES).is_none());
        }
    }
}

/// A throwaway two-level PKI for tests: a root and an issuing CA whose keys live in a fresh
/// SoftHSM token, plus a sled store in a temporary directory and a ready [`ca_core::issuance::Ca`].
pub mod pki {
    use super::TestToken;
    use ca_core::clock::{to_offset, Clock, SystemClock};
    use ca_core::issuance::{pem, Ca, IssuerUrls};
    use ca_core::profile::{ExtKeyUsage, NamePolicy, Profile, Profiles};
    use ca_core::signer::pkcs11::Pkcs11Signer;
    use ca_core::signer::{KeyAlgorithm, Signer};
    use ca_core::store::{SledStore, Store};
    use ca_core::x509::RcgenKey;
    use std::path::PathBuf;
    use std::sync::Arc;

    /// Label of the root key in the test token.
    pub const ROOT_KEY: &str = "root-ca";
    /// Label of the issuing key in the test token.
    pub const ISSUING_KEY: &str = "issuing-ca";

    /// The test PKI.
    pub struct TestPki {
        /// The token (dropped last).
        pub token: TestToken,
        /// Temporary directory holding the store and PEM files.
        pub dir: tempfile::TempDir,
        /// Root certificate (DER).
        pub root_der: Vec<u8>,
        /// Issuing CA certificate (DER).
        pub issuing_der: Vec<u8>,
        /// Root signer (HSM).
        pub root_signer: Arc<Pkcs11Signer>,
        /// Issuing signer (HSM).
        pub issuing_signer: Arc<Pkcs11Signer>,
        /// The store.
        pub store: Arc<SledStore>,
        /// The issuing CA.
        pub ca: Ca,
    }

    /// Profiles for tests: `client` (clientAuth), `server` (serverAuth), `mtls` (both); all
    /// allow DNS names under `.test` and `localhost`, `spiffe://test/` URIs, emails at
    /// `example.test`, 127.0.0.0/8 and ::1.
    pub fn test_profiles() -> Profiles {
        let names = NamePolicy {
            dns: vec![".test".into(), "localhost".into()],
            uri: vec!["spiffe://test/".into()],
            email: vec!["@example.test".into()],
            ip: vec!["127.0.0.0/8".into(), "::1/128".into()],
            common_name: true,
            max_sans: 10,
            common_name_patterns: Vec::new(),
        };
        let client = Profile::client(names.clone());
        let mut server = Profile::client(names.clone());
        server.extended_key_usage = vec![ExtKeyUsage::ServerAuth];
        let mut mtls = Profile::client(names);
        mtls.extended_key_usage = vec![ExtKeyUsage::ClientAuth, ExtKeyUsage::ServerAuth];
        Profiles(
            [
                ("client".to_string(), client),
                ("server".to_string(), server),
                ("mtls".to_string(), mtls),
            ]
            .into_iter()
            .collect(),
        )
    }

    impl TestPki {
        /// Root and issuing keys of `alg`, default profiles, URLs under `http://127.0.0.1:8080`.
        pub fn new(alg: KeyAlgorithm) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
            Self::with(
                alg,
                test_profiles(),
                IssuerUrls::default(),
                Arc::new(SystemClock),
            )
        }

        /// Full control over profiles, URLs and clock.
        pub fn with(
            alg: KeyAlgorithm,
            profiles: Profiles,
            urls: IssuerUrls,
            clock: Arc<dyn Clock>,
        ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
            let token = TestToken::new()?;
            let hsm = token.hsm_config().open()?;
            hsm.generate_key(ROOT_KEY, alg)?;
            hsm.generate_key(ISSUING_KEY, alg)?;
            let root_signer = Arc::new(hsm.signer(ROOT_KEY)?);
            let issuing_signer = Arc::new(hsm.signer(ISSUING_KEY)?);
            let now = clock.now();

            let mut root_params = rcgen::CertificateParams::default();
            root_params.distinguished_name = rcgen::DistinguishedName::new();
            root_params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "hsm-sim Test Root CA");
            root_params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, "hsm-sim");
            root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            root_params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            root_params.not_before = to_offset(now - chrono::Duration::hours(1));
            root_params.not_after = to_offset(now + chrono::Duration::days(3650));
            root_params.serial_number = Some(rcgen::SerialNumber::from_slice(
                &ca_core::issuance::random_serial(),
            ));
            root_params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(
                ca_core::issuance::key_identifier(root_signer.spki_der())?,
            );
            let root_key = RcgenKey::new(root_signer.as_ref() as &dyn Signer);
            let root_cert = root_params.self_signed(&root_key)?;
            let root_der = root_cert.der().to_vec();

            let mut int_params = rcgen::CertificateParams::default();
            int_params.distinguished_name = rcgen::DistinguishedName::new();
            int_params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "hsm-sim Test Issuing CA");
            int_params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, "hsm-sim");
            int_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
            int_params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
                rcgen::KeyUsagePurpose::DigitalSignature,
            ];
            int_params.not_before = to_offset(now - chrono::Duration::hours(1));
            int_params.not_after = to_offset(now + chrono::Duration::days(365));
            int_params.use_authority_key_identifier_extension = true;
            int_params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(
                ca_core::issuance::key_identifier(issuing_signer.spki_der())?,
            );
            int_params.serial_number = Some(rcgen::SerialNumber::from_slice(
                &ca_core::issuance::random_serial(),
            ));
            let root_issuer =
                rcgen::Issuer::from_ca_cert_der(&root_der.as_slice().into(), &root_key)?;
            let int_key = RcgenKey::new(issuing_signer.as_ref() as &dyn Signer);
            let int_cert = int_params.signed_by(&int_key, &root_issuer)?;
            let issuing_der = int_cert.der().to_vec();

            let dir = tempfile::tempdir()?;
            std::fs::write(dir.path().join("root.pem"), pem("CERTIFICATE", &root_der))?;
            std::fs::write(
                dir.path().join("issuing.pem"),
                pem("CERTIFICATE", &issuing_der),
            )?;
            std::fs::write(
                dir.path().join("chain.pem"),
                format!(
                    "{}{}",
                    pem("CERTIFICATE", &issuing_der),
                    pem("CERTIFICATE", &root_der)
                ),
            )?;
            let store = Arc::new(SledStore::open(&dir.path().join("store"))?);
            let ca = Ca::new(
                issuing_signer.clone(),
                issuing_der.clone(),
                vec![root_der.clone()],
                profiles,
                urls,
                store.clone() as Arc<dyn Store>,
                clock,
            )?;
            Ok(TestPki {
                token,
                dir,
                root_der,
                issuing_der,
                root_signer,
                issuing_signer,
                store,
                ca,
            })
        }

        /// A certificate from the CA's issuance path under `profile` (on an administrator's
        /// authority) for a fresh P-256 software key, named `name` (CN and DNS SAN). Returns it
        /// with the key.
        pub fn issue_new_key(
            &self,
            profile: &str,
            name: &str,
        ) -> Result<
            (ca_core::issuance::Issued, rcgen::KeyPair),
            Box<dyn std::error::Error + Send + Sync>,
        > {
            let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let req = ca_core::csr::parse_der(params.serialize_request(&kp)?.der())?;
            let issued = self
                .ca
                .prepare(
                    &req,
                    ca_core::issuance::IssueContext::Admin {
                        profile,
                        actor: "test",
                        binding: None,
                    },
                )?
                .issue()?;
            Ok((issued, kp))
        }

        /// A delegated OCSP responder for the issuing CA (RFC 6960 4.2.2.2): a key of `alg`
        /// generated in the test token under `label`, and a 30-day certificate for it issued by
        /// the issuing CA with keyUsage digitalSignature, id-kp-OCSPSigning and
        /// id-pkix-ocsp-nocheck (RFC 6960 4.2.2.2.1). Returns the signer and the DER.
        pub fn ocsp_responder(
            &self,
            label: &str,
            alg: KeyAlgorithm,
        ) -> Result<(Arc<Pkcs11Signer>, Vec<u8>), Box<dyn std::error::Error + Send + Sync>>
        {
            self.ocsp_responder_valid_for(label, alg, chrono::Duration::days(30))
        }

        /// [`ocsp_responder`](Self::ocsp_responder) with a certificate valid from an hour ago
        /// until `valid_for` from now (a responder certificate about to expire).
        pub fn ocsp_responder_valid_for(
            &self,
            label: &str,
            alg: KeyAlgorithm,
            valid_for: chrono::Duration,
        ) -> Result<(Arc<Pkcs11Signer>, Vec<u8>), Box<dyn std::error::Error + Send + Sync>>
        {
            let hsm = self.token.hsm_config().open()?;
            hsm.generate_key(label, alg)?;
            let signer = Arc::new(hsm.signer(label)?);
            let now = chrono::Utc::now();
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "hsm-sim Test OCSP Responder");
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, "hsm-sim");
            params.is_ca = rcgen::IsCa::ExplicitNoCa;
            params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::OcspSigning];
            // id-pkix-ocsp-nocheck, value NULL.
            params
                .custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(
                    &[1, 3, 6, 1, 5, 5, 7, 48, 1, 5],
                    vec![0x05, 0x00],
                ));
            params.use_authority_key_identifier_extension = true;
            params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(
                ca_core::issuance::key_identifier(signer.spki_der())?,
            );
            params.not_before = to_offset(now - chrono::Duration::hours(1));
            params.not_after = to_offset(now + valid_for);
            params.serial_number = Some(rcgen::SerialNumber::from_slice(
                &ca_core::issuance::random_serial(),
            ));
            let issuing_key = RcgenKey::new(self.issuing_signer.as_ref() as &dyn Signer);
            let issuer =
                rcgen::Issuer::from_ca_cert_der(&self.issuing_der.as_slice().into(), &issuing_key)?;
            let key = RcgenKey::new(signer.as_ref() as &dyn Signer);
            let der = params.signed_by(&key, &issuer)?.der().to_vec();
            Ok((signer, der))
        }

        /// `DIR/root.pem`
        pub fn root_pem_path(&self) -> PathBuf {
            self.dir.path().join("root.pem")
        }
        /// `DIR/issuing.pem`
        pub fn issuing_pem_path(&self) -> PathBuf {
            self.dir.path().join("issuing.pem")
        }
        /// `DIR/chain.pem` (issuing, then root)
        pub fn chain_pem_path(&self) -> PathBuf {
            self.dir.path().join("chain.pem")
        }
    }
}
