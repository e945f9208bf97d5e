//! The pre-signed OCSP responder: one signed response per certificate, in memory, answered
//! without touching the HSM (DESIGN "Performance shape"; RFC 5019 2.2.1).

use super::build::{
    error_response, from_gtime, from_ocsp_status, key_hash, nonce_extension, parse_response,
    responder_cert, sign_basic, single,
};
use super::memo::{canonical_request, Memo, MemoStats};
use super::request::{parse_request, ParsedRequest, RequestedCert};
use super::{serial_magnitude, HashAlg, OcspIssuer};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::revocation::CertStatus;
use crate::signer::{verify, Signer};
use crate::store::{CertRecord, Store, StoredOcspResponse};
use chrono::{DateTime, Duration, Utc};
use der::{Decode, Encode};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Instant, SystemTime};
use x509_cert::Certificate;
use x509_ocsp::{OcspResponseStatus, ResponderId, SingleResponse};

/// The hash algorithms of the CertIDs every pre-signed response carries (RFC 5019 2.1.1 SHA-1
/// for today's clients, SHA-256 per RFC 9919).
const PRESIGNED_ALGS: [HashAlg; 2] = [HashAlg::Sha1, HashAlg::Sha256];
const SHARDS: usize = 16;
const SIGN_LOCKS: usize = 64;
/// Upper bound of [`ResponderConfig::issuance_batch_max`] (a response stays a few kilobytes).
const ISSUANCE_BATCH_LIMIT: usize = 64;

/// Responder settings. Defaults suit short-lived mTLS certificates.
#[derive(Clone, Debug)]
pub struct ResponderConfig {
    /// nextUpdate - thisUpdate of every signed response (default 24 hours).
    pub validity: Duration,
    /// Re-sign a response when less than this is left before its nextUpdate (default 12 hours).
    /// Must be shorter than `validity`.
    pub refresh_before: Duration,
    /// Most CertIDs answered in one request (default 16); more is `malformedRequest`.
    pub max_certs_per_request: usize,
    /// Live signatures per second (unknown serials, several CertIDs, nonce echo, CertIDs
    /// hashed with SHA-384/512). Default 20.
    pub live_signing_rate: u32,
    /// Burst allowance for live signing. Default 50.
    pub live_signing_burst: u32,
    /// Sign live and echo the nonce when a request carries one (RFC 8954), within the
    /// live-signing rate. Off by default: pre-signed responses ignore nonces (RFC 5019 2.2.1).
    pub echo_nonce: bool,
    /// Most signed `unknown` responses kept in memory (default 10 000; oldest dropped first).
    pub unknown_cache_size: usize,
    /// Most certificates one response pre-signed at issuance covers (default 8; 1 gives every
    /// certificate its own). Certificates issued while the previous response is being signed
    /// share the next signature: one response carries a SingleResponse pair for each of them,
    /// which RFC 6960 4.2.2.3 and RFC 5019 2.2.1 allow for pre-generation performance.
    /// Without concurrent issuance every response covers one certificate. The refresh pass
    /// re-signs one response per certificate.
    pub issuance_batch_max: usize,
    /// How long the issuance signer ([`Responder::start_issuance_signer`]) gathers queued
    /// certificates before it signs their response (default 5 ms, at most 100 ms). Nobody's
    /// issuance waits for it; an OCSP request for a certificate still queued does.
    pub issuance_batch_window: std::time::Duration,
    /// Bound in bytes of the request memo (request bytes -> serial; default 8 MiB, 0 turns it
    /// off). Only the canonical encoding of a single-CertID request about a certificate with a
    /// pre-signed response is memoised, so padded or unique requests cannot grow it.
    pub memo_max_bytes: usize,
}

impl Default for ResponderConfig {
    fn default() -> Self {
        ResponderConfig {
            validity: Duration::hours(24),
            refresh_before: Duration::hours(12),
            max_certs_per_request: 16,
            live_signing_rate: 20,
            live_signing_burst: 50,
            echo_nonce: false,
            unknown_cache_size: 10_000,
            issuance_batch_max: 8,
            issuance_batch_window: std::time::Duration::from_millis(5),
            memo_max_bytes: 8 * 1024 * 1024,
        }
    }
}

impl ResponderConfig {
    /// Check the settings; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |path: &str, reason: &str| {
            Err(Error::Config {
                path: format!("ocsp.{path}"),
                reason: reason.into(),
            })
        };
        if self.validity <= Duration::zero() {
            return bad("validity", "must be positive");
        }
        if self.refresh_before <= Duration::zero() || self.refresh_before >= self.validity {
            return bad(
                "refresh_before",
                "must be positive and shorter than ocsp.validity",
            );
        }
        if self.max_certs_per_request == 0 {
            return bad("max_certs_per_request", "must be at least 1");
        }
        if !(1..=ISSUANCE_BATCH_LIMIT).contains(&self.issuance_batch_max) {
            return bad("issuance_batch_max", "must be between 1 and 64");
        }
        if self.issuance_batch_window > std::time::Duration::from_millis(100) {
            return bad("issuance_batch_window", "at most 100ms");
        }
        if self.live_signing_burst == 0 && self.live_signing_rate > 0 {
            return bad(
                "live_signing_burst",
                "must be at least 1 when live signing is enabled",
            );
        }
        Ok(())
    }
}

/// The key that signs responses: the CA's own key, or a delegated OCSP-signing certificate's.
#[derive(Clone)]
pub struct ResponderKey {
    signer: Arc<dyn Signer>,
    cert: Option<Certificate>,
    /// Serial (magnitude) and notAfter of `cert`.
    cert_info: Option<(Vec<u8>, DateTime<Utc>)>,
}

impl std::fmt::Debug for ResponderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponderKey")
            .field("signer", &self.signer)
            .field("delegated", &self.cert.is_some())
            .finish()
    }
}

impl ResponderKey {
    /// Sign with the CA's own key (RFC 6960 4.2.2.2, first case).
    pub fn ca(signer: Arc<dyn Signer>) -> Self {
        ResponderKey {
            signer,
            cert: None,
            cert_info: None,
        }
    }

    /// Sign with a delegated responder: `cert_der` must hold `signer`'s key (checked here);
    /// [`Responder::new`] checks that the issuer signed it and that it carries
    /// id-kp-OCSPSigning.
    pub fn delegated(signer: Arc<dyn Signer>, cert_der: &[u8]) -> Result<Self> {
        let cert = responder_cert(signer.as_ref(), cert_der)?;
        let serial = serial_magnitude(cert.tbs_certificate.serial_number.as_bytes()).to_vec();
        let secs = cert
            .tbs_certificate
            .validity
            .not_after
            .to_unix_duration()
            .as_secs();
        let not_after = i64::try_from(secs)
            .ok()
            .and_then(|s| DateTime::from_timestamp(s, 0))
            .ok_or_else(|| {
                Error::Issuer("OCSP responder certificate notAfter out of range".into())
            })?;
        Ok(ResponderKey {
            signer,
            cert: Some(cert),
            cert_info: Some((serial, not_after)),
        })
    }

    /// The delegated responder certificate's serial (magnitude) and notAfter; `None` when the
    /// CA key signs.
    pub fn cert_serial_and_expiry(&self) -> Option<(&[u8], DateTime<Utc>)> {
        self.cert_info.as_ref().map(|(s, t)| (s.as_slice(), *t))
    }

    /// The signer.
    pub fn signer(&self) -> &dyn Signer {
        self.signer.as_ref()
    }
}

