//! The one error type of `ca-core`.

use std::path::PathBuf;

/// Everything that can go wrong in `ca-core`.
///
/// Variants carry the context an operator needs (which token, which key, which field) and keep
/// the underlying error reachable through [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The PKCS#11 module could not be loaded or initialised.
    #[cfg(feature = "hsm")]
    #[error("HSM unavailable: cannot load PKCS#11 module {module}: {source}")]
    HsmUnavailable {
        /// Path of the module.
        module: PathBuf,
        /// What cryptoki reported.
        #[source]
        source: cryptoki::error::Error,
    },
    /// No initialised token carries this label.
    #[error("HSM token {label:?} not found (is the token initialised and SOFTHSM2_CONF set?)")]
    TokenNotFound {
        /// Token label that was looked for.
        label: String,
    },
    /// The token has no private key (or public key) with this label.
    #[error("key {label:?} not found in HSM token {token:?}")]
    KeyNotFound {
        /// Token label.
        token: String,
        /// Key label.
        label: String,
    },
    /// A key with this label already exists; key generation refuses to shadow it.
    #[error(
        "key {label:?} already exists in HSM token {token:?}; refusing to create a second one"
    )]
    KeyExists {
        /// Token label.
        token: String,
        /// Key label.
        label: String,
    },
    /// The PIN was refused by the token.
    #[error("HSM token {token:?} refused the PIN ({reason})")]
    BadPin {
        /// Token label.
        token: String,
        /// `incorrect`, `locked`, ...
        reason: &'static str,
    },
    /// The PIN source could not be read.
    #[error("cannot read HSM PIN from {source_name}: {reason}")]
    PinSource {
        /// `env CA_HSM_PIN`, `file /path`, ...
        source_name: String,
        /// Why it failed.
        reason: String,
    },
    /// Any other PKCS#11 failure during an operation.
    #[cfg(feature = "hsm")]
    #[error("HSM operation {op} failed: {source}")]
    Hsm {
        /// The operation (sign, find key, generate key, ...).
        op: &'static str,
        /// What cryptoki reported.
        #[source]
        source: cryptoki::error::Error,
    },
    /// The HSM returned data of an unexpected shape.
    #[error("HSM returned unexpected data for {what}")]
    HsmData {
        /// What was being read.
        what: &'static str,
    },
    /// The key is known by its public half only, so far: the node started while the HSM
    /// was away (or refused the login) and has not opened the key yet
    /// ([`crate::signer::deferred::DeferredSigner`]). Nothing was signed; retry later.
    #[error("the HSM key for {key} is not available yet (the node is waiting for the HSM); nothing was signed")]
    SignerNotReady {
        /// Which key (`issuing key`, `OCSP responder key`).
        key: String,
    },
    /// The key algorithm is not supported (or not by this token).
    #[error("unsupported key algorithm: {0}")]
    UnsupportedAlgorithm(String),
    /// A signature produced by the CA did not verify with the CA's public key.
    #[error("signature produced by the HSM did not verify with the issuer public key; nothing was issued")]
    SignatureCheckFailed,
    /// The CSR could not be parsed.
    #[error("malformed CSR: {0}")]
    MalformedCsr(String),
    /// The CSR's self-signature (proof of possession) is invalid.
    #[error("CSR signature does not verify (no proof of possession of the key)")]
    CsrSignature,
    /// The requested key is too weak or of an unsupported kind.
    #[error("weak or unsupported key: {0}")]
    WeakKey(String),
    /// The CSR asks for an extension the profile does not allow.
    #[error("CSR requests extension {oid} which profile {profile:?} does not allow")]
    ExtensionNotAllowed {
        /// OID of the extension.
        oid: String,
        /// Profile name.
        profile: String,
    },
    /// A name in the request is not allowed by the profile or the identity binding.
    #[error("name not allowed: {name} ({reason})")]
    NameNotAllowed {
        /// The offending name.
        name: String,
        /// Which rule of the profile or binding refuses it.
        reason: String,
    },
    /// A renewal asked to keep the same public key, which the profile forbids.
    #[error("renewal must use a new key (the CSR carries the current certificate's public key)")]
    KeyReuse,
    /// The named profile does not exist.
    #[error("unknown profile {0:?}")]
    UnknownProfile(String),
    /// A profile or configuration value is invalid.
    #[error("invalid configuration at {path}: {reason}")]
    Config {
        /// Field path, e.g. `profiles.client.validity`.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The issuer certificate cannot be used.
    #[error("issuer certificate unusable: {0}")]
    Issuer(String),
    /// The issuer certificate expires before any useful validity could be granted.
    #[error("issuer certificate expires at {not_after}; cannot issue a certificate now")]
    IssuerExpired {
        /// The issuer's notAfter.
        not_after: chrono::DateTime<chrono::Utc>,
    },
    /// rcgen could not build the certificate.
    #[cfg(feature = "issue")]
    #[error("certificate building failed: {0}")]
    Build(#[from] rcgen::Error),
    /// DER encoding or decoding failed.
    #[error("DER error: {0}")]
    Der(#[from] der::Error),
    /// A PEM text was refused (crate::x509's parser).
    #[error("PEM: {0}")]
    Pem(#[from] PemError),
    /// The store failed.
    #[error("store error during {op}: {source}")]
    Store {
        /// The store operation.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store cannot take the operation now, for a reason that passes by itself or once an
    /// operator fixes the environment, not a fault in the request or the data: the database
    /// is unreachable, restarting, or read-only (a standby, or a primary after a switchover);
    /// the pool had no connection in time; the disk under the store is full or failing.
    /// Nothing is acknowledged: retry later (the API answers `503 store_unavailable` with a
    /// `Retry-After`). A write whose commit's answer was lost may have been made; the retry
    /// finds it (the renewal replay, a token already used).
    #[error("store unavailable during {op}: {source}")]
    StoreUnavailable {
        /// The store operation.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A record in the store could not be decoded (corruption or version skew).
    #[error("store record corrupt: {0}")]
    Corrupt(String),
    /// A serial collided with an existing certificate too many times (CSPRNG failure?).
    #[error("could not allocate a unique serial number")]
    SerialExhausted,
    /// The certificate is not known to this CA.
    #[error("certificate serial {0} not found")]
    CertNotFound(String),
    /// The certificate is already revoked (and the change is not to keyCompromise).
    #[error("certificate serial {serial} is already revoked ({reason})")]
    AlreadyRevoked {
        /// Serial (hex).
        serial: String,
        /// The existing reason.
        reason: crate::revocation::RevocationReason,
    },
    /// The revocation is stored, but its OCSP answer could not be signed (the HSM failed).
    /// The previous answer is withdrawn (the certificate is answered `tryLater`, never
    /// `good`); the responder's next refresh pass, or the same revocation repeated, signs it.
    #[error("certificate serial {serial} is revoked in the store, but its OCSP answer could not be signed yet: {source}")]
    RevocationPending {
        /// Serial (hex).
        serial: String,
        /// The HSM's error.
        #[source]
        source: Box<Error>,
    },
    /// The revocation reason cannot be used here (removeFromCRL only appears in delta CRLs,
    /// RFC 5280 5.3.1; this CA issues complete CRLs, and a revocation is never undone).
    #[error("revocation reason {0} is not allowed: {1}")]
    ReasonNotAllowed(crate::revocation::RevocationReason, &'static str),
    /// The OCSP response signed for a group of certificates at issuance failed (the message
    /// is the error the caller that signed it got).
    #[error("pre-signing the OCSP response at issuance failed: {0}")]
    OcspPresign(String),
    /// The enrollment token is unknown, expired or already used.
    #[error("enrollment token rejected: {0}")]
    TokenRejected(&'static str),
    /// The certificate's lineage (the enrollment it descends from) is locked: a generation
    /// was revoked for keyCompromise, the whole lineage was revoked, or a superseded
    /// generation tried to renew. No renewal or re-enrollment; enroll again with a new token.
    #[error("lineage {lineage} is locked ({reason}); renewal is refused: create a new enrollment token and enroll again")]
    LineageLocked {
        /// Lineage id (hex).
        lineage: String,
        /// Why it was locked.
        reason: String,
    },
    /// A renewal was attempted with a certificate that has already been renewed (an older
    /// generation of its lineage): a sign of a cloned key.
    #[error("certificate serial {serial} is generation {generation} of lineage {lineage}, which has already renewed to generation {newest}; only the newest generation may renew")]
    GenerationSuperseded {
        /// Serial (hex) that tried to renew.
        serial: String,
        /// Lineage id (hex).
        lineage: String,
        /// Its generation.
        generation: u32,
        /// The lineage's newest generation.
        newest: u32,
    },
    /// Certificates of this profile never renew through the API (administrator certificates,
    /// the server's own TLS certificate): a security officer re-issues them.
    #[error("certificates of profile {profile:?} cannot renew through the API; a security officer issues a new one")]
    NotRenewable {
        /// Profile name.
        profile: String,
    },
    /// The name is reserved for the CA's own endpoints and is never issued to a subscriber.
    #[error(
        "name {name} is reserved for the CA's own endpoints and cannot be issued to a subscriber"
    )]
    NameReserved {
        /// The reserved name.
        name: String,
    },
    /// A list cursor that this store did not hand out for this listing: not a cursor at all,
    /// or one of a listing in another order (other filters). Nothing was read.
    #[error("list cursor refused: {0}; list again from the start (without a cursor)")]
    BadCursor(String),
    /// The audit log chain is broken.
    #[error("audit log tampered or corrupt at sequence {seq}: {reason}")]
    AuditChain {
        /// Sequence number of the first bad event.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// An I/O error (PIN file, config file, ...).
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A login to the token failed recently: no new attempt until the backoff expires, so
    /// traffic cannot hammer the token (a real HSM locks its PIN after a few wrong ones).
    #[error(
        "HSM token {token:?}: login failed recently ({last}); next attempt in {retry_in_secs} s"
    )]
    LoginBackoff {
        /// Token label.
        token: String,
        /// The last failure (no secrets).
        last: String,
        /// Seconds until the next attempt is allowed.
        retry_in_secs: u64,
    },
    /// The delegated OCSP responder certificate can no longer sign: it has expired (no
    /// response may outlive it, RFC 6960 4.2.2.2) or it is revoked. Pre-signed responses stay
    /// served until their nextUpdate; nothing new is signed until the operator rotates it
    /// (README "Rotating the OCSP responder certificate").
    #[error("the OCSP responder certificate (serial {serial}) cannot sign: {reason}; run the ocsp-signer ceremony and configure the new ocsp.signer_key/ocsp.signer_cert")]
    OcspSignerUnusable {
        /// Serial of the responder certificate (hex).
        serial: String,
        /// Expired (when) or revoked (when, why).
        reason: String,
    },
}

impl Error {
    /// Whether this error means the signing key cannot be used right now (HSM away, login
    /// refused or backing off, key not opened yet) rather than that the request is wrong: the
    /// same signature may succeed later, so callers that can wait (the OCSP re-sign backlog,
    /// the CRL rebuild) keep the work instead of failing.
    pub fn is_signer_unavailable(&self) -> bool {
        #[cfg(feature = "hsm")]
        if matches!(self, Error::HsmUnavailable { .. } | Error::Hsm { .. }) {
            return true;
        }
        matches!(
            self,
            Error::SignerNotReady { .. }
                | Error::TokenNotFound { .. }
                | Error::BadPin { .. }
                | Error::PinSource { .. }
                | Error::LoginBackoff { .. }
        )
    }

    /// Whether this is [`Error::StoreUnavailable`]: retry later, nothing was acknowledged.
    pub fn is_store_unavailable(&self) -> bool {
        matches!(self, Error::StoreUnavailable { .. })
    }
}

/// Result alias for `ca-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a PEM text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// No `-----BEGIN` line at all.
    #[error("no PEM block (expected {expected})")]
    NoBlock {
        /// The label that was looked for.
        expected: String,
    },
    /// The first block (the one read) has another label.
    #[error("PEM block is {found}, expected {expected}")]
    WrongLabel {
        /// The label found.
        found: String,
        /// The label that was looked for.
        expected: String,
    },
    /// A BEGIN line that is not `-----BEGIN LABEL-----`, or a block without its END line.
    #[error("no complete {label} PEM block")]
    Incomplete {
        /// The label of the block (as far as it could be read).
        label: String,
    },
    /// The text between BEGIN and END is not canonical base64.
    #[error("bad base64 in the {label} PEM block: {reason}")]
    Base64 {
        /// The label of the block.
        label: String,
        /// What the base64 decoder said.
        reason: String,
    },
}
