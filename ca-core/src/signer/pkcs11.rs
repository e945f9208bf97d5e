//! PKCS#11 keys through cryptoki: module loading, token lookup by label, PIN sources, a pool of
//! logged-in sessions, key generation inside the token, and the [`Pkcs11Signer`].
//!
//! A PKCS#11 library may be initialised once per process, so modules are kept in a
//! process-wide registry and shared by every token and signer that uses them.

use super::{ecdsa_raw_to_der, rsa_public_key_der, spki_der, KeyAlgorithm, Signer};
use crate::error::{Error, Result};
use const_oid::db::{rfc5912, rfc8410};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use der::{Decode, Encode};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Environment variable that overrides the PKCS#11 module path.
pub const MODULE_ENV: &str = "PKCS11_MODULE";

/// Where SoftHSM2's module lives on common systems (Debian/Ubuntu, Fedora/RHEL, Homebrew).
pub const SOFTHSM_PATHS: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm2.so",
    "/usr/lib/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
    "/usr/local/opt/softhsm/lib/softhsm/libsofthsm2.so",
];

/// Find the SoftHSM2 module: `$PKCS11_MODULE` if set, else the first known path that exists.
pub fn find_softhsm_module() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(MODULE_ENV) {
        return Some(PathBuf::from(p));
    }
    SOFTHSM_PATHS.iter().map(PathBuf::from).find(|p| p.exists())
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Pkcs11>> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    MODULES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Held while listing a module's slots (`C_GetSlotList`) or initialising a token: one at a time
/// in this process. SoftHSM adds a slot for the next token while it lists the slots, without a
/// lock of its own; two threads listing at once right after a token was initialised both add
/// it, and SoftHSM aborts the process (`SlotManager::insertToken: Assertion result.second
/// failed`, seen once in CI with tests opening tokens in parallel).
pub fn slot_list_lock() -> std::sync::MutexGuard<'static, ()> {
    static SLOT_LIST: Mutex<()> = Mutex::new(());
    SLOT_LIST.lock().unwrap_or_else(|p| p.into_inner())
}

/// Load and initialise a PKCS#11 module once per process; later calls share it.
pub fn open_module(path: &Path) -> Result<Pkcs11> {
    let mut modules = registry().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(ctx) = modules.get(path) {
        return Ok(ctx.clone());
    }
    let unavailable = |source| Error::HsmUnavailable {
        module: path.to_path_buf(),
        source,
    };
    let ctx = Pkcs11::new(path).map_err(unavailable)?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(unavailable(e)),
    }
    modules.insert(path.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// Finalize the module at `path` (`C_Finalize`) if this process loaded it, then load and
/// initialise it again. Only while no thread of this process uses it (no session open, no
/// signer in use): a module reads its slots and tokens at `C_Initialize` (a token that was
/// not there then, or whose PIN another process changed since, e.g. SoftHSM's, is seen only
/// after a new one).
pub fn reload_module(path: &Path) -> Result<Pkcs11> {
    let old = registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(path);
    if let Some(ctx) = old {
        if let Err(e) = ctx.finalize() {
            tracing::debug!(module = %path.display(), error = %e, "finalizing the PKCS#11 module before reloading it failed");
        }
    }
    open_module(path)
}

/// Finalize every module this process loaded (`C_Finalize`) and forget them: the last step of
/// a server's shutdown, after every thread that could call into a module has been joined.
///
/// Why explicit: a module's own teardown otherwise happens in the C/C++ static destructors
/// run by `exit()`, concurrently with any thread still inside the module (SoftHSM's
/// `C_SignInit` on a destroyed instance is a SIGSEGV). After this, a straggler's call fails
/// with `CKR_CRYPTOKI_NOT_INITIALIZED` instead. A later [`open_module`] loads and initializes
/// the module again.
pub fn finalize_modules() {
    let modules: Vec<(PathBuf, Pkcs11)> = registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .collect();
    for (path, ctx) in modules {
        match ctx.finalize() {
            Ok(()) => tracing::debug!(module = %path.display(), "PKCS#11 module finalized"),
            Err(e) => {
                tracing::warn!(module = %path.display(), error = %e, "finalizing the PKCS#11 module failed")
            }
        }
    }
}

/// Where the user PIN comes from. Never from the config file in plain text (DESIGN invariant 1).
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PinSource {
    /// An environment variable holding the PIN.
    Env(String),
    /// A file holding the PIN (trailing newline ignored); should be mode 0600.
    File(PathBuf),
    /// A PIN held in memory, e.g. reassembled from quorum shares. Never serialised.
    #[serde(skip)]
    Value(Zeroizing<String>),
}

impl fmt::Debug for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinSource::Env(v) => write!(f, "Env({v})"),
            PinSource::File(p) => write!(f, "File({})", p.display()),
            PinSource::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}