/// What kind of response an [`OcspAnswer`] is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnswerKind {
    /// A signed `successful` response.
    Signed {
        /// Status of the (first) certificate asked about.
        status: CertStatus,
        /// producedAt.
        produced_at: DateTime<Utc>,
        /// thisUpdate.
        this_update: DateTime<Utc>,
        /// nextUpdate.
        next_update: DateTime<Utc>,
        /// Whether HTTP caches may keep it (false when it echoes a nonce).
        cacheable: bool,
    },
    /// An unsigned error response (`malformedRequest`, `unauthorized`, `tryLater`,
    /// `internalError`).
    Error(OcspResponseStatus),
}

/// A DER OCSPResponse ready to send, with what the HTTP layer needs for RFC 5019 6.2 headers.
#[derive(Clone, Debug)]
pub struct OcspAnswer {
    /// The DER OCSPResponse.
    pub der: Vec<u8>,
    /// What it is.
    pub kind: AnswerKind,
    /// A strong entity tag (quoted), derived from the DER.
    pub etag: String,
    /// Data the transport derives once per answer (e.g. formatted HTTP headers).
    pub transport: TransportCache,
}

/// A write-once slot in which the transport keeps what it derives from an answer, so that the
/// hot path does not recompute it per request. Cloning an answer leaves the clone's slot empty.
#[derive(Default)]
pub struct TransportCache(std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>);

impl TransportCache {
    /// The value of type `T` in the slot, computed by `init` on first use. `None` if the slot
    /// already holds a value of another type.
    pub fn get_or_init<T: std::any::Any + Send + Sync>(
        &self,
        init: impl FnOnce() -> T,
    ) -> Option<&T> {
        self.0.get_or_init(|| Box::new(init())).downcast_ref::<T>()
    }
}

impl Clone for TransportCache {
    fn clone(&self) -> Self {
        TransportCache::default()
    }
}

impl std::fmt::Debug for TransportCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "TransportCache(set)"
        } else {
            "TransportCache(empty)"
        })
    }
}

impl AsRef<[u8]> for OcspAnswer {
    fn as_ref(&self) -> &[u8] {
        &self.der
    }
}

impl OcspAnswer {
    fn new(der: Vec<u8>, kind: AnswerKind) -> Self {
        let etag = format!("\"{}\"", &crate::signer::sha256_hex(&der)[..32]);
        OcspAnswer {
            der,
            kind,
            etag,
            transport: TransportCache::default(),
        }
    }

    fn error(status: OcspResponseStatus) -> Arc<Self> {
        Arc::new(Self::new(error_response(status), AnswerKind::Error(status)))
    }

    /// The status of the certificate asked about, for signed responses.
    pub fn cert_status(&self) -> Option<&CertStatus> {
        match &self.kind {
            AnswerKind::Signed { status, .. } => Some(status),
            AnswerKind::Error(_) => None,
        }
    }

    /// thisUpdate, for signed responses.
    pub fn this_update(&self) -> Option<DateTime<Utc>> {
        match &self.kind {
            AnswerKind::Signed { this_update, .. } => Some(*this_update),
            AnswerKind::Error(_) => None,
        }
    }

    /// nextUpdate, for signed responses.
    pub fn next_update(&self) -> Option<DateTime<Utc>> {
        match &self.kind {
            AnswerKind::Signed { next_update, .. } => Some(*next_update),
            AnswerKind::Error(_) => None,
        }
    }

    fn fresh(&self, now: DateTime<Utc>) -> bool {
        self.next_update().is_some_and(|n| n > now)
    }
}

/// The result of [`Responder::lookup`].
#[derive(Debug)]
pub enum Lookup {
    /// Answer with this, now.
    Ready(Arc<OcspAnswer>),
    /// The request needs a live signature (or a store read): call [`Responder::answer_live`]
    /// off the async executor (e.g. in `spawn_blocking`).
    Live(LiveRequest),
}

/// A parsed request that [`Responder::lookup`] could not answer from memory.
#[derive(Debug)]
pub struct LiveRequest {
    parsed: ParsedRequest,
}

/// A response for another issuer's certificate, loaded from a file (e.g. the intermediate's
/// status signed by the root in a key ceremony) and served as is.
#[derive(Clone, Debug)]
pub struct ExternalResponse {
    /// DER (or PEM) OCSPResponse file; re-read when its modification time changes.
    pub path: PathBuf,
    /// Certificate of the key that signed it, or of the CA that issued the delegated responder
    /// certificate embedded in it (normally the root). The signature is checked at load.
    pub signer_cert_der: Vec<u8>,
}

/// What [`Responder::load`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Stored responses taken into memory.
    pub loaded: usize,
    /// Stored responses ignored (other responder key or issuer, undecodable).
    pub discarded: usize,
    /// Responses signed because none was stored, it was stale, or the status had changed.
    pub signed: usize,
}

/// What [`Responder::refresh_due`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefreshStats {
    /// Responses re-signed.
    pub refreshed: usize,
    /// Responses dropped (certificate expired and response stale, or certificate gone).
    pub dropped: usize,
    /// Re-signing failures (logged; retried on the next pass).
    pub failed: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ExternalKey {
    alg: Vec<u8>,
    name_hash: Vec<u8>,
    key_hash: Vec<u8>,
    serial: Vec<u8>,
}

impl ExternalKey {
    fn of(id: &x509_ocsp::CertId) -> Self {
        ExternalKey {
            alg: id.hash_algorithm.oid.as_bytes().to_vec(),
            name_hash: id.issuer_name_hash.as_bytes().to_vec(),
            key_hash: id.issuer_key_hash.as_bytes().to_vec(),
            serial: serial_magnitude(id.serial_number.as_bytes()).to_vec(),
        }
    }
}

/// Answers loaded from one file, by CertID.
type ExternalMap = HashMap<ExternalKey, Arc<OcspAnswer>>;

#[derive(Default)]
struct External {
    sources: Vec<(ExternalResponse, Option<SystemTime>, ExternalMap)>,
}

#[derive(Default)]
struct UnknownCache {
    map: HashMap<Vec<u8>, Arc<OcspAnswer>>,
    order: VecDeque<Vec<u8>>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Group signing of responses at issuance: callers queue their certificate; one of them (the
/// leader) signs one response for everything queued, the others wait for it.
#[derive(Default)]
struct IssuedQueue {
    /// (ticket, certificate), in ticket order.
    pending: VecDeque<(u64, CertRecord)>,
    next_ticket: u64,
    /// Every ticket below this one is finished (batches complete in ticket order).
    done: u64,
    /// The group a leader is signing, (ticket, serial magnitude); empty when nobody is.
    in_flight: Vec<(u64, Vec<u8>)>,
    /// Tickets someone waits for in [`Responder::await_issued`].
    awaiting: std::collections::HashSet<u64>,
    /// Awaited tickets whose group failed, with the error message.
    failed: HashMap<u64, String>,
    /// Responses signed at issuance, and certificates they covered.
    signatures: u64,
    certificates: u64,
    /// [`Responder::stop_issuance_signer`] was called: the signer thread signs what is queued
    /// and ends.
    stopping: bool,
}

/// A certificate queued by [`Responder::enqueue_issued`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "pass it to `await_issued`, or drop it when the issuance signer runs"]
pub struct IssuedTicket(u64);

/// Whether a response must be durable when [`Responder::install`] returns.
#[derive(Clone, Copy, Debug)]
enum Persist {
    Durable,
    /// Written, made durable by a later flush ([`Store::put_ocsp_response_lazy`]).
    Lazy,
    /// Not written: the group response stored under another serial covers it.
    MemoryOnly,
}

/// What the responses pre-signed at issuance have cost so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IssuanceSigningStats {
    /// Responses signed.
    pub signatures: u64,
    /// Certificates covered by them.
    pub certificates: u64,
}

/// The state of the delegated responder certificate ([`Responder::signer_cert_status`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignerCertStatus {
    /// Serial (magnitude).
    pub serial: Vec<u8>,
    /// notAfter: no response carries a later nextUpdate.
    pub not_after: DateTime<Utc>,
    /// Revocation time and reason, once the responder has seen it revoked in the store.
    pub revoked: Option<(DateTime<Utc>, crate::revocation::RevocationReason)>,
}

