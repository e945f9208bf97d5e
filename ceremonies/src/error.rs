//! The one error type of the `ceremonies` crate.

use std::path::PathBuf;

/// Everything that can stop a ceremony.
///
/// Variants that can only arise before the HSM is touched (configuration, inputs, history,
/// quorum shares) are distinct from HSM and output failures, so an operator (and a test) can
/// tell that nothing happened on the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The ceremony configuration is invalid. `path` names the field (`intermediate.validity`,
    /// `officers[1].name`, `quorum.threshold`, ...).
    #[error("{}: invalid configuration at `{path}`: {reason}", file.display())]
    Config {
        /// The configuration file.
        file: PathBuf,
        /// Field path inside the file.
        path: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// An input file (certificate, public key, PIN file, transcript) could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// What the file is.
        what: &'static str,
        /// Path of the file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An input file was read but its content is unusable.
    #[error("{what} {}: {reason}", path.display())]
    Input {
        /// What the file is.
        what: &'static str,
        /// Path of the file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An output would overwrite an existing file; ceremonies never overwrite.
    #[error("refusing to overwrite existing output {}; move it away or change the output path", .0.display())]
    OutputExists(PathBuf),
    /// An output could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// Path of the output.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The quorum shares do not unlock the token. Raised before any HSM login.
    #[error(transparent)]
    Quorum(#[from] QuorumError),
    /// The ceremony history (earlier transcripts) is missing, unverifiable or inconsistent.
    #[error("ceremony history in {}: {reason}", dir.display())]
    History {
        /// The transcript directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A transcript failed verification.
    #[error("transcript {} failed verification: {fault}", file.display())]
    Transcript {
        /// The transcript file.
        file: PathBuf,
        /// What failed.
        fault: TranscriptFault,
    },
    /// An officer did not confirm the plan.
    #[error("officer {officer:?} did not confirm the plan; nothing was done on the HSM")]
    NotConfirmed {
        /// Name of the officer who did not confirm.
        officer: String,
    },
    /// Standard input ended before every officer confirmed.
    #[error(
        "no confirmation on standard input for officer {officer:?}; officers confirm by typing their \
         name (use --yes-i-am-rehearsing only for rehearsals)"
    )]
    NoConfirmationInput {
        /// The officer whose confirmation was awaited.
        officer: String,
    },
    /// The token found by label is not the token the quorum shares belong to.
    #[error(
        "HSM token {label:?} has serial {found}, but the PIN shares belong to the token with serial \
         {expected}; refusing to log in"
    )]
    TokenMismatch {
        /// Token label.
        label: String,
        /// Serial recorded in the shares.
        expected: String,
        /// Serial of the token present.
        found: String,
    },
    /// A key in the HSM is not the key the certificate or configuration says it is.
    #[error("{what}: {reason}")]
    KeyMismatch {
        /// Which key.
        what: String,
        /// What differs.
        reason: String,
    },
    /// A generated key is not protected as CA keys must be (sensitive, never extractable).
    #[error("HSM key {label:?} in token {token:?} is not protected: {protection}")]
    KeyNotProtected {
        /// Token label.
        token: String,
        /// Key label.
        label: String,
        /// The attributes found.
        protection: String,
    },
    /// An HSM, signing or certificate-building operation in ca-core failed.
    #[error("{op} failed: {source}")]
    Core {
        /// What the ceremony was doing.
        op: &'static str,
        /// The ca-core error.
        #[source]
        source: ca_core::Error,
    },
    /// A PKCS#11 call made directly by the ceremony (security officer login, setting the PIN).
    #[error("PKCS#11 {op} failed: {source}")]
    Pkcs11 {
        /// The call that failed (e.g. `security officer login`, `C_InitPIN`).
        op: &'static str,
        /// What cryptoki reported.
        #[source]
        source: cryptoki::error::Error,
    },
    /// rcgen could not build a certificate or CRL.
    #[error("building the {what} failed: {source}")]
    Build {
        /// What was being built.
        what: &'static str,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// DER encoding or decoding failed.
    #[error("DER error while handling the {what}: {source}")]
    Der {
        /// What was being encoded or decoded.
        what: &'static str,
        /// The der error.
        #[source]
        source: der::Error,
    },
    /// A produced artifact failed its check after signing; it was not written.
    #[error("self-check of the {what} failed: {reason}; nothing was written")]
    SelfCheck {
        /// What failed its check (e.g. `root CRL`, `transcript`).
        what: &'static str,
        /// What failed.
        reason: String,
    },
    /// Provisioning the rehearsal HSM (`ceremony dev`) failed.
    #[error("rehearsal HSM: {source}")]
    RehearsalHsm {
        /// The provisioning error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl Error {
    pub(crate) fn core(op: &'static str) -> impl FnOnce(ca_core::Error) -> Error {
        move |source| Error::Core { op, source }
    }
    pub(crate) fn der(what: &'static str) -> impl FnOnce(der::Error) -> Error {
        move |source| Error::Der { what, source }
    }
    pub(crate) fn build(what: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
        move |source| Error::Build { what, source }
    }
}

/// Why quorum shares were refused. Every check happens before the HSM is opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuorumError {
    /// No share files were given.
    #[error("no PIN shares given; list them under [[officers]] share = ... or pass --share FILE")]
    NoShares,
    /// Fewer distinct shares than the threshold.
    #[error("{have} PIN share(s) given but {need} are needed to unlock the token")]
    NotEnoughShares {
        /// Distinct shares given.
        have: usize,
        /// Distinct shares needed (the threshold).
        need: usize,
    },
    /// A share file is damaged (unparseable, or its checksum does not match).
    #[error("PIN share {file} is corrupted: {reason}")]
    CorruptShare {
        /// The share file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The same share was given twice.
    #[error("PIN share {file} duplicates share {index} given in {other}")]
    DuplicateShare {
        /// The second file.
        file: String,
        /// The first file.
        other: String,
        /// Share index.
        index: u8,
    },
    /// Shares from different root ceremonies were mixed.
    #[error(
        "PIN share {file} belongs to ceremony {found}, but {first} belongs to ceremony {expected}; \
         shares from different ceremonies cannot be combined"
    )]
    MixedShares {
        /// The odd share file.
        file: String,
        /// The first share file.
        first: String,
        /// Ceremony of the first share.
        expected: String,
        /// Ceremony of the odd share.
        found: String,
    },
    /// The shares are from another root ceremony than the one recorded in the history for
    /// this token.
    #[error(
        "PIN shares belong to ceremony {found}, but the token {token:?} was set up in ceremony \
         {expected} (per the transcripts); these are the wrong shares"
    )]
    WrongCeremony {
        /// Token label.
        token: String,
        /// The root ceremony in the history.
        expected: String,
        /// The ceremony of the shares.
        found: String,
    },
    /// The shares are for another token label.
    #[error("PIN shares are for token {found:?}, but this ceremony uses token {expected:?}")]
    WrongToken {
        /// Token in the config.
        expected: String,
        /// Token in the shares.
        found: String,
    },
    /// The share's officer is not among the ceremony's officers.
    #[error(
        "PIN share {file} belongs to {officer:?}, who is not listed as an officer of this ceremony"
    )]
    OfficerNotListed {
        /// The share file.
        file: String,
        /// The share's officer.
        officer: String,
    },
    /// The shares combine, but not to the PIN they were made from (a share was altered).
    #[error(
        "the PIN shares do not reassemble the PIN they were made from (a share was altered or \
         belongs elsewhere); nothing was sent to the HSM"
    )]
    PinMismatch,
}

/// What failed when verifying a transcript.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TranscriptFault {
    /// Not valid transcript JSON (or unknown fields).
    #[error("not a valid transcript: {0}")]
    Malformed(String),
    /// Valid JSON, but not byte-for-byte the form the tool writes: the file was edited.
    #[error("the file is not in the exact form the ceremony tool wrote (edited after signing?)")]
    NotCanonical,
    /// An entry's hash or link is wrong.
    #[error("hash chain broken at entry {seq}: {reason}")]
    Chain {
        /// Sequence number of the first bad entry.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// The signature does not verify.
    #[error("signature does not verify with the recorded public key")]
    Signature,
    /// The recorded key fingerprint does not match the recorded key.
    #[error("recorded signer key fingerprint does not match the recorded key")]
    KeyFingerprint,
    /// The signer is not the key the verifier expected.
    #[error("signed by key {found}, expected {expected}")]
    UnexpectedSigner {
        /// SHA-256 of the expected SubjectPublicKeyInfo.
        expected: String,
        /// SHA-256 of the signer's SubjectPublicKeyInfo.
        found: String,
    },
}