impl PinSource {
    /// Read the PIN.
    pub fn read(&self) -> Result<Zeroizing<String>> {
        match self {
            PinSource::Env(name) => {
                std::env::var(name)
                    .map(Zeroizing::new)
                    .map_err(|_| Error::PinSource {
                        source_name: format!("environment variable {name}"),
                        reason: "not set or not UTF-8".into(),
                    })
            }
            PinSource::File(path) => {
                let s = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    Error::PinSource {
                        source_name: format!("file {}", path.display()),
                        reason: e.to_string(),
                    }
                })?);
                let trimmed = s.trim_end_matches(['\r', '\n']);
                if trimmed.is_empty() {
                    return Err(Error::PinSource {
                        source_name: format!("file {}", path.display()),
                        reason: "empty".into(),
                    });
                }
                Ok(Zeroizing::new(trimmed.to_string()))
            }
            PinSource::Value(v) => Ok(v.clone()),
        }
    }
}

fn default_sessions() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2)
}

/// Which token to use and how to log in.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    /// PKCS#11 module path. Required to open the token: there is no default, so a
    /// configuration that forgets it never silently falls back to SoftHSM2.
    #[serde(default)]
    pub module: Option<PathBuf>,
    /// Token label (slots are found by label: SoftHSM renumbers slots).
    pub token_label: String,
    /// Where the user PIN comes from.
    pub pin: PinSource,
    /// Size of the signing session pool (default: number of cores, at least 2).
    #[serde(default = "default_sessions")]
    pub sessions: usize,
}

impl HsmConfig {
    /// A config for `token_label`; set [`HsmConfig::module`] before [`HsmConfig::open`].
    pub fn new(token_label: impl Into<String>, pin: PinSource) -> Self {
        HsmConfig {
            module: None,
            token_label: token_label.into(),
            pin,
            sessions: default_sessions(),
        }
    }

    /// The module path to load: `module`, which is required (no fallback to SoftHSM2).
    pub fn module_path(&self) -> Result<PathBuf> {
        self.module.clone().ok_or_else(|| Error::Config {
            path: "hsm.module".into(),
            reason: "no PKCS#11 module configured; set it to the path of the HSM's PKCS#11 \
                     library (for SoftHSM2, e.g. /usr/lib/softhsm/libsofthsm2.so)"
                .into(),
        })
    }

    /// Open the token (loads the module if needed; does not log in yet).
    pub fn open(&self) -> Result<Token> {
        let module = self.module_path()?;
        let ctx = open_module(&module)?;
        Ok(Token {
            ctx,
            module,
            label: self.token_label.clone(),
            pin: self.pin.clone(),
            sessions: self.sessions.max(1),
            gate: Arc::new(Mutex::new(LoginGate::new())),
        })
    }
}

/// Whether a PKCS#11 error means the session (or login) is gone and a fresh session may work.
fn is_session_fault(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceError
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::ObjectHandleInvalid
                | RvError::KeyHandleInvalid
                | RvError::GeneralError,
            _
        )
    )
}

/// First wait after a failed login.
pub const LOGIN_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest wait between login attempts.
pub const LOGIN_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Failed logins of one token, shared by every clone of the [`Token`] (every signer of it).
///
/// Policy (README "HSM logins"):
/// - after any failed `C_Login`, no new attempt before a backoff (1 s, doubling, at most
///   5 min; reset by a success), so traffic cannot turn into a stream of logins;
/// - after `CKR_PIN_INCORRECT` (or locked, expired, invalid), that PIN is not tried again
///   automatically: a real HSM locks its PIN after a few wrong ones, and a fast retry schedule
///   would get there. The next attempt is made once the PIN source (file, environment) yields a
///   different PIN (it is re-read at each attempt, which costs no HSM call), after a restart,
///   after [`Token::retry_login`], or, when [`Token::set_refused_pin_retry`] set an interval,
///   once that interval has passed since the refusal (one attempt per interval, and never
///   while the token reports that the next wrong PIN locks it, `CKF_USER_PIN_FINAL_TRY`, or
///   that it is locked). Without an interval (the default) never.
struct LoginGate {
    failures: u32,
    retry_at: Option<Instant>,
    last: String,
    /// SHA-256(salt || PIN) of the PIN the token refused.
    refused_pin: Option<[u8; 32]>,
    /// When the token last refused `refused_pin`.
    refused_at: Option<Instant>,
    /// Try a refused PIN again after this long ([`Token::set_refused_pin_retry`]).
    refused_retry: Option<Duration>,
    salt: [u8; 16],
}