/// The OCSP responder for one issuing CA. Thread-safe; share it in an `Arc`.
pub struct Responder {
    issuer: OcspIssuer,
    key: ResponderKey,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: ResponderConfig,
    shards: Vec<RwLock<HashMap<Vec<u8>, Arc<OcspAnswer>>>>,
    sign_locks: Vec<Mutex<()>>,
    unknown: RwLock<UnknownCache>,
    external: RwLock<External>,
    /// Request DER -> serial, for requests already decoded once (RFC 5019 clients send the
    /// same bytes again and again). Holds no status: the answer always comes from the caches.
    /// Bounded in bytes ([`super::memo`]).
    memo: Memo,
    bucket: Mutex<Bucket>,
    /// Certificates waiting for their response pre-signed at issuance (see `on_issued`).
    issued: Mutex<IssuedQueue>,
    issued_done: Condvar,
    issued_arrival: Condvar,
    /// Serials whose response could not be signed at issuance or re-signed after a status
    /// change (the HSM failed): retried by every [`Responder::refresh_due`] pass until signed.
    resign_backlog: Mutex<std::collections::BTreeSet<Vec<u8>>>,
    /// Set once the delegated responder certificate is seen revoked: nothing is signed after.
    signer_revoked: Mutex<Option<(DateTime<Utc>, crate::revocation::RevocationReason)>>,
    malformed: Arc<OcspAnswer>,
    unauthorized: Arc<OcspAnswer>,
    try_later: Arc<OcspAnswer>,
    internal_error: Arc<OcspAnswer>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("key", &self.key)
            .field("cached", &self.len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

fn same_status(a: &CertStatus, b: &CertStatus) -> bool {
    match (a, b) {
        (
            CertStatus::Revoked { at: t1, reason: r1 },
            CertStatus::Revoked { at: t2, reason: r2 },
        ) => t1.timestamp() == t2.timestamp() && r1 == r2,
        _ => a == b,
    }
}

fn bucket_index(serial: &[u8], n: usize) -> usize {
    // Serials are random (DESIGN "Data"), so their last bytes spread evenly.
    let mut h: usize = 0;
    for b in serial.iter().rev().take(4) {
        h = (h << 8) | usize::from(*b);
    }
    h % n
}

impl Responder {
    /// A responder for certificates issued by `issuer_cert_der`, signing with `key`.
    ///
    /// Checks (fail closed): a CA key must be the issuer's key; a delegated certificate must be
    /// signed by the issuer and carry id-kp-OCSPSigning (RFC 6960 4.2.2.2). Call [`load`] next
    /// to fill the cache.
    ///
    /// [`load`]: Responder::load
    pub fn new(
        issuer_cert_der: &[u8],
        key: ResponderKey,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: ResponderConfig,
    ) -> Result<Self> {
        config.validate()?;
        let issuer = OcspIssuer::from_cert_der(issuer_cert_der)?;
        match &key.cert {
            None => {
                if key.signer.public_key_bits() != issuer.public_key_bits() {
                    return Err(Error::Issuer(
                        "OCSP signing key is not the issuer's key; configure a delegated responder certificate".into(),
                    ));
                }
            }
            Some(cert) => check_delegated(cert, &issuer)?,
        }
        let live_burst = f64::from(config.live_signing_burst);
        let responder = Responder {
            issuer,
            key,
            store,
            clock,
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            sign_locks: (0..SIGN_LOCKS).map(|_| Mutex::new(())).collect(),
            unknown: RwLock::new(UnknownCache::default()),
            external: RwLock::new(External::default()),
            memo: Memo::new(config.memo_max_bytes),
            bucket: Mutex::new(Bucket {
                tokens: live_burst,
                last: Instant::now(),
            }),
            issued: Mutex::new(IssuedQueue::default()),
            issued_done: Condvar::new(),
            issued_arrival: Condvar::new(),
            resign_backlog: Mutex::new(Default::default()),
            signer_revoked: Mutex::new(None),
            malformed: OcspAnswer::error(OcspResponseStatus::MalformedRequest),
            unauthorized: OcspAnswer::error(OcspResponseStatus::Unauthorized),
            try_later: OcspAnswer::error(OcspResponseStatus::TryLater),
            internal_error: OcspAnswer::error(OcspResponseStatus::InternalError),
            config,
        };
        // Fail closed at start: a delegated certificate that has expired or that this CA
        // revoked cannot sign (RFC 6960 4.2.2.2; README "Rotating the OCSP responder
        // certificate").
        responder.refresh_signer_revocation()?;
        responder.next_update_at(responder.clock.now())?;
        Ok(responder)
    }

    /// The delegated responder certificate's state; `None` when the CA key signs.
    pub fn signer_cert_status(&self) -> Option<SignerCertStatus> {
        let (serial, not_after) = self.key.cert_info.clone()?;
        Some(SignerCertStatus {
            serial,
            not_after,
            revoked: *lock(&self.signer_revoked),
        })
    }

    /// The nextUpdate of a response signed at `now`: `now + validity`, but never after the
    /// delegated responder certificate's notAfter (a response must not outlive the key that
    /// vouches for it: RFC 6960 4.2.2.2 and 3.2 item 6 make the client check the responder
    /// certificate, and with id-pkix-ocsp-nocheck it cannot ask about it). Refused
    /// (`OcspSignerUnusable`) once that certificate has expired or is revoked: the operator
    /// must rotate it; nothing falls back to another key silently.
    fn next_update_at(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
        let next = now + self.config.validity;
        let Some((serial, not_after)) = &self.key.cert_info else {
            return Ok(next);
        };
        if let Some((at, reason)) = *lock(&self.signer_revoked) {
            return Err(Error::OcspSignerUnusable {
                serial: hex::encode(serial),
                reason: format!("it was revoked at {at} ({reason})"),
            });
        }
        if *not_after <= now {
            return Err(Error::OcspSignerUnusable {
                serial: hex::encode(serial),
                reason: format!("it expired at {not_after}"),
            });
        }
        Ok(next.min(*not_after))
    }

    /// Whether a response with this nextUpdate is due for re-signing: within `refresh_before`
    /// of it, unless it already ends at the responder certificate's notAfter (re-signing
    /// could not extend it; it is left to run out).
    fn refresh_wanted(&self, next_update: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        next_update - now <= self.config.refresh_before
            && self
                .key
                .cert_info
                .as_ref()
                .is_none_or(|(_, not_after)| next_update < *not_after)
    }

    /// Read the delegated certificate's record: once it is revoked (here, by another node
    /// sharing the store, or before a restart), stop signing with it.
    fn refresh_signer_revocation(&self) -> Result<()> {
        let Some((serial, _)) = &self.key.cert_info else {
            return Ok(());
        };
        if let Some(rec) = self.store.get_cert(serial)? {
            if let crate::store::RecordStatus::Revoked { at, reason } = rec.status {
                self.mark_signer_revoked(at, reason);
            }
        }
        Ok(())
    }

    fn mark_signer_revoked(&self, at: DateTime<Utc>, reason: crate::revocation::RevocationReason) {
        let mut r = lock(&self.signer_revoked);
        if r.is_none() {
            *r = Some((at, reason));
            let serial = self
                .key
                .cert_info
                .as_ref()
                .map(|(s, _)| hex::encode(s))
                .unwrap_or_default();
            tracing::error!(%serial, revoked_at = %at, %reason, "the OCSP responder certificate is REVOKED: no OCSP response is signed with it any more (pre-signed responses are served until their nextUpdate); rotate it now: run the ocsp-signer ceremony, set ocsp.signer_key/ocsp.signer_cert, restart the nodes");
        }
    }

    /// The issuer this responder answers for.
    pub fn issuer(&self) -> &OcspIssuer {
        &self.issuer
    }

    /// The clock it signs by.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The settings.
    pub fn config(&self) -> &ResponderConfig {
        &self.config
    }

    /// Number of certificates with a response in memory.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }

    /// Whether no response is in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pre-signed response for `serial`, if one is in memory.
    pub fn cached(&self, serial: &[u8]) -> Option<Arc<OcspAnswer>> {
        let serial = serial_magnitude(serial);
        read(self.shard(serial)).get(serial).cloned()
    }

    fn shard(&self, serial: &[u8]) -> &RwLock<HashMap<Vec<u8>, Arc<OcspAnswer>>> {
        &self.shards[bucket_index(serial, SHARDS)]
    }

    fn sign_lock(&self, serial: &[u8]) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.sign_locks[bucket_index(serial, SIGN_LOCKS)])
    }