impl LoginGate {
    fn new() -> Self {
        LoginGate {
            failures: 0,
            retry_at: None,
            last: String::new(),
            refused_pin: None,
            refused_at: None,
            refused_retry: None,
            salt: rand::random(),
        }
    }

    fn fingerprint(&self, pin: &str) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.salt);
        h.update(pin.as_bytes());
        h.finalize().into()
    }

    fn failed(&mut self, what: String, refused_pin: Option<[u8; 32]>) {
        self.failures = self.failures.saturating_add(1);
        let shift = self.failures.saturating_sub(1).min(16);
        let wait = LOGIN_BACKOFF_MIN
            .saturating_mul(1u32 << shift)
            .min(LOGIN_BACKOFF_MAX);
        self.retry_at = Some(Instant::now() + wait);
        self.last = what;
        if refused_pin.is_some() {
            self.refused_pin = refused_pin;
            self.refused_at = Some(Instant::now());
        }
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = None;
        self.refused_pin = None;
        self.refused_at = None;
        self.last.clear();
    }
}

/// An opened token: finds its slot by label and opens logged-in sessions.
#[derive(Clone)]
pub struct Token {
    ctx: Pkcs11,
    module: PathBuf,
    label: String,
    pin: PinSource,
    sessions: usize,
    gate: Arc<Mutex<LoginGate>>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// The token label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Find the slot holding this token (by label; slot ids change after C_InitToken).
    pub fn slot(&self) -> Result<Slot> {
        // get_all_slots, not get_slots_with_initialized_token: the latter fails as a whole when
        // any one slot cannot report its token (e.g. a removed SoftHSM token directory).
        let listed = {
            let _one = slot_list_lock();
            self.ctx.get_all_slots()
        };
        let slots = listed.map_err(|source| Error::Hsm {
            op: "list slots",
            source,
        })?;
        for slot in slots {
            if let Ok(info) = self.ctx.get_token_info(slot) {
                if info.token_initialized() && info.label().trim_end() == self.label {
                    return Ok(slot);
                }
            }
        }
        Err(Error::TokenNotFound {
            label: self.label.clone(),
        })
    }

    /// The token's serial number (for ceremony transcripts).
    pub fn serial_number(&self) -> Result<String> {
        let info = self
            .ctx
            .get_token_info(self.slot()?)
            .map_err(|source| Error::Hsm {
                op: "token info",
                source,
            })?;
        Ok(info.serial_number().trim().to_string())
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, LoginGate> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forget the login failures: the next login is attempted at once, even with a PIN the
    /// token refused before (an operator who restored the token's PIN says so).
    pub fn retry_login(&self) {
        self.gate().succeeded();
    }

    /// This token through a freshly initialised module ([`reload_module`]), with the same
    /// login policy state (backoff, refused PIN): for a node waiting for its HSM at start,
    /// before any signer of the token exists. Every other clone of this token is unusable
    /// afterwards (its module context is finalized).
    pub fn reloaded(&self) -> Result<Token> {
        let ctx = reload_module(&self.module)?;
        Ok(Token {
            ctx,
            module: self.module.clone(),
            label: self.label.clone(),
            pin: self.pin.clone(),
            sessions: self.sessions,
            gate: self.gate.clone(),
        })
    }

    /// Try a PIN the token refused again after `every` (one attempt per interval, never while
    /// the token reports `CKF_USER_PIN_FINAL_TRY` or `CKF_USER_PIN_LOCKED`), so that a node
    /// whose token's PIN was restored to the configured one recovers without a restart; `None`
    /// (the default): a refused PIN is never tried again by itself ([`LoginGate`]). Shared by
    /// every clone of this token.
    pub fn set_refused_pin_retry(&self, every: Option<Duration>) {
        self.gate().refused_retry = every;
    }

    /// Whether the token says the next wrong user PIN locks it, or that it is locked (a token
    /// that does not report it answers `false`). Costs `C_GetTokenInfo`, no login.
    fn pin_near_lockout(&self) -> bool {
        self.slot()
            .ok()
            .and_then(|slot| self.ctx.get_token_info(slot).ok())
            .is_some_and(|i| i.user_pin_final_try() || i.user_pin_locked())
    }

    /// Whether the last login attempt failed and its backoff or refused-PIN latch is in force.
    pub fn login_blocked(&self) -> bool {
        let g = self.gate();
        g.refused_pin.is_some() || g.retry_at.is_some_and(|t| Instant::now() < t)
    }

    /// Open a read-write session logged in as the user.
    ///
    /// Failed logins back off and a refused PIN is not tried again ([`LoginGate`]): while
    /// blocked, this fails with [`Error::BadPin`] or [`Error::LoginBackoff`] without calling
    /// `C_Login` (nor opening a session).
    pub fn login(&self) -> Result<Session> {
        let pin = self.pin.read()?;
        let fingerprint = {
            let mut g = self.gate();
            let fingerprint = g.fingerprint(&pin);
            let refused_pin = g.refused_pin;
            match refused_pin {
                // The same PIN as the one refused: not again by itself, unless an interval
                // is set and has passed (and the token is not one wrong PIN from locking).
                Some(refused) if refused == fingerprint => {
                    let due = match (g.refused_retry, g.refused_at) {
                        (Some(every), Some(at)) => at.elapsed() >= every,
                        _ => false,
                    };
                    if !due {
                        return Err(Error::BadPin {
                            token: self.label.clone(),
                            reason: "incorrect; not tried again until the PIN source changes \
                                     or hsm.refused_pin_retry has passed",
                        });
                    }
                    // One attempt per interval, however many threads ask.
                    g.refused_at = Some(Instant::now());
                    drop(g);
                    if self.pin_near_lockout() {
                        tracing::error!(token = %self.label, "the token reports that its user PIN is locked or that the next wrong PIN locks it: the refused PIN is not tried again; fix the PIN source or the token");
                        return Err(Error::BadPin {
                            token: self.label.clone(),
                            reason: "incorrect, and the token is one wrong PIN from locking; not tried again",
                        });
                    }
                    tracing::info!(token = %self.label, "trying the PIN the token refused again (hsm.refused_pin_retry)");
                }
                // A different PIN from the source: an operator fixed it; try it now.
                Some(_) => {}
                None => {
                    if let Some(at) = g.retry_at {
                        let now = Instant::now();
                        if now < at {
                            return Err(Error::LoginBackoff {
                                token: self.label.clone(),
                                last: g.last.clone(),
                                retry_in_secs: (at - now).as_secs().max(1),
                            });
                        }
                    }
                }
            }
            fingerprint
        };
        let r = self.login_now(&pin);
        let mut g = self.gate();
        match &r {
            Ok(_) => g.succeeded(),
            Err(e) => {
                let refused = matches!(e, Error::BadPin { .. }).then_some(fingerprint);
                tracing::warn!(token = %self.label, error = %e, failures = g.failures + 1,
                    pin_refused = refused.is_some(), "HSM login failed; backing off");
                g.failed(e.to_string(), refused);
            }
        }
        r
    }

    fn login_now(&self, pin: &str) -> Result<Session> {
        let slot = self.slot()?;
        let session = self
            .ctx
            .open_rw_session(slot)
            .map_err(|source| Error::Hsm {
                op: "open session",
                source,
            })?;
        let auth = AuthPin::from(pin);
        let bad_pin = |reason| Error::BadPin {
            token: self.label.clone(),
            reason,
        };
        match session.login(UserType::User, Some(&auth)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(bad_pin("incorrect")),
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(bad_pin("locked")),
            Err(CkError::Pkcs11(RvError::PinExpired, _)) => Err(bad_pin("expired")),
            Err(CkError::Pkcs11(RvError::PinInvalid, _)) => Err(bad_pin("invalid")),
            Err(CkError::Pkcs11(RvError::PinLenRange, _)) => Err(bad_pin("wrong length")),
            Err(source) => Err(Error::Hsm {
                op: "login",
                source,
            }),
        }
    }

    fn find_one(
        &self,
        session: &Session,
        class: ObjectClass,
        label: &str,
    ) -> Result<Option<ObjectHandle>> {
        // Token objects only: the signer's session copies of a key carry the same label.
        let found = session
            .find_objects(&[
                Attribute::Class(class),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Token(true),
            ])
            .map_err(|source| Error::Hsm {
                op: "find key",
                source,
            })?;
        Ok(found.into_iter().next())
    }

    /// Read the public key with this label: algorithm and SubjectPublicKeyInfo DER.
    pub fn public_key(&self, key_label: &str) -> Result<(KeyAlgorithm, Vec<u8>)> {
        let session = self.login()?;
        self.public_key_in(&session, key_label)
    }

    fn public_key_in(&self, session: &Session, key_label: &str) -> Result<(KeyAlgorithm, Vec<u8>)> {
        let not_found = || Error::KeyNotFound {
            token: self.label.clone(),
            label: key_label.to_string(),
        };
        let handle = self
            .find_one(session, ObjectClass::PUBLIC_KEY, key_label)?
            .ok_or_else(not_found)?;
        let attrs = session
            .get_attributes(
                handle,
                &[
                    AttributeType::KeyType,
                    AttributeType::EcParams,
                    AttributeType::EcPoint,
                    AttributeType::Modulus,
                    AttributeType::PublicExponent,
                ],
            )
            .map_err(|source| Error::Hsm {
                op: "read public key",
                source,
            })?;
        let mut key_type = None;
        let (mut params, mut point, mut modulus, mut exponent) = (None, None, None, None);
        for a in attrs {
            match a {
                Attribute::KeyType(t) => key_type = Some(t),
                Attribute::EcParams(v) => params = Some(v),
                Attribute::EcPoint(v) => point = Some(v),
                Attribute::Modulus(v) => modulus = Some(v),
                Attribute::PublicExponent(v) => exponent = Some(v),
                _ => {}
            }
        }
        let key_type = key_type.ok_or(Error::HsmData {
            what: "CKA_KEY_TYPE",
        })?;
        let unwrap_point = |p: Vec<u8>| -> Vec<u8> {
            // CKA_EC_POINT is a DER OCTET STRING around the point (PKCS#11 2.40 2.3.3).
            der::asn1::OctetString::from_der(&p)
                .map(|o| o.into_bytes())
                .unwrap_or(p)
        };
        if key_type == KeyType::RSA {
            let (m, e) = modulus.zip(exponent).ok_or(Error::HsmData {
                what: "RSA modulus/exponent",
            })?;
            let bits = rsa_public_key_der(&m, &e)?;
            let alg = match m.len() * 8 {
                2048 => KeyAlgorithm::Rsa2048,
                3072 => KeyAlgorithm::Rsa3072,
                4096 => KeyAlgorithm::Rsa4096,
                n => return Err(Error::UnsupportedAlgorithm(format!("RSA-{n} key in HSM"))),
            };
            Ok((alg, spki_der(alg, &bits)?))
        } else if key_type == KeyType::EC {
            let params = params.ok_or(Error::HsmData {
                what: "CKA_EC_PARAMS",
            })?;
            let curve =
                der::asn1::ObjectIdentifier::from_der(&params).map_err(|_| Error::HsmData {
                    what: "CKA_EC_PARAMS",
                })?;
            let alg = if curve == rfc5912::SECP_256_R_1 {
                KeyAlgorithm::P256
            } else if curve == rfc5912::SECP_384_R_1 {
                KeyAlgorithm::P384
            } else {
                return Err(Error::UnsupportedAlgorithm(format!(
                    "EC curve {curve} in HSM"
                )));
            };
            let point = unwrap_point(point.ok_or(Error::HsmData {
                what: "CKA_EC_POINT",
            })?);
            Ok((alg, spki_der(alg, &point)?))
        } else if key_type == KeyType::EC_EDWARDS {
            let point = unwrap_point(point.ok_or(Error::HsmData {
                what: "CKA_EC_POINT",
            })?);
            if point.len() != 32 {
                return Err(Error::UnsupportedAlgorithm(
                    "EdDSA key other than Ed25519 in HSM".into(),
                ));
            }
            Ok((
                KeyAlgorithm::Ed25519,
                spki_der(KeyAlgorithm::Ed25519, &point)?,
            ))
        } else {
            Err(Error::UnsupportedAlgorithm(format!(
                "key type {key_type} in HSM"
            )))
        }
    }

    /// Generate a key pair inside the token: private key `CKA_SENSITIVE`, not extractable,
    /// `CKA_TOKEN` (persistent). Refuses to create a second key with the same label.
    /// Returns the public key as SubjectPublicKeyInfo DER.
    pub fn generate_key(&self, key_label: &str, alg: KeyAlgorithm) -> Result<Vec<u8>> {
        let session = self.login()?;
        if self
            .find_one(&session, ObjectClass::PRIVATE_KEY, key_label)?
            .is_some()
            || self
                .find_one(&session, ObjectClass::PUBLIC_KEY, key_label)?
                .is_some()
        {
            return Err(Error::KeyExists {
                token: self.label.clone(),
                label: key_label.to_string(),
            });
        }
        let id: [u8; 16] = rand::random();
        let label = Attribute::Label(key_label.as_bytes().to_vec());
        let mut public = vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            label.clone(),
            Attribute::Id(id.to_vec()),
        ];
        let private = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            label,
            Attribute::Id(id.to_vec()),
        ];
        let mechanism = match alg {
            KeyAlgorithm::P256 | KeyAlgorithm::P384 => {
                let curve = if alg == KeyAlgorithm::P256 {
                    rfc5912::SECP_256_R_1
                } else {
                    rfc5912::SECP_384_R_1
                };
                public.push(Attribute::EcParams(curve.to_der()?));
                Mechanism::EccKeyPairGen
            }
            KeyAlgorithm::Ed25519 => {
                public.push(Attribute::EcParams(rfc8410::ID_ED_25519.to_der()?));
                Mechanism::EccEdwardsKeyPairGen
            }
            _ => {
                let bits = alg.rsa_bits().unwrap_or(2048) as u64;
                public.push(Attribute::ModulusBits(bits.into()));
                public.push(Attribute::PublicExponent(vec![1, 0, 1]));
                Mechanism::RsaPkcsKeyPairGen
            }
        };
        session
            .generate_key_pair(&mechanism, &public, &private)
            .map_err(|source| Error::Hsm {
                op: "generate key pair",
                source,
            })?;
        Ok(self.public_key_in(&session, key_label)?.1)
    }

    /// Protection attributes of the private key with this label.
    pub fn key_protection(&self, key_label: &str) -> Result<KeyProtection> {
        let session = self.login()?;
        let handle = self
            .find_one(&session, ObjectClass::PRIVATE_KEY, key_label)?
            .ok_or_else(|| Error::KeyNotFound {
                token: self.label.clone(),
                label: key_label.to_string(),
            })?;
        let attrs = session
            .get_attributes(
                handle,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                    AttributeType::Token,
                ],
            )
            .map_err(|source| Error::Hsm {
                op: "read key attributes",
                source,
            })?;
        let mut p = KeyProtection::default();
        for a in attrs {
            match a {
                Attribute::Sensitive(v) => p.sensitive = v,
                Attribute::Extractable(v) => p.extractable = v,
                Attribute::AlwaysSensitive(v) => p.always_sensitive = v,
                Attribute::NeverExtractable(v) => p.never_extractable = v,
                Attribute::Token(v) => p.persistent = v,
                _ => {}
            }
        }
        Ok(p)
    }

    /// Open a signer for the key with this label.
    pub fn signer(&self, key_label: &str) -> Result<Pkcs11Signer> {
        Pkcs11Signer::new(self.clone(), key_label)
    }
}