    /// Fill the cache at start: take the stored responses that this key signed for this
    /// issuer, then sign what is missing, stale (within `refresh_before` of nextUpdate) or out
    /// of date with the store (revoked since), for every unexpired certificate. A restart
    /// therefore signs only what changed.
    pub fn load(&self) -> Result<LoadStats> {
        let mut stats = LoadStats::default();
        let own_key_hash = key_hash(self.key.signer.public_key_bits());
        // Serials whose answer came from their own record: a record stored under a serial is
        // the latest written for it, so it wins over a group response stored under another
        // serial; between group responses the newer wins.
        let mut own_records = std::collections::HashSet::new();
        self.store.for_each_ocsp_response(&mut |stored| {
            let Some(answers) = self.check_stored(&stored, &own_key_hash) else {
                stats.discarded += 1;
                return Ok(());
            };
            let own = serial_magnitude(&stored.serial).to_vec();
            for (serial, answer) in answers {
                let mut shard = write(self.shard(&serial));
                let replace = if serial == own {
                    own_records.insert(serial.clone())
                } else {
                    !own_records.contains(&serial)
                        && shard
                            .get(&serial)
                            .is_none_or(|old| old.this_update() < answer.this_update())
                };
                if replace && shard.insert(serial, answer).is_none() {
                    stats.loaded += 1;
                }
            }
            Ok(())
        })?;
        let now = self.clock.now();
        let mut todo = Vec::new();
        self.store.for_each_cert(&mut |rec| {
            if rec.not_after <= now {
                return Ok(());
            }
            let status = rec.cert_status();
            let up_to_date = self.cached(&rec.serial).is_some_and(|a| {
                a.next_update()
                    .is_some_and(|n| n > now && !self.refresh_wanted(n, now))
                    && a.cert_status().is_some_and(|s| same_status(s, &status))
            });
            if !up_to_date {
                todo.push(rec.serial);
            }
            Ok(())
        })?;
        for serial in todo {
            let _g = self.sign_lock(serial_magnitude(&serial));
            // Re-read under the lock: a revocation may have happened meanwhile.
            if let Some(rec) = self.store.get_cert(&serial)? {
                self.sign_and_install(&rec.serial, &rec.cert_status())?;
                stats.signed += 1;
            }
        }
        tracing::info!(
            loaded = stats.loaded,
            discarded = stats.discarded,
            signed = stats.signed,
            "OCSP responder loaded"
        );
        Ok(stats)
    }

    /// The answers a stored response gives: one per serial of this issuer it covers (a
    /// response signed at issuance for a group is stored once, under its first serial).
    /// `None` if it is not ours (other key, undecodable) or does not cover its own serial.
    fn check_stored(
        &self,
        stored: &StoredOcspResponse,
        own_key_hash: &[u8],
    ) -> Option<Vec<(Vec<u8>, Arc<OcspAnswer>)>> {
        let parsed = parse_response(&stored.der).ok()?;
        let basic = parsed.basic.as_ref()?;
        match &basic.tbs_response_data.responder_id {
            ResponderId::ByKey(h) if h.as_bytes() == own_key_hash => {}
            _ => return None,
        }
        let produced_at = parsed.produced_at()?;
        let next_update = parsed.next_update()?;
        let own = serial_magnitude(&stored.serial);
        let mut answers: Vec<(Vec<u8>, Arc<OcspAnswer>)> = Vec::new();
        for single in parsed.singles() {
            if self.issuer.matches(&single.cert_id).is_none() {
                continue;
            }
            let serial = serial_magnitude(single.cert_id.serial_number.as_bytes());
            if answers.iter().any(|(s, _)| s == serial) {
                continue;
            }
            let status = from_ocsp_status(&single.cert_status);
            let this_update = from_gtime(&single.this_update);
            // The serials of a group share one answer (same bytes, status and times).
            let shared = answers.iter().map(|(_, a)| a).find(|a| {
                a.this_update() == Some(this_update)
                    && a.cert_status().is_some_and(|s| *s == status)
            });
            let answer = match shared {
                Some(a) => a.clone(),
                None => Arc::new(OcspAnswer::new(
                    stored.der.clone(),
                    AnswerKind::Signed {
                        status,
                        produced_at,
                        this_update,
                        next_update,
                        cacheable: true,
                    },
                )),
            };
            answers.push((serial.to_vec(), answer));
        }
        answers.iter().any(|(s, _)| s == own).then_some(answers)
    }

    /// Sign the response for a certificate just issued (status good), persist it and keep it
    /// in memory: [`enqueue_issued`] then [`await_issued`].
    ///
    /// [`enqueue_issued`]: Responder::enqueue_issued
    /// [`await_issued`]: Responder::await_issued
    pub fn on_issued(&self, rec: &CertRecord) -> Result<()> {
        let ticket = self.enqueue_issued(rec);
        self.await_issued(ticket)
    }

    /// Queue a certificate just stored for its first response (status good); cheap, signs
    /// nothing. Responses at issuance are signed in groups, one response for every
    /// certificate queued (up to [`ResponderConfig::issuance_batch_max`]), by whoever comes
    /// first: the issuance signer thread ([`start_issuance_signer`]), a caller of
    /// [`await_issued`] with this ticket, or an OCSP request about one of them. Without
    /// concurrent issuance every response covers one certificate.
    ///
    /// [`await_issued`]: Responder::await_issued
    /// [`start_issuance_signer`]: Responder::start_issuance_signer
    pub fn enqueue_issued(&self, rec: &CertRecord) -> IssuedTicket {
        let mut q = lock(&self.issued);
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.pending.push_back((ticket, rec.clone()));
        self.issued_arrival.notify_one();
        IssuedTicket(ticket)
    }

    /// Wait until the certificate of `ticket` has its response in memory, signing the group
    /// it belongs to if nobody else is. A certificate that already has a response when its
    /// group is signed (it was revoked meanwhile) keeps that response.
    ///
    /// A group's response is stored once, under its first serial, without waiting for a
    /// flush; [`load`] gives it to every serial it covers, and after a crash signs again
    /// whatever is missing.
    ///
    /// [`load`]: Responder::load
    pub fn await_issued(&self, ticket: IssuedTicket) -> Result<()> {
        let ticket = ticket.0;
        let mut q = lock(&self.issued);
        q.awaiting.insert(ticket);
        loop {
            if q.done > ticket {
                q.awaiting.remove(&ticket);
                return match q.failed.remove(&ticket) {
                    None => Ok(()),
                    Some(msg) => Err(Error::OcspPresign(msg)),
                };
            }
            if !q.in_flight.is_empty() {
                q = self.issued_done.wait(q).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            q = self.lead_group(q);
        }
    }

    /// Sign the next group of queued certificates, for a background signer: wait up to `idle`
    /// for a first certificate, then up to `window` for the group to fill
    /// ([`ResponderConfig::issuance_batch_max`]), then sign it. Failures are logged; the
    /// certificates concerned are then signed when asked about, or at the next start.
    pub fn sign_issued_group(&self, window: std::time::Duration, idle: std::time::Duration) {
        let mut q = lock(&self.issued);
        if q.pending.is_empty() && !q.stopping {
            q = self
                .issued_arrival
                .wait_timeout(q, idle)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if q.pending.is_empty() {
            return;
        }
        let deadline = Instant::now() + window;
        while q.pending.len() < self.config.issuance_batch_max && !q.stopping {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            q = self
                .issued_arrival
                .wait_timeout(q, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        while !q.in_flight.is_empty() {
            q = self.issued_done.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        if !q.pending.is_empty() {
            drop(self.lead_group(q));
        }
    }

    /// Run [`sign_issued_group`] on a thread of its own until the responder is dropped:
    /// certificates queued by [`enqueue_issued`] get their response within about
    /// [`ResponderConfig::issuance_batch_window`] (plus one signature) without their issuance
    /// waiting for it, and one response covers every certificate queued within the window
    /// (at most [`ResponderConfig::issuance_batch_max`]).
    ///
    /// [`sign_issued_group`]: Responder::sign_issued_group
    /// [`enqueue_issued`]: Responder::enqueue_issued
    pub fn start_issuance_signer(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let window = self.config.issuance_batch_window;
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("ocsp-issuance".into())
            .spawn(move || {
                while let Some(r) = weak.upgrade() {
                    r.sign_issued_group(window, std::time::Duration::from_millis(200));
                    let q = lock(&r.issued);
                    if q.stopping && q.pending.is_empty() {
                        break;
                    }
                }
            })
    }

    /// Ask the issuance signer thread ([`start_issuance_signer`]) to sign what is still queued
    /// and end; join its handle afterwards. Part of shutdown: the thread signs with the HSM,
    /// so it must be gone before the PKCS#11 module is finalized (a thread inside
    /// `C_SignInit` while the process runs SoftHSM's destructors dies of SIGSEGV). Anything
    /// queued later is signed by whoever asks for it ([`await_issued`]), or at the next start.
    ///
    /// [`start_issuance_signer`]: Responder::start_issuance_signer
    /// [`await_issued`]: Responder::await_issued
    pub fn stop_issuance_signer(&self) {
        lock(&self.issued).stopping = true;
        self.issued_arrival.notify_all();
        self.issued_done.notify_all();
    }

    /// If `serial` is queued for its first response, or its group is being signed, wait for
    /// it (signing its group if nobody is); whether it was.
    fn await_queued(&self, serial: &[u8]) -> bool {
        let ticket = {
            let q = lock(&self.issued);
            q.in_flight
                .iter()
                .find(|(_, s)| s.as_slice() == serial)
                .map(|(t, _)| IssuedTicket(*t))
                .or_else(|| {
                    q.pending
                        .iter()
                        .find(|(_, r)| serial_magnitude(&r.serial) == serial)
                        .map(|(t, _)| IssuedTicket(*t))
                })
        };
        match ticket {
            Some(t) => {
                let _ = self.await_issued(t);
                true
            }
            None => false,
        }
    }

    /// Take the next group off the queue (the caller checked that nobody else is signing and
    /// that something is queued), sign it without holding the queue lock, record the outcome,
    /// wake the waiters.
    fn lead_group<'a>(
        &'a self,
        mut q: std::sync::MutexGuard<'a, IssuedQueue>,
    ) -> std::sync::MutexGuard<'a, IssuedQueue> {
        let take = q.pending.len().min(self.config.issuance_batch_max);
        let batch: Vec<(u64, CertRecord)> = q.pending.drain(..take).collect();
        q.in_flight = batch
            .iter()
            .map(|(t, r)| (*t, serial_magnitude(&r.serial).to_vec()))
            .collect();
        drop(q);
        let recs: Vec<&CertRecord> = batch.iter().map(|(_, r)| r).collect();
        let result = self.sign_issued_batch(&recs);
        if result.is_err() {
            // Signed by the next refresh pass (or live, when asked for before that).
            lock(&self.resign_backlog)
                .extend(recs.iter().map(|r| serial_magnitude(&r.serial).to_vec()));
        }
        let mut q = lock(&self.issued);
        q.in_flight.clear();
        if let Some((last, _)) = batch.last() {
            q.done = q.done.max(last + 1);
        }
        match result {
            Ok(signed) => {
                if signed > 0 {
                    q.signatures += 1;
                    q.certificates += signed as u64;
                }
            }
            Err(e) => {
                tracing::error!(certificates = batch.len(), error = %e, "signing OCSP responses at issuance failed; the next refresh pass signs them (or a request for one before that)");
                let msg = e.to_string();
                for (t, _) in &batch {
                    if q.awaiting.contains(t) {
                        q.failed.insert(*t, msg.clone());
                    }
                }
            }
        }
        self.issued_done.notify_all();
        q
    }

    /// Responses signed at issuance so far, and the certificates they covered.
    pub fn issuance_signing_stats(&self) -> IssuanceSigningStats {
        let q = lock(&self.issued);
        IssuanceSigningStats {
            signatures: q.signatures,
            certificates: q.certificates,
        }
    }

    /// One response (status good) for every certificate of `recs` that has none yet; returns
    /// how many it covered. Holds the sign locks of all their serials, taken in index order.
    fn sign_issued_batch(&self, recs: &[&CertRecord]) -> Result<usize> {
        let mut locks: Vec<usize> = recs
            .iter()
            .map(|r| bucket_index(serial_magnitude(&r.serial), SIGN_LOCKS))
            .collect();
        locks.sort_unstable();
        locks.dedup();
        let _guards: Vec<_> = locks.iter().map(|&i| lock(&self.sign_locks[i])).collect();
        let mut serials: Vec<Vec<u8>> = Vec::with_capacity(recs.len());
        for r in recs {
            let serial = serial_magnitude(&r.serial).to_vec();
            if self.cached(&serial).is_none() && !serials.contains(&serial) {
                serials.push(serial);
            }
        }
        if serials.is_empty() {
            return Ok(0);
        }
        let refs: Vec<&[u8]> = serials.iter().map(Vec::as_slice).collect();
        let answer = self.sign_canonical_many(&refs, &CertStatus::Good)?;
        // Stored once, under the first serial: `load` gives it to every serial it covers.
        for (i, serial) in serials.iter().enumerate() {
            let persist = if i == 0 {
                Persist::Lazy
            } else {
                Persist::MemoryOnly
            };
            self.install(serial, answer.clone(), persist)?;
        }
        Ok(serials.len())
    }

    /// Re-sign the response of a certificate just revoked (`rec` as the store returned it),
    /// persist it and serve it from now on. On failure the old response is withdrawn from
    /// memory, so that no `good` answer outlives the revocation (fail closed: the certificate
    /// is then answered live, or `tryLater`), and the serial goes on the re-sign backlog that
    /// every [`refresh_due`](Self::refresh_due) pass retries until it is signed.
    ///
    /// Revoking the delegated responder certificate itself: its own `revoked` answer is signed
    /// (a last signature), then the responder stops signing ([`SignerCertStatus::revoked`]).
    pub fn on_revoked(&self, rec: &CertRecord) -> Result<()> {
        let serial = serial_magnitude(&rec.serial).to_vec();
        let _g = self.sign_lock(&serial);
        let own = self
            .key
            .cert_info
            .as_ref()
            .is_some_and(|(s, _)| *s == serial);
        if let (true, crate::store::RecordStatus::Revoked { at, reason }) = (own, &rec.status) {
            if let Err(e) = self.sign_and_install(&rec.serial, &rec.cert_status()) {
                tracing::error!(error = %e, "signing the OCSP responder certificate's own revoked answer failed; the CRL lists it");
                write(self.shard(&serial)).remove(&serial);
            }
            lock(&self.resign_backlog).remove(&serial);
            self.mark_signer_revoked(*at, *reason);
            return Ok(());
        }
        let r = self.sign_and_install(&rec.serial, &rec.cert_status());
        if r.is_err() {
            write(self.shard(&serial)).remove(&serial);
            lock(&self.resign_backlog).insert(serial);
        } else {
            lock(&self.resign_backlog).remove(&serial);
        }
        r
    }

    /// Serials whose response could not be signed at issuance or re-signed after a status
    /// change (see [`on_revoked`](Self::on_revoked)), waiting for the next refresh pass.
    pub fn resign_backlog(&self) -> usize {
        lock(&self.resign_backlog).len()
    }

    /// If `serial` is on the re-sign backlog, re-sign it now from the store's record (a
    /// repeated revocation after an HSM failure repairs its OCSP answer at once). `None` if it
    /// is not on the backlog.
    pub fn retry_resign(&self, serial: &[u8]) -> Option<Result<()>> {
        let serial = serial_magnitude(serial).to_vec();
        if !lock(&self.resign_backlog).contains(&serial) {
            return None;
        }
        Some(match self.store.get_cert(&serial) {
            Ok(Some(rec)) => self.on_revoked(&rec),
            Ok(None) => {
                lock(&self.resign_backlog).remove(&serial);
                Ok(())
            }
            Err(e) => Err(e),
        })
    }

    /// Sign what is on the re-sign backlog (issuances and status changes the HSM failed to
    /// sign), then
    /// every response within `refresh_before` of its nextUpdate, with the status the store
    /// holds now; drop responses of expired certificates once they are stale; re-read external
    /// response files that changed. Call it periodically (e.g. every minute).
    ///
    /// While the delegated responder certificate cannot sign (expired, revoked) nothing is
    /// signed: one error per pass, pre-signed responses run out at their nextUpdate (never
    /// after the certificate's notAfter), and requests needing a new signature get
    /// `tryLater`.
    pub fn refresh_due(&self) -> Result<RefreshStats> {
        let now = self.clock.now();
        let mut stats = RefreshStats::default();
        if let Err(e) = self.refresh_signer_revocation() {
            tracing::error!(error = %e, "reading the OCSP responder certificate's record failed");
        }
        if let Err(e) = self.next_update_at(now) {
            tracing::error!(error = %e, "OCSP refresh pass skipped: nothing can be signed");
            stats.failed += self.reload_external();
            return Ok(stats);
        }
        self.sign_backlog(&mut stats);
        let mut due = Vec::new();
        for shard in &self.shards {
            for (serial, a) in read(shard).iter() {
                if a.next_update()
                    .is_none_or(|n| n <= now || self.refresh_wanted(n, now))
                {
                    due.push(serial.clone());
                }
            }
        }
        for serial in due {
            let _g = self.sign_lock(&serial);
            let stale = self.cached(&serial).is_none_or(|a| !a.fresh(now));
            match self.store.get_cert(&serial) {
                Ok(Some(rec)) if rec.not_after > now => {
                    match self.sign_and_install(&rec.serial, &rec.cert_status()) {
                        Ok(()) => stats.refreshed += 1,
                        Err(e) => {
                            tracing::error!(serial = %hex::encode(&serial), error = %e, "re-signing OCSP response failed");
                            stats.failed += 1;
                        }
                    }
                }
                Ok(Some(_)) if !stale => {}
                Ok(_) => {
                    write(self.shard(&serial)).remove(&serial);
                    stats.dropped += 1;
                }
                Err(e) => {
                    tracing::error!(serial = %hex::encode(&serial), error = %e, "store lookup for OCSP refresh failed");
                    stats.failed += 1;
                }
            }
        }
        {
            let mut u = write(&self.unknown);
            u.map.retain(|_, a| a.fresh(now));
            let UnknownCache { map, order } = &mut *u;
            order.retain(|k| map.contains_key(k));
        }
        stats.failed += self.reload_external();
        Ok(stats)
    }

    /// Sign what the HSM failed to sign (see [`resign_backlog`](Self::resign_backlog)):
    /// unrevoked certificates (issuances) in groups, as at issuance; revoked ones each with
    /// its own status, through [`on_revoked`](Self::on_revoked), which keeps the backlog.
    fn sign_backlog(&self, stats: &mut RefreshStats) {
        let backlog: Vec<Vec<u8>> = lock(&self.resign_backlog).iter().cloned().collect();
        let mut unrevoked: Vec<CertRecord> = Vec::new();
        for serial in backlog {
            let signed = match self.store.get_cert(&serial) {
                Ok(Some(rec)) if !rec.is_revoked() => {
                    unrevoked.push(rec);
                    continue;
                }
                Ok(Some(rec)) => self.on_revoked(&rec),
                Ok(None) => {
                    lock(&self.resign_backlog).remove(&serial);
                    continue;
                }
                Err(e) => Err(e),
            };
            match signed {
                Ok(()) => stats.refreshed += 1,
                Err(e) => {
                    tracing::error!(serial = %hex::encode(&serial), error = %e, "re-signing OCSP response after a status change failed again");
                    stats.failed += 1;
                }
            }
        }
        for group in unrevoked.chunks(self.config.issuance_batch_max.max(1)) {
            let recs: Vec<&CertRecord> = group.iter().collect();
            match self.sign_issued_batch(&recs) {
                Ok(_) => {
                    stats.refreshed += group.len();
                    let mut backlog = lock(&self.resign_backlog);
                    for r in group {
                        backlog.remove(serial_magnitude(&r.serial));
                    }
                }
                Err(e) => {
                    tracing::error!(certificates = group.len(), error = %e, "signing OCSP responses left over from issuance failed again");
                    stats.failed += group.len();
                }
            }
        }
    }

    fn sign_canonical(&self, serial: &[u8], status: &CertStatus) -> Result<Arc<OcspAnswer>> {
        self.sign_canonical_many(&[serial], status)
    }

    /// One response with a SingleResponse per (serial, CertID hash algorithm), all with
    /// `status`.
    fn sign_canonical_many(
        &self,
        serials: &[&[u8]],
        status: &CertStatus,
    ) -> Result<Arc<OcspAnswer>> {
        let now = self.clock.now();
        let next = self.next_update_at(now)?;
        let mut singles = Vec::with_capacity(serials.len() * PRESIGNED_ALGS.len());
        for serial in serials {
            for alg in PRESIGNED_ALGS {
                singles.push(single(
                    self.issuer.cert_id(alg, serial)?,
                    status,
                    now,
                    next,
                )?);
            }
        }
        let der = sign_basic(
            self.key.signer.as_ref(),
            self.key.cert.as_ref(),
            singles,
            now,
            None,
        )?;
        Ok(Arc::new(OcspAnswer::new(
            der,
            AnswerKind::Signed {
                status: status.clone(),
                produced_at: now,
                this_update: now,
                next_update: next,
                cacheable: true,
            },
        )))
    }

    /// Sign, persist, then serve (the caller holds the serial's sign lock).
    fn sign_and_install(&self, serial: &[u8], status: &CertStatus) -> Result<()> {
        let serial = serial_magnitude(serial);
        let answer = self.sign_canonical(serial, status)?;
        self.install(serial, answer, Persist::Durable)
    }

    /// Persist `answer` as the response for `serial` (magnitude), then serve it (the caller
    /// holds the serial's sign lock).
    fn install(&self, serial: &[u8], answer: Arc<OcspAnswer>, persist: Persist) -> Result<()> {
        let (this_update, next_update) = match &answer.kind {
            AnswerKind::Signed {
                this_update,
                next_update,
                ..
            } => (*this_update, *next_update),
            AnswerKind::Error(_) => {
                return Err(Error::Corrupt("signed OCSP answer without validity".into()))
            }
        };
        let stored = || StoredOcspResponse {
            serial: serial.to_vec(),
            der: answer.der.clone(),
            this_update,
            next_update,
        };
        match persist {
            Persist::Durable => self.store.put_ocsp_response(&stored())?,
            Persist::Lazy => self.store.put_ocsp_response_lazy(&stored())?,
            Persist::MemoryOnly => {}
        }
        write(self.shard(serial)).insert(serial.to_vec(), answer);
        let mut u = write(&self.unknown);
        if u.map.remove(serial).is_some() {
            u.order.retain(|k| k != serial);
        }
        Ok(())
    }

    /// Answer from memory: the pre-signed response, a cached `unknown`, a loaded external
    /// response, or a precomputed error. Performs no HSM operation and no I/O. Returns
    /// [`Lookup::Live`] when a signature is needed (see [`answer_live`]).
    ///
    /// [`answer_live`]: Responder::answer_live
    pub fn lookup(&self, request_der: &[u8]) -> Lookup {
        // Fast path: bytes seen before map to a serial without decoding them again.
        if let Some(a) = self.memo_answer(request_der) {
            return Lookup::Ready(a);
        }
        let parsed = match parse_request(request_der, self.config.max_certs_per_request) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "malformed OCSP request");
                return Lookup::Ready(self.malformed.clone());
            }
        };
        let [rc] = parsed.certs.as_slice() else {
            // Several CertIDs: one signature over all of them (RFC 6960 4.2.2.3).
            return Lookup::Live(LiveRequest { parsed });
        };
        let Some(alg) = self.issuer.matches(&rc.cert_id) else {
            return Lookup::Ready(self.external_answer(rc));
        };
        if self.config.echo_nonce && parsed.nonce.is_some() {
            return Lookup::Live(LiveRequest { parsed });
        }
        if PRESIGNED_ALGS.contains(&alg) {
            if let Some(a) = self.presigned(&rc.serial, self.clock.now()) {
                // Memoised only for a certificate answered from memory, and only in the
                // canonical encoding: padding, nonces or extensions cannot grow the memo.
                if self.memo.max_bytes() > 0 && canonical_request(request_der, &rc.cert_id) {
                    self.memo.insert(request_der, &rc.serial);
                }
                return Lookup::Ready(a);
            }
        }
        Lookup::Live(LiveRequest { parsed })
    }