/// Protection attributes of an HSM private key.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KeyProtection {
    /// CKA_SENSITIVE
    pub sensitive: bool,
    /// CKA_EXTRACTABLE
    pub extractable: bool,
    /// CKA_ALWAYS_SENSITIVE
    pub always_sensitive: bool,
    /// CKA_NEVER_EXTRACTABLE
    pub never_extractable: bool,
    /// CKA_TOKEN
    pub persistent: bool,
}

/// Outcome of [`Pkcs11Signer::health_check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HsmHealth {
    /// A pooled session is logged in and the key is there.
    Ready,
    /// Every session was busy (signing) for the whole wait: nothing was checked.
    Busy,
}

struct PooledSession {
    session: Session,
    key: ObjectHandle,
    generation: u64,
}

struct Pool {
    idle: Vec<PooledSession>,
    open: usize,
    generation: u64,
}

/// A private key in a PKCS#11 token, used through a pool of logged-in sessions.
///
/// `Session` is `Send` but not `Sync`, so each signing call checks a session out of the pool
/// (opening one if fewer than `sessions` exist, waiting otherwise). After an error that means
/// the session or login is gone (closed session, device error, not logged in), every pooled
/// session is dropped and the call is retried once on a fresh, freshly logged-in session.
pub struct Pkcs11Signer {
    token: Token,
    key_label: String,
    alg: KeyAlgorithm,
    spki: Vec<u8>,
    bits: Vec<u8>,
    pool: Mutex<Pool>,
    freed: Condvar,
}