    /// A fresh pre-signed answer (or cached `unknown`) for a serial.
    fn presigned(&self, serial: &[u8], now: DateTime<Utc>) -> Option<Arc<OcspAnswer>> {
        if let Some(a) = read(self.shard(serial))
            .get(serial)
            .filter(|a| a.fresh(now))
        {
            return Some(a.clone());
        }
        read(&self.unknown)
            .map
            .get(serial)
            .filter(|a| a.fresh(now))
            .cloned()
    }

    /// The answer for request bytes decoded before: only single-CertID requests for this
    /// issuer, with a SHA-1/SHA-256 CertID and no nonce, are memoised.
    fn memo_answer(&self, request_der: &[u8]) -> Option<Arc<OcspAnswer>> {
        let now = self.clock.now();
        self.memo
            .with(request_der, |serial| self.presigned(serial, now))
            .flatten()
    }

    /// Sizes of the request memo (entries, bytes, bound, evictions).
    pub fn memo_stats(&self) -> MemoStats {
        self.memo.stats()
    }

    fn external_answer(&self, rc: &RequestedCert) -> Arc<OcspAnswer> {
        let key = ExternalKey::of(&rc.cert_id);
        let ext = read(&self.external);
        for (src, _, map) in &ext.sources {
            if let Some(a) = map.get(&key) {
                if a.fresh(self.clock.now()) {
                    return a.clone();
                }
                tracing::error!(path = %src.path.display(), "loaded OCSP response is past its nextUpdate; run the OCSP ceremony again");
            }
        }
        self.unauthorized.clone()
    }

    /// Answer a request that needs a signature or a store read. Blocking (HSM, store): call it
    /// off the async executor. Live signatures are rate limited
    /// ([`ResponderConfig::live_signing_rate`]); over the limit, an unknown serial gets
    /// `unauthorized` (RFC 5019 2.2.3), a nonce is ignored in favour of the pre-signed
    /// response, and other requests get `tryLater`.
    pub fn answer_live(&self, live: LiveRequest) -> Arc<OcspAnswer> {
        let parsed = live.parsed;
        let now = self.clock.now();
        let nonce = if self.config.echo_nonce {
            parsed.nonce.clone()
        } else {
            None
        };
        if parsed
            .certs
            .iter()
            .any(|rc| self.issuer.matches(&rc.cert_id).is_none())
        {
            return self.unauthorized.clone();
        }
        let [rc] = parsed.certs.as_slice() else {
            if !self.take_token() {
                return self.try_later.clone();
            }
            return self.sign_exact(&parsed.certs, nonce.as_deref(), now);
        };
        let mut cached = self.cached(&rc.serial).filter(|a| a.fresh(now));
        // A certificate just issued whose response is still queued: wait for it.
        if cached.is_none() && self.await_queued(serial_magnitude(&rc.serial)) {
            cached = self.cached(&rc.serial).filter(|a| a.fresh(now));
        }
        let canonical = rc.hash_alg.is_some_and(|a| PRESIGNED_ALGS.contains(&a));
        if nonce.is_none() && canonical {
            if let Some(a) = cached {
                return a;
            }
        }
        if !self.take_token() {
            return match cached {
                Some(a) if canonical => a,
                _ => self.unauthorized.clone(),
            };
        }
        if nonce.is_some() || !canonical {
            return self.sign_exact(&parsed.certs, nonce.as_deref(), now);
        }
        // A cache miss on a SHA-1/SHA-256 CertID: a certificate this process has not signed
        // for yet (issued elsewhere, expired and dropped) or a serial never issued.
        let _g = self.sign_lock(&rc.serial);
        match self.store.get_cert(&rc.serial) {
            Ok(Some(rec)) => match self.sign_and_install(&rec.serial, &rec.cert_status()) {
                Ok(()) => self
                    .cached(&rc.serial)
                    .unwrap_or_else(|| self.internal_error.clone()),
                Err(e) => {
                    tracing::error!(error = %e, "signing OCSP response failed");
                    self.try_later.clone()
                }
            },
            Ok(None) => match self.sign_canonical(&rc.serial, &CertStatus::Unknown) {
                Ok(a) => {
                    let mut u = write(&self.unknown);
                    while u.map.len() >= self.config.unknown_cache_size.max(1) {
                        let Some(old) = u.order.pop_front() else {
                            break;
                        };
                        u.map.remove(&old);
                    }
                    if self.config.unknown_cache_size > 0 {
                        u.order.push_back(rc.serial.clone());
                        u.map.insert(rc.serial.clone(), a.clone());
                    }
                    a
                }
                Err(e) => {
                    tracing::error!(error = %e, "signing OCSP unknown response failed");
                    self.try_later.clone()
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "store lookup for OCSP failed");
                self.internal_error.clone()
            }
        }
    }