impl fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Signer")
            .field("token", &self.token.label)
            .field("key", &self.key_label)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Signer {
    fn new(token: Token, key_label: &str) -> Result<Self> {
        let session = token.login()?;
        let (alg, spki) = token.public_key_in(&session, key_label)?;
        let key = token
            .find_one(&session, ObjectClass::PRIVATE_KEY, key_label)?
            .ok_or_else(|| Error::KeyNotFound {
                token: token.label.clone(),
                label: key_label.to_string(),
            })?;
        let key = session_copy(&session, key);
        let bits = spki::SubjectPublicKeyInfoOwned::from_der(&spki)?
            .subject_public_key
            .raw_bytes()
            .to_vec();
        let signer = Pkcs11Signer {
            token,
            key_label: key_label.to_string(),
            alg,
            spki,
            bits,
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                open: 1,
                generation: 0,
            }),
            freed: Condvar::new(),
        };
        signer.checkin(PooledSession {
            session,
            key,
            generation: 0,
        });
        Ok(signer)
    }

    /// The token this key lives in.
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// The key label.
    pub fn key_label(&self) -> &str {
        &self.key_label
    }

    /// Readiness without a signature: on a pooled session, `C_GetSessionInfo` (the session
    /// is open and logged in as the user) and `C_GetAttributeValue(CKA_SIGN)` of the key (the
    /// key object is still there). Waits at most `wait` for an idle session and never opens
    /// one beyond the pool's size: when every session is busy signing, the answer is
    /// [`HsmHealth::Busy`] (the HSM is evidently working), and the probe did not delay
    /// issuance. A session that is no longer logged in is replaced by a fresh one, through the
    /// login backoff ([`Token::login`]): probes never cause more logins than issuance would.
    pub fn health_check(&self, wait: Duration) -> Result<HsmHealth> {
        let mut retried = false;
        loop {
            let Some(s) = self.checkout_within(wait)? else {
                return Ok(HsmHealth::Busy);
            };
            match self.check_session(&s) {
                Ok(()) => {
                    self.checkin(s);
                    return Ok(HsmHealth::Ready);
                }
                Err(e) if is_session_fault(&e) && !retried => {
                    tracing::warn!(token = %self.token.label, key = %self.key_label, error = %e, "HSM session unusable; reopening sessions");
                    self.discard_all(s);
                    retried = true;
                }
                Err(e) => {
                    if is_session_fault(&e) {
                        self.discard_all(s);
                    } else {
                        self.checkin(s);
                    }
                    return Err(Error::Hsm {
                        op: "readiness check",
                        source: e,
                    });
                }
            }
        }
    }

    fn check_session(&self, s: &PooledSession) -> std::result::Result<(), CkError> {
        use cryptoki::session::SessionState;
        let info = s.session.get_session_info()?;
        if !matches!(
            info.session_state(),
            SessionState::RwUser | SessionState::RoUser
        ) {
            return Err(CkError::Pkcs11(
                RvError::UserNotLoggedIn,
                cryptoki::context::Function::GetSessionInfo,
            ));
        }
        let attrs = s.session.get_attributes(s.key, &[AttributeType::Sign])?;
        if attrs.iter().any(|a| matches!(a, Attribute::Sign(true))) {
            Ok(())
        } else {
            Err(CkError::Pkcs11(
                RvError::KeyFunctionNotPermitted,
                cryptoki::context::Function::GetAttributeValue,
            ))
        }
    }

    /// [`checkout`](Self::checkout), waiting at most `wait` for a session; `None` if every
    /// session stayed busy.
    fn checkout_within(&self, wait: Duration) -> Result<Option<PooledSession>> {
        let deadline = Instant::now() + wait;
        let mut pool = self.lock();
        loop {
            if let Some(s) = pool.idle.pop() {
                return Ok(Some(s));
            }
            if pool.open < self.token.sessions {
                pool.open += 1;
                let generation = pool.generation;
                drop(pool);
                return self.open_session(generation).map(Some).inspect_err(|_| {
                    self.lock().open -= 1;
                    self.freed.notify_one();
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            pool = self
                .freed
                .wait_timeout(pool, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn checkout(&self) -> Result<PooledSession> {
        let mut pool = self.lock();
        loop {
            if let Some(s) = pool.idle.pop() {
                return Ok(s);
            }
            if pool.open < self.token.sessions {
                pool.open += 1;
                let generation = pool.generation;
                drop(pool);
                return self.open_session(generation).inspect_err(|_| {
                    self.lock().open -= 1;
                    self.freed.notify_one();
                });
            }
            pool = self.freed.wait(pool).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn open_session(&self, generation: u64) -> Result<PooledSession> {
        let session = self.token.login()?;
        let key = self
            .token
            .find_one(&session, ObjectClass::PRIVATE_KEY, &self.key_label)?
            .ok_or_else(|| Error::KeyNotFound {
                token: self.token.label.clone(),
                label: self.key_label.clone(),
            })?;
        let key = session_copy(&session, key);
        Ok(PooledSession {
            session,
            key,
            generation,
        })
    }

    fn checkin(&self, s: PooledSession) {
        let mut pool = self.lock();
        if s.generation == pool.generation {
            pool.idle.push(s);
        } else {
            pool.open -= 1;
        }
        drop(pool);
        self.freed.notify_one();
    }

    /// Drop this session and every idle one: after a session fault none of them is trusted.
    fn discard_all(&self, s: PooledSession) {
        let mut pool = self.lock();
        pool.generation += 1;
        let idle = std::mem::take(&mut pool.idle);
        pool.open -= idle.len() + 1;
        drop(pool);
        drop(idle);
        drop(s);
        self.freed.notify_all();
    }

    fn sign_once(&self, s: &PooledSession, msg: &[u8]) -> std::result::Result<Vec<u8>, CkError> {
        use sha2::Digest;
        match self.alg {
            KeyAlgorithm::P256 => {
                s.session
                    .sign(&Mechanism::Ecdsa, s.key, &sha2::Sha256::digest(msg))
            }
            KeyAlgorithm::P384 => {
                s.session
                    .sign(&Mechanism::Ecdsa, s.key, &sha2::Sha384::digest(msg))
            }
            KeyAlgorithm::Ed25519 => s.session.sign(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                s.key,
                msg,
            ),
            _ => s.session.sign(&Mechanism::Sha256RsaPkcs, s.key, msg),
        }
    }
}

/// A session-object copy of the private key (`C_CopyObject` with `CKA_TOKEN` false), made in
/// the HSM and used by this session only, or the token key itself if the token refuses the
/// copy (`CKA_COPYABLE` false, a vendor policy). The copy keeps every other attribute: it is
/// sensitive and non-extractable like the original, and it disappears when the session closes.
/// Why: SoftHSM re-reads a token object's file (open, lock, stat, read, close) on every
/// `C_SignInit`; a session object lives in memory. SoftHSM signs 50-70% more P-256
/// signatures per second with the copy (`bench/issuance.sh` measures both).
fn session_copy(session: &Session, key: ObjectHandle) -> ObjectHandle {
    match session.copy_object(key, &[Attribute::Token(false)]) {
        Ok(copy) => copy,
        Err(e) => {
            tracing::debug!(error = %e, "HSM refused a session copy of the key; signing with the token object");
            key
        }
    }
}

impl Signer for Pkcs11Signer {
    fn algorithm(&self) -> KeyAlgorithm {
        self.alg
    }
    fn spki_der(&self) -> &[u8] {
        &self.spki
    }
    fn public_key_bits(&self) -> &[u8] {
        &self.bits
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        let mut retried = false;
        loop {
            let s = self.checkout()?;
            match self.sign_once(&s, msg) {
                Ok(sig) => {
                    self.checkin(s);
                    return match self.alg {
                        KeyAlgorithm::P256 | KeyAlgorithm::P384 => ecdsa_raw_to_der(&sig),
                        _ => Ok(sig),
                    };
                }
                Err(e) if is_session_fault(&e) => {
                    tracing::warn!(token = %self.token.label, key = %self.key_label, error = %e, retried, "HSM session fault; reopening sessions");
                    self.discard_all(s);
                    if retried {
                        return Err(Error::Hsm {
                            op: "sign",
                            source: e,
                        });
                    }
                    retried = true;
                }
                Err(e) => {
                    self.checkin(s);
                    return Err(Error::Hsm {
                        op: "sign",
                        source: e,
                    });
                }
            }
        }
    }
}