    /// Sign a response for exactly these CertIDs, echoed as sent, with the nonce if given.
    fn sign_exact(
        &self,
        certs: &[RequestedCert],
        nonce: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Arc<OcspAnswer> {
        let next = match self.next_update_at(now) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "live OCSP signing refused");
                return self.try_later.clone();
            }
        };
        let mut singles: Vec<SingleResponse> = Vec::with_capacity(certs.len());
        let mut first_status = None;
        for rc in certs {
            let status = match self
                .cached(&rc.serial)
                .and_then(|a| a.cert_status().cloned())
            {
                Some(s) => s,
                None => match self.store.get_cert(&rc.serial) {
                    Ok(Some(rec)) => rec.cert_status(),
                    Ok(None) => CertStatus::Unknown,
                    Err(e) => {
                        tracing::error!(error = %e, "store lookup for OCSP failed");
                        return self.internal_error.clone();
                    }
                },
            };
            match single(rc.cert_id.clone(), &status, now, next) {
                Ok(s) => singles.push(s),
                Err(_) => return self.internal_error.clone(),
            }
            first_status.get_or_insert(status);
        }
        let ext = match nonce.map(nonce_extension).transpose() {
            Ok(e) => e.map(|e| vec![e]),
            Err(_) => return self.malformed.clone(),
        };
        match sign_basic(
            self.key.signer.as_ref(),
            self.key.cert.as_ref(),
            singles,
            now,
            ext,
        ) {
            Ok(der) => Arc::new(OcspAnswer::new(
                der,
                AnswerKind::Signed {
                    status: first_status.unwrap_or(CertStatus::Unknown),
                    produced_at: now,
                    this_update: now,
                    next_update: next,
                    cacheable: nonce.is_none(),
                },
            )),
            Err(e) => {
                tracing::error!(error = %e, "live OCSP signing failed");
                self.try_later.clone()
            }
        }
    }

    fn take_token(&self) -> bool {
        let rate = f64::from(self.config.live_signing_rate);
        if rate <= 0.0 {
            return false;
        }
        let mut b = lock(&self.bucket);
        let now = Instant::now();
        let burst = f64::from(self.config.live_signing_burst);
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Answer a request completely (blocking when a live signature is needed).
    pub fn respond(&self, request_der: &[u8]) -> Arc<OcspAnswer> {
        match self.lookup(request_der) {
            Lookup::Ready(a) => a,
            Lookup::Live(l) => self.answer_live(l),
        }
    }

    /// The precomputed `malformedRequest` response (for transport-level errors such as a bad
    /// base64 path or an oversized body).
    pub fn malformed_request(&self) -> Arc<OcspAnswer> {
        self.malformed.clone()
    }

    /// Serve a response loaded from a file for the CertIDs it contains (another issuer's
    /// certificates: normally the intermediate, signed by the root). The file is read and its
    /// signature checked now (fail closed), and re-read by [`refresh_due`] when it changes.
    /// Returns the number of CertIDs it answers.
    ///
    /// [`refresh_due`]: Responder::refresh_due
    pub fn add_external(&self, source: ExternalResponse) -> Result<usize> {
        let (mtime, map) = load_external(&source, self.clock.now())?;
        let n = map.len();
        write(&self.external).sources.push((source, mtime, map));
        Ok(n)
    }

    /// Re-read external response files whose modification time changed; returns how many
    /// failed (those keep their previous response).
    fn reload_external(&self) -> usize {
        let now = self.clock.now();
        let mut failed = 0;
        let mut ext = write(&self.external);
        for (src, mtime, map) in ext.sources.iter_mut() {
            let current = std::fs::metadata(&src.path).and_then(|m| m.modified()).ok();
            if current.is_some() && current == *mtime {
                continue;
            }
            match load_external(src, now) {
                Ok((t, m)) => {
                    tracing::info!(path = %src.path.display(), "reloaded OCSP response file");
                    *mtime = t;
                    *map = m;
                }
                Err(e) => {
                    tracing::error!(path = %src.path.display(), error = %e, "cannot reload OCSP response file; keeping the previous one");
                    failed += 1;
                }
            }
        }
        failed
    }
}

/// Read, verify and check one external response file. Refused (fail closed): a signature
/// that does not verify, a status other than successful, a SingleResponse that has expired
/// (nextUpdate not after `now`) or whose validity interval exceeds
/// [`super::MAX_CA_RESPONSE_VALIDITY_DAYS`] (CA/B Forum BR 4.9.10: the status of a
/// subordinate CA is updated at least every twelve months; the interval counts both ends).
fn load_external(
    src: &ExternalResponse,
    now: DateTime<Utc>,
) -> Result<(Option<SystemTime>, ExternalMap)> {
    let io = |e| Error::Io {
        path: src.path.clone(),
        source: e,
    };
    let mtime = std::fs::metadata(&src.path).and_then(|m| m.modified()).ok();
    let bytes = std::fs::read(&src.path).map_err(io)?;
    let der = if bytes.starts_with(b"-----BEGIN") {
        der::pem::decode_vec(&bytes)
            .map_err(|e| Error::Der(e.into()))?
            .1
    } else {
        bytes
    };
    let parsed = parse_response(&der)?;
    if parsed.status != OcspResponseStatus::Successful {
        return Err(Error::Config {
            path: src.path.display().to_string(),
            reason: format!(
                "OCSP response status is {:?}, not successful",
                parsed.status
            ),
        });
    }
    let signer = Certificate::from_der(&src.signer_cert_der).map_err(|e| {
        Error::Issuer(format!(
            "cannot parse the signer certificate for {}: {e}",
            src.path.display()
        ))
    })?;
    parsed
        .verify_signature(&signer.tbs_certificate.subject_public_key_info.to_der()?)
        .map_err(|_| Error::Config {
            path: src.path.display().to_string(),
            reason:
                "OCSP response signature does not verify with the configured signer certificate"
                    .into(),
        })?;
    let produced_at = parsed.produced_at().unwrap_or_default();
    let mut map = HashMap::new();
    for s in parsed.singles() {
        let Some(next_update) = s.next_update.as_ref().map(from_gtime) else {
            continue;
        };
        let this_update = from_gtime(&s.this_update);
        let bad = |reason: String| Error::Config {
            path: src.path.display().to_string(),
            reason,
        };
        if super::validity_interval(this_update, next_update)
            > Duration::days(super::MAX_CA_RESPONSE_VALIDITY_DAYS)
        {
            return Err(bad(format!(
                "OCSP response valid from {this_update} to {next_update}: longer than {} days \
                 (CA/B Forum BR 4.9.10: the status of a CA certificate is renewed at least \
                 every twelve months); run the ocsp-response ceremony again",
                super::MAX_CA_RESPONSE_VALIDITY_DAYS
            )));
        }
        if next_update <= now {
            return Err(bad(format!(
                "OCSP response expired at {next_update} (its nextUpdate); run the \
                 ocsp-response ceremony again"
            )));
        }
        map.insert(
            ExternalKey::of(&s.cert_id),
            Arc::new(OcspAnswer::new(
                der.clone(),
                AnswerKind::Signed {
                    status: from_ocsp_status(&s.cert_status),
                    produced_at,
                    this_update,
                    next_update,
                    cacheable: true,
                },
            )),
        );
    }
    Ok((mtime, map))
}

/// RFC 6960 4.2.2.2: a delegated responder certificate is issued directly by the CA and
/// carries id-kp-OCSPSigning.
pub(super) fn check_delegated(cert: &Certificate, issuer: &OcspIssuer) -> Result<()> {
    let tbs = cert.tbs_certificate.to_der()?;
    let sig = cert
        .signature
        .as_bytes()
        .ok_or(Error::SignatureCheckFailed)?;
    verify(issuer.spki_der(), &tbs, sig).map_err(|_| {
        Error::Issuer("the OCSP responder certificate is not signed by the issuing CA".into())
    })?;
    let eku = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_EXT_KEY_USAGE)
        .and_then(|e| {
            x509_cert::ext::pkix::ExtendedKeyUsage::from_der(e.extn_value.as_bytes()).ok()
        });
    if !eku.is_some_and(|k| k.0.contains(&const_oid::db::rfc5280::ID_KP_OCSP_SIGNING)) {
        return Err(Error::Issuer(
            "the OCSP responder certificate lacks extended key usage id-kp-OCSPSigning".into(),
        ));
    }
    Ok(())
}
